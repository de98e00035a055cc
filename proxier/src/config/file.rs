//! The `--config` file: `KubeProxyConfiguration` in `kubeproxy.config.k8s.io/v1alpha1`, the
//! version kubeadm writes into the `kube-system/kube-proxy` ConfigMap (`config.conf`).
//!
//! The structs mirror `k8s.io/kube-proxy/config/v1alpha1/types.go` field for field, with Go's
//! zero values as serde defaults, and `null` accepted wherever kubeadm writes it. Unknown or
//! misspelled fields are reported by path and dropped, not fatal: kube-proxy decodes v1alpha1
//! strictly first and, when that fails, decodes again leniently and only logs, so a file that
//! kube-proxy starts with must start us too (drop-in compatibility); the caller warns. Nothing is defaulted or validated here; that is
//! [`super::resolve`]'s job, which also knows which setting each value came from.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::ConfigError;
use super::duration::GoDuration;

pub const GROUP: &str = "kubeproxy.config.k8s.io";
pub const V1ALPHA1: &str = "kubeproxy.config.k8s.io/v1alpha1";
pub const V1ALPHA2: &str = "kubeproxy.config.k8s.io/v1alpha2";
pub const KIND: &str = "KubeProxyConfiguration";

/// `KubeProxyConfiguration` (v1alpha1).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct KubeProxyConfiguration {
    pub api_version: String,
    pub kind: String,
    #[serde(deserialize_with = "null_as_default")]
    pub feature_gates: BTreeMap<String, bool>,
    pub client_connection: ClientConnection,
    pub logging: Logging,
    pub hostname_override: String,
    pub bind_address: String,
    pub healthz_bind_address: String,
    pub metrics_bind_address: String,
    pub bind_address_hard_fail: bool,
    pub enable_profiling: bool,
    pub show_hidden_metrics_for_version: String,
    pub mode: String,
    pub iptables: IpTables,
    pub ipvs: Ipvs,
    pub nftables: NfTables,
    pub winkernel: Winkernel,
    pub detect_local_mode: String,
    pub detect_local: DetectLocal,
    #[serde(rename = "clusterCIDR")]
    pub cluster_cidr: String,
    #[serde(deserialize_with = "null_as_default")]
    pub node_port_addresses: Vec<String>,
    pub oom_score_adj: Option<i32>,
    pub conntrack: Conntrack,
    pub config_sync_period: GoDuration,
    pub port_range: String,
    /// Windows only; present in newer kube-proxy types.
    pub windows_run_as_service: bool,
}

/// `clientConnection` (component-base `ClientConnectionConfiguration`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ClientConnection {
    pub kubeconfig: String,
    pub accept_content_types: String,
    pub content_type: String,
    pub qps: f32,
    pub burst: i32,
}

/// `iptables`. In IPVS mode only `masqueradeBit` and `masqueradeAll` are read (kube-proxy's
/// v1alpha1 conversion maps `iptables.masqueradeAll` to the Linux setting for every mode but
/// nftables).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct IpTables {
    pub masquerade_bit: Option<i32>,
    pub masquerade_all: bool,
    pub localhost_node_ports: Option<bool>,
    #[serde(rename = "snatNodeInternalIP")]
    pub snat_node_internal_ip: Option<bool>,
    pub sync_period: GoDuration,
    pub min_sync_period: GoDuration,
}

/// `ipvs`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Ipvs {
    pub sync_period: GoDuration,
    pub min_sync_period: GoDuration,
    pub scheduler: String,
    #[serde(rename = "excludeCIDRs", deserialize_with = "null_as_default")]
    pub exclude_cidrs: Vec<String>,
    #[serde(rename = "strictARP")]
    pub strict_arp: bool,
    pub tcp_timeout: GoDuration,
    pub tcp_fin_timeout: GoDuration,
    pub udp_timeout: GoDuration,
}

/// `nftables` (not read in IPVS mode).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct NfTables {
    pub masquerade_bit: Option<i32>,
    pub masquerade_all: bool,
    pub sync_period: GoDuration,
    pub min_sync_period: GoDuration,
}

/// `winkernel` (Windows only).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Winkernel {
    pub network_name: String,
    pub source_vip: String,
    #[serde(rename = "enableDSR")]
    pub enable_dsr: bool,
    pub root_hns_endpoint_name: String,
    pub forward_health_check_vip: bool,
}

/// `detectLocal`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DetectLocal {
    pub bridge_interface: String,
    pub interface_name_prefix: String,
}

/// `conntrack` (node sysctls kube-proxy sets in every mode; not applied by ipvs-proxier).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Conntrack {
    pub max_per_core: Option<i32>,
    pub min: Option<i32>,
    pub tcp_established_timeout: Option<GoDuration>,
    pub tcp_close_wait_timeout: Option<GoDuration>,
    pub tcp_be_liberal: bool,
    pub udp_timeout: GoDuration,
    pub udp_stream_timeout: GoDuration,
}

