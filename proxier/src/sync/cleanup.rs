//! `--cleanup` and `--init-only`: kube-proxy's two one-shot modes.
//!
//! Owns the removal of everything this proxier creates, in the order the kernel allows
//! (reference §1 row 29): virtual servers, the dummy link `kube-ipvs0`, the jump rules and
//! chains of each family, then the 17 ipsets of each family (a set an iptables rule still
//! references cannot be destroyed).
//!
//! **Deliberate deviation:** upstream's `--cleanup` flushes the whole IPVS table
//! (`ipvs.Flush()`), including virtual servers kube-proxy never created and those inside
//! `--ipvs-exclude-cidrs`. We delete only what a sync would garbage-collect: virtual servers
//! of the managed families, outside the excluded CIDRs, never fwmark services. A keepalived
//! or MetalLB-in-IPVS setup sharing the node survives a cleanup. The link is deleted only if
//! it is a dummy, the iptables work touches only our nine jump rules and our chains, and only
//! our set names are destroyed.
//!
//! Every step runs even if an earlier one failed; failures are collected by object name.
//!
//! `--init-only` ([`init_only`]) sets the sysctls and the IPVS timeouts, as kube-proxy's
//! `NewProxier(..., initOnly=true)` does, then returns.

use std::collections::BTreeSet;
use std::path::Path;

use ipnet::IpNet;
use netlink::AddressFamily;
use netlink::ipset::IpsetHandle;
use netlink::ipvs::{IpvsHandle, Operation, ServiceKey};
use netlink::link::Links;

use crate::config::IpvsTimeouts;
use crate::dataplane::iptables::{BackendChoice, Iptables, JUMP_RULES};
use crate::dataplane::kernel::{Failure, family_name};
use crate::dataplane::sysctl::Sysctls;
use crate::diff::Ownership;
use crate::plan::SetName;
use crate::plan::iptables::Table;

/// What a cleanup removed, and what it could not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanupReport {
    pub services_deleted: usize,
    pub dummy_deleted: bool,
    pub jump_rules_deleted: usize,
    pub chains_deleted: usize,
    pub sets_destroyed: usize,
    pub failures: Vec<Failure>,
}

impl CleanupReport {
    fn fail(&mut self, object: impl Into<String>, error: impl std::fmt::Display) {
        let failure = Failure {
            object: object.into(),
            error: error.to_string(),
            virtual_server: None,
            ipvs: None,
        };
        tracing::warn!(object = %failure.object, error = %failure.error, "cleanup step failed");
        self.failures.push(failure);
    }
}

/// What to clean.
#[derive(Debug, Clone)]
pub struct CleanupScope {
    pub families: Vec<AddressFamily>,
    /// `--ipvs-exclude-cidrs`: virtual servers inside are kept.
    pub exclude_cidrs: Vec<IpNet>,
    pub iptables_backend: BackendChoice,
    /// `kube-ipvs0`.
    pub dummy: String,
}

