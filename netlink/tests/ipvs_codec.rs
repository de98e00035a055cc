#![allow(clippy::unwrap_used, clippy::panic)] // A test crate: its helpers fail the test by panicking.

//! Byte-vector tests of the IPVS codec, both directions, against traffic captured on a real
//! kernel: Debian's 6.1.0-57-amd64 in the lab guest, `ipvsadm v1.31 2019/12/24`, recorded
//! with `strace -xx -e trace=sendmsg,recvmsg -e read=3 -e write=3 ipvsadm ARGS` (the command
//! of each vector is in its doc comment; the netns had 10.255.0.1/24 and fd00:255::1/64 on a
//! dummy eth0). Each constant is one whole netlink message, header included.
//!
//! Where we deliberately send less than ipvsadm — it fills the whole service (empty scheduler,
//! flags, timeout, netmask) into commands that only need the service's key, which the kernel
//! ignores — the emit side is compared against the capture with those ignored attributes
//! removed ([`key_only_service`]); every other byte still comes from the capture.

use netlink::ipvs::codec::{self, IpvsReply, IpvsRequest};
use netlink::ipvs::{
    AddressFamily, Destination, DestinationKey, ForwardMethod, Protocol, Scheduler, Service,
    ServiceFlags, ServiceKey, Timeouts, TunnelType,
};
use netlink_packet_core::{
    Emitable, NLM_F_ACK, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload, ParseableParametrized,
};
use netlink_packet_generic::ctrl::GenlCtrl;
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::{GenlHeader, GenlMessage};
use pretty_assertions::assert_eq;

/// `ipvsadm -A -t 10.96.0.1:80 -s rr`: sendmsg (32 bytes).
const CTRL_GETFAMILY_REQ: &str = "200000001000050067460d6bd50080be03010000090002004950565300000000";
/// `ipvsadm -A -t 10.96.0.1:80 -s rr`: recvmsg (388 bytes).
const CTRL_GETFAMILY_REPLY: &str = "840100001000000067460d6bd50080be01020000090002004950565300000000060001002000000008000300010000000800040000000000080005000600000044010600140001000800010001000000080002000b000000140002000800010002000000080002000b000000140003000800010003000000080002000b000000140004000800010004000000080002000f000000140005000800010005000000080002000b000000140006000800010006000000080002000b000000140007000800010007000000080002000b000000140008000800010008000000080002000d000000140009000800010009000000080002000b00000014000a00080001000a000000080002000b00000014000b00080001000b000000080002000d00000014000c00080001000c000000080002000b00000014000d00080001000d000000080002000b00000014000e00080001000f000000080002000b00000014000f000800010010000000080002000b000000140010000800010011000000080002000b000000";
/// `ipvsadm -A -t 10.96.0.1:80 -s rr`: recvmsg (36 bytes).
const CTRL_ACK: &str = "240000000200000167460d6bd50080be00000000200000001000050067460d6bd50080be";
/// `ipvsadm -A -t 10.96.0.1:80 -s rr`: sendmsg (20 bytes).
const GET_INFO_REQ: &str = "140000002000050069460d6bd50040e10f010000";
/// `ipvsadm -A -t 10.96.0.1:80 -s rr`: recvmsg (36 bytes).
const GET_INFO_REPLY: &str =
    "240000002000000069460d6bd50040e10e01000008000100010201000800020000100000";