/// `logging` (component-base `LoggingConfiguration`). Only `verbosity` and `format: text`
/// mean something to ipvs-proxier.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Logging {
    pub format: String,
    /// Go's `TimeOrMetaDuration`: nanoseconds as a number, or a duration string.
    pub flush_frequency: Option<FlushFrequency>,
    pub verbosity: u32,
    #[serde(deserialize_with = "null_as_default")]
    pub vmodule: Vec<VModule>,
    pub options: LoggingOptions,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum FlushFrequency {
    Nanos(i64),
    Text(GoDuration),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct VModule {
    pub file_pattern: String,
    pub verbosity: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingOptions {
    pub json: StreamOptions,
    pub text: StreamOptions,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct StreamOptions {
    pub split_stream: bool,
    /// A resource.Quantity: kubeadm writes the string `"0"`.
    pub info_buffer_size: Option<serde_yaml::Value>,
}

/// Go decodes `null` into a map or slice as empty; serde's derive would reject it.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// A decoded file and the fields it had that v1alpha1 does not know.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub config: KubeProxyConfiguration,
    /// Full paths such as `ipvs.strictArp`, in the order found.
    pub unknown_fields: Vec<String>,
}

/// More unknown fields than this is not a typo but a different file format.
const MAX_UNKNOWN_FIELDS: usize = 64;

/// Parses one `KubeProxyConfiguration` document. `apiVersion` and `kind` are checked first so
/// that a v1alpha2 file or a whole ConfigMap gets a clear error rather than a list of unknown
/// fields.
pub fn parse(text: &str) -> Result<Parsed, ConfigError> {
    let mut value: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
    let field = |value: &serde_yaml::Value, name: &str| {
        value
            .get(name)
            .and_then(serde_yaml::Value::as_str)
            .map(str::to_owned)
    };
    let kind = field(&value, "kind").unwrap_or_default();
    if kind != KIND {
        return Err(ConfigError::Kind(kind));
    }
    match field(&value, "apiVersion").unwrap_or_default().as_str() {
        V1ALPHA1 => {}
        other => return Err(ConfigError::ApiVersion(other.to_owned())),
    }
    // Decode from text, not from the Value: serde_yaml then reports the path of a bad field.
    // Each unknown field found is removed and the decode retried, like kube-proxy's lenient
    // second pass.
    let mut unknown_fields = Vec::new();
    let mut current = text.to_owned();
    loop {
        match serde_yaml::from_str(&current) {
            Ok(config) => {
                return Ok(Parsed {
                    config,
                    unknown_fields,
                });
            }
            Err(e) => match decode_error(&e) {
                ConfigError::UnknownField { path }
                    if unknown_fields.len() < MAX_UNKNOWN_FIELDS
                        && remove_path(&mut value, &path) =>
                {
                    unknown_fields.push(path);
                    current = serde_yaml::to_string(&value)
                        .map_err(|e| ConfigError::Decode(e.to_string()))?;
                }
                other => return Err(other),
            },
        }
    }
}

/// Removes the field at `path` (`a.b[2].c`) from `value`; false if there is none.
fn remove_path(value: &mut serde_yaml::Value, path: &str) -> bool {
    let mut segments: Vec<&str> = path.split('.').collect();
    let Some(last) = segments.pop() else {
        return false;
    };
    let mut node = value;
    for segment in segments {
        let (name, indices) = split_indices(segment);
        let Some(next) = node.get_mut(name) else {
            return false;
        };
        node = next;
        for index in indices {
            let Some(next) = node.get_mut(index) else {
                return false;
            };
            node = next;
        }
    }
    node.as_mapping_mut().and_then(|m| m.remove(last)).is_some()
}

/// `vmodule[0]` -> (`vmodule`, [0]).
fn split_indices(segment: &str) -> (&str, Vec<usize>) {
    let name_end = segment.find('[').unwrap_or(segment.len());
    let indices = segment[name_end..]
        .split(['[', ']'])
        .filter_map(|n| n.parse().ok())
        .collect();
    (&segment[..name_end], indices)
}

/// Turns serde's "unknown field `x`, expected one of ..." into the field's full path.
fn decode_error(error: &serde_yaml::Error) -> ConfigError {
    let message = error.to_string();
    if let Some(at) = message.find("unknown field `") {
        let rest = &message[at + "unknown field `".len()..];
        if let Some(end) = rest.find('`') {
            let name = &rest[..end];
            // serde_yaml prefixes the message with the path of the enclosing mapping.
            let parent = message[..at].trim_end().trim_end_matches(':');
            let path = if parent.is_empty() || parent == "." {
                name.to_owned()
            } else {
                format!("{parent}.{name}")
            };
            return ConfigError::UnknownField { path };
        }
    }
    ConfigError::Decode(message)
}
