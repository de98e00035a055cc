//! Sync-at-scale benchmark (issues 5 and 8; not a test): the real `Syncer` over a synthetic
//! cluster of N Services x 10 endpoints, in the network namespace it is started in (run it in
//! the lab guest through `tests/lab/bench-sync`, one fresh namespace and process per N).
//!
//! `sync-bench run N` measures, in this order, and appends one CSV row to `$CSV` (or
//! `$LAB_ARTIFACTS/sync.csv`; header written when the file is new):
//! - **cold**: the first sync from an empty namespace (total and observe/plan/apply from the
//!   `SyncReport`, kernel writes, and the process's system CPU share over that sync);
//! - **no-op**: a second sync with nothing changed (writes must be 0);
//! - **restart**: a new `Syncer` over the programmed kernel, its first sync (writes must be 0);
//! - **change**: `$SYNC_BENCH_CHANGES` (default 10) times, one EndpointSlice loses one
//!   endpoint, then one incremental sync (`Syncer::sync_incremental`, as the daemon runs for a
//!   change): its time (p50, max), writes and virtual servers re-read; then one full sync,
//!   whose writes must be 0 (the incremental path left exactly the full path's state);
//! - **peak RSS**: `VmHWM` of this process after the above;
//! - **ipvsadm-restore**: the same IPVS content (the plan's `ipvsadm -Sn` render) loaded by
//!   one `ipvsadm-restore` after `ipvsadm -C`; **ipset restore**: the plan's sets, renamed
//!   so they are new, loaded by one `ipset restore`.
//!
//! `sync-bench report CSV SVG` prints the rows as a Markdown table and writes a log-log
//! SVG plot of cold sync, endpoint-change latency and ipvsadm-restore against N.
//!
//! It allocates as the daemon does (jemalloc with `ipvs_proxier::allocator`'s settings), so
//! its times and peak are the engine's as the daemon runs it (`--features
//! lab-tests/system-allocator`: glibc's malloc, for heap profilers).

use std::collections::BTreeMap;
use std::error::Error;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ipvs_proxier::model::ServiceName;
use ipvs_proxier::model::manifests::Manifests;
use ipvs_proxier::plan::{incremental, render};
use ipvs_proxier::sync::cmd::{CommonArgs, sync_options};
use ipvs_proxier::sync::{SyncOptions, SyncReport, Syncer};
use ipvs_proxier::synthetic::{self, Mix};
use netlink::ipvs::Scheduler;

ipvs_proxier::jemalloc_global_allocator!();

type Res<T> = Result<T, Box<dyn Error>>;

const ENDPOINTS: u32 = 10;
/// A tenth of the Services are NodePort, a hundredth LoadBalancer: virtual servers on the
/// node IP and the ingress IP exist as on a real node.
const MIX: Mix = Mix {
    node_port_every: 10,
    load_balancer_every: 100,
};

const COLUMNS: &[&str] = &[
    "services",
    "virtual_servers",
    "real_servers",
    "cold_s",
    "cold_observe_s",
    "cold_plan_s",
    "cold_apply_s",
    "cold_writes",
    "cold_user_s",
    "cold_sys_s",
    "cold_sys_share",
    "noop_s",
    "noop_writes",
    "restart_s",
    "restart_writes",
    "changes",
    "change_p99_s",
    "change_p50_s",
    "change_max_s",
    "change_observe_p50_s",
    "change_plan_p50_s",
    "change_apply_p50_s",
    "change_writes_per_change",
    "change_reread_per_change",
    "full_after_changes_writes",
    "vmhwm_kib",
    "ipvsadm_restore_s",
    "cold_over_restore",
    "ipset_members",
    "ipset_restore_s",
];

fn options() -> Res<SyncOptions> {
    let args = CommonArgs {
        manifests: "unused".into(),
        node_name: Some("node-0".into()),
        node_ips: vec![],
        cluster_cidrs: vec!["10.244.0.0/16".parse()?],
        scheduler: Scheduler::rr(),
        masquerade_all: false,
        exclude_cidrs: vec![],
        strict_arp: false,
    };
    Ok(sync_options(&args, "node-0".into()))
}

async fn syncer() -> Res<Syncer> {
    let opts = options()?;
    let kernel = Syncer::default_kernel_options(&opts);
    Ok(Syncer::new(opts, &kernel).await?)
}

