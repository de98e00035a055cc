//! ipset over nfnetlink: typed sets and members, their wire codec, and batched updates.

pub mod codec;
mod handle;
pub mod types;

pub use handle::{ElementFailure, IpsetError, IpsetHandle, SetListing, SyncReport};
pub use types::*;
