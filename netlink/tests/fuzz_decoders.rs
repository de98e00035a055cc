#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // A test crate.

//! Bounded fuzzing of every decoder in this crate, on stable Rust (issue 9): arbitrary bytes
//! and mutated real captures go through the IPVS request and reply parsers, the genl ctrl
//! parser, the ipset message parser and member mapping, netlink error/ack parsing, the
//! multi-message splitter and the rtnetlink reply path of `link.rs`
//! ([`link::parse_replies`]). A decoder may reject its input, never panic or loop; whatever a
//! decoder accepts must survive emit -> parse unchanged.
//!
//! The seed corpus is read from the byte-vector tests themselves (every hex constant of
//! `tests/ipvs_codec.rs` and every `CAPTURE_*` of `src/ipset/codec.rs`), so a new capture
//! becomes a seed without touching this file; rtnetlink answers, which have no captures, are
//! built here from typed messages ([`rtnetlink_seeds`]). Case counts are fixed (see
//! [`CASES`]) so a CI run is bounded; `PROPTEST_CASES` raises them for a longer local run.
//!
//! The same seeds feed the cargo-fuzz targets (`fuzz/`): [`write_fuzz_seeds`] writes them
//! when `FUZZ_SEEDS_DIR` is set, as `tests/fuzz/run` does.

use std::net::IpAddr;
use std::num::NonZeroI32;
use std::sync::mpsc;
use std::time::Duration;

use netlink::ipset::SetType;
use netlink::ipset::codec::{CmdAttr, CreateAttr, ElemAttr, IpsetMessage, member_from_attrs};
use netlink::ipvs::codec::{self, IpvsReply, IpvsRequest};
use netlink::link::{self, LocalAddress, RouteReply};
use netlink_packet_core::{
    DefaultNla, DoneMessage, ErrorMessage, NLA_F_NESTED, NLA_F_NET_BYTEORDER, NLM_F_MULTIPART,
    NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable, Nla,
    ParseableParametrized,
};
use netlink_packet_generic::{GenlHeader, GenlMessage};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use netlink_packet_route::{AddressFamily as RtFamily, RouteNetlinkMessage};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// Cases per property (overridable with `PROPTEST_CASES`).
const CASES: u32 = 10_000;
/// A property that has not finished by then is hung: fail instead of hanging CI.
const DEADLINE: Duration = Duration::from_secs(120);

const IPVS_TESTS: &str = include_str!("ipvs_codec.rs");
const IPSET_CODEC: &str = include_str!("../src/ipset/codec.rs");

const SET_TYPES: [SetType; 6] = [
    SetType::HashIp,
    SetType::HashIpPort,
    SetType::HashIpPortIp,
    SetType::HashIpPortNet,
    SetType::HashNet,
    SetType::BitmapPort,
];

/// Every string constant of `source` that is a whole netlink message in hex (plain or
/// space-separated, possibly continued with `\` over several lines).
fn captures_in(source: &str) -> Vec<Vec<u8>> {
    named_captures_in(source)
        .into_iter()
        .map(|(_, bytes)| bytes)
        .collect()
}

/// [`captures_in`] with the name of each constant.
fn named_captures_in(source: &str) -> Seeds {
    let mut out = Vec::new();
    let mut rest = source;
    while let Some(at) = rest.find(": &str =") {
        let name = rest[..at]
            .rsplit(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .next()
            .unwrap_or_default()
            .to_owned();
        rest = &rest[at..];
        let Some(open) = rest.find('"') else { break };
        let Some(len) = rest[open + 1..].find('"') else {
            break;
        };
        let body = &rest[open + 1..open + 1 + len];
        rest = &rest[open + 1 + len..];
        let digits: String = body
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '\\')
            .collect();
        if digits.len() < 32
            || !digits.len().is_multiple_of(2)
            || !digits.chars().all(|c| c.is_ascii_hexdigit())
        {
            continue;
        }
        out.push((
            name,
            (0..digits.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).unwrap())
                .collect(),
        ));
    }
    out
}

fn seeds() -> Vec<Vec<u8>> {
    let mut all = captures_in(IPVS_TESTS);
    all.extend(captures_in(IPSET_CODEC));
    all.extend(rtnetlink_seeds().into_iter().map(|(_, b)| b));
    all
}

