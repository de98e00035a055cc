//! Typed IPVS virtual servers ("services") and real servers ("destinations").
//!
//! These are plain values with no I/O: the planner builds them, the codec encodes and decodes
//! them, and the renderer prints them in `ipvsadm -Sn` form. Constants come from
//! `include/uapi/linux/ip_vs.h` and are named once, here or in the codec.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

pub use crate::inet::{AddressFamily, Protocol};

/// What identifies a virtual server in the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ServiceKey {
    /// `protocol` + `addr` + `port`.
    Inet {
        protocol: Protocol,
        addr: IpAddr,
        port: u16,
    },
    /// A firewall-mark service: no protocol, address or port.
    Fwmark { family: AddressFamily, mark: u32 },
}

impl ServiceKey {
    pub const fn family(&self) -> AddressFamily {
        match self {
            Self::Inet { addr, .. } => AddressFamily::of(addr),
            Self::Fwmark { family, .. } => *family,
        }
    }

    /// The address, for keys that have one.
    pub const fn addr(&self) -> Option<IpAddr> {
        match self {
            Self::Inet { addr, .. } => Some(*addr),
            Self::Fwmark { .. } => None,
        }
    }
}

/// `VIP:port/PROTO` (kube-proxy's key form) or `FWM:mark/family`.
impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Inet {
                protocol,
                addr,
                port,
            } => write!(f, "{}/{protocol}", SocketText(*addr, *port)),
            Self::Fwmark { family, mark } => match family {
                AddressFamily::Inet => write!(f, "FWM:{mark}"),
                AddressFamily::Inet6 => write!(f, "FWM:{mark}/IPv6"),
            },
        }
    }
}

/// `1.2.3.4:80` or `[fd00::1]:80`.
#[derive(Debug, Clone, Copy)]
pub struct SocketText(pub IpAddr, pub u16);

impl fmt::Display for SocketText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(a) => write!(f, "{a}:{}", self.1),
            IpAddr::V6(a) => write!(f, "[{a}]:{}", self.1),
        }
    }
}

/// A scheduler name such as `rr`, `wrr` or `mh` (`IP_VS_SCHEDNAME_MAXLEN` is 16 with the NUL).
///
/// Kept inline (16 bytes, no heap allocation): every virtual server of the plan, of the
/// kernel view and of a sync's operations carries one, 100,000s at scale. The NUL padding
/// makes the derived order that of the names.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Scheduler {
    bytes: [u8; Scheduler::MAX_LEN],
    len: u8,
}

impl Scheduler {
    pub const MAX_LEN: usize = 15;

    /// Accepts any name the kernel could know: 1..=15 ASCII letters, digits or `_`.
    pub fn new(name: &str) -> Result<Self, InvalidName> {
        valid_kernel_name(name)?;
        let mut bytes = [0; Self::MAX_LEN];
        bytes[..name.len()].copy_from_slice(name.as_bytes());
        Ok(Self {
            bytes,
            // At most MAX_LEN (checked above), so it fits.
            len: name.len() as u8,
        })
    }

    pub fn rr() -> Self {
        let mut bytes = [0; Self::MAX_LEN];
        bytes[..2].copy_from_slice(b"rr");
        Self { bytes, len: 2 }
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII is ever stored (`new` checks it), so this never falls back.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Scheduler").field(&self.as_str()).finish()
    }
}

impl fmt::Display for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A scheduler or persistence-engine name the kernel could never accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid IPVS name {name:?}: expected 1 to 15 ASCII letters, digits or '_'")]
pub struct InvalidName {
    pub name: String,
}

fn valid_kernel_name(name: &str) -> Result<(), InvalidName> {
    let ok = !name.is_empty()
        && name.len() <= Scheduler::MAX_LEN
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(InvalidName {
            name: name.to_owned(),
        })
    }
}

/// Virtual-server flags (`IP_VS_SVC_F_*`). Sent to the kernel as `{flags, mask}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceFlags(pub u32);

