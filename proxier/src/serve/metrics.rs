//! The metrics registry behind `/metrics`: kube-proxy's IPVS-mode metrics under their upstream
//! names, label sets and histogram buckets, plus ipvs-proxier's own, rendered in the
//! Prometheus text exposition format (version 0.0.4).
//!
//! The set is small and fixed, so it is a plain struct under one mutex rather than a generic
//! registry: recording happens a few times per sync, scraping every few seconds.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use netlink::AddressFamily;

use super::clock::{Clock, SystemClock, unix_seconds};
use super::health::family_label;

/// The `Content-Type` of [`Metrics::render`].
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Which traffic policy a service with no local endpoints has (label `traffic_policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TrafficPolicy {
    Internal,
    External,
}

impl TrafficPolicy {
    pub fn label(self) -> &'static str {
        match self {
            Self::Internal => "internal",
            Self::External => "external",
        }
    }
}

/// Outcome of a dataplane operation (label `result` of `ipvs_proxier_operations_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OpResult {
    Applied,
    Failed,
}

impl OpResult {
    pub fn label(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Failed => "failed",
        }
    }
}

/// Kernel objects counted by `ipvs_proxier_kernel_objects{kind}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KernelObject {
    VirtualServers,
    RealServers,
    /// Addresses bound on `kube-ipvs0`.
    Vips,
    IpsetMembers,
}

impl KernelObject {
    pub fn label(self) -> &'static str {
        match self {
            Self::VirtualServers => "virtual_servers",
            Self::RealServers => "real_servers",
            Self::Vips => "vips",
            Self::IpsetMembers => "ipset_members",
        }
    }
}

/// `sync_proxy_rules_duration_seconds`: upstream's `ExponentialBuckets(0.001, 2, 15)`, 1 ms to
/// about 16 s.
pub fn sync_duration_buckets() -> Vec<f64> {
    let mut out = Vec::with_capacity(15);
    let mut b = 0.001;
    for _ in 0..15 {
        out.push(b);
        b *= 2.0;
    }
    out
}

/// `network_programming_duration_seconds`: upstream's `MergeBuckets` of 0.25 s steps to 0.5 s,
/// 1 s steps to 59 s, 5 s steps to 115 s and 30 s steps to 5 min. `MergeBuckets` starts from
/// a one-element zero slice, so 0 is the first bound.
pub fn network_programming_buckets() -> Vec<f64> {
    let linear =
        |start: f64, width: f64, count: u32| (0..count).map(move |i| start + width * f64::from(i));
    std::iter::once(0.0)
        .chain(linear(0.25, 0.25, 2))
        .chain(linear(1.0, 1.0, 59))
        .chain(linear(60.0, 5.0, 12))
        .chain(linear(120.0, 30.0, 7))
        .collect()
}

#[derive(Debug, Clone)]
struct Histogram {
    bounds: Arc<[f64]>,
    /// Per bucket (not cumulative); the last slot is +Inf.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: Arc<[f64]>) -> Self {
        let counts = vec![0; bounds.len() + 1];
        Self {
            bounds,
            counts,
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        let i = self.bounds.partition_point(|&b| b < v);
        if let Some(c) = self.counts.get_mut(i) {
            *c += 1;
        }
        self.sum += v;
        self.count += 1;
    }
}

#[derive(Debug, Default)]
struct State {
    sync_duration: BTreeMap<AddressFamily, Histogram>,
    last_queued: BTreeMap<AddressFamily, f64>,
    last_synced: BTreeMap<AddressFamily, f64>,
    endpoint_changes_pending: f64,
    endpoint_changes_total: u64,
    service_changes_pending: f64,
    service_changes_total: u64,
    healthz_total: BTreeMap<u16, u64>,
    livez_total: BTreeMap<u16, u64>,
    network_programming: BTreeMap<AddressFamily, Histogram>,
    no_local_endpoints: BTreeMap<(AddressFamily, TrafficPolicy), f64>,
    iptables_restore_failures: BTreeMap<AddressFamily, u64>,
    conntrack_duration: BTreeMap<AddressFamily, Histogram>,
    conntrack_deleted: BTreeMap<AddressFamily, u64>,
    operations: BTreeMap<(String, OpResult), u64>,
    kernel_objects: BTreeMap<(KernelObject, AddressFamily), f64>,
}