/// `ipvsadm -A -t 10.96.0.1:80 -s rr`: sendmsg (104 bytes).
const NEW_SERVICE_TCP4: &str = "680000002000050069460d6bd500001c010100005400018006000100020000000600020006000000140003000a600001000000000000000000000000060004000050000007000600727200000c00070000000000ffffffff080008000000000008000900ffffffff";
/// `ipvsadm -A -t 10.96.0.1:80 -s rr`: recvmsg (124 bytes).
const ERR_EEXIST: &str = "7c000000020000006a460d6bee008011efffffff68000000200005006a460d6bee008011010100005400018006000100020000000600020006000000140003000a600001000000000000000000000000060004000050000007000600727200000c00070000000000ffffffff080008000000000008000900ffffffff";
/// `ipvsadm -E -t 10.96.0.1:80 -s wrr -p 300 -M 255.255.255.0`: sendmsg (104 bytes).
const SET_SERVICE_TCP4: &str = "68000000200005006d460d6b07010011020100005400018006000100020000000600020006000000140003000a600001000000000000000000000000060004000050000008000600777272000c00070001000000ffffffff080008002c01000008000900ffffff00";
/// `ipvsadm -a -t 10.96.0.1:80 -r 10.255.0.2:8080 -m -w 3 -x 100 -y 10`: sendmsg (200 bytes).
const NEW_DEST_MASQ4: &str = "c8000000200005006f460d6b20018012050100005400018006000100020000000600020006000000140003000a600001000000000000000000000000060004000050000005000600000000000c00070000000000ffffffff080008000000000008000900ffffffff6000028006000b0002000000140001000aff0002000000000000000000000000060002001f9000000800030000000000080004000300000005000d000000000006000e000000000006000f00000000000800050064000000080006000a000000";
/// `ipvsadm -e -t 10.96.0.1:80 -r 10.255.0.2:8080 -m -w 5`: sendmsg (200 bytes).
const SET_DEST_MASQ4: &str = "c80000002000050071460d6b3901401f060100005400018006000100020000000600020006000000140003000a600001000000000000000000000000060004000050000005000600000000000c00070000000000ffffffff080008000000000008000900ffffffff6000028006000b0002000000140001000aff0002000000000000000000000000060002001f9000000800030000000000080004000500000005000d000000000006000e000000000006000f000000000008000500000000000800060000000000";
/// `ipvsadm -A -u [fd00::1]:53 -s sh -b sh-port,sh-fallback`: sendmsg (104 bytes).
const NEW_SERVICE_UDP6_SH: &str = "680000002000050073460d6b5201801f0101000054000180060001000a000000060002001100000014000300fd000000000000000000000000000001060004000035000007000600736800000c00070018000000ffffffff08000800000000000800090080000000";
/// `ipvsadm -a -u [fd00::1]:53 -r [fd00:255::2]:53 -i --tun-type gue --tun-port 6080 --tun-csum -w 2`: sendmsg (200 bytes).
const NEW_DEST_GUE6: &str = "c80000002000050075460d6b6b01001f0501000054000180060001000a000000060002001100000014000300fd000000000000000000000000000001060004000035000005000600000000000c00070000000000ffffffff080008000000000008000900800000006000028006000b000a00000014000100fd00025500000000000000000000000206000200003500000800030002000000080004000200000005000d000100000006000e0017c0000006000f000100000008000500000000000800060000000000";
/// `ipvsadm -A -f 7 -6 -s mh -b mh-port`: sendmsg (76 bytes).
const NEW_SERVICE_FWM6_MH: &str = "4c0000002000050077460d6b840180180101000038000180060001000a0000000800050007000000070006006d6800000c00070010000000ffffffff08000800000000000800090080000000";
/// `ipvsadm -A --sctp-service 10.96.0.2:9 -s lc`: sendmsg (104 bytes).
const NEW_SERVICE_SCTP4: &str = "680000002000050079460d6b9d010018010100005400018006000100020000000600020084000000140003000a6000020000000000000000000000000600040000090000070006006c6300000c00070000000000ffffffff080008000000000008000900ffffffff";
/// `ipvsadm -A -f 9 -s rr`: sendmsg (76 bytes).
const NEW_SERVICE_FWM4: &str = "4c000000200005007c460d6bb601001d01010000380001800600010002000000080005000900000007000600727200000c00070000000000ffffffff080008000000000008000900ffffffff";
/// `ipvsadm -a -f 9 -r 10.255.0.3 -g`: sendmsg (172 bytes).
const NEW_DEST_FWM4_DR: &str = "ac000000200005007e460d6bcf01401e05010000380001800600010002000000080005000900000005000600000000000c00070000000000ffffffff080008000000000008000900ffffffff6000028006000b0002000000140001000aff000300000000000000000000000006000200000000000800030003000000080004000100000005000d000000000006000e000000000006000f000000000008000500000000000800060000000000";
/// `ipvsadm -A -u 10.96.0.10:53 -s rr -o`: sendmsg (104 bytes).
const NEW_SERVICE_UDP4_OPS: &str = "680000002000050080460d6be801c01d010100005400018006000100020000000600020011000000140003000a60000a000000000000000000000000060004000035000007000600727200000c00070004000000ffffffff080008000000000008000900ffffffff";
/// `ipvsadm -a -t 10.96.0.9:80 -r 10.255.0.2:80 -m`: recvmsg (220 bytes).
const ERR_ESRCH: &str = "dc0000000200000082460d6b01024043fdffffffc80000002000050082460d6b01024043050100005400018006000100020000000600020006000000140003000a600009000000000000000000000000060004000050000005000600000000000c00070000000000ffffffff080008000000000008000900ffffffff6000028006000b0002000000140001000aff000200000000000000000000000006000200005000000800030000000000080004000100000005000d000000000006000e000000000006000f000000000008000500000000000800060000000000";
/// `ipvsadm -A -t 10.96.0.3:80 -s nosuch`: recvmsg (128 bytes).
const ERR_ENOENT_SCHED: &str = "800000000200000084460d6b1a02003bfeffffff6c0000002000050084460d6b1a02003b010100005800018006000100020000000600020006000000140003000a60000300000000000000000000000006000400005000000b0006006e6f7375636800000c00070000000000ffffffff080008000000000008000900ffffffff";
/// `ipvsadm -Sn`: sendmsg (20 bytes).
const DUMP_SERVICES_REQ: &str = "140000002000050387460d6b3402804404010000";
/// `ipvsadm -Sn`: recvmsg (1864 bytes).
const DUMP_SERVICES_DATAGRAM: &str = "400100002000020087460d6b34028044010100002c01010006000100020000000600020006000000140003000a600001000000000000000000000000060004000050000008000600777272000c00070003000000ffffffff080008002c01000008000900ffffff005c000a000800010000000000080002000000000008000300000000000c00040000000000000000000c0005000000000000000000080006000000000008000700000000000800080000000000080009000000000008000a00000000007c000c000c00010000000000000000000c00020000000000000000000c00030000000000000000000c00040000000000000000000c00050000000000000000000c00060000000000000000000c00070000000000000000000c00080000000000000000000c00090000000000000000000c000a000000000000000000400100002000020087460d6b34028044010100002c010100060001000a000000060002001100000014000300fd000000000000000000000000000001060004000035000007000600736800000c0007001a000000ffffffff080008000000000008000900800000005c000a000800010000000000080002000000000008000300000000000c00040000000000000000000c0005000000000000000000080006000000000008000700000000000800080000000000080009000000000008000a00000000007c000c000c00010000000000000000000c00020000000000000000000c00030000000000000000000c00040000000000000000000c00050000000000000000000c00060000000000000000000c00070000000000000000000c00080000000000000000000c00090000000000000000000c000a000000000000000000400100002000020087460d6b34028044010100002c01010006000100020000000600020011000000140003000a60000a000000000000000000000000060004000035000007000600727200000c00070006000000ffffffff080008000000000008000900ffffffff5c000a000800010000000000080002000000000008000300000000000c00040000000000000000000c0005000000000000000000080006000000000008000700000000000800080000000000080009000000000008000a00000000007c000c000c00010000000000000000000c00020000000000000000000c00030000000000000000000c00040000000000000000000c00050000000000000000000c00060000000000000000000c00070000000000000000000c00080000000000000000000c00090000000000000000000c000a000000000000000000400100002000020087460d6b34028044010100002c01010006000100020000000600020084000000140003000a6000020000000000000000000000000600040000090000070006006c6300000c00070002000000ffffffff080008000000000008000900ffffffff5c000a000800010000000000080002000000000008000300000000000c00040000000000000000000c0005000000000000000000080006000000000008000700000000000800080000000000080009000000000008000a00000000007c000c000c00010000000000000000000c00020000000000000000000c00030000000000000000000c00040000000000000000000c00050000000000000000000c00060000000000000000000c00070000000000000000000c00080000000000000000000c00090000000000000000000c000a000000000000000000240100002000020087460d6b340280440101000010010100060001000a0000000800050007000000070006006d6800000c00070012000000ffffffff080008000000000008000900800000005c000a000800010000000000080002000000000008000300000000000c00040000000000000000000c0005000000000000000000080006000000000008000700000000000800080000000000080009000000000008000a00000000007c000c000c00010000000000000000000c00020000000000000000000c00030000000000000000000c00040000000000000000000c00050000000000000000000c00060000000000000000000c00070000000000000000000c00080000000000000000000c00090000000000000000000c000a000000000000000000240100002000020087460d6b3402804401010000100101000600010002000000080005000900000007000600727200000c00070002000000ffffffff080008000000000008000900ffffffff5c000a000800010000000000080002000000000008000300000000000c00040000000000000000000c0005000000000000000000080006000000000008000700000000000800080000000000080009000000000008000a00000000007c000c000c00010000000000000000000c00020000000000000000000c00030000000000000000000c00040000000000000000000c00050000000000000000000c00060000000000000000000c00070000000000000000000c00080000000000000000000c00090000000000000000000c000a000000000000000000";
/// `ipvsadm -Sn`: recvmsg (20 bytes).
const DUMP_DONE: &str = "140000000300020087460d6b3402804400000000";
/// `ipvsadm -Sn`: sendmsg (68 bytes).
const DUMP_DESTS_REQ4: &str = "440000002000050387460d6b3402405f080100003000018006000100020000000600020006000000140003000a6000010000000000000000000000000600040000500000";
/// `ipvsadm -Sn`: recvmsg (356 bytes).
const DUMP_DESTS_REPLY: &str = "640100002000020087460d6b3402405f0501000050010200140001000aff0002000000000000000000000000060002001f9000000800030000000000080004000500000005000d000000000006000e000000000006000f00000000000800050000000000080006000000000008000700000000000800080000000000080009000000000006000b00020000005c000a000800010000000000080002000000000008000300000000000c00040000000000000000000c0005000000000000000000080006000000000008000700000000000800080000000000080009000000000008000a00000000007c000c000c00010000000000000000000c00020000000000000000000c00030000000000000000000c00040000000000000000000c00050000000000000000000c00060000000000000000000c00070000000000000000000c00080000000000000000000c00090000000000000000000c000a000000000000000000";
/// `ipvsadm -Ln -t 10.96.0.1:80`: sendmsg (104 bytes).
const GET_SERVICE_REQ: &str = "68000000200005008a460d6b85028039040100005400018006000100020000000600020006000000140003000a600001000000000000000000000000060004000050000005000600000000000c00070000000000ffffffff08000800000000000800090000000000";
/// `ipvsadm -Ln -t 10.96.0.1:80`: recvmsg (320 bytes).
const GET_SERVICE_REPLY: &str = "40010000200000008a460d6b85028039010100002c01010006000100020000000600020006000000140003000a600001000000000000000000000000060004000050000008000600777272000c00070003000000ffffffff080008002c01000008000900ffffff005c000a000800010000000000080002000000000008000300000000000c00040000000000000000000c0005000000000000000000080006000000000008000700000000000800080000000000080009000000000008000a00000000007c000c000c00010000000000000000000c00020000000000000000000c00030000000000000000000c00040000000000000000000c00050000000000000000000c00060000000000000000000c00070000000000000000000c00080000000000000000000c00090000000000000000000c000a000000000000000000";
/// `ipvsadm --set 900 120 300`: sendmsg (44 bytes).
const SET_CONFIG_REQ: &str =
    "2c000000200005008c460d6ba80200390c01000008000400840300000800050078000000080006002c010000";
