//! Typed diagnostics for input the proxier cannot (fully) use. Both the model and the
//! planner report through this one enum so a caller gets one sorted list.

use std::fmt;
use std::net::IpAddr;

use netlink::{AddressFamily, Protocol};

use super::{ServiceName, ServicePortName};

/// Kind and `namespace/name` of an object (namespace empty for Nodes).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectName {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
}

/// `Service default/web`, `Node node-1`.
impl fmt::Display for ObjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// How much a diagnostic matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// Expected in a healthy cluster (e.g. the other family's address of a dual-stack
    /// Service on a single-stack node); upstream logs these at high verbosity.
    Info,
    /// Part of an object was not programmed.
    Warning,
}

/// Something in the input that was skipped. Every variant names the object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Diagnostic {
    /// A manifest document whose `apiVersion`/`kind` is not a Service, EndpointSlice or
    /// Node (index is 0-based in the multi-document stream).
    UnknownKind {
        document: usize,
        api_version: String,
        kind: String,
    },
    /// A manifest document that is not valid YAML or not a valid object of its kind.
    UndecodableDocument { document: usize, error: String },
    /// Two objects of one kind with the same namespace/name; the one kept is chosen by
    /// content so the result does not depend on input order.
    DuplicateObject { object: ObjectName },
    /// An address or CIDR that does not parse.
    InvalidAddress {
        object: ObjectName,
        field: &'static str,
        value: String,
    },
    /// An address of a family this node does not proxy (the rest of the Service is planned).
    WrongFamily {
        service: ServiceName,
        field: &'static str,
        address: String,
        family: AddressFamily,
    },
    /// A port number outside 1..=65535.
    PortOutOfRange {
        object: ObjectName,
        port_name: String,
        field: &'static str,
        value: i64,
    },
    /// A protocol other than TCP, UDP or SCTP.
    UnknownProtocol {
        object: ObjectName,
        port_name: String,
        protocol: String,
    },
    /// `sessionAffinityConfig.clientIP.timeoutSeconds` outside 1..=86400; the API default is
    /// used instead.
    InvalidAffinityTimeout { service: ServiceName, value: i64 },
    /// A type=LoadBalancer ETP=Local Service without `healthCheckNodePort`.
    MissingHealthCheckNodePort { service: ServiceName },
    /// Two service ports claim one NodePort; `kept` (first in name order) keeps it, `lost`
    /// gets no NodePort virtual servers or set entries.
    NodePortClash {
        node_port: u16,
        protocol: Protocol,
        kept: ServicePortName,
        lost: ServicePortName,
    },
    /// Two service ports produce the same virtual server (e.g. a shared external IP and port).
    VirtualServerClash {
        virtual_server: String,
        kept: ServicePortName,
        lost: ServicePortName,
    },
    /// An EndpointSlice without the `kubernetes.io/service-name` label.
    SliceWithoutServiceLabel { slice: ObjectName },
    /// An EndpointSlice whose Service does not exist.
    SliceWithoutService {
        slice: ObjectName,
        service: ServiceName,
    },
    /// An EndpointSlice with `addressType: FQDN` or an unknown type.
    UnsupportedAddressType {
        slice: ObjectName,
        address_type: String,
    },
    /// An EndpointSlice port without a name (the controller always sets one, maybe "").
    SlicePortWithoutName { slice: ObjectName },
    /// An endpoint address whose family differs from its slice's `addressType`.
    EndpointWrongFamily { slice: ObjectName, address: IpAddr },
    /// The same endpoint for one service port in two places; one copy is kept (a local one
    /// first, then the one from the slice whose name sorts first).
    DuplicateEndpoint {
        service_port: ServicePortName,
        address: IpAddr,
        port: u16,
        slices: (String, String),
    },
}

impl Diagnostic {
    pub fn severity(&self) -> Severity {
        match self {
            Self::WrongFamily { .. } => Severity::Info,
            _ => Severity::Warning,
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownKind {
                document,
                api_version,
                kind,
            } => write!(
                f,
                "document {document}: ignoring unknown kind {kind:?} (apiVersion {api_version:?})"
            ),
            Self::UndecodableDocument { document, error } => {
                write!(f, "document {document}: cannot decode: {error}")
            }
            Self::DuplicateObject { object } => {
                write!(f, "{object}: defined more than once, keeping one copy")
            }
            Self::InvalidAddress {
                object,
                field,
                value,
            } => write!(f, "{object}: {field}: invalid address {value:?}, ignored"),
            Self::WrongFamily {
                service,
                field,
                address,
                family,
            } => write!(
                f,
                "Service {service}: {field}: {address} is {}, a family this node does not proxy",
                family_name(*family)
            ),
            Self::PortOutOfRange {
                object,
                port_name,
                field,
                value,
            } => write!(
                f,
                "{object}: port {port_name:?}: {field} {value} is out of range, port skipped"
            ),
            Self::UnknownProtocol {
                object,
                port_name,
                protocol,
            } => write!(
                f,
                "{object}: port {port_name:?}: unknown protocol {protocol:?}, port skipped"
            ),
            Self::InvalidAffinityTimeout { service, value } => write!(
                f,
                "Service {service}: session affinity timeout {value} out of range, using {}",
                super::DEFAULT_STICKY_SECONDS
            ),
            Self::MissingHealthCheckNodePort { service } => write!(
                f,
                "Service {service}: type LoadBalancer with externalTrafficPolicy Local but no healthCheckNodePort"
            ),
            Self::NodePortClash {
                node_port,
                protocol,
                kept,
                lost,
            } => write!(
                f,
                "NodePort {node_port}/{protocol} claimed by {kept} and {lost}: {lost} gets no NodePort"
            ),
            Self::VirtualServerClash {
                virtual_server,
                kept,
                lost,
            } => write!(
                f,
                "virtual server {virtual_server} claimed by {kept} and {lost}: kept for {kept}"
            ),
            Self::SliceWithoutServiceLabel { slice } => write!(
                f,
                "{slice}: no {} label, ignored",
                super::LABEL_SERVICE_NAME
            ),
            Self::SliceWithoutService { slice, service } => write!(
                f,
                "{slice}: Service {service} does not exist, endpoints unused"
            ),
            Self::UnsupportedAddressType {
                slice,
                address_type,
            } => write!(
                f,
                "{slice}: addressType {address_type:?} not supported, ignored"
            ),
            Self::SlicePortWithoutName { slice } => {
                write!(f, "{slice}: ignoring a port with no name")
            }
            Self::EndpointWrongFamily { slice, address } => write!(
                f,
                "{slice}: endpoint {address} does not match the slice's addressType, ignored"
            ),
            Self::DuplicateEndpoint {
                service_port,
                address,
                port,
                slices,
            } => write!(
                f,
                "Service port {service_port}: endpoint {} listed in EndpointSlices {} and {}, using one",
                netlink::ipvs::SocketText(*address, *port),
                slices.0,
                slices.1
            ),
        }
    }
}

fn family_name(f: AddressFamily) -> &'static str {
    match f {
        AddressFamily::Inet => "IPv4",
        AddressFamily::Inet6 => "IPv6",
    }
}
