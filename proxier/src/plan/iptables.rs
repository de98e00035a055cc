//! The iptables rules of the IPVS proxier as typed values, and their generation from the
//! set contents (kube-proxy's `writeIptablesRules`, reference §2.3). The rule set is O(1) in
//! services: everything per service lives in the ipsets; the only per-object rules are the
//! `KUBE-IPVS-OUT-FILTER` drops.

use std::fmt::{self, Write as _};
use std::net::IpAddr;

use ipnet::IpNet;
use netlink::{AddressFamily, Protocol};

use super::ipsets::{IpSets, SetName};

/// The two tables written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    Nat,
    Filter,
}

impl Table {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Nat => "nat",
            Self::Filter => "filter",
        }
    }

    /// The chains this proxier owns in the table, in declaration order.
    pub const fn chains(self) -> &'static [Chain] {
        match self {
            Self::Nat => &[
                Chain::Services,
                Chain::Postrouting,
                Chain::NodePort,
                Chain::LoadBalancer,
                Chain::MarkMasq,
            ],
            Self::Filter => &[
                Chain::Forward,
                Chain::NodePort,
                Chain::ProxyFirewall,
                Chain::SourceRangesFirewall,
                Chain::IpvsFilter,
                Chain::IpvsOutFilter,
            ],
        }
    }
}

/// A chain owned by the proxier (`KUBE-NODE-PORT` exists in both tables).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Chain {
    Services,
    Postrouting,
    NodePort,
    LoadBalancer,
    MarkMasq,
    Forward,
    ProxyFirewall,
    SourceRangesFirewall,
    IpvsFilter,
    IpvsOutFilter,
}

impl Chain {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Services => "KUBE-SERVICES",
            Self::Postrouting => "KUBE-POSTROUTING",
            Self::NodePort => "KUBE-NODE-PORT",
            Self::LoadBalancer => "KUBE-LOAD-BALANCER",
            Self::MarkMasq => "KUBE-MARK-MASQ",
            Self::Forward => "KUBE-FORWARD",
            Self::ProxyFirewall => "KUBE-PROXY-FIREWALL",
            Self::SourceRangesFirewall => "KUBE-SOURCE-RANGES-FIREWALL",
            Self::IpvsFilter => "KUBE-IPVS-FILTER",
            Self::IpvsOutFilter => "KUBE-IPVS-OUT-FILTER",
        }
    }
}

/// Which packet fields an `-m set` match compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SetDirections {
    /// `dst`
    Dst,
    /// `dst,dst`
    DstDst,
    /// `dst,dst,src`
    DstDstSrc,
    /// `src,dst`
    SrcDst,
}

impl SetDirections {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Dst => "dst",
            Self::DstDst => "dst,dst",
            Self::DstDstSrc => "dst,dst,src",
            Self::SrcDst => "src,dst",
        }
    }
}

/// `-m addrtype` address kind (only LOCAL is used).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddrTypeSide {
    Src,
    Dst,
}

/// One match of a rule, rendered in the order kube-proxy writes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Match {
    /// `-p tcp`
    Protocol(Protocol),
    /// `-s 127.0.0.0/8`, `! -s 10.244.0.0/16`
    SourceNet { negated: bool, net: IpNet },
    /// `-s 203.0.113.7` (a bare address, as the OUT-FILTER rules write it)
    SourceAddr(IpAddr),
    /// `! -i cbr0`, `! -i veth+` (the name includes the `+` of a prefix)
    NotInInterface(String),
    /// `-m comment --comment "..."`
    Comment(&'static str),
    /// `-m set --match-set NAME dirs`
    Set { name: String, dirs: SetDirections },
    /// `-m addrtype [!] --src-type/--dst-type LOCAL`
    AddrTypeLocal { side: AddrTypeSide, negated: bool },
    /// `-m physdev ! --physdev-is-in`
    PhysdevNotIsIn,
    /// `-m mark [!] --mark 0x004000/0x004000`
    Mark { negated: bool, mark: u32 },
    /// `-m conntrack --ctstate STATES`
    CtState(&'static str),
    /// `-m ipvs --vaddr IP --vproto tcp --vport PORT`
    Ipvs {
        vaddr: IpAddr,
        vproto: Protocol,
        vport: u16,
    },
}

/// What a rule does.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    Jump(Chain),
    Return,
    Accept,
    Drop,
    Reject,
    Masquerade { random_fully: bool },
    OrMark(u32),
    XorMark(u32),
}

/// One `-A` line.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    pub chain: Chain,
    pub matches: Vec<Match>,
    pub target: Target,
}

