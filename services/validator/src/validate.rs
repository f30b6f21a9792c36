//! The decision for one envelope.

use fluxgate_model::{
    Body, DeviceRef, Dialect, Envelope, Kind, Reject, Rejection, Sample, Value, Values,
    thingsboard::gateway::DEFAULT_PROFILE,
};
use fluxgate_store::{AttributeType, AutoCreate, Device, RegistryStore, StoreError};

use crate::quota::Quotas;

use crate::ValidatorConfig;

/// Where a validated piece goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Storable data, to `fluxgate.ingest.valid`.
    Valid(Envelope),
    /// Something for the dispatcher (and the connection log), to `fluxgate.device.events`.
    Event(Envelope),
    /// Refused (in whole or in part), to `fluxgate.ingest.rejected`.
    Rejected(Rejection),
}

/// A refusal of `env` (whole), its body as the log's excerpt.
fn rejected(env: &Envelope, reject: &Reject) -> Output {
    rejected_with(env, reject, &env.body)
}

/// A refusal of part of `env`: `part` (a sample, a value) is the excerpt.
fn rejected_with(env: &Envelope, reject: &Reject, part: &impl serde::Serialize) -> Output {
    let excerpt = serde_json::to_vec(part).unwrap_or_default();
    Output::Rejected(Rejection::new(
        env.tenant.clone(),
        env.device.as_str(),
        env.received_ms,
        reject,
        &excerpt,
    ))
}

/// Converts `v` to the defined attribute type where that loses nothing (Losant rules:
/// `"72"` becomes 72 for a number, `"true"` a boolean, numbers and booleans become text
/// for a string, a gps value is a `"lat,lon"` string in range). A refused value is handed
/// back with the reason, for the rejected log.
fn convert(key: &str, v: Value, ty: AttributeType) -> Result<Value, (Reject, Value)> {
    let mismatch = || Reject::TypeMismatch {
        key: key.to_owned(),
        expected: match ty {
            AttributeType::Number => "a number",
            AttributeType::String => "a string",
            AttributeType::Boolean => "a boolean",
            AttributeType::Gps => "a \"lat,lon\" gps string",
            AttributeType::Json => "JSON",
        },
    };
    Ok(match (ty, v) {
        (AttributeType::Number, v @ (Value::Integer(_) | Value::Float(_))) => v,
        (AttributeType::Number, Value::String(s)) => {
            let t = s.trim();
            if let Ok(i) = t.parse::<i64>() {
                Value::Integer(i)
            } else {
                match t.parse::<f64>() {
                    Ok(f) if f.is_finite() => Value::Float(f),
                    _ => return Err((mismatch(), Value::String(s))),
                }
            }
        }
        (AttributeType::String, Value::String(s)) => Value::String(s),
        (AttributeType::String, Value::Integer(i)) => Value::String(i.to_string()),
        (AttributeType::String, Value::Float(f)) => Value::String(f.to_string()),
        (AttributeType::String, Value::Bool(b)) => Value::String(b.to_string()),
        (AttributeType::Boolean, Value::Bool(b)) => Value::Bool(b),
        (AttributeType::Boolean, Value::Integer(0)) => Value::Bool(false),
        (AttributeType::Boolean, Value::Integer(1)) => Value::Bool(true),
        (AttributeType::Boolean, Value::String(s)) => {
            match s.trim().to_ascii_lowercase().as_str() {
                "true" | "1" => Value::Bool(true),
                "false" | "0" => Value::Bool(false),
                _ => return Err((mismatch(), Value::String(s))),
            }
        }
        (AttributeType::Gps, Value::String(s)) => {
            let ok = s.split_once(',').is_some_and(|(lat, lon)| {
                matches!((lat.trim().parse::<f64>(), lon.trim().parse::<f64>()),
                    (Ok(a), Ok(o)) if (-90.0..=90.0).contains(&a) && (-180.0..=180.0).contains(&o))
            });
            if !ok {
                return Err((mismatch(), Value::String(s)));
            }
            Value::String(s)
        }
        (AttributeType::Json, v) => v,
        (_, v) => return Err((mismatch(), v)),
    })
}

