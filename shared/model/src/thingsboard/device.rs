//! ThingsBoard MQTT device API (`v1/devices/me/...`): parsers for what devices publish,
//! encoders for what they receive, and the client-side counterparts used by tests and the
//! load generator.

use crate::envelope::{KeySelection, Sample};
use crate::ids::CorrelationId;
use crate::limits::Limits;
use crate::reject::Reject;
use crate::value::Values;

use super::{
    ClaimRequest, encode_samples, expect_object, json_or_empty, json_values, key_list, opt_str,
    parse_items, selections, values_json,
};

/// Telemetry topic.
pub const TELEMETRY_TOPIC: &str = "v1/devices/me/telemetry";
/// Client attributes (publish) and shared-attribute updates (subscribe).
pub const ATTRIBUTES_TOPIC: &str = "v1/devices/me/attributes";
/// Claim topic.
pub const CLAIM_TOPIC: &str = "v1/devices/me/claim";

/// `v1/devices/me/attributes/request/{id}`.
pub fn attribute_request_topic(id: &CorrelationId) -> String {
    format!("v1/devices/me/attributes/request/{id}")
}
/// `v1/devices/me/attributes/response/{id}`.
pub fn attribute_response_topic(id: &CorrelationId) -> String {
    format!("v1/devices/me/attributes/response/{id}")
}
/// `v1/devices/me/rpc/request/{id}`: server-side RPC to the device, client-side RPC from it.
pub fn rpc_request_topic(id: &CorrelationId) -> String {
    format!("v1/devices/me/rpc/request/{id}")
}
/// `v1/devices/me/rpc/response/{id}`.
pub fn rpc_response_topic(id: &CorrelationId) -> String {
    format!("v1/devices/me/rpc/response/{id}")
}

/// Parses `v1/devices/me/telemetry`: `{"k": v}`, `{"ts", "values"}`, or arrays of either.
pub fn parse_telemetry(
    payload: &[u8],
    received_ms: i64,
    limits: &Limits,
) -> Result<Vec<Sample>, Reject> {
    parse_items(payload, received_ms, limits)
}

/// Encodes telemetry as a device sends it.
pub fn encode_telemetry(samples: &[Sample]) -> Vec<u8> {
    serde_json::to_vec(&encode_samples(samples)).unwrap_or_default()
}

/// Parses published client attributes `{"k": v, ...}`.
pub fn parse_attributes(payload: &[u8], limits: &Limits) -> Result<Values, Reject> {
    limits.check_payload(payload)?;
    let values: Values =
        serde_json::from_slice(payload).map_err(|e| Reject::from_json(&e, "attributes"))?;
    if values.is_empty() {
        return Err(Reject::EmptyData);
    }
    limits.check_values(&values)?;
    Ok(values)
}

/// Encodes attributes: client attributes a device publishes, or a shared-attribute update
/// pushed to it on [`ATTRIBUTES_TOPIC`].
pub fn encode_attributes(values: &Values) -> Vec<u8> {
    serde_json::to_vec(&values_json(values)).unwrap_or_default()
}

/// An attribute request's key selection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttributeRequest {
    /// Client-scope keys.
    pub client: KeySelection,
    /// Shared-scope keys.
    pub shared: KeySelection,
}

/// Parses `{"clientKeys": "a,b", "sharedKeys": "c"}` (arrays accepted too; an empty payload
/// or `{}` asks for everything).
pub fn parse_attribute_request(
    payload: &[u8],
    limits: &Limits,
) -> Result<AttributeRequest, Reject> {
    limits.check_payload(payload)?;
    let v = json_or_empty(payload, "attribute request")?;
    expect_object(&v, "attribute request")?;
    let (client, shared) = selections(
        key_list(v.get("clientKeys"), "clientKeys")?,
        key_list(v.get("sharedKeys"), "sharedKeys")?,
    );
    Ok(AttributeRequest { client, shared })
}

/// Encodes an attribute request as a device sends it (keys as comma lists).
pub fn encode_attribute_request(client_keys: &[&str], shared_keys: &[&str]) -> Vec<u8> {
    let mut m = serde_json::Map::new();
    if !client_keys.is_empty() {
        m.insert("clientKeys".into(), client_keys.join(",").into());
    }
    if !shared_keys.is_empty() {
        m.insert("sharedKeys".into(), shared_keys.join(",").into());
    }
    serde_json::to_vec(&m).unwrap_or_default()
}

/// Encodes the answer `{"client": {..}, "shared": {..}}`; an empty scope is left out, as
/// ThingsBoard does.
pub fn encode_attribute_response(client: &Values, shared: &Values) -> Vec<u8> {
    let mut m = serde_json::Map::new();
    if !client.is_empty() {
        m.insert("client".into(), values_json(client));
    }
    if !shared.is_empty() {
        m.insert("shared".into(), values_json(shared));
    }
    serde_json::to_vec(&m).unwrap_or_default()
}