/// All metrics of the proxier. Share it in an [`Arc`]; every method takes `&self`.
#[derive(Debug)]
pub struct Metrics {
    clock: Arc<dyn Clock>,
    sync_bounds: Arc<[f64]>,
    programming_bounds: Arc<[f64]>,
    state: Mutex<State>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }

    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            sync_bounds: sync_duration_buckets().into(),
            programming_bounds: network_programming_buckets().into(),
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A sync of `family` was queued: sets `..._last_queued_timestamp_seconds` to now.
    pub fn record_queued(&self, family: AddressFamily) {
        let now = unix_seconds(self.clock.wall());
        self.state().last_queued.insert(family, now);
    }

    /// A sync of `family` finished after `took`: observes `..._duration_seconds` and, when it
    /// succeeded, sets `..._last_timestamp_seconds` ("last successfully synced") to now.
    pub fn record_sync(&self, family: AddressFamily, took: Duration, succeeded: bool) {
        let now = unix_seconds(self.clock.wall());
        let mut st = self.state();
        let bounds = self.sync_bounds.clone();
        st.sync_duration
            .entry(family)
            .or_insert_with(|| Histogram::new(bounds))
            .observe(took.as_secs_f64());
        if succeeded {
            st.last_synced.insert(family, now);
        }
    }

    /// Observes `network_programming_duration_seconds` for one changed object: the time from
    /// its change (the EndpointSlice's last-change-trigger-time) to the end of the sync.
    pub fn observe_network_programming(&self, family: AddressFamily, latency: Duration) {
        let bounds = self.programming_bounds.clone();
        self.state()
            .network_programming
            .entry(family)
            .or_insert_with(|| Histogram::new(bounds))
            .observe(latency.as_secs_f64());
    }

    /// Changes seen but not yet synced (gauges `..._endpoint_changes_pending` and
    /// `..._service_changes_pending`).
    pub fn set_changes_pending(&self, endpoints: usize, services: usize) {
        let mut st = self.state();
        st.endpoint_changes_pending = endpoints as f64;
        st.service_changes_pending = services as f64;
    }

    /// Adds to the cumulative `..._endpoint_changes_total` and `..._service_changes_total`.
    pub fn add_changes(&self, endpoints: u64, services: u64) {
        let mut st = self.state();
        st.endpoint_changes_total += endpoints;
        st.service_changes_total += services;
    }

    /// Gauge `kubeproxy_sync_proxy_rules_no_local_endpoints_total`: services of `policy` Local
    /// with no local endpoint in the last sync of `family`.
    pub fn set_no_local_endpoints(&self, family: AddressFamily, policy: TrafficPolicy, n: usize) {
        self.state()
            .no_local_endpoints
            .insert((family, policy), n as f64);
    }

    pub fn inc_iptables_restore_failures(&self, family: AddressFamily) {
        *self
            .state()
            .iptables_restore_failures
            .entry(family)
            .or_default() += 1;
    }

    /// One conntrack cleanup of `family` (the reconciler's
    /// `kubeproxy_conntrack_reconciler_sync_duration_seconds` and `..._deleted_entries_total`).
    /// The histogram uses the sync duration's buckets.
    pub fn record_conntrack_cleanup(&self, family: AddressFamily, took: Duration, deleted: usize) {
        let bounds = self.sync_bounds.clone();
        let mut st = self.state();
        st.conntrack_duration
            .entry(family)
            .or_insert_with(|| Histogram::new(bounds))
            .observe(took.as_secs_f64());
        *st.conntrack_deleted.entry(family).or_default() += deleted as u64;
    }

    /// Counts dataplane operations (`kind` such as `ipvs_service_add`, `ipset_entry_del`).
    pub fn add_operations(&self, kind: &str, result: OpResult, n: u64) {
        if n == 0 {
            return;
        }
        *self
            .state()
            .operations
            .entry((kind.to_owned(), result))
            .or_default() += n;
    }

    /// Gauge `ipvs_proxier_kernel_objects`: how many of `kind` the kernel holds for `family`.
    pub fn set_kernel_objects(&self, kind: KernelObject, family: AddressFamily, n: usize) {
        self.state().kernel_objects.insert((kind, family), n as f64);
    }

    pub(crate) fn inc_healthz(&self, code: u16) {
        *self.state().healthz_total.entry(code).or_default() += 1;
    }

    pub(crate) fn inc_livez(&self, code: u16) {
        *self.state().livez_total.entry(code).or_default() += 1;
    }

    /// Every metric in the Prometheus text format. Families without samples still get their
    /// `# HELP` / `# TYPE` lines so scrapers and dashboards see the full set from the start.
    pub fn render(&self) -> String {
        let st = self.state();
        let mut w = Writer::default();
        let fam = |f: &AddressFamily| vec![("ip_family", family_label(*f).to_owned())];

        w.header(
            SYNC_DURATION,
            "SyncProxyRules latency in seconds",
            "histogram",
        );
        for (f, h) in &st.sync_duration {
            w.histogram(SYNC_DURATION, &fam(f), h);
        }
        w.header(
            LAST_QUEUED,
            "The last time a sync of proxy rules was queued",
            "gauge",
        );
        for (f, v) in &st.last_queued {
            w.sample(LAST_QUEUED, &fam(f), *v);
        }
        w.header(
            LAST_SYNCED,
            "The last time proxy rules were successfully synced",
            "gauge",
        );
        for (f, v) in &st.last_synced {
            w.sample(LAST_SYNCED, &fam(f), *v);
        }
        w.header(
            ENDPOINT_CHANGES_PENDING,
            "Pending proxy rules Endpoint changes",
            "gauge",
        );
        w.sample(ENDPOINT_CHANGES_PENDING, &[], st.endpoint_changes_pending);
        w.header(
            ENDPOINT_CHANGES_TOTAL,
            "Cumulative proxy rules Endpoint changes",
            "counter",
        );
        w.sample(
            ENDPOINT_CHANGES_TOTAL,
            &[],
            st.endpoint_changes_total as f64,
        );
        w.header(
            SERVICE_CHANGES_PENDING,
            "Pending proxy rules Service changes",
            "gauge",
        );
        w.sample(SERVICE_CHANGES_PENDING, &[], st.service_changes_pending);
        w.header(
            SERVICE_CHANGES_TOTAL,
            "Cumulative proxy rules Service changes",
            "counter",
        );
        w.sample(SERVICE_CHANGES_TOTAL, &[], st.service_changes_total as f64);
        w.header(
            HEALTHZ_TOTAL,
            "Cumulative proxy healthz HTTP status",
            "counter",
        );
        for (code, n) in &st.healthz_total {
            w.sample(HEALTHZ_TOTAL, &[("code", code.to_string())], *n as f64);
        }
        w.header(LIVEZ_TOTAL, "Cumulative proxy livez HTTP status", "counter");
        for (code, n) in &st.livez_total {
            w.sample(LIVEZ_TOTAL, &[("code", code.to_string())], *n as f64);
        }
        w.header(
            NETWORK_PROGRAMMING,
            "In Cluster Network Programming Latency in seconds",
            "histogram",
        );
        for (f, h) in &st.network_programming {
            w.histogram(NETWORK_PROGRAMMING, &fam(f), h);
        }
        w.header(
            NO_LOCAL_ENDPOINTS,
            "Number of services with a Local traffic policy and no endpoints",
            "gauge",
        );
        for ((f, p), v) in &st.no_local_endpoints {
            let mut labels = fam(f);
            labels.push(("traffic_policy", p.label().to_owned()));
            w.sample(NO_LOCAL_ENDPOINTS, &labels, *v);
        }
        w.header(
            IPTABLES_RESTORE_FAILURES,
            "Cumulative proxy iptables restore failures",
            "counter",
        );
        for (f, n) in &st.iptables_restore_failures {
            w.sample(IPTABLES_RESTORE_FAILURES, &fam(f), *n as f64);
        }
        w.header(
            CONNTRACK_DURATION,
            "ReconcileConntrackFlowsLatency latency in seconds",
            "histogram",
        );
        for (f, h) in &st.conntrack_duration {
            w.histogram(CONNTRACK_DURATION, &fam(f), h);
        }
        w.header(
            CONNTRACK_DELETED,
            "Cumulative conntrack flows deleted by conntrack reconciler",
            "counter",
        );
        for (f, n) in &st.conntrack_deleted {
            w.sample(CONNTRACK_DELETED, &fam(f), *n as f64);
        }
        w.header_own(
            OPERATIONS_TOTAL,
            "Dataplane operations (IPVS, ipset, address, iptables writes) by kind and result",
            "counter",
        );
        for ((kind, result), n) in &st.operations {
            let labels = [
                ("kind", kind.clone()),
                ("result", result.label().to_owned()),
            ];
            w.sample(OPERATIONS_TOTAL, &labels, *n as f64);
        }
        w.header_own(
            KERNEL_OBJECTS,
            "Kernel objects owned by the proxier after the last sync",
            "gauge",
        );
        for ((kind, f), v) in &st.kernel_objects {
            let labels = [
                ("ip_family", family_label(*f).to_owned()),
                ("kind", kind.label().to_owned()),
            ];
            w.sample(KERNEL_OBJECTS, &labels, *v);
        }
        w.out
    }
}

