//! The HTTP/1.1 plumbing shared by every server in [`super`]: binding listeners the way
//! kube-proxy (Go) does, and an accept loop that answers each request from a synchronous
//! [`Responder`] and shuts down on a cancellation token.

use std::convert::Infallible;
use std::io;
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// How long a client may take to send its request headers: these endpoints are probed by
/// kubelets and load balancers, never by slow clients, so a stalled connection is dropped.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight requests get to finish once a server is told to stop.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed `accept` (typically EMFILE) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// One reply: these endpoints all answer small bodies computed in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

impl Reply {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// Go's `http.NotFound`.
    pub fn not_found() -> Self {
        Self::new(404, TEXT, "404 page not found\n")
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        let mut resp = Response::new(Full::new(Bytes::from(self.body)));
        *resp.status_mut() = StatusCode::from_u16(self.status).unwrap_or(StatusCode::OK);
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static(self.content_type));
        // Upstream sets it on every JSON answer; harmless on the others.
        h.insert(
            HeaderName::from_static("x-content-type-options"),
            HeaderValue::from_static("nosniff"),
        );
        for (name, value) in self.headers {
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.insert(HeaderName::from_static(name), v);
            }
        }
        resp
    }
}

pub const TEXT: &str = "text/plain; charset=utf-8";
pub const JSON: &str = "application/json";

/// Answers one request. Synchronous on purpose: every answer is computed from in-memory
/// state, and keeping I/O out of handlers keeps them testable without a socket.
pub trait Responder: Send + Sync + 'static {
    fn respond(&self, method: &Method, path: &str) -> Reply;
}

/// Binds a listening TCP socket like Go's `net.Listen("tcp", addr)`: `SO_REUSEADDR` (so a
/// port can be reopened while old connections sit in TIME_WAIT), and an unspecified address
/// (`0.0.0.0` or `::`) listens on both IPv4 and IPv6 when the host has IPv6, else on IPv4.
pub fn bind_like_go(addr: SocketAddr) -> io::Result<TcpListener> {
    if addr.ip().is_unspecified() {
        let dual = SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), addr.port());
        match bind(dual, Some(false)) {
            Ok(l) => return Ok(l),
            Err(e) if addr.is_ipv6() => return Err(e),
            Err(e) => debug!(error = %e, "no dual-stack wildcard socket, listening on IPv4 only"),
        }
        let v4 = SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), addr.port());
        return bind(v4, None);
    }
    bind(addr, None)
}

/// Binds `addr` with `SO_REUSEADDR`; `only_v6` sets `IPV6_V6ONLY` on an IPv6 socket.
/// Must be called from within a Tokio runtime.
pub fn bind(addr: SocketAddr, only_v6: Option<bool>) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if let (Some(v6only), SocketAddr::V6(_)) = (only_v6, addr) {
        socket.set_only_v6(v6only)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// Accepts connections on `listener` until `cancel` fires, then closes the listener at once
/// (the port is free when this returns) and hands back the connections still open.
pub async fn accept_until_cancelled(
    listener: TcpListener,
    responder: Arc<dyn Responder>,
    cancel: CancellationToken,
    server: &'static str,
) -> JoinSet<()> {
    let mut conns = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            a = listener.accept() => a,
        };
        // Reap finished connections so the set does not grow with every probe.
        while conns.try_join_next().is_some() {}
        match accepted {
            Ok((stream, peer)) => {
                let responder = responder.clone();
                let cancel = cancel.clone();
                conns.spawn(async move {
                    serve_connection(stream, responder, cancel).await;
                    debug!(server, %peer, "connection closed");
                });
            }
            Err(e) => {
                warn!(server, error = %e, "accept failed");
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                }
            }
        }
    }
    drop(listener);
    conns
}

/// Waits for open connections to finish (they were told to stop by the same token), giving
/// up after [`DRAIN_TIMEOUT`]; whatever is left is aborted when the set drops.
pub async fn drain(mut conns: JoinSet<()>) {
    let all = async { while conns.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, all).await;
}

/// Serves `listener` until `cancel` fires and in-flight requests are done.
pub async fn serve(
    listener: TcpListener,
    responder: Arc<dyn Responder>,
    cancel: CancellationToken,
    server: &'static str,
) {
    let conns = accept_until_cancelled(listener, responder, cancel, server).await;
    drain(conns).await;
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    responder: Arc<dyn Responder>,
    cancel: CancellationToken,
) {
    let service = service_fn(move |req: Request<Incoming>| {
        let reply = responder.respond(req.method(), req.uri().path());
        async move { Ok::<_, Infallible>(reply.into_response()) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = cancel.cancelled() => {
            // Finish the request in flight, close idle keep-alive connections now.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        debug!(error = %e, "connection error");
    }
}