/// One sync that must not fail for any object.
async fn sync(s: &mut Syncer, objects: &Manifests) -> Res<(SyncReport, Duration)> {
    let start = Instant::now();
    let report = s.sync(objects).await?;
    let elapsed = start.elapsed();
    if let Some(f) = report.failures.first() {
        return Err(format!("{} failures, first: {f:?}", report.failures.len()).into());
    }
    Ok((report, elapsed))
}

/// (user, system) CPU time of this process so far, from `/proc/self/stat` (USER_HZ = 100).
fn cpu_times() -> Res<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or("/proc/self/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is fields[0]; utime and stime are fields 14 and 15.
    let tick = |i: usize| -> Res<f64> {
        let v: f64 = fields.get(i).ok_or("/proc/self/stat: short")?.parse()?;
        Ok(v / 100.0)
    };
    Ok((tick(11)?, tick(12)?))
}

fn vm_hwm_kib() -> Res<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .ok_or("no VmHWM in /proc/self/status")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .ok_or("VmHWM: no value")?
        .parse()?)
}

/// Runs `cmd` with `stdin`, returns the wall time; fails on a non-zero status.
fn timed_with_stdin(cmd: &str, args: &[&str], stdin: &str) -> Res<Duration> {
    let start = Instant::now();
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.as_bytes())?;
    }
    let status = child.wait()?;
    let elapsed = start.elapsed();
    if !status.success() {
        return Err(format!("{cmd} {args:?} failed: {status}").into());
    }
    Ok(elapsed)
}