/// kube-proxy prints the mark with Go's `%#08x`: `0x004000`.
struct MarkText(u32);

impl fmt::Display for MarkText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#08x}", self.0)
    }
}

impl fmt::Display for Match {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Protocol(p) => write!(f, "-p {}", p.as_str()),
            Self::SourceNet { negated, net } => {
                write!(f, "{}-s {net}", if *negated { "! " } else { "" })
            }
            Self::SourceAddr(a) => write!(f, "-s {a}"),
            Self::NotInInterface(i) => write!(f, "! -i {i}"),
            Self::Comment(c) => write!(f, "-m comment --comment \"{c}\""),
            Self::Set { name, dirs } => write!(f, "-m set --match-set {name} {}", dirs.as_str()),
            Self::AddrTypeLocal { side, negated } => write!(
                f,
                "-m addrtype {}--{}-type LOCAL",
                if *negated { "! " } else { "" },
                match side {
                    AddrTypeSide::Src => "src",
                    AddrTypeSide::Dst => "dst",
                }
            ),
            Self::PhysdevNotIsIn => f.write_str("-m physdev ! --physdev-is-in"),
            Self::Mark { negated, mark } => write!(
                f,
                "-m mark {}--mark {}/{}",
                if *negated { "! " } else { "" },
                MarkText(*mark),
                MarkText(*mark)
            ),
            Self::CtState(s) => write!(f, "-m conntrack --ctstate {s}"),
            Self::Ipvs {
                vaddr,
                vproto,
                vport,
            } => write!(
                f,
                "-m ipvs --vaddr {vaddr} --vproto {} --vport {vport}",
                vproto.as_str()
            ),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Jump(c) => write!(f, "-j {}", c.name()),
            Self::Return => f.write_str("-j RETURN"),
            Self::Accept => f.write_str("-j ACCEPT"),
            Self::Drop => f.write_str("-j DROP"),
            Self::Reject => f.write_str("-j REJECT"),
            Self::Masquerade { random_fully } => {
                f.write_str("-j MASQUERADE")?;
                if *random_fully {
                    f.write_str(" --random-fully")?;
                }
                Ok(())
            }
            Self::OrMark(m) => write!(f, "-j MARK --or-mark {}", MarkText(*m)),
            Self::XorMark(m) => write!(f, "-j MARK --xor-mark {}", MarkText(*m)),
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "-A {}", self.chain.name())?;
        for m in &self.matches {
            write!(f, " {m}")?;
        }
        write!(f, " {}", self.target)
    }
}

/// The full rule set of one family: the nat and filter rules in emission order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSet {
    pub family: AddressFamily,
    pub nat: Vec<Rule>,
    pub filter: Vec<Rule>,
}

impl RuleSet {
    /// `iptables-restore --noflush` input: chain declarations (which flush our chains), then
    /// the rules, nat before filter.
    pub fn to_restore_input(&self) -> String {
        let mut out = String::new();
        for (table, rules) in [(Table::Nat, &self.nat), (Table::Filter, &self.filter)] {
            let _ = writeln!(out, "*{}", table.name());
            for chain in table.chains() {
                let _ = writeln!(out, ":{} - [0:0]", chain.name());
            }
            for r in rules {
                let _ = writeln!(out, "{r}");
            }
            out.push_str("COMMIT\n");
        }
        out
    }
}

/// The ClusterIP masquerade decision (exactly one form is written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterIpMasquerade {
    /// `--masquerade-all`: every packet to a ClusterIP.
    All,
    /// A local-traffic detector: traffic not from pods (the match is the negated detector).
    IfNotLocal(Match),
    /// No detector: node-originated traffic whose source is a VIP.
    SourceIsVip,
}

/// What the rule generation needs besides the sets.
#[derive(Debug, Clone)]
pub struct RuleInputs {
    pub masquerade_mark: u32,
    pub random_fully: bool,
    pub cluster_ip_masquerade: ClusterIpMasquerade,
    /// LB entries whose source ranges do not contain the node IP (KUBE-IPVS-OUT-FILTER).
    pub lb_no_node_access: Vec<(IpAddr, Protocol, u16)>,
}

/// The `ipsetWithIptablesChain` table: rules written only when the set is non-empty.
struct SetJump {
    set: SetName,
    table: Table,
    from: Chain,
    target: Target,
    dirs: SetDirections,
    protocol: Option<Protocol>,
}

