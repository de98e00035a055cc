//! Helpers for the lab tests: tests that need a real kernel with IPVS.
//!
//! The test binaries built from `tests/tests/*.rs` run inside the QEMU lab guest started by
//! `tests/lab/test` (see `tests/lab/README.md`). Every test case should:
//!
//! 1. call [`require_lab`] first, so a plain `cargo test` on the host fails with a clear
//!    message instead of a confusing netlink error;
//! 2. do its work inside [`in_fresh_netns`] (or a configured [`NetnsCase`]), so cases running
//!    in parallel in the same guest cannot see each other's IPVS tables, links or ipsets.
//!
//! ```no_run
//! use lab_tests::{in_fresh_netns, ipvsadm_save, require_lab, run};
//!
//! require_lab();
//! let saved = in_fresh_netns(|| async {
//!     run("ipvsadm", &["-A", "-t", "10.96.0.1:80", "-s", "rr"])?;
//!     ipvsadm_save()
//! });
//! assert_eq!(saved.ok().as_deref(), Some("-A -t 10.96.0.1:80 -s rr\n"));
//! ```

pub mod daemon;

use std::ffi::OsStr;
use std::future::Future;
use std::io::Write as _;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use nix::sched::CloneFlags;

/// Set to `1` by the lab guest for every job it runs.
pub const LAB_ENV: &str = "IPVS_PROXIER_LAB";

/// Directory (inside the guest: on the writable results share) where [`write_artifact`] puts
/// files. The host copies them to `$LAB_ARTIFACTS_OUT` after the run.
pub const ARTIFACTS_ENV: &str = "LAB_ARTIFACTS";

/// Name of the NIC every fresh namespace gets (a dummy link; a veth where the kernel has no
/// dummy driver, e.g. on the host).
pub const NETNS_DEV: &str = "eth0";
/// IPv4 address (with prefix length) of [`NETNS_DEV`] in a fresh namespace.
pub const NETNS_V4_CIDR: &str = "10.255.0.1/24";
/// IPv6 address (with prefix length) of [`NETNS_DEV`] in a fresh namespace.
pub const NETNS_V6_CIDR: &str = "fd00:255::1/64";

