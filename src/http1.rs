//! Plain HTTP/1.1 listeners served by hyper directly (the metrics scrape, ZITADEL's events): one accept loop
//! and one handler per listener, no router.

use std::{future::Future, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

/// An answer of such a listener.
pub type Answer = http::Response<Full<Bytes>>;

/// How long a client may take to send a request's headers before the connection is closed (a slow client
/// must not hold a connection open for ever).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers every request on `listener` with `handler` until the task running this is aborted. `what` names
/// the listener in log lines.
pub async fn serve<H, F>(listener: TcpListener, what: &'static str, handler: H)
where
    H: Fn(http::Request<hyper::body::Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Answer> + Send + 'static,
{
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
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let answer = handler(request);
                async move { Ok::<_, std::convert::Infallible>(answer.await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
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
