//! The async IPVS handle: one generic-netlink socket, the family resolved once, typed
//! requests, dumps, and the batch path ([`IpvsHandle::apply`]) that the proxier programs the
//! kernel with.
//!
//! This module owns the I/O and the mapping of kernel errors to [`IpvsError`]; every byte on
//! the wire comes from [`super::codec`].

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::ops::Range;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NetlinkMessage, ParseableParametrized,
};
use netlink_packet_generic::GenlMessage;
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_sys::{
    AsyncSocket, AsyncSocketExt, SocketAddr, TokioSocket, protocols::NETLINK_GENERIC,
};

use super::codec::{
    self, DestinationEntry, IpvsInfo, IpvsReply, IpvsRequest, ServiceEntry, Timeouts,
};
/// `NLMSG_MIN_TYPE`: types below it are netlink's own (error, done, ...).
const NLMSG_MIN_TYPE: u16 = 0x10;

use crate::errno;

use super::types::{Destination, DestinationKey, Service, ServiceKey, Table, VirtualServer};

/// What went wrong, as a caller can act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// `EEXIST`: the service or real server is already there.
    AlreadyExists,
    /// `ESRCH`: no such virtual service.
    NoSuchService,
    /// `ENOENT` on a real-server command: no such real server.
    NotFound,
    /// `ENOENT` on a service add or update: the scheduler (or persistence engine) module
    /// does not exist or could not be loaded.
    UnknownScheduler,
    /// `EINVAL`: a missing or bad attribute (e.g. a real server address that is not unicast
    /// or has no route).
    InvalidArgument,
    /// Any other errno.
    Other(i32),
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AlreadyExists => f.write_str("already exists"),
            Self::NoSuchService => f.write_str("no such service"),
            Self::NotFound => f.write_str("no such real server"),
            Self::UnknownScheduler => f.write_str("unknown scheduler or persistence engine"),
            Self::InvalidArgument => f.write_str("invalid argument"),
            Self::Other(errno) => write!(f, "{}", io::Error::from_raw_os_error(*errno)),
        }
    }
}

/// An IPVS failure.
#[derive(Debug, thiserror::Error)]
pub enum IpvsError {
    /// The kernel has no generic-netlink family "IPVS" (`CONFIG_IP_VS` unset or the module
    /// not loaded).
    #[error(
        "IPVS is not available: the kernel has no generic netlink family \"IPVS\" (ip_vs module not loaded?)"
    )]
    IpvsUnavailable,
    /// The kernel refused one request; `what` names the operation and its object, e.g.
    /// `add service 10.96.0.1:80/TCP`.
    #[error("{what}: {kind}")]
    Kernel {
        what: String,
        kind: ErrorKind,
        errno: i32,
    },
    /// The acknowledgement of a batched request never came back (receive buffer overrun):
    /// whether the kernel applied it is unknown.
    #[error("{what}: acknowledgement lost (netlink receive buffer overrun)")]
    AckLost { what: String },
    #[error("IPVS netlink socket: {0}")]
    Io(#[from] io::Error),
    #[error("malformed IPVS netlink message: {0}")]
    Decode(String),
}

impl IpvsError {
    /// The kind of a kernel refusal, if this is one.
    pub fn kind(&self) -> Option<ErrorKind> {
        match self {
            Self::Kernel { kind, .. } => Some(*kind),
            _ => None,
        }
    }

    fn kernel(what: String, errno: i32, service_cmd: bool) -> Self {
        let kind = match errno {
            errno::EEXIST => ErrorKind::AlreadyExists,
            errno::ESRCH => ErrorKind::NoSuchService,
            errno::ENOENT if service_cmd => ErrorKind::UnknownScheduler,
            errno::ENOENT => ErrorKind::NotFound,
            errno::EINVAL => ErrorKind::InvalidArgument,
            other => ErrorKind::Other(other),
        };
        Self::Kernel { what, kind, errno }
    }
}