/// `ipvsadm -L --timeout`: sendmsg (20 bytes).
const GET_CONFIG_REQ: &str = "14000000200005008e460d6bc102803a0d010000";
/// `ipvsadm -L --timeout`: recvmsg (44 bytes).
const GET_CONFIG_REPLY: &str =
    "2c000000200000008e460d6bc102803a0c01000008000400840300000800050078000000080006002c010000";
/// `ipvsadm -d -t 10.96.0.1:80 -r 10.255.0.2:8080`: sendmsg (200 bytes).
const DEL_DEST_MASQ4: &str = "c80000002000050090460d6bda02003a070100005400018006000100020000000600020006000000140003000a600001000000000000000000000000060004000050000005000600000000000c00070000000000ffffffff080008000000000008000900ffffffff6000028006000b0002000000140001000aff0002000000000000000000000000060002001f9000000800030003000000080004000100000005000d000000000006000e000000000006000f000000000008000500000000000800060000000000";
/// `ipvsadm -D -t 10.96.0.1:80`: sendmsg (104 bytes).
const DEL_SERVICE_TCP4: &str = "680000002000050092460d6bf3028047030100005400018006000100020000000600020006000000140003000a600001000000000000000000000000060004000050000005000600000000000c00070000000000ffffffff080008000000000008000900ffffffff";
/// `ipvsadm -Z`: sendmsg (20 bytes).
const ZERO_REQ: &str = "140000002000050094460d6b0c03c04610010000";
/// `ipvsadm -C`: sendmsg (20 bytes).
const FLUSH_REQ: &str = "140000002000050097460d6b2503c04711010000";

