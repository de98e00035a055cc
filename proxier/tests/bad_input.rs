//! Property (issue 9): bad input never poisons the rest. Random, mostly invalid Services and
//! EndpointSlices (wrong families, out-of-range ports as raw JSON numbers, unknown protocols,
//! NodePorts and virtual servers that clash with the valid ones, slices for missing Services,
//! duplicate / wrong-family / unparsable endpoints, missing fields, absurd names) are mixed
//! into a fixed set of valid objects and the stream goes through `parse_manifests` and
//! `plan_objects`. Planning never panics, the valid Services' virtual servers are exactly
//! what planning the valid set alone gives, and every invalid object gets a diagnostic
//! naming it (or, when it cannot even be decoded, naming its document).
//!
//! Clashes are generated on purpose, resolved in the valid objects' favour by the planner's
//! documented rule (first in name order keeps it): the invalid objects live in namespace
//! `zz-bad`, or are named `zzbad-*` in the valid namespace, so they always sort last.

// A test crate: a panic here is a test failure with its message, which is what we want.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::mpsc;
use std::time::Duration;

use ipvs_proxier::model::{Diagnostic, parse_manifests};
use ipvs_proxier::plan::{ConfigFile, NodeFacts, Plan, PlanConfig, plan_objects};
use netlink::AddressFamily;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};

const CONFIG: &str = "\
nodeName: node-1
ipFamilies: [IPv4]
clusterCIDRs: [10.244.0.0/16]
nodeIPs: [10.255.0.1]
primaryNodeIPs: [10.255.0.1]
";

/// A property that has not finished by then is hung.
const DEADLINE: Duration = Duration::from_secs(240);

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config() -> (PlanConfig, NodeFacts) {
    ConfigFile::parse(CONFIG).unwrap().into_parts().unwrap()
}

fn service(ns: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

fn slice(ns: &str, name: &str, service: Option<&str>, body: Value) -> Value {
    let mut meta = json!({"name": name, "namespace": ns});
    if let Some(s) = service {
        meta["labels"] = json!({"kubernetes.io/service-name": s});
    }
    let mut doc = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                         "metadata": meta});
    for (k, v) in body.as_object().unwrap() {
        doc[k] = v.clone();
    }
    doc
}

fn endpoint(addr: &str, node: &str) -> Value {
    json!({"addresses": [addr], "conditions": {"ready": true}, "nodeName": node})
}

