//! Netlink framing shared by every protocol here: a received datagram holds netlink messages
//! back to back, each starting with `struct nlmsghdr` and padded to 4 bytes.

use netlink_packet_core::DecodeError;

/// `sizeof(struct nlmsghdr)`.
pub const NLMSG_HDR_LEN: usize = 16;

/// `NLMSG_ALIGN`: messages and attributes are padded to 4 bytes.
pub const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Splits a received datagram into its whole netlink messages (header included). Trailing
/// bytes shorter than a header are ignored; a length that is shorter than a header or runs
/// past the datagram is an error and ends the iteration. Pure and allocation free.
pub fn split_datagram(mut buf: &[u8]) -> impl Iterator<Item = Result<&[u8], DecodeError>> {
    std::iter::from_fn(move || {
        if buf.len() < NLMSG_HDR_LEN {
            return None;
        }
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < NLMSG_HDR_LEN || len > buf.len() {
            buf = &[];
            return Some(Err(DecodeError::from(format!(
                "netlink message length {len} out of bounds"
            ))));
        }
        let message = &buf[..len];
        buf = &buf[align4(len).min(buf.len())..];
        Some(Ok(message))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(len: u32, fill: u8) -> Vec<u8> {
        let mut m = len.to_ne_bytes().to_vec();
        m.resize(len as usize, fill);
        m
    }

    #[test]
    fn messages_are_split_at_their_padded_lengths() {
        let mut datagram = message(17, 1);
        datagram.extend([0; 3]); // padding to 20
        datagram.extend(message(16, 2));
        datagram.extend([9; 5]); // shorter than a header: ignored
        let parts: Vec<&[u8]> = split_datagram(&datagram).map(Result::unwrap).collect();
        assert_eq!(parts, [&datagram[..17], &datagram[20..36]]);
    }

    #[test]
    fn a_length_out_of_bounds_is_an_error_and_ends_the_split() {
        for bad in [15u32, 64] {
            let mut datagram = message(16, 0);
            datagram.extend(bad.to_ne_bytes());
            datagram.resize(40, 0);
            let parts: Vec<_> = split_datagram(&datagram).collect();
            assert_eq!(parts.len(), 2, "length {bad}");
            assert!(parts[0].is_ok());
            assert!(parts[1].is_err());
        }
    }
}