// ---------------------------------------------------------------------------------------
// Helpers

fn bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

fn u16_at(m: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([m[at], m[at + 1]])
}

fn u32_at(m: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([m[at], m[at + 1], m[at + 2], m[at + 3]])
}

fn genl_header(m: &[u8]) -> GenlHeader {
    GenlHeader::parse(&m[16..]).unwrap()
}

fn parse_request(m: &[u8]) -> IpvsRequest {
    IpvsRequest::parse_with_param(&m[20..], genl_header(m)).unwrap()
}

fn parse_reply(m: &[u8]) -> IpvsReply {
    IpvsReply::parse_with_param(&m[20..], genl_header(m)).unwrap()
}

/// Our encoding of `request` with the captured message's family id, flags and sequence
/// number. The port id is copied from the capture: libnl fills in its own, we leave 0 for the
/// kernel to fill.
fn encode_like(request: &IpvsRequest, captured: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    codec::encode_request(
        &mut out,
        u16_at(captured, 4),
        u32_at(captured, 8),
        u16_at(captured, 6),
        request,
    );
    assert_eq!(u32_at(&out, 12), 0);
    out[12..16].copy_from_slice(&captured[12..16]);
    out
}

/// The captured message with the `SERVICE` nest cut down to the key attributes (AF,
/// PROTOCOL, ADDR, PORT, FWMARK): what we send where ipvsadm also sends ignored ones.
fn key_only_service(m: &[u8]) -> Vec<u8> {
    key_only(m, &[])
}

