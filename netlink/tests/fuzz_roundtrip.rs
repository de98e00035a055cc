#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // A test crate.

//! Typed values through emit -> parse (issue 9, bounded fuzzing): every IPVS request and
//! reply built from arbitrary services (IPv4, IPv6, fwmark, every protocol, flags,
//! persistence) and destinations (every forwarding method, tunnels of every type), and ipset
//! members of every set type inside real ADD / LIST messages, come back identical.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use netlink::ipset::codec::{self as ipset, CmdAttr, CreateAttr, ElemAttr, IpsetMessage};
use netlink::ipset::{Member, SetType};
use netlink::ipvs::codec::{
    self, DestinationEntry, IpvsInfo, IpvsReply, IpvsRequest, RawAttr, ServiceEntry,
};
use netlink::ipvs::{
    AddressFamily, Destination, ForwardMethod, Protocol, Scheduler, Service, ServiceFlags,
    ServiceKey, Stats, Timeouts, TunnelType,
};
use netlink_packet_core::{
    NetlinkMessage, NetlinkPayload, NetlinkSerializable, ParseableParametrized,
};
use netlink_packet_generic::{GenlFamily, GenlHeader, GenlMessage};
use proptest::prelude::*;

const CASES: u32 = 5000;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(CASES),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u32>().prop_map(|v| IpAddr::V4(Ipv4Addr::from(v))),
        any::<u128>().prop_map(|v| IpAddr::V6(Ipv6Addr::from(v))),
    ]
}

fn family() -> impl Strategy<Value = AddressFamily> {
    prop_oneof![Just(AddressFamily::Inet), Just(AddressFamily::Inet6)]
}

fn protocol() -> impl Strategy<Value = Protocol> {
    prop_oneof![
        Just(Protocol::Tcp),
        Just(Protocol::Udp),
        Just(Protocol::Sctp)
    ]
}

fn service_key() -> impl Strategy<Value = ServiceKey> {
    prop_oneof![
        (protocol(), ip(), any::<u16>()).prop_map(|(protocol, addr, port)| ServiceKey::Inet {
            protocol,
            addr,
            port
        }),
        // Mark 0 is no fwmark on the wire (the kernel's meaning too).
        (family(), 1..=u32::MAX).prop_map(|(family, mark)| ServiceKey::Fwmark { family, mark }),
    ]
}

/// Kernel names: 1 to 15 letters, digits or '_'.
fn kernel_name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_]{1,15}"
}