/// Reads an attribute answer, as a device does: `(client, shared)`.
pub fn parse_attribute_response(payload: &[u8]) -> Result<(Values, Values), Reject> {
    let v: serde_json::Value =
        serde_json::from_slice(payload).map_err(|e| Reject::from_json(&e, "attribute response"))?;
    expect_object(&v, "attribute response")?;
    let scope = |k: &str| v.get(k).map(json_values).unwrap_or_default();
    Ok((scope("client"), scope("shared")))
}

/// An RPC request: a server-side RPC as the device receives it, or a client-side RPC as the
/// device sends it (the shapes are the same).
#[derive(Debug, Clone, PartialEq)]
pub struct RpcRequest {
    /// The method.
    pub method: String,
    /// Its parameters (`null` when absent).
    pub params: serde_json::Value,
}

/// Parses `{"method": "...", "params": ...}`.
pub fn parse_rpc_request(payload: &[u8], limits: &Limits) -> Result<RpcRequest, Reject> {
    limits.check_payload(payload)?;
    let v: serde_json::Value =
        serde_json::from_slice(payload).map_err(|e| Reject::from_json(&e, "RPC request"))?;
    expect_object(&v, "RPC request")?;
    let method = opt_str(&v, "method")?.ok_or_else(|| Reject::MissingField {
        field: "method".into(),
    })?;
    let params = v.get("params").cloned().unwrap_or(serde_json::Value::Null);
    Ok(RpcRequest { method, params })
}

/// Encodes `{"method": "...", "params": ...}`.
pub fn encode_rpc_request(method: &str, params: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"method": method, "params": params})).unwrap_or_default()
}

/// Parses an RPC answer on `v1/devices/me/rpc/response/{id}`. ThingsBoard forwards any
/// text, so a payload that is not JSON is kept as a JSON string rather than refused; an
/// empty payload is `null`. Only bytes that are not UTF-8 are refused.
pub fn parse_rpc_response(payload: &[u8], limits: &Limits) -> Result<serde_json::Value, Reject> {
    limits.check_payload(payload)?;
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Value::Null);
    }
    match serde_json::from_slice(payload) {
        Ok(v) => Ok(v),
        Err(e) => match std::str::from_utf8(payload) {
            Ok(text) => Ok(serde_json::Value::String(text.to_owned())),
            Err(_) => Err(Reject::from_json(&e, "RPC response")),
        },
    }
}

/// Encodes an RPC answer (the server answering a client-side RPC, or a device answering).
pub fn encode_rpc_response(data: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(data).unwrap_or_default()
}

/// Parses `v1/devices/me/claim`: `{"secretKey"?, "durationMs"?}`; an empty payload is `{}`.
pub fn parse_claim(payload: &[u8], limits: &Limits) -> Result<ClaimRequest, Reject> {
    limits.check_payload(payload)?;
    let v = json_or_empty(payload, "claim")?;
    ClaimRequest::from_json(&v, "claim")
}

