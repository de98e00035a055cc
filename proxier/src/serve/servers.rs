//! The two daemon-wide HTTP servers: proxy health on `--healthz-bind-address` (`/healthz`,
//! `/livez`) and metrics on `--metrics-bind-address` (`/metrics`, `/proxyMode`, `/healthz`).

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::Method;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::ServeError;
use super::health::ProxyHealth;
use super::http::{self, JSON, Reply, Responder, TEXT};
use super::metrics::{self, Metrics};

/// What `/proxyMode` answers.
pub const PROXY_MODE: &str = "ipvs";

struct HealthResponder {
    health: Arc<ProxyHealth>,
    metrics: Arc<Metrics>,
}

impl Responder for HealthResponder {
    fn respond(&self, _method: &Method, path: &str) -> Reply {
        // Like Go's ServeMux, exact paths, any method.
        match path {
            "/healthz" => {
                let r = self.health.healthz();
                self.metrics.inc_healthz(r.status);
                Reply::new(r.status, JSON, r.body)
            }
            "/livez" => {
                let r = self.health.livez();
                self.metrics.inc_livez(r.status);
                Reply::new(r.status, JSON, r.body)
            }
            _ => Reply::not_found(),
        }
    }
}

struct MetricsResponder {
    metrics: Arc<Metrics>,
}

impl Responder for MetricsResponder {
    fn respond(&self, _method: &Method, path: &str) -> Reply {
        match path {
            "/metrics" => Reply::new(200, metrics::CONTENT_TYPE, self.metrics.render()),
            "/proxyMode" => Reply::new(200, TEXT, PROXY_MODE),
            // The generic apiserver-style check: the process is up and serving.
            "/healthz" => Reply::new(200, TEXT, "ok"),
            _ => Reply::not_found(),
        }
    }
}

/// A bound server, not yet serving: bind first so the daemon fails fast on a taken port and
/// tests can bind port 0 and read the address back.
#[derive(Debug)]
pub struct Server {
    name: &'static str,
    listener: TcpListener,
    local_addr: SocketAddr,
    responder: ResponderKind,
}

enum ResponderKind {
    Health(Arc<ProxyHealth>, Arc<Metrics>),
    Metrics(Arc<Metrics>),
}

impl std::fmt::Debug for ResponderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Health(..) => "Health",
            Self::Metrics(..) => "Metrics",
        })
    }
}

impl Server {
    /// Binds the proxy health server (`/healthz`, `/livez`), counting answers in `metrics`.
    pub fn bind_health(
        addr: SocketAddr,
        health: Arc<ProxyHealth>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ServeError> {
        Self::bind("healthz", addr, ResponderKind::Health(health, metrics))
    }

    /// Binds the metrics server (`/metrics`, `/proxyMode`, `/healthz`).
    pub fn bind_metrics(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<Self, ServeError> {
        Self::bind("metrics", addr, ResponderKind::Metrics(metrics))
    }

    fn bind(
        name: &'static str,
        addr: SocketAddr,
        responder: ResponderKind,
    ) -> Result<Self, ServeError> {
        let bind_err = |source| ServeError::Bind {
            server: name,
            addr,
            source,
        };
        let listener = http::bind_like_go(addr).map_err(bind_err)?;
        let local_addr = listener.local_addr().map_err(bind_err)?;
        Ok(Self {
            name,
            listener,
            local_addr,
            responder,
        })
    }

    /// The address actually bound (the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `cancel` fires and in-flight requests have finished.
    pub async fn run(self, cancel: CancellationToken) {
        info!(server = self.name, address = %self.local_addr, "serving");
        let responder: Arc<dyn Responder> = match self.responder {
            ResponderKind::Health(health, metrics) => Arc::new(HealthResponder { health, metrics }),
            ResponderKind::Metrics(metrics) => Arc::new(MetricsResponder { metrics }),
        };
        http::serve(self.listener, responder, cancel, self.name).await;
        info!(server = self.name, address = %self.local_addr, "stopped");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use netlink::AddressFamily;

    use super::*;
    use crate::serve::clock::FakeClock;

    #[test]
    fn health_answers_count_codes() {
        let clock = Arc::new(FakeClock::at_unix(1_000));
        let health = Arc::new(ProxyHealth::with_clock(
            Duration::from_secs(2),
            clock.clone(),
        ));
        let metrics = Arc::new(Metrics::new());
        let r = HealthResponder {
            health: health.clone(),
            metrics: metrics.clone(),
        };
        health.updated(AddressFamily::Inet);
        assert_eq!(r.respond(&Method::GET, "/healthz").status, 200);
        health.queued_update(AddressFamily::Inet);
        clock.advance(Duration::from_secs(2));
        assert_eq!(r.respond(&Method::GET, "/healthz").status, 503);
        assert_eq!(r.respond(&Method::GET, "/livez").status, 503);
        assert_eq!(r.respond(&Method::GET, "/healthz/x").status, 404);
        let text = metrics.render();
        assert!(text.contains("kubeproxy_proxy_healthz_total{code=\"200\"} 1\n"));
        assert!(text.contains("kubeproxy_proxy_healthz_total{code=\"503\"} 1\n"));
        assert!(text.contains("kubeproxy_proxy_livez_total{code=\"503\"} 1\n"));
    }

    #[test]
    fn metrics_endpoints() {
        let r = MetricsResponder {
            metrics: Arc::new(Metrics::new()),
        };
        let mode = r.respond(&Method::GET, "/proxyMode");
        assert_eq!((mode.status, mode.body.as_str()), (200, "ipvs"));
        assert_eq!(r.respond(&Method::GET, "/healthz").body, "ok");
        assert_eq!(r.respond(&Method::GET, "/nope").status, 404);
        assert_eq!(
            r.respond(&Method::GET, "/metrics").content_type,
            metrics::CONTENT_TYPE
        );
    }
}
