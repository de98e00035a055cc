//! Typed ipset set types and members. Plain values: the planner builds them, the codec sends
//! them, and `Display` prints a member exactly as `ipset save` / `ipset list` do.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::inet::{AddressFamily, Protocol};

/// The set types kube-proxy uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SetType {
    HashIp,
    HashIpPort,
    HashIpPortIp,
    HashIpPortNet,
    HashNet,
    BitmapPort,
}

impl SetType {
    /// The kernel's type name (`IPSET_ATTR_TYPENAME`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::HashIp => "hash:ip",
            Self::HashIpPort => "hash:ip,port",
            Self::HashIpPortIp => "hash:ip,port,ip",
            Self::HashIpPortNet => "hash:ip,port,net",
            Self::HashNet => "hash:net",
            Self::BitmapPort => "bitmap:port",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [
            Self::HashIp,
            Self::HashIpPort,
            Self::HashIpPortIp,
            Self::HashIpPortNet,
            Self::HashNet,
            Self::BitmapPort,
        ]
        .into_iter()
        .find(|t| t.name() == name)
    }

    /// Whether the type stores addresses of one family (bitmap:port has none).
    pub const fn has_family(self) -> bool {
        !matches!(self, Self::BitmapPort)
    }
}

impl fmt::Display for SetType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a set is created.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SetSpec {
    pub name: String,
    pub kind: SetType,
    /// For hash types; ignored for bitmap:port.
    pub family: AddressFamily,
    /// Hash types: initial hash size and element limit.
    pub hash_size: u32,
    pub max_elements: u32,
    /// bitmap:port: the inclusive port range.
    pub port_range: (u16, u16),
}

impl SetSpec {
    /// kube-proxy's defaults: `hashsize 1024 maxelem 65536`, `range 0-65535`.
    pub fn new(name: impl Into<String>, kind: SetType, family: AddressFamily) -> Self {
        Self {
            name: name.into(),
            kind,
            family,
            hash_size: 1024,
            max_elements: 65536,
            port_range: (0, 65535),
        }
    }

    /// The `create` line of `ipset save` without the kernel-chosen tail (`bucketsize`,
    /// `initval`), which a comparison must strip from the real tool's output.
    pub fn create_line(&self) -> String {
        match self.kind {
            SetType::BitmapPort => format!(
                "create {} bitmap:port range {}-{}",
                self.name, self.port_range.0, self.port_range.1
            ),
            kind => format!(
                "create {} {} family {} hashsize {} maxelem {}",
                self.name,
                kind,
                match self.family {
                    AddressFamily::Inet => "inet",
                    AddressFamily::Inet6 => "inet6",
                },
                self.hash_size,
                self.max_elements
            ),
        }
    }
}

/// One member of a set, typed by the set type it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Member {
    /// hash:ip
    Ip(IpAddr),
    /// hash:ip,port
    IpPort {
        ip: IpAddr,
        protocol: Protocol,
        port: u16,
    },
    /// hash:ip,port,ip
    IpPortIp {
        ip: IpAddr,
        protocol: Protocol,
        port: u16,
        ip2: IpAddr,
    },
    /// hash:ip,port,net
    IpPortNet {
        ip: IpAddr,
        protocol: Protocol,
        port: u16,
        net: IpNet,
    },
    /// hash:net
    Net(IpNet),
    /// bitmap:port
    Port(u16),
}

impl Member {
    /// The set type that can hold this member.
    pub const fn set_type(&self) -> SetType {
        match self {
            Self::Ip(_) => SetType::HashIp,
            Self::IpPort { .. } => SetType::HashIpPort,
            Self::IpPortIp { .. } => SetType::HashIpPortIp,
            Self::IpPortNet { .. } => SetType::HashIpPortNet,
            Self::Net(_) => SetType::HashNet,
            Self::Port(_) => SetType::BitmapPort,
        }
    }

    /// The family of the addresses in the member; `None` for a bare port.
    pub fn family(&self) -> Option<AddressFamily> {
        match self {
            Self::Ip(ip)
            | Self::IpPort { ip, .. }
            | Self::IpPortIp { ip, .. }
            | Self::IpPortNet { ip, .. } => Some(AddressFamily::of(ip)),
            Self::Net(net) => Some(AddressFamily::of(&net.addr())),
            Self::Port(_) => None,
        }
    }
}

/// `10.96.0.10,udp:53`, `10.244.1.5,tcp:8080,10.244.1.5`, `fd00::1,tcp:80,fd00:1::/64`, `30080`.
impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip(ip) => write!(f, "{ip}"),
            Self::IpPort { ip, protocol, port } => write!(f, "{ip},{}:{port}", protocol.as_str()),
            Self::IpPortIp {
                ip,
                protocol,
                port,
                ip2,
            } => write!(f, "{ip},{}:{port},{ip2}", protocol.as_str()),
            Self::IpPortNet {
                ip,
                protocol,
                port,
                net,
            } => write!(f, "{ip},{}:{port},{net}", protocol.as_str()),
            Self::Net(net) => write!(f, "{net}"),
            Self::Port(port) => write!(f, "{port}"),
        }
    }
}
