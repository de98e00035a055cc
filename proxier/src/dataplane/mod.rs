//! The imperative shell: the only code of the proxier that touches the kernel or runs
//! commands. `iptables` applies the planner's rules with one restore per family; `sysctl`
//! ensures the kernel knobs IPVS mode needs. Links, addresses, ipsets and IPVS go through the
//! `netlink` crate's handles.

pub mod canon;
pub mod iptables;
pub mod kernel;
pub mod sysctl;
