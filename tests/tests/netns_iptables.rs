//! `Iptables::apply` against a real kernel, in a fresh network namespace per case, for both
//! backends (iptables-nft, iptables-legacy) and both families: the kube-proxy rule text of
//! reference §2.3 is applied twice and the WHOLE nat and filter tables read back with
//! `iptables-save` must equal the input plus the 9 jump rules, compared semantically
//! (iptables-save reorders matches, prints `0x4000` for `0x004000`, spells out REJECT's
//! default). Needs root and netns only.

// Test helpers outside #[test] fns: a panic there fails the test, which is what we want.
#![allow(clippy::unwrap_used, clippy::panic)]

mod glue;

use std::collections::BTreeMap;

use glue::{in_netns, kube_proxy_rules, kube_sets};
use ipvs_proxier::dataplane::iptables::{BackendChoice, Iptables, IptablesError, JUMP_RULES};
use netlink::AddressFamily;
use netlink::ipset::IpsetHandle;
use pretty_assertions::assert_eq;

/// Splits a rule on blanks, honouring double quotes (and dropping them).
fn tokens(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            // iptables-save escapes quotes inside a quoted comment: `\'`.
            '\\' => {
                cur.extend(chars.next());
                any = true;
            }
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

/// `0x004000/0x004000` -> `0x4000/0x4000`.
fn canon_hex(tok: &str) -> String {
    tok.split('/')
        .map(|p| match p.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16).map_or(p.to_owned(), |v| format!("{v:#x}")),
            None => p.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// A rule (the tokens after `-A CHAIN`) in a canonical form: base matches sorted, match
/// modules sorted, hex normalised, REJECT's default made explicit.
fn canon_rule(family: AddressFamily, toks: &[String]) -> String {
    const BASE: [&str; 5] = ["-s", "-d", "-p", "-i", "-o"];
    let mut base: Vec<String> = Vec::new();
    let mut modules: Vec<Vec<String>> = Vec::new();
    let mut target: Vec<String> = Vec::new();
    let mut i = 0;
    let mut in_target = false;
    while i < toks.len() {
        let t = &toks[i];
        let negated_base = t == "!" && toks.get(i + 1).is_some_and(|n| BASE.contains(&n.as_str()));
        if !in_target && (BASE.contains(&t.as_str()) || negated_base) {
            let n = if negated_base { 3 } else { 2 };
            base.push(toks[i..(i + n).min(toks.len())].join(" "));
            i += n;
            continue;
        }
        if t == "-j" || t == "-g" {
            in_target = true;
        }
        if in_target {
            target.push(canon_hex(t));
        } else if t == "-m" {
            modules.push(vec![t.clone()]);
        } else if let Some(m) = modules.last_mut() {
            m.push(canon_hex(t));
        }
        i += 1;
    }
    if target.first().map(String::as_str) == Some("-j")
        && target.get(1).map(String::as_str) == Some("REJECT")
        && !target.iter().any(|t| t == "--reject-with")
    {
        target.push("--reject-with".into());
        target.push(match family {
            AddressFamily::Inet => "icmp-port-unreachable".into(),
            AddressFamily::Inet6 => "icmp6-port-unreachable".into(),
        });
    }
    // MARK prints `--or-mark M` as `--set-xmark M/M` and `--xor-mark M` as `--set-xmark M/0x0`.
    if target.len() == 4 && target[1] == "MARK" {
        let m = target[3].clone();
        match target[2].as_str() {
            "--or-mark" => target[3] = format!("{m}/{m}"),
            "--xor-mark" => target[3] = format!("{m}/0x0"),
            _ => {}
        }
        if target[2] == "--or-mark" || target[2] == "--xor-mark" {
            target[2] = "--set-xmark".into();
        }
    }
    base.sort();
    let mut modules: Vec<String> = modules.into_iter().map(|m| m.join(" ")).collect();
    modules.sort();
    [base.join(" "), modules.join(" | "), target.join(" ")].join(" || ")
}

/// table -> chain -> (policy, rules in order), from `iptables-save` or restore input text.
/// `-I CHAIN 1` lines are applied as prepends.
type Tables = BTreeMap<String, BTreeMap<String, (String, Vec<String>)>>;

fn parse_tables(family: AddressFamily, text: &str, only: &[&str]) -> Tables {
    let mut tables = Tables::new();
    let mut table = String::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.trim().to_owned();
            continue;
        }
        if !only.contains(&table.as_str()) {
            continue;
        }
        let chains = tables.entry(table.clone()).or_default();
        if let Some(decl) = line.strip_prefix(':') {
            let mut w = decl.split_whitespace();
            let name = w.next().unwrap().to_owned();
            let policy = w.next().unwrap_or("-").to_owned();
            chains.entry(name).or_default().0 = policy;
        } else if line.starts_with("-A ") || line.starts_with("-I ") {
            let toks = tokens(line);
            let chain = toks[1].clone();
            let entry = chains.entry(chain).or_default();
            if toks[0] == "-A" {
                entry.1.push(canon_rule(family, &toks[2..]));
            } else {
                assert_eq!(toks[2], "1", "only `-I CHAIN 1` is modelled: {line}");
                entry.1.insert(0, canon_rule(family, &toks[3..]));
            }
        }
    }
    tables
}