fn service() -> impl Strategy<Value = Service> {
    (
        service_key(),
        kernel_name(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        proptest::option::of(kernel_name()),
    )
        .prop_map(|(key, sched, flags, timeout, netmask, pe)| Service {
            key,
            scheduler: Scheduler::new(&sched).unwrap(),
            // HASHED is the kernel's, never configuration.
            flags: ServiceFlags(flags).config(),
            timeout,
            netmask,
            persistence_engine: pe,
        })
}

fn forward() -> impl Strategy<Value = ForwardMethod> {
    let tunnel = prop_oneof![
        Just(TunnelType::Ipip),
        Just(TunnelType::Gue),
        Just(TunnelType::Gre)
    ];
    prop_oneof![
        Just(ForwardMethod::Masquerade),
        Just(ForwardMethod::LocalNode),
        Just(ForwardMethod::DirectRoute),
        Just(ForwardMethod::Bypass),
        (tunnel, any::<u16>(), any::<u16>())
            .prop_map(|(kind, port, flags)| { ForwardMethod::Tunnel { kind, port, flags } }),
    ]
}

fn destination() -> impl Strategy<Value = Destination> {
    (
        ip(),
        any::<u16>(),
        forward(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(|(addr, port, forward, weight, upper, lower)| Destination {
            addr,
            port,
            forward,
            weight,
            upper_threshold: upper,
            lower_threshold: lower,
        })
}

fn timeouts() -> impl Strategy<Value = Timeouts> {
    (any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(tcp, tcp_fin, udp)| Timeouts {
        tcp,
        tcp_fin,
        udp,
    })
}

fn request() -> impl Strategy<Value = IpvsRequest> {
    prop_oneof![
        service().prop_map(IpvsRequest::NewService),
        service().prop_map(IpvsRequest::SetService),
        service_key().prop_map(IpvsRequest::DelService),
        service_key().prop_map(IpvsRequest::GetService),
        Just(IpvsRequest::DumpServices),
        (service_key(), destination()).prop_map(|(service, destination)| {
            IpvsRequest::NewDestination {
                service,
                destination,
            }
        }),
        (service_key(), destination()).prop_map(|(service, destination)| {
            IpvsRequest::SetDestination {
                service,
                destination,
            }
        }),
        (service_key(), destination()).prop_map(|(service, d)| IpvsRequest::DelDestination {
            service,
            destination: d.key(),
        }),
        service_key().prop_map(IpvsRequest::DumpDestinations),
        proptest::option::of(service_key()).prop_map(IpvsRequest::Zero),
        Just(IpvsRequest::Flush),
        timeouts().prop_map(IpvsRequest::SetConfig),
        Just(IpvsRequest::GetConfig),
        Just(IpvsRequest::GetInfo),
    ]
}

fn stats() -> impl Strategy<Value = Stats> {
    proptest::array::uniform10(any::<u64>()).prop_map(|v| Stats {
        conns: v[0],
        in_packets: v[1],
        out_packets: v[2],
        in_bytes: v[3],
        out_bytes: v[4],
        cps: v[5],
        in_pps: v[6],
        out_pps: v[7],
        in_bps: v[8],
        out_bps: v[9],
    })
}

/// Attributes a newer kernel might add: kinds above the highest this crate knows.
fn unknown(above: u16) -> impl Strategy<Value = Vec<RawAttr>> {
    proptest::collection::vec(
        (
            (above + 1)..0x3fff,
            proptest::collection::vec(any::<u8>(), 0..24),
        )
            .prop_map(|(kind, value)| RawAttr { kind, value }),
        0..3,
    )
}

fn reply() -> impl Strategy<Value = IpvsReply> {
    prop_oneof![
        (service(), stats(), unknown(codec::svc_attr::STATS64)).prop_map(
            |(service, stats, unknown)| {
                IpvsReply::Service(ServiceEntry {
                    service,
                    stats,
                    unknown,
                })
            }
        ),
        (
            destination(),
            any::<(u32, u32, u32)>(),
            stats(),
            unknown(codec::dest_attr::TUN_FLAGS)
        )
            .prop_map(|(destination, (a, i, p), stats, unknown)| {
                IpvsReply::Destination(DestinationEntry {
                    destination,
                    active_conns: a,
                    inactive_conns: i,
                    persistent_conns: p,
                    stats,
                    unknown,
                })
            }),
        timeouts().prop_map(IpvsReply::Config),
        any::<(u32, u32)>().prop_map(|(version, conn_table_size)| IpvsReply::Info(IpvsInfo {
            version,
            conn_table_size
        })),
        // Commands the parser keeps raw (daemon state and the like).
        (
            prop_oneof![Just(9u8), Just(10), Just(11), Just(0), 18u8..=255],
            unknown(0)
        )
            .prop_map(|(cmd, attrs)| IpvsReply::Other { cmd, attrs }),
    ]
}

fn net(addr: IpAddr, prefix: u8) -> IpNet {
    let max = match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    };
    IpNet::new(addr, prefix % (max + 1)).unwrap().trunc()
}

/// A member of every set type, addresses of both families.
fn member() -> impl Strategy<Value = Member> {
    prop_oneof![
        ip().prop_map(Member::Ip),
        (ip(), protocol(), any::<u16>()).prop_map(|(ip, protocol, port)| Member::IpPort {
            ip,
            protocol,
            port
        }),
        (ip(), protocol(), any::<u16>(), any::<bool>()).prop_map(|(ip, protocol, port, other)| {
            // hash:ip,port,ip keeps one family: the second address shares the first's.
            let ip2 = if other {
                match ip {
                    IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a).rotate_left(7))),
                    IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a).rotate_left(9))),
                }
            } else {
                ip
            };
            Member::IpPortIp {
                ip,
                protocol,
                port,
                ip2,
            }
        }),
        (ip(), protocol(), any::<u16>(), any::<u8>()).prop_map(|(ip, protocol, port, p)| {
            Member::IpPortNet {
                ip,
                protocol,
                port,
                net: net(ip, p),
            }
        }),
        (ip(), any::<u8>()).prop_map(|(a, p)| Member::Net(net(a, p))),
        any::<u16>().prop_map(Member::Port),
    ]
}

fn set_name() -> impl Strategy<Value = String> {
    // IPSET_MAXNAMELEN is 32 with the NUL.
    "[A-Z0-9-]{1,31}"
}

fn wire_ipset(msg: &IpsetMessage) -> Vec<u8> {
    let mut nl = NetlinkMessage::new(
        netlink_packet_core::NetlinkHeader::default(),
        NetlinkPayload::InnerMessage(msg.clone()),
    );
    nl.finalize();
    let mut buf = vec![0; nl.buffer_len()];
    nl.serialize(&mut buf);
    buf
}

fn unwire_ipset(buf: &[u8]) -> IpsetMessage {
    match NetlinkMessage::<IpsetMessage>::deserialize(buf)
        .unwrap()
        .payload
    {
        NetlinkPayload::InnerMessage(m) => m,
        other => panic!("not an ipset message: {other:?}"),
    }
}

