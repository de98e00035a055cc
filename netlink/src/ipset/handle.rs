//! A blocking ipset handle over one `NETLINK_NETFILTER` socket: protocol negotiation, set
//! create / destroy / flush / list, batched element add / del, and [`IpsetHandle::sync_set`],
//! which brings a set to a desired member list with a minimal diff.
//!
//! Blocking on purpose: every call is a short kernel round trip with no waiting on the network,
//! the netns tests create the socket on the thread that entered the namespace, and an async
//! caller can run a whole sync in `spawn_blocking`. The socket lives in the network namespace
//! of the thread that called [`IpsetHandle::new`].
//!
//! Batching: an ADD/DEL carries many elements in one `ADT` list (bounded so the nested
//! attribute length fits its u16), and many such messages go in one `send`. Every element
//! carries a line number; when one fails the kernel stops that message there and answers with
//! the failing line number instead of an ack (observed with `ipset restore`, see the codec
//! tests), so the handle records the failure by name and resends the elements after it.

use std::collections::{BTreeSet, HashMap};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_sys::{Socket, constants::NETLINK_NETFILTER};

use super::codec::errno as ipset_errno;
use super::codec::{
    CmdAttr, CreateAttr, ElemAttr, IPSET_MAXNAMELEN, IPSET_PROTOCOL, IPSET_PROTOCOL_MIN,
    IpsetMessage, NFPROTO_UNSPEC, cmd, describe_errno, member_attrs, member_from_attrs,
};
use super::types::{Member, SetSpec, SetType};
use crate::errno::ENOENT;
use crate::frame::split_datagram;
use crate::inet::AddressFamily;

/// `IPSET_FLAG_LIST_SETNAME`: a LIST dump that returns names only.
const IPSET_FLAG_LIST_SETNAME: u32 = 1 << 1;
/// Bytes of element attributes per ADD/DEL message. The `ADT` nest length is a u16, and the
/// kernel echoes a failing message whole, so a message stays well under 64 KiB.
const MAX_ADT_BYTES: usize = 32 * 1024;
/// Bytes per `send`: below the default `SO_SNDBUF` (212992) so no socket option is needed.
const MAX_SEND_BYTES: usize = 128 * 1024;
/// ADD/DEL messages built (as typed messages) per round trip: one `send`'s worth.
const MESSAGES_PER_SEND: usize = MAX_SEND_BYTES / MAX_ADT_BYTES;
/// Receive buffer for one datagram: a failing message comes back whole inside NLMSG_ERROR.
const RECV_BUF_BYTES: usize = 256 * 1024;
/// Requested `SO_RCVBUF`, so acks of a full send and error echoes are never dropped.
const SOCKET_RCVBUF: usize = 4 * 1024 * 1024;

/// An error from the ipset handle; each names the operation and the set.
#[derive(Debug, thiserror::Error)]
pub enum IpsetError {
    #[error("ipset: netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("ipset {op} {set}: netlink I/O: {source}")]
    Io {
        op: &'static str,
        set: String,
        #[source]
        source: std::io::Error,
    },
    #[error("ipset {op} {set}: kernel said: {message} (errno {errno})")]
    Kernel {
        op: &'static str,
        set: String,
        errno: i32,
        message: String,
    },
    #[error("ipset {op} {set}: cannot decode the kernel's answer: {reason}")]
    Decode {
        op: &'static str,
        set: String,
        reason: String,
    },
    #[error(
        "ipset: kernel speaks protocol {kernel}, this code needs {IPSET_PROTOCOL_MIN}..={IPSET_PROTOCOL}"
    )]
    Protocol { kernel: u8 },
    #[error("ipset: set name {0:?} is longer than {max} bytes", max = IPSET_MAXNAMELEN - 1)]
    NameTooLong(String),
    #[error("ipset {op} {set}: member {member} does not fit a {kind} set")]
    WrongMember {
        op: &'static str,
        set: String,
        member: String,
        kind: SetType,
    },
    /// Some elements failed; every other element of the batch was applied.
    #[error("ipset {op} {set}: {} element(s) failed, first: {}", failures.len(), failures.first().map(ToString::to_string).unwrap_or_default())]
    Elements {
        op: &'static str,
        set: String,
        failures: Vec<ElementFailure>,
    },
}

/// One element the kernel refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{element}: {message} (errno {errno})")]
pub struct ElementFailure {
    /// The element in `ipset` syntax (or its raw attributes when it is not a [`Member`]).
    pub element: String,
    pub errno: i32,
    pub message: String,
    /// Elements after this one that were not tried: an add found the hash set full, and
    /// every further add would fail the same way (one round trip each).
    pub not_tried: usize,
}

