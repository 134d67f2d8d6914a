//! `--tls-ca`: streams and publishers over TLS (ALPN `http/1.1`), the way a
//! browser reaches a node that terminates TLS itself.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// A connection, plain or TLS.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

static CONNECTOR: OnceLock<tokio_rustls::TlsConnector> = OnceLock::new();
/// The same, offering only h2 in ALPN (`--h2`).
static CONNECTOR_H2: OnceLock<tokio_rustls::TlsConnector> = OnceLock::new();

/// Trusts the PEM certificate(s) in `ca` for every connection after this.
pub(crate) fn init(ca: &Path) -> Result<(), String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))? {
        let cert = cert.map_err(|e| format!("{}: {e}", ca.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{}: no certificate", ca.display()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut h2 = config.clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    h2.alpn_protocols = vec![b"h2".to_vec()];
    CONNECTOR_H2
        .set(tokio_rustls::TlsConnector::from(Arc::new(h2)))
        .and_then(|()| CONNECTOR.set(tokio_rustls::TlsConnector::from(Arc::new(config))))
        .map_err(|_| "TLS set up twice".to_owned())
}

/// Whether connections use TLS (`--tls-ca`).
pub(crate) fn enabled() -> bool {
    CONNECTOR.get().is_some()
}

/// `tcp` as it is, or (with `--tls-ca`) after a TLS handshake naming
/// `target`'s address.
pub(crate) async fn wrap(tcp: TcpStream, target: SocketAddr) -> io::Result<Box<dyn Io>> {
    wrap_with(&CONNECTOR, tcp, target, None).await
}

/// [`wrap`] for HTTP/2: ALPN h2 over TLS (which the server must pick), h2c
/// with prior knowledge otherwise.
pub(crate) async fn wrap_h2(tcp: TcpStream, target: SocketAddr) -> io::Result<Box<dyn Io>> {
    wrap_with(&CONNECTOR_H2, tcp, target, Some(b"h2")).await
}

async fn wrap_with(
    connector: &OnceLock<tokio_rustls::TlsConnector>,
    tcp: TcpStream,
    target: SocketAddr,
    must_pick: Option<&[u8]>,
) -> io::Result<Box<dyn Io>> {
    match connector.get() {
        None => Ok(Box::new(tcp)),
        Some(c) => {
            let name = ServerName::IpAddress(target.ip().into());
            let tls = c.connect(name, tcp).await?;
            if must_pick.is_some_and(|p| tls.get_ref().1.alpn_protocol() != Some(p)) {
                return Err(io::Error::other("the server did not pick h2 (ALPN)"));
            }
            Ok(Box::new(tls))
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rustls_pki_types::PrivateKeyDer;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn key_file(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/keys")
            .join(name)
    }

    /// Every connection of this test process trusts the test CA (tests
    /// run in parallel and the connectors are the process's).
    pub(crate) fn trust_test_ca() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| init(&key_file("tls-ca.pem")).unwrap());
    }

    /// A server with the test certificate, offering `alpn`.
    pub(crate) fn test_acceptor(alpn: &[&[u8]]) -> tokio_rustls::TlsAcceptor {
        let certs: Vec<_> = CertificateDer::pem_file_iter(key_file("tls-cert.pem"))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = PrivateKeyDer::from_pem_file(key_file("tls-key.pem")).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }

    #[tokio::test]
    async fn streams_connect_over_tls_to_a_server_the_ca_vouches_for() {
        assert!(
            init(&key_file("tls-key.pem")).is_err(),
            "no certificate in it"
        );
        trust_test_ca();
        let acceptor = test_acceptor(&[]);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.unwrap();
            let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
            let mut head = vec![0u8; 64];
            let n = tls.read(&mut head).await.unwrap();
            tls.write_all(b"HTTP/1.1 200 OK\r\n\r\ndata: x\n\n")
                .await
                .unwrap();
            (alpn, String::from_utf8_lossy(&head[..n]).into_owned())
        });
        let src = std::net::Ipv4Addr::new(127, 0, 0, 2);
        let mut s = crate::stream::connect(target, src, "/api/sse/subscribe/u", None, None)
            .await
            .unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap_or_default();
        let (alpn, head) = server.await.unwrap();
        assert!(
            head.starts_with("GET /api/sse/subscribe/u HTTP/1.1\r\n"),
            "{head}"
        );
        assert_eq!(alpn, None, "the server offered no ALPN");
        assert!(String::from_utf8_lossy(&got).ends_with("data: x\n\n"));
    }
}