/// [`key_only_service`], and when `dest_keep` is not empty, the `DEST` nest cut down to
/// those attribute kinds too.
fn key_only(m: &[u8], dest_keep: &[u16]) -> Vec<u8> {
    let mut attrs = Vec::new();
    let mut off = 20;
    while off < m.len() {
        let len = usize::from(u16_at(m, off));
        let kind = u16_at(m, off + 2);
        let attr = &m[off..off + len];
        let keep: Option<Vec<u16>> = match kind & 0x3fff {
            1 => Some((1..=5).collect()),
            2 if !dest_keep.is_empty() => Some(dest_keep.to_vec()),
            _ => None,
        };
        if let Some(keep) = keep {
            let mut inner = Vec::new();
            let mut i = 4;
            while i < attr.len() {
                let l = usize::from(u16_at(attr, i));
                if keep.contains(&u16_at(attr, i + 2)) {
                    inner.extend_from_slice(&attr[i..i + ((l + 3) & !3)]);
                }
                i += (l + 3) & !3;
            }
            attrs.extend_from_slice(&u16::try_from(inner.len() + 4).unwrap().to_ne_bytes());
            attrs.extend_from_slice(&kind.to_ne_bytes());
            attrs.extend_from_slice(&inner);
        } else {
            attrs.extend_from_slice(&m[off..off + ((len + 3) & !3)]);
        }
        off += (len + 3) & !3;
    }
    let mut out = m[..20].to_vec();
    out.extend_from_slice(&attrs);
    let total = u32::try_from(out.len()).unwrap();
    out[..4].copy_from_slice(&total.to_ne_bytes());
    out
}

/// Parses a captured request, checks the value, and checks our encoding of that value.
fn check_request(hex: &str, expected: IpvsRequest, key_only: bool) {
    let m = bytes(hex);
    assert_eq!(parse_request(&m), expected, "parse");
    let want = if key_only {
        key_only_service(&m)
    } else {
        m.clone()
    };
    assert_eq!(encode_like(&expected, &m), want, "emit");
    // The netlink-packet-generic path (Emitable) writes the same attributes.
    let mut via_trait = vec![0; expected.buffer_len()];
    expected.emit(&mut via_trait);
    assert_eq!(via_trait, want[20..].to_vec(), "Emitable");
}

/// Parses a captured kernel reply, checks the value, and emits it back byte for byte.
fn check_reply(hex: &str, expected: &IpvsReply) {
    let m = bytes(hex);
    assert_eq!(&parse_reply(&m), expected, "parse");
    let mut out = m[..20].to_vec();
    out.extend_from_slice(&expected.attr_bytes());
    assert_eq!(out, m, "emit");
    // And through netlink-packet-core / -generic framing.
    let msg = NetlinkMessage::<GenlMessage<IpvsReply>>::deserialize(&m).unwrap();
    let mut again = vec![0; msg.buffer_len()];
    msg.serialize(&mut again);
    assert_eq!(again, m, "NetlinkMessage round trip");
}

fn ip(s: &str) -> std::net::IpAddr {
    s.parse().unwrap()
}

fn tcp_10_96_0_1() -> ServiceKey {
    ServiceKey::Inet {
        protocol: Protocol::Tcp,
        addr: ip("10.96.0.1"),
        port: 80,
    }
}

fn udp6() -> ServiceKey {
    ServiceKey::Inet {
        protocol: Protocol::Udp,
        addr: ip("fd00::1"),
        port: 53,
    }
}

fn sched(name: &str) -> Scheduler {
    Scheduler::new(name).unwrap()
}

// ---------------------------------------------------------------------------------------
// Generic netlink controller

