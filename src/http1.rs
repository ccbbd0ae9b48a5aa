//! Plain HTTP/1.1 listeners served by hyper directly (the metrics scrape, ZITADEL's events): one accept loop
//! and one handler per listener, no router, and a cap on the connections served at once.

use std::{future::Future, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};

/// An answer of such a listener.
pub type Answer = http::Response<Full<Bytes>>;

/// How long a client may take to send a request's headers before the connection is closed (a slow client
/// must not hold a connection open for ever). hyper starts this clock whenever it waits for a request, so an
/// idle keep-alive connection is closed after it too.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The most a connection buffers of a request's headers; larger ones are answered 431. Neither ZITADEL's
/// events nor a scrape send more than a few hundred bytes of headers (hyper's default is about 400 kB).
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Connections over the cap being answered 503 at once; beyond these, one is closed without an answer.
const REFUSING_AT_ONCE: usize = 32;
/// How long a refused connection may take to read its 503.
const REFUSAL_TIME: Duration = Duration::from_secs(1);
/// What a refused connection may send before it is closed anyway.
const REFUSAL_DRAIN_BYTES: usize = 64 * 1024;
/// The answer to a connection over the cap, written without reading its request.
const TOO_MANY_CONNECTIONS: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: text/plain; charset=utf-8\r\n\
retry-after: 1\r\n\
connection: close\r\n\
content-length: 55\r\n\
\r\n\
too many connections to this listener; try again later\n";

/// How many connections one listener serves at once.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimit {
    /// Connections served at once; one more is answered 503 at once and closed.
    pub max_connections: usize,
    /// Counts a connection refused for the cap (a metric; this module knows none).
    pub on_refused: fn(),
}

/// Answers every request on `listener` with `handler` until the task running this is aborted. `what` names
/// the listener in log lines.
pub async fn serve<H, F>(
    listener: TcpListener,
    what: &'static str,
    limit: ConnectionLimit,
    handler: H,
) where
    H: Fn(http::Request<hyper::body::Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Answer> + Send + 'static,
{
    let open = Arc::new(Semaphore::new(
        limit.max_connections.min(Semaphore::MAX_PERMITS),
    ));
    let refusing = Arc::new(Semaphore::new(REFUSING_AT_ONCE));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, listener = what, "could not accept a connection");
                // E.g. EMFILE: back off briefly instead of spinning.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Taken here, in accept order, so the cap holds however fast connections arrive.
        let Ok(place) = Arc::clone(&open).try_acquire_owned() else {
            (limit.on_refused)();
            tracing::debug!(listener = what, "connection refused: too many open");
            refuse(stream, &refusing);
            continue;
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let _place = place;
            let service = hyper::service::service_fn(move |request| {
                let answer = handler(request);
                async move { Ok::<_, std::convert::Infallible>(answer.await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_HEAD_BYTES)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Answers a connection over the cap with 503 and closes it, without parsing what it sends. What it sent is
/// read and dropped first (briefly, boundedly): closing a socket with unread data resets the connection, and
/// the client might never see the answer.
fn refuse(mut stream: TcpStream, refusing: &Arc<Semaphore>) {
    let Ok(refusal) = Arc::clone(refusing).try_acquire_owned() else {
        // Refusing too many already: closed at once.
        return;
    };
    tokio::spawn(async move {
        let _refusal = refusal;
        let _ = tokio::time::timeout(REFUSAL_TIME, async {
            stream.write_all(TOO_MANY_CONNECTIONS).await?;
            stream.shutdown().await?;
            let mut sink = [0u8; 4096];
            let mut drained = 0;
            while drained < REFUSAL_DRAIN_BYTES {
                match stream.read(&mut sink).await? {
                    0 => break,
                    read => drained += read,
                }
            }
            Ok::<_, std::io::Error>(())
        })
        .await;
    });
}

/// A plain-text answer.
pub fn text(status: http::StatusCode, content_type: &'static str, body: String) -> Answer {
    let mut response = http::Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_declares_its_length() {
        let text = std::str::from_utf8(TOO_MANY_CONNECTIONS).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{text}"
        );
    }

    static REFUSED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    fn count_refused() {
        REFUSED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    async fn status_of(stream: &mut TcpStream) -> String {
        let mut answer = Vec::new();
        let mut byte = [0u8; 1];
        while !answer.ends_with(b"\r\n") {
            assert_eq!(
                stream.read(&mut byte).await.unwrap(),
                1,
                "the answer ended early"
            );
            answer.push(byte[0]);
        }
        String::from_utf8(answer).unwrap()
    }

    #[tokio::test]
    async fn a_connection_over_the_cap_is_answered_503_and_a_freed_place_is_taken_again() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limit = ConnectionLimit {
            max_connections: 1,
            on_refused: count_refused,
        };
        let server = tokio::spawn(serve(listener, "test", limit, |_request| async {
            text(http::StatusCode::OK, "text/plain", "ok\n".to_owned())
        }));
        let request = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";
        // The one place: a keep-alive connection that has been answered once, so it is surely served.
        let mut first = TcpStream::connect(addr).await.unwrap();
        first.write_all(request).await.unwrap();
        assert_eq!(status_of(&mut first).await, "HTTP/1.1 200 OK\r\n");
        let mut second = TcpStream::connect(addr).await.unwrap();
        second.write_all(request).await.unwrap();
        assert_eq!(
            status_of(&mut second).await,
            "HTTP/1.1 503 Service Unavailable\r\n"
        );
        assert!(REFUSED.load(std::sync::atomic::Ordering::SeqCst) >= 1);
        // The first connection goes; its place is free again (it is given back once the server has seen the
        // close, so a new connection may need a few tries).
        drop(first);
        let mut tries = 0;
        loop {
            let mut next = TcpStream::connect(addr).await.unwrap();
            next.write_all(request).await.unwrap();
            if status_of(&mut next).await == "HTTP/1.1 200 OK\r\n" {
                break;
            }
            tries += 1;
            assert!(tries < 100, "the place was never given back");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server.abort();
    }
}
