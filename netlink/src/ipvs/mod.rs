//! IPVS over generic netlink: typed services and real servers, their wire codec, and an async
//! handle with a batch API.

mod render;
pub mod types;

pub use types::*;
