//! deploy/*.yaml: every document must be a valid Kubernetes object (strictly: no unknown or
//! misspelled field), the RBAC must grant exactly what ipvs-proxier uses, and the DaemonSet
//! must run the binary the way the config module expects.
//!
//! k8s-openapi's `Deserialize` ignores unknown fields, so each document is decoded into its
//! typed object, encoded again and compared with the original: a field that did not survive
//! the round trip is one the API does not know.

// Test helpers outside #[test] functions: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use clap::Parser;
use ipvs_proxier::config::{Action, Cli, resolve};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Container, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Every document of every deploy/*.yaml, with "file#index" for messages.
fn documents() -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no manifests in {}",
        deploy_dir().display()
    );
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let value = Value::deserialize(doc).unwrap_or_else(|e| panic!("{name}#{i}: {e}"));
            if !value.is_null() {
                out.push((format!("{name}#{i}"), value));
            }
        }
    }
    out
}

/// Drops `null`s, which both YAML authors and serializers use for "absent".
fn normalise(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), normalise(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(normalise).collect()),
        other => other.clone(),
    }
}

/// Paths where `original` and `round_trip` differ: lost fields (unknown to the API), added
/// fields, changed values.
fn differences(path: &str, original: &Value, round_trip: &Value, out: &mut Vec<String>) {
    match (original, round_trip) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let p = format!("{path}.{k}");
                match b.get(k) {
                    Some(w) => differences(&p, v, w, out),
                    None => out.push(format!("{p}: unknown field (lost in the round trip)")),
                }
            }
            for k in b.keys().filter(|k| !a.contains_key(*k)) {
                out.push(format!("{path}.{k}: added by the round trip"));
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (v, w)) in a.iter().zip(b).enumerate() {
                differences(&format!("{path}[{i}]"), v, w, out);
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push(format!("{path}: {a} became {b}")),
    }
}

/// Decodes `value` as `T` and fails (naming the fields) unless it round-trips unchanged.
fn strict<T: DeserializeOwned + serde::Serialize>(name: &str, value: &Value) -> Result<T, String> {
    let typed: T = serde_json::from_value(value.clone()).map_err(|e| format!("{name}: {e}"))?;
    let again = serde_json::to_value(&typed).map_err(|e| format!("{name}: {e}"))?;
    let mut diffs = Vec::new();
    differences("", &normalise(value), &normalise(&again), &mut diffs);
    if diffs.is_empty() {
        Ok(typed)
    } else {
        Err(format!("{name}:\n  {}", diffs.join("\n  ")))
    }
}

#[derive(Default)]
struct Objects {
    daemon_sets: Vec<DaemonSet>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    bindings: Vec<ClusterRoleBinding>,
}

fn objects() -> Objects {
    let mut objects = Objects::default();
    let mut errors = Vec::new();
    for (name, value) in documents() {
        let kind = (value["apiVersion"].as_str(), value["kind"].as_str());
        let result = match kind {
            (Some("apps/v1"), Some("DaemonSet")) => {
                strict(&name, &value).map(|o| objects.daemon_sets.push(o))
            }
            (Some("v1"), Some("ServiceAccount")) => {
                strict(&name, &value).map(|o| objects.service_accounts.push(o))
            }
            (Some("rbac.authorization.k8s.io/v1"), Some("ClusterRole")) => {
                strict(&name, &value).map(|o| objects.cluster_roles.push(o))
            }
            (Some("rbac.authorization.k8s.io/v1"), Some("ClusterRoleBinding")) => {
                strict(&name, &value).map(|o| objects.bindings.push(o))
            }
            other => Err(format!("{name}: unexpected apiVersion/kind {other:?}")),
        };
        if let Err(e) = result {
            errors.push(e);
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    objects
}

#[test]
fn every_document_is_a_known_object_without_unknown_fields() {
    let o = objects();
    assert_eq!(o.daemon_sets.len(), 1);
    assert_eq!(o.service_accounts.len(), 1);
    assert_eq!(o.cluster_roles.len(), 1);
    assert_eq!(o.bindings.len(), 1);
}

#[test]
fn the_strict_check_catches_a_misspelled_field() {
    let value: Value = serde_yaml::from_str(
        "apiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  name: x\nspec:\n  selector: {}\n  \
         template:\n    spec:\n      hostNetwrok: true\n      containers: []\n",
    )
    .unwrap();
    let e = strict::<DaemonSet>("test", &value).unwrap_err();
    assert!(
        e.contains(".spec.template.spec.hostNetwrok: unknown field"),
        "{e}"
    );
}

#[test]
fn rbac_grants_exactly_what_the_proxier_uses() {
    let o = objects();
    let role = &o.cluster_roles[0];
    let mut granted = BTreeSet::new();
    for rule in role.rules.as_deref().unwrap_or_default() {
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
        for group in rule.api_groups.as_deref().unwrap_or_default() {
            for resource in rule.resources.as_deref().unwrap_or_default() {
                for verb in &rule.verbs {
                    let fresh = granted.insert((group.clone(), resource.clone(), verb.clone()));
                    assert!(fresh, "{group}/{resource} {verb} granted twice");
                }
            }
        }
    }
    let mut want = BTreeSet::new();
    for (group, resource) in [
        ("", "services"),
        ("discovery.k8s.io", "endpointslices"),
        ("", "nodes"),
    ] {
        for verb in ["get", "list", "watch"] {
            want.insert((group.to_owned(), resource.to_owned(), verb.to_owned()));
        }
    }
    for group in ["", "events.k8s.io"] {
        for verb in ["create", "patch"] {
            want.insert((group.to_owned(), "events".to_owned(), verb.to_owned()));
        }
    }
    assert_eq!(granted, want);

    let sa = &o.service_accounts[0];
    let sa_name = sa.metadata.name.as_deref().unwrap();
    let sa_namespace = sa.metadata.namespace.as_deref().unwrap();
    let binding = &o.bindings[0];
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(binding.role_ref.api_group, "rbac.authorization.k8s.io");
    assert_eq!(
        Some(binding.role_ref.name.as_str()),
        role.metadata.name.as_deref()
    );
    let subjects = binding.subjects.as_deref().unwrap_or_default();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(subjects[0].name, sa_name);
    assert_eq!(subjects[0].namespace.as_deref(), Some(sa_namespace));

    let ds = &o.daemon_sets[0];
    assert_eq!(ds.metadata.namespace.as_deref(), Some(sa_namespace));
    let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some(sa_name));
}

fn main_container(ds: &DaemonSet) -> &Container {
    let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(pod.containers.len(), 1);
    &pod.containers[0]
}

#[test]
fn daemon_set_runs_like_kube_proxy_with_least_privilege() {
    let o = objects();
    let ds = &o.daemon_sets[0];
    let spec = ds.spec.as_ref().unwrap();
    let pod = spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    let tolerations = pod.tolerations.as_deref().unwrap_or_default();
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "must tolerate every taint, as kube-proxy does"
    );

    let c = main_container(ds);
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.privileged, Some(false));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    let caps = sc.capabilities.as_ref().unwrap();
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_owned()][..]));
    assert_eq!(
        caps.add.as_deref(),
        Some(&["NET_ADMIN".to_owned(), "NET_RAW".to_owned()][..])
    );

    // The node name comes from the downward API and is passed as --hostname-override.
    for container in pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten())
    {
        let env = container.env.as_deref().unwrap_or_default();
        let node_name = env.iter().find(|e| e.name == "NODE_NAME").unwrap();
        let field = node_name
            .value_from
            .as_ref()
            .unwrap()
            .field_ref
            .as_ref()
            .unwrap();
        assert_eq!(field.field_path, "spec.nodeName");
        let args = container.command.as_deref().unwrap_or_default();
        assert!(args.iter().any(|a| a == "--hostname-override=$(NODE_NAME)"));
    }

    // Volumes: the kube-proxy ConfigMap, the xtables lock, /lib/modules read-only.
    let volumes = pod.volumes.as_deref().unwrap_or_default();
    let volume = |name: &str| volumes.iter().find(|v| v.name == name).unwrap();
    assert_eq!(
        volume("kube-proxy").config_map.as_ref().unwrap().name,
        "kube-proxy"
    );
    let lock = volume("xtables-lock").host_path.as_ref().unwrap();
    assert_eq!(
        (lock.path.as_str(), lock.type_.as_deref()),
        ("/run/xtables.lock", Some("FileOrCreate"))
    );
    assert_eq!(
        volume("lib-modules").host_path.as_ref().unwrap().path,
        "/lib/modules"
    );
    let mounts = c.volume_mounts.as_deref().unwrap_or_default();
    let mount = |name: &str| mounts.iter().find(|m| m.name == name).unwrap();
    assert_eq!(mount("xtables-lock").mount_path, "/run/xtables.lock");
    assert_eq!(mount("lib-modules").read_only, Some(true));
    assert_eq!(mount("kube-proxy").mount_path, "/var/lib/kube-proxy");
}

#[test]
fn daemon_set_command_lines_parse_and_resolve_with_the_kubeadm_config_map() {
    let o = objects();
    let ds = &o.daemon_sets[0];
    let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let config_map: serde_yaml::Value = serde_yaml::from_str(include_str!(
        "testdata/config/kubeadm-kube-proxy-configmap.yaml"
    ))
    .unwrap();
    let config_conf = config_map["data"]["config.conf"].as_str().unwrap();
    let mut actions = Vec::new();
    for container in pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten())
    {
        // What the kubelet does with $(NODE_NAME).
        let argv: Vec<String> = container
            .command
            .iter()
            .flatten()
            .chain(container.args.iter().flatten())
            .map(|a| a.replace("$(NODE_NAME)", "worker-1"))
            .collect();
        let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        assert_eq!(
            cli.config.as_deref(),
            Some(Path::new("/var/lib/kube-proxy/config.conf"))
        );
        let (settings, warnings) = resolve(&cli, Some(config_conf), || {
            unreachable!("the node name is given")
        })
        .unwrap();
        assert_eq!(warnings, vec![]);
        assert_eq!(settings.node_name, "worker-1");
        actions.push(settings.action);
    }
    assert_eq!(actions, vec![Action::Run, Action::InitOnly]);
}