/// A set as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetListing {
    pub name: String,
    pub type_name: String,
    pub kind: Option<SetType>,
    pub family: u8,
    pub revision: u8,
    /// Create parameters and kernel counters (hashsize, maxelem, elements, ...).
    pub header: Vec<CreateAttr>,
    pub members: Vec<Member>,
    /// Elements that are not expressible as a [`Member`] (foreign content), kept raw so a
    /// sync can still delete them.
    pub unparsed: Vec<Vec<ElemAttr>>,
}

/// What [`IpsetHandle::sync_set`] changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub added: usize,
    pub deleted: usize,
}

/// The outcome of one request message.
enum Answer {
    Ack,
    /// A negative errno from the kernel, with the failing line number when the kernel echoed
    /// the request with `IPSET_ATTR_LINENO` rewritten.
    Nack {
        errno: i32,
        line: Option<u32>,
    },
}

/// One element to add or delete: the attributes and the name used in error reports.
struct Element {
    attrs: Vec<ElemAttr>,
    name: String,
}

/// A blocking ipset client over nfnetlink.
#[derive(Debug)]
pub struct IpsetHandle {
    socket: Socket,
    seq: u32,
    protocol: u8,
    revisions: HashMap<(SetType, u8), u8>,
    buf: Vec<u8>,
}

fn family_number(kind: SetType, family: AddressFamily) -> u8 {
    if kind.has_family() {
        // AF_INET/AF_INET6 (2, 10) fit a u8 by definition.
        family.number() as u8
    } else {
        NFPROTO_UNSPEC
    }
}

fn check_name(name: &str) -> Result<(), IpsetError> {
    if name.len() >= IPSET_MAXNAMELEN {
        return Err(IpsetError::NameTooLong(name.to_owned()));
    }
    Ok(())
}

impl IpsetHandle {
    /// Opens a socket in the calling thread's network namespace and negotiates the protocol
    /// (`IPSET_CMD_PROTOCOL`): the highest version both sides speak.
    pub fn new() -> Result<Self, IpsetError> {
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(IpsetError::Socket)?;
        socket.bind_auto().map_err(IpsetError::Socket)?;
        // Best effort: without it the default buffer still holds the acks of one send.
        let _ = socket.set_rx_buf_sz(SOCKET_RCVBUF);
        let mut handle = Self {
            socket,
            seq: std::process::id().wrapping_mul(1 << 16),
            protocol: IPSET_PROTOCOL,
            revisions: HashMap::new(),
            buf: Vec::with_capacity(RECV_BUF_BYTES),
        };
        let replies = handle.query(
            "protocol",
            "",
            IpsetMessage::request(cmd::PROTOCOL, NFPROTO_UNSPEC, IPSET_PROTOCOL, vec![]),
            0,
        )?;
        let kernel = replies
            .iter()
            .find_map(|m| {
                m.u8_attr(|a| match a {
                    CmdAttr::Protocol(p) => Some(*p),
                    _ => None,
                })
            })
            .unwrap_or(IPSET_PROTOCOL_MIN);
        let kernel_min = replies
            .iter()
            .find_map(|m| {
                m.u8_attr(|a| match a {
                    CmdAttr::ProtocolMin(p) => Some(*p),
                    _ => None,
                })
            })
            .unwrap_or(kernel);
        let chosen = kernel.min(IPSET_PROTOCOL);
        if chosen < IPSET_PROTOCOL_MIN || kernel_min > IPSET_PROTOCOL {
            return Err(IpsetError::Protocol { kernel });
        }
        handle.protocol = chosen;
        Ok(handle)
    }

    /// The negotiated protocol version.
    pub const fn protocol(&self) -> u8 {
        self.protocol
    }

    /// The highest revision of `kind` the kernel supports for `family` (`IPSET_CMD_TYPE`),
    /// asked once per handle, as the `ipset` tool does before every create.
    pub fn type_revision(
        &mut self,
        kind: SetType,
        family: AddressFamily,
    ) -> Result<u8, IpsetError> {
        let fam = family_number(kind, family);
        if let Some(rev) = self.revisions.get(&(kind, fam)) {
            return Ok(*rev);
        }
        let msg = IpsetMessage::request(
            cmd::TYPE,
            fam,
            self.protocol,
            vec![CmdAttr::TypeName(kind.name().into()), CmdAttr::Family(fam)],
        );
        let replies = self.query("type", kind.name(), msg, 0)?;
        let rev = replies
            .iter()
            .find_map(|m| {
                m.u8_attr(|a| match a {
                    CmdAttr::Revision(r) => Some(*r),
                    _ => None,
                })
            })
            .ok_or_else(|| IpsetError::Decode {
                op: "type",
                set: kind.name().into(),
                reason: "no IPSET_ATTR_REVISION in the reply".into(),
            })?;
        self.revisions.insert((kind, fam), rev);
        Ok(rev)
    }

