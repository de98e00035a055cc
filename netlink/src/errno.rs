//! The errno values this crate tells apart in kernel answers (asm-generic/errno-base.h and
//! errno.h; the same on every Linux architecture we build for), named once.

pub const ENOENT: i32 = 2;
pub const ESRCH: i32 = 3;
pub const EEXIST: i32 = 17;
pub const ENODEV: i32 = 19;
pub const EINVAL: i32 = 22;
pub const EADDRNOTAVAIL: i32 = 99;
pub const ENOBUFS: i32 = 105;
