//! Links and addresses over rtnetlink: the dummy link VIPs are bound to (kube-proxy's
//! `kube-ipvs0`), host-prefix addresses on it, and the node's addresses from ONE
//! `RTM_GETADDR` dump (AF_UNSPEC, filtered by interface index in memory; upstream's
//! per-interface listing took 47-54 s at 19,500 services, kubernetes#138927).
//!
//! Built on the `rtnetlink` crate. The link is created DOWN and left DOWN, as kube-proxy does:
//! the kernel still installs the `local` routes that make traffic to a bound VIP go through
//! LOCAL_IN, where IPVS hooks.

use std::net::IpAddr;

use futures::TryStreamExt as _;
use netlink_packet_core::{ErrorMessage, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use netlink_packet_route::{AddressFamily as RtFamily, RouteNetlinkMessage};
use rtnetlink::proto::{NetlinkCodec, NetlinkMessageCodec as _};
use rtnetlink::{Handle, LinkDummy};

// errno values that mean "already so".
use crate::errno::{EADDRNOTAVAIL, EEXIST, ENODEV};

/// A link or address operation that failed; each names the link or address.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("rtnetlink: cannot open a socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("{op} {what}: {source}")]
    Netlink {
        op: &'static str,
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("link {0} was not found after creating it")]
    Vanished(String),
    #[error("link {name} is a {kind}, not a dummy: not deleting it")]
    NotDummy { name: String, kind: String },
}

/// One address of the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LocalAddress {
    pub ifindex: u32,
    pub addr: IpAddr,
    pub prefix_len: u8,
    /// `RT_SCOPE_HOST` (loopback) or `RT_SCOPE_LINK` (e.g. fe80::/10): not node IPs.
    pub host_or_link_scope: bool,
}

impl LocalAddress {
    /// The address one `RTM_NEWADDR` message reports, if it carries one. `IFA_LOCAL` is the
    /// interface's own address on point-to-point links, where `IFA_ADDRESS` is the peer;
    /// otherwise the two are equal.
    pub fn from_message(msg: &AddressMessage) -> Option<Self> {
        let local = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(ip) => Some(*ip),
            _ => None,
        });
        let address = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        });
        Some(Self {
            ifindex: msg.header.index,
            addr: local.or(address)?,
            prefix_len: msg.header.prefix_len,
            host_or_link_scope: matches!(msg.header.scope, AddressScope::Host | AddressScope::Link),
        })
    }
}

/// The `IFLA_INFO_KIND` of a link (`dummy`, `bridge`, ...), if it reports one.
fn link_kind(link: &LinkMessage) -> Option<InfoKind> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(k) => Some(k.clone()),
            _ => None,
        }),
        _ => None,
    })
}

/// One message of an rtnetlink answer, reduced to what this module reads of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteReply {
    /// `RTM_NEWLINK`: what [`Links::index_of`] and [`Links::delete_dummy`] read.
    Link { index: u32, kind: Option<InfoKind> },
    /// `RTM_NEWADDR`: what [`Links::addresses`] reads (`None`: the message has no address).
    Address(Option<LocalAddress>),
    /// `NLMSG_ERROR`: 0 for an ack, else the negative errno.
    Error(i32),
    /// `NLMSG_DONE` and every other message.
    Other,
}

/// Decodes one received rtnetlink datagram as the `rtnetlink` connection task does
/// (netlink-proto's codec: a message that does not decode is dropped, a bad length drops the
/// rest of the datagram) and reduces each message as the methods of [`Links`] do. Pure: it
/// exists so that the path from kernel bytes to our values can be fuzzed (`fuzz/`,
/// `tests/fuzz_decoders.rs`); the methods themselves get their messages from the connection.
pub fn parse_replies(datagram: &[u8]) -> Vec<RouteReply> {
    let mut buf = bytes::BytesMut::from(datagram);
    let mut out = Vec::new();
    while let Ok(Some(msg)) = NetlinkCodec::decode::<RouteNetlinkMessage>(&mut buf) {
        out.push(reduce(msg));
    }
    out
}

fn reduce(msg: NetlinkMessage<RouteNetlinkMessage>) -> RouteReply {
    match msg.payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => RouteReply::Link {
            index: link.header.index,
            kind: link_kind(&link),
        },
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(addr)) => {
            RouteReply::Address(LocalAddress::from_message(&addr))
        }
        NetlinkPayload::Error(e) => RouteReply::Error(e.raw_code()),
        _ => RouteReply::Other,
    }
}

/// The node's addresses, split by whether they are on the VIP link, from one dump.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeAddresses {
    /// Addresses bound on the VIP link (kube-proxy's `alreadyBoundAddrs`).
    pub on_link: Vec<IpAddr>,
    /// Every other address of the node (kube-proxy's `GetAllLocalAddressesExcept`).
    pub elsewhere: Vec<LocalAddress>,
}

fn netlink_errno(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(ErrorMessage { code: Some(c), .. }) => Some(-c.get()),
        _ => None,
    }
}