#[test]
fn seed_corpus_is_the_captures() {
    let ipvs = captures_in(IPVS_TESTS);
    let ipset = captures_in(IPSET_CODEC);
    // 30 IPVS vectors and 5 ipset captures today; never fewer.
    assert!(ipvs.len() >= 30, "{} IPVS captures", ipvs.len());
    assert!(ipset.len() >= 5, "{} ipset captures", ipset.len());
    for s in ipvs.iter().chain(&ipset) {
        let len = u32::from_ne_bytes([s[0], s[1], s[2], s[3]]) as usize;
        // A capture is whole datagrams; its first header's length fits in it.
        assert!(len >= 16 && len <= s.len(), "capture with bad first length");
    }
}

/// Runs `body` on its own thread and fails if it takes longer than [`DEADLINE`].
fn with_deadline(name: &str, body: impl FnOnce() + Send + 'static) {
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        body();
        let _ = tx.send(());
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(()) => handle.join().unwrap(),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            // The body panicked: re-raise its message.
            if let Err(e) = handle.join() {
                std::panic::resume_unwind(e);
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{name}: no answer in {DEADLINE:?}"),
    }
}

fn config() -> Config {
    Config {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(CASES),
        failure_persistence: None,
        ..Config::default()
    }
}

fn run<S: Strategy + Send + 'static>(
    name: &'static str,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError> + Send + 'static,
) where
    S::Value: std::fmt::Debug,
{
    with_deadline(name, move || {
        let mut runner = TestRunner::new(config());
        if let Err(e) = runner.run(&strategy, test) {
            panic!("{name}: {e}");
        }
    });
}

/// An IPVS request the parser accepted must come back identical from its own encoding.
fn request_round_trip(req: &IpvsRequest) -> Result<(), TestCaseError> {
    let mut wire = Vec::new();
    codec::encode_request(&mut wire, 0x20, 7, req.netlink_flags(), req);
    let mut msgs = codec::split_messages(&wire);
    let (h, payload) = msgs.next().expect("one message").expect("splits");
    prop_assert!(msgs.next().is_none());
    prop_assert_eq!(h.length as usize, wire.len());
    let back = GenlMessage::<IpvsRequest>::parse_with_param(payload, h.message_type)
        .expect("our own encoding parses");
    prop_assert_eq!(&back.payload, req);
    Ok(())
}

fn reply_round_trip(reply: &IpvsReply) -> Result<(), TestCaseError> {
    let header = GenlHeader {
        cmd: netlink_packet_generic::GenlFamily::command(reply),
        version: codec::FAMILY_VERSION,
    };
    let back =
        IpvsReply::parse_with_param(&reply.attr_bytes(), header).expect("our own encoding parses");
    prop_assert_eq!(&back, reply);
    Ok(())
}

/// netlink-packet-core 0.9 emits an attribute carrying both `NLA_F_NESTED` and
/// `NLA_F_NET_BYTEORDER` with the nested flag only (`set_nested_flag` re-reads the masked
/// kind). No kernel attribute carries both, so an unknown one that does is the only thing
/// allowed to change on re-emission: the expected value drops that flag.
fn without_double_flags(msg: &IpsetMessage) -> IpsetMessage {
    const BOTH: u16 = NLA_F_NESTED | NLA_F_NET_BYTEORDER;
    fn fix(nla: &DefaultNla) -> DefaultNla {
        let kind = nla.kind();
        let kind = if kind & BOTH == BOTH {
            kind & !NLA_F_NET_BYTEORDER
        } else {
            kind
        };
        let mut value = vec![0; nla.value_len()];
        nla.emit_value(&mut value);
        DefaultNla::new(kind, value)
    }
    let elem = |e: &ElemAttr| match e {
        ElemAttr::Other(n) => ElemAttr::Other(fix(n)),
        other => other.clone(),
    };
    let attrs = msg
        .attrs
        .iter()
        .map(|a| match a {
            CmdAttr::Other(n) => CmdAttr::Other(fix(n)),
            CmdAttr::CreateData(d) => CmdAttr::CreateData(
                d.iter()
                    .map(|c| match c {
                        CreateAttr::Other(n) => CreateAttr::Other(fix(n)),
                        other => other.clone(),
                    })
                    .collect(),
            ),
            CmdAttr::ElemData(d) => CmdAttr::ElemData(d.iter().map(elem).collect()),
            CmdAttr::Adt(es) => {
                CmdAttr::Adt(es.iter().map(|d| d.iter().map(elem).collect()).collect())
            }
            other => other.clone(),
        })
        .collect();
    IpsetMessage {
        command: msg.command,
        family: msg.family,
        attrs,
    }
}