/// Encodes a claim request.
pub fn encode_claim(claim: &ClaimRequest) -> Vec<u8> {
    serde_json::to_vec(&claim.to_json()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ReasonCode;
    use crate::value::Value;

    fn l() -> Limits {
        Limits::default()
    }

    fn vals(pairs: &[(&str, Value)]) -> Values {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn telemetry_round_trips() {
        let samples = vec![
            Sample {
                ts_ms: 1_451_649_600_512,
                values: vals(&[("a", Value::Integer(1)), ("b", Value::String("x".into()))]),
            },
            Sample {
                ts_ms: 1_451_649_600_513,
                values: vals(&[
                    ("c", Value::Float(0.5)),
                    ("d", Value::Json(serde_json::json!([1]))),
                ]),
            },
        ];
        let bytes = encode_telemetry(&samples);
        assert_eq!(parse_telemetry(&bytes, 0, &l()).unwrap(), samples);
    }

    #[test]
    fn client_attributes() {
        let v = parse_attributes(br#"{"attribute1":"value1", "attribute2":true, "attribute3":42.0, "attribute4":73, "attribute5":{"someNumber":42,"someArray":[1,2,3]}}"#, &l())
            .unwrap();
        assert_eq!(v.len(), 5);
        assert_eq!(v["attribute3"], Value::Float(42.0));
        assert_eq!(parse_attributes(&encode_attributes(&v), &l()).unwrap(), v);
        assert_eq!(
            parse_attributes(b"{}", &l()).unwrap_err().code(),
            ReasonCode::EmptyData
        );
        assert_eq!(
            parse_attributes(b"[1]", &l()).unwrap_err().code(),
            ReasonCode::WrongType
        );
    }

    #[test]
    fn attribute_requests_and_responses() {
        let r = parse_attribute_request(
            br#"{"clientKeys":"attribute1,attribute2", "sharedKeys":"shared1,shared2"}"#,
            &l(),
        )
        .unwrap();
        assert_eq!(
            r.client,
            KeySelection::Keys(vec!["attribute1".into(), "attribute2".into()])
        );
        assert_eq!(
            r.shared,
            KeySelection::Keys(vec!["shared1".into(), "shared2".into()])
        );
        let r = parse_attribute_request(br#"{"sharedKeys":"s"}"#, &l()).unwrap();
        assert_eq!(r.client, KeySelection::Nothing);
        let r = parse_attribute_request(b"", &l()).unwrap();
        assert_eq!((r.client, r.shared), (KeySelection::All, KeySelection::All));
        let r = parse_attribute_request(&encode_attribute_request(&["a", "b"], &[]), &l()).unwrap();
        assert_eq!(r.client, KeySelection::Keys(vec!["a".into(), "b".into()]));
        assert_eq!(r.shared, KeySelection::Nothing);
        assert_eq!(
            parse_attribute_request(br#"{"clientKeys": 5}"#, &l())
                .unwrap_err()
                .code(),
            ReasonCode::WrongType
        );
        assert_eq!(
            parse_attribute_request(b"[]", &l()).unwrap_err().code(),
            ReasonCode::WrongType
        );

        let client = vals(&[("a", Value::Integer(1))]);
        let bytes = encode_attribute_response(&client, &Values::new());
        assert_eq!(bytes, br#"{"client":{"a":1}}"#);
        assert_eq!(
            parse_attribute_response(&bytes).unwrap(),
            (client, Values::new())
        );
    }

    #[test]
    fn rpc() {
        let r = parse_rpc_request(
            br#"{"method":"setGpio","params":{"pin":4,"value":1}}"#,
            &l(),
        )
        .unwrap();
        assert_eq!(r.method, "setGpio");
        assert_eq!(r.params, serde_json::json!({"pin": 4, "value": 1}));
        let back = parse_rpc_request(&encode_rpc_request(&r.method, &r.params), &l()).unwrap();
        assert_eq!(back, r);
        // Client-side RPC as ThingsBoard's SDK sends it right after connecting.
        let r = parse_rpc_request(br#"{"method":"getSessionLimits","params":{}}"#, &l()).unwrap();
        assert_eq!(r.method, "getSessionLimits");
        let r = parse_rpc_request(br#"{"method":"getCurrentTime"}"#, &l()).unwrap();
        assert_eq!(r.params, serde_json::Value::Null);
        assert_eq!(
            parse_rpc_request(br#"{"params":{}}"#, &l())
                .unwrap_err()
                .code(),
            ReasonCode::MissingField
        );
        assert_eq!(
            parse_rpc_request(br#"{"method":1}"#, &l())
                .unwrap_err()
                .code(),
            ReasonCode::WrongType
        );

        assert_eq!(
            parse_rpc_response(br#"{"ok":true}"#, &l()).unwrap(),
            serde_json::json!({"ok": true})
        );
        assert_eq!(
            parse_rpc_response(b"done", &l()).unwrap(),
            serde_json::json!("done")
        );
        assert_eq!(
            parse_rpc_response(b"", &l()).unwrap(),
            serde_json::Value::Null
        );
        assert_eq!(
            parse_rpc_response(&[0xff], &l()).unwrap_err().code(),
            ReasonCode::MalformedJson
        );
        let d = serde_json::json!({"time": 1});
        assert_eq!(
            parse_rpc_response(&encode_rpc_response(&d), &l()).unwrap(),
            d
        );
    }

    #[test]
    fn claim() {
        let c = parse_claim(br#"{"secretKey":"value", "durationMs":60000}"#, &l()).unwrap();
        assert_eq!(c.secret_key.as_deref(), Some("value"));
        assert_eq!(c.duration_ms, Some(60000));
        assert_eq!(parse_claim(b"", &l()).unwrap(), ClaimRequest::default());
        assert_eq!(parse_claim(b"{}", &l()).unwrap(), ClaimRequest::default());
        assert_eq!(parse_claim(&encode_claim(&c), &l()).unwrap(), c);
        assert_eq!(
            parse_claim(br#"{"durationMs":-1}"#, &l())
                .unwrap_err()
                .code(),
            ReasonCode::WrongType
        );
    }

    #[test]
    fn topics() {
        let id = CorrelationId::Int(7);
        assert_eq!(rpc_request_topic(&id), "v1/devices/me/rpc/request/7");
        assert_eq!(rpc_response_topic(&id), "v1/devices/me/rpc/response/7");
        assert_eq!(
            attribute_request_topic(&id),
            "v1/devices/me/attributes/request/7"
        );
        assert_eq!(
            attribute_response_topic(&id),
            "v1/devices/me/attributes/response/7"
        );
    }
}