fn command_output(cmd: &str, args: &[&str]) -> Res<String> {
    let out = Command::new(cmd).args(args).output()?;
    if !out.status.success() {
        return Err(format!("{cmd} {args:?} failed: {}", out.status).into());
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// The `q` quantile (nearest rank) of `v`.
fn quantile(mut v: Vec<f64>, q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let rank = (q * v.len() as f64).ceil() as usize;
    v.get(rank.saturating_sub(1)).copied().unwrap_or(f64::NAN)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

async fn run(n: u32, changes: usize) -> Res<Vec<(&'static str, String)>> {
    let (services, endpoint_slices) = synthetic::cluster(n, ENDPOINTS, MIX);
    let mut objects = Manifests {
        services,
        endpoint_slices,
        ..Default::default()
    };
    let mut row: Vec<(&'static str, String)> = Vec::new();
    let mut put = |k: &'static str, v: String| row.push((k, v));

    // Cold.
    let mut s = syncer().await?;
    let (u0, s0) = cpu_times()?;
    let (cold, cold_t) = sync(&mut s, &objects).await?;
    let (u1, s1) = cpu_times()?;
    let (user, sys) = (u1 - u0, s1 - s0);
    put("services", n.to_string());
    put("virtual_servers", cold.virtual_servers.to_string());
    put("real_servers", cold.real_servers.to_string());
    put("cold_s", format!("{:.3}", cold_t.as_secs_f64()));
    put(
        "cold_observe_s",
        format!("{:.3}", cold.observe.as_secs_f64()),
    );
    put("cold_plan_s", format!("{:.3}", cold.plan.as_secs_f64()));
    put("cold_apply_s", format!("{:.3}", cold.apply.as_secs_f64()));
    put("cold_writes", cold.writes.total().to_string());
    put("cold_user_s", format!("{user:.2}"));
    put("cold_sys_s", format!("{sys:.2}"));
    put(
        "cold_sys_share",
        format!("{:.3}", sys / (user + sys).max(1e-9)),
    );
    eprintln!(
        "N={n}: cold {:.3} s ({} writes, {} virtual servers, {} real servers)",
        cold_t.as_secs_f64(),
        cold.writes.total(),
        cold.virtual_servers,
        cold.real_servers
    );

    // Where the peak happens (VmHWM only grows): printed after each phase.
    let peak = |phase: &str| {
        if let Ok(kib) = vm_hwm_kib() {
            eprintln!(
                "N={n}: peak RSS after {phase}: {:.1} MiB",
                kib as f64 / 1024.0
            );
        }
    };
    peak("the cold sync");

    // No-op resync.
    let (noop, noop_t) = sync(&mut s, &objects).await?;
    put("noop_s", format!("{:.3}", noop_t.as_secs_f64()));
    put("noop_writes", noop.writes.total().to_string());
    if noop.writes.total() != 0 {
        eprintln!("N={n}: no-op resync wrote: {:?}", noop.writes);
    }

    peak("the no-op resync");

    // Restart: a new Syncer (no state) over the programmed kernel.
    drop(s);
    let mut s = syncer().await?;
    let (restart, restart_t) = sync(&mut s, &objects).await?;
    put("restart_s", format!("{:.3}", restart_t.as_secs_f64()));
    put("restart_writes", restart.writes.total().to_string());
    eprintln!(
        "N={n}: no-op {:.3} s ({} writes), restart {:.3} s ({} writes)",
        noop_t.as_secs_f64(),
        noop.writes.total(),
        restart_t.as_secs_f64(),
        restart.writes.total()
    );

    peak("the restart");

    // One endpoint change at a time, spread over the Services.
    let mut times = Vec::new();
    let (mut obs, mut plan, mut apply) = (Vec::new(), Vec::new(), Vec::new());
    let mut writes = 0;
    let mut reread = 0;
    for c in 0..changes {
        // Spread over the Services, always a plain ClusterIP one: a NodePort or LoadBalancer
        // Service has 2-3 virtual servers to re-read and write, and which kind the spread
        // lands on depends on N, so the figures at different N would not compare like with
        // like.
        let mut k = (c * n as usize) / changes.max(1);
        while k + 1 < n as usize && !MIX.cluster_ip_only(k as u32) {
            k += 1;
        }
        let slice = objects
            .endpoint_slices
            .get_mut(k)
            .ok_or("change: no such slice")?;
        slice.endpoints.pop();
        // As the daemon does for a change: the incremental path (cached kernel view), told
        // the changed Service with its objects (Service and slice `k` belong together, as the
        // daemon's store finds them by key).
        let start = Instant::now();
        let (ns, svc) = incremental::slice_unit(&objects.endpoint_slices[k]);
        let unit = incremental::UnitObjects {
            services: vec![&objects.services[k]],
            slices: vec![&objects.endpoint_slices[k]],
        };
        let name = ServiceName {
            namespace: ns.to_owned(),
            name: svc.to_owned(),
        };
        let units = BTreeMap::from([(name, unit)]);
        // Every object only if the sync needs them (it must not: checked below).
        let all = || {
            let services: Vec<_> = objects.services.iter().collect();
            let slices: Vec<_> = objects.endpoint_slices.iter().collect();
            (services, slices)
        };
        let r = s
            .sync_incremental_with(&units, &objects.nodes, 0, all)
            .await?;
        let t = start.elapsed();
        if let Some(f) = r.failures.first() {
            return Err(format!("{} failures, first: {f:?}", r.failures.len()).into());
        }
        if !r.incremental {
            return Err("change: the sync was not incremental".into());
        }
        reread += r.reread;
        times.push(t.as_secs_f64());
        obs.push(r.observe.as_secs_f64());
        plan.push(r.plan.as_secs_f64());
        apply.push(r.apply.as_secs_f64());
        writes += r.writes.total();
    }
    let max = times.iter().copied().fold(f64::NAN, f64::max);
    put("changes", changes.to_string());
    // 0.1 ms resolution: a change at N = 100 takes about a millisecond.
    put(
        "change_p99_s",
        format!("{:.4}", quantile(times.clone(), 0.99)),
    );
    put("change_p50_s", format!("{:.4}", median(times)));
    put("change_max_s", format!("{max:.4}"));
    put("change_observe_p50_s", format!("{:.4}", median(obs)));
    put("change_plan_p50_s", format!("{:.4}", median(plan)));
    put("change_apply_p50_s", format!("{:.4}", median(apply)));
    put(
        "change_writes_per_change",
        format!("{:.1}", writes as f64 / changes.max(1) as f64),
    );
    put(
        "change_reread_per_change",
        format!("{:.1}", reread as f64 / changes.max(1) as f64),
    );
    // Equivalence: a full re-read after the incremental changes finds nothing to write.
    let (full, _) = sync(&mut s, &objects).await?;
    put("full_after_changes_writes", full.writes.total().to_string());
    if full.writes.total() != 0 {
        eprintln!(
            "N={n}: full sync after incremental changes wrote: {:?}",
            full.writes
        );
    }
    put("vmhwm_kib", vm_hwm_kib()?.to_string());
    peak("the changes and a full sync");
    if std::env::var_os("SYNC_BENCH_NO_PEERS").is_some() {
        // A quick run (profiling): no ipvsadm-restore / ipset restore comparison.
        return Ok(row);
    }

    // The same IPVS content with ipvsadm-restore, from an empty table.
    let plan = s.last_plan().ok_or("no plan after a sync")?;
    let ipvs_text = render::ipvs(plan);
    let sets_text = render::ipsets(plan).replace("KUBE-", "BENCH-");
    drop(s);
    command_output("ipvsadm", &["-C"])?;
    let restore = timed_with_stdin("ipvsadm-restore", &[], &ipvs_text)?;
    let loaded = command_output("ipvsadm", &["-Sn"])?.lines().count();
    if loaded != ipvs_text.lines().count() {
        return Err(format!(
            "ipvsadm-restore loaded {loaded} lines of {}",
            ipvs_text.lines().count()
        )
        .into());
    }
    put("ipvsadm_restore_s", format!("{:.3}", restore.as_secs_f64()));
    put(
        "cold_over_restore",
        format!("{:.4}", cold_t.as_secs_f64() / restore.as_secs_f64()),
    );
    let members = sets_text.lines().filter(|l| l.starts_with("add ")).count();
    let ipset = timed_with_stdin("ipset", &["restore"], &sets_text)?;
    put("ipset_members", members.to_string());
    put("ipset_restore_s", format!("{:.3}", ipset.as_secs_f64()));
    Ok(row)
}

/// `VmRSS` of this process now, in KiB.
fn vm_rss_kib() -> Res<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or("no VmRSS in /proc/self/status")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .ok_or("VmRSS: no value")?
        .parse()?)
}

/// `sync-bench mem N`: the sync engine's data without a kernel (runs on the host, e.g. under
/// `valgrind --tool=massif` or `heaptrack` when built with the `system-allocator` feature): the API objects, the plan kept per Service, the
/// kernel view a full sync reads back after the cold sync (the plan's table, counters, VIPs
/// and set members), the decision against it and one incremental replan. Prints the RSS
/// after each stage.
fn mem(n: u32) -> Res<()> {
    use ipvs_proxier::dataplane::kernel::{Connections, Observed};
    use ipvs_proxier::plan::NodeFacts;
    use ipvs_proxier::plan::incremental::PlanState;
    use ipvs_proxier::sync::cache::KernelCache;
    use ipvs_proxier::sync::{decide, set_names};
    let opts = options()?;
    let node: std::net::IpAddr = "10.255.0.1".parse()?;
    let facts = NodeFacts {
        addresses: vec![node],
        primary_ips: vec![node],
    };
    let mut last = vm_rss_kib()?;
    let mut stage = |what: &str| -> Res<()> {
        let now = vm_rss_kib()?;
        println!(
            "  {what:<44} RSS {:>8.1} MiB ({:+.1}), peak so far {:.1} MiB",
            now as f64 / 1024.0,
            (now as f64 - last as f64) / 1024.0,
            vm_hwm_kib()? as f64 / 1024.0
        );
        last = now;
        Ok(())
    };
    stage("start")?;
    let (services, mut endpoint_slices) = synthetic::cluster(n, ENDPOINTS, MIX);
    stage("API objects (Services + EndpointSlices)")?;
    let mut state = PlanState::build(&services, &endpoint_slices, &[], &opts.plan, &facts);
    stage("plan, kept per Service (PlanState)")?;
    let plan = state.plan();
    // A cold sync decides every virtual server whole (against an empty kernel); the kernel view
    // it keeps takes those virtual servers, sharing the plan's real-server maps.
    let cold = decide(plan, &Observed::default(), &opts.ownership());
    let cold_ops = cold.ipvs_operation_count();
    stage(&format!("cold decision ({cold_ops} operations)"))?;
    let mut cache = KernelCache::default();
    cache.applied(cold, Some(2), Vec::new(), state.plan());
    let observed = cache.observed;
    let _ = set_names(&opts.plan);
    stage("kernel view the cold sync leaves (= what observe reads back)")?;
    let changes = decide(plan, &observed, &opts.ownership());
    if changes.ipvs_operation_count() > 0 {
        return Err("the view differs from the plan".into());
    }
    stage("decision (iptables-restore input)")?;
    drop(changes);
    endpoint_slices[0].endpoints.pop();
    let (ns, svc) = incremental::slice_unit(&endpoint_slices[0]);
    let key = ServiceName {
        namespace: ns.to_owned(),
        name: svc.to_owned(),
    };
    let unit = incremental::UnitObjects {
        services: vec![&services[0]],
        slices: vec![&endpoint_slices[0]],
    };
    let delta = state.update(
        &std::collections::BTreeMap::from([(key, unit)]),
        &[],
        &facts,
    )?;
    let vs: usize = delta.families.iter().map(|f| f.virtual_servers.len()).sum();
    stage(&format!("one incremental replan ({vs} virtual servers)"))?;
    println!("  peak (VmHWM): {:.1} MiB", vm_hwm_kib()? as f64 / 1024.0);
    // What the previous code also held at its peak, each allocated on top (kept alive).
    println!("  before this change, also alive at once:");
    let mut counters = std::collections::BTreeMap::new();
    for (k, vs) in &observed.ipvs.services {
        for d in vs.destinations.keys() {
            counters.insert((*k, *d), Connections::default());
        }
    }
    stage("  a zero counter per real server")?;
    let table = ipvs_proxier::sync::desired_table(state.plan());
    stage("  decide's merged copy of the desired table")?;
    let old_plan =
        ipvs_proxier::plan::plan_objects(&services, &endpoint_slices, &[], &opts.plan, &facts);
    stage("  a second whole plan (last plan + new plan)")?;
    println!("  peak (VmHWM): {:.1} MiB", vm_hwm_kib()? as f64 / 1024.0);
    drop((counters, table, old_plan));
    stage("all of the above freed")?;
    // What a whole plan costs to build on a fresh heap and on one that has held a plan.
    let burst = || {
        let started = Instant::now();
        drop(ipvs_proxier::plan::plan_objects(
            &services,
            &endpoint_slices,
            &[],
            &opts.plan,
            &facts,
        ));
        started.elapsed()
    };
    let cold = burst();
    let warm = burst();
    println!("  a whole plan built and dropped: {cold:.2?} (first), {warm:.2?} (warm heap)");
    stage("after the bursts")?;
    Ok(())
}

fn csv_path() -> PathBuf {
    if let Some(p) = std::env::var_os("CSV") {
        return p.into();
    }
    let dir = std::env::var_os("LAB_ARTIFACTS").map_or_else(|| PathBuf::from("."), PathBuf::from);
    dir.join("sync.csv")
}

fn append_csv(path: &Path, row: &[(&'static str, String)]) -> Res<()> {
    let names: Vec<&str> = row.iter().map(|(k, _)| *k).collect();
    if names != COLUMNS {
        return Err(format!("row columns {names:?} differ from {COLUMNS:?}").into());
    }
    let new = !path.exists();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    if new {
        writeln!(f, "{}", COLUMNS.join(","))?;
    }
    let values: Vec<&str> = row.iter().map(|(_, v)| v.as_str()).collect();
    writeln!(f, "{}", values.join(","))?;
    Ok(())
}

/// Rows of the CSV as (column -> value) lookups.
struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn read(path: &Path) -> Res<Table> {
        let text = std::fs::read_to_string(path)?;
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let header: Vec<String> = lines
            .next()
            .ok_or("empty CSV")?
            .split(',')
            .map(str::to_owned)
            .collect();
        let rows = lines
            .map(|l| l.split(',').map(str::to_owned).collect())
            .collect();
        Ok(Table { header, rows })
    }

    fn get<'a>(&self, row: &'a [String], col: &str) -> &'a str {
        self.header
            .iter()
            .position(|h| h == col)
            .and_then(|i| row.get(i))
            .map_or("", String::as_str)
    }

    fn num(&self, row: &[String], col: &str) -> f64 {
        self.get(row, col).parse().unwrap_or(f64::NAN)
    }
}

fn markdown(t: &Table) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "| figure | {} |", {
        let ns: Vec<String> = t
            .rows
            .iter()
            .map(|r| format!("N = {}", t.get(r, "services")))
            .collect();
        ns.join(" | ")
    });
    let _ = writeln!(out, "|---|{}", "---:|".repeat(t.rows.len()));
    for col in t.header.iter().skip(1) {
        let vals: Vec<&str> = t.rows.iter().map(|r| t.get(r, col)).collect();
        let _ = writeln!(out, "| {col} | {} |", vals.join(" | "));
    }
    out
}