#[test]
fn ctrl_getfamily_request_and_reply() {
    let req = bytes(CTRL_GETFAMILY_REQ);
    let mut msg = NetlinkMessage::from(GenlMessage::from_payload(GenlCtrl {
        cmd: netlink_packet_generic::ctrl::GenlCtrlCmd::GetFamily,
        nlas: vec![GenlCtrlAttrs::FamilyName("IPVS".to_owned())],
    }));
    msg.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    msg.header.sequence_number = u32_at(&req, 8);
    msg.header.port_number = u32_at(&req, 12);
    msg.finalize();
    let mut out = vec![0; msg.buffer_len()];
    msg.serialize(&mut out);
    // libnl asks with controller version 1, netlink-packet-generic with 2: the controller
    // accepts both; every other byte is the same.
    assert_eq!((req[17], out[17]), (1, 2));
    out[17] = 1;
    assert_eq!(out, req);

    let reply =
        NetlinkMessage::<GenlMessage<GenlCtrl>>::deserialize(&bytes(CTRL_GETFAMILY_REPLY)).unwrap();
    let NetlinkPayload::InnerMessage(genl) = reply.payload else {
        panic!("not a controller message")
    };
    let nlas = &genl.payload.nlas;
    assert!(nlas.contains(&GenlCtrlAttrs::FamilyName("IPVS".to_owned())));
    assert!(nlas.contains(&GenlCtrlAttrs::FamilyId(0x20)));
    assert!(nlas.contains(&GenlCtrlAttrs::Version(1)));
}

#[test]
fn ack_and_errors() {
    let ack = bytes(CTRL_ACK);
    assert_eq!(u16_at(&ack, 4), netlink_packet_core::NLMSG_ERROR);
    assert_eq!(codec::error_code(&ack[16..]).unwrap(), 0);
    for (hex, errno) in [(ERR_EEXIST, 17), (ERR_ESRCH, 3), (ERR_ENOENT_SCHED, 2)] {
        let m = bytes(hex);
        let mut split = codec::split_messages(&m);
        let (h, payload) = split.next().unwrap().unwrap();
        assert!(split.next().is_none());
        assert_eq!(h.message_type, netlink_packet_core::NLMSG_ERROR);
        assert_eq!(codec::error_code(payload).unwrap(), -errno);
        // Uncapped (ipvsadm does not set NETLINK_CAP_ACK): the request follows the errno.
        assert_eq!(u32_at(payload, 4) as usize, payload.len() - 4);
        // netlink-packet-core reads and writes the same bytes.
        let msg = NetlinkMessage::<GenlMessage<IpvsReply>>::deserialize(&m).unwrap();
        let NetlinkPayload::Error(e) = &msg.payload else {
            panic!("not an error")
        };
        assert_eq!(e.raw_code(), -errno);
        let mut again = vec![0; msg.buffer_len()];
        msg.serialize(&mut again);
        assert_eq!(again, m);
    }
    let done = bytes(DUMP_DONE);
    let (h, _) = codec::split_messages(&done).next().unwrap().unwrap();
    assert_eq!(h.message_type, netlink_packet_core::NLMSG_DONE);
}

// ---------------------------------------------------------------------------------------
// Services

#[test]
fn new_service_tcp4() {
    check_request(
        NEW_SERVICE_TCP4,
        IpvsRequest::NewService(Service::new(tcp_10_96_0_1(), Scheduler::rr())),
        false,
    );
}

#[test]
fn set_service_persistent_with_netmask() {
    check_request(
        SET_SERVICE_TCP4,
        IpvsRequest::SetService(Service {
            flags: ServiceFlags(ServiceFlags::PERSISTENT),
            timeout: 300,
            netmask: 0xffff_ff00,
            ..Service::new(tcp_10_96_0_1(), sched("wrr"))
        }),
        false,
    );
}

#[test]
fn new_service_udp6_sh_with_flags() {
    check_request(
        NEW_SERVICE_UDP6_SH,
        IpvsRequest::NewService(Service {
            flags: ServiceFlags(ServiceFlags::SCHED1 | ServiceFlags::SCHED2),
            ..Service::new(udp6(), sched("sh"))
        }),
        false,
    );
}

#[test]
fn new_service_fwmark6_mh() {
    check_request(
        NEW_SERVICE_FWM6_MH,
        IpvsRequest::NewService(Service {
            flags: ServiceFlags(ServiceFlags::SCHED2),
            ..Service::new(
                ServiceKey::Fwmark {
                    family: AddressFamily::Inet6,
                    mark: 7,
                },
                sched("mh"),
            )
        }),
        false,
    );
}

#[test]
fn new_service_fwmark4() {
    check_request(
        NEW_SERVICE_FWM4,
        IpvsRequest::NewService(Service::new(
            ServiceKey::Fwmark {
                family: AddressFamily::Inet,
                mark: 9,
            },
            Scheduler::rr(),
        )),
        false,
    );
}

