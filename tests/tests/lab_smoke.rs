//! Proves the lab harness end to end on the guest kernel: IPVS is there, `ipvsadm` run from a
//! case lands in that case's network namespace, and cases cannot see each other.

use lab_tests::{NetnsCase, in_fresh_netns, ipvsadm_save, require_lab, run, sh};

#[test]
fn virtual_server_with_a_real_server_in_a_fresh_netns() {
    require_lab();
    let saved = NetnsCase::new()
        .ip_batch(
            "link add kube-ipvs0 type dummy\n\
             addr add 10.96.0.1/32 dev kube-ipvs0",
        )
        .run(|| async {
            run("ipvsadm", &["-A", "-t", "10.96.0.1:80", "-s", "rr"]).unwrap();
            run(
                "ipvsadm",
                &["-a", "-t", "10.96.0.1:80", "-r", "10.255.0.2:8080", "-m"],
            )
            .unwrap();
            ipvsadm_save().unwrap()
        });
    assert_eq!(
        saved,
        "-A -t 10.96.0.1:80 -s rr\n\
         -a -t 10.96.0.1:80 -r 10.255.0.2:8080 -m -w 1\n"
    );
}

#[test]
fn fresh_netns_cases_cannot_see_each_other() {
    require_lab();
    in_fresh_netns(|| async {
        run("ipvsadm", &["-A", "-u", "10.96.0.10:53", "-s", "wrr"]).unwrap();
        // A case started while this one still holds its service sees an empty table and only
        // the links a fresh case gets...
        let (inner_table, inner_links) = in_fresh_netns(|| async {
            let links = sh("ip -o link show | awk -F': ' '{print $2}'").unwrap();
            (ipvsadm_save().unwrap(), links)
        });
        assert_eq!(inner_table, "");
        assert_eq!(inner_links, "lo\neth0\n");
        // ...and this case still has its own.
        assert_eq!(ipvsadm_save().unwrap(), "-A -u 10.96.0.10:53 -s wrr\n");
    });
}

#[test]
fn the_netns_routes_make_real_servers_acceptable_for_both_families() {
    require_lab();
    let saved = in_fresh_netns(|| async {
        run("ipvsadm", &["-A", "-t", "[fd00:96::1]:443", "-s", "sh"]).unwrap();
        run(
            "ipvsadm",
            &[
                "-a",
                "-t",
                "[fd00:96::1]:443",
                "-r",
                "[fd00:255::2]:8443",
                "-m",
            ],
        )
        .unwrap();
        ipvsadm_save().unwrap()
    });
    assert_eq!(
        saved,
        "-A -t [fd00:96::1]:443 -s sh\n\
         -a -t [fd00:96::1]:443 -r [fd00:255::2]:8443 -m -w 1\n"
    );
}