impl ServiceFlags {
    pub const PERSISTENT: u32 = 0x0001;
    /// Set by the kernel on every hashed service; never meaningful to compare or send.
    pub const HASHED: u32 = 0x0002;
    pub const ONEPACKET: u32 = 0x0004;
    /// `sh-fallback` for sh, `mh-fallback` for mh.
    pub const SCHED1: u32 = 0x0008;
    /// `sh-port` for sh, `mh-port` for mh (kube-proxy sets it for mh).
    pub const SCHED2: u32 = 0x0010;
    pub const SCHED3: u32 = 0x0020;

    pub const fn contains(self, bits: u32) -> bool {
        self.0 & bits == bits
    }

    /// The flags as configuration: without the kernel-owned `HASHED` bit.
    pub const fn config(self) -> Self {
        Self(self.0 & !Self::HASHED)
    }
}

/// A virtual server as configured (what is sent; what a read returns minus counters).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Service {
    pub key: ServiceKey,
    pub scheduler: Scheduler,
    /// Configuration flags; `HASHED` is stripped on read.
    pub flags: ServiceFlags,
    /// Persistence timeout in seconds (meaningful with `PERSISTENT`).
    pub timeout: u32,
    /// Persistence granularity: a big-endian IPv4 mask value or an IPv6 prefix length.
    pub netmask: u32,
    /// Persistence engine, e.g. `sip`.
    pub persistence_engine: Option<String>,
}

impl Service {
    /// A plain service: no flags, no persistence, host netmask.
    pub fn new(key: ServiceKey, scheduler: Scheduler) -> Self {
        Self {
            netmask: key.family().host_netmask(),
            key,
            scheduler,
            flags: ServiceFlags::default(),
            timeout: 0,
            persistence_engine: None,
        }
    }
}

/// IPVS tunnel encapsulation (`IP_VS_CONN_F_TUNNEL_TYPE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TunnelType {
    Ipip,
    Gue,
    Gre,
}

impl TunnelType {
    pub const fn number(self) -> u8 {
        match self {
            Self::Ipip => 0,
            Self::Gue => 1,
            Self::Gre => 2,
        }
    }

    pub const fn from_number(n: u8) -> Option<Self> {
        match n {
            0 => Some(Self::Ipip),
            1 => Some(Self::Gue),
            2 => Some(Self::Gre),
            _ => None,
        }
    }
}

/// How packets reach a real server (`IP_VS_CONN_F_FWD_MASK` of the connection flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ForwardMethod {
    /// NAT; what kube-proxy uses for every real server.
    Masquerade,
    LocalNode,
    Tunnel {
        kind: TunnelType,
        /// UDP port for GUE (0 otherwise).
        port: u16,
        /// `IP_VS_TUNNEL_ENCAP_FLAG_*` bits.
        flags: u16,
    },
    DirectRoute,
    Bypass,
}

impl ForwardMethod {
    pub const MASQ: u32 = 0;
    pub const LOCALNODE: u32 = 1;
    pub const TUNNEL: u32 = 2;
    pub const DROUTE: u32 = 3;
    pub const BYPASS: u32 = 4;
    pub const MASK: u32 = 0x7;

    /// The `IPVS_DEST_ATTR_FWD_METHOD` value.
    pub const fn number(self) -> u32 {
        match self {
            Self::Masquerade => Self::MASQ,
            Self::LocalNode => Self::LOCALNODE,
            Self::Tunnel { .. } => Self::TUNNEL,
            Self::DirectRoute => Self::DROUTE,
            Self::Bypass => Self::BYPASS,
        }
    }
}

/// Identifies a real server within its virtual server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DestinationKey {
    pub addr: IpAddr,
    pub port: u16,
}

impl fmt::Display for DestinationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        SocketText(self.addr, self.port).fmt(f)
    }
}

