//! ipset over nfnetlink: typed sets and members, their wire codec, and batched updates.

pub mod types;

pub use types::*;
