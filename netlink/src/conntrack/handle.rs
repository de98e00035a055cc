//! A blocking conntrack handle over one `NETLINK_NETFILTER` socket: dump the entries of a
//! family, delete entries by tuple and id, many deletes per `send`.
//!
//! Blocking, like the ipset handle: each call is a short kernel round trip. The socket lives
//! in the network namespace of the thread that called [`ConntrackHandle::new`].

use std::collections::HashMap;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_sys::{Socket, constants::NETLINK_NETFILTER};

use super::codec::{CtMessage, Entry};
use crate::errno::ENOENT;
use crate::frame::split_datagram;
use crate::inet::AddressFamily;

/// Bytes per `send`: below the default `SO_SNDBUF`.
const MAX_SEND_BYTES: usize = 64 * 1024;
/// Receive buffer for one datagram (a dump part holds many entries).
const RECV_BUF_BYTES: usize = 256 * 1024;
/// Requested `SO_RCVBUF`, so the acks of a full send are never dropped.
const SOCKET_RCVBUF: usize = 4 * 1024 * 1024;

/// An error from the conntrack handle; each names the operation.
#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    #[error("conntrack: netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("conntrack {op}: netlink I/O: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("conntrack {op}: kernel said: {} (errno {errno})", std::io::Error::from_raw_os_error(*.errno))]
    Kernel { op: &'static str, errno: i32 },
    #[error("conntrack {op}: cannot decode the kernel's answer: {reason}")]
    Decode { op: &'static str, reason: String },
}

/// What a delete batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeleteReport {
    /// Entries the kernel deleted.
    pub deleted: usize,
    /// Entries already gone (expired, or replaced by a newer one with another id).
    pub gone: usize,
    /// Entries the kernel refused, with the errno.
    pub failed: Vec<(Entry, i32)>,
}

/// A blocking ctnetlink client.
#[derive(Debug)]
pub struct ConntrackHandle {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

/// The answer to one request: its data replies and its final status (0 or a positive errno).
struct Answer {
    replies: Vec<CtMessage>,
    errno: i32,
}

impl ConntrackHandle {
    /// Opens a socket in the calling thread's network namespace.
    pub fn new() -> Result<Self, ConntrackError> {
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(ConntrackError::Socket)?;
        socket.bind_auto().map_err(ConntrackError::Socket)?;
        // Best effort: without it the default buffer still holds a few acks.
        let _ = socket.set_rx_buf_sz(SOCKET_RCVBUF);
        Ok(Self {
            socket,
            seq: std::process::id().wrapping_mul(1 << 16) ^ 0x00c7_0000,
            buf: Vec::with_capacity(RECV_BUF_BYTES),
        })
    }

    /// Every entry of `family` (one dump).
    pub fn dump(&mut self, family: AddressFamily) -> Result<Vec<Entry>, ConntrackError> {
        let fam = match family {
            AddressFamily::Inet => 2,
            AddressFamily::Inet6 => 10,
        };
        let mut answers = self.exchange("dump", vec![(CtMessage::dump(fam), NLM_F_DUMP)])?;
        let answer = answers.pop().ok_or_else(|| ConntrackError::Decode {
            op: "dump",
            reason: "no answer".into(),
        })?;
        if answer.errno != 0 {
            return Err(ConntrackError::Kernel {
                op: "dump",
                errno: answer.errno,
            });
        }
        Ok(answer.replies.iter().filter_map(CtMessage::entry).collect())
    }

    /// Deletes each entry (by original tuple, zone and id), many per `send`. An entry already
    /// gone is not a failure.
    pub fn delete(&mut self, entries: &[Entry]) -> Result<DeleteReport, ConntrackError> {
        let messages = entries.iter().map(|e| (e.delete_message(), 0)).collect();
        let mut report = DeleteReport::default();
        for (entry, answer) in entries.iter().zip(self.exchange("delete", messages)?) {
            match answer.errno {
                0 => report.deleted += 1,
                ENOENT => report.gone += 1,
                errno => report.failed.push((entry.clone(), errno)),
            }
        }
        Ok(report)
    }

    /// Serializes the messages with fresh sequence numbers (acks requested), sends them in as
    /// few `send`s as fit and collects one answer per message, in request order.
    fn exchange(
        &mut self,
        op: &'static str,
        messages: Vec<(CtMessage, u16)>,
    ) -> Result<Vec<Answer>, ConntrackError> {
        let io = |source| ConntrackError::Io { op, source };
        let total = messages.len();
        let mut answers: Vec<Option<Answer>> = Vec::with_capacity(total);
        let mut in_flight: HashMap<u32, usize> = HashMap::new();
        let mut out = Vec::new();
        for (index, (msg, extra_flags)) in messages.into_iter().enumerate() {
            answers.push(None);
            self.seq = self.seq.wrapping_add(1);
            let mut header = NetlinkHeader::default();
            header.flags = NLM_F_REQUEST | NLM_F_ACK | extra_flags;
            header.sequence_number = self.seq;
            let mut nl = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
            nl.finalize();
            let start = out.len();
            out.resize(start + nl.buffer_len(), 0);
            nl.serialize(&mut out[start..]);
            in_flight.insert(self.seq, index);
            if out.len() >= MAX_SEND_BYTES / 2 || index + 1 == total {
                self.socket.send(&out, 0).map_err(io)?;
                out.clear();
                let mut partial: HashMap<usize, Vec<CtMessage>> = HashMap::new();
                while !in_flight.is_empty() {
                    self.receive(op, &mut in_flight, &mut partial, &mut answers)?;
                }
            }
        }
        Ok(answers.into_iter().flatten().collect())
    }

    /// Reads one datagram and files every message in it under its request.
    fn receive(
        &mut self,
        op: &'static str,
        in_flight: &mut HashMap<u32, usize>,
        partial: &mut HashMap<usize, Vec<CtMessage>>,
        answers: &mut [Option<Answer>],
    ) -> Result<(), ConntrackError> {
        let decode = |reason: String| ConntrackError::Decode { op, reason };
        self.buf.clear();
        let n = self
            .socket
            .recv(&mut self.buf, 0)
            .map_err(|source| ConntrackError::Io { op, source })?;
        if n > self.buf.len() {
            return Err(decode(format!("datagram of {n} bytes truncated")));
        }
        for bytes in split_datagram(&self.buf[..n]) {
            let bytes = bytes.map_err(|e| decode(e.to_string()))?;
            let nl = NetlinkMessage::<CtMessage>::deserialize(bytes)
                .map_err(|e| decode(e.to_string()))?;
            let Some(&index) = in_flight.get(&nl.header.sequence_number) else {
                continue;
            };
            let errno = match nl.payload {
                NetlinkPayload::InnerMessage(msg) => {
                    partial.entry(index).or_default().push(msg);
                    continue;
                }
                NetlinkPayload::Done(done) => -done.code.min(0),
                NetlinkPayload::Error(err) => err.code.map_or(0, |c| -c.get()),
                _ => continue,
            };
            in_flight.remove(&nl.header.sequence_number);
            if let Some(slot) = answers.get_mut(index) {
                *slot = Some(Answer {
                    replies: partial.remove(&index).unwrap_or_default(),
                    errno,
                });
            }
        }
        Ok(())
    }
}