#[test]
fn new_service_sctp4() {
    let key = ServiceKey::Inet {
        protocol: Protocol::Sctp,
        addr: ip("10.96.0.2"),
        port: 9,
    };
    check_request(
        NEW_SERVICE_SCTP4,
        IpvsRequest::NewService(Service::new(key, sched("lc"))),
        false,
    );
}

#[test]
fn new_service_udp4_one_packet() {
    let key = ServiceKey::Inet {
        protocol: Protocol::Udp,
        addr: ip("10.96.0.10"),
        port: 53,
    };
    check_request(
        NEW_SERVICE_UDP4_OPS,
        IpvsRequest::NewService(Service {
            flags: ServiceFlags(ServiceFlags::ONEPACKET),
            ..Service::new(key, Scheduler::rr())
        }),
        false,
    );
}

#[test]
fn del_service() {
    check_request(
        DEL_SERVICE_TCP4,
        IpvsRequest::DelService(tcp_10_96_0_1()),
        true,
    );
}

#[test]
fn get_service_request_and_reply() {
    check_request(
        GET_SERVICE_REQ,
        IpvsRequest::GetService(tcp_10_96_0_1()),
        true,
    );
    let IpvsReply::Service(entry) = parse_reply(&bytes(GET_SERVICE_REPLY)) else {
        panic!("not a service")
    };
    assert_eq!(
        entry.service,
        Service {
            flags: ServiceFlags(ServiceFlags::PERSISTENT),
            timeout: 300,
            netmask: 0xffff_ff00,
            ..Service::new(tcp_10_96_0_1(), sched("wrr"))
        }
    );
    assert!(entry.unknown.is_empty());
    check_reply(GET_SERVICE_REPLY, &IpvsReply::Service(entry));
}

