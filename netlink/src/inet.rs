//! Address families and transport protocols shared by IPVS and ipset.

use std::fmt;
use std::net::IpAddr;

/// Address family of a kernel object (`AF_INET` / `AF_INET6`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AddressFamily {
    Inet,
    Inet6,
}

impl AddressFamily {
    pub const AF_INET: u16 = 2;
    pub const AF_INET6: u16 = 10;

    pub const fn number(self) -> u16 {
        match self {
            Self::Inet => Self::AF_INET,
            Self::Inet6 => Self::AF_INET6,
        }
    }

    pub const fn from_number(n: u16) -> Option<Self> {
        match n {
            Self::AF_INET => Some(Self::Inet),
            Self::AF_INET6 => Some(Self::Inet6),
            _ => None,
        }
    }

    pub const fn of(addr: &IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => Self::Inet,
            IpAddr::V6(_) => Self::Inet6,
        }
    }

    /// The netmask that makes persistence per client address: all ones for IPv4 (sent as a
    /// big-endian value) and the prefix length 128 for IPv6. This is also what `ipvsadm` uses
    /// when `-M` is not given, so it is the default everywhere.
    pub const fn host_netmask(self) -> u32 {
        match self {
            Self::Inet => 0xffff_ffff,
            Self::Inet6 => 128,
        }
    }
}

/// Transport protocol of a virtual server or an ipset member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub const IPPROTO_TCP: u16 = 6;
    pub const IPPROTO_UDP: u16 = 17;
    pub const IPPROTO_SCTP: u16 = 132;

    pub const fn number(self) -> u16 {
        match self {
            Self::Tcp => Self::IPPROTO_TCP,
            Self::Udp => Self::IPPROTO_UDP,
            Self::Sctp => Self::IPPROTO_SCTP,
        }
    }

    pub const fn from_number(n: u16) -> Option<Self> {
        match n {
            Self::IPPROTO_TCP => Some(Self::Tcp),
            Self::IPPROTO_UDP => Some(Self::Udp),
            Self::IPPROTO_SCTP => Some(Self::Sctp),
            _ => None,
        }
    }

    /// Lower-case name as ipset entries and iptables `-p` spell it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Sctp => "sctp",
        }
    }

    /// The `ipvsadm` switch selecting this protocol.
    pub(crate) const fn ipvsadm_switch_str(self) -> &'static str {
        match self {
            Self::Tcp => "-t",
            Self::Udp => "-u",
            Self::Sctp => "--sctp-service",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        })
    }
}