/// One change to the IPVS table, for [`IpvsHandle::apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// Boxed: a batch holds 100,000s of operations, most of them real-server ones, and a
    /// service inline would make every operation 80 bytes instead of 64.
    AddService(Box<Service>),
    UpdateService(Box<Service>),
    DeleteService(ServiceKey),
    AddDestination(ServiceKey, Destination),
    UpdateDestination(ServiceKey, Destination),
    DeleteDestination(ServiceKey, DestinationKey),
}

impl Operation {
    pub fn to_request(&self) -> IpvsRequest {
        match self {
            Self::AddService(s) => IpvsRequest::NewService((**s).clone()),
            Self::UpdateService(s) => IpvsRequest::SetService((**s).clone()),
            Self::DeleteService(k) => IpvsRequest::DelService(*k),
            Self::AddDestination(k, d) => IpvsRequest::NewDestination {
                service: *k,
                destination: d.clone(),
            },
            Self::UpdateDestination(k, d) => IpvsRequest::SetDestination {
                service: *k,
                destination: d.clone(),
            },
            Self::DeleteDestination(k, d) => IpvsRequest::DelDestination {
                service: *k,
                destination: *d,
            },
        }
    }

    /// The virtual server the operation is about.
    pub fn service_key(&self) -> ServiceKey {
        match self {
            Self::AddService(s) | Self::UpdateService(s) => s.key,
            Self::DeleteService(k)
            | Self::AddDestination(k, _)
            | Self::UpdateDestination(k, _)
            | Self::DeleteDestination(k, _) => *k,
        }
    }

    /// `add service 10.96.0.1:80/TCP`, `delete real server 10.0.0.2:8080 of 10.96.0.1:80/TCP`.
    pub fn describe(&self) -> String {
        match self {
            Self::AddService(s) => format!("add service {}", s.key),
            Self::UpdateService(s) => format!("update service {}", s.key),
            Self::DeleteService(k) => format!("delete service {k}"),
            Self::AddDestination(k, d) => format!("add real server {} to {k}", d.key()),
            Self::UpdateDestination(k, d) => format!("update real server {} of {k}", d.key()),
            Self::DeleteDestination(k, d) => format!("delete real server {d} of {k}"),
        }
    }

    /// Whether ENOENT means "unknown scheduler" (service commands) rather than "no such real
    /// server".
    const fn is_service_command(&self) -> bool {
        matches!(
            self,
            Self::AddService(_) | Self::UpdateService(_) | Self::DeleteService(_)
        )
    }
}

/// Limits of one `sendmsg` of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Bytes of requests per `sendmsg` (below the socket's send buffer).
    pub max_bytes: usize,
    /// Requests per `sendmsg`, so that all their acks fit the receive buffer at once (the
    /// kernel answers the whole buffer before we read anything).
    pub max_messages: usize,
}

/// Receive buffer we ask for: 16 MiB holds the acks of thousands of requests.
const WANT_RCVBUF: usize = 16 << 20;
/// Send buffer we ask for: a `sendmsg` must stay below it.
const WANT_SNDBUF: usize = 4 << 20;
/// Upper bound of one batch `sendmsg`.
const MAX_BATCH_BYTES: usize = 1 << 20;
/// What one queued ack costs in the receive buffer (skb truesize), with margin: a capped ack
/// is 36 bytes of data but a few hundred of socket buffer bookkeeping.
const ACK_TRUESIZE: usize = 1280;
/// Receive buffer for one datagram: larger than any dump skb (the kernel caps them at 32 KiB).
const RECV_BUF: usize = 64 << 10;

/// An open IPVS generic-netlink socket with the family resolved.
pub struct IpvsHandle {
    socket: TokioSocket,
    family_id: u16,
    seq: u32,
    limits: BatchLimits,
    rx: Vec<u8>,
    tx: Vec<u8>,
}

