//! ThingsBoard MQTT gateway API (`v1/gateway/...`, seed 001): all ten operations, parsed
//! as the gateway sends them and encoded as it expects to receive them, plus the
//! client-side counterparts used by tests and the load generator.
//!
//! Devices behind a gateway are named, not identified: every parser returns
//! [`DeviceName`]s, which the validator maps to stable ids.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};

use crate::envelope::{AttributeReplyShape, KeySelection, Sample};
use crate::ids::{CorrelationId, DeviceName};
use crate::limits::Limits;
use crate::reject::Reject;
use crate::value::Values;

use super::{
    ClaimRequest, Items, encode_samples, expect_object, json_values, key_list, opt_str, selections,
    values_json,
};

/// `v1/gateway/connect`.
pub const CONNECT_TOPIC: &str = "v1/gateway/connect";
/// `v1/gateway/disconnect`.
pub const DISCONNECT_TOPIC: &str = "v1/gateway/disconnect";
/// `v1/gateway/attributes`: client attributes (publish), shared updates (subscribe).
pub const ATTRIBUTES_TOPIC: &str = "v1/gateway/attributes";
/// `v1/gateway/attributes/request`.
pub const ATTRIBUTE_REQUEST_TOPIC: &str = "v1/gateway/attributes/request";
/// `v1/gateway/attributes/response`.
pub const ATTRIBUTE_RESPONSE_TOPIC: &str = "v1/gateway/attributes/response";
/// `v1/gateway/telemetry`.
pub const TELEMETRY_TOPIC: &str = "v1/gateway/telemetry";
/// `v1/gateway/rpc`: requests to the gateway and its replies.
pub const RPC_TOPIC: &str = "v1/gateway/rpc";
/// `v1/gateway/claim`.
pub const CLAIM_TOPIC: &str = "v1/gateway/claim";

/// The profile a device gets when `connect` names none.
pub const DEFAULT_PROFILE: &str = "default";

fn name(s: &str) -> Result<DeviceName, Reject> {
    DeviceName::new(s).map_err(|e| Reject::BadDeviceId {
        id: s.chars().take(64).collect(),
        reason: e.to_string(),
    })
}

fn parse_object(
    payload: &[u8],
    limits: &Limits,
    what: &'static str,
) -> Result<serde_json::Value, Reject> {
    limits.check_payload(payload)?;
    let v: serde_json::Value =
        serde_json::from_slice(payload).map_err(|e| Reject::from_json(&e, what))?;
    expect_object(&v, what)?;
    Ok(v)
}

fn device_field(v: &serde_json::Value) -> Result<DeviceName, Reject> {
    let n = opt_str(v, "device")?.ok_or_else(|| Reject::MissingField {
        field: "device".into(),
    })?;
    name(&n)
}

/// A device announced with `v1/gateway/connect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// The device's name.
    pub device: DeviceName,
    /// Its type/profile ([`DEFAULT_PROFILE`] when not given).
    pub profile: String,
}

/// Parses `{"device": "A", "type": "Profile"?}`.
pub fn parse_connect(payload: &[u8], limits: &Limits) -> Result<Connect, Reject> {
    let v = parse_object(payload, limits, "gateway connect")?;
    Ok(Connect {
        device: device_field(&v)?,
        profile: opt_str(&v, "type")?.unwrap_or_else(|| DEFAULT_PROFILE.to_owned()),
    })
}

/// Encodes a connect announcement.
pub fn encode_connect(device: &DeviceName, profile: Option<&str>) -> Vec<u8> {
    let mut m = serde_json::Map::new();
    m.insert("device".into(), device.as_str().into());
    if let Some(p) = profile {
        m.insert("type".into(), p.into());
    }
    serde_json::to_vec(&m).unwrap_or_default()
}

/// Parses `{"device": "A"}`.
pub fn parse_disconnect(payload: &[u8], limits: &Limits) -> Result<DeviceName, Reject> {
    device_field(&parse_object(payload, limits, "gateway disconnect")?)
}

/// Encodes a disconnect announcement.
pub fn encode_disconnect(device: &DeviceName) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"device": device.as_str()})).unwrap_or_default()
}

/// Checks a per-device map's size and turns its names into [`DeviceName`]s.
fn named<K: AsRef<str>, T>(
    entries: Vec<(K, T)>,
    limits: &Limits,
) -> Result<Vec<(DeviceName, T)>, Reject> {
    limits.check_items("devices", entries.len())?;
    entries
        .into_iter()
        .map(|(n, t)| Ok((name(n.as_ref())?, t)))
        .collect()
}