fn ipset_round_trip(msg: &IpsetMessage) -> Result<(), TestCaseError> {
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    let back = IpsetMessage::parse(msg.message_type(), &buf).expect("our own encoding parses");
    prop_assert_eq!(&back, &without_double_flags(msg));
    Ok(())
}

/// The IPVS parsers on one genl payload (genl header + attributes), under every command.
fn ipvs_payload(payload: &[u8], message_type: u16) -> Result<(), TestCaseError> {
    // What the handle does with a message of the IPVS family.
    if let Ok(m) = GenlMessage::<IpvsReply>::parse_with_param(payload, message_type) {
        reply_round_trip(&m.payload)?;
    }
    if let Ok(m) = GenlMessage::<IpvsRequest>::parse_with_param(payload, message_type) {
        request_round_trip(&m.payload)?;
    }
    // And the attribute parsers directly, under commands the header would not have picked.
    let attrs = payload.get(codec::GENL_HDR_LEN..).unwrap_or(payload);
    for cmd in 0..=18 {
        let header = GenlHeader { cmd, version: 1 };
        if let Ok(r) = IpvsReply::parse_with_param(attrs, header) {
            reply_round_trip(&r)?;
        }
        if let Ok(r) = IpvsRequest::parse_with_param(attrs, header) {
            request_round_trip(&r)?;
        }
    }
    Ok(())
}

fn ipset_payload(message_type: u16, payload: &[u8]) -> Result<(), TestCaseError> {
    // Under the real type, and under every ipset command (DATA is read per command).
    let types = [message_type, 0x0600 | (message_type & 0xff)]
        .into_iter()
        .chain((0..=14).map(|c| 0x0600 | c));
    for t in types {
        if let Ok(msg) = IpsetMessage::parse(t, payload) {
            for elem in msg.elements() {
                for kind in SET_TYPES {
                    let _ = member_from_attrs(kind, elem);
                }
            }
            let _ = (msg.set_name(), msg.type_name(), msg.line_no(), msg.header());
            ipset_round_trip(&msg)?;
        }
    }
    Ok(())
}

/// Every decoder on one received datagram.
fn decode_everything(buf: &[u8]) -> Result<(), TestCaseError> {
    // The splitter: terminates, every message is within the buffer and at least a header.
    let mut count = 0usize;
    for m in codec::split_messages(buf) {
        count += 1;
        prop_assert!(
            count <= buf.len() / codec::NLMSG_HDR_LEN + 1,
            "splitter loops"
        );
        let Ok((h, payload)) = m else { continue };
        prop_assert!(payload.len() + codec::NLMSG_HDR_LEN <= buf.len());
        prop_assert_eq!(payload.len() + codec::NLMSG_HDR_LEN, h.length as usize);
        // Error/ack parsing, as the batch path does for NLMSG_ERROR.
        let _ = codec::error_code(payload);
        // Family resolution reads every answer of the controller this way.
        let _ = codec::ctrl_family_id(payload);
        ipvs_payload(payload, h.message_type)?;
        ipset_payload(h.message_type, payload)?;
    }
    // The rtnetlink path of link.rs on the same bytes.
    let _ = link::parse_replies(buf);
    // Whole-message parsers: ipset (incl. NLMSG_ERROR / NLMSG_DONE, and the echoed request
    // inside an error) through the library's framing.
    if let Ok(nl) = NetlinkMessage::<IpsetMessage>::deserialize(buf)
        && let NetlinkPayload::Error(e) = &nl.payload
    {
        let _ = NetlinkMessage::<IpsetMessage>::deserialize(&e.header);
    }
    // The ipset parser on the payload whatever the header says.
    if buf.len() >= codec::NLMSG_HDR_LEN {
        let header = NetlinkHeader::default();
        let _ = IpsetMessage::deserialize(&header, &buf[codec::NLMSG_HDR_LEN..]);
        ipvs_payload(&buf[codec::NLMSG_HDR_LEN..], 0x20)?;
    }
    Ok(())
}

