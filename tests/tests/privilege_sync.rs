//! Least privilege (issue 9): the real one-shot sync (`ipvs-proxier sync --once`) run as
//! uid/gid 65534 with nothing but CAP_NET_ADMIN (+ CAP_NET_RAW) as ambient capabilities, in
//! a fresh netns whose sysctls root set beforehand (as the DaemonSet's privileged init
//! container does), programs exactly the `ipvsadm -Sn` a root run does; with no capability
//! at all it fails with an error naming what was refused, not a panic.
//!
//! Capabilities are dropped with util-linux `setpriv` (a host binary; the guest runs the
//! host's `/`).

// Test helpers outside #[test] fns: a panic there fails the test, which is what we want.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use lab_tests::{
    CmdOutput, in_fresh_netns, ipvsadm_save, proxier_binary, require_lab, run, run_unchecked,
};

fn examples() -> String {
    format!("{}/../examples", env!("CARGO_MANIFEST_DIR"))
}

/// The sysctls the sync wants on the lab's 6.1 kernel (`dataplane::sysctl::ipvs_sysctls`),
/// as the init container sets them.
const SYSCTLS: &[(&str, &str)] = &[
    ("net.ipv4.vs.conntrack", "1"),
    ("net.ipv4.vs.expire_nodest_conn", "1"),
    ("net.ipv4.vs.expire_quiescent_template", "1"),
    ("net.ipv4.ip_forward", "1"),
];

fn preset_sysctls() {
    // IPVS's per-netns sysctls exist once the module knows the netns: touch it first.
    run("ipvsadm", &["-Ln"]).unwrap();
    for (k, v) in SYSCTLS {
        run("sysctl", &["-q", "-w", &format!("{k}={v}")]).unwrap();
    }
}

fn sync_args(bin: &Path) -> Vec<String> {
    vec![
        bin.display().to_string(),
        "sync".into(),
        "--once".into(),
        "--manifests".into(),
        examples(),
        "--node-name".into(),
        "node-1".into(),
        "--cluster-cidr".into(),
        "10.244.0.0/16".into(),
    ]
}

/// `setpriv` as uid/gid 65534 with exactly `caps` (e.g. `+net_admin,+net_raw`, or empty).
fn as_nobody(caps: &str, cmd: &[String]) -> CmdOutput {
    let set = format!("-all{}", if caps.is_empty() { "" } else { "," }) + caps;
    let mut args = vec![
        "--reuid=65534".to_owned(),
        "--regid=65534".to_owned(),
        "--clear-groups".to_owned(),
        format!("--inh-caps={set}"),
        format!("--ambient-caps={set}"),
        format!("--bounding-set={set}"),
        "--".to_owned(),
    ];
    args.extend(cmd.iter().cloned());
    run_unchecked("setpriv", &args).unwrap()
}

fn report(what: &str, out: &CmdOutput) {
    eprintln!(
        "--- {what}: success={}\nstdout:\n{}\nstderr:\n{}",
        out.success(),
        out.stdout,
        out.stderr
    );
}

#[test]
fn sync_needs_only_net_admin_and_net_raw() {
    require_lab();
    let bin = proxier_binary();
    assert!(
        run("setpriv", &["--version"]).is_ok(),
        "util-linux setpriv is needed"
    );
    let args = sync_args(&bin);

    let as_root = in_fresh_netns(|| async {
        let out = run_unchecked(&args[0], &args[1..]).unwrap();
        report("root", &out);
        assert!(out.success(), "root sync failed");
        ipvsadm_save().unwrap()
    });
    assert!(as_root.contains("-A -t"), "root sync programmed nothing");

    let capped = in_fresh_netns(|| async {
        preset_sysctls();
        let out = as_nobody("+net_admin,+net_raw", &args);
        report("uid 65534, CAP_NET_ADMIN + CAP_NET_RAW", &out);
        assert!(
            out.success(),
            "sync with CAP_NET_ADMIN + CAP_NET_RAW failed"
        );
        // It wrote no sysctl: they are what root set.
        for (k, v) in SYSCTLS {
            assert_eq!(run("sysctl", &["-n", k]).unwrap().stdout.trim(), *v);
        }
        ipvsadm_save().unwrap()
    });
    assert_eq!(capped, as_root);
}

/// CAP_NET_RAW is needed too, for one reason only: `iptables-restore` (1.8.9, nf_tables) opens
/// a raw socket to ask the kernel about the sets of its `-m set` matches and fails with "Can't
/// open socket to ipset" without it. Everything else (IPVS, ipset, links, addresses) is
/// written, and the failure is reported as a failed write, not a panic.
#[test]
fn sync_with_net_admin_alone_fails_only_at_iptables() {
    require_lab();
    let args = sync_args(&proxier_binary());
    in_fresh_netns(|| async {
        preset_sysctls();
        let out = as_nobody("+net_admin", &args);
        report("uid 65534, CAP_NET_ADMIN only", &out);
        assert!(
            !out.success(),
            "iptables-restore needed no CAP_NET_RAW after all"
        );
        assert!(!out.stderr.contains("panicked"));
        assert!(
            out.stdout.contains("FAILED iptables-restore")
                && out.stdout.contains("socket to ipset"),
            "{}",
            out.stdout
        );
        // The IPVS part is all there.
        assert!(ipvsadm_save().unwrap().contains("-A -t"));
    });
}

#[test]
fn sync_without_capabilities_fails_clearly() {
    require_lab();
    let args = sync_args(&proxier_binary());
    in_fresh_netns(|| async {
        preset_sysctls();
        let out = as_nobody("", &args);
        report("uid 65534, no capabilities", &out);
        assert!(!out.success(), "sync without capabilities succeeded");
        assert!(
            !out.stderr.contains("panicked"),
            "a refused operation must be an error, not a panic"
        );
        let text = out.stderr.to_lowercase();
        assert!(
            text.contains("permission") || text.contains("not permitted"),
            "the error does not say what was refused: {}",
            out.stderr
        );
        // Nothing was programmed.
        assert_eq!(ipvsadm_save().unwrap(), "");
    });
}