/// A JSON object read as `(key, value)` pairs in document order; keys borrow from the
/// payload where they can.
struct Entries<'de, T>(Vec<(Cow<'de, str>, T)>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Entries<'de, T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Entries<'de, T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object keyed by device name")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries<'de, T>, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(4).min(64));
                while let Some(entry) = map.next_entry::<Cow<'de, str>, T>()? {
                    out.push(entry);
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// Parses `{"Device A": {"k": v}, "Device B": {...}}`. Devices with no attributes are left
/// out; a message with none at all is refused.
pub fn parse_attributes(
    payload: &[u8],
    limits: &Limits,
) -> Result<Vec<(DeviceName, Values)>, Reject> {
    limits.check_payload(payload)?;
    let Entries(entries) = serde_json::from_slice::<Entries<Values>>(payload)
        .map_err(|e| Reject::from_json(&e, "gateway attributes"))?;
    let mut out = named(entries, limits)?;
    out.retain(|(_, v)| !v.is_empty());
    if out.is_empty() {
        return Err(Reject::EmptyData);
    }
    for (_, v) in &out {
        limits.check_values(v)?;
    }
    Ok(out)
}

/// Encodes client attributes of many devices.
pub fn encode_attributes(devices: &[(DeviceName, Values)]) -> Vec<u8> {
    let m: serde_json::Map<String, serde_json::Value> = devices
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), values_json(v)))
        .collect();
    serde_json::to_vec(&m).unwrap_or_default()
}

/// A gateway's attribute request, in either shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttributeRequest {
    /// Echoed in the answer; the SDK matches answers by it.
    pub id: CorrelationId,
    /// The device asked about.
    pub device: DeviceName,
    /// Client-scope keys.
    pub client: KeySelection,
    /// Shared-scope keys.
    pub shared: KeySelection,
    /// How to shape the answer.
    pub reply: AttributeReplyShape,
}

/// Parses both request shapes seen in the wild:
/// - documented (seed 001): `{"id":1,"device":"A","client":["k1"],"shared":["k3"]}`;
/// - ThingsBoard's own SDK: `{"id":1,"device":"A","client":true|false,"key":"k"}` or
///   `"keys":["k1","k2"]`.
pub fn parse_attribute_request(
    payload: &[u8],
    limits: &Limits,
) -> Result<AttributeRequest, Reject> {
    let v = parse_object(payload, limits, "gateway attribute request")?;
    let id = match v.get("id") {
        None | Some(serde_json::Value::Null) => {
            return Err(Reject::MissingField { field: "id".into() });
        }
        Some(id) => {
            serde_json::from_value::<CorrelationId>(id.clone()).map_err(|_| Reject::WrongType {
                field: "id".into(),
                expected: "an integer or a string",
            })?
        }
    };
    let device = device_field(&v)?;
    if let Some(&serde_json::Value::Bool(client_scope)) = v.get("client") {
        // SDK shape.
        let (keys, reply) = if let Some(k) = v.get("key") {
            let k = k.as_str().ok_or_else(|| Reject::WrongType {
                field: "key".into(),
                expected: "a string",
            })?;
            (vec![k.to_owned()], AttributeReplyShape::GatewayValue)
        } else {
            let keys = key_list(v.get("keys"), "keys")?.ok_or_else(|| Reject::MissingField {
                field: "key".into(),
            })?;
            (keys, AttributeReplyShape::GatewayValues)
        };
        let (client, shared) = if client_scope {
            (KeySelection::Keys(keys), KeySelection::Nothing)
        } else {
            (KeySelection::Nothing, KeySelection::Keys(keys))
        };
        return Ok(AttributeRequest {
            id,
            device,
            client,
            shared,
            reply,
        });
    }
    let (client, shared) = selections(
        key_list(v.get("client"), "client")?,
        key_list(v.get("shared"), "shared")?,
    );
    Ok(AttributeRequest {
        id,
        device,
        client,
        shared,
        reply: AttributeReplyShape::GatewayValues,
    })
}

/// Encodes the documented request shape.
pub fn encode_attribute_request(
    id: &CorrelationId,
    device: &DeviceName,
    client: &[&str],
    shared: &[&str],
) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "id": id, "device": device.as_str(), "client": client, "shared": shared
    }))
    .unwrap_or_default()
}