/// A real server as configured.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Destination {
    pub addr: IpAddr,
    pub port: u16,
    pub forward: ForwardMethod,
    pub weight: u32,
    /// Upper connection threshold; 0 = none.
    pub upper_threshold: u32,
    /// Lower connection threshold; 0 = none.
    pub lower_threshold: u32,
}

impl Destination {
    /// A masqueraded real server with weight 1: kube-proxy's only kind.
    pub fn masq(addr: IpAddr, port: u16) -> Self {
        Self {
            addr,
            port,
            forward: ForwardMethod::Masquerade,
            weight: 1,
            upper_threshold: 0,
            lower_threshold: 0,
        }
    }

    pub const fn key(&self) -> DestinationKey {
        DestinationKey {
            addr: self.addr,
            port: self.port,
        }
    }
}

/// 64-bit traffic counters (`IPVS_STATS_ATTR_*`), read only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Stats {
    pub conns: u64,
    pub in_packets: u64,
    pub out_packets: u64,
    pub in_bytes: u64,
    pub out_bytes: u64,
    pub cps: u64,
    pub in_pps: u64,
    pub out_pps: u64,
    pub in_bps: u64,
    pub out_bps: u64,
}

/// A whole IPVS table, or the part of one a planner wants: services with their real servers,
/// in a stable order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    pub services: BTreeMap<ServiceKey, VirtualServer>,
}

/// One virtual server and its real servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualServer {
    pub service: Service,
    /// Shared, copy-on-write ([`Self::destinations_mut`]): a proxier's desired table and
    /// its view of the kernel hold the same real servers once they agree, and at 100,000
    /// real servers a second copy is ~8 MiB.
    pub destinations: Arc<BTreeMap<DestinationKey, Destination>>,
}

impl VirtualServer {
    pub fn new(service: Service) -> Self {
        Self {
            service,
            destinations: Arc::default(),
        }
    }

    /// The real servers for writing (copied first if shared).
    pub fn destinations_mut(&mut self) -> &mut BTreeMap<DestinationKey, Destination> {
        Arc::make_mut(&mut self.destinations)
    }
}

impl Table {
    /// Adds or replaces a service, keeping real servers already recorded for it.
    pub fn upsert_service(&mut self, service: Service) -> &mut VirtualServer {
        let entry = self
            .services
            .entry(service.key)
            .or_insert_with(|| VirtualServer::new(service.clone()));
        entry.service = service;
        entry
    }

    /// Number of real servers over all services.
    pub fn destination_count(&self) -> usize {
        self.services.values().map(|v| v.destinations.len()).sum()
    }

    /// The table as `ipvsadm -Sn` prints it, services and real servers sorted (the kernel's
    /// own order is its hash order, so comparisons sort both sides).
    pub fn to_ipvsadm_save(&self) -> String {
        let mut out = String::new();
        for vs in self.services.values() {
            crate::ipvs::render::write_service(&mut out, &vs.service);
            for d in vs.destinations.values() {
                crate::ipvs::render::write_destination(&mut out, &vs.service.key, d);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedulers_are_inline_and_ordered_as_their_names() {
        let mut names = vec![
            "wrr",
            "rr",
            "mh",
            "rrr",
            "r",
            "sed",
            "wlc",
            "a_15_chars_long",
        ];
        let mut schedulers: Vec<Scheduler> =
            names.iter().map(|n| Scheduler::new(n).unwrap()).collect();
        names.sort_unstable();
        schedulers.sort();
        let sorted: Vec<&str> = schedulers.iter().map(Scheduler::as_str).collect();
        assert_eq!(sorted, names);
        assert_eq!(Scheduler::rr(), Scheduler::new("rr").unwrap());
        assert_eq!(
            format!("{:?} {}", Scheduler::rr(), Scheduler::rr()),
            "Scheduler(\"rr\") rr"
        );
        assert_eq!(std::mem::size_of::<Scheduler>(), 16);
        for bad in ["", "sixteen_chars_xx", "w-rr", "é"] {
            assert!(Scheduler::new(bad).is_err(), "{bad:?}");
        }
    }
}
