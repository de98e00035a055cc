//! The kernel knobs IPVS mode needs (reference §3.1), read and written under `/proc/sys`
//! only when they differ, as kube-proxy's `EnsureSysctl` does.
//!
//! The IPVS connection timeouts (`--ipvs-tcp-timeout` & co.) are not sysctls: they go through
//! `IPVS_CMD_SET_CONFIG` on the IPVS netlink handle (`crate::config::IpvsTimeouts`).

use std::path::{Path, PathBuf};

/// A sysctl that could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SysctlError {
    #[error("sysctl {name}: cannot read {path}: {source}")]
    Read {
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("sysctl {name}: cannot set it to {value} in {path}: {source}")]
    Write {
        name: String,
        value: i64,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("sysctl {name}: {path} holds {text:?}, not an integer")]
    NotInteger {
        name: String,
        path: PathBuf,
        text: String,
    },
    #[error("cannot read the kernel release from {path}: {reason}")]
    KernelRelease { path: PathBuf, reason: String },
}

/// A kernel release as `major.minor.patch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelVersion(pub u32, pub u32, pub u32);

impl KernelVersion {
    /// Parses `6.1.0-18-amd64`, `5.8`, `6.18.44-fc-v657`.
    pub fn parse(release: &str) -> Option<Self> {
        let mut nums = release
            .trim()
            .split(['.', '-', '+', '_'])
            .map(str::parse::<u32>);
        let major = nums.next()?.ok()?;
        let minor = nums.next()?.ok()?;
        let patch = nums.next().and_then(Result::ok).unwrap_or(0);
        Some(Self(major, minor, patch))
    }
}

/// `conn_reuse_mode=0` only matters from 4.1 (`IPVSConnReuseModeMinSupportedKernelVersion`)
/// and is fixed in the kernel from 5.9 (`IPVSConnReuseModeFixedKernelVersion`).
const CONN_REUSE_MIN: KernelVersion = KernelVersion(4, 1, 0);
const CONN_REUSE_FIXED: KernelVersion = KernelVersion(5, 9, 0);

/// The sysctls IPVS mode sets, with their values, for a kernel and the strictARP option.
pub fn ipvs_sysctls(kernel: KernelVersion, strict_arp: bool) -> Vec<(&'static str, i64)> {
    let mut v = vec![
        // Keep conntrack for IPVS-forwarded packets so MASQUERADE works.
        ("net/ipv4/vs/conntrack", 1),
        ("net/ipv4/vs/expire_nodest_conn", 1),
        ("net/ipv4/vs/expire_quiescent_template", 1),
        ("net/ipv4/ip_forward", 1),
    ];
    if kernel >= CONN_REUSE_MIN && kernel < CONN_REUSE_FIXED {
        v.push(("net/ipv4/vs/conn_reuse_mode", 0));
    }
    if strict_arp {
        v.push(("net/ipv4/conf/all/arp_ignore", 1));
        v.push(("net/ipv4/conf/all/arp_announce", 2));
    }
    v
}

/// Reads and writes sysctls under a root (`/proc/sys`, or a directory in tests).
#[derive(Debug, Clone)]
pub struct Sysctls {
    root: PathBuf,
}

impl Default for Sysctls {
    fn default() -> Self {
        Self::new("/proc/sys")
    }
}

impl Sysctls {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub fn get(&self, name: &str) -> Result<i64, SysctlError> {
        let path = self.path(name);
        let text = std::fs::read_to_string(&path).map_err(|source| SysctlError::Read {
            name: name.to_owned(),
            path: path.clone(),
            source,
        })?;
        text.trim().parse().map_err(|_| SysctlError::NotInteger {
            name: name.to_owned(),
            path,
            text: text.trim().to_owned(),
        })
    }

    /// Sets `name` to `value` unless it already holds it; returns whether it wrote.
    pub fn ensure(&self, name: &str, value: i64) -> Result<bool, SysctlError> {
        if self.get(name)? == value {
            return Ok(false);
        }
        let path = self.path(name);
        std::fs::write(&path, format!("{value}\n")).map_err(|source| SysctlError::Write {
            name: name.to_owned(),
            value,
            path,
            source,
        })?;
        Ok(true)
    }