/// One edit of a byte vector.
#[derive(Debug, Clone)]
enum Mutation {
    Flip {
        at: usize,
        bit: u8,
    },
    Set {
        at: usize,
        value: u8,
    },
    /// A 16-bit field (netlink or attribute length, type) set to a chosen value.
    SetU16 {
        at: usize,
        value: u16,
    },
    Truncate {
        at: usize,
    },
    Extend(Vec<u8>),
    Insert {
        at: usize,
        bytes: Vec<u8>,
    },
    Remove {
        at: usize,
        len: usize,
    },
    /// Append another capture (a multi-message datagram).
    AppendSeed(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let small_u16 = prop_oneof![
        0u16..=24,
        Just(u16::MAX),
        any::<u16>(),
        (0u16..=0x40).prop_map(|v| v | 0x8000),
        (0u16..=0x40).prop_map(|v| v | 0x4000),
    ];
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, value)| Mutation::Set { at, value }),
        (any::<usize>(), small_u16).prop_map(|(at, value)| Mutation::SetU16 { at, value }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        proptest::collection::vec(any::<u8>(), 1..64).prop_map(Mutation::Extend),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..16)
        )
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        (any::<usize>(), 1usize..16).prop_map(|(at, len)| Mutation::Remove { at, len }),
        any::<usize>().prop_map(Mutation::AppendSeed),
    ]
}

fn apply(mut buf: Vec<u8>, mutations: &[Mutation], seeds: &[Vec<u8>]) -> Vec<u8> {
    for m in mutations {
        let n = buf.len().max(1);
        match m {
            Mutation::Flip { at, bit } => {
                if let Some(b) = buf.get_mut(at % n) {
                    *b ^= 1 << bit;
                }
            }
            Mutation::Set { at, value } => {
                if let Some(b) = buf.get_mut(at % n) {
                    *b = *value;
                }
            }
            Mutation::SetU16 { at, value } => {
                // Aligned like the fields it targets.
                let at = (at % n) & !1;
                if at + 2 <= buf.len() {
                    buf[at..at + 2].copy_from_slice(&value.to_ne_bytes());
                }
            }
            Mutation::Truncate { at } => buf.truncate(at % n),
            Mutation::Extend(bytes) => buf.extend_from_slice(bytes),
            Mutation::Insert { at, bytes } => {
                let at = at % (buf.len() + 1);
                buf.splice(at..at, bytes.iter().copied());
            }
            Mutation::Remove { at, len } => {
                let at = at % n;
                let end = (at + len).min(buf.len());
                if at < end {
                    buf.drain(at..end);
                }
            }
            Mutation::AppendSeed(i) => buf.extend_from_slice(&seeds[i % seeds.len()]),
        }
    }
    buf
}

#[test]
fn every_capture_decodes_cleanly_and_round_trips() {
    for s in seeds() {
        decode_everything(&s).unwrap();
    }
}

#[test]
fn arbitrary_bytes_never_panic() {
    run(
        "arbitrary bytes",
        proptest::collection::vec(any::<u8>(), 0..600),
        |buf| decode_everything(&buf),
    );
}

/// Arbitrary bytes behind a plausible header: a netlink header whose length matches, then a
/// genl or nfgenmsg header, then arbitrary attributes. Reaches the attribute parsers far more
/// often than fully random bytes do.
#[test]
fn arbitrary_attributes_behind_valid_headers_never_panic() {
    let strategy = (
        prop_oneof![Just(0x20u16), Just(0x0609), Just(0x0607), Just(2), Just(3)],
        any::<u8>(),
        proptest::collection::vec(any::<u8>(), 0..400),
    );
    run("framed attributes", strategy, |(t, cmd, body)| {
        let mut buf = Vec::with_capacity(body.len() + 20);
        let len = u32::try_from(body.len() + 20).unwrap();
        buf.extend_from_slice(&len.to_ne_bytes());
        buf.extend_from_slice(&t.to_ne_bytes());
        buf.extend_from_slice(&[0; 10]);
        buf.extend_from_slice(&[cmd, 1, 0, 0]);
        buf.extend_from_slice(&body);
        decode_everything(&buf)
    });
}

#[test]
fn mutated_captures_never_panic() {
    let seeds = seeds();
    let n = seeds.len();
    let strategy = (0..n, proptest::collection::vec(mutation(), 1..6));
    run("mutated captures", strategy, move |(i, muts)| {
        let buf = apply(seeds[i].clone(), &muts, &seeds);
        decode_everything(&buf)
    });
}

