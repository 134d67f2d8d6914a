//! TLS (`--tls-cert`, `--tls-key`): rustls with the ring provider, ALPN
//! offering h2 then http/1.1, so a browser multiplexes its `EventSource`s
//! over one HTTP/2 connection instead of hitting the six-per-origin limit of
//! HTTP/1.1. h2 is served by herald's HTTP/2 server (hyper's with
//! `--own-http2 false`), an HTTP/1.1 subscribe request by herald's writer;
//! after a TLS 1.3 handshake herald seals and opens the records itself
//! (`sealed`, `--tls-own-records`).

use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

mod sealed;
pub(crate) use sealed::{keep, seal, Mode, RecordReads, Sealed, Sealing, Tls};

/// Loads a certificate chain and its private key (PEM files) into a server
/// configuration. The error names what is wrong, not the key's contents.
pub fn load(cert_path: &str, key_path: &str) -> Result<Arc<ServerConfig>, (&'static str, String)> {
    let certs = pem_certs(std::path::Path::new(cert_path)).map_err(|e| ("tls-cert", e))?;
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| ("tls-key", format!("holds no usable private key: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ("tls-cert", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ("tls-key", format!("does not match the certificate: {e}")))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // A stream's traffic secrets move to herald's record sealer (`sealed`).
    cfg.enable_secret_extraction = true;
    Ok(Arc::new(cfg))
}

/// Every certificate in a PEM file; an error if there is none.
fn pem_certs(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot be read as PEM: {e}"))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("holds an invalid certificate: {e}"))?;
    if certs.is_empty() {
        return Err("holds no certificate".into());
    }
    Ok(certs)
}

/// CA certificates (PEM) as DER, for a client that trusts them.
pub fn load_certs(path: &std::path::Path) -> Result<Vec<Vec<u8>>, String> {
    Ok(pem_certs(path)?.into_iter().map(|c| c.to_vec()).collect())
}