pub const SYNC_DURATION: &str = "kubeproxy_sync_proxy_rules_duration_seconds";
pub const LAST_QUEUED: &str = "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds";
pub const LAST_SYNCED: &str = "kubeproxy_sync_proxy_rules_last_timestamp_seconds";
pub const ENDPOINT_CHANGES_PENDING: &str = "kubeproxy_sync_proxy_rules_endpoint_changes_pending";
pub const ENDPOINT_CHANGES_TOTAL: &str = "kubeproxy_sync_proxy_rules_endpoint_changes_total";
pub const SERVICE_CHANGES_PENDING: &str = "kubeproxy_sync_proxy_rules_service_changes_pending";
pub const SERVICE_CHANGES_TOTAL: &str = "kubeproxy_sync_proxy_rules_service_changes_total";
pub const HEALTHZ_TOTAL: &str = "kubeproxy_proxy_healthz_total";
pub const LIVEZ_TOTAL: &str = "kubeproxy_proxy_livez_total";
pub const NETWORK_PROGRAMMING: &str = "kubeproxy_network_programming_duration_seconds";
pub const NO_LOCAL_ENDPOINTS: &str = "kubeproxy_sync_proxy_rules_no_local_endpoints_total";
pub const IPTABLES_RESTORE_FAILURES: &str =
    "kubeproxy_sync_proxy_rules_iptables_restore_failures_total";
