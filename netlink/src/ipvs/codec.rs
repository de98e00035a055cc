//! The IPVS generic-netlink wire format: every `IPVS_CMD_*` request we send and every reply
//! the kernel sends, as pure encode/decode functions with no I/O.
//!
//! This module owns the numeric constants of `include/uapi/linux/ip_vs.h` that are not already
//! named in [`super::types`] (flags, forwarding methods) or [`crate::inet`] (families,
//! protocols): each number appears once, here.
//!
//! Two message types, one per direction, because the kernel reuses command numbers across
//! directions (a dumped service comes back as `IPVS_CMD_NEW_SERVICE`):
//! - [`IpvsRequest`]: what a client sends (and what `ipvsadm` sends, so captures of it parse);
//! - [`IpvsReply`]: what the kernel answers to `GET_*` requests.
//!
//! Both plug into `netlink-packet-generic` (`GenlFamily` + `Emitable` +
//! `ParseableParametrized<[u8], GenlHeader>`), and [`encode_request`] appends a whole netlink
//! message to a buffer directly, which is what the batch path uses.
//!
//! Wire choices, each matching what `ipvsadm` 1.31 sends on Linux 6.1 (see the capture tests):
//! addresses always take the 16 bytes of `union nf_inet_addr` (IPv4 in the first 4, zero
//! padded); nested attributes carry `NLA_F_NESTED` in requests (the kernel's replies do not);
//! the IPv4 persistence netmask travels as the mask's bytes in network order, the IPv6 one as
//! a native-endian prefix length (the kernel stores the raw 32 bits and interprets them per
//! family).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{
    DecodeError, Emitable, NLA_F_NESTED, NLA_HEADER_SIZE, NLA_TYPE_MASK, NLM_F_ACK, NLM_F_DUMP,
    NLM_F_REQUEST, NlaBuffer, NlasIterator, ParseableParametrized, parse_u8, parse_u16,
    parse_u16_be, parse_u32, parse_u64,
};
use netlink_packet_generic::{GenlFamily, GenlHeader};

use super::types::{
    AddressFamily, Destination, DestinationKey, ForwardMethod, Protocol, Scheduler, Service,
    ServiceFlags, ServiceKey, Stats, TunnelType,
};
use crate::frame::{align4, split_datagram};

/// `IPVS_GENL_NAME`.
pub const FAMILY_NAME: &str = "IPVS";
/// `IPVS_GENL_VERSION`.
pub const FAMILY_VERSION: u8 = 1;

/// `IPVS_CMD_*`.
pub mod cmd {
    pub const NEW_SERVICE: u8 = 1;
    pub const SET_SERVICE: u8 = 2;
    pub const DEL_SERVICE: u8 = 3;
    pub const GET_SERVICE: u8 = 4;
    pub const NEW_DEST: u8 = 5;
    pub const SET_DEST: u8 = 6;
    pub const DEL_DEST: u8 = 7;
    pub const GET_DEST: u8 = 8;
    pub const NEW_DAEMON: u8 = 9;
    pub const DEL_DAEMON: u8 = 10;
    pub const GET_DAEMON: u8 = 11;
    pub const SET_CONFIG: u8 = 12;
    pub const GET_CONFIG: u8 = 13;
    /// Only used by the kernel, as the command of a `GET_INFO` reply.
    pub const SET_INFO: u8 = 14;
    pub const GET_INFO: u8 = 15;
    pub const ZERO: u8 = 16;
    pub const FLUSH: u8 = 17;
}

/// `IPVS_CMD_ATTR_*`: top-level attributes.
pub mod cmd_attr {
    pub const SERVICE: u16 = 1;
    pub const DEST: u16 = 2;
    pub const DAEMON: u16 = 3;
    pub const TIMEOUT_TCP: u16 = 4;
    pub const TIMEOUT_TCP_FIN: u16 = 5;
    pub const TIMEOUT_UDP: u16 = 6;
}

/// `IPVS_SVC_ATTR_*`: nested in `SERVICE`.
pub mod svc_attr {
    pub const AF: u16 = 1;
    pub const PROTOCOL: u16 = 2;
    pub const ADDR: u16 = 3;
    pub const PORT: u16 = 4;
    pub const FWMARK: u16 = 5;
    pub const SCHED_NAME: u16 = 6;
    pub const FLAGS: u16 = 7;
    pub const TIMEOUT: u16 = 8;
    pub const NETMASK: u16 = 9;
    pub const STATS: u16 = 10;
    pub const PE_NAME: u16 = 11;
    pub const STATS64: u16 = 12;
}

/// `IPVS_DEST_ATTR_*`: nested in `DEST`.
pub mod dest_attr {
    pub const ADDR: u16 = 1;
    pub const PORT: u16 = 2;
    pub const FWD_METHOD: u16 = 3;
    pub const WEIGHT: u16 = 4;
    pub const U_THRESH: u16 = 5;
    pub const L_THRESH: u16 = 6;
    pub const ACTIVE_CONNS: u16 = 7;
    pub const INACT_CONNS: u16 = 8;
    pub const PERSIST_CONNS: u16 = 9;
    pub const STATS: u16 = 10;
    pub const ADDR_FAMILY: u16 = 11;
    pub const STATS64: u16 = 12;
    pub const TUN_TYPE: u16 = 13;
    pub const TUN_PORT: u16 = 14;
    pub const TUN_FLAGS: u16 = 15;
}

