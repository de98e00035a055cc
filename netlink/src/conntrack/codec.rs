//! The ctnetlink wire format (nfnetlink subsystem `NFNL_SUBSYS_CTNETLINK`): the subset needed
//! to dump the connection tracking table and delete entries by tuple.
//!
//! Every number was checked against `include/uapi/linux/netfilter/nfnetlink_conntrack.h` and
//! against bytes captured from `conntrack` v1.4.7 on this project's build host (see the
//! tests). Conventions of the wire: integers are big-endian but, unlike ipset, carry no
//! `NLA_F_NET_BYTEORDER` flag; tuples are nests (`NLA_F_NESTED`) of an address nest and a
//! layer-4 nest. Attributes this code does not name are kept as [`DefaultNla`] and re-emitted
//! unchanged.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable, NLA_F_NESTED, NetlinkDeserializable, NetlinkHeader,
    NetlinkSerializable, Nla, NlaBuffer, NlasIterator, Parseable,
};

use crate::nfnetlink::{NFGENMSG_LEN, attrs_len, emit_attrs, emit_header};

/// nfnetlink subsystem id of conntrack (`NFNL_SUBSYS_CTNETLINK`, linux/netfilter/nfnetlink.h).
pub const NFNL_SUBSYS_CTNETLINK: u8 = 1;

/// `enum cntl_msg_types`. A dump is asked with GET + `NLM_F_DUMP` and answered with NEW.
pub mod cmd {
    pub const NEW: u8 = 0;
    pub const GET: u8 = 1;
    pub const DELETE: u8 = 2;
}

/// `enum ctattr_type` (the ones this code names).
pub mod attr {
    pub const TUPLE_ORIG: u16 = 1;
    pub const TUPLE_REPLY: u16 = 2;
    pub const STATUS: u16 = 3;
    pub const TIMEOUT: u16 = 7;
    pub const MARK: u16 = 8;
    pub const ID: u16 = 12;
    pub const ZONE: u16 = 18;
}

/// `enum ctattr_tuple`.
pub mod tuple {
    pub const IP: u16 = 1;
    pub const PROTO: u16 = 2;
    pub const ZONE: u16 = 3;
}

/// `enum ctattr_ip`.
pub mod ip {
    pub const V4_SRC: u16 = 1;
    pub const V4_DST: u16 = 2;
    pub const V6_SRC: u16 = 3;
    pub const V6_DST: u16 = 4;
}

/// `enum ctattr_l4proto` (ports only: ICMP ids and types stay raw).
pub mod proto {
    pub const NUM: u16 = 1;
    pub const SRC_PORT: u16 = 2;
    pub const DST_PORT: u16 = 3;
}

fn short(what: &str) -> DecodeError {
    DecodeError::from(format!("conntrack: short {what} attribute"))
}

fn be16_value(buf: &[u8]) -> Result<u16, DecodeError> {
    let b: [u8; 2] = buf
        .get(..2)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| short("u16"))?;
    Ok(u16::from_be_bytes(b))
}

fn be32_value(buf: &[u8]) -> Result<u32, DecodeError> {
    let b: [u8; 4] = buf
        .get(..4)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| short("u32"))?;
    Ok(u32::from_be_bytes(b))
}

fn addr_value(kind: u16, buf: &[u8]) -> Result<IpAddr, DecodeError> {
    Ok(match kind {
        ip::V4_SRC | ip::V4_DST => {
            let b: [u8; 4] = buf
                .get(..4)
                .and_then(|s| s.try_into().ok())
                .ok_or_else(|| short("IPv4 address"))?;
            IpAddr::V4(Ipv4Addr::from(b))
        }
        _ => {
            let b: [u8; 16] = buf
                .get(..16)
                .and_then(|s| s.try_into().ok())
                .ok_or_else(|| short("IPv6 address"))?;
            IpAddr::V6(Ipv6Addr::from(b))
        }
    })
}

/// One direction of a connection: addresses, layer-4 protocol number and, for protocols with
/// ports (TCP, UDP, SCTP, ...), the ports.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IANA protocol number (`IPPROTO_*`).
    pub protocol: u8,
    pub src_port: Option<u16>,
    pub dst_port: Option<u16>,
    /// Layer-4 attributes without a name here (ICMP id/type/code) as (kind, value), kept
    /// for re-emission.
    pub other_l4: Vec<(u16, Vec<u8>)>,
}

/// An attribute inside a tuple's address nest or layer-4 nest.
struct Leaf {
    kind: u16,
    bytes: Vec<u8>,
}

