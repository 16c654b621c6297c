//! TLS for listeners: rustls with ALPN h2 + http/1.1.

use crate::config::{ListenerProtocol, ServerTls};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {detail}")]
    File { path: String, detail: String },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A rustls server config for a listener, offering by ALPN the protocols the listener speaks.
pub fn server_config(
    t: &ServerTls,
    protocol: ListenerProtocol,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let cert_path = t.cert_file.display().to_string();
    let key_path = t.key_file.display().to_string();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&t.cert_file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::File {
            path: cert_path.clone(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::File {
            path: cert_path,
            detail: "no PEM certificate in it".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(&t.key_file).map_err(|e| TlsError::File {
        path: key_path,
        detail: format!("no usable private key: {e}"),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    cfg.alpn_protocols = match protocol {
        ListenerProtocol::Auto => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        ListenerProtocol::Http1 => vec![b"http/1.1".to_vec()],
        ListenerProtocol::Http2 => vec![b"h2".to_vec()],
    };
    Ok(Arc::new(cfg))
}
