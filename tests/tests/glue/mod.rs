//! Shared by the dataplane-glue netns tests (`netns_ipset`, `netns_iptables`): a fresh network
//! namespace per case, the 17 kube-proxy sets, and normalisers for `ipset save` and
//! `iptables-save` output. Kept here rather than in `lab_tests` so these tests need nothing
//! but root and netns (they run on the host and in the guest alike).

// Test helpers: a panic is how a helper fails the test that called it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use netlink::AddressFamily;
use netlink::ipset::{SetSpec, SetType};

/// Runs `f` in a new, empty network namespace (only `lo`, up) on a thread of its own: the lab
/// crate's bare [`lab_tests::NetnsCase`]. ipset, iptables and netlink sockets opened there only
/// see that namespace; it disappears when the thread ends.
pub fn in_netns<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    lab_tests::NetnsCase::new()
        .bare()
        .run(|| async move { f() })
}

/// Runs a program (in the calling thread's namespace), feeding `stdin`; panics with its stderr
/// when it fails.
pub fn cmd(program: &str, args: &[&str], stdin: Option<&str>) -> String {
    let out = match stdin {
        Some(input) => lab_tests::run_with_stdin(program, args, input.as_bytes()),
        None => lab_tests::run(program, args),
    };
    out.unwrap_or_else(|e| panic!("{e}")).stdout
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

/// Reference §2.3, every conditional rule included, detect-local ClusterCIDR. The
/// `KUBE-IPVS-OUT-FILTER` rule (`-m ipvs`) is left out: the build host's kernel has no IPVS.
pub fn kube_proxy_rules(family: AddressFamily) -> String {
    let (loopback, cluster_cidr) = match family {
        AddressFamily::Inet => ("127.0.0.0/8", "10.244.0.0/16"),
        AddressFamily::Inet6 => ("::1/128", "fd00:10:244::/64"),
    };
    let text = format!(
        r#"*nat
:KUBE-SERVICES - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-NODE-PORT - [0:0]
:KUBE-LOAD-BALANCER - [0:0]
:KUBE-MARK-MASQ - [0:0]
-A KUBE-SERVICES -s {loopback} -j RETURN
-A KUBE-POSTROUTING -m comment --comment "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose" -m set --match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE
-A KUBE-SERVICES -m comment --comment "Kubernetes service lb portal" -m set --match-set KUBE-LOAD-BALANCER dst,dst -j KUBE-LOAD-BALANCER
-A KUBE-LOAD-BALANCER -m comment --comment "Kubernetes service load balancer ip + port with externalTrafficPolicy=local" -m set --match-set KUBE-LOAD-BALANCER-LOCAL dst,dst -j RETURN
-A KUBE-NODE-PORT -p tcp -m comment --comment "Kubernetes nodeport TCP port with externalTrafficPolicy=local" -m set --match-set KUBE-NODE-PORT-LOCAL-TCP dst -j RETURN
-A KUBE-NODE-PORT -p tcp -m comment --comment "Kubernetes nodeport TCP port for masquerade purpose" -m set --match-set KUBE-NODE-PORT-TCP dst -j KUBE-MARK-MASQ
-A KUBE-NODE-PORT -p udp -m comment --comment "Kubernetes nodeport UDP port with externalTrafficPolicy=local" -m set --match-set KUBE-NODE-PORT-LOCAL-UDP dst -j RETURN
-A KUBE-NODE-PORT -p udp -m comment --comment "Kubernetes nodeport UDP port for masquerade purpose" -m set --match-set KUBE-NODE-PORT-UDP dst -j KUBE-MARK-MASQ
-A KUBE-NODE-PORT -p sctp -m comment --comment "Kubernetes nodeport SCTP port with externalTrafficPolicy=local with type 'hash ip:port'" -m set --match-set KUBE-NODE-PORT-LOCAL-SCTP-HASH dst,dst -j RETURN
-A KUBE-NODE-PORT -p sctp -m comment --comment "Kubernetes nodeport SCTP port for masquerade purpose with type 'hash ip:port'" -m set --match-set KUBE-NODE-PORT-SCTP-HASH dst,dst -j KUBE-MARK-MASQ
-A KUBE-SERVICES -m comment --comment "Kubernetes service cluster ip + port for masquerade purpose" -m set --match-set KUBE-CLUSTER-IP dst,dst ! -s {cluster_cidr} -j KUBE-MARK-MASQ
-A KUBE-SERVICES -m comment --comment "Kubernetes service external ip + port for masquerade and filter purpose" -m set --match-set KUBE-EXTERNAL-IP dst,dst -j KUBE-MARK-MASQ
-A KUBE-SERVICES -m comment --comment "Kubernetes service external ip + port for masquerade and filter purpose" -m set --match-set KUBE-EXTERNAL-IP dst,dst -m physdev ! --physdev-is-in -m addrtype ! --src-type LOCAL -j ACCEPT
-A KUBE-SERVICES -m comment --comment "Kubernetes service external ip + port for masquerade and filter purpose" -m set --match-set KUBE-EXTERNAL-IP dst,dst -m addrtype --dst-type LOCAL -j ACCEPT
-A KUBE-SERVICES -m comment --comment "Kubernetes service external ip + port with externalTrafficPolicy=local" -m set --match-set KUBE-EXTERNAL-IP-LOCAL dst,dst -m physdev ! --physdev-is-in -m addrtype ! --src-type LOCAL -j ACCEPT
-A KUBE-SERVICES -m comment --comment "Kubernetes service external ip + port with externalTrafficPolicy=local" -m set --match-set KUBE-EXTERNAL-IP-LOCAL dst,dst -m addrtype --dst-type LOCAL -j ACCEPT
-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT
-A KUBE-LOAD-BALANCER -j KUBE-MARK-MASQ
-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT
-A KUBE-SERVICES -m set --match-set KUBE-LOAD-BALANCER dst,dst -j ACCEPT
-A KUBE-POSTROUTING -m mark ! --mark 0x004000/0x004000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x004000
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-MARK-MASQ -j MARK --or-mark 0x004000
COMMIT
*filter
:KUBE-FORWARD - [0:0]
:KUBE-NODE-PORT - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
:KUBE-SOURCE-RANGES-FIREWALL - [0:0]
:KUBE-IPVS-FILTER - [0:0]
:KUBE-IPVS-OUT-FILTER - [0:0]
-A KUBE-PROXY-FIREWALL -m comment --comment "Kubernetes service load balancer ip + port for load balancer with sourceRange" -m set --match-set KUBE-LOAD-BALANCER-FW dst,dst -j KUBE-SOURCE-RANGES-FIREWALL
-A KUBE-SOURCE-RANGES-FIREWALL -m comment --comment "Kubernetes service load balancer ip + port + source cidr for packet filter purpose" -m set --match-set KUBE-LOAD-BALANCER-SOURCE-CIDR dst,dst,src -j RETURN
-A KUBE-SOURCE-RANGES-FIREWALL -m comment --comment "Kubernetes service load balancer ip + port + source IP for packet filter purpose" -m set --match-set KUBE-LOAD-BALANCER-SOURCE-IP dst,dst,src -j RETURN
-A KUBE-SOURCE-RANGES-FIREWALL -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x004000/0x004000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A KUBE-NODE-PORT -m comment --comment "Kubernetes health check node port" -m set --match-set KUBE-HEALTH-CHECK-NODE-PORT dst -j ACCEPT
-A KUBE-IPVS-FILTER -m set --match-set KUBE-LOAD-BALANCER dst,dst -j RETURN
-A KUBE-IPVS-FILTER -m set --match-set KUBE-CLUSTER-IP dst,dst -j RETURN
-A KUBE-IPVS-FILTER -m set --match-set KUBE-EXTERNAL-IP dst,dst -j RETURN
-A KUBE-IPVS-FILTER -m set --match-set KUBE-EXTERNAL-IP-LOCAL dst,dst -j RETURN
-A KUBE-IPVS-FILTER -m set --match-set KUBE-HEALTH-CHECK-NODE-PORT dst -j RETURN
-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set KUBE-IPVS-IPS dst -j REJECT
COMMIT
"#
    );
    // IPv6 set names: `--match-set KUBE-X ` -> `--match-set KUBE-6-X ` (31 bytes at most).
    text.lines()
        .map(|l| match l.split_once("--match-set ") {
            Some((head, tail)) => {
                let (set, rest) = tail.split_once(' ').unwrap();
                format!("{head}--match-set {} {rest}", set_name(set, family))
            }
            None => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}