fn set_jumps() -> [SetJump; 12] {
    use SetDirections::{Dst, DstDst, DstDstSrc};
    let j = |set, table, from, target, dirs, protocol| SetJump {
        set,
        table,
        from,
        target,
        dirs,
        protocol,
    };
    let masq = Target::Jump(Chain::MarkMasq);
    [
        j(
            SetName::LoopBack,
            Table::Nat,
            Chain::Postrouting,
            Target::Masquerade {
                random_fully: false,
            },
            DstDstSrc,
            None,
        ),
        j(
            SetName::LoadBalancer,
            Table::Nat,
            Chain::Services,
            Target::Jump(Chain::LoadBalancer),
            DstDst,
            None,
        ),
        j(
            SetName::LoadBalancerLocal,
            Table::Nat,
            Chain::LoadBalancer,
            Target::Return,
            DstDst,
            None,
        ),
        j(
            SetName::NodePortLocalTcp,
            Table::Nat,
            Chain::NodePort,
            Target::Return,
            Dst,
            Some(Protocol::Tcp),
        ),
        j(
            SetName::NodePortTcp,
            Table::Nat,
            Chain::NodePort,
            masq.clone(),
            Dst,
            Some(Protocol::Tcp),
        ),
        j(
            SetName::NodePortLocalUdp,
            Table::Nat,
            Chain::NodePort,
            Target::Return,
            Dst,
            Some(Protocol::Udp),
        ),
        j(
            SetName::NodePortUdp,
            Table::Nat,
            Chain::NodePort,
            masq.clone(),
            Dst,
            Some(Protocol::Udp),
        ),
        j(
            SetName::NodePortLocalSctp,
            Table::Nat,
            Chain::NodePort,
            Target::Return,
            DstDst,
            Some(Protocol::Sctp),
        ),
        j(
            SetName::NodePortSctp,
            Table::Nat,
            Chain::NodePort,
            masq,
            DstDst,
            Some(Protocol::Sctp),
        ),
        j(
            SetName::LoadBalancerFw,
            Table::Filter,
            Chain::ProxyFirewall,
            Target::Jump(Chain::SourceRangesFirewall),
            DstDst,
            None,
        ),
        j(
            SetName::LoadBalancerSourceCidr,
            Table::Filter,
            Chain::SourceRangesFirewall,
            Target::Return,
            DstDstSrc,
            None,
        ),
        j(
            SetName::LoadBalancerSourceIp,
            Table::Filter,
            Chain::SourceRangesFirewall,
            Target::Return,
            DstDstSrc,
            None,
        ),
    ]
}

