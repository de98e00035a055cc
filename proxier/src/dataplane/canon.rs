//! Pure: whether the chains a restore input declares already hold exactly its rules in an
//! `iptables-save` text, so that the restore can be skipped (zero writes when nothing
//! changed, also for a fresh process that adopts a programmed node).
//!
//! `iptables-save` does not print rules the way they were written: it orders base matches
//! its own way, prints `0x4000` for `0x004000`, spells `--or-mark M` as `--set-xmark M/M`,
//! adds REJECT's default `--reject-with`, and adds the implicit `-m tcp` of `--dport`. Rules
//! are compared in a canonical form that erases those differences. A form this module does
//! not know only makes the comparison say "different", which costs a restore, never a
//! missed change.

use std::collections::BTreeMap;

use netlink::AddressFamily;

/// Splits a rule into words, honouring double quotes and backslash escapes.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut started = false;
    let mut in_quotes = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            word.extend(chars.next());
            started = true;
        } else if c == '"' {
            in_quotes = !in_quotes;
            started = true;
        } else if c.is_whitespace() && !in_quotes {
            if started {
                out.push(std::mem::take(&mut word));
                started = false;
            }
        } else {
            word.push(c);
            started = true;
        }
    }
    if started {
        out.push(word);
    }
    out
}

/// `0x004000/0x004000` -> `0x4000/0x4000`; other words unchanged.
fn hex(word: &str) -> String {
    if !word.starts_with("0x") {
        return word.to_owned();
    }
    word.split('/')
        .map(|part| {
            part.strip_prefix("0x")
                .and_then(|h| u64::from_str_radix(h, 16).ok())
                .map_or_else(|| part.to_owned(), |v| format!("{v:#x}"))
        })
        .collect::<Vec<_>>()
        .join("/")
}

const BASE_OPTIONS: [&str; 5] = ["-s", "-d", "-p", "-i", "-o"];

/// One rule (the words after `-A CHAIN`) in canonical form.
fn canonical_rule(family: AddressFamily, words: &[String]) -> String {
    let mut base: Vec<String> = Vec::new();
    let mut modules: Vec<Vec<String>> = Vec::new();
    let mut target: Vec<String> = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let w = words[i].as_str();
        if target.is_empty() {
            let negated = w == "!"
                && words
                    .get(i + 1)
                    .is_some_and(|n| BASE_OPTIONS.contains(&n.as_str()));
            if BASE_OPTIONS.contains(&w) || negated {
                let n = if negated { 3 } else { 2 };
                let end = (i + n).min(words.len());
                let mut part = words[i..end].join(" ");
                // `-s 10.0.0.1` is saved as `-s 10.0.0.1/32`.
                if !part.contains('/') && (part.contains("-s ") || part.contains("-d ")) {
                    part.push_str(match family {
                        AddressFamily::Inet => "/32",
                        AddressFamily::Inet6 => "/128",
                    });
                }
                base.push(part);
                i = end;
                continue;
            }
            if w == "-j" || w == "-g" {
                target.push(w.to_owned());
            } else if w == "-m" {
                modules.push(vec![w.to_owned()]);
            } else if let Some(m) = modules.last_mut() {
                m.push(hex(w));
            } else {
                // An option of the protocol's implicit match (`-p tcp --dport 80`).
                modules.push(vec!["-m".to_owned(), "(implicit)".to_owned(), hex(w)]);
            }
        } else {
            target.push(hex(w));
        }
        i += 1;
    }
    // `-p tcp --dport 80` is saved as `-p tcp -m tcp --dport 80`: fold the implicit options
    // into the protocol's module.
    let protocol = base
        .iter()
        .find_map(|b| b.strip_prefix("-p ").map(str::to_owned));
    let mut folded: Vec<Vec<String>> = Vec::new();
    for m in modules {
        if m.get(1).map(String::as_str) == Some("(implicit)") {
            let name = protocol.clone().unwrap_or_default();
            match folded
                .iter_mut()
                .find(|f| f.get(1).map(String::as_str) == Some(name.as_str()))
            {
                Some(f) => f.extend(m.into_iter().skip(2)),
                None => folded.push(
                    ["-m".to_owned(), name]
                        .into_iter()
                        .chain(m.into_iter().skip(2))
                        .collect(),
                ),
            }
        } else {
            folded.push(m);
        }
    }
    if target.get(1).map(String::as_str) == Some("REJECT")
        && !target.iter().any(|w| w == "--reject-with")
    {
        target.push("--reject-with".to_owned());
        target.push(
            match family {
                AddressFamily::Inet => "icmp-port-unreachable",
                AddressFamily::Inet6 => "icmp6-port-unreachable",
            }
            .to_owned(),
        );
    }
    if target.len() == 4 && target[1] == "MARK" {
        let mark = target[3].clone();
        let spelled = match target[2].as_str() {
            "--or-mark" => Some(format!("{mark}/{mark}")),
            "--xor-mark" => Some(format!("{mark}/0x0")),
            "--set-mark" if !mark.contains('/') => Some(format!("{mark}/0xffffffff")),
            _ => None,
        };
        if let Some(s) = spelled {
            target[2] = "--set-xmark".to_owned();
            target[3] = s;
        }
    }
    base.sort();
    let mut modules: Vec<String> = folded.into_iter().map(|m| m.join(" ")).collect();
    modules.sort();
    format!(
        "{} | {} | {}",
        base.join(" "),
        modules.join(" ; "),
        target.join(" ")
    )
}

