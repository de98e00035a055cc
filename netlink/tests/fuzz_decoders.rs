#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // A test crate.

//! Bounded fuzzing of every decoder in this crate, on stable Rust (issue 9): arbitrary bytes
//! and mutated real captures go through the IPVS request and reply parsers, the genl ctrl
//! parser, the ipset message parser and member mapping, netlink error/ack parsing and the
//! multi-message splitter. A decoder may reject its input, never panic or loop; whatever a
//! decoder accepts must survive emit -> parse unchanged.
//!
//! The seed corpus is read from the byte-vector tests themselves (every hex constant of
//! `tests/ipvs_codec.rs` and every `CAPTURE_*` of `src/ipset/codec.rs`), so a new capture
//! becomes a seed without touching this file. Case counts are fixed (see [`CASES`]) so a
//! CI run is bounded; `PROPTEST_CASES` raises them for a longer local run.

use std::sync::mpsc;
use std::time::Duration;

use netlink::ipset::SetType;
use netlink::ipset::codec::{CmdAttr, CreateAttr, ElemAttr, IpsetMessage, member_from_attrs};
use netlink::ipvs::codec::{self, IpvsReply, IpvsRequest};
use netlink_packet_core::{
    DefaultNla, NLA_F_NESTED, NLA_F_NET_BYTEORDER, NetlinkDeserializable, NetlinkHeader,
    NetlinkMessage, NetlinkPayload, NetlinkSerializable, Nla, ParseableParametrized,
};
use netlink_packet_generic::{GenlHeader, GenlMessage};
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
    let mut out = Vec::new();
    let mut rest = source;
    while let Some(at) = rest.find(": &str =") {
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
        out.push(
            (0..digits.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).unwrap())
                .collect(),
        );
    }
    out
}

fn seeds() -> Vec<Vec<u8>> {
    let mut all = captures_in(IPVS_TESTS);
    all.extend(captures_in(IPSET_CODEC));
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