/// Mutations inside the attributes only (the headers stay intact), so the decoders get past
/// the framing checks and into the attribute parsers on nearly every case.
#[test]
fn mutated_capture_attributes_never_panic() {
    let seeds = seeds();
    let n = seeds.len();
    let strategy = (0..n, proptest::collection::vec(mutation(), 1..4));
    run("mutated attributes", strategy, move |(i, muts)| {
        let seed = &seeds[i];
        let head = seed.len().min(20);
        let tail = apply(seed[head..].to_vec(), &muts, &seeds);
        let mut buf = seed[..head].to_vec();
        buf.extend_from_slice(&tail);
        // Keep the first length field consistent with the mutated size.
        if buf.len() >= 4 {
            let len = u32::try_from(buf.len()).unwrap();
            buf[..4].copy_from_slice(&len.to_ne_bytes());
        }
        decode_everything(&buf)
    });
}

/// Regression (found by `mutated_capture_attributes_never_panic`): a controller answer with a
/// `CTRL_ATTR_POLICY` nest holding an attribute without a value made
/// `netlink_packet_generic`'s `GenlCtrl` parser panic (subtract overflow / index out of range
/// in an unchecked `NlaBuffer`); family resolution used it. `ctrl_family_id` reads the id and
/// skips the rest.
#[test]
fn ctrl_reply_with_malformed_policy_nest_yields_the_id() {
    let mut buf = Vec::new();
    // nlmsghdr: len, GENL_ID_CTRL, flags, seq, pid.
    buf.extend_from_slice(&36u32.to_ne_bytes());
    buf.extend_from_slice(&0x10u16.to_ne_bytes());
    buf.extend_from_slice(&[0; 10]);
    buf.extend_from_slice(&[1, 2, 0, 0]); // CTRL_CMD_NEWFAMILY, version 2
    buf.extend_from_slice(&[6, 0, 1, 0, 0x20, 0, 0, 0]); // CTRL_ATTR_FAMILY_ID 0x20
    buf.extend_from_slice(&[8, 0, 8, 0x80]); // CTRL_ATTR_POLICY, nested, 4 bytes inside:
    buf.extend_from_slice(&[4, 0, 1, 0]); // an attribute with no value
    let (h, payload) = codec::split_messages(&buf).next().unwrap().unwrap();
    assert_eq!(h.length, 36);
    assert_eq!(codec::ctrl_family_id(payload).unwrap(), Some(0x20));
    decode_everything(&buf).unwrap();
}

#[test]
fn ctrl_family_id_of_the_captured_answer() {
    let seeds = captures_in(IPVS_TESTS);
    // CTRL_GETFAMILY_REPLY: the second constant of the IPVS captures, id 0x20.
    let reply = &seeds[1];
    let (_, payload) = codec::split_messages(reply).next().unwrap().unwrap();
    assert_eq!(codec::ctrl_family_id(payload).unwrap(), Some(0x20));
    assert_eq!(codec::ctrl_family_id(&[1, 2]).map_err(|_| ()), Err(()));
}

// ---------------------------------------------------------------------------------------
// rtnetlink: the answers link.rs reads (link get, address dump), built from typed messages
// with netlink-packet-route's own encoder, which is what the kernel's bytes look like.

const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_LABEL: u16 = 3;
const IFA_CACHEINFO: u16 = 6;
const IFA_FLAGS: u16 = 8;
const ENODEV: i32 = 19;

fn route_wire(payload: NetlinkPayload<RouteNetlinkMessage>, flags: u16, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut nl = NetlinkMessage::new(header, payload);
    nl.finalize();
    let mut buf = vec![0; nl.buffer_len()];
    nl.serialize(&mut buf);
    buf
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn address_message(
    ifindex: u32,
    addr: &str,
    prefix_len: u8,
    scope: AddressScope,
    local: Option<&str>,
) -> RouteNetlinkMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = if ip(addr).is_ipv4() {
        RtFamily::Inet
    } else {
        RtFamily::Inet6
    };
    msg.header.prefix_len = prefix_len;
    msg.header.scope = scope;
    msg.header.index = ifindex;
    msg.attributes.push(AddressAttribute::Address(ip(addr)));
    if let Some(l) = local {
        msg.attributes.push(AddressAttribute::Local(ip(l)));
    }
    msg.attributes
        .push(AddressAttribute::Label(format!("if{ifindex}")));
    RouteNetlinkMessage::NewAddress(msg)
}