/// Encodes the SDK's request shape: one key as `"key"`, several as `"keys"`.
pub fn encode_attribute_request_sdk(
    id: &CorrelationId,
    device: &DeviceName,
    client_scope: bool,
    keys: &[&str],
) -> Vec<u8> {
    let mut m = serde_json::Map::new();
    m.insert("id".into(), serde_json::json!(id));
    m.insert("device".into(), device.as_str().into());
    m.insert("client".into(), client_scope.into());
    match keys {
        [one] => m.insert("key".into(), (*one).into()),
        many => m.insert("keys".into(), serde_json::json!(many)),
    };
    serde_json::to_vec(&m).unwrap_or_default()
}

/// Encodes the answer on [`ATTRIBUTE_RESPONSE_TOPIC`]:
/// [`AttributeReplyShape::GatewayValue`] → `{"id","device","value"}` (no `value` when the
/// attribute does not exist); otherwise `{"id","device","values":{..}}`.
pub fn encode_attribute_response(
    id: &CorrelationId,
    device: &DeviceName,
    reply: AttributeReplyShape,
    values: &Values,
) -> Vec<u8> {
    let mut m = serde_json::Map::new();
    m.insert("id".into(), serde_json::json!(id));
    m.insert("device".into(), device.as_str().into());
    match reply {
        AttributeReplyShape::GatewayValue => {
            if let Some(v) = values.values().next() {
                m.insert("value".into(), v.to_json());
            }
        }
        AttributeReplyShape::GatewayValues | AttributeReplyShape::Device => {
            m.insert("values".into(), values_json(values));
        }
    }
    serde_json::to_vec(&m).unwrap_or_default()
}

/// An attribute answer as the gateway reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct AttributeResponse {
    /// The request's id.
    pub id: CorrelationId,
    /// The device.
    pub device: String,
    /// `value` of a single-key answer.
    pub value: Option<serde_json::Value>,
    /// `values` of a multi-key answer.
    pub values: Option<Values>,
}

/// Reads an attribute answer, as a gateway does.
pub fn parse_attribute_response(payload: &[u8]) -> Result<AttributeResponse, Reject> {
    let v = parse_object(payload, &Limits::default(), "gateway attribute response")?;
    let id = v
        .get("id")
        .and_then(|i| serde_json::from_value(i.clone()).ok())
        .ok_or_else(|| Reject::MissingField { field: "id".into() })?;
    Ok(AttributeResponse {
        id,
        device: opt_str(&v, "device")?.unwrap_or_default(),
        value: v.get("value").cloned(),
        values: v.get("values").map(json_values),
    })
}

/// Encodes a shared-attribute update `{"device": "A", "data": {..}}`.
pub fn encode_shared_attributes(device: &DeviceName, values: &Values) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"device": device.as_str(), "data": values_json(values)}))
        .unwrap_or_default()
}

/// Reads a shared-attribute update, as a gateway does: `(device, data)`.
pub fn parse_shared_attributes(payload: &[u8]) -> Result<(String, Values), Reject> {
    let v = parse_object(payload, &Limits::default(), "gateway attribute update")?;
    Ok((
        opt_str(&v, "device")?.unwrap_or_default(),
        v.get("data").map(json_values).unwrap_or_default(),
    ))
}

/// Parses `{"Device A": [{"ts":..,"values":{..}}, ...], "Device B": {...}}` (a single
/// object instead of an array is accepted; `ts` is optional). Devices with no values are
/// left out; a message with none at all is refused.
pub fn parse_telemetry(
    payload: &[u8],
    received_ms: i64,
    limits: &Limits,
) -> Result<Vec<(DeviceName, Vec<Sample>)>, Reject> {
    limits.check_payload(payload)?;
    let Entries(entries) = serde_json::from_slice::<Entries<Items>>(payload)
        .map_err(|e| Reject::from_json(&e, "gateway telemetry"))?;
    let entries = named(entries, limits)?;
    let mut out = Vec::with_capacity(entries.len());
    let mut total = 0;
    for (device, items) in entries {
        let samples = items.into_samples(received_ms, limits)?;
        total += samples.len();
        if !samples.is_empty() {
            out.push((device, samples));
        }
    }
    limits.check_items("samples", total)?;
    if out.is_empty() {
        return Err(Reject::EmptyData);
    }
    Ok(out)
}

