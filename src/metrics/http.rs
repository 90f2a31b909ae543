//! `GET /metrics` over HTTP for a Prometheus server to scrape.
//!
//! A std listener rather than an HTTP crate: one read-only endpoint, requests of
//! a few hundred bytes, one scrape every few seconds. An HTTP server crate would
//! bring an async runtime or a thread pool for no gain here.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use crate::exec::Core;

/// Listens on `addr` and answers scrapes on a thread of its own until the
/// process ends. Fails at once when the address cannot be bound.
pub fn serve(core: Core, addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let l = TcpListener::bind(addr)?;
    let bound = l.local_addr()?;
    if !bound.ip().is_loopback() && core.config().metrics_peer_labels {
        tracing::warn!(%bound, "metrics are served beyond this machine with metrics.peer_labels: anyone who can reach the address sees peer names");
    }
    std::thread::Builder::new()
        .name("peerfs-metrics".into())
        .spawn(move || {
            for s in l.incoming() {
                match s {
                    Ok(s) => {
                        if let Err(e) = answer(&core, s) {
                            tracing::debug!(error = %e, "metrics request failed");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "metrics listener: accept failed"),
                }
            }
        })?;
    tracing::info!(%bound, "serving metrics at http://{bound}/metrics");
    Ok(bound)
}

fn answer(core: &Core, mut s: TcpStream) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut r = BufReader::new(s.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    // The headers are not needed: read them to the blank line, within bounds.
    let mut h = String::new();
    for _ in 0..100 {
        h.clear();
        if r.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, ctype, body) = match (method, path) {
        ("GET", "/metrics") | ("HEAD", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            super::text(core),
        ),
        ("GET", _) | ("HEAD", _) => (
            "404 Not Found",
            "text/plain",
            "peerfs serves only /metrics\n".to_string(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "use GET /metrics\n".to_string(),
        ),
    };
    write!(
        s,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    if method != "HEAD" {
        s.write_all(body.as_bytes())?;
    }
    s.flush()
}
