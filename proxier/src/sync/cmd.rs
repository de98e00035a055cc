//! The `plan` and `sync` commands behind the binary, independent of how flags are parsed.

use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use netlink::AddressFamily;
use netlink::ipvs::Scheduler;

use super::{SyncError, SyncOptions, SyncReport, Syncer, manifests};
use crate::model::manifests::Manifests;
use crate::plan::{
    self, LocalDetector, LocalPolicyFallback, NodeFacts, NodePortAddresses, PlanConfig, render,
};

/// What both commands need to know.
#[derive(Debug, Clone)]
pub struct CommonArgs {
    pub manifests: PathBuf,
    /// `None`: the first Node of the manifests (plan only).
    pub node_name: Option<String>,
    pub node_ips: Vec<IpAddr>,
    /// Also decides the families (default: IPv4 only).
    pub cluster_cidrs: Vec<IpNet>,
    pub scheduler: Scheduler,
    pub masquerade_all: bool,
    pub exclude_cidrs: Vec<IpNet>,
    pub strict_arp: bool,
}

/// A command that could not run.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Manifests(#[from] manifests::ManifestError),
    #[error("no --node-name given and no Node in the manifests")]
    NoNodeName,
    #[error(transparent)]
    Sync(#[from] SyncError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

fn families(cidrs: &[IpNet], node_ips: &[IpAddr]) -> Vec<AddressFamily> {
    let mut f: Vec<AddressFamily> = cidrs
        .iter()
        .map(|c| AddressFamily::of(&c.addr()))
        .chain(node_ips.iter().map(AddressFamily::of))
        .collect();
    f.sort();
    f.dedup();
    if f.is_empty() {
        f.push(AddressFamily::Inet);
    }
    f
}

fn node_name(args: &CommonArgs, objects: &Manifests) -> Result<String, CommandError> {
    args.node_name
        .clone()
        .or_else(|| objects.nodes.first().and_then(|n| n.metadata.name.clone()))
        .ok_or(CommandError::NoNodeName)
}

/// kube-proxy's defaults plus the given flags.
pub fn sync_options(args: &CommonArgs, node_name: String) -> SyncOptions {
    SyncOptions {
        plan: PlanConfig {
            node_name,
            families: families(&args.cluster_cidrs, &args.node_ips),
            scheduler: args.scheduler,
            masquerade_all: args.masquerade_all,
            masquerade_bit: 14,
            local_detector: LocalDetector::ClusterCidr,
            cluster_cidrs: args.cluster_cidrs.clone(),
            local_policy_fallback: LocalPolicyFallback::ClusterEndpoints,
            node_port_addresses: NodePortAddresses::All,
            random_fully: true,
            service_proxy_name: None,
        },
        exclude_cidrs: args.exclude_cidrs.clone(),
        strict_arp: args.strict_arp,
        node_ips: (!args.node_ips.is_empty()).then(|| args.node_ips.clone()),
        max_drain: None,
    }
}

/// The Node object's InternalIPs, when no `--node-ip` is given to `plan`.
fn node_ips_of(objects: &Manifests, name: &str) -> Vec<IpAddr> {
    objects
        .nodes
        .iter()
        .filter(|n| n.metadata.name.as_deref() == Some(name))
        .flat_map(|n| {
            n.status
                .iter()
                .flat_map(|s| s.addresses.iter().flatten())
                .filter(|a| a.type_ == "InternalIP")
                .filter_map(|a| a.address.parse().ok())
        })
        .collect()
}

/// `plan`: the renders of the plan, without touching the kernel.
pub fn plan(args: &CommonArgs) -> Result<String, CommandError> {
    let objects = manifests::load(&args.manifests)?;
    let name = node_name(args, &objects)?;
    let mut node_ips = args.node_ips.clone();
    if node_ips.is_empty() {
        node_ips = node_ips_of(&objects, &name);
    }
    let mut options = sync_options(args, name);
    options.plan.families = families(&args.cluster_cidrs, &node_ips);
    let facts = NodeFacts {
        addresses: node_ips.clone(),
        primary_ips: node_ips,
    };
    let p = plan::plan_objects(
        &objects.services,
        &objects.endpoint_slices,
        &objects.nodes,
        &options.plan,
        &facts,
    );
    let mut out = String::new();
    out.push_str("# ipvsadm -Sn\n");
    out.push_str(&render::ipvs(&p));
    out.push_str("# kube-ipvs0\n");
    for f in &p.families {
        for a in &f.bind_addresses {
            out.push_str(&format!("{a}\n"));
        }
    }
    out.push_str("# ipset\n");
    out.push_str(&render::ipsets(&p));
    for f in &p.families {
        if let Some(rules) = render::iptables(&p, f.family) {
            out.push_str(&format!(
                "# iptables-restore ({})\n",
                crate::dataplane::kernel::family_name(f.family)
            ));
            out.push_str(&rules);
        }
    }
    let mut diags = objects.diagnostics.clone();
    diags.extend(p.diagnostics.iter().cloned());
    if !diags.is_empty() {
        out.push_str("# diagnostics\n");
        out.push_str(&render::diagnostics(&diags));
    }
    let hc = render::health_checks(&p);
    if !hc.is_empty() {
        out.push_str("# health checks\n");
        out.push_str(&hc);
    }
    Ok(out)
}

/// `sync --once`: one sync of the manifests into this node's kernel.
pub fn sync_once(args: &CommonArgs) -> Result<SyncReport, CommandError> {
    let objects = manifests::load(&args.manifests)?;
    let name = node_name(args, &objects)?;
    let options = sync_options(args, name);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CommandError::Runtime)?;
    rt.block_on(async {
        let kernel = Syncer::default_kernel_options(&options);
        let mut syncer = Syncer::new(options, &kernel).await?;
        Ok(syncer.sync(&objects).await?)
    })
}