const fn host_prefix(addr: &IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// An rtnetlink client. Its socket lives in the network namespace of the thread that called
/// [`Links::new`]; its connection task runs on the current tokio runtime.
#[derive(Debug, Clone)]
pub struct Links {
    handle: Handle,
}

impl Links {
    /// Opens the socket and spawns its connection task (needs a tokio runtime).
    pub fn new() -> Result<Self, LinkError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(LinkError::Socket)?;
        tokio::spawn(connection);
        Ok(Self { handle })
    }

    async fn link_by_name(&self, name: &str) -> Result<Option<LinkMessage>, LinkError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        match links.try_next().await {
            Ok(link) => Ok(link),
            Err(e) if netlink_errno(&e) == Some(ENODEV) => Ok(None),
            Err(source) => Err(LinkError::Netlink {
                op: "get link",
                what: name.to_owned(),
                source,
            }),
        }
    }

    /// The interface index of `name`, if the link exists.
    pub async fn index_of(&self, name: &str) -> Result<Option<u32>, LinkError> {
        Ok(self.link_by_name(name).await?.map(|l| l.header.index))
    }

    /// Returns the index of the dummy link `name`, creating it (DOWN) if it is missing. An
    /// existing link of that name is used whatever its kind, as kube-proxy does.
    pub async fn ensure_dummy(&self, name: &str) -> Result<u32, LinkError> {
        if let Some(index) = self.index_of(name).await? {
            return Ok(index);
        }
        let created = self
            .handle
            .link()
            .add(LinkDummy::new(name).build())
            .execute()
            .await;
        match created {
            Ok(()) => {}
            // Created concurrently: fine.
            Err(e) if netlink_errno(&e) == Some(EEXIST) => {}
            Err(source) => {
                return Err(LinkError::Netlink {
                    op: "create dummy link",
                    what: name.to_owned(),
                    source,
                });
            }
        }
        self.index_of(name)
            .await?
            .ok_or_else(|| LinkError::Vanished(name.to_owned()))
    }

    /// Deletes the link `name` if it is a dummy (for `--cleanup`). Returns whether it deleted;
    /// a missing link is `Ok(false)`, a link of another kind is an error.
    pub async fn delete_dummy(&self, name: &str) -> Result<bool, LinkError> {
        let Some(link) = self.link_by_name(name).await? else {
            return Ok(false);
        };
        let kind = link_kind(&link);
        if kind != Some(InfoKind::Dummy) {
            return Err(LinkError::NotDummy {
                name: name.to_owned(),
                kind: kind.map_or_else(|| "link without a kind".to_owned(), |k| k.to_string()),
            });
        }
        match self.handle.link().del(link.header.index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if netlink_errno(&e) == Some(ENODEV) => Ok(false),
            Err(source) => Err(LinkError::Netlink {
                op: "delete link",
                what: name.to_owned(),
                source,
            }),
        }
    }

    /// Binds `addr` as a /32 or /128 to the link. Already bound (EEXIST) is success; returns
    /// whether it was added.
    pub async fn bind(&self, ifindex: u32, addr: IpAddr) -> Result<bool, LinkError> {
        let result = self
            .handle
            .address()
            .add(ifindex, addr, host_prefix(&addr))
            .execute()
            .await;
        match result {
            Ok(()) => Ok(true),
            Err(e) if netlink_errno(&e) == Some(EEXIST) => Ok(false),
            Err(source) => Err(LinkError::Netlink {
                op: "bind address",
                what: format!("{addr} on ifindex {ifindex}"),
                source,
            }),
        }
    }

    /// Removes the /32 or /128 `addr` from the link. Not bound (EADDRNOTAVAIL) is success;
    /// returns whether it was removed.
    pub async fn unbind(&self, ifindex: u32, addr: IpAddr) -> Result<bool, LinkError> {
        let mut msg = AddressMessage::default();
        msg.header.family = match addr {
            IpAddr::V4(_) => RtFamily::Inet,
            IpAddr::V6(_) => RtFamily::Inet6,
        };
        msg.header.prefix_len = host_prefix(&addr);
        msg.header.index = ifindex;
        msg.attributes.push(AddressAttribute::Address(addr));
        if addr.is_ipv4() {
            msg.attributes.push(AddressAttribute::Local(addr));
        }
        match self.handle.address().del(msg).execute().await {
            Ok(()) => Ok(true),
            Err(e) if netlink_errno(&e) == Some(EADDRNOTAVAIL) => Ok(false),
            Err(source) => Err(LinkError::Netlink {
                op: "unbind address",
                what: format!("{addr} on ifindex {ifindex}"),
                source,
            }),
        }
    }

    /// Every address of the node, from one `RTM_GETADDR` dump of all families.
    pub async fn addresses(&self) -> Result<Vec<LocalAddress>, LinkError> {
        let mut dump = self.handle.address().get().execute();
        let mut out = Vec::new();
        let fail = |source| LinkError::Netlink {
            op: "dump addresses",
            what: "(all links)".to_owned(),
            source,
        };
        while let Some(msg) = dump.try_next().await.map_err(fail)? {
            out.extend(LocalAddress::from_message(&msg));
        }
        Ok(out)
    }

    /// The addresses on link `ifindex` and every other address of the node, from one dump.
    pub async fn node_addresses(&self, ifindex: u32) -> Result<NodeAddresses, LinkError> {
        let mut split = NodeAddresses::default();
        for a in self.addresses().await? {
            if a.ifindex == ifindex {
                split.on_link.push(a.addr);
            } else {
                split.elsewhere.push(a);
            }
        }
        Ok(split)
    }
}