impl fmt::Debug for IpvsHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IpvsHandle")
            .field("family_id", &self.family_id)
            .field("seq", &self.seq)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl IpvsHandle {
    /// Opens a socket in the current network namespace and resolves the "IPVS" family.
    /// Fails with [`IpvsError::IpvsUnavailable`] on a kernel without IPVS.
    pub async fn connect() -> Result<Self, IpvsError> {
        let mut socket = TokioSocket::new(NETLINK_GENERIC)?;
        socket.socket_mut().bind_auto()?;
        socket.socket_mut().connect(&SocketAddr::new(0, 0))?;
        let limits = tune_socket(&socket);
        let mut handle = Self {
            socket,
            family_id: 0,
            seq: 1,
            limits,
            rx: Vec::with_capacity(RECV_BUF),
            tx: Vec::new(),
        };
        handle.family_id = handle.resolve_family().await?;
        Ok(handle)
    }

    /// The genl family id the kernel gave IPVS.
    pub fn family_id(&self) -> u16 {
        self.family_id
    }

    pub fn batch_limits(&self) -> BatchLimits {
        self.limits
    }

    /// Overrides the batch limits (tests use tiny ones to exercise chunking).
    pub fn set_batch_limits(&mut self, limits: BatchLimits) {
        self.limits = BatchLimits {
            max_bytes: limits.max_bytes.max(1),
            max_messages: limits.max_messages.max(1),
        };
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1).max(1);
        self.seq
    }

    async fn recv_datagram(&mut self) -> Result<(), IpvsError> {
        self.rx.clear();
        self.socket.recv(&mut self.rx).await?;
        Ok(())
    }

    async fn resolve_family(&mut self) -> Result<u16, IpvsError> {
        let seq = self.next_seq();
        let mut msg = NetlinkMessage::from(GenlMessage::from_payload(GenlCtrl {
            cmd: GenlCtrlCmd::GetFamily,
            nlas: vec![GenlCtrlAttrs::FamilyName(codec::FAMILY_NAME.to_owned())],
        }));
        msg.header.flags = NLM_F_REQUEST | NLM_F_ACK;
        msg.header.sequence_number = seq;
        msg.finalize();
        let mut buf = vec![0; msg.buffer_len()];
        msg.serialize(&mut buf);
        self.socket.send(&buf).await?;
        let mut family = None;
        loop {
            self.recv_datagram().await?;
            let mut done = false;
            for m in codec::split_messages(&self.rx) {
                let (h, payload) = m.map_err(|e| IpvsError::Decode(e.to_string()))?;
                if h.seq != seq {
                    continue;
                }
                match h.message_type {
                    NLMSG_ERROR => {
                        let code = codec::error_code(payload)
                            .map_err(|e| IpvsError::Decode(e.to_string()))?;
                        if code != 0 {
                            // ENOENT: no such family.
                            return Err(IpvsError::IpvsUnavailable);
                        }
                        done = true;
                    }
                    // Any other type is the controller's answer (GENL_ID_CTRL).
                    t if t >= NLMSG_MIN_TYPE => {
                        family = codec::ctrl_family_id(payload)
                            .map_err(|e| IpvsError::Decode(e.to_string()))?;
                    }
                    _ => done = true,
                }
            }
            if done {
                break;
            }
        }
        family.ok_or(IpvsError::IpvsUnavailable)
    }

    /// Sends one request and collects its replies: until the ack for a plain request, until
    /// `NLMSG_DONE` for a dump.
    async fn request(
        &mut self,
        request: &IpvsRequest,
        what: impl FnOnce() -> String,
        service_cmd: bool,
    ) -> Result<Vec<IpvsReply>, IpvsError> {
        let seq = self.next_seq();
        let mut buf = Vec::with_capacity(256);
        codec::encode_request(
            &mut buf,
            self.family_id,
            seq,
            request.netlink_flags(),
            request,
        );
        self.socket.send(&buf).await?;
        let mut replies = Vec::new();
        loop {
            self.recv_datagram().await?;
            let mut finished = None;
            for m in codec::split_messages(&self.rx) {
                let (h, payload) = m.map_err(|e| IpvsError::Decode(e.to_string()))?;
                if h.seq != seq {
                    continue; // a stray answer to an earlier, abandoned request
                }
                match h.message_type {
                    NLMSG_ERROR => {
                        let code = codec::error_code(payload)
                            .map_err(|e| IpvsError::Decode(e.to_string()))?;
                        finished = Some(code);
                    }
                    NLMSG_DONE => finished = Some(0),
                    t if t == self.family_id => {
                        let genl = GenlMessage::<IpvsReply>::parse_with_param(payload, t)
                            .map_err(|e| IpvsError::Decode(e.to_string()))?;
                        replies.push(genl.payload);
                    }
                    _ => {}
                }
            }
            match finished {
                Some(0) => return Ok(replies),
                Some(code) => return Err(IpvsError::kernel(what(), -code, service_cmd)),
                None => {}
            }
        }
    }

    async fn simple(&mut self, op: &Operation) -> Result<(), IpvsError> {
        self.request(&op.to_request(), || op.describe(), op.is_service_command())
            .await
            .map(drop)
    }

    pub async fn add_service(&mut self, service: &Service) -> Result<(), IpvsError> {
        self.simple(&Operation::AddService(Box::new(service.clone())))
            .await
    }

    pub async fn update_service(&mut self, service: &Service) -> Result<(), IpvsError> {
        self.simple(&Operation::UpdateService(Box::new(service.clone())))
            .await
    }

    pub async fn delete_service(&mut self, key: &ServiceKey) -> Result<(), IpvsError> {
        self.simple(&Operation::DeleteService(*key)).await
    }

    pub async fn add_destination(
        &mut self,
        service: &ServiceKey,
        d: &Destination,
    ) -> Result<(), IpvsError> {
        self.simple(&Operation::AddDestination(*service, d.clone()))
            .await
    }

    pub async fn update_destination(
        &mut self,
        service: &ServiceKey,
        d: &Destination,
    ) -> Result<(), IpvsError> {
        self.simple(&Operation::UpdateDestination(*service, d.clone()))
            .await
    }

    pub async fn delete_destination(
        &mut self,
        service: &ServiceKey,
        d: &DestinationKey,
    ) -> Result<(), IpvsError> {
        self.simple(&Operation::DeleteDestination(*service, *d))
            .await
    }

    /// One service, or `Ok(None)` when there is no such service.
    pub async fn get_service(
        &mut self,
        key: &ServiceKey,
    ) -> Result<Option<ServiceEntry>, IpvsError> {
        let what = || format!("get service {key}");
        match self
            .request(&IpvsRequest::GetService(*key), what, false)
            .await
        {
            Ok(replies) => Ok(replies.into_iter().find_map(|r| match r {
                IpvsReply::Service(e) => Some(e),
                _ => None,
            })),
            Err(e) if e.kind() == Some(ErrorKind::NoSuchService) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every service.
    pub async fn dump_services(&mut self) -> Result<Vec<ServiceEntry>, IpvsError> {
        let replies = self
            .request(
                &IpvsRequest::DumpServices,
                || "list services".to_owned(),
                false,
            )
            .await?;
        Ok(replies
            .into_iter()
            .filter_map(|r| match r {
                IpvsReply::Service(e) => Some(e),
                _ => None,
            })
            .collect())
    }

    /// The real servers of one service.
    pub async fn dump_destinations(
        &mut self,
        key: &ServiceKey,
    ) -> Result<Vec<DestinationEntry>, IpvsError> {
        let replies = self
            .request(
                &IpvsRequest::DumpDestinations(*key),
                || format!("list real servers of {key}"),
                false,
            )
            .await?;
        Ok(replies
            .into_iter()
            .filter_map(|r| match r {
                IpvsReply::Destination(e) => Some(e),
                _ => None,
            })
            .collect())
    }

    /// The whole table: every service and its real servers.
    pub async fn read_table(&mut self) -> Result<Table, IpvsError> {
        let mut table = Table::default();
        for entry in self.dump_services().await? {
            let key = entry.service.key;
            let mut vs = VirtualServer::new(entry.service);
            for d in self.dump_destinations(&key).await? {
                vs.destinations_mut()
                    .insert(d.destination.key(), d.destination);
            }
            table.services.insert(key, vs);
        }
        Ok(table)
    }

    /// Removes every service and real server.
    pub async fn flush(&mut self) -> Result<(), IpvsError> {
        self.request(&IpvsRequest::Flush, || "flush".to_owned(), false)
            .await
            .map(drop)
    }

    /// Zeroes all counters.
    pub async fn zero(&mut self) -> Result<(), IpvsError> {
        self.request(
            &IpvsRequest::Zero(None),
            || "zero counters".to_owned(),
            false,
        )
        .await
        .map(drop)
    }

    /// The tcp / tcpfin / udp connection timeouts.
    pub async fn get_timeouts(&mut self) -> Result<Timeouts, IpvsError> {
        let replies = self
            .request(&IpvsRequest::GetConfig, || "get timeouts".to_owned(), false)
            .await?;
        replies
            .into_iter()
            .find_map(|r| match r {
                IpvsReply::Config(t) => Some(t),
                _ => None,
            })
            .ok_or_else(|| IpvsError::Decode("GET_CONFIG without a reply".to_owned()))
    }

    /// Sets the timeouts; a 0 leaves that one unchanged.
    pub async fn set_timeouts(&mut self, t: &Timeouts) -> Result<(), IpvsError> {
        self.request(
            &IpvsRequest::SetConfig(*t),
            || "set timeouts".to_owned(),
            false,
        )
        .await
        .map(drop)
    }

    /// IPVS version and connection table size.
    pub async fn get_info(&mut self) -> Result<IpvsInfo, IpvsError> {
        let replies = self
            .request(&IpvsRequest::GetInfo, || "get info".to_owned(), false)
            .await?;
        replies
            .into_iter()
            .find_map(|r| match r {
                IpvsReply::Info(i) => Some(i),
                _ => None,
            })
            .ok_or_else(|| IpvsError::Decode("GET_INFO without a reply".to_owned()))
    }

    /// Applies many operations with few system calls: the requests are packed into as few
    /// `sendmsg` buffers as [`BatchLimits`] allow, each with `NLM_F_ACK` and its own sequence
    /// number. The kernel runs every message of a buffer independently and in order, so one
    /// failure does not stop the others. Returns one result per operation, in order.
    ///
    /// An I/O failure of the socket itself fails the operations not yet answered.
    pub async fn apply(&mut self, ops: &[Operation]) -> Applied {
        let mut results = Applied::new(ops.len());
        let mut next = 0;
        while next < ops.len() {
            let chunk = self.encode_chunk(ops, next);
            let base_seq = self.seq.wrapping_sub((chunk.len() - 1) as u32);
            if let Err(e) = self
                .send_chunk_and_collect(ops, chunk.clone(), base_seq, &mut results)
                .await
            {
                let msg = e.to_string();
                for i in chunk.clone() {
                    if !results.is_answered(i) {
                        let what = format!("{}: {msg}", ops[i].describe());
                        results.set(i, Err(IpvsError::Io(io::Error::other(what))));
                    }
                }
            }
            next = chunk.end;
        }
        // The batch buffer grows to the largest batch this call sent (up to `max_bytes`,
        // ~200 KiB with the default send buffer): kept, one burst of changes would pin that
        // much for the life of the daemon; the next call grows a new one as it encodes.
        self.tx = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            if !results.is_answered(i) {
                results.set(
                    i,
                    Err(IpvsError::AckLost {
                        what: op.describe(),
                    }),
                );
            }
        }
        results
    }

    /// Encodes `ops[start..]` into `self.tx` up to the batch limits (at least one); returns
    /// the range encoded. Sequence numbers are consecutive from `self.seq + 1`.
    fn encode_chunk(&mut self, ops: &[Operation], start: usize) -> Range<usize> {
        let mut tx = std::mem::take(&mut self.tx);
        tx.clear();
        let mut end = start;
        while end < ops.len() && end - start < self.limits.max_messages {
            let mark = tx.len();
            let seq = self.seq.wrapping_add(1).max(1);
            let req = ops[end].to_request();
            codec::encode_request(
                &mut tx,
                self.family_id,
                seq,
                NLM_F_REQUEST | NLM_F_ACK,
                &req,
            );
            if tx.len() > self.limits.max_bytes && end > start {
                tx.truncate(mark);
                break;
            }
            self.seq = seq;
            end += 1;
        }
        self.tx = tx;
        start..end
    }

    async fn send_chunk_and_collect(
        &mut self,
        ops: &[Operation],
        chunk: Range<usize>,
        base_seq: u32,
        results: &mut Applied,
    ) -> Result<(), IpvsError> {
        self.socket.send(&self.tx).await?;
        let mut pending = chunk.len();
        while pending > 0 {
            match self.recv_datagram().await {
                Ok(()) => {}
                Err(IpvsError::Io(e)) if e.raw_os_error() == Some(errno::ENOBUFS) => {
                    // Acks were dropped: the ones still queued are read below, the lost ones
                    // stay `None` and become `AckLost`.
                    self.drain_acks(ops, &chunk, base_seq, results, &mut pending)
                        .await;
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
            absorb_acks(&self.rx, ops, &chunk, base_seq, results, &mut pending)?;
        }
        Ok(())
    }

    async fn drain_acks(
        &mut self,
        ops: &[Operation],
        chunk: &Range<usize>,
        base_seq: u32,
        results: &mut Applied,
        pending: &mut usize,
    ) {
        while *pending > 0 {
            let got =
                tokio::time::timeout(std::time::Duration::from_millis(200), self.recv_datagram())
                    .await;
            match got {
                Ok(Ok(())) => {
                    if absorb_acks(&self.rx, ops, chunk, base_seq, results, pending).is_err() {
                        return;
                    }
                }
                Ok(Err(IpvsError::Io(e))) if e.raw_os_error() == Some(errno::ENOBUFS) => {}
                _ => return,
            }
        }
    }
}

/// The outcome of [`IpvsHandle::apply`]: one result per operation, in order. Kept compactly
/// (a flag per operation and the errors of those that failed): a batch may hold 100,000s of
/// operations, nearly all acknowledged, and a full `Result` each was 40 bytes apiece while
/// the operations themselves were still alive.
#[derive(Debug)]
pub struct Applied {
    answered: Vec<bool>,
    errors: BTreeMap<usize, IpvsError>,
}

impl Applied {
    fn new(len: usize) -> Self {
        Self {
            answered: vec![false; len],
            errors: BTreeMap::new(),
        }
    }

    fn is_answered(&self, index: usize) -> bool {
        self.answered.get(index).copied().unwrap_or(true)
    }

    fn set(&mut self, index: usize, result: Result<(), IpvsError>) {
        if let Some(answered) = self.answered.get_mut(index) {
            *answered = true;
        }
        if let Err(e) = result {
            self.errors.insert(index, e);
        }
    }

    /// The number of operations (= results).
    pub fn len(&self) -> usize {
        self.answered.len()
    }

    pub fn is_empty(&self) -> bool {
        self.answered.is_empty()
    }

    /// How many failed.
    pub fn failed(&self) -> usize {
        self.errors.len()
    }

    /// The results in operation order.
    pub fn iter(&self) -> impl Iterator<Item = Result<(), &IpvsError>> + '_ {
        (0..self.len()).map(|i| self.errors.get(&i).map_or(Ok(()), Err))
    }
}

impl IntoIterator for Applied {
    type Item = Result<(), IpvsError>;
    type IntoIter = AppliedIter;

    fn into_iter(self) -> AppliedIter {
        AppliedIter {
            next: 0,
            len: self.answered.len(),
            errors: self.errors.into_iter().peekable(),
        }
    }
}

/// The results of an [`Applied`], owned, in operation order.
#[derive(Debug)]
pub struct AppliedIter {
    next: usize,
    len: usize,
    errors: std::iter::Peekable<std::collections::btree_map::IntoIter<usize, IpvsError>>,
}

impl Iterator for AppliedIter {
    type Item = Result<(), IpvsError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.len {
            return None;
        }
        let index = self.next;
        self.next += 1;
        match self.errors.next_if(|(i, _)| *i == index) {
            Some((_, e)) => Some(Err(e)),
            None => Some(Ok(())),
        }
    }
}

