//! Stable text renders of a [`Plan`]: the IPVS table as `ipvsadm -Sn`, the ipsets as
//! `ipset save`-like text, the rules as `iptables-restore` input, and the diagnostics and
//! health checks one per line. They serve the golden tests and `ipvs-proxier plan`.

use std::fmt::Write as _;

use netlink::AddressFamily;
use netlink::ipvs::Table;

use super::Plan;
use crate::model::Diagnostic;

/// All families' virtual servers in one table, as the kernel holds them.
pub fn ipvs(plan: &Plan) -> String {
    let mut table = Table::default();
    for f in &plan.families {
        table
            .services
            .extend(f.ipvs.services.iter().map(|(k, v)| (*k, v.clone())));
    }
    table.to_ipvsadm_save()
}

/// Every family's 17 sets in kube-proxy's order: the `create` line, then one `add` line per
/// member, members sorted.
pub fn ipsets(plan: &Plan) -> String {
    let mut out = String::new();
    for f in &plan.families {
        for (spec, members) in f.ipsets.iter() {
            out.push_str(&spec.create_line());
            out.push('\n');
            for m in members {
                let _ = writeln!(out, "add {} {m}", spec.name);
            }
        }
    }
    out
}

/// The `iptables-restore` (IPv4) or `ip6tables-restore` (IPv6) input of one family; `None`
/// when the family is not planned.
pub fn iptables(plan: &Plan, family: AddressFamily) -> Option<String> {
    plan.family(family).map(|f| f.rules.to_restore_input())
}

/// One diagnostic per line.
pub fn diagnostics(diags: &[Diagnostic]) -> String {
    let mut out = String::new();
    for d in diags {
        let _ = writeln!(out, "{d}");
    }
    out
}

/// `family namespace/name node-port local-endpoints` per health-checked Service.
pub fn health_checks(plan: &Plan) -> String {
    let mut out = String::new();
    for f in &plan.families {
        let fam = match f.family {
            AddressFamily::Inet => "ipv4",
            AddressFamily::Inet6 => "ipv6",
        };
        for (svc, hc) in &f.health_checks {
            let _ = writeln!(
                out,
                "{fam} {svc} nodePort={} localEndpoints={}",
                hc.node_port, hc.local_endpoints
            );
        }
    }
    out
}