    /// Creates the set, or succeeds if a set of that name already exists with the same
    /// parameters (`ipset create -exist`). A same-named set with other parameters is an
    /// `IPSET_ERR_EXIST` error.
    pub fn create(&mut self, spec: &SetSpec) -> Result<(), IpsetError> {
        check_name(&spec.name)?;
        let revision = self.type_revision(spec.kind, spec.family)?;
        let fam = family_number(spec.kind, spec.family);
        let data = match spec.kind {
            SetType::BitmapPort => vec![
                CreateAttr::Port(spec.port_range.0),
                CreateAttr::PortTo(spec.port_range.1),
            ],
            _ => vec![
                CreateAttr::HashSize(spec.hash_size),
                CreateAttr::MaxElem(spec.max_elements),
            ],
        };
        let msg = IpsetMessage::request(
            cmd::CREATE,
            fam,
            self.protocol,
            vec![
                CmdAttr::SetName(spec.name.clone()),
                CmdAttr::TypeName(spec.kind.name().into()),
                CmdAttr::Revision(revision),
                CmdAttr::Family(fam),
                CmdAttr::CreateData(data),
            ],
        );
        // No NLM_F_EXCL: an identical existing set is success, as with `-exist`.
        self.command("create", &spec.name, msg, NLM_F_CREATE)
    }

    /// Destroys the set; a set that does not exist is success.
    pub fn destroy(&mut self, name: &str) -> Result<(), IpsetError> {
        check_name(name)?;
        let msg = self.name_request(cmd::DESTROY, name);
        match self.command("destroy", name, msg, 0) {
            Err(IpsetError::Kernel { errno: ENOENT, .. }) => Ok(()),
            other => other,
        }
    }

    /// Removes every member of the set.
    pub fn flush(&mut self, name: &str) -> Result<(), IpsetError> {
        check_name(name)?;
        let msg = self.name_request(cmd::FLUSH, name);
        self.command("flush", name, msg, 0)
    }

    /// The names of every set in this network namespace.
    pub fn list_names(&mut self) -> Result<Vec<String>, IpsetError> {
        let msg = IpsetMessage::request(
            cmd::LIST,
            NFPROTO_UNSPEC,
            self.protocol,
            vec![CmdAttr::Flags(IPSET_FLAG_LIST_SETNAME)],
        );
        let replies = self.query("list", "(all)", msg, NLM_F_DUMP)?;
        let mut names: Vec<String> = replies
            .iter()
            .filter_map(|m| m.set_name().map(str::to_owned))
            .collect();
        names.dedup();
        Ok(names)
    }

    /// Lists one set: header and members, in one dump.
    pub fn list(&mut self, name: &str) -> Result<SetListing, IpsetError> {
        check_name(name)?;
        let msg = self.name_request(cmd::LIST, name);
        let replies = self.query("list", name, msg, NLM_F_DUMP)?;
        let mut listing = SetListing {
            name: name.to_owned(),
            type_name: String::new(),
            kind: None,
            family: NFPROTO_UNSPEC,
            revision: 0,
            header: Vec::new(),
            members: Vec::new(),
            unparsed: Vec::new(),
        };
        for m in &replies {
            // The header attributes come in the first message of the set only.
            for a in &m.attrs {
                match a {
                    CmdAttr::TypeName(t) => {
                        listing.type_name.clone_from(t);
                        listing.kind = SetType::from_name(t);
                    }
                    CmdAttr::Family(f) => listing.family = *f,
                    CmdAttr::Revision(r) => listing.revision = *r,
                    CmdAttr::CreateData(h) => listing.header.clone_from(h),
                    _ => {}
                }
            }
            for e in m.elements() {
                match listing.kind.and_then(|k| member_from_attrs(k, e)) {
                    Some(member) => listing.members.push(member),
                    None => listing.unparsed.push(e.to_vec()),
                }
            }
        }
        Ok(listing)
    }