/// Removes our objects from this network namespace's kernel (needs a tokio runtime).
pub async fn cleanup(scope: &CleanupScope) -> CleanupReport {
    let mut report = CleanupReport::default();
    let ownership = Ownership {
        families: scope.families.iter().copied().collect(),
        exclude: scope.exclude_cidrs.clone(),
    };

    // 1. Virtual servers (their real servers go with them).
    match IpvsHandle::connect().await {
        Ok(mut ipvs) => match ipvs.dump_services().await {
            Ok(entries) => {
                let ops: Vec<Operation> = entries
                    .iter()
                    .map(|e| e.service.key)
                    .filter(|k| owned_service(&ownership, k))
                    .map(Operation::DeleteService)
                    .collect();
                for (op, result) in ops.iter().zip(ipvs.apply(&ops).await) {
                    match result {
                        Ok(()) => report.services_deleted += 1,
                        Err(e) => report.fail(op.describe(), e),
                    }
                }
            }
            Err(e) => report.fail("IPVS service dump", e),
        },
        // No IPVS in this kernel: nothing of ours can be there (upstream returns early too).
        Err(e) => tracing::info!(error = %e, "IPVS unavailable; no virtual servers to clean"),
    }

    // 2. The dummy link, with the VIPs bound on it.
    match Links::new() {
        Ok(links) => match links.delete_dummy(&scope.dummy).await {
            Ok(deleted) => report.dummy_deleted = deleted,
            Err(e) => report.fail(format!("delete link {}", scope.dummy), e),
        },
        Err(e) => report.fail("rtnetlink socket", e),
    }

    // 3. Jump rules, then chains, per family.
    for &family in &scope.families {
        let ipt = match Iptables::detect(family, scope.iptables_backend) {
            Ok(i) => i,
            Err(e) => {
                report.fail(format!("iptables {}", family_name(family)), e);
                continue;
            }
        };
        clean_iptables(&ipt, &mut report);
    }

    // 4. Sets, last: they are free now that no rule references them.
    match IpsetHandle::new() {
        Ok(mut ipset) => match ipset.list_names() {
            Ok(existing) => {
                let existing: BTreeSet<String> = existing.into_iter().collect();
                for name in set_names(&scope.families) {
                    if !existing.contains(&name) {
                        continue;
                    }
                    match ipset.destroy(&name) {
                        Ok(()) => report.sets_destroyed += 1,
                        Err(e) => report.fail(format!("ipset destroy {name}"), e),
                    }
                }
            }
            Err(e) => report.fail("ipset list", e),
        },
        Err(e) => tracing::info!(error = %e, "ipset unavailable; no sets to clean"),
    }

    tracing::info!(
        services_deleted = report.services_deleted,
        dummy_deleted = report.dummy_deleted,
        jump_rules_deleted = report.jump_rules_deleted,
        chains_deleted = report.chains_deleted,
        sets_destroyed = report.sets_destroyed,
        failures = report.failures.len(),
        "cleanup done"
    );
    report
}

fn owned_service(ownership: &Ownership, key: &ServiceKey) -> bool {
    key.addr().is_some_and(|a| ownership.owns_address(&a))
}

/// Our 17 set names of each family.
pub fn set_names(families: &[AddressFamily]) -> Vec<String> {
    families
        .iter()
        .flat_map(|&f| SetName::ALL.iter().map(move |s| s.name(f)))
        .collect()
}

fn clean_iptables(ipt: &Iptables, report: &mut CleanupReport) {
    let family = family_name(ipt.family());
    let saved = match ipt.save(None) {
        Ok(s) => s,
        Err(e) => {
            report.fail(format!("iptables-save {family}"), e);
            return;
        }
    };
    // Two restores: the jumps go first so that the chains are unreferenced when deleted,
    // whichever backend applies the input.
    let plan = cleanup_inputs(&saved);
    if let Some(input) = &plan.jumps {
        match ipt.restore(input) {
            Ok(()) => report.jump_rules_deleted += plan.jump_rules,
            Err(e) => report.fail(format!("delete jump rules ({family})"), e),
        }
    }
    if let Some(input) = &plan.chains {
        match ipt.restore(input) {
            Ok(()) => report.chains_deleted += plan.chain_count,
            Err(e) => report.fail(format!("delete chains ({family})"), e),
        }
    }
}

/// The two `iptables-restore --noflush` inputs of a cleanup, from `iptables-save` output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanupInputs {
    /// Deletes every copy of our jump rules; `None` when there is none.
    pub jumps: Option<String>,
    pub jump_rules: usize,
    /// Flushes, then deletes, our chains that exist; `None` when there is none.
    pub chains: Option<String>,
    pub chain_count: usize,
}

/// Pure: what to restore to remove our jump rules and chains from `saved`.
pub fn cleanup_inputs(saved: &str) -> CleanupInputs {
    let mut out = CleanupInputs::default();
    let mut jumps = String::new();
    let mut chains = String::new();
    for (table, lines) in sections(saved) {
        let deletes: Vec<String> = lines
            .iter()
            .filter_map(|l| {
                JUMP_RULES
                    .iter()
                    .filter(|r| r.table == table)
                    .find(|r| *l == format!("-A {} {}", r.chain, r.spec()))
                    .map(|r| format!("-D {} {}", r.chain, r.spec()))
            })
            .collect();
        if !deletes.is_empty() {
            out.jump_rules += deletes.len();
            jumps.push_str(&format!("*{table}\n{}\nCOMMIT\n", deletes.join("\n")));
        }
        let ours: Vec<&'static str> = [Table::Nat, Table::Filter]
            .iter()
            .filter(|t| t.name() == table)
            .flat_map(|t| t.chains().iter().map(|c| c.name()))
            .filter(|name| {
                let decl = format!(":{name} ");
                lines.iter().any(|l| l.starts_with(&decl))
            })
            .collect();
        if !ours.is_empty() {
            out.chain_count += ours.len();
            chains.push_str(&format!("*{table}\n"));
            // Declaring an existing chain flushes it; all are empty before any is deleted,
            // since they jump to each other.
            for name in &ours {
                chains.push_str(&format!(":{name} - [0:0]\n"));
            }
            for name in &ours {
                chains.push_str(&format!("-X {name}\n"));
            }
            chains.push_str("COMMIT\n");
        }
    }
    out.jumps = (!jumps.is_empty()).then_some(jumps);
    out.chains = (!chains.is_empty()).then_some(chains);
    out
}