/// `IPVS_STATS_ATTR_*`: nested in `STATS` (u32 values) and `STATS64` (u64 values).
pub mod stats_attr {
    pub const CONNS: u16 = 1;
    pub const INPKTS: u16 = 2;
    pub const OUTPKTS: u16 = 3;
    pub const INBYTES: u16 = 4;
    pub const OUTBYTES: u16 = 5;
    pub const CPS: u16 = 6;
    pub const INPPS: u16 = 7;
    pub const OUTPPS: u16 = 8;
    pub const INBPS: u16 = 9;
    pub const OUTBPS: u16 = 10;
    pub const PAD: u16 = 11;
}

/// `IPVS_INFO_ATTR_*`: in a `GET_INFO` reply.
pub mod info_attr {
    pub const VERSION: u16 = 1;
    pub const CONN_TAB_SIZE: u16 = 2;
}

/// `sizeof(union nf_inet_addr)`.
const INET_ADDR_LEN: usize = 16;
pub use crate::frame::NLMSG_HDR_LEN;
/// `sizeof(struct genlmsghdr)`.
pub const GENL_HDR_LEN: usize = 4;

/// An attribute this crate does not interpret, kept verbatim (kind without the
/// `NLA_F_NESTED` / `NLA_F_NET_BYTEORDER` bits). Newer kernels add attributes; reading them
/// must never fail.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RawAttr {
    pub kind: u16,
    pub value: Vec<u8>,
}

/// A virtual server as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEntry {
    /// The configuration (with the kernel-owned `HASHED` flag stripped).
    pub service: Service,
    pub stats: Stats,
    /// Service attributes this crate does not know.
    pub unknown: Vec<RawAttr>,
}

/// A real server as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationEntry {
    pub destination: Destination,
    pub active_conns: u32,
    pub inactive_conns: u32,
    pub persistent_conns: u32,
    pub stats: Stats,
    /// Destination attributes this crate does not know.
    pub unknown: Vec<RawAttr>,
}

/// Connection timeouts in seconds (`ipvsadm --set tcp tcpfin udp`). On write, 0 leaves a
/// value unchanged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Timeouts {
    pub tcp: u32,
    pub tcp_fin: u32,
    pub udp: u32,
}

/// The answer to `GET_INFO`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct IpvsInfo {
    /// `IP_VS_VERSION_CODE` of the kernel, e.g. `0x010201` for 1.2.1.
    pub version: u32,
    /// Size of the connection hash table.
    pub conn_table_size: u32,
}

impl IpvsInfo {
    /// `1.2.1`, as `ipvsadm` prints it.
    pub fn version_string(&self) -> String {
        let v = self.version;
        format!("{}.{}.{}", (v >> 16) & 0xff, (v >> 8) & 0xff, v & 0xff)
    }
}

/// A request to the IPVS family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpvsRequest {
    NewService(Service),
    SetService(Service),
    DelService(ServiceKey),
    /// One service; the kernel answers with an [`IpvsReply::Service`].
    GetService(ServiceKey),
    /// `GET_SERVICE` with `NLM_F_DUMP`: every service.
    DumpServices,
    NewDestination {
        service: ServiceKey,
        destination: Destination,
    },
    SetDestination {
        service: ServiceKey,
        destination: Destination,
    },
    DelDestination {
        service: ServiceKey,
        destination: DestinationKey,
    },
    /// `GET_DEST` with `NLM_F_DUMP`: the real servers of one service.
    DumpDestinations(ServiceKey),
    /// Zero the counters of one service, or of everything.
    Zero(Option<ServiceKey>),
    Flush,
    SetConfig(Timeouts),
    GetConfig,
    GetInfo,
}

impl IpvsRequest {
    /// `NLM_F_*` flags this request is sent with: every request asks for an ack (so a batch
    /// gets one answer per message), dumps ask for a dump.
    pub fn netlink_flags(&self) -> u16 {
        match self {
            Self::DumpServices | Self::DumpDestinations(_) => NLM_F_REQUEST | NLM_F_DUMP,
            _ => NLM_F_REQUEST | NLM_F_ACK,
        }
    }

    fn attrs(&self, w: &mut AttrWriter) {
        match self {
            Self::NewService(s) | Self::SetService(s) => {
                w.nest(cmd_attr::SERVICE, true, |w| write_service(w, s));
            }
            Self::DelService(k) | Self::GetService(k) | Self::DumpDestinations(k) => {
                w.nest(cmd_attr::SERVICE, true, |w| write_service_key(w, k));
            }
            Self::Zero(Some(k)) => w.nest(cmd_attr::SERVICE, true, |w| write_service_key(w, k)),
            Self::NewDestination {
                service,
                destination,
            }
            | Self::SetDestination {
                service,
                destination,
            } => {
                w.nest(cmd_attr::SERVICE, true, |w| write_service_key(w, service));
                w.nest(cmd_attr::DEST, true, |w| write_destination(w, destination));
            }
            Self::DelDestination {
                service,
                destination,
            } => {
                w.nest(cmd_attr::SERVICE, true, |w| write_service_key(w, service));
                w.nest(cmd_attr::DEST, true, |w| {
                    write_destination_key(w, destination)
                });
            }
            Self::SetConfig(t) => write_timeouts(w, t),
            Self::DumpServices
            | Self::Zero(None)
            | Self::Flush
            | Self::GetConfig
            | Self::GetInfo => {}
        }
    }

    /// The attributes of this request (the bytes after the genl header).
    pub fn attr_bytes(&self) -> Vec<u8> {
        let mut w = AttrWriter(Vec::with_capacity(160));
        self.attrs(&mut w);
        w.0
    }
}

