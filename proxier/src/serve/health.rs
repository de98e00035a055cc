//! The proxy health tracker behind `/healthz`, `/livez` and the `serviceProxyHealthy` field of
//! health-check node port replies. Pure state over an injected [`Clock`]; the HTTP side lives
//! in [`super::servers`].
//!
//! Semantics follow kube-proxy's `ProxyHealthServer`: a family is unhealthy once an update has
//! been queued for it ([`ProxyHealth::queued_update`]) and not applied ([`ProxyHealth::updated`])
//! for `health_timeout` (kube-proxy passes 2 × syncPeriod). Only families that have been
//! updated at least once are judged, so the proxier is healthy while it starts up. `/healthz`
//! additionally requires the Node to be eligible: not being deleted and not tainted
//! `ToBeDeletedByClusterAutoscaler`, so load balancers drain a node that is going away while
//! `/livez` keeps the pod alive.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::Node;
use netlink::AddressFamily;
use serde::Serialize;

use super::clock::{Clock, SystemClock, ZERO_TIME, rfc3339_nano};

/// The taint the cluster autoscaler puts on a node it is about to delete.
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

/// Whether a Node may receive load-balancer traffic: not being deleted and not tainted
/// [`TO_BE_DELETED_TAINT`].
pub fn node_eligible(node: &Node) -> bool {
    if node.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let taints = node.spec.as_ref().and_then(|s| s.taints.as_ref());
    !taints.is_some_and(|ts| ts.iter().any(|t| t.key == TO_BE_DELETED_TAINT))
}

/// `IPv4` / `IPv6`: the spelling of Kubernetes' `IPFamily`, used in JSON and metric labels.
pub fn family_label(family: AddressFamily) -> &'static str {
    match family {
        AddressFamily::Inet => "IPv4",
        AddressFamily::Inet6 => "IPv6",
    }
}

#[derive(Debug, Default)]
struct State {
    last_updated: BTreeMap<AddressFamily, (Instant, SystemTime)>,
    oldest_pending: BTreeMap<AddressFamily, Instant>,
    node_eligible: bool,
}

/// Health of one family's proxier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FamilyHealth {
    pub last_updated: SystemTime,
    pub healthy: bool,
}

/// A snapshot of the proxy's health, as `/livez` judges it (node eligibility not included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSnapshot {
    pub healthy: bool,
    /// The latest `updated` over all families; `None` before the first.
    pub last_updated: Option<SystemTime>,
    pub current_time: SystemTime,
    pub families: BTreeMap<AddressFamily, FamilyHealth>,
}

/// Shared proxy health state. Cheap to query; safe to share across tasks in an [`Arc`].
#[derive(Debug)]
pub struct ProxyHealth {
    clock: Arc<dyn Clock>,
    timeout: Duration,
    state: Mutex<State>,
}

/// An HTTP answer computed from the health state: status code and JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthReply {
    pub status: u16,
    pub body: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FamilyJson {
    last_updated: String,
    healthy: bool,
}

// Field order is upstream's (Go marshals struct fields in declaration order).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HealthJson {
    last_updated: String,
    current_time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    node_eligible: Option<bool>,
    healthy: bool,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    status: BTreeMap<&'static str, FamilyJson>,
}

impl ProxyHealth {
    /// A tracker on the system clock with kube-proxy's timeout of twice the sync period.
    pub fn new(sync_period: Duration) -> Self {
        Self::with_clock(sync_period.saturating_mul(2), Arc::new(SystemClock))
    }

