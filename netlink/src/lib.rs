//! Kernel wire formats and async handles for IPVS (generic netlink), ipset and conntrack
//! (nfnetlink) and links/addresses (rtnetlink). This crate knows nothing about Kubernetes.

pub mod conntrack;
pub mod errno;
pub mod frame;
pub mod inet;
pub mod ipset;
pub mod ipvs;
pub mod link;
pub mod nfnetlink;

pub use inet::{AddressFamily, Protocol};
