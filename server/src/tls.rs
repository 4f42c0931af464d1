//! HTTPS (`--tls-cert` / `--tls-key`): rustls (ring provider) in front of the same router,
//! HTTP/1.1 and HTTP/2 negotiated by ALPN, WebSocket upgrades included, graceful shutdown.
//!
//! The accept loop itself ([`crate::listener`]) is the same with and without TLS.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;

/// Loads a PEM certificate chain and private key.
pub fn load(cert: &Path, key: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let certs = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", cert.display()))?;
    let key =
        PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading {}", key.display()))?;
    config(certs, key)
}

/// A server config for a chain and key, with ALPN `h2` and `http/1.1`.
pub fn config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("certificate and key do not match")?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Serves `router` over TLS until `shutdown` resolves, then waits (at most 5 s) for open
/// connections to finish; the connection timeouts of [`crate::listener`], no caps.
pub async fn serve_tls(
    listener: TcpListener,
    router: Router,
    tls: Arc<rustls::ServerConfig>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = crate::listener::ServeLimits::timeouts_only();
    let metrics = Arc::new(crate::metrics::Metrics::default());
    crate::listener::serve_with(listener, router, limits, metrics, Some(tls), shutdown).await
}
