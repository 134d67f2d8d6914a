//! `--h2`: streams over HTTP/2 (h2c with prior knowledge, or TLS with ALPN
//! h2), `--streams-per-connection` of them on each connection, the way a
//! browser multiplexes an origin's streams.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::net::TcpSocket;

use crate::args::Args;
use crate::stream::{endpoint, Frames, StreamState, Totals};
use crate::tls;

/// Opens this process's streams, `--streams-per-connection` per connection,
/// at most `sem`'s permits connecting at once; each stream read in its own
/// task. Returns once every connection has been started.
pub(crate) async fn open_connections(
    args: &Args,
    totals: &Arc<Totals>,
    tokens: Vec<Option<String>>,
    sem: Arc<tokio::sync::Semaphore>,
) {
    let per = usize::from(args.streams_per_connection);
    let check_order = args.check_order();
    let windows = args.h2_windows;
    let mut tokens = tokens.into_iter();
    for first in (0..args.connections).step_by(per) {
        let streams: Vec<Planned> = (first..(first + per).min(args.connections))
            .map(|local| {
                let (i, target, src, path) = endpoint(args, local);
                Planned {
                    i,
                    target,
                    src: IpAddr::V4(src),
                    path,
                    token: tokens.next().flatten(),
                }
            })
            .collect();
        let permit = sem.clone().acquire_owned().await.expect("semaphore");
        let totals = totals.clone();
        tokio::spawn(async move {
            let n = streams.len() as u64;
            let first = streams[0].i;
            match connect(streams, windows).await {
                Ok(bodies) => {
                    drop(permit);
                    let lost = n - bodies.len() as u64;
                    totals.closed.fetch_add(lost, Ordering::Relaxed);
                    for (i, body) in bodies {
                        let totals = totals.clone();
                        totals.connected.fetch_add(1, Ordering::Relaxed);
                        tokio::spawn(async move {
                            read_body(body, &totals, i, check_order).await;
                            totals.closed.fetch_add(1, Ordering::Relaxed);
                        });
                    }
                }
                Err(e) => {
                    drop(permit);
                    totals.closed.fetch_add(n, Ordering::Relaxed);
                    eprintln!("h2 connection from stream {first}: {e}");
                }
            }
        });
    }
}

/// One stream to open.
struct Planned {
    i: usize,
    target: SocketAddr,
    src: IpAddr,
    path: String,
    token: Option<String>,
}

/// Opens one connection and every planned stream on it (all to the first
/// stream's target and source); returns the bodies of those the server
/// answered with 200.
async fn connect(
    streams: Vec<Planned>,
    (stream_window, conn_window): (u32, u32),
) -> Result<Vec<(usize, h2::RecvStream)>, Box<dyn std::error::Error>> {
    let (target, src) = (streams[0].target, streams[0].src);
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(src, 0))?;
    let io = tls::wrap_h2(sock.connect(target).await?, target).await?;
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(stream_window)
        .initial_connection_window_size(conn_window)
        .handshake::<_, bytes::Bytes>(io)
        .await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let scheme = if tls::enabled() { "https" } else { "http" };
    let mut pending = Vec::with_capacity(streams.len());
    for s in streams {
        let mut req = http::Request::get(format!("{scheme}://{target}{}", s.path))
            .header("accept", "text/event-stream");
        if let Some(t) = &s.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let mut send = send.clone().ready().await?;
        let (response, _) = send.send_request(req.body(())?, true)?;
        pending.push((s.i, response));
    }
    let mut bodies = Vec::with_capacity(pending.len());
    for (i, response) in pending {
        match response.await {
            Ok(r) if r.status() == http::StatusCode::OK => bodies.push((i, r.into_body())),
            Ok(r) => eprintln!("h2 stream {i}: status {}", r.status()),
            Err(e) => eprintln!("h2 stream {i}: {e}"),
        }
    }
    Ok(bodies)
}

/// Reads a stream's body until it ends, giving the window back as it goes.
async fn read_body(mut body: h2::RecvStream, totals: &Totals, i: usize, check_order: bool) {
    let mut frames = Frames::new(totals, i, check_order);
    let mut state = StreamState::default();
    while let Some(Ok(chunk)) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk.len());
        frames.push(&chunk);
        frames.take(&mut state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// An h2 server (TLS, ALPN h2: the test process's connections trust
    /// the test CA): answers every stream on every connection with a
    /// preamble frame, then ends it; returns connections and streams seen.
    async fn serve(listener: tokio::net::TcpListener, conns: usize) -> (usize, Vec<String>) {
        let acceptor = crate::tls::tests::test_acceptor(&[b"h2"]);
        let mut paths = Vec::new();
        for _ in 0..conns {
            let (tcp, _) = listener.accept().await.unwrap();
            let tls = acceptor.accept(tcp).await.unwrap();
            let mut conn = h2::server::handshake(tls).await.unwrap();
            while let Some(Ok((req, mut respond))) = conn.accept().await {
                paths.push(req.uri().path().to_owned());
                let answer = http::Response::builder().status(200).body(()).unwrap();
                let mut body = respond.send_response(answer, false).unwrap();
                body.send_data(bytes_of(b": hi\n\n"), true).unwrap();
                if paths.len() % 3 == 0 || paths.len() == 7 {
                    break;
                }
            }
            // Drive the connection a little longer: the frames go out.
            let wait = std::time::Duration::from_millis(100);
            let _ = tokio::time::timeout(wait, conn.accept()).await;
        }
        (conns, paths)
    }

    fn bytes_of(b: &'static [u8]) -> bytes::Bytes {
        bytes::Bytes::from_static(b)
    }

    #[tokio::test]
    async fn streams_share_connections_as_asked() {
        crate::tls::tests::trust_test_ca();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(serve(listener, 3));
        let args = Args::parse_from([
            "sse-load",
            "--h2",
            "--streams-per-connection",
            "3",
            "--connections",
            "7",
            "--target",
            &target,
            "--path",
            "/s/{i}",
        ]);
        let totals = Arc::new(Totals::default());
        let sem = Arc::new(tokio::sync::Semaphore::new(1));
        open_connections(&args, &totals, vec![None; 7], sem).await;
        let (conns, mut paths) = tokio::time::timeout(std::time::Duration::from_secs(10), server)
            .await
            .unwrap()
            .unwrap();
        paths.sort();
        // 7 streams, 3 per connection: 3 connections (3 + 3 + 1).
        assert_eq!(conns, 3);
        assert_eq!(paths, (0..7).map(|i| format!("/s/{i}")).collect::<Vec<_>>());
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while totals.closed.load(Ordering::Relaxed) < 7 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(totals.connected.load(Ordering::Relaxed), 7);
        assert_eq!(
            totals.frames.load(Ordering::Relaxed),
            7,
            "one frame per stream"
        );
        assert_eq!(totals.closed.load(Ordering::Relaxed), 7);
    }
}
