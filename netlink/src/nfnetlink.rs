//! What ipset and conntrack share as nfnetlink subsystems: the `struct nfgenmsg` header after
//! the netlink header, and attribute lists emitted back to back.

use netlink_packet_core::{Emitable, Nla};

/// `NFNETLINK_V0`: the only `nfgenmsg.version` (linux/netfilter/nfnetlink.h).
pub const NFNETLINK_V0: u8 = 0;
/// `sizeof(struct nfgenmsg)`: family, version, big-endian resource id.
pub const NFGENMSG_LEN: usize = 4;

/// Writes `struct nfgenmsg` for `family` (resource id 0) into the first [`NFGENMSG_LEN`] bytes.
pub fn emit_header(family: u8, buffer: &mut [u8]) {
    buffer[0] = family;
    buffer[1] = NFNETLINK_V0;
    buffer[2..NFGENMSG_LEN].copy_from_slice(&0u16.to_be_bytes());
}

/// Bytes of `items` emitted back to back.
pub fn attrs_len<T: Nla>(items: &[T]) -> usize {
    items.iter().map(Emitable::buffer_len).sum()
}

/// Emits `items` back to back (each attribute pads itself to 4 bytes).
pub fn emit_attrs<T: Nla>(items: &[T], buffer: &mut [u8]) {
    let mut at = 0;
    for item in items {
        let len = item.buffer_len();
        item.emit(&mut buffer[at..at + len]);
        at += len;
    }
}