impl GenlFamily for IpvsRequest {
    fn family_name() -> &'static str {
        FAMILY_NAME
    }

    fn command(&self) -> u8 {
        match self {
            Self::NewService(_) => cmd::NEW_SERVICE,
            Self::SetService(_) => cmd::SET_SERVICE,
            Self::DelService(_) => cmd::DEL_SERVICE,
            Self::GetService(_) | Self::DumpServices => cmd::GET_SERVICE,
            Self::NewDestination { .. } => cmd::NEW_DEST,
            Self::SetDestination { .. } => cmd::SET_DEST,
            Self::DelDestination { .. } => cmd::DEL_DEST,
            Self::DumpDestinations(_) => cmd::GET_DEST,
            Self::Zero(_) => cmd::ZERO,
            Self::Flush => cmd::FLUSH,
            Self::SetConfig(_) => cmd::SET_CONFIG,
            Self::GetConfig => cmd::GET_CONFIG,
            Self::GetInfo => cmd::GET_INFO,
        }
    }

    fn version(&self) -> u8 {
        FAMILY_VERSION
    }
}

impl Emitable for IpvsRequest {
    fn buffer_len(&self) -> usize {
        let mut w = AttrWriter(Vec::new());
        self.attrs(&mut w);
        w.0.len()
    }

    fn emit(&self, buffer: &mut [u8]) {
        let bytes = self.attr_bytes();
        buffer[..bytes.len()].copy_from_slice(&bytes);
    }
}

/// Parses a request, e.g. one `ipvsadm` sent. A `GET_SERVICE` with no service attribute is a
/// dump and a `GET_DEST` always is (the kernel has no single-destination get); extra service
/// attributes that `ipvsadm` adds to key-only commands are ignored.
impl ParseableParametrized<[u8], GenlHeader> for IpvsRequest {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        let top = TopAttrs::parse(buf)?;
        let service = || -> Result<ServiceAttrs, DecodeError> {
            ServiceAttrs::parse(top.service.ok_or("missing IPVS_CMD_ATTR_SERVICE")?)
        };
        let dest = || -> Result<DestAttrs, DecodeError> {
            DestAttrs::parse(top.dest.ok_or("missing IPVS_CMD_ATTR_DEST")?)
        };
        Ok(match header.cmd {
            cmd::NEW_SERVICE => Self::NewService(service()?.service()?),
            cmd::SET_SERVICE => Self::SetService(service()?.service()?),
            cmd::DEL_SERVICE => Self::DelService(service()?.key()?),
            cmd::GET_SERVICE => match top.service {
                Some(_) => Self::GetService(service()?.key()?),
                None => Self::DumpServices,
            },
            cmd::NEW_DEST => Self::NewDestination {
                service: service()?.key()?,
                destination: dest()?.destination()?,
            },
            cmd::SET_DEST => Self::SetDestination {
                service: service()?.key()?,
                destination: dest()?.destination()?,
            },
            cmd::DEL_DEST => Self::DelDestination {
                service: service()?.key()?,
                destination: dest()?.key()?,
            },
            cmd::GET_DEST => Self::DumpDestinations(service()?.key()?),
            cmd::ZERO => Self::Zero(match top.service {
                Some(_) => Some(service()?.key()?),
                None => None,
            }),
            cmd::FLUSH => Self::Flush,
            cmd::SET_CONFIG => Self::SetConfig(top.timeouts),
            cmd::GET_CONFIG => Self::GetConfig,
            cmd::GET_INFO => Self::GetInfo,
            other => return Err(format!("unsupported IPVS request command {other}").into()),
        })
    }
}

/// What the kernel answers to a `GET_*` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpvsReply {
    /// One service of a `GET_SERVICE` (command `NEW_SERVICE`).
    Service(ServiceEntry),
    /// One real server of a `GET_DEST` dump (command `NEW_DEST`).
    Destination(DestinationEntry),
    /// The answer to `GET_CONFIG` (command `SET_CONFIG`).
    Config(Timeouts),
    /// The answer to `GET_INFO` (command `SET_INFO`).
    Info(IpvsInfo),
    /// Anything else (e.g. the sync daemon's state), kept raw.
    Other { cmd: u8, attrs: Vec<RawAttr> },
}

impl GenlFamily for IpvsReply {
    fn family_name() -> &'static str {
        FAMILY_NAME
    }

    fn command(&self) -> u8 {
        match self {
            Self::Service(_) => cmd::NEW_SERVICE,
            Self::Destination(_) => cmd::NEW_DEST,
            Self::Config(_) => cmd::SET_CONFIG,
            Self::Info(_) => cmd::SET_INFO,
            Self::Other { cmd, .. } => *cmd,
        }
    }

    fn version(&self) -> u8 {
        FAMILY_VERSION
    }
}

impl IpvsReply {
    /// Writes the attributes the way the kernel (6.1, `ip_vs_genl_fill_*`) does: this is what
    /// makes replies testable byte for byte in both directions.
    fn attrs(&self, w: &mut AttrWriter) {
        match self {
            Self::Service(e) => w.nest(cmd_attr::SERVICE, false, |w| write_service_entry(w, e)),
            Self::Destination(e) => {
                w.nest(cmd_attr::DEST, false, |w| write_destination_entry(w, e))
            }
            Self::Config(t) => write_timeouts(w, t),
            Self::Info(i) => {
                w.u32(info_attr::VERSION, i.version);
                w.u32(info_attr::CONN_TAB_SIZE, i.conn_table_size);
            }
            Self::Other { attrs, .. } => {
                for a in attrs {
                    w.bytes(a.kind, &a.value);
                }
            }
        }
    }

    pub fn attr_bytes(&self) -> Vec<u8> {
        let mut w = AttrWriter(Vec::new());
        self.attrs(&mut w);
        w.0
    }
}