impl Nla for Leaf {
    fn value_len(&self) -> usize {
        self.bytes.len()
    }
    fn kind(&self) -> u16 {
        self.kind
    }
    fn emit_value(&self, buffer: &mut [u8]) {
        buffer[..self.bytes.len()].copy_from_slice(&self.bytes);
    }
}

/// A nest of attributes of one type.
struct Nest<T> {
    kind: u16,
    items: Vec<T>,
}

impl<T: Nla> Nla for Nest<T> {
    fn value_len(&self) -> usize {
        self.items.iter().map(Emitable::buffer_len).sum()
    }
    fn kind(&self) -> u16 {
        self.kind | NLA_F_NESTED
    }
    fn emit_value(&self, buffer: &mut [u8]) {
        emit_attrs(&self.items, buffer);
    }
}

fn addr_bytes(a: &IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    }
}

impl Tuple {
    /// The tuple as the kernel nests it: `TUPLE_IP { SRC, DST }`, `TUPLE_PROTO { NUM, ports }`.
    fn nests(&self) -> (Nest<Leaf>, Nest<Leaf>) {
        let (src, dst) = match self.src {
            IpAddr::V4(_) => (ip::V4_SRC, ip::V4_DST),
            IpAddr::V6(_) => (ip::V6_SRC, ip::V6_DST),
        };
        let addrs = Nest {
            kind: tuple::IP,
            items: vec![
                Leaf {
                    kind: src,
                    bytes: addr_bytes(&self.src),
                },
                Leaf {
                    kind: dst,
                    bytes: addr_bytes(&self.dst),
                },
            ],
        };
        let mut l4 = vec![Leaf {
            kind: proto::NUM,
            bytes: vec![self.protocol],
        }];
        for (kind, port) in [
            (proto::SRC_PORT, self.src_port),
            (proto::DST_PORT, self.dst_port),
        ] {
            if let Some(p) = port {
                l4.push(Leaf {
                    kind,
                    bytes: p.to_be_bytes().to_vec(),
                });
            }
        }
        for (kind, bytes) in &self.other_l4 {
            l4.push(Leaf {
                kind: *kind,
                bytes: bytes.clone(),
            });
        }
        (
            addrs,
            Nest {
                kind: tuple::PROTO,
                items: l4,
            },
        )
    }

    fn value_len(&self) -> usize {
        let (a, p) = self.nests();
        a.buffer_len() + p.buffer_len()
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        let (a, p) = self.nests();
        let n = a.buffer_len();
        a.emit(&mut buffer[..n]);
        p.emit(&mut buffer[n..n + p.buffer_len()]);
    }

    fn parse(buf: &[u8]) -> Result<Self, DecodeError> {
        let (mut src, mut dst, mut protocol) = (None, None, None);
        let (mut src_port, mut dst_port, mut other_l4) = (None, None, Vec::new());
        for nla in NlasIterator::new(buf) {
            let nla = nla?;
            match nla.kind() {
                tuple::IP => {
                    for a in NlasIterator::new(nla.value()) {
                        let a = a?;
                        match a.kind() {
                            ip::V4_SRC | ip::V6_SRC => src = Some(addr_value(a.kind(), a.value())?),
                            ip::V4_DST | ip::V6_DST => dst = Some(addr_value(a.kind(), a.value())?),
                            _ => {}
                        }
                    }
                }
                tuple::PROTO => {
                    for a in NlasIterator::new(nla.value()) {
                        let a = a?;
                        match a.kind() {
                            proto::NUM => protocol = a.value().first().copied(),
                            proto::SRC_PORT => src_port = Some(be16_value(a.value())?),
                            proto::DST_PORT => dst_port = Some(be16_value(a.value())?),
                            kind => other_l4.push((kind, a.value().to_vec())),
                        }
                    }
                }
                _ => {}
            }
        }
        match (src, dst, protocol) {
            (Some(src), Some(dst), Some(protocol)) => Ok(Self {
                src,
                dst,
                protocol,
                src_port,
                dst_port,
                other_l4,
            }),
            _ => Err(DecodeError::from(
                "conntrack: tuple without addresses or protocol",
            )),
        }
    }
}

/// A top-level conntrack attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CtAttr {
    TupleOrig(Tuple),
    TupleReply(Tuple),
    /// `IPS_*` status bits.
    Status(u32),
    /// Seconds left.
    Timeout(u32),
    Mark(u32),
    /// The entry's id: a delete carrying it removes only that entry, never a newer one with
    /// the same tuple.
    Id(u32),
    Zone(u16),
    Other(DefaultNla),
}