pub const CONNTRACK_DURATION: &str = "kubeproxy_conntrack_reconciler_sync_duration_seconds";
pub const CONNTRACK_DELETED: &str = "kubeproxy_conntrack_reconciler_deleted_entries_total";
pub const OPERATIONS_TOTAL: &str = "ipvs_proxier_operations_total";
pub const KERNEL_OBJECTS: &str = "ipvs_proxier_kernel_objects";

/// Every metric family [`Metrics::render`] emits, with its type.
pub const ALL: &[(&str, &str)] = &[
    (SYNC_DURATION, "histogram"),
    (LAST_QUEUED, "gauge"),
    (LAST_SYNCED, "gauge"),
    (ENDPOINT_CHANGES_PENDING, "gauge"),
    (ENDPOINT_CHANGES_TOTAL, "counter"),
    (SERVICE_CHANGES_PENDING, "gauge"),
    (SERVICE_CHANGES_TOTAL, "counter"),
    (HEALTHZ_TOTAL, "counter"),
    (LIVEZ_TOTAL, "counter"),
    (NETWORK_PROGRAMMING, "histogram"),
    (NO_LOCAL_ENDPOINTS, "gauge"),
    (IPTABLES_RESTORE_FAILURES, "counter"),
    (CONNTRACK_DURATION, "histogram"),
    (CONNTRACK_DELETED, "counter"),
    (OPERATIONS_TOTAL, "counter"),
    (KERNEL_OBJECTS, "gauge"),
];

#[derive(Default)]
struct Writer {
    out: String,
}

impl Writer {
    /// Upstream metrics are ALPHA in Kubernetes' stability framework, which prefixes their
    /// help text; keeping it makes `# HELP` lines identical to kube-proxy's.
    fn header(&mut self, name: &str, help: &str, kind: &str) {
        let _ = write!(
            self.out,
            "# HELP {name} [ALPHA] {help}\n# TYPE {name} {kind}\n"
        );
    }

    fn header_own(&mut self, name: &str, help: &str, kind: &str) {
        let _ = write!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, String)], v: f64) {
        self.out.push_str(name);
        write_labels(&mut self.out, labels, None);
        let _ = writeln!(self.out, " {}", fmt_value(v));
    }

    fn histogram(&mut self, name: &str, labels: &[(&str, String)], h: &Histogram) {
        let mut cumulative = 0;
        let bounds = h
            .bounds
            .iter()
            .map(|b| fmt_value(*b))
            .chain(["+Inf".to_owned()]);
        for (le, n) in bounds.zip(&h.counts) {
            cumulative += n;
            let _ = write!(self.out, "{name}_bucket");
            write_labels(&mut self.out, labels, Some(&le));
            let _ = writeln!(self.out, " {cumulative}");
        }
        let _ = write!(self.out, "{name}_sum");
        write_labels(&mut self.out, labels, None);
        let _ = writeln!(self.out, " {}", fmt_value(h.sum));
        let _ = write!(self.out, "{name}_count");
        write_labels(&mut self.out, labels, None);
        let _ = writeln!(self.out, " {}", h.count);
    }
}

