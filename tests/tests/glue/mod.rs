//! Shared by the dataplane-glue netns tests (`netns_ipset`, `netns_iptables`): a fresh network
//! namespace per case, the 17 kube-proxy sets, and normalisers for `ipset save` and
//! `iptables-save` output. Kept here rather than in `lab_tests` so these tests need nothing
//! but root and netns (they run on the host and in the guest alike).

// Test helpers: a panic is how a helper fails the test that called it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write as _;
use std::process::{Command, Stdio};

use netlink::AddressFamily;
use netlink::ipset::{SetSpec, SetType};

/// Runs `f` on a new thread that first moved into a new, empty network namespace (with `lo`
/// up). ipset, iptables and netlink sockets opened there only see that namespace; the
/// namespace disappears when the thread ends.
pub fn in_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let joined = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("unshare(CLONE_NEWNET): are we root?");
        cmd("ip", &["link", "set", "lo", "up"], None);
        f()
    })
    .join();
    match joined {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Runs a program (in the calling thread's namespace), feeding `stdin`; panics with its stderr
/// when it fails.
pub fn cmd(program: &str, args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// kube-proxy's set name for a family: `KUBE-` becomes `KUBE-6-` for IPv6, cut to 31 bytes.
pub fn set_name(v4_name: &str, family: AddressFamily) -> String {
    match family {
        AddressFamily::Inet => v4_name.to_owned(),
        AddressFamily::Inet6 => {
            let mut n = v4_name.replacen("KUBE-", "KUBE-6-", 1);
            n.truncate(31);
            n
        }
    }
}

/// The 17 sets of kube-proxy's IPVS mode (reference §2.1), for one family.
pub fn kube_sets(family: AddressFamily) -> Vec<SetSpec> {
    use SetType::*;
    [
        ("KUBE-LOOP-BACK", HashIpPortIp),
        ("KUBE-CLUSTER-IP", HashIpPort),
        ("KUBE-EXTERNAL-IP", HashIpPort),
        ("KUBE-EXTERNAL-IP-LOCAL", HashIpPort),
        ("KUBE-LOAD-BALANCER", HashIpPort),
        ("KUBE-LOAD-BALANCER-FW", HashIpPort),
        ("KUBE-LOAD-BALANCER-LOCAL", HashIpPort),
        ("KUBE-LOAD-BALANCER-SOURCE-IP", HashIpPortIp),
        ("KUBE-LOAD-BALANCER-SOURCE-CIDR", HashIpPortNet),
        ("KUBE-NODE-PORT-TCP", BitmapPort),
        ("KUBE-NODE-PORT-LOCAL-TCP", BitmapPort),
        ("KUBE-NODE-PORT-UDP", BitmapPort),
        ("KUBE-NODE-PORT-LOCAL-UDP", BitmapPort),
        ("KUBE-NODE-PORT-SCTP-HASH", HashIpPort),
        ("KUBE-NODE-PORT-LOCAL-SCTP-HASH", HashIpPort),
        ("KUBE-HEALTH-CHECK-NODE-PORT", BitmapPort),
        ("KUBE-IPVS-IPS", HashIp),
    ]
    .into_iter()
    .map(|(name, kind)| SetSpec::new(set_name(name, family), kind, family))
    .collect()
}

/// `ipset save` made comparable: the kernel-chosen `bucketsize N initval 0x…` dropped from
/// create lines, and lines sorted (the kernel lists hash members in hash order).
pub fn normalise_ipset_save(save: &str) -> Vec<String> {
    let mut lines: Vec<String> = save
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut words: Vec<&str> = l.split_whitespace().collect();
            if words.first() == Some(&"create") {
                for key in ["bucketsize", "initval"] {
                    if let Some(i) = words.iter().position(|w| *w == key) {
                        words.drain(i..(i + 2).min(words.len()));
                    }
                }
            }
            words.join(" ")
        })
        .collect();
    lines.sort();
    lines
}
