//! IPVS over generic netlink: typed services and real servers ([`types`]), their wire codec
//! ([`codec`]), the `ipvsadm -Sn` renderer, and an async handle with a batch API
//! ([`IpvsHandle`]).

pub mod codec;
mod handle;
mod render;
pub mod types;

pub use codec::{
    DestinationEntry, IpvsInfo, IpvsReply, IpvsRequest, RawAttr, ServiceEntry, Timeouts,
};
pub use handle::{Applied, AppliedIter, BatchLimits, ErrorKind, IpvsError, IpvsHandle, Operation};
pub use types::*;