/// Encodes telemetry of many devices, as a gateway sends it.
pub fn encode_telemetry(devices: &[(DeviceName, Vec<Sample>)]) -> Vec<u8> {
    let m: serde_json::Map<String, serde_json::Value> = devices
        .iter()
        .map(|(n, s)| (n.as_str().to_owned(), encode_samples(s)))
        .collect();
    serde_json::to_vec(&m).unwrap_or_default()
}

/// Encodes an RPC request to a device behind the gateway:
/// `{"device":"A","data":{"id":1,"method":"m","params":{..}}}`.
pub fn encode_rpc_request(
    device: &DeviceName,
    id: &CorrelationId,
    method: &str,
    params: &serde_json::Value,
) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "device": device.as_str(),
        "data": {"id": id, "method": method, "params": params}
    }))
    .unwrap_or_default()
}

/// An RPC request as the gateway reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcRequest {
    /// The device behind the gateway.
    pub device: String,
    /// The RPC id, to echo in the reply.
    pub id: CorrelationId,
    /// The method.
    pub method: String,
    /// The parameters.
    pub params: serde_json::Value,
}

/// Reads an RPC request, as a gateway does.
pub fn parse_rpc_request(payload: &[u8]) -> Result<RpcRequest, Reject> {
    let v = parse_object(payload, &Limits::default(), "gateway RPC request")?;
    let data = v.get("data").cloned().unwrap_or_default();
    Ok(RpcRequest {
        device: opt_str(&v, "device")?.unwrap_or_default(),
        id: data
            .get("id")
            .and_then(|i| serde_json::from_value(i.clone()).ok())
            .ok_or_else(|| Reject::MissingField {
                field: "data.id".into(),
            })?,
        method: opt_str(&data, "method")?.unwrap_or_default(),
        params: data.get("params").cloned().unwrap_or_default(),
    })
}

/// A gateway's reply to an RPC: `{"device":"A","id":1,"data":{..}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcReply {
    /// The device that answered.
    pub device: DeviceName,
    /// The RPC's id.
    pub id: CorrelationId,
    /// The answer (`null` when absent).
    pub data: serde_json::Value,
}

/// Parses a gateway's RPC reply.
pub fn parse_rpc_reply(payload: &[u8], limits: &Limits) -> Result<RpcReply, Reject> {
    let v = parse_object(payload, limits, "gateway RPC reply")?;
    let device = device_field(&v)?;
    let id = match v.get("id") {
        None | Some(serde_json::Value::Null) => {
            return Err(Reject::MissingField { field: "id".into() });
        }
        Some(i) => serde_json::from_value(i.clone()).map_err(|_| Reject::WrongType {
            field: "id".into(),
            expected: "an integer or a string",
        })?,
    };
    Ok(RpcReply {
        device,
        id,
        data: v.get("data").cloned().unwrap_or_default(),
    })
}

/// Encodes a gateway's RPC reply.
pub fn encode_rpc_reply(
    device: &DeviceName,
    id: &CorrelationId,
    data: &serde_json::Value,
) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"device": device.as_str(), "id": id, "data": data}))
        .unwrap_or_default()
}

/// Parses `{"Device A": {"secretKey"?, "durationMs"?}, ...}`.
pub fn parse_claim(
    payload: &[u8],
    limits: &Limits,
) -> Result<Vec<(DeviceName, ClaimRequest)>, Reject> {
    let v = parse_object(payload, limits, "gateway claim")?;
    let entries: Vec<(String, ClaimRequest)> = v
        .as_object()
        .into_iter()
        .flatten()
        .map(|(n, c)| Ok((n.clone(), ClaimRequest::from_json(c, n)?)))
        .collect::<Result<_, Reject>>()?;
    if entries.is_empty() {
        return Err(Reject::EmptyData);
    }
    named(entries, limits)
}

