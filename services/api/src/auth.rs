//! Who is calling: the bootstrap admin, an application API token, or a Losant device token.
//!
//! Every credential is a bearer token. API tokens are looked up by their SHA-256 (the store
//! keeps nothing else); device tokens are stateless, signed with HMAC-SHA256:
//! `base64url(tenant \n device \n key \n expires_ms) . base64url(mac)`, and the access key
//! they came from is checked again on every use, so deactivating the key ends them.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use fluxgate_model::{DeviceId, TenantId};
use fluxgate_store::{ApiScope, DeviceKind, RegistryStore, hash_secret};
use ring::hmac;

use crate::error::ApiError;

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The bootstrap token: everything.
    Admin,
    /// An application API token.
    App {
        /// Its application.
        tenant: TenantId,
        /// What it may do.
        scope: ApiScope,
        /// Its name (who claims a device, when the claim names nobody).
        name: String,
    },
    /// A Losant device token.
    Device {
        /// Its application.
        tenant: TenantId,
        /// The device.
        device: DeviceId,
    },
}

impl Caller {
    /// Who the caller is, for records that name a person or program (a claim's owner).
    pub fn who(&self) -> String {
        match self {
            Caller::Admin => "admin".to_owned(),
            Caller::App { name, .. } => format!("token:{name}"),
            Caller::Device { device, .. } => format!("device:{device}"),
        }
    }

    /// Allows the call if the caller may act with `scope` in application `app`:
    /// 403 for another application's token or a lower scope, 403 for device tokens.
    pub fn require(&self, app: &TenantId, scope: ApiScope) -> Result<(), ApiError> {
        match self {
            Caller::Admin => Ok(()),
            Caller::App {
                tenant, scope: s, ..
            } if tenant == app => {
                if s.allows(scope) {
                    Ok(())
                } else {
                    Err(ApiError::forbidden(format!(
                        "this token has scope {}; {} is needed",
                        s.as_str(),
                        scope.as_str()
                    )))
                }
            }
            Caller::App { .. } => Err(ApiError::forbidden(
                "this token belongs to another application",
            )),
            Caller::Device { .. } => Err(ApiError::forbidden(
                "device tokens only reach their device's endpoints",
            )),
        }
    }

    /// Only the bootstrap admin.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self {
            Caller::Admin => Ok(()),
            _ => Err(ApiError::forbidden(
                "only the bootstrap admin token may do this",
            )),
        }
    }
}

/// Signs and checks device tokens.
#[derive(Debug)]
pub struct DeviceTokens {
    key: hmac::Key,
    ttl_ms: i64,
}

impl DeviceTokens {
    /// With `secret` as the HMAC key (random when empty).
    pub fn new(secret: &str, ttl_secs: u64) -> Result<Self, ApiError> {
        let key = if secret.is_empty() {
            hmac::Key::new(hmac::HMAC_SHA256, random_token(32)?.as_bytes())
        } else {
            hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes())
        };
        Ok(DeviceTokens {
            key,
            ttl_ms: i64::try_from(ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
        })
    }

    /// A token for `device`, from access key `key`; with its expiry.
    pub fn issue(
        &self,
        tenant: &TenantId,
        device: &DeviceId,
        key: &str,
        now_ms: i64,
    ) -> (String, i64) {
        let exp = now_ms.saturating_add(self.ttl_ms);
        let body = format!("{tenant}\n{device}\n{key}\n{exp}");
        let tag = hmac::sign(&self.key, body.as_bytes());
        (
            format!("{}.{}", B64.encode(body), B64.encode(tag.as_ref())),
            exp,
        )
    }

    /// The (tenant, device, key) of a valid, unexpired token.
    fn check(&self, token: &str, now_ms: i64) -> Option<(TenantId, DeviceId, String)> {
        let (body, tag) = token.split_once('.')?;
        let body = B64.decode(body).ok()?;
        let tag = B64.decode(tag).ok()?;
        hmac::verify(&self.key, &body, &tag).ok()?;
        let text = String::from_utf8(body).ok()?;
        let mut parts = text.split('\n');
        let (t, d, k, exp) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if exp.parse::<i64>().ok()? < now_ms {
            return None;
        }
        Some((TenantId::new(t).ok()?, DeviceId::new(d).ok()?, k.to_owned()))
    }
}