/// The valid objects: three Services (ClusterIP, NodePort, UDP), each with its slice.
fn valid() -> Vec<Value> {
    vec![
        service(
            "good",
            "web",
            json!({"type": "NodePort", "clusterIP": "10.96.0.10",
                   "ports": [{"port": 80, "targetPort": 8080, "nodePort": 30080}]}),
        ),
        slice(
            "good",
            "web-aaaaa",
            Some("web"),
            json!({"addressType": "IPv4", "ports": [{"name": "", "port": 8080, "protocol": "TCP"}],
                   "endpoints": [endpoint("10.244.0.5", "node-1"), endpoint("10.244.1.7", "node-2")]}),
        ),
        service(
            "good",
            "api",
            json!({"type": "NodePort", "clusterIP": "10.96.0.20",
                   "ports": [{"name": "https", "port": 443, "targetPort": 6443, "nodePort": 30443}]}),
        ),
        slice(
            "good",
            "api-bbbbb",
            Some("api"),
            json!({"addressType": "IPv4", "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}],
                   "endpoints": [endpoint("10.244.0.9", "node-1")]}),
        ),
        service(
            "good",
            "dns",
            json!({"clusterIP": "10.96.0.53",
                   "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]}),
        ),
        slice(
            "good",
            "dns-ccccc",
            Some("dns"),
            json!({"addressType": "IPv4", "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}],
                   "endpoints": [endpoint("10.244.1.2", "node-2")]}),
        ),
    ]
}

/// What an invalid object must produce.
#[derive(Debug, Clone)]
enum Expect {
    /// A diagnostic whose text contains this (the object's name).
    Named(String),
    /// `UndecodableDocument` for its document, or (when the decoder tolerates the value, e.g.
    /// `null` read as the default 0) a diagnostic naming the object.
    Undecodable(String),
    /// Nothing required (e.g. a Service without a spec: nothing to program, nothing wrong).
    Silent,
}

/// One kind of invalid object, with the knobs the generator varies.
#[derive(Debug, Clone)]
enum Bad {
    WrongFamilyClusterIp(u16),
    UnparsableClusterIp(String),
    PortOutOfRange(i64),
    NodePortOutOfRange(i64),
    UnknownProtocol(&'static str),
    /// A NodePort of a valid Service.
    DuplicateNodePort(u16),
    /// The virtual server (ClusterIP:port/TCP) of a valid Service.
    ClashingVirtualServer,
    /// Not an i32 at all: 2^40, a float, a string.
    RawPort(Value),
    AbsurdName(usize),
    NoSpec,
    SliceForMissingService,
    SliceWithoutLabel,
    FqdnSlice,
    /// Endpoints added to a valid Service's slices that must all be dropped.
    WrongFamilyEndpoint(u16),
    UnparsableEndpoint(String),
    DuplicateEndpoint,
}

fn bad() -> impl Strategy<Value = Bad> {
    prop_oneof![
        any::<u16>().prop_map(Bad::WrongFamilyClusterIp),
        prop_oneof![
            Just("10.96.300.1".to_owned()),
            // (An empty clusterIP is "not allocated yet": nothing to program, nothing wrong.)
            Just("None ".to_owned()),
            // Parse, but are no service address: unspecified, multicast, broadcast.
            Just("0.0.0.0".to_owned()),
            Just("::".to_owned()),
            Just("224.0.0.1".to_owned()),
            Just("255.255.255.255".to_owned()),
            "[0-9a-f:.]{1,40}",
        ]
        .prop_map(Bad::UnparsableClusterIp),
        prop_oneof![
            Just(0i64),
            Just(-1),
            Just(65536),
            Just(i64::from(i32::MAX)),
            Just(i64::from(i32::MIN)),
            65536i64..1_000_000,
        ]
        .prop_map(Bad::PortOutOfRange),
        prop_oneof![Just(-5i64), Just(65536), 65536i64..1_000_000]
            .prop_map(Bad::NodePortOutOfRange),
        prop_oneof![
            Just("ICMP"),
            Just("HTTP"),
            Just("SCTPX"),
            Just("udp "),
            Just("ŦCP")
        ]
        .prop_map(Bad::UnknownProtocol),
        prop_oneof![Just(30080u16), Just(30443)].prop_map(Bad::DuplicateNodePort),
        Just(Bad::ClashingVirtualServer),
        prop_oneof![
            Just(json!(1_099_511_627_776u64)),
            Just(json!(80.5)),
            Just(json!("80")),
            Just(json!(null)),
            Just(json!([80])),
        ]
        .prop_map(Bad::RawPort),
        (64usize..400).prop_map(Bad::AbsurdName),
        Just(Bad::NoSpec),
        Just(Bad::SliceForMissingService),
        Just(Bad::SliceWithoutLabel),
        Just(Bad::FqdnSlice),
        any::<u16>().prop_map(Bad::WrongFamilyEndpoint),
        prop_oneof![Just("not-an-ip".to_owned()), "[0-9.]{1,20}x"]
            .prop_map(Bad::UnparsableEndpoint),
        Just(Bad::DuplicateEndpoint),
    ]
}

/// The document for invalid object number `i` and what it must produce.
fn render(i: usize, b: &Bad) -> (Value, Expect) {
    let name = format!("zzbad-{i}");
    let named = |n: &str| Expect::Named(n.to_owned());
    // A ClusterIP of its own, so only the generators meant to clash do.
    let vip = format!("10.97.{}.{}", i / 250, i % 250 + 1);
    let web_port = json!({"name": "", "port": 8080, "protocol": "TCP"});
    match b {
        Bad::WrongFamilyClusterIp(x) => (
            service(
                "zz-bad",
                &name,
                json!({"clusterIP": format!("fd00::{x:x}"),
                                            "ports": [{"port": 80}]}),
            ),
            named(&name),
        ),
        Bad::UnparsableClusterIp(ip) => (
            service(
                "zz-bad",
                &name,
                json!({"clusterIP": ip, "clusterIPs": [ip],
                                            "ports": [{"port": 80}]}),
            ),
            named(&name),
        ),
        Bad::PortOutOfRange(p) => (
            service(
                "zz-bad",
                &name,
                json!({"clusterIP": vip, "ports": [{"name": "p", "port": p}]}),
            ),
            named(&name),
        ),
        Bad::NodePortOutOfRange(p) => (
            service(
                "zz-bad",
                &name,
                json!({"type": "NodePort", "clusterIP": vip,
                                            "ports": [{"port": 80, "nodePort": p}]}),
            ),
            named(&name),
        ),
        Bad::UnknownProtocol(proto) => (
            service(
                "zz-bad",
                &name,
                json!({"clusterIP": vip,
                                            "ports": [{"port": 80, "protocol": proto}]}),
            ),
            named(&name),
        ),
        Bad::DuplicateNodePort(np) => (
            service(
                "zz-bad",
                &name,
                json!({"type": "NodePort", "clusterIP": vip,
                                            "ports": [{"port": 80, "nodePort": np}]}),
            ),
            named(&format!("zz-bad/{name}")),
        ),
        Bad::ClashingVirtualServer => (
            service(
                "zz-bad",
                &name,
                json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}),
            ),
            named(&format!("zz-bad/{name}")),
        ),
        Bad::RawPort(p) => (
            service(
                "zz-bad",
                &name,
                json!({"clusterIP": vip, "ports": [{"port": p}]}),
            ),
            Expect::Undecodable(name),
        ),
        Bad::AbsurdName(len) => {
            let long: String = format!("{name}-")
                .chars()
                .chain("ünï-ćødé.".chars().cycle())
                .take(*len)
                .collect();
            (
                service(
                    "zz-bad",
                    &long,
                    json!({"clusterIP": vip,
                                                "ports": [{"port": 80, "protocol": "ICMP"}]}),
                ),
                named(&long),
            )
        }
        Bad::NoSpec => (
            json!({"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": name, "namespace": "zz-bad"}}),
            Expect::Silent,
        ),
        Bad::SliceForMissingService => (
            slice(
                "zz-bad",
                &name,
                Some(&format!("ghost-{i}")),
                json!({"addressType": "IPv4", "ports": [web_port],
                         "endpoints": [endpoint("10.244.0.77", "node-1")]}),
            ),
            named(&name),
        ),
        Bad::SliceWithoutLabel => (
            slice(
                "zz-bad",
                &name,
                None,
                json!({"addressType": "IPv4", "ports": [web_port],
                         "endpoints": [endpoint("10.244.0.78", "node-1")]}),
            ),
            named(&name),
        ),
        Bad::FqdnSlice => (
            slice(
                "good",
                &name,
                Some("web"),
                json!({"addressType": "FQDN", "ports": [web_port],
                         "endpoints": [endpoint("example.com", "node-1")]}),
            ),
            named(&name),
        ),
        Bad::WrongFamilyEndpoint(x) => (
            slice(
                "good",
                &name,
                Some("web"),
                json!({"addressType": "IPv4", "ports": [web_port],
                         "endpoints": [endpoint(&format!("fd00:10:244::{x:x}"), "node-1")]}),
            ),
            named(&name),
        ),
        Bad::UnparsableEndpoint(a) => (
            slice(
                "good",
                &name,
                Some("web"),
                json!({"addressType": "IPv4", "ports": [web_port],
                         "endpoints": [endpoint(a, "node-1")]}),
            ),
            named(&name),
        ),
        Bad::DuplicateEndpoint => (
            slice(
                "good",
                &name,
                Some("web"),
                json!({"addressType": "IPv4", "ports": [web_port],
                         "endpoints": [endpoint("10.244.0.5", "node-1")]}),
            ),
            named(&name),
        ),
    }
}