/// (table, chain) -> canonical rules in order, for the chains of `text` (restore input or
/// `iptables-save` output). Declared chains without rules map to an empty list.
fn chains(family: AddressFamily, text: &str) -> BTreeMap<(String, String), Vec<String>> {
    let mut out: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let mut table = String::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.trim().to_owned();
        } else if let Some(decl) = line.strip_prefix(':') {
            if let Some(name) = decl.split_whitespace().next() {
                out.entry((table.clone(), name.to_owned())).or_default();
            }
        } else if line.starts_with("-A ") {
            let w = words(line);
            if let Some(chain) = w.get(1) {
                out.entry((table.clone(), chain.clone()))
                    .or_default()
                    .push(canonical_rule(family, &w[2..]));
            }
        }
    }
    out
}

/// Whether every chain that `input` declares exists in `saved` with exactly `input`'s rules
/// for it (compared canonically). `input` must be plain chain declarations and `-A` rules:
/// anything else (`-I`, `-D`, `-X`, a `-A` for an undeclared chain) counts as a change.
pub fn chains_up_to_date(family: AddressFamily, input: &str, saved: &str) -> bool {
    let has_other_ops = input.lines().any(|l| {
        let l = l.trim_start();
        l.starts_with("-I ") || l.starts_with("-D ") || l.starts_with("-X ") || l.starts_with("-F")
    });
    if has_other_ops {
        return false;
    }
    let want = chains(family, input);
    let declared: std::collections::BTreeSet<(String, String)> = {
        let mut table = String::new();
        let mut set = std::collections::BTreeSet::new();
        for line in input.lines() {
            if let Some(t) = line.strip_prefix('*') {
                table = t.trim().to_owned();
            } else if let Some(decl) = line.strip_prefix(':')
                && let Some(name) = decl.split_whitespace().next()
            {
                set.insert((table.clone(), name.to_owned()));
            }
        }
        set
    };
    if want.keys().any(|k| !declared.contains(k)) {
        return false;
    }
    let have = chains(family, saved);
    want.iter()
        .all(|(key, rules)| have.get(key).is_some_and(|h| h == rules))
}

#[cfg(test)]
mod tests {
    use super::*;

    const INPUT: &str = "*nat\n\
:KUBE-POSTROUTING - [0:0]\n\
:KUBE-MARK-MASQ - [0:0]\n\
:KUBE-EMPTY - [0:0]\n\
-A KUBE-POSTROUTING -m mark ! --mark 0x004000/0x004000 -j RETURN\n\
-A KUBE-POSTROUTING -j MARK --xor-mark 0x004000\n\
-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n\
-A KUBE-MARK-MASQ -j MARK --or-mark 0x004000\n\
COMMIT\n\
*filter\n\
:KUBE-IPVS-FILTER - [0:0]\n\
-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set KUBE-IPVS-IPS dst -j REJECT\n\
-A KUBE-IPVS-FILTER -p tcp --dport 80 -d 10.0.0.1 -j ACCEPT\n\
COMMIT\n";

    const SAVED: &str = "# Generated by iptables-save\n*nat\n\
:PREROUTING ACCEPT [0:0]\n\
:KUBE-EMPTY - [0:0]\n\
:KUBE-MARK-MASQ - [0:0]\n\
:KUBE-POSTROUTING - [0:0]\n\
-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n\
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0\n\
-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n\
COMMIT\n\
*filter\n\
:KUBE-IPVS-FILTER - [0:0]\n\
-A KUBE-IPVS-FILTER -m set --match-set KUBE-IPVS-IPS dst -m conntrack --ctstate NEW -j REJECT --reject-with icmp-port-unreachable\n\
-A KUBE-IPVS-FILTER -d 10.0.0.1/32 -p tcp -m tcp --dport 80 -j ACCEPT\n\
COMMIT\n";

    #[test]
    fn saved_spelling_of_the_same_rules_is_up_to_date() {
        assert!(chains_up_to_date(AddressFamily::Inet, INPUT, SAVED));
    }

    #[test]
    fn any_rule_difference_is_a_change() {
        let changed = SAVED.replace("--random-fully\n", "\n");
        assert!(!chains_up_to_date(AddressFamily::Inet, INPUT, &changed));
        let missing_chain = SAVED.replace(":KUBE-EMPTY - [0:0]\n", "");
        assert!(!chains_up_to_date(
            AddressFamily::Inet,
            INPUT,
            &missing_chain
        ));
        let extra_rule = SAVED.replace(
            "COMMIT\n*filter",
            "-A KUBE-EMPTY -j RETURN\nCOMMIT\n*filter",
        );
        assert!(!chains_up_to_date(AddressFamily::Inet, INPUT, &extra_rule));
        let reordered = SAVED.replace(
            "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0\n",
            "-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0\n-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n",
        );
        assert!(!chains_up_to_date(AddressFamily::Inet, INPUT, &reordered));
        let with_insert = format!("{INPUT}*nat\n-I PREROUTING 1 -j KUBE-SERVICES\nCOMMIT\n");
        assert!(!chains_up_to_date(AddressFamily::Inet, &with_insert, SAVED));
    }
}