    /// Adds members; members already present are success. Every member is tried: failures
    /// come back together in [`IpsetError::Elements`].
    pub fn add(&mut self, set: &str, kind: SetType, members: &[Member]) -> Result<(), IpsetError> {
        let elements = Self::elements("add", set, kind, members)?;
        self.batch("add", cmd::ADD, set, elements)
    }

    /// Deletes members; members already absent are success.
    pub fn del(&mut self, set: &str, kind: SetType, members: &[Member]) -> Result<(), IpsetError> {
        let elements = Self::elements("del", set, kind, members)?;
        self.batch("del", cmd::DEL, set, elements)
    }

    /// Ensures the set exists (as [`IpsetHandle::create`]) and holds exactly `desired`: one
    /// dump, then a delete batch of what is extra and an add batch of what is missing.
    /// Deletes go first so a full set has room for the adds.
    pub fn sync_set<'a>(
        &mut self,
        spec: &SetSpec,
        desired: impl IntoIterator<Item = &'a Member>,
    ) -> Result<SyncReport, IpsetError> {
        self.create(spec)?;
        let desired: BTreeSet<Member> = desired.into_iter().copied().collect();
        let current = self.list(&spec.name)?;
        let have: BTreeSet<Member> = current.members.iter().copied().collect();
        let extra: Vec<Member> = have.difference(&desired).copied().collect();
        let missing: Vec<Member> = desired.difference(&have).copied().collect();

        let mut deletes = Self::elements("del", &spec.name, spec.kind, &extra)?;
        deletes.extend(current.unparsed.into_iter().map(|attrs| Element {
            name: format!("{attrs:?}"),
            attrs,
        }));
        let report = SyncReport {
            added: missing.len(),
            deleted: deletes.len(),
        };
        let del_result = self.batch("del", cmd::DEL, &spec.name, deletes);
        let adds = Self::elements("add", &spec.name, spec.kind, &missing)?;
        let add_result = self.batch("add", cmd::ADD, &spec.name, adds);
        del_result.and(add_result).map(|()| report)
    }

    fn elements(
        op: &'static str,
        set: &str,
        kind: SetType,
        members: &[Member],
    ) -> Result<Vec<Element>, IpsetError> {
        check_name(set)?;
        members
            .iter()
            .map(|m| {
                if m.set_type() != kind {
                    return Err(IpsetError::WrongMember {
                        op,
                        set: set.to_owned(),
                        member: m.to_string(),
                        kind,
                    });
                }
                Ok(Element {
                    attrs: member_attrs(m),
                    name: m.to_string(),
                })
            })
            .collect()
    }

    fn name_request(&self, command: u8, name: &str) -> IpsetMessage {
        IpsetMessage::request(
            command,
            NFPROTO_UNSPEC,
            self.protocol,
            vec![CmdAttr::SetName(name.to_owned())],
        )
    }

    /// Sends elements in ADT batches until each is applied or has failed by name.
    fn batch(
        &mut self,
        op: &'static str,
        command: u8,
        set: &str,
        elements: Vec<Element>,
    ) -> Result<(), IpsetError> {
        let mut failures: Vec<ElementFailure> = Vec::new();
        let mut pending: Vec<&[Element]> = chunks(&elements);
        let mut full = false;
        while !pending.is_empty() && !full {
            let mut next = Vec::new();
            // A few messages per send: built all at once, the messages of a 10,000-member
            // set were a second copy of its elements (several MiB at a cold sync's peak).
            let mut windows = pending.chunks(MESSAGES_PER_SEND);
            for window in windows.by_ref() {
                full = self.batch_window(op, command, set, window, &mut failures, &mut next)?;
                if full {
                    break;
                }
            }
            if full {
                // Nothing more can be added: count what is left instead of trying it.
                let left: usize = windows.flatten().map(|c| c.len()).sum::<usize>()
                    + next.iter().map(|c| c.len()).sum::<usize>();
                if let Some(last) = failures.last_mut() {
                    last.not_tried += left;
                }
            }
            pending = next;
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(IpsetError::Elements {
                op,
                set: set.to_owned(),
                failures,
            })
        }
    }

    /// Sends one message per chunk of `window`; what a failing element left unsent goes to
    /// `next`, the failure to `failures`. `Ok(true)`: an add found the hash set full (the
    /// rest of each chunk is then counted as not tried, not queued).
    fn batch_window<'e>(
        &mut self,
        op: &'static str,
        command: u8,
        set: &str,
        window: &[&'e [Element]],
        failures: &mut Vec<ElementFailure>,
        next: &mut Vec<&'e [Element]>,
    ) -> Result<bool, IpsetError> {
        let mut full = false;
        let messages: Vec<IpsetMessage> = window
            .iter()
            .map(|chunk| {
                let adt = chunk
                    .iter()
                    .zip(1u32..)
                    .map(|(e, line)| {
                        let mut attrs = e.attrs.clone();
                        attrs.push(ElemAttr::LineNo(line));
                        attrs
                    })
                    .collect();
                IpsetMessage::request(
                    command,
                    NFPROTO_UNSPEC,
                    self.protocol,
                    vec![
                        CmdAttr::SetName(set.to_owned()),
                        // Present so the kernel reports the failing element's line.
                        CmdAttr::LineNo(0),
                        CmdAttr::Adt(adt),
                    ],
                )
            })
            .collect();
        let answers = self.transact(op, set, messages)?;
        for (chunk, answer) in window.iter().zip(answers) {
            match answer {
                Answer::Ack => {}
                Answer::Nack {
                    errno,
                    line: Some(line),
                } if line >= 1 && (line as usize) <= chunk.len() => {
                    let at = line as usize - 1;
                    // A hash set is full: every hash type's element has an IP. (A bitmap
                    // set reports an out-of-range element with the same errno: that one is
                    // per element, so the rest is resent.)
                    let set_full = full
                        || (command == cmd::ADD
                            && errno == ipset_errno::TYPE_SPECIFIC
                            && chunk[at].attrs.iter().any(|a| matches!(a, ElemAttr::Ip(_))));
                    let rest = &chunk[at + 1..];
                    failures.push(ElementFailure {
                        element: chunk[at].name.clone(),
                        errno,
                        message: describe_errno(errno),
                        not_tried: if set_full { rest.len() } else { 0 },
                    });
                    full |= set_full;
                    // The kernel stopped at the failing element: resend the rest.
                    if !set_full && !rest.is_empty() {
                        next.push(rest);
                    }
                }
                Answer::Nack { errno, .. } => {
                    // Not about one element (e.g. the set is missing): nothing applied.
                    return Err(IpsetError::Kernel {
                        op,
                        set: set.to_owned(),
                        errno,
                        message: describe_errno(errno),
                    });
                }
            }
        }
        Ok(full)
    }

    /// One request that expects an ack.
    fn command(
        &mut self,
        op: &'static str,
        set: &str,
        msg: IpsetMessage,
        extra_flags: u16,
    ) -> Result<(), IpsetError> {
        let flagged = vec![(msg, extra_flags)];
        match self.exchange(op, set, flagged)?.pop() {
            Some((Answer::Ack, _)) | None => Ok(()),
            Some((Answer::Nack { errno, .. }, _)) => Err(IpsetError::Kernel {
                op,
                set: set.to_owned(),
                errno,
                message: describe_errno(errno),
            }),
        }
    }

    /// One request whose answer is data (a reply or a dump).
    fn query(
        &mut self,
        op: &'static str,
        set: &str,
        msg: IpsetMessage,
        extra_flags: u16,
    ) -> Result<Vec<IpsetMessage>, IpsetError> {
        match self.exchange(op, set, vec![(msg, extra_flags)])?.pop() {
            Some((Answer::Ack, replies)) => Ok(replies),
            Some((Answer::Nack { errno, .. }, _)) => Err(IpsetError::Kernel {
                op,
                set: set.to_owned(),
                errno,
                message: describe_errno(errno),
            }),
            None => Ok(Vec::new()),
        }
    }

    /// Sends ADD/DEL messages with acks requested, many per `send`.
    fn transact(
        &mut self,
        op: &'static str,
        set: &str,
        messages: Vec<IpsetMessage>,
    ) -> Result<Vec<Answer>, IpsetError> {
        let flagged = messages.into_iter().map(|m| (m, 0)).collect();
        Ok(self
            .exchange(op, set, flagged)?
            .into_iter()
            .map(|(a, _)| a)
            .collect())
    }

    /// Serializes the messages with fresh sequence numbers, sends them packed into as few
    /// `send`s as fit, and collects one answer (plus any data replies) per message, matched by
    /// sequence number. Answers come back in request order.
    fn exchange(
        &mut self,
        op: &'static str,
        set: &str,
        messages: Vec<(IpsetMessage, u16)>,
    ) -> Result<Vec<(Answer, Vec<IpsetMessage>)>, IpsetError> {
        let io = |source| IpsetError::Io {
            op,
            set: set.to_owned(),
            source,
        };
        let mut results: Vec<Option<(Answer, Vec<IpsetMessage>)>> = Vec::new();
        let mut data: Vec<Vec<IpsetMessage>> = Vec::new();
        let mut out = Vec::new();
        let mut in_flight: HashMap<u32, usize> = HashMap::new();
        let total = messages.len();
        for (index, (msg, extra_flags)) in messages.into_iter().enumerate() {
            results.push(None);
            data.push(Vec::new());
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
            let last = index + 1 == total;
            if out.len() >= MAX_SEND_BYTES / 2 || last {
                self.socket.send(&out, 0).map_err(io)?;
                out.clear();
                while !in_flight.is_empty() {
                    self.receive(op, set, &mut in_flight, &mut results, &mut data)?;
                }
            }
        }
        Ok(results.into_iter().flatten().collect())
    }

    /// Reads one datagram and files every netlink message in it under its request.
    fn receive(
        &mut self,
        op: &'static str,
        set: &str,
        in_flight: &mut HashMap<u32, usize>,
        results: &mut [Option<(Answer, Vec<IpsetMessage>)>],
        data: &mut [Vec<IpsetMessage>],
    ) -> Result<(), IpsetError> {
        let decode = |reason: String| IpsetError::Decode {
            op,
            set: set.to_owned(),
            reason,
        };
        self.buf.clear();
        let n = self
            .socket
            .recv(&mut self.buf, 0)
            .map_err(|source| IpsetError::Io {
                op,
                set: set.to_owned(),
                source,
            })?;
        if n > self.buf.len() {
            return Err(decode(format!("datagram of {n} bytes truncated")));
        }
        for bytes in split_datagram(&self.buf[..n]) {
            let bytes = bytes.map_err(|e| decode(e.to_string()))?;
            let nl = NetlinkMessage::<IpsetMessage>::deserialize(bytes)
                .map_err(|e| decode(e.to_string()))?;
            let Some(&index) = in_flight.get(&nl.header.sequence_number) else {
                // A late answer to an earlier request: not ours to file.
                continue;
            };
            match nl.payload {
                NetlinkPayload::InnerMessage(msg) => {
                    data[index].push(msg);
                    // A plain reply (not part of a dump) is followed by the ack.
                }
                NetlinkPayload::Done(done) => {
                    in_flight.remove(&nl.header.sequence_number);
                    let answer = if done.code < 0 {
                        Answer::Nack {
                            errno: -done.code,
                            line: None,
                        }
                    } else {
                        Answer::Ack
                    };
                    results[index] = Some((answer, std::mem::take(&mut data[index])));
                }
                NetlinkPayload::Error(err) => {
                    in_flight.remove(&nl.header.sequence_number);
                    let answer = match err.code {
                        None => Answer::Ack,
                        Some(code) => Answer::Nack {
                            errno: -code.get(),
                            // The echoed request, with LINENO rewritten to the failing element.
                            line: NetlinkMessage::<IpsetMessage>::deserialize(&err.header)
                                .ok()
                                .and_then(|m| match m.payload {
                                    NetlinkPayload::InnerMessage(m) => m.line_no(),
                                    _ => None,
                                }),
                        },
                    };
                    results[index] = Some((answer, std::mem::take(&mut data[index])));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Splits elements into ADT-sized chunks.
fn chunks(elements: &[Element]) -> Vec<&[Element]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, e) in elements.iter().enumerate() {
        // DATA nest header + attributes + the line number attribute.
        let size = 4
            + 8
            + e.attrs
                .iter()
                .map(netlink_packet_core::Emitable::buffer_len)
                .sum::<usize>();
        if bytes + size > MAX_ADT_BYTES && i > start {
            out.push(&elements[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    if start < elements.len() {
        out.push(&elements[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_respect_the_adt_budget() {
        let elements: Vec<Element> = (0..5000u16)
            .map(|p| Element {
                attrs: member_attrs(&Member::Port(p)),
                name: p.to_string(),
            })
            .collect();
        let parts = chunks(&elements);
        assert!(parts.len() > 1);
        assert_eq!(parts.iter().map(|c| c.len()).sum::<usize>(), 5000);
        for c in parts {
            let size: usize = c
                .iter()
                .map(|e| {
                    12 + e
                        .attrs
                        .iter()
                        .map(netlink_packet_core::Emitable::buffer_len)
                        .sum::<usize>()
                })
                .sum();
            assert!(size <= MAX_ADT_BYTES);
        }
    }
}
