//! The bodies of the fuzz targets (one function per target in `fuzz_targets/`), kept in a
//! library so that each target file is one line and the bodies can be read together.
//!
//! Each function takes what the kernel (or the API server, or a manifests directory) could
//! send and runs it through the same calls the product makes on it. A decoder may reject its
//! input; it must never panic, loop or allocate without bound (the runner's
//! `-malloc_limit_mb` / `-rss_limit_mb` turn the last two into crashes). Where a decoder
//! accepts its input, the typed value must survive our own encoding unchanged: an `assert!`
//! failing here is a crash like any other.

use std::sync::OnceLock;

use ipvs_proxier::model::{ServiceObject, SliceObject, objects, parse_manifests};
use ipvs_proxier::plan::{ConfigFile, NodeFacts, PlanConfig, plan_objects, render};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use netlink::ipset::SetType;
use netlink::ipset::codec::{IpsetMessage, member_from_attrs};
use netlink::ipvs::codec::{self, IpvsReply, IpvsRequest};
use netlink::{AddressFamily, link};
use netlink_packet_core::{
    NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable,
    ParseableParametrized,
};
use netlink_packet_generic::{GenlFamily, GenlHeader, GenlMessage};

/// `NLMSG_ERROR`, `NLMSG_DONE`, `NLMSG_MIN_TYPE` (linux/netlink.h).
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_MIN_TYPE: u16 = 16;

const SET_TYPES: [SetType; 6] = [
    SetType::HashIp,
    SetType::HashIpPort,
    SetType::HashIpPortIp,
    SetType::HashIpPortNet,
    SetType::HashNet,
    SetType::BitmapPort,
];

/// A received IPVS datagram, read as `IpvsHandle::request` and `absorb_acks` read it; every
/// reply the parser accepts must re-encode (the way the kernel writes it) to itself.
pub fn ipvs_reply(data: &[u8]) {
    for m in codec::split_messages(data) {
        let Ok((h, payload)) = m else { continue };
        match h.message_type {
            NLMSG_ERROR => {
                let _ = codec::error_code(payload);
            }
            NLMSG_DONE => {}
            t if t >= NLMSG_MIN_TYPE => {
                if let Ok(genl) = GenlMessage::<IpvsReply>::parse_with_param(payload, t) {
                    reply_round_trip(&genl.payload);
                }
            }
            _ => {}
        }
    }
    // The attribute parsers under every command, whatever the genl header says: a reply
    // of a command the header would not have chosen still has to be rejected cleanly.
    if let Some(attrs) = data.get(codec::NLMSG_HDR_LEN + codec::GENL_HDR_LEN..) {
        for cmd in 0..=18 {
            if let Ok(r) = IpvsReply::parse_with_param(attrs, GenlHeader { cmd, version: 1 }) {
                reply_round_trip(&r);
            }
        }
    }
}

fn reply_round_trip(reply: &IpvsReply) {
    let header = GenlHeader {
        cmd: reply.command(),
        version: codec::FAMILY_VERSION,
    };
    let back = IpvsReply::parse_with_param(&reply.attr_bytes(), header)
        .unwrap_or_else(|e| panic!("our encoding of {reply:?} does not parse: {e}"));
    assert_eq!(&back, reply, "reply changed through emit -> parse");
}

/// A request (ours or `ipvsadm`'s): whatever parses must come back identical from
/// `encode_request`, the batch path's encoder.
pub fn ipvs_request(data: &[u8]) {
    for m in codec::split_messages(data) {
        let Ok((h, payload)) = m else { continue };
        if let Ok(genl) = GenlMessage::<IpvsRequest>::parse_with_param(payload, h.message_type) {
            request_round_trip(&genl.payload);
        }
    }
    if let Some(attrs) = data.get(codec::NLMSG_HDR_LEN + codec::GENL_HDR_LEN..) {
        for cmd in 0..=18 {
            if let Ok(r) = IpvsRequest::parse_with_param(attrs, GenlHeader { cmd, version: 1 }) {
                request_round_trip(&r);
            }
        }
    }
}