fn stream(docs: &[Value]) -> String {
    docs.iter()
        .map(|d| serde_json::to_string(d).unwrap())
        .collect::<Vec<_>>()
        .join("\n---\n")
}

fn plan_text(text: &str, config: &(PlanConfig, NodeFacts)) -> (Plan, Vec<Diagnostic>) {
    let m = parse_manifests(text);
    let plan = plan_objects(
        &m.services,
        &m.endpoint_slices,
        &m.nodes,
        &config.0,
        &config.1,
    );
    (plan, m.diagnostics)
}

/// Runs `body` on its own thread and fails if it takes longer than [`DEADLINE`].
fn with_deadline(name: &'static str, body: impl FnOnce() + Send + 'static) {
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        body();
        let _ = tx.send(());
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(()) => handle.join().unwrap(),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(e) = handle.join() {
                std::panic::resume_unwind(e);
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{name}: no answer in {DEADLINE:?}"),
    }
}

#[test]
fn valid_set_alone_is_clean() {
    let (plan, parse_diags) = plan_text(&stream(&valid()), &config());
    assert!(parse_diags.is_empty(), "{parse_diags:?}");
    assert!(plan.diagnostics.is_empty(), "{:?}", plan.diagnostics);
    let v4 = plan.family(AddressFamily::Inet).unwrap();
    // 3 ClusterIP VSs + 2 NodePort VSs on the one node IP.
    assert_eq!(v4.ipvs.services.len(), 5, "{:#?}", v4.ipvs.services.keys());
}