/// A log-log plot of some columns against N.
fn svg(t: &Table, series: &[(&str, &str, &str)]) -> String {
    let (w, h, left, right, top, bottom) = (720.0, 440.0, 70.0, 200.0, 40.0, 50.0);
    let pts = |col: &str| -> Vec<(f64, f64)> {
        t.rows
            .iter()
            .map(|r| (t.num(r, "services"), t.num(r, col)))
            .filter(|(x, y)| *x > 0.0 && *y > 0.0)
            .collect()
    };
    let all: Vec<(f64, f64)> = series.iter().flat_map(|(c, _, _)| pts(c)).collect();
    let lo = |v: f64| v.log10().floor();
    let hi = |v: f64| v.log10().ceil();
    let (x0, x1) = (
        all.iter().map(|p| lo(p.0)).fold(f64::INFINITY, f64::min),
        all.iter()
            .map(|p| hi(p.0))
            .fold(f64::NEG_INFINITY, f64::max),
    );
    let (y0, y1) = (
        all.iter().map(|p| lo(p.1)).fold(f64::INFINITY, f64::min),
        all.iter()
            .map(|p| hi(p.1))
            .fold(f64::NEG_INFINITY, f64::max),
    );
    let (x1, y1) = (x1.max(x0 + 1.0), y1.max(y0 + 1.0));
    let px = |x: f64| left + (x.log10() - x0) / (x1 - x0) * (w - left - right);
    let py = |y: f64| h - bottom - (y.log10() - y0) / (y1 - y0) * (h - top - bottom);
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(o, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        o,
        r#"<text x="{left}" y="22" font-size="14">ipvs-proxier sync at scale (lab guest, TCG), N Services x 10 endpoints</text>"#
    );
    for d in (x0 as i32)..=(x1 as i32) {
        let x = px(10f64.powi(d));
        let _ = writeln!(
            o,
            r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            h - bottom,
            h - bottom + 18.0,
            10f64.powi(d)
        );
    }
    for d in (y0 as i32)..=(y1 as i32) {
        let y = py(10f64.powi(d));
        let _ = writeln!(
            o,
            r##"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{} s</text>"##,
            w - right,
            left - 6.0,
            y + 4.0,
            10f64.powi(d)
        );
    }
    let _ = writeln!(
        o,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">N (Services)</text>"#,
        (left + w - right) / 2.0,
        h - 10.0
    );
    for (i, (col, label, colour)) in series.iter().enumerate() {
        let p = pts(col);
        let line: Vec<String> = p
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        let _ = writeln!(
            o,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"/>"#,
            line.join(" ")
        );
        for (x, y) in &p {
            let _ = writeln!(
                o,
                r#"<circle cx="{:.1}" cy="{:.1}" r="4" fill="{colour}"><title>{label}: N={x} {y} s</title></circle>"#,
                px(*x),
                py(*y)
            );
        }
        let ly = top + 20.0 + 22.0 * i as f64;
        let lx = w - right + 14.0;
        let _ = writeln!(
            o,
            r#"<line x1="{lx}" y1="{ly}" x2="{:.1}" y2="{ly}" stroke="{colour}" stroke-width="2"/><text x="{:.1}" y="{:.1}">{label}</text>"#,
            lx + 24.0,
            lx + 30.0,
            ly + 4.0
        );
    }
    o.push_str("</svg>\n");
    o
}