fn write_labels(out: &mut String, labels: &[(&str, String)], le: Option<&str>) {
    if labels.is_empty() && le.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    let le = le.map(|v| ("le", v));
    for (k, v) in labels.iter().map(|(k, v)| (*k, v.as_str())).chain(le) {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(k);
        out.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
}

fn fmt_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        // Rust's shortest round-trip form ("0.001", "16.384", "3"), which Prometheus parses.
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_match_upstream() {
        let s = sync_duration_buckets();
        assert_eq!(s.len(), 15);
        assert_eq!(fmt_value(s[0]), "0.001");
        assert_eq!(fmt_value(s[1]), "0.002");
        assert_eq!(fmt_value(s[14]), "16.384");
        let n = network_programming_buckets();
        assert_eq!(n.len(), 1 + 2 + 59 + 12 + 7);
        assert_eq!(&n[..5], &[0.0, 0.25, 0.5, 1.0, 2.0]);
        assert_eq!(n[61], 59.0);
        assert_eq!(n[62], 60.0);
        assert_eq!(n[73], 115.0);
        assert_eq!(n[74], 120.0);
        assert_eq!(n[80], 300.0);
        assert!(n.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn histogram_is_cumulative_with_inf() {
        let m = Metrics::new();
        m.record_sync(AddressFamily::Inet, Duration::from_millis(3), true);
        m.record_sync(AddressFamily::Inet, Duration::from_secs(100), false);
        let text = m.render();
        let line = |needle: &str| {
            text.lines()
                .find(|l| l.starts_with(needle))
                .map(str::to_owned)
                .unwrap_or_default()
        };
        let b = "kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family=\"IPv4\",le=";
        assert_eq!(
            line(&format!("{b}\"0.002\"}}")),
            format!("{b}\"0.002\"}} 0")
        );
        assert_eq!(
            line(&format!("{b}\"0.004\"}}")),
            format!("{b}\"0.004\"}} 1")
        );
        assert_eq!(
            line(&format!("{b}\"16.384\"}}")),
            format!("{b}\"16.384\"}} 1")
        );
        assert_eq!(line(&format!("{b}\"+Inf\"}}")), format!("{b}\"+Inf\"}} 2"));
        assert_eq!(
            line("kubeproxy_sync_proxy_rules_duration_seconds_count"),
            "kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"} 2"
        );
        // The failed sync did not move "last successfully synced" past the first.
        assert_eq!(
            text.matches("kubeproxy_sync_proxy_rules_last_timestamp_seconds{")
                .count(),
            1
        );
    }

    #[test]
    fn conntrack_cleanups_per_family() {
        let m = Metrics::new();
        m.record_conntrack_cleanup(AddressFamily::Inet, Duration::from_millis(3), 2);
        m.record_conntrack_cleanup(AddressFamily::Inet, Duration::from_millis(5), 1);
        m.record_conntrack_cleanup(AddressFamily::Inet6, Duration::from_millis(1), 0);
        let text = m.render();
        for line in [
            "kubeproxy_conntrack_reconciler_deleted_entries_total{ip_family=\"IPv4\"} 3\n",
            "kubeproxy_conntrack_reconciler_deleted_entries_total{ip_family=\"IPv6\"} 0\n",
            "kubeproxy_conntrack_reconciler_sync_duration_seconds_count{ip_family=\"IPv4\"} 2\n",
            "kubeproxy_conntrack_reconciler_sync_duration_seconds_count{ip_family=\"IPv6\"} 1\n",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::new();
        m.add_operations("we\"ird\\kind\n", OpResult::Failed, 2);
        m.add_operations("zero", OpResult::Applied, 0);
        let text = m.render();
        assert!(text.contains(
            "ipvs_proxier_operations_total{kind=\"we\\\"ird\\\\kind\\n\",result=\"failed\"} 2\n"
        ));
        assert!(!text.contains("kind=\"zero\""));
    }

    #[test]
    fn every_family_has_help_and_type_even_when_empty() {
        let text = Metrics::new().render();
        for (name, kind) in ALL {
            assert!(text.contains(&format!("# TYPE {name} {kind}\n")), "{name}");
            assert!(text.contains(&format!("# HELP {name} ")), "{name}");
        }
    }
}