impl Emitable for IpvsReply {
    fn buffer_len(&self) -> usize {
        self.attr_bytes().len()
    }

    fn emit(&self, buffer: &mut [u8]) {
        let bytes = self.attr_bytes();
        buffer[..bytes.len()].copy_from_slice(&bytes);
    }
}

impl ParseableParametrized<[u8], GenlHeader> for IpvsReply {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        Ok(match header.cmd {
            cmd::NEW_SERVICE => {
                let top = TopAttrs::parse(buf)?;
                let attrs =
                    ServiceAttrs::parse(top.service.ok_or("service reply without service")?)?;
                Self::Service(attrs.entry()?)
            }
            cmd::NEW_DEST => {
                let top = TopAttrs::parse(buf)?;
                let attrs =
                    DestAttrs::parse(top.dest.ok_or("destination reply without destination")?)?;
                Self::Destination(attrs.entry()?)
            }
            cmd::SET_CONFIG => Self::Config(TopAttrs::parse(buf)?.timeouts),
            cmd::SET_INFO => {
                let mut info = IpvsInfo::default();
                for nla in NlasIterator::new(buf) {
                    let nla = nla?;
                    match nla.kind() {
                        info_attr::VERSION => info.version = parse_u32(nla.value())?,
                        info_attr::CONN_TAB_SIZE => info.conn_table_size = parse_u32(nla.value())?,
                        _ => {}
                    }
                }
                Self::Info(info)
            }
            other => Self::Other {
                cmd: other,
                attrs: raw_attrs(buf)?,
            },
        })
    }
}

/// Appends one complete netlink message (header, genl header, attributes) for `request` to
/// `out`: the batch path builds a whole `sendmsg` buffer this way without intermediate
/// allocations per message.
pub fn encode_request(
    out: &mut Vec<u8>,
    family_id: u16,
    seq: u32,
    flags: u16,
    request: &IpvsRequest,
) {
    let start = out.len();
    out.extend_from_slice(&[0; NLMSG_HDR_LEN]);
    out.extend_from_slice(&[request.command(), FAMILY_VERSION, 0, 0]);
    let mut w = AttrWriter(std::mem::take(out));
    request.attrs(&mut w);
    *out = w.0;
    let len = u32::try_from(out.len() - start).unwrap_or(u32::MAX);
    // nlmsghdr: len, type, flags, seq, pid (0: the kernel fills in our port id).
    out[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    out[start + 4..start + 6].copy_from_slice(&family_id.to_ne_bytes());
    out[start + 6..start + 8].copy_from_slice(&flags.to_ne_bytes());
    out[start + 8..start + 12].copy_from_slice(&seq.to_ne_bytes());
    out[start + 12..start + 16].copy_from_slice(&0u32.to_ne_bytes());
}

/// The fixed header of one netlink message in a received datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageHeader {
    pub length: u32,
    pub message_type: u16,
    pub flags: u16,
    pub seq: u32,
    pub port: u32,
}

/// Splits a received datagram into its netlink messages: `(header, payload)` pairs. Pure and
/// allocation free, for the ack-reading loop of the batch path.
pub fn split_messages(
    buf: &[u8],
) -> impl Iterator<Item = Result<(MessageHeader, &[u8]), DecodeError>> {
    split_datagram(buf).map(|message| {
        let m = message?;
        let header = MessageHeader {
            length: parse_u32(&m[0..4])?,
            message_type: parse_u16(&m[4..6])?,
            flags: parse_u16(&m[6..8])?,
            seq: parse_u32(&m[8..12])?,
            port: parse_u32(&m[12..16])?,
        };
        Ok((header, &m[NLMSG_HDR_LEN..]))
    })
}

/// `CTRL_ATTR_FAMILY_ID` of the generic netlink controller.
const CTRL_ATTR_FAMILY_ID: u16 = 1;

/// The family id in one message of the controller's answer to `CTRL_CMD_GETFAMILY` (the
/// payload after the netlink header: genl header, then attributes); `None` when the message
/// names none.
///
/// Read here rather than with `netlink_packet_generic::ctrl::GenlCtrl`, whose parser panics
/// on some malformed attributes (a `CTRL_ATTR_POLICY` nest holding a value shorter than an
/// attribute header: it reads it with an unchecked `NlaBuffer`), found by
/// `tests/fuzz_decoders.rs`. Only the id is needed.
pub fn ctrl_family_id(payload: &[u8]) -> Result<Option<u16>, DecodeError> {
    let attrs = payload
        .get(GENL_HDR_LEN..)
        .ok_or("generic netlink message shorter than its header")?;
    let mut id = None;
    for nla in NlasIterator::new(attrs) {
        let nla = nla?;
        if nla.kind() == CTRL_ATTR_FAMILY_ID {
            id = Some(parse_u16(nla.value())?);
        }
    }
    Ok(id)
}