fn main() -> Res<()> {
    ipvs_proxier::allocator::use_thread_cache_while_computing();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["run", n] => {
            let n: u32 = n.parse()?;
            let changes = std::env::var("SYNC_BENCH_CHANGES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(10);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let row = rt.block_on(run(n, changes))?;
            for (k, v) in &row {
                println!("  {k:<26} {v}");
            }
            if std::env::var_os("SYNC_BENCH_NO_PEERS").is_some() {
                // A partial row (no peers): printed, not recorded.
                return Ok(());
            }
            let path = csv_path();
            append_csv(&path, &row)?;
            println!("  (appended to {})", path.display());
            Ok(())
        }
        ["mem", n] => mem(n.parse()?),
        ["report", csv, out] => {
            let t = Table::read(Path::new(csv))?;
            print!("{}", markdown(&t));
            let plot = svg(
                &t,
                &[
                    ("cold_s", "cold sync", "#1f77b4"),
                    (
                        "ipvsadm_restore_s",
                        "ipvsadm-restore (IPVS only)",
                        "#7f7f7f",
                    ),
                    ("change_p50_s", "one endpoint change (p50)", "#d62728"),
                    ("restart_s", "restart, nothing changed", "#2ca02c"),
                ],
            );
            std::fs::write(out, plot)?;
            println!("plot written to {out}");
            Ok(())
        }
        _ => Err("usage: sync-bench run N | sync-bench mem N | sync-bench report CSV SVG".into()),
    }
}
