//! ipvs-proxier: a drop-in replacement for `kube-proxy --proxy-mode=ipvs`.
//!
//! Functional core, imperative shell: `model` (Kubernetes objects -> service ports and
//! endpoints), `plan` (pure: desired IPVS table, VIPs, ipsets, iptables rules) and `diff` (pure)
//! do no I/O; `dataplane` is the only code that touches the kernel; `sync` owns timing.

pub mod allocator;
pub mod config;
pub mod dataplane;
pub mod diff;
pub mod model;
pub mod plan;
pub mod serve;
pub mod source;
pub mod stale_flows;
pub mod sync;
pub mod synthetic;