proptest! {
    #![proptest_config(config())]

    /// Requests through the batch encoder, the datagram splitter and the genl parser.
    #[test]
    fn ipvs_request_round_trips(req in request(), seq in any::<u32>(), family_id in 16u16..0x400) {
        let mut wire = Vec::new();
        // Two messages in one datagram, as a batch sends them.
        codec::encode_request(&mut wire, family_id, seq, req.netlink_flags(), &req);
        codec::encode_request(&mut wire, family_id, seq.wrapping_add(1), req.netlink_flags(), &req);
        let msgs: Vec<_> = codec::split_messages(&wire).collect::<Result<_, _>>().unwrap();
        prop_assert_eq!(msgs.len(), 2);
        for (i, (h, payload)) in msgs.into_iter().enumerate() {
            prop_assert_eq!(h.message_type, family_id);
            prop_assert_eq!(h.seq, seq.wrapping_add(i as u32));
            prop_assert_eq!(h.flags, req.netlink_flags());
            let back = GenlMessage::<IpvsRequest>::parse_with_param(payload, family_id).unwrap();
            prop_assert_eq!(back.payload, req.clone());
        }
    }

    /// Replies as the kernel writes them (`ip_vs_genl_fill_*`), parsed back.
    #[test]
    fn ipvs_reply_round_trips(reply in reply()) {
        let header = GenlHeader { cmd: reply.command(), version: codec::FAMILY_VERSION };
        let back = IpvsReply::parse_with_param(&reply.attr_bytes(), header).unwrap();
        prop_assert_eq!(back, reply);
    }

    /// A member through `member_attrs`, an ADD request on the wire and `member_from_attrs`.
    #[test]
    fn ipset_member_round_trips_in_add(m in member(), name in set_name(), line in any::<u32>()) {
        let mut data = ipset::member_attrs(&m);
        data.push(ElemAttr::LineNo(line));
        let family = match m.family() {
            Some(AddressFamily::Inet6) => 10,
            Some(AddressFamily::Inet) => 2,
            None => 0,
        };
        let msg = IpsetMessage::request(
            ipset::cmd::ADD,
            family,
            ipset::IPSET_PROTOCOL,
            vec![CmdAttr::SetName(name.clone()), CmdAttr::ElemData(data)],
        );
        let back = unwire_ipset(&wire_ipset(&msg));
        prop_assert_eq!(&back, &msg);
        prop_assert_eq!(back.set_name(), Some(name.as_str()));
        prop_assert_eq!(back.line_no(), None);
        let elems: Vec<_> = back.elements().collect();
        prop_assert_eq!(elems.len(), 1);
        prop_assert_eq!(ipset::member_from_attrs(m.set_type(), elems[0]), Some(m));
    }

    /// Many members of one type in a LIST reply (`ADT` of `DATA` nests) with its header.
    #[test]
    fn ipset_members_round_trip_in_list(
        kind_pick in 0usize..6,
        pool in proptest::collection::vec(member(), 0..40),
        hash in any::<u32>(),
        max in any::<u32>(),
    ) {
        let kinds = [
            SetType::HashIp,
            SetType::HashIpPort,
            SetType::HashIpPortIp,
            SetType::HashIpPortNet,
            SetType::HashNet,
            SetType::BitmapPort,
        ];
        let kind = kinds[kind_pick];
        let members: Vec<Member> = pool.into_iter().filter(|m| m.set_type() == kind).collect();
        let msg = IpsetMessage {
            command: ipset::cmd::LIST,
            family: 2,
            attrs: vec![
                CmdAttr::Protocol(ipset::IPSET_PROTOCOL),
                CmdAttr::SetName("KUBE-X".into()),
                CmdAttr::TypeName(kind.name().into()),
                CmdAttr::CreateData(vec![CreateAttr::HashSize(hash), CreateAttr::MaxElem(max)]),
                CmdAttr::Adt(members.iter().map(ipset::member_attrs).collect()),
            ],
        };
        let back = unwire_ipset(&wire_ipset(&msg));
        prop_assert_eq!(&back, &msg);
        prop_assert_eq!(back.type_name().and_then(SetType::from_name), Some(kind));
        let decoded: Vec<Member> = back
            .elements()
            .map(|e| ipset::member_from_attrs(kind, e).unwrap())
            .collect();
        prop_assert_eq!(decoded, members);
    }

    /// Create requests for both set families, parsed back by message type.
    #[test]
    fn ipset_create_round_trips(
        name in set_name(),
        kind_pick in 0usize..6,
        hash in any::<u32>(),
        max in any::<u32>(),
        range in any::<(u16, u16)>(),
    ) {
        let kinds = [
            SetType::HashIp,
            SetType::HashIpPort,
            SetType::HashIpPortIp,
            SetType::HashIpPortNet,
            SetType::HashNet,
            SetType::BitmapPort,
        ];
        let kind = kinds[kind_pick];
        let data = match kind {
            SetType::BitmapPort => vec![CreateAttr::Port(range.0), CreateAttr::PortTo(range.1)],
            _ => vec![CreateAttr::HashSize(hash), CreateAttr::MaxElem(max)],
        };
        let msg = IpsetMessage::request(
            ipset::cmd::CREATE,
            2,
            ipset::IPSET_PROTOCOL,
            vec![
                CmdAttr::SetName(name),
                CmdAttr::TypeName(kind.name().into()),
                CmdAttr::Revision(3),
                CmdAttr::Family(2),
                CmdAttr::CreateData(data),
            ],
        );
        let buf = wire_ipset(&msg);
        prop_assert_eq!(
            u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize,
            buf.len()
        );
        let back = IpsetMessage::parse(msg.message_type(), &buf[16..]).unwrap();
        prop_assert_eq!(back, msg);
    }
}
