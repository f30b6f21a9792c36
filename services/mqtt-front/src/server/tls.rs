//! The TLS listeners' certificate and key, reloaded when their files change.

use super::*;

fn load_pair(files: &TlsFiles) -> Result<Arc<rustls::sign::CertifiedKey>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(&files.cert_path)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("tls.cert_path {}: {e}", files.cert_path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "tls.cert_path {}: no certificate in the file",
            files.cert_path.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key_path)
        .map_err(|e| format!("tls.key_path {}: {e}", files.key_path.display()))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("tls.key_path {}: {e}", files.key_path.display()))?;
    let pair = rustls::sign::CertifiedKey::new(certs, signer);
    pair.keys_match()
        .map_err(|e| format!("tls: certificate and key do not match: {e}"))?;
    Ok(Arc::new(pair))
}

fn modified(files: &TlsFiles) -> Option<(std::time::SystemTime, std::time::SystemTime)> {
    let m = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Some((m(&files.cert_path)?, m(&files.key_path)?))
}

/// The TLS listeners' certificate, reloaded from its files when they change.
#[derive(Debug)]
struct Reloading {
    files: TlsFiles,
    state: std::sync::Mutex<ReloadState>,
}

#[derive(Debug)]
struct ReloadState {
    pair: Arc<rustls::sign::CertifiedKey>,
    stamp: Option<(std::time::SystemTime, std::time::SystemTime)>,
    checked: std::time::Instant,
}

impl rustls::server::ResolvesServerCert for Reloading {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let every = std::time::Duration::from_secs(self.files.reload_check_secs);
        if st.checked.elapsed() >= every {
            st.checked = std::time::Instant::now();
            let stamp = modified(&self.files);
            if stamp != st.stamp {
                match load_pair(&self.files) {
                    Ok(pair) => {
                        tracing::info!(cert = %self.files.cert_path.display(), "TLS certificate reloaded");
                        st.pair = pair;
                        st.stamp = stamp;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "renewed TLS certificate not loaded; keeping the previous one");
                    }
                }
            }
        }
        Some(st.pair.clone())
    }
}

/// The TLS listeners' settings: the certificate pair (checked now, so that a bad file
/// stops the start with the field named) and its reloading.
pub(crate) fn tls_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, String> {
    let stamp = modified(files);
    let pair = load_pair(files)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Reloading {
            files: files.clone(),
            state: std::sync::Mutex::new(ReloadState {
                pair,
                stamp,
                checked: std::time::Instant::now(),
            }),
        }));
    Ok(Arc::new(cfg))
}

/// MQTT over TLS.
pub(crate) fn tls_service(
    front: Arc<Front>,
    tls: Arc<rustls::ServerConfig>,
) -> impl ServiceFactory<Io, SharedCfg, Response = (), Error = io::Error, InitError = ()> {
    chain_factory(TlsAcceptor::new(tls))
        .and_then(mqtt_service(front).map_err(|e| io::Error::other(format!("{e:?}"))))
}