fn request_round_trip(req: &IpvsRequest) {
    let mut wire = Vec::new();
    codec::encode_request(&mut wire, 0x20, 7, req.netlink_flags(), req);
    let mut msgs = codec::split_messages(&wire);
    let (h, payload) = msgs
        .next()
        .expect("one message")
        .expect("our message splits");
    assert!(msgs.next().is_none(), "one request became several messages");
    assert_eq!(h.length as usize, wire.len());
    let back = GenlMessage::<IpvsRequest>::parse_with_param(payload, h.message_type)
        .unwrap_or_else(|e| panic!("our encoding of {req:?} does not parse: {e}"));
    assert_eq!(
        &back.payload, req,
        "request changed through encode -> parse"
    );
}

/// The controller's answer to `CTRL_CMD_GETFAMILY`, read as `IpvsHandle::resolve_family`
/// reads it.
pub fn genl_ctrl(data: &[u8]) {
    for m in codec::split_messages(data) {
        let Ok((h, payload)) = m else { continue };
        match h.message_type {
            NLMSG_ERROR => {
                let _ = codec::error_code(payload);
            }
            t if t >= NLMSG_MIN_TYPE => {
                let _ = codec::ctrl_family_id(payload);
            }
            _ => {}
        }
    }
}

/// A received ipset datagram, read as `IpsetHandle`'s receive loop reads it (framing, whole
/// messages, the echoed request inside an error for its line number), then listed as
/// `IpsetHandle::list` does (members per set type).
pub fn ipset(data: &[u8]) {
    for bytes in netlink::frame::split_datagram(data) {
        let Ok(bytes) = bytes else {
            break;
        };
        let Ok(nl) = NetlinkMessage::<IpsetMessage>::deserialize(bytes) else {
            continue;
        };
        match nl.payload {
            NetlinkPayload::InnerMessage(msg) => ipset_message(&msg),
            NetlinkPayload::Error(err) => {
                if let Ok(echo) = NetlinkMessage::<IpsetMessage>::deserialize(&err.header)
                    && let NetlinkPayload::InnerMessage(m) = echo.payload
                {
                    let _ = m.line_no();
                }
            }
            _ => {}
        }
    }
    // The message parser under every ipset command, whatever the header says (DATA is read
    // per command).
    if let Some(payload) = data.get(codec::NLMSG_HDR_LEN..) {
        for command in 0..=14u16 {
            if let Ok(msg) = IpsetMessage::parse(0x0600 | command, payload) {
                ipset_message(&msg);
            }
        }
        let _ = IpsetMessage::deserialize(&NetlinkHeader::default(), payload);
    }
}

fn ipset_message(msg: &IpsetMessage) {
    let kind = msg.type_name().and_then(SetType::from_name);
    for elem in msg.elements() {
        let _ = kind.and_then(|k| member_from_attrs(k, elem));
        for k in SET_TYPES {
            let _ = member_from_attrs(k, elem);
        }
    }
    let _ = (msg.set_name(), msg.line_no(), msg.header());
    // Our encoding is stable: an attribute kind the library re-emits differently (both
    // NLA_F_NESTED and NLA_F_NET_BYTEORDER: the nested flag only) may change once, then
    // encoding and parsing must agree.
    let once = ipset_emit(msg);
    let back = IpsetMessage::parse(msg.message_type(), &once)
        .unwrap_or_else(|e| panic!("our encoding of {msg:?} does not parse: {e}"));
    assert_eq!(ipset_emit(&back), once, "ipset encoding not stable");
}

fn ipset_emit(msg: &IpsetMessage) -> Vec<u8> {
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    buf
}

/// An rtnetlink answer (link get, address dump), from bytes to the values `link.rs` reads.
pub fn rtnetlink(data: &[u8]) {
    for reply in link::parse_replies(data) {
        if let link::RouteReply::Address(Some(a)) = reply {
            // What `node_addresses` and the planner do with it.
            let _ = AddressFamily::of(&a.addr);
        }
    }
}

/// The multi-message splitter of the IPVS paths: terminates, and every message it yields
/// lies within the datagram and is as long as its header says.
pub fn split(data: &[u8]) {
    let mut count = 0usize;
    let mut covered = 0usize;
    for m in codec::split_messages(data) {
        count += 1;
        assert!(
            count <= data.len() / codec::NLMSG_HDR_LEN + 1,
            "splitter yields more messages than fit"
        );
        let Ok((h, payload)) = m else { continue };
        assert_eq!(payload.len() + codec::NLMSG_HDR_LEN, h.length as usize);
        covered += h.length as usize;
        assert!(covered <= data.len(), "messages overlap or overrun");
    }
}