/// Records the acks in one datagram against the operations of the chunk they answer.
fn absorb_acks(
    rx: &[u8],
    ops: &[Operation],
    chunk: &Range<usize>,
    base_seq: u32,
    results: &mut Applied,
    pending: &mut usize,
) -> Result<(), IpvsError> {
    for m in codec::split_messages(rx) {
        let (h, payload) = m.map_err(|e| IpvsError::Decode(e.to_string()))?;
        if h.message_type != NLMSG_ERROR {
            continue;
        }
        let offset = h.seq.wrapping_sub(base_seq) as usize;
        if offset >= chunk.len() {
            continue; // not ours: an answer to an earlier request
        }
        let index = chunk.start + offset;
        if results.is_answered(index) {
            continue;
        }
        let code = codec::error_code(payload).map_err(|e| IpvsError::Decode(e.to_string()))?;
        let op = &ops[index];
        results.set(
            index,
            if code == 0 {
                Ok(())
            } else {
                Err(IpvsError::kernel(
                    op.describe(),
                    -code,
                    op.is_service_command(),
                ))
            },
        );
        *pending = pending.saturating_sub(1);
    }
    Ok(())
}

/// Sizes the socket buffers for batches and asks for capped acks; returns the batch limits
/// that the buffers we actually got allow.
fn tune_socket(socket: &TokioSocket) -> BatchLimits {
    use nix::sys::socket::{setsockopt, sockopt};
    let s = socket.socket_ref();
    // Capped acks: an error ack then carries only the request's header, not the request.
    let _ = s.set_cap_ack(true);
    // The *FORCE variants pass rmem_max / wmem_max; they need CAP_NET_ADMIN, which IPVS
    // needs anyway. Fall back to the plain ones (capped by the sysctls).
    if setsockopt(s, sockopt::RcvBufForce, &WANT_RCVBUF).is_err() {
        let _ = s.set_rx_buf_sz(WANT_RCVBUF);
    }
    if setsockopt(s, sockopt::SndBufForce, &WANT_SNDBUF).is_err() {
        let _ = setsockopt(s, sockopt::SndBuf, &WANT_SNDBUF);
    }
    let rcvbuf = s.get_rx_buf_sz().unwrap_or(212_992);
    let sndbuf = nix::sys::socket::getsockopt(s, sockopt::SndBuf).unwrap_or(212_992);
    BatchLimits {
        // netlink_sendmsg refuses a message longer than sk_sndbuf - 32.
        max_bytes: sndbuf.saturating_sub(1024).clamp(4096, MAX_BATCH_BYTES),
        max_messages: (rcvbuf / ACK_TRUESIZE).max(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_names_the_object() {
        let op = Operation::AddService(Box::new(Service::new(
            ServiceKey::Inet {
                protocol: crate::Protocol::Tcp,
                addr: "10.96.0.1".parse().unwrap(),
                port: 80,
            },
            crate::ipvs::Scheduler::rr(),
        )));
        let e = IpvsError::kernel(op.describe(), 17, true);
        assert_eq!(
            e.to_string(),
            "add service 10.96.0.1:80/TCP: already exists"
        );
        assert_eq!(e.kind(), Some(ErrorKind::AlreadyExists));
        let e = IpvsError::kernel(op.describe(), 2, true);
        assert_eq!(e.kind(), Some(ErrorKind::UnknownScheduler));
    }

    #[test]
    fn every_operation_names_its_virtual_server() {
        let key = ServiceKey::Inet {
            protocol: crate::Protocol::Udp,
            addr: "10.96.0.10".parse().unwrap(),
            port: 53,
        };
        let service = Service::new(key, crate::ipvs::Scheduler::rr());
        let dest = Destination::masq("10.244.0.5".parse().unwrap(), 5353);
        for op in [
            Operation::AddService(Box::new(service.clone())),
            Operation::UpdateService(Box::new(service)),
            Operation::DeleteService(key),
            Operation::AddDestination(key, dest.clone()),
            Operation::UpdateDestination(key, dest.clone()),
            Operation::DeleteDestination(key, dest.key()),
        ] {
            assert_eq!(op.service_key(), key, "{}", op.describe());
        }
    }
}