#[test]
fn bad_input_never_poisons_the_valid_services() {
    with_deadline("bad input", || {
        let config = config();
        let valid_docs = valid();
        let (reference, _) = plan_text(&stream(&valid_docs), &config);
        let reference = reference.family(AddressFamily::Inet).unwrap().clone();

        let mut runner = TestRunner::new(Config {
            cases: cases(2000),
            failure_persistence: None,
            ..Config::default()
        });
        let strategy = (proptest::collection::vec(bad(), 1..24), any::<usize>());
        let result = runner.run(&strategy, |(bads, at)| {
            // The invalid documents first, the valid ones somewhere among them.
            let mut docs = Vec::new();
            let mut expect = Vec::new();
            for (i, b) in bads.iter().enumerate() {
                let (doc, e) = render(i, b);
                docs.push(doc);
                expect.push(e);
            }
            let insert_at = at % (docs.len() + 1);
            let shift = |doc: usize| {
                if doc >= insert_at {
                    doc + valid_docs.len()
                } else {
                    doc
                }
            };
            docs.splice(insert_at..insert_at, valid_docs.iter().cloned());

            let (plan, parse_diags) = plan_text(&stream(&docs), &config);
            let v4 = plan.family(AddressFamily::Inet).unwrap();
            for (key, vs) in &reference.ipvs.services {
                prop_assert_eq!(
                    v4.ipvs.services.get(key),
                    Some(vs),
                    "virtual server {}",
                    key
                );
            }
            for addr in &reference.bind_addresses {
                prop_assert!(v4.bind_addresses.contains(addr));
            }
            let texts: Vec<String> = plan.diagnostics.iter().map(ToString::to_string).collect();
            for (i, e) in expect.iter().enumerate() {
                match e {
                    Expect::Named(name) => prop_assert!(
                        texts.iter().any(|t| t.contains(name.as_str())),
                        "no diagnostic names {} ({:?}); diagnostics: {:#?}",
                        name,
                        bads[i],
                        texts
                    ),
                    Expect::Undecodable(name) => prop_assert!(
                        parse_diags.iter().any(|d| matches!(d,
                            Diagnostic::UndecodableDocument { document, .. }
                                if *document == shift(i)))
                            || texts.iter().any(|t| t.contains(name.as_str())),
                        "document {} ({:?}) not reported: {:?} {:?}",
                        shift(i),
                        bads[i],
                        parse_diags,
                        texts
                    ),
                    Expect::Silent => {}
                }
            }
            Ok(())
        });
        if let Err(e) = result {
            panic!("{e}");
        }
    });
}

/// Edits of the example manifests and YAML-ish noise: `parse_manifests` returns (no panic,
/// no endless loop on a syntax error) and whatever it decodes plans without panicking.
#[test]
fn yaml_noise_never_panics_or_hangs() {
    with_deadline("yaml noise", || {
        let config = config();
        let example = include_str!("../../examples/seeds.yaml");
        let mut runner = TestRunner::new(Config {
            cases: cases(3000),
            failure_persistence: None,
            ..Config::default()
        });
        let noise = "[a-zA-Z0-9:{}\\[\\],\\- \n'\"#&*!|>.%@`?\t]{0,300}";
        let edit = (any::<usize>(), any::<usize>(), noise);
        let strategy = prop_oneof![
            noise.prop_map(|s| s.to_owned()),
            proptest::collection::vec(edit, 1..4).prop_map(move |edits| {
                let mut text = example.to_owned();
                for (at, len, with) in edits {
                    let mut start = at % (text.len() + 1);
                    while !text.is_char_boundary(start) {
                        start -= 1;
                    }
                    let mut end = (start + len % 40).min(text.len());
                    while !text.is_char_boundary(end) {
                        end -= 1;
                    }
                    text.replace_range(start..end, &with);
                }
                text
            }),
            // Aliases, anchors and deep nesting.
            (1usize..200).prop_map(|n| format!(
                "a: &x {}{}\nb: *x\n",
                "[".repeat(n),
                "]".repeat(n)
            )),
        ];
        let result = runner.run(&strategy, |text| {
            let _ = plan_text(&text, &config);
            Ok(())
        });
        if let Err(e) = result {
            panic!("{e}");
        }
    });
}