impl Nla for CtAttr {
    fn value_len(&self) -> usize {
        match self {
            Self::TupleOrig(t) | Self::TupleReply(t) => t.value_len(),
            Self::Status(_) | Self::Timeout(_) | Self::Mark(_) | Self::Id(_) => 4,
            Self::Zone(_) => 2,
            Self::Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            Self::TupleOrig(_) => attr::TUPLE_ORIG | NLA_F_NESTED,
            Self::TupleReply(_) => attr::TUPLE_REPLY | NLA_F_NESTED,
            Self::Status(_) => attr::STATUS,
            Self::Timeout(_) => attr::TIMEOUT,
            Self::Mark(_) => attr::MARK,
            Self::Id(_) => attr::ID,
            Self::Zone(_) => attr::ZONE,
            Self::Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            Self::TupleOrig(t) | Self::TupleReply(t) => t.emit_value(buffer),
            Self::Status(v) | Self::Timeout(v) | Self::Mark(v) | Self::Id(v) => {
                buffer[..4].copy_from_slice(&v.to_be_bytes());
            }
            Self::Zone(v) => buffer[..2].copy_from_slice(&v.to_be_bytes()),
            Self::Other(nla) => nla.emit_value(buffer),
        }
    }
}

impl<T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&T>> for CtAttr {
    fn parse(buf: &NlaBuffer<&T>) -> Result<Self, DecodeError> {
        let v = buf.value();
        Ok(match buf.kind() {
            attr::TUPLE_ORIG => Self::TupleOrig(Tuple::parse(v)?),
            attr::TUPLE_REPLY => Self::TupleReply(Tuple::parse(v)?),
            attr::STATUS => Self::Status(be32_value(v)?),
            attr::TIMEOUT => Self::Timeout(be32_value(v)?),
            attr::MARK => Self::Mark(be32_value(v)?),
            attr::ID => Self::Id(be32_value(v)?),
            attr::ZONE => Self::Zone(be16_value(v)?),
            _ => Self::Other(DefaultNla::parse(buf)?),
        })
    }
}

/// One ctnetlink message: the command (low byte of the netlink type), `nfgenmsg.nfgen_family`
/// and the attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CtMessage {
    pub command: u8,
    pub family: u8,
    pub attrs: Vec<CtAttr>,
}

/// One conntrack entry as a dump reports it (the attributes a cleanup needs).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Entry {
    pub orig: Tuple,
    pub reply: Tuple,
    pub id: Option<u32>,
    pub zone: Option<u16>,
}

impl Entry {
    /// The DELETE request for exactly this entry: its original tuple, its zone and its id.
    pub fn delete_message(&self) -> CtMessage {
        let mut attrs = vec![CtAttr::TupleOrig(self.orig.clone())];
        if let Some(z) = self.zone {
            attrs.push(CtAttr::Zone(z));
        }
        if let Some(id) = self.id {
            attrs.push(CtAttr::Id(id));
        }
        CtMessage {
            command: cmd::DELETE,
            family: family_of(&self.orig.src),
            attrs,
        }
    }
}

/// `AF_INET` / `AF_INET6` of an address, as `nfgen_family` wants it.
pub const fn family_of(addr: &IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 2,
        IpAddr::V6(_) => 10,
    }
}

impl CtMessage {
    /// A dump request (send with `NLM_F_DUMP`) of the entries of one family.
    pub const fn dump(family: u8) -> Self {
        Self {
            command: cmd::GET,
            family,
            attrs: Vec::new(),
        }
    }

    /// The entry a dump reply describes, when it has both tuples.
    pub fn entry(&self) -> Option<Entry> {
        let mut orig = None;
        let mut reply = None;
        let mut id = None;
        let mut zone = None;
        for a in &self.attrs {
            match a {
                CtAttr::TupleOrig(t) => orig = Some(t.clone()),
                CtAttr::TupleReply(t) => reply = Some(t.clone()),
                CtAttr::Id(v) => id = Some(*v),
                CtAttr::Zone(v) => zone = Some(*v),
                _ => {}
            }
        }
        Some(Entry {
            orig: orig?,
            reply: reply?,
            id,
            zone,
        })
    }

