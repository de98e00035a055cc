//! `ipvs-proxier status`: the kernel's IPVS table, each virtual server annotated with the
//! Service port it belongs to (`ipvsadm -Ln` cannot say: a NodePort virtual server is just a
//! node IP and a port).
//!
//! Owns the annotation file the daemon writes after each sync (one line per virtual server
//! it planned: `KEY<TAB>namespace/name:port`) and the pure functions on both sides: which
//! service port owns a virtual server ([`owners`]), and the annotated render ([`annotate`]).
//! The file is a cache for humans, never read back by the daemon; a missing or stale file
//! only costs annotations.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use netlink::ipvs::{ServiceKey, Table};

use crate::model::Model;

/// Where the daemon writes the annotations unless told otherwise.
pub const DEFAULT_STATE_FILE: &str = "/run/ipvs-proxier/virtual-servers";

/// Pure: the service port (`namespace/name:port`) behind each virtual server of `table`.
/// A virtual server matches a port of the same protocol when its address is one of the
/// Service's cluster, external or load-balancer IPs and its port the service port, or, for
/// a node address, when its port is the node port.
pub fn owners(model: &Model, table: &Table) -> BTreeMap<ServiceKey, String> {
    let mut out = BTreeMap::new();
    for key in table.services.keys() {
        let ServiceKey::Inet {
            protocol,
            addr,
            port,
        } = *key
        else {
            continue;
        };
        let by_address = model.services.values().find_map(|svc| {
            let mut ips = svc
                .cluster_ips
                .iter()
                .chain(&svc.external_ips)
                .chain(&svc.load_balancer_ips);
            if !ips.any(|ip: &IpAddr| *ip == addr) {
                return None;
            }
            svc.ports
                .iter()
                .find(|p| p.name.protocol == protocol && p.port == port)
        });
        let owner = by_address.or_else(|| {
            model.services.values().find_map(|svc| {
                svc.ports
                    .iter()
                    .find(|p| p.name.protocol == protocol && p.node_port == Some(port))
            })
        });
        if let Some(p) = owner {
            out.insert(*key, p.name.to_string());
        }
    }
    out
}

/// The annotation file's text.
pub fn render_owners(owners: &BTreeMap<ServiceKey, String>) -> String {
    owners.iter().map(|(k, o)| format!("{k}\t{o}\n")).collect()
}

/// Parses the annotation file (unknown lines are skipped).
pub fn parse_owners(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(k, o)| (k.to_owned(), o.to_owned()))
        .collect()
}

/// Pure: `table` in `ipvsadm -Sn` form, each `-A` line followed by `# owner` (or
/// `# not ours` when the last plan had no such virtual server).
pub fn annotate(table: &Table, owners: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    for (key, vs) in &table.services {
        let mut one = Table::default();
        one.services.insert(*key, vs.clone());
        let text = one.to_ipvsadm_save();
        let owner = owners
            .get(&key.to_string())
            .map_or("not ours", String::as_str);
        for (i, line) in text.lines().enumerate() {
            out.push_str(line);
            if i == 0 {
                out.push_str(&format!("  # {owner}"));
            }
            out.push('\n');
        }
    }
    out
}

/// Writes the annotation file atomically (temp file + rename), creating its directory.
pub fn write_owners(path: &Path, owners: &BTreeMap<ServiceKey, String>) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut tmp = PathBuf::from(path);
    tmp.set_extension("tmp");
    std::fs::write(&tmp, render_owners(owners))?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ServiceName, ServicePort, ServicePortName, SessionAffinity};
    use netlink::Protocol;
    use netlink::ipvs::{Scheduler, Service, VirtualServer};
    use pretty_assertions::assert_eq;

    fn key(addr: &str, port: u16, protocol: Protocol) -> ServiceKey {
        ServiceKey::Inet {
            protocol,
            addr: addr.parse().unwrap_or_else(|_| unreachable!()),
            port,
        }
    }

    fn table(keys: &[ServiceKey]) -> Table {
        let mut t = Table::default();
        for k in keys {
            t.services
                .insert(*k, VirtualServer::new(Service::new(*k, Scheduler::rr())));
        }
        t
    }

    fn model() -> Model {
        let name = ServiceName {
            namespace: "default".into(),
            name: "web".into(),
        };
        let port = |p: &str, protocol, port, node_port| ServicePort {
            name: ServicePortName {
                service: name.clone(),
                port: p.into(),
                protocol,
            },
            port,
            node_port,
            target_port: None,
        };
        let svc = crate::model::Service {
            name: name.clone(),
            cluster_ips: vec!["10.96.0.10".parse().unwrap_or_else(|_| unreachable!())],
            external_ips: vec![],
            load_balancer_ips: vec![],
            load_balancer_source_ranges: vec![],
            session_affinity: SessionAffinity::None,
            external_policy_local: false,
            internal_policy_local: false,
            health_check_node_port: None,
            ports: vec![
                port("http", Protocol::Tcp, 80, Some(30080)),
                port("dns", Protocol::Udp, 80, None),
            ],
        };
        let mut m = Model::default();
        m.services.insert(name, svc);
        m
    }

    #[test]
    fn cluster_ip_node_port_and_foreign_virtual_servers() {
        let keys = [
            key("10.96.0.10", 80, Protocol::Tcp),
            key("10.96.0.10", 80, Protocol::Udp),
            key("10.255.0.1", 30080, Protocol::Tcp),
            key("10.97.0.1", 80, Protocol::Tcp),
        ];
        let t = table(&keys);
        let owners = owners(&model(), &t);
        let file = render_owners(&owners);
        let text = annotate(&t, &parse_owners(&file));
        assert_eq!(
            text,
            "-A -t 10.96.0.10:80 -s rr  # default/web:http\n\
             -A -t 10.97.0.1:80 -s rr  # not ours\n\
             -A -t 10.255.0.1:30080 -s rr  # default/web:http\n\
             -A -u 10.96.0.10:80 -s rr  # default/web:dns\n"
        );
    }
}