    /// The running kernel's release (`kernel/osrelease`, what `uname -r` prints).
    pub fn kernel_version(&self) -> Result<KernelVersion, SysctlError> {
        let path = self.path("kernel/osrelease");
        let text = std::fs::read_to_string(&path).map_err(|e| SysctlError::KernelRelease {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        KernelVersion::parse(&text).ok_or(SysctlError::KernelRelease {
            path,
            reason: format!("unparsable release {:?}", text.trim()),
        })
    }

    /// Ensures every sysctl of [`ipvs_sysctls`] for the running kernel; stops at the first
    /// failure (kube-proxy's `NewProxier` fails the same way). Returns the names written.
    pub fn ensure_ipvs(&self, strict_arp: bool) -> Result<Vec<&'static str>, SysctlError> {
        let kernel = self.kernel_version()?;
        if kernel < CONN_REUSE_MIN {
            tracing::error!(
                ?kernel,
                "kernel older than 4.1: cannot set net/ipv4/vs/conn_reuse_mode; IPVS may stall new connections reusing ports"
            );
        }
        let mut written = Vec::new();
        for (name, value) in ipvs_sysctls(kernel, strict_arp) {
            if self.ensure(name, value)? {
                tracing::info!(sysctl = name, value, "set sysctl");
                written.push(name);
            }
        }
        Ok(written)
    }

    /// The root this instance reads, e.g. `/proc/sys`.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    #[test]
    fn kernel_releases_parse() {
        assert_eq!(
            KernelVersion::parse("6.1.0-18-amd64"),
            Some(KernelVersion(6, 1, 0))
        );
        assert_eq!(
            KernelVersion::parse("6.18.44-fc-v657\n"),
            Some(KernelVersion(6, 18, 44))
        );
        assert_eq!(KernelVersion::parse("5.8"), Some(KernelVersion(5, 8, 0)));
        assert_eq!(KernelVersion::parse("x"), None);
    }

    #[test]
    fn conn_reuse_mode_only_between_4_1_and_5_9() {
        let has = |k| {
            ipvs_sysctls(k, false)
                .iter()
                .any(|(n, _)| *n == "net/ipv4/vs/conn_reuse_mode")
        };
        assert!(!has(KernelVersion(4, 0, 9)));
        assert!(has(KernelVersion(4, 1, 0)));
        assert!(has(KernelVersion(5, 8, 18)));
        assert!(!has(KernelVersion(5, 9, 0)));
        assert!(!has(KernelVersion(6, 1, 0)));
        let strict = ipvs_sysctls(KernelVersion(6, 1, 0), true);
        assert!(strict.contains(&("net/ipv4/conf/all/arp_ignore", 1)));
        assert!(strict.contains(&("net/ipv4/conf/all/arp_announce", 2)));
    }

    fn fake_root(release: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "sysctl-test-{}-{}",
            std::process::id(),
            release.replace(['.', '-'], "_")
        ));
        for (name, v) in [
            ("net/ipv4/vs/conntrack", "0"),
            ("net/ipv4/vs/expire_nodest_conn", "1"),
            ("net/ipv4/vs/expire_quiescent_template", "0"),
            ("net/ipv4/vs/conn_reuse_mode", "1"),
            ("net/ipv4/ip_forward", "1"),
            ("net/ipv4/conf/all/arp_ignore", "0"),
            ("net/ipv4/conf/all/arp_announce", "0"),
            ("kernel/osrelease", release),
        ] {
            let p = dir.join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, format!("{v}\n")).unwrap();
        }
        dir
    }

    #[test]
    fn only_differing_values_are_written() {
        let root = fake_root("5.4.0-100-generic");
        let s = Sysctls::new(&root);
        let written = s.ensure_ipvs(true).unwrap();
        assert_eq!(
            written,
            [
                "net/ipv4/vs/conntrack",
                "net/ipv4/vs/expire_quiescent_template",
                "net/ipv4/vs/conn_reuse_mode",
                "net/ipv4/conf/all/arp_ignore",
                "net/ipv4/conf/all/arp_announce",
            ]
        );
        assert_eq!(s.get("net/ipv4/conf/all/arp_announce").unwrap(), 2);
        assert!(s.ensure_ipvs(true).unwrap().is_empty());
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_missing_sysctl_is_named() {
        let root = fake_root("6.1.0");
        std::fs::remove_file(root.join("net/ipv4/vs/conntrack")).unwrap();
        let err = Sysctls::new(&root).ensure_ipvs(false).unwrap_err();
        assert!(err.to_string().contains("net/ipv4/vs/conntrack"), "{err}");
        std::fs::remove_dir_all(root).unwrap();
    }
}