/// `(table, lines)` of each `*table` section of `iptables-save` output.
fn sections(saved: &str) -> Vec<(&str, Vec<&str>)> {
    let mut out: Vec<(&str, Vec<&str>)> = Vec::new();
    for line in saved.lines() {
        if let Some(name) = line.strip_prefix('*') {
            out.push((name.trim(), Vec::new()));
        } else if let Some((_, lines)) = out.last_mut() {
            lines.push(line);
        }
    }
    out
}

/// Why `--init-only` failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("sysctls: {0}")]
    Sysctl(#[from] crate::dataplane::sysctl::SysctlError),
    #[error("IPVS timeouts: {0}")]
    Ipvs(#[from] netlink::ipvs::IpvsError),
}

/// The privileged part of startup: the IPVS sysctls, and the IPVS connection timeouts when
/// any is set. Returns the names of the sysctls written. Needs a tokio runtime.
pub async fn init_only(
    sysctl_root: &Path,
    strict_arp: bool,
    timeouts: &IpvsTimeouts,
) -> Result<Vec<&'static str>, InitError> {
    let written = Sysctls::new(sysctl_root).ensure_ipvs(strict_arp)?;
    set_timeouts(timeouts).await?;
    Ok(written)
}

/// `IPVS_CMD_SET_CONFIG` when any timeout is set (0 keeps the kernel's value).
pub async fn set_timeouts(timeouts: &IpvsTimeouts) -> Result<(), netlink::ipvs::IpvsError> {
    if !timeouts.any_set() {
        return Ok(());
    }
    let t = timeouts.to_kernel();
    IpvsHandle::connect().await?.set_timeouts(&t).await?;
    tracing::info!(
        tcp = t.tcp,
        tcp_fin = t.tcp_fin,
        udp = t.udp,
        "IPVS timeouts set"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    const SAVED: &str = "\
# Generated by iptables-save
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
:FOREIGN - [0:0]
-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A POSTROUTING -j FOREIGN
-A KUBE-SERVICES -j KUBE-MARK-MASQ
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
-A INPUT -j ACCEPT
COMMIT
";

    #[test]
    fn only_our_jumps_and_chains_are_removed() {
        let got = cleanup_inputs(SAVED);
        assert_eq!(
            got.jumps.as_deref(),
            Some(
                "*nat\n\
                 -D PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
                 -D OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
                 -D OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
                 COMMIT\n"
            )
        );
        assert_eq!(got.jump_rules, 3);
        assert_eq!(
            got.chains.as_deref(),
            Some(
                "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-POSTROUTING - [0:0]\n\
                 :KUBE-MARK-MASQ - [0:0]\n-X KUBE-SERVICES\n-X KUBE-POSTROUTING\n\
                 -X KUBE-MARK-MASQ\nCOMMIT\n"
            )
        );
        assert_eq!(got.chain_count, 3);
    }

    #[test]
    fn a_clean_host_needs_no_restore() {
        let got = cleanup_inputs("*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n");
        assert_eq!(got, CleanupInputs::default());
    }

    #[test]
    fn seventeen_sets_per_family() {
        let names = set_names(&[AddressFamily::Inet, AddressFamily::Inet6]);
        assert_eq!(names.len(), 34);
        assert!(names.contains(&"KUBE-CLUSTER-IP".to_owned()));
        assert!(names.contains(&"KUBE-6-CLUSTER-IP".to_owned()));
    }
}