/// Decides what becomes of `env`. Errors are store failures only (retry the record);
/// everything about the envelope itself is an [`Output`].
pub async fn validate(
    store: &dyn RegistryStore,
    cfg: &ValidatorConfig,
    quotas: &Quotas,
    mut env: Envelope,
    now_ms: i64,
) -> Result<Vec<Output>, StoreError> {
    // 1. Resolve the device.
    let device: Device = match &env.device {
        // Seed 001: a disconnect of a device ThingsBoard does not know is ignored.
        DeviceRef::Name(name) if matches!(env.body, Body::Disconnect { .. }) => {
            match store.device_named(env.tenant.clone(), name.clone()).await? {
                Some(d) => d,
                None => {
                    tracing::debug!(tenant = %env.tenant, device = %name,
                        "validator: gateway disconnect of an unknown device ignored");
                    return Ok(Vec::new());
                }
            }
        }
        DeviceRef::Name(name) => {
            match store.device_named(env.tenant.clone(), name.clone()).await? {
                Some(d) => d,
                // First sight: created, bound to the gateway that named it, within the quotas.
                None => {
                    let gateway = env.via.as_ref();
                    if let Some(reject) = quotas.check(store, &env.tenant, gateway, name).await? {
                        return Ok(vec![rejected(&env, &reject)]);
                    }
                    let profile = match &env.body {
                        Body::Connect {
                            profile: Some(p), ..
                        } => p.clone(),
                        _ => DEFAULT_PROFILE.to_owned(),
                    };
                    let how = AutoCreate {
                        profile,
                        gateway: env.via.clone(),
                        now_ms,
                    };
                    let named = store
                        .device_by_name(env.tenant.clone(), name.clone(), how)
                        .await?;
                    if named.created {
                        quotas.created(&env.tenant, gateway);
                    }
                    named.device
                }
            }
        }
        DeviceRef::Id(id) => match store.device(env.tenant.clone(), id.clone()).await? {
            Some(d) => d,
            None => {
                let reject = Reject::UnknownDevice {
                    device: id.to_string(),
                };
                return Ok(vec![rejected(&env, &reject)]);
            }
        },
    };
    env.device = DeviceRef::Id(device.id.clone());

    // 2. A gateway acting for a device needs the device's permission, whatever dialect it
    //    speaks: the device is a peripheral that allows it (any gateway, or this one; a
    //    device a gateway created is bound to that gateway).
    if let Some(gw) = &env.via
        && !device.accepts_gateway(gw)
    {
        let reject = Reject::PeripheralNotAllowed {
            gateway: gw.to_string(),
            peripheral: device.id.to_string(),
        };
        return Ok(vec![rejected(&env, &reject)]);
    }

    // 3. By kind.
    let mut out = Vec::new();
    match env.body.kind() {
        Kind::Telemetry => {
            let taken = match &mut env.body {
                Body::Telemetry { samples, .. } => std::mem::take(samples),
                _ => Vec::new(),
            };
            if let Err(r) = cfg.limits.check_items("samples", taken.len()) {
                return Ok(vec![rejected_with(&env, &r, &taken)]);
            }
            // Timestamps and limits: samples outside them are refused (the rest is kept).
            let mut kept = Vec::with_capacity(taken.len());
            for s in taken {
                let checked = cfg
                    .time_window
                    .check(s.ts_ms, now_ms)
                    .and_then(|()| cfg.limits.check_values(&s.values));
                match checked {
                    Ok(()) => kept.push(s),
                    Err(r) => out.push(rejected_with(&env, &r, &s)),
                }
            }
            // Losant: only defined attributes, converted to their types.
            if env.dialect == Dialect::Losant {
                let defs = store
                    .attribute_defs(env.tenant.clone(), device.id.clone())
                    .await?;
                // Undefined keys, with their first value (the rejected log's excerpt).
                let mut undefined = std::collections::BTreeMap::<String, Value>::new();
                for s in &mut kept {
                    let mut values = Values::new();
                    for (k, v) in std::mem::take(&mut s.values) {
                        match defs.iter().find(|d| d.name == k.as_str()) {
                            None => {
                                undefined.entry(k).or_insert(v);
                            }
                            Some(d) => match convert(&k, v, d.kind) {
                                Ok(v) => {
                                    values.insert(k, v);
                                }
                                Err((r, v)) => {
                                    let part = std::collections::BTreeMap::from([(&k, v)]);
                                    out.push(rejected_with(&env, &r, &part));
                                }
                            },
                        }
                    }
                    s.values = values;
                }
                if !undefined.is_empty() {
                    let keys: Vec<&str> = undefined.keys().map(String::as_str).collect();
                    let reject = Reject::UndefinedAttribute {
                        key: keys.join(", "),
                    };
                    out.push(rejected_with(&env, &reject, &undefined));
                }
                kept.retain(|s| !s.values.is_empty());
                merge_same_millisecond(&mut kept);
            }
            if !kept.is_empty() {
                if let Body::Telemetry { samples, .. } = &mut env.body {
                    *samples = kept;
                }
                out.push(Output::Valid(env));
            }
        }
        Kind::Attributes => match &env.body {
            Body::Attributes { values } => match cfg.limits.check_values(values) {
                Ok(()) => out.push(Output::Valid(env)),
                Err(r) => out.push(rejected(&env, &r)),
            },
            _ => out.push(Output::Valid(env)),
        },
        _ => out.push(Output::Event(env)),
    }
    Ok(out)
}

