//! Multi-document YAML manifests -> Services, EndpointSlices and Nodes.
//!
//! Used by the golden tests, the examples and a later `ipvs-proxier plan` command. A
//! document that is not one of the three kinds, or does not decode, yields a diagnostic
//! naming its 0-based index; the other documents are still read. `kind: List` (as printed by
//! `kubectl get -o yaml`) is unwrapped.

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Deserialize;

use super::Diagnostic;
use super::objects::{Interner, ServiceObject, SliceObject};

/// The objects found in a manifest stream (Services and slices in their compact form).
#[derive(Debug, Clone, Default)]
pub struct Manifests {
    pub services: Vec<ServiceObject>,
    pub endpoint_slices: Vec<SliceObject>,
    pub nodes: Vec<Node>,
    pub diagnostics: Vec<Diagnostic>,
}

/// The objects of one sync, borrowed: what the sync engine reads (the daemon lends its
/// store's objects this way instead of copying them for every sync).
#[derive(Debug, Clone, Copy)]
pub struct ObjectRefs<'a> {
    pub services: &'a [&'a ServiceObject],
    pub endpoint_slices: &'a [&'a SliceObject],
    pub nodes: &'a [Node],
    /// How many diagnostics reading the objects gave (reported with the planner's).
    pub diagnostics: usize,
}

impl Manifests {
    /// These objects as [`ObjectRefs`], given references to the services and slices.
    pub fn refs<'a>(
        &'a self,
        services: &'a [&'a ServiceObject],
        endpoint_slices: &'a [&'a SliceObject],
    ) -> ObjectRefs<'a> {
        ObjectRefs {
            services,
            endpoint_slices,
            nodes: &self.nodes,
            diagnostics: self.diagnostics.len(),
        }
    }
}

/// Parses every document of `text`.
pub fn parse_manifests(text: &str) -> Manifests {
    let mut out = Manifests::default();
    let mut interner = Interner::default();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        match serde_yaml::Value::deserialize(document) {
            Ok(value) => add_value(&mut out, &mut interner, index, value),
            Err(e) => {
                out.diagnostics.push(Diagnostic::UndecodableDocument {
                    document: index,
                    error: e.to_string(),
                });
                // serde_yaml cannot resynchronise after a syntax error: its iterator keeps
                // yielding the same error forever, so stop at the first one.
                break;
            }
        }
    }
    out
}

fn add_value(out: &mut Manifests, interner: &mut Interner, index: usize, value: serde_yaml::Value) {
    if value.is_null() {
        return; // an empty document, e.g. a trailing `---`
    }
    if !value.is_mapping() {
        out.diagnostics.push(Diagnostic::UndecodableDocument {
            document: index,
            error: "not a mapping, so not a Kubernetes object".to_owned(),
        });
        return;
    }
    let text_field = |name: &str| {
        value
            .get(name)
            .and_then(serde_yaml::Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let api_version = text_field("apiVersion");
    let kind = text_field("kind");
    let decoded = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Service") => serde_yaml::from_value::<Service>(value)
            .map(|s| out.services.push(ServiceObject::from_api(s))),
        ("discovery.k8s.io/v1", "EndpointSlice") => serde_yaml::from_value::<EndpointSlice>(value)
            .map(|s| out.endpoint_slices.push(SliceObject::from_api(s, interner))),
        ("v1", "Node") => serde_yaml::from_value(value).map(|n| out.nodes.push(n)),
        ("v1", "List") => {
            if let Some(items) = value.get("items").and_then(serde_yaml::Value::as_sequence) {
                for item in items.clone() {
                    add_value(out, interner, index, item);
                }
            }
            Ok(())
        }
        _ => {
            out.diagnostics.push(Diagnostic::UnknownKind {
                document: index,
                api_version,
                kind,
            });
            Ok(())
        }
    };
    if let Err(e) = decoded {
        out.diagnostics.push(Diagnostic::UndecodableDocument {
            document: index,
            error: e.to_string(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_syntax_error_ends_the_stream_with_one_diagnostic() {
        // Used to loop forever: serde_yaml repeats a syntax error instead of ending.
        let text = "\
apiVersion: v1
kind: Service
metadata: {name: a, namespace: default}
spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}
---
metadata: {name: [oops
";
        let m = parse_manifests(text);
        assert_eq!(m.services.len(), 1);
        assert!(
            matches!(
                m.diagnostics.as_slice(),
                [Diagnostic::UndecodableDocument { document: 1, .. }]
            ),
            "{:?}",
            m.diagnostics
        );
    }

    #[test]
    fn reads_kinds_and_reports_others_by_index() {
        let text = "\
apiVersion: v1
kind: Service
metadata: {name: a, namespace: default}
spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: d}
---
apiVersion: v1
kind: Service
metadata: {name: b}
spec: {ports: notalist}
---
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: a-1, namespace: default, labels: {kubernetes.io/service-name: a}}
addressType: IPv4
endpoints: []
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Node
  metadata: {name: n1}
";
        let m = parse_manifests(text);
        assert_eq!(m.services.len(), 1);
        assert_eq!(m.endpoint_slices.len(), 1);
        assert_eq!(m.nodes.len(), 1);
        assert_eq!(m.diagnostics.len(), 2, "{:?}", m.diagnostics);
        assert!(matches!(
            &m.diagnostics[0],
            Diagnostic::UnknownKind { document: 1, kind, .. } if kind == "Deployment"
        ));
        assert!(matches!(
            &m.diagnostics[1],
            Diagnostic::UndecodableDocument { document: 2, .. }
        ));
    }
}
