//! The conntrack handle against the kernel, with the `conntrack` tool as the oracle: entries
//! made with `conntrack -I` are dumped with their tuples, and deleting one by tuple and id
//! leaves exactly the others. Runs in the lab guest (or on a host with ctnetlink, as root).

#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

use lab_tests::{in_fresh_netns, run};
use netlink::AddressFamily;
use netlink::conntrack::ConntrackHandle;
use pretty_assertions::assert_eq;

fn insert(src: &str, dst: &str, sport: u16, reply_src: &str) {
    let sport = sport.to_string();
    run(
        "conntrack",
        &[
            "-I",
            "-p",
            "udp",
            "-s",
            src,
            "-d",
            dst,
            "--sport",
            &sport,
            "--dport",
            "53",
            "-r",
            reply_src,
            "-q",
            src,
            "--reply-port-src",
            "53",
            "--reply-port-dst",
            &sport,
            "-t",
            "100",
        ],
    )
    .unwrap();
}

/// `conntrack -L -p udp` as `orig src:sport -> orig dst (reply src)`, sorted.
fn listed() -> Vec<String> {
    let out = run("conntrack", &["-L", "-p", "udp"]).unwrap().stdout;
    let mut v: Vec<String> = out
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let get = |key: &str, nth: usize| {
                f.iter()
                    .filter_map(|x| x.strip_prefix(key))
                    .nth(nth)
                    .unwrap_or_default()
                    .to_owned()
            };
            format!(
                "{}:{} -> {} ({})",
                get("src=", 0),
                get("sport=", 0),
                get("dst=", 0),
                get("src=", 1)
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn dump_and_delete_by_tuple_agree_with_the_conntrack_tool() {
    in_fresh_netns(|| async {
        insert("10.0.0.1", "10.96.0.10", 40000, "10.244.0.5");
        insert("10.0.0.1", "10.96.0.10", 40001, "10.244.0.6");
        insert("fd00::1", "fd00:96::a", 40002, "fd00:244::5");
        let mut h = ConntrackHandle::new().unwrap();
        let v4 = h.dump(AddressFamily::Inet).unwrap();
        let v6 = h.dump(AddressFamily::Inet6).unwrap();
        let show = |e: &netlink::conntrack::Entry| {
            format!(
                "{}:{} -> {} ({})",
                e.orig.src,
                e.orig.src_port.unwrap(),
                e.orig.dst,
                e.reply.src
            )
        };
        let mut got: Vec<String> = v4.iter().chain(&v6).map(show).collect();
        got.sort();
        assert_eq!(got, listed());
        assert_eq!(got.len(), 3);

        let victim: Vec<_> = v4
            .iter()
            .filter(|e| e.reply.src.to_string() == "10.244.0.5")
            .cloned()
            .collect();
        assert_eq!(victim.len(), 1);
        let report = h.delete(&victim).unwrap();
        assert_eq!(
            (report.deleted, report.gone, report.failed.len()),
            (1, 0, 0)
        );
        assert_eq!(
            listed(),
            [
                "10.0.0.1:40001 -> 10.96.0.10 (10.244.0.6)",
                "fd00::1:40002 -> fd00:96::a (fd00:244::5)",
            ]
        );
        // Deleting it again: already gone, not a failure.
        let report = h.delete(&victim).unwrap();
        assert_eq!(
            (report.deleted, report.gone, report.failed.len()),
            (0, 1, 0)
        );
    });
}