    /// A tracker with an explicit health timeout and clock.
    pub fn with_clock(health_timeout: Duration, clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            timeout: health_timeout,
            // Eligible until a Node object says otherwise, so a proxier that has not seen its
            // Node yet does not fail its readiness.
            state: Mutex::new(State {
                node_eligible: true,
                ..State::default()
            }),
        }
    }

    pub fn health_timeout(&self) -> Duration {
        self.timeout
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A change for `family` arrived and a sync is queued. Only the oldest pending queue time
    /// counts, so a steady stream of changes cannot keep postponing the deadline.
    pub fn queued_update(&self, family: AddressFamily) {
        let now = self.clock.monotonic();
        self.state().oldest_pending.entry(family).or_insert(now);
    }

    /// `family`'s dataplane now reflects everything queued so far.
    pub fn updated(&self, family: AddressFamily) {
        let (mono, wall) = (self.clock.monotonic(), self.clock.wall());
        let mut st = self.state();
        st.oldest_pending.remove(&family);
        st.last_updated.insert(family, (mono, wall));
    }

    /// Record the own Node's eligibility (see [`node_eligible`]).
    pub fn sync_node(&self, node: &Node) {
        self.set_node_eligible(node_eligible(node));
    }

    pub fn set_node_eligible(&self, eligible: bool) {
        self.state().node_eligible = eligible;
    }

    pub fn node_eligible(&self) -> bool {
        self.state().node_eligible
    }

    /// The proxier's own health, ignoring the Node (what `/livez` and health-check node ports
    /// use).
    pub fn is_healthy(&self) -> bool {
        self.snapshot().healthy
    }

    pub fn snapshot(&self) -> HealthSnapshot {
        let now = self.clock.monotonic();
        let current_time = self.clock.wall();
        let st = self.state();
        let mut families = BTreeMap::new();
        for (family, &(_, wall)) in &st.last_updated {
            // A family with an update pending for less than the timeout is still healthy;
            // one never updated is not judged at all (startup).
            let late = st
                .oldest_pending
                .get(family)
                .is_some_and(|&q| now.saturating_duration_since(q) >= self.timeout);
            families.insert(
                *family,
                FamilyHealth {
                    last_updated: wall,
                    healthy: !late,
                },
            );
        }
        HealthSnapshot {
            healthy: families.values().all(|f| f.healthy),
            last_updated: families.values().map(|f| f.last_updated).max(),
            current_time,
            families,
        }
    }

    /// The `/healthz` answer: 200 when healthy and the Node is eligible, else 503.
    pub fn healthz(&self) -> HealthReply {
        let eligible = self.node_eligible();
        self.reply(Some(eligible))
    }

    /// The `/livez` answer: 200 when healthy, else 503, whatever the Node's state.
    pub fn livez(&self) -> HealthReply {
        self.reply(None)
    }

    fn reply(&self, node_eligible: Option<bool>) -> HealthReply {
        let snap = self.snapshot();
        let healthy = snap.healthy && node_eligible.unwrap_or(true);
        // Like upstream, a healthy answer reports lastUpdated as "now": older clients read it
        // as "the sync loop ran recently"; the metrics carry the real sync times.
        let last_updated = if healthy {
            rfc3339_nano(snap.current_time)
        } else {
            snap.last_updated
                .map_or_else(|| ZERO_TIME.to_owned(), rfc3339_nano)
        };
        let body = HealthJson {
            last_updated,
            current_time: rfc3339_nano(snap.current_time),
            node_eligible,
            healthy: snap.healthy,
            status: snap
                .families
                .iter()
                .map(|(f, h)| {
                    (
                        family_label(*f),
                        FamilyJson {
                            last_updated: rfc3339_nano(h.last_updated),
                            healthy: h.healthy,
                        },
                    )
                })
                .collect(),
        };
        HealthReply {
            status: if healthy { 200 } else { 503 },
            // Serializing plain strings and bools cannot fail.
            body: serde_json::to_string(&body).unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{NodeSpec, Taint};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    use super::super::clock::FakeClock;
    use super::*;

    const V4: AddressFamily = AddressFamily::Inet;
    const V6: AddressFamily = AddressFamily::Inet6;

    fn tracker() -> (Arc<FakeClock>, ProxyHealth) {
        let clock = Arc::new(FakeClock::at_unix(1_700_000_000));
        let h = ProxyHealth::with_clock(Duration::from_secs(60), clock.clone());
        (clock, h)
    }

    fn json(r: &HealthReply) -> serde_json::Value {
        serde_json::from_str(&r.body).unwrap_or_default()
    }

    #[test]
    fn healthy_at_startup_even_with_queued_updates() {
        let (clock, h) = tracker();
        h.queued_update(V4);
        clock.advance(Duration::from_secs(3600));
        // Never updated: not judged yet (upstream: healthy while starting up).
        assert!(h.is_healthy());
        let r = h.healthz();
        assert_eq!(r.status, 200);
        let v = json(&r);
        assert_eq!(v["nodeEligible"], true);
        assert_eq!(v["healthy"], true);
        assert_eq!(v["lastUpdated"], v["currentTime"]);
        assert!(v.get("status").is_none());
        assert_eq!(h.livez().status, 200);
        assert!(json(&h.livez()).get("nodeEligible").is_none());
    }

    #[test]
    fn queued_too_long_is_unhealthy_until_updated() {
        let (clock, h) = tracker();
        h.updated(V4);
        h.updated(V6);
        clock.advance(Duration::from_secs(10));
        h.queued_update(V6);
        clock.advance(Duration::from_secs(59));
        assert_eq!(h.healthz().status, 200, "59s < 60s timeout");
        // A later queue does not push the deadline back.
        h.queued_update(V6);
        clock.advance(Duration::from_secs(1));
        let r = h.healthz();
        assert_eq!(r.status, 503);
        let v = json(&r);
        assert_eq!(v["healthy"], false);
        assert_eq!(v["status"]["IPv4"]["healthy"], true);
        assert_eq!(v["status"]["IPv6"]["healthy"], false);
        assert_eq!(v["lastUpdated"], "2023-11-14T22:13:20Z");
        assert_eq!(v["currentTime"], "2023-11-14T22:14:30Z");
        assert_eq!(h.livez().status, 503);
        h.updated(V6);
        assert_eq!(h.healthz().status, 200);
        assert_eq!(h.livez().status, 200);
    }

    #[test]
    fn node_being_deleted_fails_healthz_not_livez() {
        let (_clock, h) = tracker();
        h.updated(V4);
        let mut node = Node {
            metadata: ObjectMeta {
                name: Some("n1".into()),
                ..ObjectMeta::default()
            },
            ..Node::default()
        };
        h.sync_node(&node);
        assert_eq!(h.healthz().status, 200);

        node.metadata.deletion_timestamp = Some(Time(Default::default()));
        h.sync_node(&node);
        let r = h.healthz();
        assert_eq!(r.status, 503);
        assert_eq!(json(&r)["nodeEligible"], false);
        assert_eq!(json(&r)["healthy"], true);
        assert_eq!(h.livez().status, 200);
        assert!(h.is_healthy());

        node.metadata.deletion_timestamp = None;
        node.spec = Some(NodeSpec {
            taints: Some(vec![Taint {
                key: TO_BE_DELETED_TAINT.into(),
                effect: "NoSchedule".into(),
                ..Taint::default()
            }]),
            ..NodeSpec::default()
        });
        h.sync_node(&node);
        assert_eq!(h.healthz().status, 503);
        assert_eq!(h.livez().status, 200);

        node.spec = None;
        h.sync_node(&node);
        assert_eq!(h.healthz().status, 200);
    }

    #[test]
    fn default_timeout_is_twice_the_sync_period() {
        assert_eq!(
            ProxyHealth::new(Duration::from_secs(30)).health_timeout(),
            Duration::from_secs(60)
        );
    }
}