/// Losant: same-millisecond states merge into one (later keys win).
fn merge_same_millisecond(samples: &mut Vec<Sample>) {
    samples.sort_by_key(|s| s.ts_ms);
    let mut merged: Vec<Sample> = Vec::with_capacity(samples.len());
    for s in samples.drain(..) {
        match merged.last_mut() {
            Some(last) if last.ts_ms == s.ts_ms => last.values.extend(s.values),
            _ => merged.push(s),
        }
    }
    *samples = merged;
}

#[cfg(test)]
mod tests {
    use super::*;
    use fluxgate_model::ReasonCode;

    #[test]
    fn lossless_conversions() {
        use AttributeType as T;
        assert_eq!(
            convert("k", Value::from("72"), T::Number),
            Ok(Value::Integer(72))
        );
        assert_eq!(
            convert("k", Value::from(" 72.5 "), T::Number),
            Ok(Value::Float(72.5))
        );
        assert_eq!(
            convert("k", Value::from("hot"), T::Number)
                .unwrap_err()
                .0
                .code(),
            ReasonCode::TypeMismatch
        );
        assert_eq!(
            convert("k", Value::Bool(true), T::Number)
                .unwrap_err()
                .0
                .code(),
            ReasonCode::TypeMismatch
        );
        assert_eq!(
            convert("k", Value::Integer(7), T::String),
            Ok(Value::from("7"))
        );
        assert_eq!(
            convert("k", Value::from("TRUE"), T::Boolean),
            Ok(Value::Bool(true))
        );
        assert_eq!(
            convert("k", Value::Integer(0), T::Boolean),
            Ok(Value::Bool(false))
        );
        assert!(convert("k", Value::Integer(2), T::Boolean).is_err());
        assert_eq!(
            convert("k", Value::from("37.1,-122.4"), T::Gps),
            Ok(Value::from("37.1,-122.4"))
        );
        assert!(convert("k", Value::from("137.1,-122.4"), T::Gps).is_err());
        assert!(convert("k", Value::from("north"), T::Gps).is_err());
        let j = Value::Json(serde_json::json!({"a": 1}));
        assert_eq!(convert("k", j.clone(), T::Json), Ok(j));
    }

    #[test]
    fn same_millisecond_states_merge_later_keys_winning() {
        let s = |ts, pairs: &[(&str, i64)]| Sample {
            ts_ms: ts,
            values: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), Value::Integer(*v)))
                .collect(),
        };
        let mut v = vec![
            s(5, &[("a", 1), ("b", 1)]),
            s(3, &[("a", 0)]),
            s(5, &[("b", 2), ("c", 2)]),
        ];
        merge_same_millisecond(&mut v);
        assert_eq!(v.len(), 2);
        assert_eq!(v[1].values["b"], Value::Integer(2));
        assert_eq!(v[1].values.len(), 3);
    }
}
