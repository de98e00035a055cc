//! The per-case network namespace of `lab_tests`, checked on whatever kernel runs the test
//! (the host in the "netns tests" step of tests/run-all, the lab guest under tests/lab/test).
//! Needs root: it creates network namespaces.

use lab_tests::{NetnsCase, in_fresh_netns, run, sh};

/// `net:[inode]` of the calling thread's network namespace.
fn netns_of_this_thread() -> String {
    std::fs::read_link("/proc/thread-self/ns/net").map_or_else(
        |e| format!("unreadable /proc/thread-self/ns/net: {e}"),
        |p| p.to_string_lossy().into_owned(),
    )
}

#[test]
fn a_case_and_the_programs_it_runs_share_one_new_namespace() {
    let outside = netns_of_this_thread();
    let (inside, child) = in_fresh_netns(|| async {
        let child = sh("readlink /proc/self/ns/net").unwrap();
        (netns_of_this_thread(), child.trim_end().to_owned())
    });
    assert_ne!(inside, outside);
    assert_eq!(child, inside);
    // The test thread itself never moved.
    assert_eq!(netns_of_this_thread(), outside);
}

#[test]
fn a_fresh_namespace_has_lo_eth0_addresses_and_default_routes() {
    let (addrs, routes4, routes6) = in_fresh_netns(|| async {
        (
            sh("ip -br addr show dev lo; ip -br addr show dev eth0").unwrap(),
            run("ip", &["-4", "route", "show"]).unwrap().stdout,
            run("ip", &["-6", "route", "show", "default"])
                .unwrap()
                .stdout,
        )
    });
    let mut lines = addrs.lines();
    let lo = lines.next().unwrap();
    assert!(lo.starts_with("lo ") && lo.contains(" UNKNOWN "), "{addrs}");
    assert!(lo.contains("127.0.0.1/8"), "{addrs}");
    let eth0 = lines.next().unwrap();
    assert!(eth0.starts_with("eth0"), "{addrs}");
    assert!(eth0.contains("10.255.0.1/24"), "{addrs}");
    assert!(eth0.contains("fd00:255::1/64"), "{addrs}");
    assert!(routes4.starts_with("default dev eth0"), "{routes4}");
    assert!(routes6.starts_with("default dev eth0"), "{routes6}");
}

#[test]
fn a_bare_case_has_only_lo_and_extra_batch_lines_run() {
    let links = NetnsCase::new()
        .bare()
        .ip_batch("link add br-test type bridge")
        .run(|| async { sh("ip -o link show | awk -F': ' '{print $2}'").unwrap() });
    assert_eq!(links, "lo\nbr-test\n");
}

#[test]
fn the_tokio_runtime_runs_on_the_case_thread() {
    let same = in_fresh_netns(|| async {
        let before = netns_of_this_thread();
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        before == netns_of_this_thread()
    });
    assert!(same);
}

#[test]
#[should_panic(expected = "the case's own message")]
fn a_panic_in_a_case_fails_the_test_with_its_message() {
    in_fresh_netns(|| async { panic!("the case's own message") })
}