    /// Parses the payload after the netlink header, given the netlink message type.
    pub fn parse(message_type: u16, payload: &[u8]) -> Result<Self, DecodeError> {
        let [subsys, command] = message_type.to_be_bytes();
        if subsys != NFNL_SUBSYS_CTNETLINK {
            return Err(DecodeError::from(format!(
                "conntrack: message type {message_type:#06x} is not of the ctnetlink subsystem"
            )));
        }
        if payload.len() < NFGENMSG_LEN {
            return Err(DecodeError::from(
                "conntrack: payload shorter than nfgenmsg",
            ));
        }
        let mut attrs = Vec::new();
        for nla in NlasIterator::new(&payload[NFGENMSG_LEN..]) {
            attrs.push(CtAttr::parse(&nla?)?);
        }
        Ok(Self {
            command,
            family: payload[0],
            attrs,
        })
    }
}

impl NetlinkSerializable for CtMessage {
    fn message_type(&self) -> u16 {
        u16::from_be_bytes([NFNL_SUBSYS_CTNETLINK, self.command])
    }

    fn buffer_len(&self) -> usize {
        NFGENMSG_LEN + attrs_len(&self.attrs)
    }

    fn serialize(&self, buffer: &mut [u8]) {
        emit_header(self.family, buffer);
        emit_attrs(&self.attrs, &mut buffer[NFGENMSG_LEN..]);
    }
}

impl NetlinkDeserializable for CtMessage {
    type Error = DecodeError;

