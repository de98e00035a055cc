//! The 17 ipsets of the IPVS proxier: names, types, comment strings (used in the iptables
//! rules, not as ipset comments) and the members the planner computes for them.

use std::collections::BTreeSet;

use netlink::AddressFamily;
use netlink::ipset::{Member, SetSpec, SetType};

/// One of kube-proxy's sets. The declaration order is kube-proxy's `ipsetInfo` order, which
/// the renderer keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SetName {
    LoopBack,
    ClusterIp,
    ExternalIp,
    ExternalIpLocal,
    LoadBalancer,
    LoadBalancerFw,
    LoadBalancerLocal,
    LoadBalancerSourceIp,
    LoadBalancerSourceCidr,
    NodePortTcp,
    NodePortLocalTcp,
    NodePortUdp,
    NodePortLocalUdp,
    NodePortSctp,
    NodePortLocalSctp,
    HealthCheckNodePort,
    IpvsIps,
}

/// IPv6 set names: `KUBE-` becomes `KUBE-6-`, cut to the kernel's 31-character limit.
const MAX_SET_NAME: usize = 31;

impl SetName {
    pub const ALL: [SetName; 17] = [
        Self::LoopBack,
        Self::ClusterIp,
        Self::ExternalIp,
        Self::ExternalIpLocal,
        Self::LoadBalancer,
        Self::LoadBalancerFw,
        Self::LoadBalancerLocal,
        Self::LoadBalancerSourceIp,
        Self::LoadBalancerSourceCidr,
        Self::NodePortTcp,
        Self::NodePortLocalTcp,
        Self::NodePortUdp,
        Self::NodePortLocalUdp,
        Self::NodePortSctp,
        Self::NodePortLocalSctp,
        Self::HealthCheckNodePort,
        Self::IpvsIps,
    ];

    /// The IPv4 name.
    pub const fn base_name(self) -> &'static str {
        match self {
            Self::LoopBack => "KUBE-LOOP-BACK",
            Self::ClusterIp => "KUBE-CLUSTER-IP",
            Self::ExternalIp => "KUBE-EXTERNAL-IP",
            Self::ExternalIpLocal => "KUBE-EXTERNAL-IP-LOCAL",
            Self::LoadBalancer => "KUBE-LOAD-BALANCER",
            Self::LoadBalancerFw => "KUBE-LOAD-BALANCER-FW",
            Self::LoadBalancerLocal => "KUBE-LOAD-BALANCER-LOCAL",
            Self::LoadBalancerSourceIp => "KUBE-LOAD-BALANCER-SOURCE-IP",
            Self::LoadBalancerSourceCidr => "KUBE-LOAD-BALANCER-SOURCE-CIDR",
            Self::NodePortTcp => "KUBE-NODE-PORT-TCP",
            Self::NodePortLocalTcp => "KUBE-NODE-PORT-LOCAL-TCP",
            Self::NodePortUdp => "KUBE-NODE-PORT-UDP",
            Self::NodePortLocalUdp => "KUBE-NODE-PORT-LOCAL-UDP",
            Self::NodePortSctp => "KUBE-NODE-PORT-SCTP-HASH",
            Self::NodePortLocalSctp => "KUBE-NODE-PORT-LOCAL-SCTP-HASH",
            Self::HealthCheckNodePort => "KUBE-HEALTH-CHECK-NODE-PORT",
            Self::IpvsIps => "KUBE-IPVS-IPS",
        }
    }

    /// The name in `family`'s proxier.
    pub fn name(self, family: AddressFamily) -> String {
        match family {
            AddressFamily::Inet => self.base_name().to_owned(),
            AddressFamily::Inet6 => {
                let rest = self.base_name().trim_start_matches("KUBE-");
                let mut name = format!("KUBE-6-{rest}");
                name.truncate(MAX_SET_NAME);
                name
            }
        }
    }

    pub const fn set_type(self) -> SetType {
        match self {
            Self::LoopBack | Self::LoadBalancerSourceIp => SetType::HashIpPortIp,
            Self::LoadBalancerSourceCidr => SetType::HashIpPortNet,
            Self::NodePortTcp
            | Self::NodePortLocalTcp
            | Self::NodePortUdp
            | Self::NodePortLocalUdp
            | Self::HealthCheckNodePort => SetType::BitmapPort,
            Self::IpvsIps => SetType::HashIp,
            Self::ClusterIp
            | Self::ExternalIp
            | Self::ExternalIpLocal
            | Self::LoadBalancer
            | Self::LoadBalancerFw
            | Self::LoadBalancerLocal
            | Self::NodePortSctp
            | Self::NodePortLocalSctp => SetType::HashIpPort,
        }
    }

    /// kube-proxy's comment string for the set (`pkg/proxy/ipvs/ipset.go`).
    pub const fn comment(self) -> &'static str {
        match self {
            Self::LoopBack => {
                "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose"
            }
            Self::ClusterIp => "Kubernetes service cluster ip + port for masquerade purpose",
            Self::ExternalIp => {
                "Kubernetes service external ip + port for masquerade and filter purpose"
            }
            Self::ExternalIpLocal => {
                "Kubernetes service external ip + port with externalTrafficPolicy=local"
            }
            Self::LoadBalancer => "Kubernetes service lb portal",
            Self::LoadBalancerFw => {
                "Kubernetes service load balancer ip + port for load balancer with sourceRange"
            }
            Self::LoadBalancerLocal => {
                "Kubernetes service load balancer ip + port with externalTrafficPolicy=local"
            }
            Self::LoadBalancerSourceIp => {
                "Kubernetes service load balancer ip + port + source IP for packet filter purpose"
            }
            Self::LoadBalancerSourceCidr => {
                "Kubernetes service load balancer ip + port + source cidr for packet filter purpose"
            }
            Self::NodePortTcp => "Kubernetes nodeport TCP port for masquerade purpose",
            Self::NodePortLocalTcp => {
                "Kubernetes nodeport TCP port with externalTrafficPolicy=local"
            }
            Self::NodePortUdp => "Kubernetes nodeport UDP port for masquerade purpose",
            Self::NodePortLocalUdp => {
                "Kubernetes nodeport UDP port with externalTrafficPolicy=local"
            }
            Self::NodePortSctp => {
                "Kubernetes nodeport SCTP port for masquerade purpose with type 'hash ip:port'"
            }
            Self::NodePortLocalSctp => {
                "Kubernetes nodeport SCTP port with externalTrafficPolicy=local with type 'hash ip:port'"
            }
            Self::HealthCheckNodePort => "Kubernetes health check node port",
            Self::IpvsIps => "Addresses on the ipvs interface",
        }
    }

    /// How the set is created (kube-proxy's defaults).
    pub fn spec(self, family: AddressFamily) -> SetSpec {
        SetSpec::new(self.name(family), self.set_type(), family)
    }

    const fn index(self) -> usize {
        self as usize
    }
}