/// Encodes a claim of many devices.
pub fn encode_claim(devices: &[(DeviceName, ClaimRequest)]) -> Vec<u8> {
    let m: serde_json::Map<String, serde_json::Value> = devices
        .iter()
        .map(|(n, c)| (n.as_str().to_owned(), c.to_json()))
        .collect();
    serde_json::to_vec(&m).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ReasonCode;
    use crate::value::Value;

    const NOW: i64 = 1_700_000_000_000;

    fn l() -> Limits {
        Limits::default()
    }
    fn n(s: &str) -> DeviceName {
        DeviceName::new(s).unwrap()
    }

    #[test]
    fn seed_001_connect_and_disconnect() {
        let c = parse_connect(br#"{"device": "Device A", "type": "Sensor A"}"#, &l()).unwrap();
        assert_eq!(
            c,
            Connect {
                device: n("Device A"),
                profile: "Sensor A".into()
            }
        );
        let c = parse_connect(br#"{"device": "Device A"}"#, &l()).unwrap();
        assert_eq!(c.profile, "default");
        assert_eq!(
            parse_connect(&encode_connect(&n("X"), Some("P")), &l())
                .unwrap()
                .profile,
            "P"
        );
        assert_eq!(
            parse_connect(br#"{"type": "x"}"#, &l()).unwrap_err().code(),
            ReasonCode::MissingField
        );
        assert_eq!(
            parse_connect(br#"{"device": ""}"#, &l())
                .unwrap_err()
                .code(),
            ReasonCode::BadDeviceId
        );
        assert_eq!(
            parse_connect(br#"{"device": 5}"#, &l()).unwrap_err().code(),
            ReasonCode::WrongType
        );

        assert_eq!(
            parse_disconnect(br#"{"device": "Device A"}"#, &l()).unwrap(),
            n("Device A")
        );
        assert_eq!(
            parse_disconnect(&encode_disconnect(&n("B")), &l()).unwrap(),
            n("B")
        );
    }

    #[test]
    fn seed_001_attributes() {
        let a = parse_attributes(
            br#"{"Device A": {"attribute1": "value1", "attribute2": 42}, "Device B": {"attribute1": "value1", "attribute2": 42}}"#,
            &l(),
        )
        .unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].0, n("Device A"));
        assert_eq!(a[1].1["attribute2"], Value::Integer(42));
        let one = parse_attributes(
            br#"{"Device A": {"fw_version": "1.0", "battery": 87}}"#,
            &l(),
        )
        .unwrap();
        assert_eq!(one[0].1["fw_version"], Value::String("1.0".into()));
        assert_eq!(parse_attributes(&encode_attributes(&a), &l()).unwrap(), a);
        assert_eq!(
            parse_attributes(br#"{"A": 5}"#, &l()).unwrap_err().code(),
            ReasonCode::WrongType
        );
        assert_eq!(
            parse_attributes(br#"{"A": {}}"#, &l()).unwrap_err().code(),
            ReasonCode::EmptyData
        );
    }

    #[test]
    fn seed_001_attribute_request_documented_shape() {
        let r = parse_attribute_request(
            br#"{"id": 1, "device": "Device A", "client": ["key1", "key2"], "shared": ["key3", "key4"]}"#,
            &l(),
        )
        .unwrap();
        assert_eq!(r.id, CorrelationId::Int(1));
        assert_eq!(r.device, n("Device A"));
        assert_eq!(
            r.client,
            KeySelection::Keys(vec!["key1".into(), "key2".into()])
        );
        assert_eq!(
            r.shared,
            KeySelection::Keys(vec!["key3".into(), "key4".into()])
        );
        assert_eq!(r.reply, AttributeReplyShape::GatewayValues);
        let only_shared =
            parse_attribute_request(br#"{"id": 2, "device": "A", "shared": ["k"]}"#, &l()).unwrap();
        assert_eq!(only_shared.client, KeySelection::Nothing);
        let bytes = encode_attribute_request(
            &CorrelationId::Int(1),
            &n("Device A"),
            &["key1", "key2"],
            &["key3", "key4"],
        );
        assert_eq!(parse_attribute_request(&bytes, &l()).unwrap(), r);
    }

    #[test]
    fn attribute_request_sdk_shape() {
        let r = parse_attribute_request(
            br#"{"id": 5, "device": "A", "client": true, "key": "fw"}"#,
            &l(),
        )
        .unwrap();
        assert_eq!(r.client, KeySelection::Keys(vec!["fw".into()]));
        assert_eq!(r.shared, KeySelection::Nothing);
        assert_eq!(r.reply, AttributeReplyShape::GatewayValue);
        let r = parse_attribute_request(
            br#"{"id": 6, "device": "A", "client": false, "keys": ["a", "b"]}"#,
            &l(),
        )
        .unwrap();
        assert_eq!(r.shared, KeySelection::Keys(vec!["a".into(), "b".into()]));
        assert_eq!(r.client, KeySelection::Nothing);
        assert_eq!(r.reply, AttributeReplyShape::GatewayValues);
        for keys in [&["k"][..], &["a", "b"][..]] {
            let bytes = encode_attribute_request_sdk(&CorrelationId::Int(9), &n("A"), false, keys);
            let r = parse_attribute_request(&bytes, &l()).unwrap();
            assert_eq!(
                r.shared,
                KeySelection::Keys(keys.iter().map(|k| k.to_string()).collect())
            );
        }
        let code = |s: &str| {
            parse_attribute_request(s.as_bytes(), &l())
                .unwrap_err()
                .code()
        };
        assert_eq!(
            code(r#"{"device": "A", "client": true, "key": "k"}"#),
            ReasonCode::MissingField
        );
        assert_eq!(
            code(r#"{"id": 1, "client": true, "key": "k"}"#),
            ReasonCode::MissingField
        );
        assert_eq!(
            code(r#"{"id": 1, "device": "A", "client": true}"#),
            ReasonCode::MissingField
        );
        assert_eq!(
            code(r#"{"id": 1, "device": "A", "client": true, "key": 3}"#),
            ReasonCode::WrongType
        );
        assert_eq!(code(r#"{"id": [], "device": "A"}"#), ReasonCode::WrongType);
    }

    #[test]
    fn attribute_responses_match_by_id() {
        let mut v = Values::new();
        v.insert("fw", Value::String("1.0".into()));
        let bytes = encode_attribute_response(
            &CorrelationId::Int(5),
            &n("A"),
            AttributeReplyShape::GatewayValue,
            &v,
        );
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&bytes).unwrap(),
            serde_json::json!({"id": 5, "device": "A", "value": "1.0"})
        );
        let r = parse_attribute_response(&bytes).unwrap();
        assert_eq!(r.id, CorrelationId::Int(5));
        assert_eq!(r.value, Some(serde_json::json!("1.0")));
        v.insert("n", Value::Integer(2));
        let bytes = encode_attribute_response(
            &CorrelationId::Int(6),
            &n("A"),
            AttributeReplyShape::GatewayValues,
            &v,
        );
        let r = parse_attribute_response(&bytes).unwrap();
        assert_eq!(r.values, Some(v));
        assert_eq!(r.device, "A");
        // A single-key answer for a missing attribute carries no `value`.
        let bytes = encode_attribute_response(
            &CorrelationId::Int(7),
            &n("A"),
            AttributeReplyShape::GatewayValue,
            &Values::new(),
        );
        assert_eq!(parse_attribute_response(&bytes).unwrap().value, None);
    }

    #[test]
    fn seed_001_shared_attribute_push() {
        let mut v = Values::new();
        v.insert("attribute1", Value::String("value1".into()));
        v.insert("attribute2", Value::Integer(42));
        let bytes = encode_shared_attributes(&n("Device A"), &v);
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&bytes).unwrap(),
            serde_json::json!({"device": "Device A", "data": {"attribute1": "value1", "attribute2": 42}})
        );
        assert_eq!(
            parse_shared_attributes(&bytes).unwrap(),
            ("Device A".to_string(), v)
        );
    }

    #[test]
    fn seed_001_telemetry() {
        let t = parse_telemetry(
            br#"{"Device A": [{"ts": 1483228800000, "values": {"temperature": 42, "humidity": 80}},
                              {"ts": 1483228801000, "values": {"temperature": 43, "humidity": 82}}],
                 "Device B": [{"ts": 1483228800000, "values": {"temperature": 42, "humidity": 80}}]}"#,
            NOW,
            &l(),
        )
        .unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].0, n("Device A"));
        assert_eq!(
            t[0].1.iter().map(|s| s.ts_ms).collect::<Vec<_>>(),
            [1_483_228_800_000, 1_483_228_801_000]
        );
        assert_eq!(t[0].1[1].values["humidity"], Value::Integer(82));
        assert_eq!(t[1].1.len(), 1);
        let ex = parse_telemetry(
            br#"{"Device A": [{"ts": 1700000000000, "values": {"temperature": 23.5, "humidity": 61}}]}"#,
            NOW,
            &l(),
        )
        .unwrap();
        assert_eq!(ex[0].1[0].values["temperature"], Value::Float(23.5));
        assert_eq!(
            parse_telemetry(&encode_telemetry(&t), NOW, &l()).unwrap(),
            t
        );
    }

    #[test]
    fn telemetry_single_object_and_missing_ts() {
        let t = parse_telemetry(
            br#"{"A": {"ts": 5, "values": {"x": 1}}, "B": {"values": {"y": 2}}}"#,
            NOW,
            &l(),
        )
        .unwrap();
        assert_eq!(t[0].1[0].ts_ms, 5);
        assert_eq!(t[1].1[0].ts_ms, NOW);
        // Not ThingsBoard's bug: no key literally named `values`.
        assert_eq!(t[1].1[0].values.keys().collect::<Vec<_>>(), ["y"]);
        let code = |s: &str| parse_telemetry(s.as_bytes(), NOW, &l()).unwrap_err().code();
        assert_eq!(code("{}"), ReasonCode::EmptyData);
        assert_eq!(code(r#"{"A": []}"#), ReasonCode::EmptyData);
        assert_eq!(code(r#"{"A": 5}"#), ReasonCode::WrongType);
        assert_eq!(code(r#"[{"A": {}}]"#), ReasonCode::WrongType);
        assert_eq!(code(r#"{"": {"x": 1}}"#), ReasonCode::BadDeviceId);
        let few = Limits {
            max_items: 1,
            ..l()
        };
        assert_eq!(
            parse_telemetry(br#"{"A": {"x": 1}, "B": {"x": 1}}"#, NOW, &few)
                .unwrap_err()
                .code(),
            ReasonCode::TooManyItems
        );
        assert_eq!(
            parse_telemetry(br#"{"A": [{"x": 1}, {"x": 2}]}"#, NOW, &few)
                .unwrap_err()
                .code(),
            ReasonCode::TooManyItems
        );
    }

    #[test]
    fn seed_001_rpc() {
        let bytes = encode_rpc_request(
            &n("Device A"),
            &CorrelationId::Int(1),
            "toggle_gpio",
            &serde_json::json!({"pin": 1}),
        );
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&bytes).unwrap(),
            serde_json::json!({"device": "Device A", "data": {"id": 1, "method": "toggle_gpio", "params": {"pin": 1}}})
        );
        let r = parse_rpc_request(&bytes).unwrap();
        assert_eq!(
            (r.device.as_str(), r.id.clone(), r.method.as_str()),
            ("Device A", CorrelationId::Int(1), "toggle_gpio")
        );

        let reply = parse_rpc_reply(
            br#"{"device": "Device A", "id": 1, "data": {"success": true}}"#,
            &l(),
        )
        .unwrap();
        assert_eq!(reply.device, n("Device A"));
        assert_eq!(reply.id, CorrelationId::Int(1));
        assert_eq!(reply.data, serde_json::json!({"success": true}));
        assert_eq!(
            parse_rpc_reply(
                &encode_rpc_reply(&reply.device, &reply.id, &reply.data),
                &l()
            )
            .unwrap(),
            reply
        );
        let code = |s: &str| parse_rpc_reply(s.as_bytes(), &l()).unwrap_err().code();
        assert_eq!(
            code(r#"{"device": "A", "data": {}}"#),
            ReasonCode::MissingField
        );
        assert_eq!(code(r#"{"id": 1, "data": {}}"#), ReasonCode::MissingField);
        assert_eq!(
            code(r#"{"device": "A", "id": {}, "data": {}}"#),
            ReasonCode::WrongType
        );
    }

    #[test]
    fn seed_001_claim() {
        let c = parse_claim(
            br#"{"Device A": {"secretKey": "value_A", "durationMs": 60000}, "Device B": {"secretKey": "value_B", "durationMs": 60000}}"#,
            &l(),
        )
        .unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[1].1.secret_key.as_deref(), Some("value_B"));
        let c2 = parse_claim(br#"{"Device A": {}}"#, &l()).unwrap();
        assert_eq!(c2[0].1, ClaimRequest::default());
        assert_eq!(parse_claim(&encode_claim(&c), &l()).unwrap(), c);
        assert_eq!(
            parse_claim(b"{}", &l()).unwrap_err().code(),
            ReasonCode::EmptyData
        );
        assert_eq!(
            parse_claim(br#"{"A": 1}"#, &l()).unwrap_err().code(),
            ReasonCode::WrongType
        );
    }
}