/// The errno of an `NLMSG_ERROR` payload: 0 for an ack, a negative errno for a failure.
pub fn error_code(payload: &[u8]) -> Result<i32, DecodeError> {
    let bytes = payload.get(0..4).ok_or("NLMSG_ERROR too short")?;
    Ok(i32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

// ---------------------------------------------------------------------------------------
// Attribute writing

/// Appends netlink attributes to a byte vector (4-byte aligned, zero padded).
struct AttrWriter(Vec<u8>);

impl AttrWriter {
    fn bytes(&mut self, kind: u16, value: &[u8]) {
        let len = u16::try_from(NLA_HEADER_SIZE + value.len()).unwrap_or(u16::MAX);
        self.0.extend_from_slice(&len.to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(value);
        self.pad();
    }

    fn pad(&mut self) {
        let aligned = align4(self.0.len());
        self.0.resize(aligned, 0);
    }

    fn u8(&mut self, kind: u16, v: u8) {
        self.bytes(kind, &[v]);
    }

    fn u16(&mut self, kind: u16, v: u16) {
        self.bytes(kind, &v.to_ne_bytes());
    }

    fn parse_u16_be(&mut self, kind: u16, v: u16) {
        self.bytes(kind, &v.to_be_bytes());
    }

    fn u32(&mut self, kind: u16, v: u32) {
        self.bytes(kind, &v.to_ne_bytes());
    }

    fn u64(&mut self, kind: u16, v: u64) {
        self.bytes(kind, &v.to_ne_bytes());
    }

    /// A NUL-terminated string (`NLA_NUL_STRING`).
    fn string(&mut self, kind: u16, s: &str) {
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(s.as_bytes());
        v.push(0);
        self.bytes(kind, &v);
    }

    fn addr(&mut self, kind: u16, addr: &IpAddr) {
        self.bytes(kind, &inet_addr_bytes(addr));
    }

    /// A nested attribute; `flag` sets `NLA_F_NESTED` (requests do, kernel replies do not).
    fn nest(&mut self, kind: u16, flag: bool, body: impl FnOnce(&mut Self)) {
        let start = self.0.len();
        self.0.extend_from_slice(&[0; NLA_HEADER_SIZE]);
        body(self);
        let len = u16::try_from(self.0.len() - start).unwrap_or(u16::MAX);
        let kind = if flag { kind | NLA_F_NESTED } else { kind };
        self.0[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self.0[start + 2..start + 4].copy_from_slice(&kind.to_ne_bytes());
    }
}

fn inet_addr_bytes(addr: &IpAddr) -> [u8; INET_ADDR_LEN] {
    let mut out = [0; INET_ADDR_LEN];
    match addr {
        IpAddr::V4(a) => out[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => out.copy_from_slice(&a.octets()),
    }
    out
}

/// `{flags, mask}`: the mask says which bits of `flags` the kernel should take; ours is all
/// ones because a service's flags are always sent whole.
fn flags_bytes(flags: u32) -> [u8; 8] {
    let mut out = [0; 8];
    out[..4].copy_from_slice(&flags.to_ne_bytes());
    out[4..].copy_from_slice(&u32::MAX.to_ne_bytes());
    out
}

fn netmask_bytes(family: AddressFamily, netmask: u32) -> [u8; 4] {
    match family {
        AddressFamily::Inet => netmask.to_be_bytes(),
        AddressFamily::Inet6 => netmask.to_ne_bytes(),
    }
}

fn write_service_key(w: &mut AttrWriter, key: &ServiceKey) {
    w.u16(svc_attr::AF, key.family().number());
    match key {
        ServiceKey::Inet {
            protocol,
            addr,
            port,
        } => {
            w.u16(svc_attr::PROTOCOL, protocol.number());
            w.addr(svc_attr::ADDR, addr);
            w.parse_u16_be(svc_attr::PORT, *port);
        }
        ServiceKey::Fwmark { mark, .. } => w.u32(svc_attr::FWMARK, *mark),
    }
}

/// The full service, in `ipvsadm`'s attribute order.
fn write_service(w: &mut AttrWriter, s: &Service) {
    write_service_key(w, &s.key);
    w.string(svc_attr::SCHED_NAME, s.scheduler.as_str());
    if let Some(pe) = &s.persistence_engine {
        w.string(svc_attr::PE_NAME, pe);
    }
    w.bytes(svc_attr::FLAGS, &flags_bytes(s.flags.config().0));
    w.u32(svc_attr::TIMEOUT, s.timeout);
    w.bytes(svc_attr::NETMASK, &netmask_bytes(s.key.family(), s.netmask));
}

/// A service as the kernel's `ip_vs_genl_fill_service` writes it. The kernel reports only
/// hashed services, so `HASHED` is put back.
fn write_service_entry(w: &mut AttrWriter, e: &ServiceEntry) {
    let s = &e.service;
    write_service_key(w, &s.key);
    w.string(svc_attr::SCHED_NAME, s.scheduler.as_str());
    if let Some(pe) = &s.persistence_engine {
        w.string(svc_attr::PE_NAME, pe);
    }
    w.bytes(
        svc_attr::FLAGS,
        &flags_bytes(s.flags.0 | ServiceFlags::HASHED),
    );
    w.u32(svc_attr::TIMEOUT, s.timeout);
    w.bytes(svc_attr::NETMASK, &netmask_bytes(s.key.family(), s.netmask));
    write_stats(w, svc_attr::STATS, svc_attr::STATS64, &e.stats);
    for a in &e.unknown {
        w.bytes(a.kind, &a.value);
    }
}

/// The tunnel attributes of a real server: zero unless it tunnels.
fn tunnel_parts(f: &ForwardMethod) -> (u8, u16, u16) {
    match f {
        ForwardMethod::Tunnel { kind, port, flags } => (kind.number(), *port, *flags),
        _ => (0, 0, 0),
    }
}

fn write_destination_key(w: &mut AttrWriter, d: &DestinationKey) {
    w.u16(dest_attr::ADDR_FAMILY, AddressFamily::of(&d.addr).number());
    w.addr(dest_attr::ADDR, &d.addr);
    w.parse_u16_be(dest_attr::PORT, d.port);
}

/// The full real server, in `ipvsadm`'s attribute order.
fn write_destination(w: &mut AttrWriter, d: &Destination) {
    write_destination_key(w, &d.key());
    w.u32(dest_attr::FWD_METHOD, d.forward.number());
    w.u32(dest_attr::WEIGHT, d.weight);
    let (tun_type, tun_port, tun_flags) = tunnel_parts(&d.forward);
    w.u8(dest_attr::TUN_TYPE, tun_type);
    w.parse_u16_be(dest_attr::TUN_PORT, tun_port);
    w.u16(dest_attr::TUN_FLAGS, tun_flags);
    w.u32(dest_attr::U_THRESH, d.upper_threshold);
    w.u32(dest_attr::L_THRESH, d.lower_threshold);
}

/// A real server as the kernel's `ip_vs_genl_fill_dest` writes it.
fn write_destination_entry(w: &mut AttrWriter, e: &DestinationEntry) {
    let d = &e.destination;
    w.addr(dest_attr::ADDR, &d.addr);
    w.parse_u16_be(dest_attr::PORT, d.port);
    w.u32(dest_attr::FWD_METHOD, d.forward.number());
    w.u32(dest_attr::WEIGHT, d.weight);
    let (tun_type, tun_port, tun_flags) = tunnel_parts(&d.forward);
    w.u8(dest_attr::TUN_TYPE, tun_type);
    w.parse_u16_be(dest_attr::TUN_PORT, tun_port);
    w.u16(dest_attr::TUN_FLAGS, tun_flags);
    w.u32(dest_attr::U_THRESH, d.upper_threshold);
    w.u32(dest_attr::L_THRESH, d.lower_threshold);
    w.u32(dest_attr::ACTIVE_CONNS, e.active_conns);
    w.u32(dest_attr::INACT_CONNS, e.inactive_conns);
    w.u32(dest_attr::PERSIST_CONNS, e.persistent_conns);
    w.u16(dest_attr::ADDR_FAMILY, AddressFamily::of(&d.addr).number());
    write_stats(w, dest_attr::STATS, dest_attr::STATS64, &e.stats);
    for a in &e.unknown {
        w.bytes(a.kind, &a.value);
    }
}

fn stats_values(s: &Stats) -> [(u16, u64); 10] {
    [
        (stats_attr::CONNS, s.conns),
        (stats_attr::INPKTS, s.in_packets),
        (stats_attr::OUTPKTS, s.out_packets),
        (stats_attr::INBYTES, s.in_bytes),
        (stats_attr::OUTBYTES, s.out_bytes),
        (stats_attr::CPS, s.cps),
        (stats_attr::INPPS, s.in_pps),
        (stats_attr::OUTPPS, s.out_pps),
        (stats_attr::INBPS, s.in_bps),
        (stats_attr::OUTBPS, s.out_bps),
    ]
}

/// Both stats nests; the kernel fills the "32-bit" one by truncating the 64-bit counters,
/// except the byte counters, which are u64 in both.
fn write_stats(w: &mut AttrWriter, kind32: u16, kind64: u16, s: &Stats) {
    w.nest(kind32, false, |w| {
        for (k, v) in stats_values(s) {
            match k {
                stats_attr::INBYTES | stats_attr::OUTBYTES => w.u64(k, v),
                _ => w.u32(k, v as u32),
            }
        }
    });
    w.nest(kind64, false, |w| {
        for (k, v) in stats_values(s) {
            w.u64(k, v);
        }
    });
}

fn write_timeouts(w: &mut AttrWriter, t: &Timeouts) {
    w.u32(cmd_attr::TIMEOUT_TCP, t.tcp);
    w.u32(cmd_attr::TIMEOUT_TCP_FIN, t.tcp_fin);
    w.u32(cmd_attr::TIMEOUT_UDP, t.udp);
}

// ---------------------------------------------------------------------------------------
// Attribute parsing

/// A NUL-terminated (or unterminated) string.
fn c_string(v: &[u8]) -> Result<String, DecodeError> {
    let end = v.iter().position(|b| *b == 0).unwrap_or(v.len());
    String::from_utf8(v[..end].to_vec()).map_err(DecodeError::from)
}

fn raw(nla: &NlaBuffer<&[u8]>) -> RawAttr {
    RawAttr {
        kind: nla.kind() & NLA_TYPE_MASK,
        value: nla.value().to_vec(),
    }
}

fn raw_attrs(buf: &[u8]) -> Result<Vec<RawAttr>, DecodeError> {
    NlasIterator::new(buf)
        .map(|nla| nla.map(|n| raw(&n)))
        .collect()
}

/// An address from its 16-byte (or, from other clients, 4-byte) form, trimmed by family.
fn inet_addr(v: &[u8], family: AddressFamily) -> Result<IpAddr, DecodeError> {
    match family {
        AddressFamily::Inet => {
            let b: [u8; 4] = v
                .get(..4)
                .and_then(|s| s.try_into().ok())
                .ok_or_else(|| DecodeError::invalid_ip_address(v.len()))?;
            Ok(IpAddr::V4(Ipv4Addr::from(b)))
        }
        AddressFamily::Inet6 => {
            let b: [u8; 16] = v
                .try_into()
                .map_err(|_| DecodeError::invalid_ip_address(v.len()))?;
            Ok(IpAddr::V6(Ipv6Addr::from(b)))
        }
    }
}

fn family_of(n: u16) -> Result<AddressFamily, DecodeError> {
    AddressFamily::from_number(n).ok_or_else(|| format!("unsupported address family {n}").into())
}

/// The top-level attributes of an IPVS message, unparsed nests kept as slices.
#[derive(Default)]
struct TopAttrs<'a> {
    service: Option<&'a [u8]>,
    dest: Option<&'a [u8]>,
    timeouts: Timeouts,
}

impl<'a> TopAttrs<'a> {
    fn parse(buf: &'a [u8]) -> Result<Self, DecodeError> {
        let mut top = Self::default();
        for nla in NlasIterator::new(buf) {
            let nla = nla?;
            let (kind, len) = (nla.kind() & NLA_TYPE_MASK, usize::from(nla.length()));
            let whole: &'a [u8] = nla.into_inner();
            let value = whole
                .get(NLA_HEADER_SIZE..len)
                .ok_or("attribute length out of bounds")?;
            match kind {
                cmd_attr::SERVICE => top.service = Some(value),
                cmd_attr::DEST => top.dest = Some(value),
                cmd_attr::TIMEOUT_TCP => top.timeouts.tcp = parse_u32(value)?,
                cmd_attr::TIMEOUT_TCP_FIN => top.timeouts.tcp_fin = parse_u32(value)?,
                cmd_attr::TIMEOUT_UDP => top.timeouts.udp = parse_u32(value)?,
                _ => {}
            }
        }
        Ok(top)
    }
}

fn parse_stats(buf: &[u8], wide: bool) -> Result<Stats, DecodeError> {
    let mut s = Stats::default();
    for nla in NlasIterator::new(buf) {
        let nla = nla?;
        let v = nla.value();
        // The "32-bit" nest carries the byte counters as u64 too (`nla_put_u64_64bit`).
        let n = match (nla.kind(), v.len()) {
            (stats_attr::PAD, _) => continue,
            (_, 8) => parse_u64(v)?,
            (_, _) if !wide => u64::from(parse_u32(v)?),
            (_, len) => return Err(DecodeError::invalid_number(8, len)),
        };
        match nla.kind() {
            stats_attr::CONNS => s.conns = n,
            stats_attr::INPKTS => s.in_packets = n,
            stats_attr::OUTPKTS => s.out_packets = n,
            stats_attr::INBYTES => s.in_bytes = n,
            stats_attr::OUTBYTES => s.out_bytes = n,
            stats_attr::CPS => s.cps = n,
            stats_attr::INPPS => s.in_pps = n,
            stats_attr::OUTPPS => s.out_pps = n,
            stats_attr::INBPS => s.in_bps = n,
            stats_attr::OUTBPS => s.out_bps = n,
            _ => {}
        }
    }
    Ok(s)
}

/// The attributes of a `SERVICE` nest, each optional until a use requires it.
#[derive(Default)]
struct ServiceAttrs {
    af: Option<u16>,
    protocol: Option<u16>,
    addr: Option<Vec<u8>>,
    port: Option<u16>,
    fwmark: Option<u32>,
    sched: Option<String>,
    flags: Option<u32>,
    timeout: Option<u32>,
    netmask: Option<[u8; 4]>,
    pe: Option<String>,
    stats: Option<Stats>,
    stats64: Option<Stats>,
    unknown: Vec<RawAttr>,
}

impl ServiceAttrs {
    fn parse(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut a = Self::default();
        for nla in NlasIterator::new(buf) {
            let nla = nla?;
            let v = nla.value();
            match nla.kind() & NLA_TYPE_MASK {
                svc_attr::AF => a.af = Some(parse_u16(v)?),
                svc_attr::PROTOCOL => a.protocol = Some(parse_u16(v)?),
                svc_attr::ADDR => a.addr = Some(v.to_vec()),
                svc_attr::PORT => a.port = Some(parse_u16_be(v)?),
                svc_attr::FWMARK => a.fwmark = Some(parse_u32(v)?),
                svc_attr::SCHED_NAME => a.sched = Some(c_string(v)?),
                svc_attr::FLAGS => {
                    a.flags = Some(parse_u32(
                        v.get(..4).ok_or("IPVS_SVC_ATTR_FLAGS too short")?,
                    )?);
                }
                svc_attr::TIMEOUT => a.timeout = Some(parse_u32(v)?),
                svc_attr::NETMASK => {
                    a.netmask = Some(
                        v.try_into()
                            .map_err(|_| DecodeError::invalid_number(4, v.len()))?,
                    );
                }
                svc_attr::PE_NAME => a.pe = Some(c_string(v)?),
                svc_attr::STATS => a.stats = Some(parse_stats(v, false)?),
                svc_attr::STATS64 => a.stats64 = Some(parse_stats(v, true)?),
                _ => a.unknown.push(raw(&nla)),
            }
        }
        Ok(a)
    }

    fn family(&self) -> Result<AddressFamily, DecodeError> {
        family_of(self.af.ok_or("service without IPVS_SVC_ATTR_AF")?)
    }

    /// A non-zero fwmark makes a fwmark service (ipvsadm sends no fwmark otherwise).
    fn key(&self) -> Result<ServiceKey, DecodeError> {
        let family = self.family()?;
        if let Some(mark) = self.fwmark.filter(|m| *m != 0) {
            return Ok(ServiceKey::Fwmark { family, mark });
        }
        let proto = self.protocol.ok_or("service without protocol or fwmark")?;
        let protocol =
            Protocol::from_number(proto).ok_or_else(|| format!("unsupported protocol {proto}"))?;
        let addr = inet_addr(
            self.addr.as_deref().ok_or("service without address")?,
            family,
        )?;
        let port = self.port.ok_or("service without port")?;
        Ok(ServiceKey::Inet {
            protocol,
            addr,
            port,
        })
    }

    fn service(&self) -> Result<Service, DecodeError> {
        let key = self.key()?;
        let sched = self.sched.as_deref().ok_or("service without scheduler")?;
        let scheduler = Scheduler::new(sched).map_err(|e| e.to_string())?;
        let netmask = match (self.netmask, key.family()) {
            (Some(b), AddressFamily::Inet) => u32::from_be_bytes(b),
            (Some(b), AddressFamily::Inet6) => u32::from_ne_bytes(b),
            (None, family) => family.host_netmask(),
        };
        Ok(Service {
            key,
            scheduler,
            flags: ServiceFlags(self.flags.unwrap_or(0)).config(),
            timeout: self.timeout.unwrap_or(0),
            netmask,
            persistence_engine: self.pe.clone(),
        })
    }

    fn entry(self) -> Result<ServiceEntry, DecodeError> {
        Ok(ServiceEntry {
            service: self.service()?,
            stats: self.stats64.or(self.stats).unwrap_or_default(),
            unknown: self.unknown,
        })
    }
}

/// The attributes of a `DEST` nest.
#[derive(Default)]
struct DestAttrs {
    addr: Option<Vec<u8>>,
    port: Option<u16>,
    fwd: Option<u32>,
    weight: Option<u32>,
    u_thresh: Option<u32>,
    l_thresh: Option<u32>,
    active: Option<u32>,
    inactive: Option<u32>,
    persistent: Option<u32>,
    stats: Option<Stats>,
    stats64: Option<Stats>,
    af: Option<u16>,
    tun_type: Option<u8>,
    tun_port: Option<u16>,
    tun_flags: Option<u16>,
    unknown: Vec<RawAttr>,
}

impl DestAttrs {
    fn parse(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut a = Self::default();
        for nla in NlasIterator::new(buf) {
            let nla = nla?;
            let v = nla.value();
            match nla.kind() & NLA_TYPE_MASK {
                dest_attr::ADDR => a.addr = Some(v.to_vec()),
                dest_attr::PORT => a.port = Some(parse_u16_be(v)?),
                dest_attr::FWD_METHOD => a.fwd = Some(parse_u32(v)?),
                dest_attr::WEIGHT => a.weight = Some(parse_u32(v)?),
                dest_attr::U_THRESH => a.u_thresh = Some(parse_u32(v)?),
                dest_attr::L_THRESH => a.l_thresh = Some(parse_u32(v)?),
                dest_attr::ACTIVE_CONNS => a.active = Some(parse_u32(v)?),
                dest_attr::INACT_CONNS => a.inactive = Some(parse_u32(v)?),
                dest_attr::PERSIST_CONNS => a.persistent = Some(parse_u32(v)?),
                dest_attr::STATS => a.stats = Some(parse_stats(v, false)?),
                dest_attr::STATS64 => a.stats64 = Some(parse_stats(v, true)?),
                dest_attr::ADDR_FAMILY => a.af = Some(parse_u16(v)?),
                dest_attr::TUN_TYPE => a.tun_type = Some(parse_u8(v)?),
                dest_attr::TUN_PORT => a.tun_port = Some(parse_u16_be(v)?),
                dest_attr::TUN_FLAGS => a.tun_flags = Some(parse_u16(v)?),
                _ => a.unknown.push(raw(&nla)),
            }
        }
        Ok(a)
    }

    fn key(&self) -> Result<DestinationKey, DecodeError> {
        let raw_addr = self.addr.as_deref().ok_or("destination without address")?;
        let family = match self.af {
            Some(n) => family_of(n)?,
            // Kernels before 4.x do not report the family: an address whose last 12 bytes are
            // zero is IPv4 (`::a.b.c.d` is never a real server).
            None if raw_addr.len() == 4
                || raw_addr.get(4..).is_some_and(|t| t.iter().all(|b| *b == 0)) =>
            {
                AddressFamily::Inet
            }
            None => AddressFamily::Inet6,
        };
        Ok(DestinationKey {
            addr: inet_addr(raw_addr, family)?,
            port: self.port.ok_or("destination without port")?,
        })
    }

    fn destination(&self) -> Result<Destination, DecodeError> {
        let key = self.key()?;
        let fwd = self.fwd.ok_or("destination without forwarding method")? & ForwardMethod::MASK;
        let forward = match fwd {
            ForwardMethod::MASQ => ForwardMethod::Masquerade,
            ForwardMethod::LOCALNODE => ForwardMethod::LocalNode,
            ForwardMethod::TUNNEL => {
                let t = self.tun_type.unwrap_or(0);
                ForwardMethod::Tunnel {
                    kind: TunnelType::from_number(t)
                        .ok_or_else(|| format!("unknown tunnel type {t}"))?,
                    port: self.tun_port.unwrap_or(0),
                    flags: self.tun_flags.unwrap_or(0),
                }
            }
            ForwardMethod::DROUTE => ForwardMethod::DirectRoute,
            ForwardMethod::BYPASS => ForwardMethod::Bypass,
            other => return Err(format!("unknown forwarding method {other}").into()),
        };
        Ok(Destination {
            addr: key.addr,
            port: key.port,
            forward,
            weight: self.weight.unwrap_or(0),
            upper_threshold: self.u_thresh.unwrap_or(0),
            lower_threshold: self.l_thresh.unwrap_or(0),
        })
    }

    fn entry(self) -> Result<DestinationEntry, DecodeError> {
        Ok(DestinationEntry {
            destination: self.destination()?,
            active_conns: self.active.unwrap_or(0),
            inactive_conns: self.inactive.unwrap_or(0),
            persistent_conns: self.persistent.unwrap_or(0),
            stats: self.stats64.or(self.stats).unwrap_or_default(),
            unknown: self.unknown,
        })
    }
}