/// What the kernel should hold after applying `rules` to an empty namespace: the built-in
/// chains with policy ACCEPT, the planned chains and rules, and the jump rules inserted in
/// kube-proxy's order (each at position 1).
fn expected_tables(family: AddressFamily, rules: &str) -> Tables {
    let mut text = String::from(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
         :POSTROUTING ACCEPT [0:0]\nCOMMIT\n\
         *filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n",
    );
    text.push_str(rules);
    for j in JUMP_RULES {
        text.push_str(&format!(
            "*{}\n-I {} 1 {}\nCOMMIT\n",
            j.table,
            j.chain,
            j.spec()
        ));
    }
    parse_tables(family, &text, &["nat", "filter"])
}

fn apply_twice_and_compare(family: AddressFamily, backend: BackendChoice) {
    in_netns(move || {
        // The rules reference the sets, which must exist first.
        let mut ipset = IpsetHandle::new().unwrap();
        for spec in kube_sets(family) {
            ipset.create(&spec).unwrap();
        }
        let ipt = Iptables::detect(family, backend).unwrap();
        assert!(ipt.has_random_fully());
        let rules = kube_proxy_rules(family);

        let first = ipt.apply(&rules).unwrap();
        assert_eq!(first.jumps_added.len(), 9);
        let want = expected_tables(family, &rules);
        let saved = ipt.save(None).unwrap();
        assert_eq!(
            parse_tables(family, &saved, &["nat", "filter"]),
            want,
            "{saved}"
        );

        // Applied again: nothing added, the state identical (jumps exactly once).
        let second = ipt.apply(&rules).unwrap();
        assert_eq!(
            (second.jumps_added.len(), second.duplicates_removed),
            (0, 0)
        );
        let saved = ipt.save(None).unwrap();
        assert_eq!(
            parse_tables(family, &saved, &["nat", "filter"]),
            want,
            "{saved}"
        );

        // A broken rule: a typed error naming table, chain and line, with the tool's stderr.
        let broken = rules.replace(
            "-A KUBE-SOURCE-RANGES-FIREWALL -j DROP",
            "-A KUBE-SOURCE-RANGES-FIREWALL -m nosuchmatch -j DROP",
        );
        let err = ipt.apply(&broken).unwrap_err();
        match &err {
            IptablesError::RestoreLine(f) => {
                assert_eq!(
                    (f.table.as_str(), f.chain.as_str()),
                    ("filter", "KUBE-SOURCE-RANGES-FIREWALL")
                );
            }
            other => panic!("expected a located restore error, got {other}"),
        }
        assert!(err.to_string().contains("nosuchmatch"), "{err}");
        // The failed restore changed nothing.
        let saved = ipt.save(None).unwrap();
        assert_eq!(
            parse_tables(family, &saved, &["nat", "filter"]),
            want,
            "{saved}"
        );
    });
}

#[test]
fn nft_ipv4() {
    apply_twice_and_compare(AddressFamily::Inet, BackendChoice::Nft);
}

#[test]
fn nft_ipv6() {
    apply_twice_and_compare(AddressFamily::Inet6, BackendChoice::Nft);
}

#[test]
fn legacy_ipv4() {
    apply_twice_and_compare(AddressFamily::Inet, BackendChoice::Legacy);
}

#[test]
fn legacy_ipv6() {
    apply_twice_and_compare(AddressFamily::Inet6, BackendChoice::Legacy);
}

#[test]
fn auto_follows_what_iptables_points_to() {
    in_netns(|| {
        let ipt = Iptables::detect(AddressFamily::Inet, BackendChoice::Auto).unwrap();
        let version = glue::cmd("iptables", &["--version"], None);
        assert!(
            version.contains(&format!("({})", ipt.backend())),
            "{version}"
        );
    });
}
