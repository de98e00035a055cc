//! The real `ipvs-proxier` daemon as a child process of a lab case (it inherits the case's
//! network namespace), and one-shot HTTP GETs for its servers.

// Test fixture: a daemon that cannot be started or stopped fails the test that asked.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::{proxier_binary, run};

/// Who the daemon runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Privilege {
    Root,
    /// uid/gid 65534, no groups, only CAP_NET_ADMIN and CAP_NET_RAW in every set (util-linux
    /// `setpriv`, ambient so `iptables-restore` inherits them).
    Nobody,
}

/// The daemon process, its stdout and stderr in `log`; killed on drop (the log's tail
/// printed) if the test fails half-way.
#[derive(Debug)]
pub struct Daemon {
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    pub fn start<S: AsRef<OsStr>>(args: &[S], log: PathBuf, privilege: Privilege) -> Self {
        let file = std::fs::File::create(&log).unwrap();
        let bin = proxier_binary();
        let mut cmd = match privilege {
            Privilege::Root => Command::new(&bin),
            Privilege::Nobody => {
                let caps = "-all,+net_admin,+net_raw";
                let mut c = Command::new("setpriv");
                c.args([
                    "--reuid=65534",
                    "--regid=65534",
                    "--clear-groups",
                    &format!("--inh-caps={caps}"),
                    &format!("--ambient-caps={caps}"),
                    &format!("--bounding-set={caps}"),
                    "--",
                ])
                .arg(&bin);
                c
            }
        };
        // Profiling hook: `LAB_DAEMON_HEAPTRACK_RAW=FILE` runs the daemon under heaptrack's
        // preload library, which writes its raw trace to FILE (turn it into a profile with
        // `heaptrack_interpret < FILE | zstd > OUT.zst`, read with `heaptrack_print`). It sees
        // only malloc: build with `LAB_CARGO_FLAGS=--features=ipvs-proxier/system-allocator`.
        if let Some(raw) = std::env::var_os("LAB_DAEMON_HEAPTRACK_RAW") {
            cmd.env("LD_PRELOAD", "/usr/lib/heaptrack/libheaptrack_preload.so")
                .env("DUMP_HEAPTRACK_OUTPUT", raw);
        }
        let child = cmd
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        Self {
            child: Some(child),
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails the test, with the log, if the daemon has exited.
    pub fn assert_running(&mut self, what: &str) {
        let child = self.child.as_mut().unwrap();
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "{what}: the daemon exited ({status}); its log:\n{}",
                self.log()
            );
        }
    }

    /// SIGKILL, no grace.
    pub fn kill(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Sends `signal` (a `kill` name: TERM, INT) and waits, bounded, for the exit.
    pub fn stop(&mut self, signal: &str, within: Duration) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        run("kill", &[format!("-{signal}"), child.id().to_string()]).unwrap();
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if started.elapsed() > within {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "no exit within {within:?} of SIG{signal}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `/proc/PID/status`.
    pub fn proc_status(&self) -> String {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap()
    }

    /// `VmRSS` of the process, KiB.
    pub fn rss_kib(&self) -> u64 {
        self.proc_status()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(60)..].join("\n");
            eprintln!("daemon log (last 60 lines):\n{tail}");
        }
    }
}

/// One HTTP/1.0 GET to `127.0.0.1:port`: (status, body).
pub fn get(port: u16, path: &str) -> (u16, String) {
    get_from(&format!("127.0.0.1:{port}"), path).unwrap()
}

/// One HTTP/1.0 GET to `addr` (`IP:PORT`): (status, body).
pub fn get_from(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}