fn link_message(index: u32, name: &str, kind: Option<InfoKind>) -> RouteNetlinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
    if let Some(k) = kind {
        msg.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(k)]));
    }
    RouteNetlinkMessage::NewLink(msg)
}

fn error_payload(errno: i32) -> NetlinkPayload<RouteNetlinkMessage> {
    let mut e = ErrorMessage::default();
    e.code = NonZeroI32::new(-errno);
    // The echoed request's header (capped acks).
    e.header = vec![0; 16];
    NetlinkPayload::Error(e)
}

/// Named rtnetlink answers, each a whole datagram as `link.rs`'s requests get them.
fn rtnetlink_seeds() -> Seeds {
    let inner = NetlinkPayload::InnerMessage;
    let mut dump = Vec::new();
    for m in [
        address_message(1, "127.0.0.1", 8, AddressScope::Host, Some("127.0.0.1")),
        address_message(
            2,
            "10.255.0.1",
            24,
            AddressScope::Universe,
            Some("10.255.0.1"),
        ),
        address_message(2, "fe80::1", 64, AddressScope::Link, None),
        address_message(2, "fd00:255::1", 64, AddressScope::Universe, None),
        address_message(
            5,
            "10.96.0.10",
            32,
            AddressScope::Universe,
            Some("10.96.0.10"),
        ),
        // Point-to-point: IFA_ADDRESS is the peer, IFA_LOCAL ours.
        address_message(
            7,
            "192.0.2.254",
            32,
            AddressScope::Universe,
            Some("192.0.2.1"),
        ),
    ] {
        dump.extend(route_wire(inner(m), NLM_F_MULTIPART, 1));
    }
    let mut done = DoneMessage::default();
    done.code = 0;
    dump.extend(route_wire(NetlinkPayload::Done(done), NLM_F_MULTIPART, 1));

    let mut no_address = AddressMessage::default();
    no_address.header.index = 3;
    no_address
        .attributes
        .push(AddressAttribute::Label("eth1".to_owned()));

    vec![
        ("addr_dump".to_owned(), dump),
        (
            "addr_without_address".to_owned(),
            route_wire(
                inner(RouteNetlinkMessage::NewAddress(no_address)),
                NLM_F_MULTIPART,
                2,
            ),
        ),
        (
            "link_dummy".to_owned(),
            route_wire(
                inner(link_message(5, "kube-ipvs0", Some(InfoKind::Dummy))),
                0,
                3,
            ),
        ),
        (
            "link_bridge".to_owned(),
            route_wire(
                inner(link_message(4, "kube-ipvs0", Some(InfoKind::Bridge))),
                0,
                4,
            ),
        ),
        (
            "link_without_kind".to_owned(),
            route_wire(inner(link_message(1, "lo", None)), 0, 5),
        ),
        (
            "error_enodev".to_owned(),
            route_wire(error_payload(ENODEV), 0, 6),
        ),
        ("ack".to_owned(), route_wire(error_payload(0), 0, 7)),
    ]
}

fn local(ifindex: u32, addr: &str, prefix_len: u8, host_or_link_scope: bool) -> RouteReply {
    RouteReply::Address(Some(LocalAddress {
        ifindex,
        addr: ip(addr),
        prefix_len,
        host_or_link_scope,
    }))
}

/// The seeds decode to exactly what link.rs must read of them (so the fuzzing below runs the
/// real path, not a path that rejects everything).
#[test]
fn rtnetlink_seeds_decode_to_what_link_reads() {
    let seeds = rtnetlink_seeds();
    let by_name = |n: &str| &seeds.iter().find(|(name, _)| name == n).unwrap().1;
    assert_eq!(
        link::parse_replies(by_name("addr_dump")),
        vec![
            local(1, "127.0.0.1", 8, true),
            local(2, "10.255.0.1", 24, false),
            local(2, "fe80::1", 64, true),
            local(2, "fd00:255::1", 64, false),
            local(5, "10.96.0.10", 32, false),
            local(7, "192.0.2.1", 32, false),
            RouteReply::Other,
        ]
    );
    assert_eq!(
        link::parse_replies(by_name("addr_without_address")),
        vec![RouteReply::Address(None)]
    );
    let link_reply = |index, kind| RouteReply::Link { index, kind };
    assert_eq!(
        link::parse_replies(by_name("link_dummy")),
        vec![link_reply(5, Some(InfoKind::Dummy))]
    );
    assert_eq!(
        link::parse_replies(by_name("link_bridge")),
        vec![link_reply(4, Some(InfoKind::Bridge))]
    );
    assert_eq!(
        link::parse_replies(by_name("link_without_kind")),
        vec![link_reply(1, None)]
    );
    assert_eq!(
        link::parse_replies(by_name("error_enodev")),
        vec![RouteReply::Error(-ENODEV)]
    );
    assert_eq!(
        link::parse_replies(by_name("ack")),
        vec![RouteReply::Error(0)]
    );
    // Several datagrams' worth in one buffer: every message, in order.
    let mut both = by_name("link_dummy").clone();
    both.extend(by_name("ack"));
    assert_eq!(
        link::parse_replies(&both),
        vec![link_reply(5, Some(InfoKind::Dummy)), RouteReply::Error(0)]
    );
}

