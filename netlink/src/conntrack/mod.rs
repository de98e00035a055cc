//! Netfilter connection tracking over nfnetlink (ctnetlink): typed entries, their wire codec,
//! and a handle that dumps a family's entries and deletes entries by tuple.

pub mod codec;
mod handle;

pub use codec::{Entry, Tuple};
pub use handle::{ConntrackError, ConntrackHandle, DeleteReport};
