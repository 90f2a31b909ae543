//! `GET /metrics` over HTTP for a Prometheus server to scrape: hyper's HTTP/1
//! server on a current-thread tokio runtime of its own thread, so a scrape never
//! waits on the executor's threads or the lattice's runtime, nor they on it.
//!
//! Any uid on the machine can connect, so every connection is bounded: in size
//! (a request head of at most [`MAX_HEAD_BYTES`]; the body is never read), in time
//! (the head within [`HEAD_TIMEOUT`], the whole connection within
//! [`CONNECTION_TIMEOUT`]) and in number ([`MAX_CONNECTIONS`] at once; one more is
//! closed as soon as it is accepted). A client that sends a line without end, or
//! a byte every few seconds, or opens hundreds of connections, is cut off, and
//! the next scrape is answered.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Semaphore;

use crate::exec::Core;

/// Connections served at once; a scrape every few seconds needs one.
const MAX_CONNECTIONS: usize = 16;
/// The most a request line and its headers may have (hyper's read buffer; its
/// smallest is 8 KiB). A longer head is answered 431 and the connection closed.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Longest a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a connection lasts, from accept to close, whatever it does.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Listens on `addr` and answers scrapes on a thread of its own until the
/// process ends. Fails at once when the address cannot be bound.
pub fn serve(core: Core, addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    let bound = l.local_addr()?;
    if !bound.ip().is_loopback() && core.config().metrics_peer_labels {
        tracing::warn!(%bound, "metrics are served beyond this machine with metrics.peer_labels: anyone who can reach the address sees peer names");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let l = {
        let _in = rt.enter();
        tokio::net::TcpListener::from_std(l)?
    };
    std::thread::Builder::new()
        .name("peerfs-metrics".into())
        .spawn(move || rt.block_on(accept(core, l)))?;
    tracing::info!(%bound, "serving metrics at http://{bound}/metrics");
    Ok(bound)
}

async fn accept(core: Core, l: tokio::net::TcpListener) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (s, from) = match l.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors, say: let connections end, do not spin.
                tracing::warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%from, "metrics listener: {MAX_CONNECTIONS} connections already, closed");
            continue;
        };
        let core = core.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_buf_size(MAX_HEAD_BYTES)
                .keep_alive(false)
                .serve_connection(
                    TokioIo::new(s),
                    hyper::service::service_fn(|req| {
                        std::future::ready(Ok::<_, Infallible>(answer(&core, &req)))
                    }),
                );
            match tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%from, error = %e, "metrics request failed"),
                Err(_) => tracing::debug!(%from, "metrics connection took too long, closed"),
            }
        });
    }
}

fn answer(core: &Core, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let get = matches!(*req.method(), Method::GET | Method::HEAD);
    let (status, ctype, body) = match (get, req.uri().path()) {
        (true, "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            super::text(core),
        ),
        (true, _) => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "peerfs serves only /metrics\n".to_string(),
        ),
        (false, _) => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "use GET /metrics\n".to_string(),
        ),
    };
    // hyper sends the length, and no body to a HEAD.
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}