/// A random URL-safe token of `bytes` random bytes.
pub fn random_token(bytes: usize) -> Result<String, ApiError> {
    use ring::rand::SecureRandom;
    let mut buf = vec![0u8; bytes];
    ring::rand::SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| ApiError::unavailable("no randomness available"))?;
    Ok(B64.encode(buf))
}

/// Authenticates the `Authorization: Bearer` header.
pub async fn authenticate(
    header: Option<&str>,
    bootstrap: &str,
    tokens: &DeviceTokens,
    store: &dyn RegistryStore,
    now_ms: i64,
) -> Result<Caller, ApiError> {
    let token = header
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::unauthorized("send Authorization: Bearer <token>"))?;
    if !bootstrap.is_empty()
        && bool::from(subtle::ConstantTimeEq::ct_eq(
            token.as_bytes(),
            bootstrap.as_bytes(),
        ))
    {
        return Ok(Caller::Admin);
    }
    if let Some((tenant, device, key)) = tokens.check(token, now_ms) {
        let key_ok = store
            .access_key(key)
            .await?
            .is_some_and(|k| k.active && k.tenant == tenant);
        if !key_ok {
            return Err(ApiError::unauthorized(
                "the access key behind this device token is no longer active",
            ));
        }
        return Ok(Caller::Device { tenant, device });
    }
    match store.api_token(hash_secret(token)).await? {
        Some(t) => Ok(Caller::App {
            tenant: t.tenant,
            scope: t.scope,
            name: t.name,
        }),
        None => Err(ApiError::unauthorized("unknown or expired token")),
    }
}

/// Whether a device-token caller may post state for `target`: its own, or a peripheral
/// that allows it as gateway.
pub async fn device_may_post(
    store: &dyn RegistryStore,
    tenant: &TenantId,
    caller: &DeviceId,
    target: &DeviceId,
) -> Result<bool, ApiError> {
    if caller == target {
        return Ok(true);
    }
    let Some(gw) = store.device(tenant.clone(), caller.clone()).await? else {
        return Ok(false);
    };
    if gw.kind != DeviceKind::Gateway {
        return Ok(false);
    }
    Ok(store
        .device(tenant.clone(), target.clone())
        .await?
        .is_some_and(|p| p.accepts_gateway(caller)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_tokens_are_signed_and_expire() {
        let t = DeviceTokens::new("k", 60).unwrap();
        let (tenant, dev) = (TenantId::new("a").unwrap(), DeviceId::new("d").unwrap());
        let (tok, exp) = t.issue(&tenant, &dev, "key1", 1_000);
        assert_eq!(exp, 61_000);
        assert_eq!(
            t.check(&tok, 2_000),
            Some((tenant.clone(), dev.clone(), "key1".into()))
        );
        assert_eq!(t.check(&tok, 61_001), None, "expired");
        let other = DeviceTokens::new("other", 60).unwrap();
        assert_eq!(other.check(&tok, 2_000), None, "another key");
        let mut forged = tok.clone();
        forged.insert(3, 'x');
        assert_eq!(t.check(&forged, 2_000), None);
        assert_eq!(t.check("garbage", 2_000), None);
    }

    #[test]
    fn scopes_and_applications() {
        let app = TenantId::new("a").unwrap();
        let other = TenantId::new("b").unwrap();
        let w = Caller::App {
            tenant: app.clone(),
            scope: ApiScope::Write,
            name: "ops".into(),
        };
        assert!(w.require(&app, ApiScope::Read).is_ok());
        assert!(w.require(&app, ApiScope::Write).is_ok());
        assert_eq!(w.require(&app, ApiScope::Admin).unwrap_err().status, 403);
        assert_eq!(w.require(&other, ApiScope::Read).unwrap_err().status, 403);
        assert!(Caller::Admin.require(&other, ApiScope::Admin).is_ok());
        assert!(w.require_admin().is_err());
    }
}