/// A bad length drops the rest of the datagram (as the connection's codec does); a message
/// that does not decode is skipped and the next one still read.
#[test]
fn rtnetlink_undecodable_message_is_skipped_bad_length_stops() {
    let seeds = rtnetlink_seeds();
    let dummy = &seeds.iter().find(|(n, _)| n == "link_dummy").unwrap().1;
    // An RTM_NEWADDR shorter than its ifaddrmsg: does not decode.
    let mut buf = Vec::new();
    buf.extend_from_slice(&20u32.to_ne_bytes());
    buf.extend_from_slice(&RTM_NEWADDR.to_ne_bytes());
    buf.extend_from_slice(&[0; 14]);
    buf.extend_from_slice(dummy);
    let dummy_reply = RouteReply::Link {
        index: 5,
        kind: Some(InfoKind::Dummy),
    };
    assert_eq!(link::parse_replies(&buf), vec![dummy_reply.clone()]);
    // A length past the end: nothing after it is read.
    let mut buf = dummy.clone();
    buf.extend_from_slice(&1000u32.to_ne_bytes());
    buf.extend_from_slice(&[0; 28]);
    buf.extend_from_slice(dummy);
    assert_eq!(link::parse_replies(&buf), vec![dummy_reply]);
}

fn rtnetlink_seed_bytes() -> Vec<Vec<u8>> {
    rtnetlink_seeds().into_iter().map(|(_, b)| b).collect()
}

#[test]
fn mutated_rtnetlink_replies_never_panic() {
    let seeds = rtnetlink_seed_bytes();
    let n = seeds.len();
    let strategy = (0..n, proptest::collection::vec(mutation(), 1..6));
    run("mutated rtnetlink", strategy, move |(i, muts)| {
        let buf = apply(seeds[i].clone(), &muts, &seeds);
        let _ = link::parse_replies(&buf);
        Ok(())
    });
}

/// Mutations behind the netlink header of the first message only, with its length kept
/// consistent, so the route message parsers see nearly every case.
#[test]
fn mutated_rtnetlink_attributes_never_panic() {
    let seeds = rtnetlink_seed_bytes();
    let n = seeds.len();
    let strategy = (0..n, proptest::collection::vec(mutation(), 1..4));
    run(
        "mutated rtnetlink attributes",
        strategy,
        move |(i, muts)| {
            let seed = &seeds[i];
            let len = u32::from_ne_bytes([seed[0], seed[1], seed[2], seed[3]]) as usize;
            let head = 16.min(len);
            let mut buf = seed[..head].to_vec();
            buf.extend(apply(seed[head..len].to_vec(), &muts, &seeds));
            let new_len = u32::try_from(buf.len()).unwrap();
            buf[..4].copy_from_slice(&new_len.to_ne_bytes());
            let _ = link::parse_replies(&buf);
            Ok(())
        },
    );
}

/// One attribute: a kind (with the nested / byte-order flags sometimes) and either raw bytes
/// or a list of inner attributes.
fn route_attr(kinds: &'static [u16]) -> impl Strategy<Value = Vec<u8>> {
    let kind = prop_oneof![proptest::sample::select(kinds), 0u16..64, any::<u16>()];
    let raw = proptest::collection::vec(any::<u8>(), 0..24);
    let inner = proptest::collection::vec(
        (
            prop_oneof![Just(IFLA_INFO_KIND), Just(IFLA_INFO_DATA), 0u16..8],
            prop_oneof![
                Just(b"dummy\0".to_vec()),
                Just(b"bridge\0".to_vec()),
                Just(b"vlan\0".to_vec()),
                proptest::collection::vec(any::<u8>(), 0..24),
            ],
        ),
        0..4,
    )
    .prop_map(|attrs| attrs.iter().flat_map(|(k, v)| nla(*k, v)).collect());
    (kind, any::<bool>(), prop_oneof![raw, inner])
        .prop_map(|(k, nested, value)| nla(if nested { k | NLA_F_NESTED } else { k }, &value))
}

fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
    let len = u16::try_from(4 + value.len()).unwrap();
    let mut out = len.to_ne_bytes().to_vec();
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize((out.len() + 3) & !3, 0);
    out
}

/// Well-framed RTM_NEWLINK / RTM_NEWADDR messages with arbitrary headers and attributes
/// (well-formed attribute framing, arbitrary contents): reaches the route attribute parsers
/// on every case.
#[test]
fn rtnetlink_attributes_behind_valid_headers_never_panic() {
    const LINK_KINDS: &[u16] = &[IFLA_IFNAME, IFLA_LINKINFO, IFLA_LINKINFO | NLA_F_NESTED];
    const ADDR_KINDS: &[u16] = &[IFA_ADDRESS, IFA_LOCAL, IFA_LABEL, IFA_CACHEINFO, IFA_FLAGS];
    let message = prop_oneof![
        (
            Just(RTM_NEWLINK),
            proptest::collection::vec(any::<u8>(), 16),
            proptest::collection::vec(route_attr(LINK_KINDS), 0..6)
        ),
        (
            Just(RTM_NEWADDR),
            proptest::collection::vec(any::<u8>(), 8),
            proptest::collection::vec(route_attr(ADDR_KINDS), 0..6)
        ),
    ];
    let strategy = proptest::collection::vec(message, 1..4);
    run("rtnetlink framed", strategy, |messages| {
        let mut buf = Vec::new();
        for (t, header, attrs) in messages {
            let body: Vec<u8> = header.into_iter().chain(attrs.concat()).collect();
            let len = u32::try_from(16 + body.len()).unwrap();
            buf.extend_from_slice(&len.to_ne_bytes());
            buf.extend_from_slice(&t.to_ne_bytes());
            buf.extend_from_slice(&NLM_F_MULTIPART.to_ne_bytes());
            buf.extend_from_slice(&[0; 8]);
            buf.extend_from_slice(&body);
        }
        let replies = link::parse_replies(&buf);
        prop_assert!(replies.len() <= 3);
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------
// Seeds for the cargo-fuzz targets (fuzz/fuzz_targets/*.rs).

/// Named seed files.
type Seeds = Vec<(String, Vec<u8>)>;

/// Seeds per cargo-fuzz target, named after the constant (or rtnetlink seed) they come from.
fn fuzz_seeds() -> Vec<(&'static str, Seeds)> {
    let ipvs = named_captures_in(IPVS_TESTS);
    let ipset = named_captures_in(IPSET_CODEC);
    let rt = rtnetlink_seeds();
    let prefixed = |prefix: &str, seeds: &Seeds| -> Seeds {
        seeds
            .iter()
            .map(|(n, b)| (format!("{prefix}-{n}"), b.clone()))
            .collect()
    };
    let mut all = prefixed("ipvs", &ipvs);
    all.extend(prefixed("ipset", &ipset));
    all.extend(prefixed("rt", &rt));
    vec![
        ("ipvs_reply", ipvs.clone()),
        ("ipvs_request", ipvs.clone()),
        ("genl_ctrl", ipvs),
        ("ipset", ipset),
        ("rtnetlink", rt),
        ("split", all),
    ]
}

/// Writes the cargo-fuzz seeds under `$FUZZ_SEEDS_DIR/<target>/` when that is set (as
/// `tests/fuzz/run` does); checks them either way.
#[test]
fn write_fuzz_seeds() {
    let seeds = fuzz_seeds();
    for (target, files) in &seeds {
        assert!(files.len() >= 5, "{target}: {} seeds", files.len());
        let mut names: Vec<_> = files.iter().map(|(n, _)| n).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), files.len(), "{target}: duplicate seed names");
    }
    let Some(dir) = std::env::var_os("FUZZ_SEEDS_DIR") else {
        return;
    };
    for (target, files) in seeds {
        let dir = std::path::Path::new(&dir).join(target);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in files {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
}