/// The desired members of all 17 sets of one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpSets {
    pub family: AddressFamily,
    members: [BTreeSet<Member>; 17],
}

impl IpSets {
    pub fn new(family: AddressFamily) -> Self {
        Self {
            family,
            members: Default::default(),
        }
    }

    pub fn insert(&mut self, set: SetName, member: Member) {
        self.members[set.index()].insert(member);
    }

    /// Removes one member; whether it was there.
    pub fn remove(&mut self, set: SetName, member: &Member) -> bool {
        self.members[set.index()].remove(member)
    }

    pub fn contains(&self, set: SetName, member: &Member) -> bool {
        self.members[set.index()].contains(member)
    }

    /// Every member of every set, in kube-proxy's set order.
    pub fn all_members(&self) -> impl Iterator<Item = (SetName, &Member)> + '_ {
        SetName::ALL
            .iter()
            .flat_map(|s| self.members(*s).iter().map(move |m| (*s, m)))
    }

    pub fn members(&self, set: SetName) -> &BTreeSet<Member> {
        &self.members[set.index()]
    }

    pub fn is_empty(&self, set: SetName) -> bool {
        self.members[set.index()].is_empty()
    }

    /// Every set in kube-proxy's order with its spec and sorted members.
    pub fn iter(&self) -> impl Iterator<Item = (SetSpec, &BTreeSet<Member>)> + '_ {
        SetName::ALL
            .iter()
            .map(|s| (s.spec(self.family), self.members(*s)))
    }
}

/// Members gathered in planning order, duplicates included. Sorting each set once at the
/// end and bulk-building its `BTreeSet` costs far fewer comparisons than inserting every
/// member into a tree as it is found (the planner adds ~30,000 members for 10,000 Services).
#[derive(Debug, Clone)]
pub struct IpSetsBuilder {
    family: AddressFamily,
    members: [Vec<Member>; 17],
}

impl IpSetsBuilder {
    pub fn new(family: AddressFamily) -> Self {
        Self {
            family,
            members: Default::default(),
        }
    }

    pub fn insert(&mut self, set: SetName, member: Member) {
        self.members[set.index()].push(member);
    }

    pub fn build(self) -> IpSets {
        IpSets {
            family: self.family,
            members: self.members.map(|mut members| {
                members.sort_unstable();
                members.dedup();
                members.into_iter().collect()
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn builder_matches_inserts() {
        let members = [
            Member::Port(30001),
            Member::Port(30000),
            Member::Port(30001),
            Member::Ip(Ipv4Addr::new(10, 0, 0, 2).into()),
            Member::Ip(Ipv4Addr::new(10, 0, 0, 1).into()),
        ];
        let mut sets = IpSets::new(AddressFamily::Inet);
        let mut builder = IpSetsBuilder::new(AddressFamily::Inet);
        for (i, m) in members.into_iter().enumerate() {
            let set = if i < 3 {
                SetName::NodePortTcp
            } else {
                SetName::IpvsIps
            };
            sets.insert(set, m);
            builder.insert(set, m);
        }
        assert_eq!(builder.build(), sets);
    }

    #[test]
    fn ipv6_names_are_prefixed_and_truncated() {
        assert_eq!(
            SetName::LoadBalancerSourceCidr.name(AddressFamily::Inet6),
            "KUBE-6-LOAD-BALANCER-SOURCE-CID"
        );
        assert_eq!(
            SetName::NodePortLocalSctp.name(AddressFamily::Inet6),
            "KUBE-6-NODE-PORT-LOCAL-SCTP-HAS"
        );
        assert_eq!(
            SetName::ClusterIp.name(AddressFamily::Inet6),
            "KUBE-6-CLUSTER-IP"
        );
        for s in SetName::ALL {
            assert_eq!(SetName::ALL[s.index()], s);
            assert!(s.name(AddressFamily::Inet6).len() <= 31);
        }
    }
}