/// The planner configurations the model target plans with: both families, and the option
/// sets with their own code paths (from the golden cases).
fn configs() -> &'static [(PlanConfig, NodeFacts)] {
    static CONFIGS: OnceLock<Vec<(PlanConfig, NodeFacts)>> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        [
            include_str!("../../proxier/tests/testdata/dual-stack/config.yaml"),
            include_str!("../../proxier/tests/testdata/etp-local-strict/config.yaml"),
            include_str!("../../proxier/tests/testdata/nodeport-addresses-primary/config.yaml"),
            include_str!("../../proxier/tests/testdata/detect-local-node-cidr/config.yaml"),
            include_str!("../../proxier/tests/testdata/service-proxy-name/config.yaml"),
        ]
        .iter()
        .map(|text| {
            ConfigFile::parse(text)
                .expect("golden config parses")
                .into_parts()
                .expect("golden config is valid")
        })
        .collect()
    })
}

/// Objects -> model -> plan, as the API watch path (JSON into k8s-openapi types) and the
/// manifests path (`parse_manifests`; JSON is YAML) see them. The input is a JSON document,
/// normally a `v1` `List` of Services, EndpointSlices and Nodes (what the seeds hold). Bad
/// objects give diagnostics; nothing may panic. Every render runs too: it is what the
/// dataplane is fed.
pub fn model(data: &[u8]) {
    let configs = configs();
    // Dual-stack always (both families' code), plus one other configuration.
    let picked = [&configs[0], &configs[1 + data.len() % (configs.len() - 1)]];
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        let (mut services, mut slices, mut nodes) = (Vec::new(), Vec::new(), Vec::new());
        collect_objects(value, &mut services, &mut slices, &mut nodes, 0);
        // The conversion every source does on arrival.
        let (services, slices) = objects::from_api(services, slices);
        for (config, facts) in picked {
            plan_and_render(&services, &slices, &nodes, config, facts);
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let m = parse_manifests(text);
        let (config, facts) = picked[1];
        plan_and_render(&m.services, &m.endpoint_slices, &m.nodes, config, facts);
    }
}

/// Decodes objects by `kind`, unwrapping `List`s, as the watch path would have them.
fn collect_objects(
    value: serde_json::Value,
    services: &mut Vec<Service>,
    slices: &mut Vec<EndpointSlice>,
    nodes: &mut Vec<Node>,
    depth: usize,
) {
    let kind = value
        .get("kind")
        .and_then(|k| k.as_str())
        .unwrap_or_default();
    match kind {
        "Service" => services.extend(serde_json::from_value(value).ok()),
        "EndpointSlice" => slices.extend(serde_json::from_value(value).ok()),
        "Node" => nodes.extend(serde_json::from_value(value).ok()),
        "List" if depth < 4 => {
            if let Some(serde_json::Value::Array(items)) = value.get("items").cloned() {
                for item in items {
                    collect_objects(item, services, slices, nodes, depth + 1);
                }
            }
        }
        _ => {}
    }
}

fn plan_and_render(
    services: &[ServiceObject],
    slices: &[SliceObject],
    nodes: &[Node],
    config: &PlanConfig,
    facts: &NodeFacts,
) {
    let plan = plan_objects(services, slices, nodes, config, facts);
    let _ = render::ipvs(&plan);
    let _ = render::ipsets(&plan);
    let _ = render::health_checks(&plan);
    let _ = render::diagnostics(&plan.diagnostics);
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        if let Some(rules) = render::iptables(&plan, family) {
            restore_input_is_well_formed(&rules);
        }
    }
}

/// `iptables-restore` input: whatever the objects' names hold, every line is a table, a
/// chain, a rule, a comment or COMMIT (a name with a newline must not inject a line).
fn restore_input_is_well_formed(text: &str) {
    for line in text.lines() {
        assert!(
            line.starts_with('*')
                || line.starts_with(':')
                || line.starts_with("-A ")
                || line.starts_with("-I ")
                || line.starts_with('#')
                || line == "COMMIT",
            "iptables-restore input has a stray line: {line:?}"
        );
    }
}