#[test]
fn dump_services_request_and_replies() {
    let m = bytes(DUMP_SERVICES_REQ);
    assert_eq!(parse_request(&m), IpvsRequest::DumpServices);
    // ipvsadm also sets NLM_F_ACK on dumps; we do not (NLMSG_DONE ends a dump).
    assert_eq!(
        u16_at(&m, 6),
        IpvsRequest::DumpServices.netlink_flags() | NLM_F_ACK
    );
    assert_eq!(encode_like(&IpvsRequest::DumpServices, &m), m);

    let datagram = bytes(DUMP_SERVICES_DATAGRAM);
    let mut keys = Vec::new();
    for part in codec::split_messages(&datagram) {
        let (h, payload) = part.unwrap();
        assert_eq!(h.message_type, 0x20);
        let start = payload.as_ptr() as usize - datagram.as_ptr() as usize - 16;
        let one = &datagram[start..start + h.length as usize];
        let reply = parse_reply(one);
        let IpvsReply::Service(e) = &reply else {
            panic!("not a service")
        };
        keys.push(e.service.key.to_string());
        check_reply(&hex(one), &reply);
    }
    keys.sort();
    assert_eq!(
        keys,
        [
            "10.96.0.10:53/UDP",
            "10.96.0.1:80/TCP",
            "10.96.0.2:9/SCTP",
            "FWM:7/IPv6",
            "FWM:9",
            "[fd00::1]:53/UDP",
        ]
    );
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

// ---------------------------------------------------------------------------------------
// Real servers

#[test]
fn new_dest_masq_with_thresholds() {
    check_request(
        NEW_DEST_MASQ4,
        IpvsRequest::NewDestination {
            service: tcp_10_96_0_1(),
            destination: Destination {
                weight: 3,
                upper_threshold: 100,
                lower_threshold: 10,
                ..Destination::masq(ip("10.255.0.2"), 8080)
            },
        },
        true,
    );
}

#[test]
fn set_dest() {
    check_request(
        SET_DEST_MASQ4,
        IpvsRequest::SetDestination {
            service: tcp_10_96_0_1(),
            destination: Destination {
                weight: 5,
                ..Destination::masq(ip("10.255.0.2"), 8080)
            },
        },
        true,
    );
}

#[test]
fn new_dest_gue_tunnel_ipv6() {
    check_request(
        NEW_DEST_GUE6,
        IpvsRequest::NewDestination {
            service: udp6(),
            destination: Destination {
                forward: ForwardMethod::Tunnel {
                    kind: TunnelType::Gue,
                    port: 6080,
                    flags: 1,
                },
                weight: 2,
                ..Destination::masq(ip("fd00:255::2"), 53)
            },
        },
        true,
    );
}

#[test]
fn new_dest_direct_route_on_fwmark() {
    check_request(
        NEW_DEST_FWM4_DR,
        IpvsRequest::NewDestination {
            service: ServiceKey::Fwmark {
                family: AddressFamily::Inet,
                mark: 9,
            },
            destination: Destination {
                forward: ForwardMethod::DirectRoute,
                ..Destination::masq(ip("10.255.0.3"), 0)
            },
        },
        true,
    );
}

#[test]
fn del_dest() {
    let m = bytes(DEL_DEST_MASQ4);
    let expected = IpvsRequest::DelDestination {
        service: tcp_10_96_0_1(),
        destination: DestinationKey {
            addr: ip("10.255.0.2"),
            port: 8080,
        },
    };
    assert_eq!(parse_request(&m), expected);
    // ipvsadm sends the whole real server; the kernel needs (and we send) its key:
    // ADDR_FAMILY, ADDR, PORT, which lead ipvsadm's DEST nest.
    let want = key_only(&m, &[11, 1, 2]);
    assert_eq!(encode_like(&expected, &m), want);
}

#[test]
fn dump_dests_request_and_reply() {
    let m = bytes(DUMP_DESTS_REQ4);
    let IpvsRequest::DumpDestinations(key) = parse_request(&m) else {
        panic!("not a destination dump")
    };
    // ipvsadm adds NLM_F_ACK to the dump; we do not.
    let ours = IpvsRequest::DumpDestinations(key);
    assert_eq!(u16_at(&m, 6), ours.netlink_flags() | NLM_F_ACK);
    assert_eq!(encode_like(&ours, &m), m);

    let reply = parse_reply(&bytes(DUMP_DESTS_REPLY));
    let IpvsReply::Destination(e) = &reply else {
        panic!("not a destination")
    };
    assert_eq!(e.active_conns + e.inactive_conns + e.persistent_conns, 0);
    assert!(e.unknown.is_empty());
    check_reply(DUMP_DESTS_REPLY, &reply);
}

// ---------------------------------------------------------------------------------------
// Configuration, info, zero, flush

#[test]
fn set_and_get_config() {
    let t = Timeouts {
        tcp: 900,
        tcp_fin: 120,
        udp: 300,
    };
    check_request(SET_CONFIG_REQ, IpvsRequest::SetConfig(t), false);
    check_request(GET_CONFIG_REQ, IpvsRequest::GetConfig, false);
    check_reply(GET_CONFIG_REPLY, &IpvsReply::Config(t));
}

#[test]
fn get_info() {
    check_request(GET_INFO_REQ, IpvsRequest::GetInfo, false);
    let reply = parse_reply(&bytes(GET_INFO_REPLY));
    let IpvsReply::Info(info) = reply else {
        panic!("not info")
    };
    assert_eq!(info.version_string(), "1.2.1");
    assert_eq!(info.conn_table_size, 4096);
    check_reply(GET_INFO_REPLY, &reply);
}

#[test]
fn zero_and_flush() {
    check_request(ZERO_REQ, IpvsRequest::Zero(None), false);
    check_request(FLUSH_REQ, IpvsRequest::Flush, false);
}

// ---------------------------------------------------------------------------------------
// Robustness

/// A newer kernel's extra attribute is kept, not fatal (synthetic: a captured reply with an
/// attribute of kind 60 appended to the service nest).
#[test]
fn unknown_attributes_are_kept() {
    let mut m = bytes(GET_SERVICE_REPLY);
    let extra = [8u8, 0, 60, 0, 1, 2, 3, 4];
    m.extend_from_slice(&extra);
    let total = u32::try_from(m.len()).unwrap();
    m[..4].copy_from_slice(&total.to_ne_bytes());
    let nest_len = u16_at(&m, 20) + 8;
    m[20..22].copy_from_slice(&nest_len.to_ne_bytes());
    let IpvsReply::Service(entry) = parse_reply(&m) else {
        panic!("not a service")
    };
    assert_eq!(
        entry.unknown,
        vec![codec::RawAttr {
            kind: 60,
            value: vec![1, 2, 3, 4]
        }]
    );
    check_reply(&hex(&m), &IpvsReply::Service(entry));
}

#[test]
fn hashed_flag_is_stripped_on_read() {
    let m = bytes(GET_SERVICE_REPLY);
    // The kernel reports PERSISTENT | HASHED (0x3) for this service.
    let IpvsReply::Service(entry) = parse_reply(&m) else {
        panic!("not a service")
    };
    assert_eq!(entry.service.flags.0 & ServiceFlags::HASHED, 0);
    assert!(hex(&m).contains("03000000ffffffff"));
}