/// Generates the rule set from the planned sets, in kube-proxy's emission order.
pub fn rules(sets: &IpSets, inputs: &RuleInputs) -> RuleSet {
    let family = sets.family;
    let set = |s: SetName, dirs| Match::Set {
        name: s.name(family),
        dirs,
    };
    let rule = |chain, matches: Vec<Match>, target| Rule {
        chain,
        matches,
        target,
    };
    let mut nat = Vec::new();
    let mut filter = Vec::new();

    // Dismiss connections from localhost early.
    let loopback: IpNet = match family {
        AddressFamily::Inet => IpNet::V4(ipnet::Ipv4Net::new_assert([127, 0, 0, 0].into(), 8)),
        AddressFamily::Inet6 => IpNet::V6(ipnet::Ipv6Net::new_assert(
            std::net::Ipv6Addr::LOCALHOST,
            128,
        )),
    };
    nat.push(rule(
        Chain::Services,
        vec![Match::SourceNet {
            negated: false,
            net: loopback,
        }],
        Target::Return,
    ));

    for j in set_jumps() {
        if sets.is_empty(j.set) {
            continue;
        }
        let mut m = Vec::with_capacity(3);
        if let Some(p) = j.protocol {
            m.push(Match::Protocol(p));
        }
        m.push(Match::Comment(j.set.comment()));
        m.push(set(j.set, j.dirs));
        let r = rule(j.from, m, j.target);
        match j.table {
            Table::Nat => nat.push(r),
            Table::Filter => filter.push(r),
        }
    }

    if !sets.is_empty(SetName::ClusterIp) {
        let comment = Match::Comment(SetName::ClusterIp.comment());
        let m = match &inputs.cluster_ip_masquerade {
            ClusterIpMasquerade::All => {
                vec![comment, set(SetName::ClusterIp, SetDirections::DstDst)]
            }
            ClusterIpMasquerade::IfNotLocal(detector) => vec![
                comment,
                set(SetName::ClusterIp, SetDirections::DstDst),
                detector.clone(),
            ],
            ClusterIpMasquerade::SourceIsVip => {
                vec![comment, set(SetName::ClusterIp, SetDirections::SrcDst)]
            }
        };
        nat.push(rule(Chain::Services, m, Target::Jump(Chain::MarkMasq)));
    }

    // External IPs: traffic from off-machine and traffic to addresses that happen to be
    // local stays in IPVS; ETP=Cluster also masquerades.
    let external_accepts = |nat: &mut Vec<Rule>, s: SetName| {
        let base = [Match::Comment(s.comment()), set(s, SetDirections::DstDst)];
        let mut off_machine = base.to_vec();
        off_machine.extend([
            Match::PhysdevNotIsIn,
            Match::AddrTypeLocal {
                side: AddrTypeSide::Src,
                negated: true,
            },
        ]);
        nat.push(rule(Chain::Services, off_machine, Target::Accept));
        let mut dst_local = base.to_vec();
        dst_local.push(Match::AddrTypeLocal {
            side: AddrTypeSide::Dst,
            negated: false,
        });
        nat.push(rule(Chain::Services, dst_local, Target::Accept));
    };
    if !sets.is_empty(SetName::ExternalIp) {
        nat.push(rule(
            Chain::Services,
            vec![
                Match::Comment(SetName::ExternalIp.comment()),
                set(SetName::ExternalIp, SetDirections::DstDst),
            ],
            Target::Jump(Chain::MarkMasq),
        ));
        external_accepts(&mut nat, SetName::ExternalIp);
    }
    if !sets.is_empty(SetName::ExternalIpLocal) {
        external_accepts(&mut nat, SetName::ExternalIpLocal);
    }

    nat.push(rule(
        Chain::Services,
        vec![Match::AddrTypeLocal {
            side: AddrTypeSide::Dst,
            negated: false,
        }],
        Target::Jump(Chain::NodePort),
    ));
    nat.push(rule(
        Chain::LoadBalancer,
        vec![],
        Target::Jump(Chain::MarkMasq),
    ));

    filter.push(rule(Chain::SourceRangesFirewall, vec![], Target::Drop));
    for (ip, proto, port) in &inputs.lb_no_node_access {
        filter.push(rule(
            Chain::IpvsOutFilter,
            vec![
                Match::SourceAddr(*ip),
                Match::Ipvs {
                    vaddr: *ip,
                    vproto: *proto,
                    vport: *port,
                },
            ],
            Target::Drop,
        ));
    }

    // acceptIPVSTraffic: stop nat PREROUTING here so later DNATs can't hijack VIP traffic.
    for s in [SetName::ClusterIp, SetName::LoadBalancer] {
        if !sets.is_empty(s) {
            nat.push(rule(
                Chain::Services,
                vec![set(s, SetDirections::DstDst)],
                Target::Accept,
            ));
        }
    }

    let mark = inputs.masquerade_mark;
    filter.push(rule(
        Chain::Forward,
        vec![
            Match::Comment("kubernetes forwarding rules"),
            Match::Mark {
                negated: false,
                mark,
            },
        ],
        Target::Accept,
    ));
    filter.push(rule(
        Chain::Forward,
        vec![
            Match::Comment("kubernetes forwarding conntrack rule"),
            Match::CtState("RELATED,ESTABLISHED"),
        ],
        Target::Accept,
    ));
    filter.push(rule(
        Chain::NodePort,
        vec![
            Match::Comment(SetName::HealthCheckNodePort.comment()),
            set(SetName::HealthCheckNodePort, SetDirections::Dst),
        ],
        Target::Accept,
    ));
    for (s, dirs) in [
        (SetName::LoadBalancer, SetDirections::DstDst),
        (SetName::ClusterIp, SetDirections::DstDst),
        (SetName::ExternalIp, SetDirections::DstDst),
        (SetName::ExternalIpLocal, SetDirections::DstDst),
        (SetName::HealthCheckNodePort, SetDirections::Dst),
    ] {
        filter.push(rule(Chain::IpvsFilter, vec![set(s, dirs)], Target::Return));
    }
    filter.push(rule(
        Chain::IpvsFilter,
        vec![
            Match::CtState("NEW"),
            set(SetName::IpvsIps, SetDirections::Dst),
        ],
        Target::Reject,
    ));

    nat.push(rule(
        Chain::Postrouting,
        vec![Match::Mark {
            negated: true,
            mark,
        }],
        Target::Return,
    ));
    nat.push(rule(Chain::Postrouting, vec![], Target::XorMark(mark)));
    nat.push(rule(
        Chain::Postrouting,
        vec![Match::Comment("kubernetes service traffic requiring SNAT")],
        Target::Masquerade {
            random_fully: inputs.random_fully,
        },
    ));
    nat.push(rule(Chain::MarkMasq, vec![], Target::OrMark(mark)));

    RuleSet {
        family,
        nat,
        filter,
    }
}