/// Errors of the lab helpers.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The program could not be started at all.
    #[error("cannot run {cmd}: {source}")]
    Spawn {
        /// The command line.
        cmd: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The program ran and exited unsuccessfully.
    #[error("{cmd} failed ({status}): {}", stderr.trim_end())]
    Failed {
        /// The command line.
        cmd: String,
        /// Its exit status.
        status: ExitStatus,
        /// What it printed on stdout.
        stdout: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// `unshare(CLONE_NEWNET)` failed (not root?).
    #[error("unshare(CLONE_NEWNET) failed (the lab runs as root; on the host use sudo): {0}")]
    Unshare(#[source] nix::Error),
    /// The per-case tokio runtime could not be built.
    #[error("cannot build the tokio runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The per-case thread could not be started.
    #[error("cannot start the namespace thread: {0}")]
    Thread(#[source] std::io::Error),
    /// An artifact name that is not a plain relative path.
    #[error("artifact name {0:?} must be a relative path without '..'")]
    ArtifactName(String),
    /// Writing an artifact failed.
    #[error("cannot write artifact {path}: {source}")]
    Artifact {
        /// Where it was going.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
}

/// Result of the lab helpers.
pub type Result<T, E = LabError> = std::result::Result<T, E>;

/// What a finished command left behind.
#[derive(Debug, Clone)]
pub struct CmdOutput {
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output (lossy UTF-8).
    pub stdout: String,
    /// Standard error (lossy UTF-8).
    pub stderr: String,
}

impl CmdOutput {
    /// Whether the command exited with status 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }
}

/// True when running inside the lab guest (`IPVS_PROXIER_LAB=1`).
pub fn in_lab() -> bool {
    std::env::var_os(LAB_ENV).is_some_and(|v| v == "1")
}

/// Stops a test that is not running in the lab guest.
///
/// # Panics
/// Unless `IPVS_PROXIER_LAB=1`: these tests need a kernel with IPVS, which the build machines
/// do not have.
#[allow(clippy::panic)] // Test fixture: refusing to run outside the lab is the point.
pub fn require_lab() {
    if !in_lab() {
        panic!(
            "run through tests/lab/test: this test needs a real kernel with IPVS \
             ({LAB_ENV}=1 is not set, so this is not the lab guest)"
        );
    }
}

fn command_line<S: AsRef<OsStr>>(cmd: &str, args: &[S]) -> String {
    let mut line = cmd.to_owned();
    for arg in args {
        line.push(' ');
        line.push_str(&arg.as_ref().to_string_lossy());
    }
    line
}

fn spawn_and_wait<S: AsRef<OsStr>>(
    cmd: &str,
    args: &[S],
    stdin: Option<&[u8]>,
) -> Result<CmdOutput> {
    let line = || command_line(cmd, args);
    let spawn_err = |source| LabError::Spawn {
        cmd: line(),
        source,
    };
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A program that exits without reading all its input is judged by its exit status.
        match pipe.write_all(input) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            Err(e) => return Err(spawn_err(e)),
        }
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    Ok(CmdOutput {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

fn checked<S: AsRef<OsStr>>(cmd: &str, args: &[S], out: CmdOutput) -> Result<CmdOutput> {
    if out.success() {
        Ok(out)
    } else {
        Err(LabError::Failed {
            cmd: command_line(cmd, args),
            status: out.status,
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }
}

/// Runs `cmd args…` (stdin empty) and returns its output; a non-zero exit is an error
/// carrying stderr.
///
/// Run from inside [`in_fresh_netns`], the child lives in that case's network namespace.
pub fn run<S: AsRef<OsStr>>(cmd: &str, args: &[S]) -> Result<CmdOutput> {
    let out = spawn_and_wait(cmd, args, None)?;
    checked(cmd, args, out)
}

/// Like [`run`] but a non-zero exit status is not an error: inspect [`CmdOutput::status`].
pub fn run_unchecked<S: AsRef<OsStr>>(cmd: &str, args: &[S]) -> Result<CmdOutput> {
    spawn_and_wait(cmd, args, None)
}

/// Like [`run`], feeding `stdin` to the program (`ipvsadm-restore`, `ipset restore`,
/// `iptables-restore`, `ip -batch -`).
pub fn run_with_stdin<S: AsRef<OsStr>>(cmd: &str, args: &[S], stdin: &[u8]) -> Result<CmdOutput> {
    let out = spawn_and_wait(cmd, args, Some(stdin))?;
    checked(cmd, args, out)
}

/// Runs `sh -c script` and returns its stdout; a non-zero exit is an error carrying stderr.
pub fn sh(script: &str) -> Result<String> {
    run("sh", &["-c", script]).map(|o| o.stdout)
}

/// Feeds `script` (one `ip` command per line, without the leading `ip`) to a single
/// `ip -batch -`. One exec is much cheaper than many in the emulated guest.
pub fn ip_batch(script: &str) -> Result<()> {
    run_with_stdin("ip", &["-batch", "-"], script.as_bytes()).map(|_| ())
}

/// `ipvsadm -Sn`: the IPVS table of the current network namespace in `ipvsadm-save` format,
/// numeric (an empty string for an empty table).
///
/// Read until two reads in a row agree: the kernel's service dump is not a snapshot (its
/// resume index counts the services of every namespace), so a case changing its table in
/// another namespace of the same guest meanwhile can make one read repeat or skip a service.
/// A real difference persists across reads and is returned as it is.
pub fn ipvsadm_save() -> Result<String> {
    let mut last = run("ipvsadm", &["-Sn"])?.stdout;
    for _ in 0..10 {
        std::thread::sleep(std::time::Duration::from_millis(20));
        let again = run("ipvsadm", &["-Sn"])?.stdout;
        if again == last {
            break;
        }
        last = again;
    }
    Ok(last)
}

/// The `ipvs-proxier` binary built next to the running test binary
/// (`target/<profile>/ipvs-proxier`; test binaries live in `target/<profile>/deps/`).
/// `tests/lab/test` builds it with the same target dir and profile as the tests.
///
/// # Panics
/// When it is missing: a fixture failure with instructions, not a skipped test.
#[allow(clippy::panic, clippy::expect_used)] // fixture: a missing binary fails the test
pub fn proxier_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's own path");
    let path = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("ipvs-proxier"))
        .unwrap_or_else(|| panic!("{} has no grandparent directory", exe.display()));
    assert!(
        path.is_file(),
        "{} is missing: build it with `cargo build -p ipvs-proxier --bin ipvs-proxier` and the \
         same CARGO_TARGET_DIR and profile as the tests (tests/lab/test does)",
        path.display()
    );
    path
}

/// The directory [`write_artifact`] writes to: `$LAB_ARTIFACTS` (the results share in the
/// guest), else `<temp dir>/ipvs-proxier-lab-artifacts`.
pub fn artifacts_dir() -> PathBuf {
    match std::env::var_os(ARTIFACTS_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => std::env::temp_dir().join("ipvs-proxier-lab-artifacts"),
    }
}

/// Saves `bytes` as `name` (a relative path; sub-directories are created) in
/// [`artifacts_dir`], so benchmark output or netlink captures come back to the host, and
/// returns the path written. Inside the guest the host side copies these files to
/// `$LAB_ARTIFACTS_OUT` (or prints where they are) when the run ends.
pub fn write_artifact(name: &str, bytes: &[u8]) -> Result<PathBuf> {
    let rel = Path::new(name);
    let plain = !name.is_empty() && rel.components().all(|c| matches!(c, Component::Normal(_)));
    if !plain {
        return Err(LabError::ArtifactName(name.to_owned()));
    }
    let path = artifacts_dir().join(rel);
    let io_err = |source| LabError::Artifact {
        path: path.clone(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io_err)?;
    }
    std::fs::write(&path, bytes).map_err(io_err)?;
    Ok(path)
}

/// One test case's private network namespace.
///
/// [`NetnsCase::run`] starts a new OS thread, moves it into a new network namespace
/// (`unshare(CLONE_NEWNET)`; namespaces are per thread, and processes spawned from that thread
/// inherit it, so `ipvsadm`, `ip`, `ipset`, `iptables` run by [`run`] see the same namespace),
/// prepares the namespace and then drives the case's future on a tokio current-thread runtime
/// built on that thread. Netlink sockets opened by the future belong to the namespace too.
///
/// The default namespace has `lo` up and a link [`NETNS_DEV`] (dummy) with
/// [`NETNS_V4_CIDR`] and [`NETNS_V6_CIDR`] (`nodad`) and default routes for both families
/// through it: IPVS rejects a real server it has no route to with EINVAL, so every case needs
/// them. `10.255.0.0/24` and `fd00:255::/64` are therefore on-link.
///
/// Do not hand work to threads created outside the case (e.g. a runtime built elsewhere):
/// they are in another namespace. Threads spawned from inside the case inherit it.
#[derive(Debug, Clone, Default)]
pub struct NetnsCase {
    bare: bool,
    extra: String,
}

impl NetnsCase {
    /// The default namespace described above.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only `lo` (up): no [`NETNS_DEV`], no addresses, no routes.
    pub fn bare(mut self) -> Self {
        self.bare = true;
        self
    }

    /// More `ip -batch` lines (without the leading `ip`) run in the same `ip` invocation as the
    /// namespace setup, e.g. `"link add kube-ipvs0 type dummy\naddr add 10.96.0.1/32 dev
    /// kube-ipvs0"`.
    pub fn ip_batch(mut self, lines: &str) -> Self {
        self.extra.push_str(lines);
        if !self.extra.ends_with('\n') {
            self.extra.push('\n');
        }
        self
    }

    fn setup_script(&self, link: &str) -> String {
        let mut s = String::from("link set lo up\n");
        if !self.bare {
            s.push_str(&format!(
                "{link}\n\
                 link set {NETNS_DEV} up\n\
                 addr add {NETNS_V4_CIDR} dev {NETNS_DEV}\n\
                 addr add {NETNS_V6_CIDR} dev {NETNS_DEV} nodad\n\
                 route add 0.0.0.0/0 dev {NETNS_DEV}\n\
                 route add ::/0 dev {NETNS_DEV}\n"
            ));
        }
        s.push_str(&self.extra);
        s
    }

    /// Prepares the namespace the current thread is in.
    fn prepare(&self) -> Result<()> {
        let dummy = format!("link add {NETNS_DEV} type dummy");
        match ip_batch(&self.setup_script(&dummy)) {
            Err(LabError::Failed { stderr, .. })
                if !self.bare && stderr.contains("Unknown device type") =>
            {
                // A kernel without the dummy driver (the build hosts): a veth pair instead.
                // The failed batch stopped at the `link add`, so only `lo` was touched.
                let veth = format!(
                    "link add {NETNS_DEV} type veth peer name {NETNS_DEV}-peer\n\
                     link set {NETNS_DEV}-peer up"
                );
                ip_batch(&self.setup_script(&veth))
            }
            other => other,
        }
    }

    /// Runs the case; errors setting up the namespace, thread or runtime are returned, a panic
    /// in `f` is propagated to the caller (so the test fails with the case's message).
    pub fn try_run<F, Fut, T>(self, f: F) -> Result<T>
    where
        F: FnOnce() -> Fut + Send,
        Fut: Future<Output = T>,
        T: Send,
    {
        let name = std::thread::current()
            .name()
            .map_or_else(|| "netns-case".to_owned(), str::to_owned);
        std::thread::scope(|scope| {
            let handle = std::thread::Builder::new()
                .name(name)
                .spawn_scoped(scope, move || -> Result<T> {
                    nix::sched::unshare(CloneFlags::CLONE_NEWNET).map_err(LabError::Unshare)?;
                    self.prepare()?;
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(LabError::Runtime)?;
                    Ok(rt.block_on(f()))
                })
                .map_err(LabError::Thread)?;
            match handle.join() {
                Ok(result) => result,
                Err(payload) => std::panic::resume_unwind(payload),
            }
        })
    }

    /// Runs the case and returns what `f`'s future returned.
    ///
    /// # Panics
    /// When the namespace cannot be set up (a broken lab, not a test failure), or when `f`
    /// panics (propagated).
    #[allow(clippy::panic)] // Test fixture: a lab that cannot make a namespace fails the test.
    pub fn run<F, Fut, T>(self, f: F) -> T
    where
        F: FnOnce() -> Fut + Send,
        Fut: Future<Output = T>,
        T: Send,
    {
        match self.try_run(f) {
            Ok(v) => v,
            Err(e) => panic!("lab: cannot prepare a fresh network namespace: {e}"),
        }
    }
}

/// Runs `f()`'s future in a fresh, prepared network namespace ([`NetnsCase::new`]) on its own
/// thread and tokio current-thread runtime, and returns its output. Panics in `f` propagate.
///
/// # Panics
/// See [`NetnsCase::run`].
pub fn in_fresh_netns<F, Fut, T>(f: F) -> T
where
    F: FnOnce() -> Fut + Send,
    Fut: Future<Output = T>,
    T: Send,
{
    NetnsCase::new().run(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_joins_words() {
        assert_eq!(command_line("ipvsadm", &["-S", "-n"]), "ipvsadm -S -n");
    }

    #[test]
    fn artifact_names_must_stay_inside_the_directory() {
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "./x"] {
            assert!(
                matches!(write_artifact(bad, b""), Err(LabError::ArtifactName(_))),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn setup_script_has_addresses_routes_and_extra_lines() {
        let s = NetnsCase::new()
            .ip_batch("link add kube-ipvs0 type dummy")
            .setup_script("link add eth0 type dummy");
        assert!(s.starts_with("link set lo up\nlink add eth0 type dummy\n"));
        assert!(s.contains("addr add fd00:255::1/64 dev eth0 nodad\n"));
        assert!(s.contains("route add ::/0 dev eth0\n"));
        assert!(s.ends_with("link add kube-ipvs0 type dummy\n"));
        assert_eq!(
            NetnsCase::new().bare().setup_script("x"),
            "link set lo up\n"
        );
    }

    #[test]
    fn failed_commands_report_stderr() {
        let err = run("sh", &["-c", "echo boom >&2; exit 3"]).err();
        let msg = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("boom"), "{msg}");
        assert!(
            run_unchecked("sh", &["-c", "exit 3"])
                .map(|o| o.status.code())
                .ok()
                .flatten()
                == Some(3)
        );
        assert_eq!(
            run_with_stdin("cat", &[] as &[&str], b"abc")
                .map(|o| o.stdout)
                .ok(),
            Some("abc".to_owned())
        );
    }
}