    fn deserialize(header: &NetlinkHeader, payload: &[u8]) -> Result<Self, Self::Error> {
        Self::parse(header.message_type, payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{
        NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
    };
    use pretty_assertions::assert_eq;

    fn wire(msg: CtMessage, flags: u16, seq: u32) -> Vec<u8> {
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = seq;
        let mut nl = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        nl.finalize();
        let mut buf = vec![0; nl.buffer_len()];
        nl.serialize(&mut buf);
        buf
    }

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect()
    }

    fn decode(bytes: &[u8]) -> CtMessage {
        let nl = NetlinkMessage::<CtMessage>::deserialize(bytes).unwrap();
        let NetlinkPayload::InnerMessage(msg) = nl.payload else {
            panic!("not a conntrack message")
        };
        msg
    }

    fn udp(src: &str, dst: &str, sport: u16, dport: u16) -> Tuple {
        Tuple {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            protocol: 17,
            src_port: Some(sport),
            dst_port: Some(dport),
            other_l4: Vec::new(),
        }
    }

    // Captured on this project's build host (conntrack v1.4.7), in a fresh netns after
    // `conntrack -I -p udp -s 10.0.0.1 -d 10.96.0.10 --sport 40000 --dport 53 -r 10.244.0.5
    // -q 10.0.0.1 --reply-port-src 53 --reply-port-dst 40000 -t 100`, with `strace -xx -e
    // write=3 -e read=3 conntrack -L -f ipv4`: the dump request ...
    const CAPTURE_DUMP_V4: &str = "14 00 00 00 01 01 01 03 f2 69 0d 6b 00 00 00 00 02 00 00 00";

    // ... and the one entry of the answer (NLM_F_MULTI | NLM_F_DUMP_FILTERED).
    const CAPTURE_ENTRY_V4: &str = "c0 00 00 00 00 01 22 00 f2 69 0d 6b df 01 00 00 \
        02 00 00 00 34 00 01 80 14 00 01 80 08 00 01 00 \
        0a 00 00 01 08 00 02 00 0a 60 00 0a 1c 00 02 80 \
        05 00 01 00 11 00 00 00 06 00 02 00 9c 40 00 00 \
        06 00 03 00 00 35 00 00 34 00 02 80 14 00 01 80 \
        08 00 01 00 0a f4 00 05 08 00 02 00 0a 00 00 01 \
        1c 00 02 80 05 00 01 00 11 00 00 00 06 00 02 00 \
        00 35 00 00 06 00 03 00 9c 40 00 00 08 00 03 00 \
        00 00 00 08 08 00 08 00 00 00 00 00 08 00 0c 00 \
        1b 05 4e 13 08 00 0b 00 00 00 00 01 08 00 07 00 \
        00 00 00 63 1c 00 18 80 08 00 01 00 00 00 00 00 \
        08 00 02 00 00 00 00 00 08 00 03 00 00 00 00 00";

    // Same host and tool, `conntrack -L -f ipv6` after inserting the same flow over
    // fd00::1 -> fd00:96::a, reply from fd00:244::5.
    const CAPTURE_ENTRY_V6: &str = "f0 00 00 00 00 01 22 00 11 6a 0d 6b 87 06 00 00 \
        0a 00 00 00 4c 00 01 80 2c 00 01 80 14 00 03 00 \
        fd 00 00 00 00 00 00 00 00 00 00 00 00 00 00 01 \
        14 00 04 00 fd 00 00 96 00 00 00 00 00 00 00 00 \
        00 00 00 0a 1c 00 02 80 05 00 01 00 11 00 00 00 \
        06 00 02 00 9c 40 00 00 06 00 03 00 00 35 00 00 \
        4c 00 02 80 2c 00 01 80 14 00 03 00 fd 00 02 44 \
        00 00 00 00 00 00 00 00 00 00 00 05 14 00 04 00 \
        fd 00 00 00 00 00 00 00 00 00 00 00 00 00 00 01 \
        1c 00 02 80 05 00 01 00 11 00 00 00 06 00 02 00 \
        00 35 00 00 06 00 03 00 9c 40 00 00 08 00 03 00 \
        00 00 00 08 08 00 08 00 00 00 00 00 08 00 0c 00 \
        53 c8 e4 4a 08 00 0b 00 00 00 00 01 08 00 07 00 \
        00 00 00 63 1c 00 18 80 08 00 01 00 00 00 00 00 \
        08 00 02 00 00 00 00 00 08 00 03 00 00 00 00 00";

    #[test]
    fn dump_request_matches_conntrack_capture() {
        // The tool asks for NLM_F_REQUEST | NLM_F_DUMP (0x301) without an ack.
        assert_eq!(
            wire(CtMessage::dump(2), NLM_F_REQUEST | NLM_F_DUMP, 0x6b0d_69f2),
            hex(CAPTURE_DUMP_V4)
        );
    }

    #[test]
    fn dump_replies_decode_to_entries() {
        let msg = decode(&hex(CAPTURE_ENTRY_V4));
        assert_eq!(msg.command, cmd::NEW);
        assert_eq!(msg.family, 2);
        assert_eq!(
            msg.entry(),
            Some(Entry {
                orig: udp("10.0.0.1", "10.96.0.10", 40000, 53),
                reply: udp("10.244.0.5", "10.0.0.1", 53, 40000),
                id: Some(0x1b05_4e13),
                zone: None,
            })
        );
        // Status 8 = IPS_CONFIRMED; the timeout, mark, use count and the unnamed nest stay.
        assert!(msg.attrs.contains(&CtAttr::Status(8)));
        assert!(msg.attrs.contains(&CtAttr::Timeout(99)));

        let msg = decode(&hex(CAPTURE_ENTRY_V6));
        assert_eq!(msg.family, 10);
        let entry = msg.entry().unwrap();
        assert_eq!(entry.orig, udp("fd00::1", "fd00:96::a", 40000, 53));
        assert_eq!(entry.reply, udp("fd00:244::5", "fd00::1", 53, 40000));
    }

    #[test]
    fn decoded_replies_re_emit_byte_for_byte() {
        for capture in [CAPTURE_ENTRY_V4, CAPTURE_ENTRY_V6] {
            let bytes = hex(capture);
            let msg = decode(&bytes);
            let flags = u16::from_le_bytes([bytes[6], bytes[7]]);
            let seq = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
            let mut again = wire(msg, flags, seq);
            // The port id is the kernel's; the emitter leaves it 0.
            again[12..16].copy_from_slice(&bytes[12..16]);
            assert_eq!(again, bytes);
        }
    }

    #[test]
    fn delete_names_the_original_tuple_and_the_id() {
        let entry = decode(&hex(CAPTURE_ENTRY_V4)).entry().unwrap();
        let bytes = wire(entry.delete_message(), NLM_F_REQUEST | NLM_F_ACK, 7);
        let capture = hex(CAPTURE_ENTRY_V4);
        // Header: length 80, type (1 << 8) | DELETE, flags REQUEST|ACK, seq 7, port 0.
        assert_eq!(
            bytes[..16],
            [80, 0, 0, 0, 2, 1, 5, 0, 7, 0, 0, 0, 0, 0, 0, 0]
        );
        // nfgenmsg AF_INET, then the original tuple exactly as the kernel reported it
        // (`conntrack -D` sends the same 52 bytes), then CTA_ID.
        assert_eq!(bytes[16..20], [2, 0, 0, 0]);
        assert_eq!(bytes[20..72], capture[20..72]);
        assert_eq!(bytes[72..], [8, 0, 12, 0, 0x1b, 0x05, 0x4e, 0x13]);
    }
}
