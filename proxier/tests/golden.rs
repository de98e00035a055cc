//! Golden cases: every directory under `tests/testdata/` holds the input objects
//! (`input.yaml`, or `input-path` naming a file relative to the workspace root), a
//! `config.yaml` (PlanConfig + node facts) and the expected renders: `ipvs`, `ipset`,
//! `iptables`, `ip6tables` (when IPv6 is planned), `diagnostics` and `healthchecks` (when
//! non-empty). `UPDATE_GOLDENS=1` rewrites the expectations; review every change.

// A test crate: a panic here is a test failure with its message, which is what we want.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use ipvs_proxier::model::parse_manifests;
use ipvs_proxier::plan::{ConfigFile, plan_objects, render};
use netlink::AddressFamily;

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testdata")
}

/// The input objects of a case (`input.yaml`, or the file `input-path` names).
fn input_of(dir: &Path) -> String {
    match fs::read_to_string(dir.join("input-path")) {
        Ok(rel) => {
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
            fs::read_to_string(root.join(rel.trim())).unwrap()
        }
        Err(_) => fs::read_to_string(dir.join("input.yaml")).unwrap(),
    }
}

/// The golden case directories, sorted.
fn case_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = fs::read_dir(testdata())
        .unwrap()
        .map(|e| e.unwrap().path())
        // Other tests keep their own data under testdata/ too; a case has a config.yaml.
        .filter(|p| p.join("config.yaml").is_file())
        .collect();
    dirs.sort();
    dirs
}

/// Every render of a case, by file name; `None` = the file must not exist.
fn renders(dir: &Path) -> Vec<(&'static str, Option<String>)> {
    let input = input_of(dir);
    let config = fs::read_to_string(dir.join("config.yaml")).unwrap();
    let (config, facts) = ConfigFile::parse(&config).unwrap().into_parts().unwrap();
    let manifests = parse_manifests(&input);
    let plan = plan_objects(
        &manifests.services,
        &manifests.endpoint_slices,
        &manifests.nodes,
        &config,
        &facts,
    );
    let mut diags = manifests.diagnostics.clone();
    diags.extend(plan.diagnostics.iter().cloned());
    let non_empty = |s: String| (!s.is_empty()).then_some(s);
    vec![
        ("ipvs", Some(render::ipvs(&plan))),
        ("ipset", Some(render::ipsets(&plan))),
        ("iptables", render::iptables(&plan, AddressFamily::Inet)),
        ("ip6tables", render::iptables(&plan, AddressFamily::Inet6)),
        ("diagnostics", non_empty(render::diagnostics(&diags))),
        ("healthchecks", non_empty(render::health_checks(&plan))),
    ]
}

#[test]
fn golden_cases() {
    let update = std::env::var_os("UPDATE_GOLDENS").is_some_and(|v| v == "1");
    let dirs = case_dirs();
    let mut failures = String::new();
    for dir in &dirs {
        let case = dir.file_name().unwrap().to_string_lossy().into_owned();
        for (file, actual) in renders(dir) {
            let path = dir.join(file);
            let expected = fs::read_to_string(&path).ok();
            if expected == actual {
                continue;
            }
            if update {
                match &actual {
                    Some(text) => fs::write(&path, text).unwrap(),
                    None => fs::remove_file(&path).unwrap(),
                }
                eprintln!("updated {case}/{file}");
                continue;
            }
            let _ = writeln!(
                failures,
                "--- {case}/{file} (expected)\n+++ {case}/{file} (actual)"
            );
            failures.push_str(&unified_diff(
                expected.as_deref().unwrap_or(""),
                actual.as_deref().unwrap_or(""),
            ));
        }
    }
    assert!(dirs.len() >= 25, "expected at least 25 golden cases");
    assert!(
        failures.is_empty(),
        "golden mismatches (UPDATE_GOLDENS=1 to rewrite, then review):\n{failures}"
    );
}

/// Seeds for the cargo-fuzz `model` target (fuzz/): each case's input documents as one JSON
/// `v1` `List` (the shape the target reads), written under `$FUZZ_SEEDS_DIR/model/` when
/// that is set (as `tests/fuzz/run` does). Checked either way: every document of every case
/// converts, and the List reads back through `parse_manifests` to the same objects.
#[test]
fn golden_inputs_as_fuzz_seeds() {
    use serde::Deserialize as _;
    let out = std::env::var_os("FUZZ_SEEDS_DIR").map(|d| Path::new(&d).join("model"));
    if let Some(dir) = &out {
        fs::create_dir_all(dir).unwrap();
    }
    for dir in case_dirs() {
        let case = dir.file_name().unwrap().to_string_lossy().into_owned();
        let input = input_of(&dir);
        let items: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(&input)
            .map(|doc| serde_json::Value::deserialize(doc).unwrap())
            .filter(|v| !v.is_null())
            .collect();
        let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
        let json = serde_json::to_string_pretty(&list).unwrap();
        let (direct, listed) = (parse_manifests(&input), parse_manifests(&json));
        assert_eq!(
            (direct.services, direct.endpoint_slices, direct.nodes),
            (listed.services, listed.endpoint_slices, listed.nodes),
            "{case}: the JSON List holds other objects than the input"
        );
        if let Some(out) = &out {
            fs::write(out.join(format!("{case}.json")), json).unwrap();
        }
    }
}

/// A unified diff (3 lines of context) from a longest-common-subsequence line alignment.
fn unified_diff(a: &str, b: &str) -> String {
    let a: Vec<&str> = a.lines().collect();
    let b: Vec<&str> = b.lines().collect();
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    // (tag, line, index in a, index in b)
    let mut ops: Vec<(char, &str, usize, usize)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            ops.push((' ', a[i], i, j));
            i += 1;
            j += 1;
        } else if j < m && (i == n || lcs[i][j + 1] >= lcs[i + 1][j]) {
            ops.push(('+', b[j], i, j));
            j += 1;
        } else {
            ops.push(('-', a[i], i, j));
            i += 1;
        }
    }
    let changed: Vec<usize> = (0..ops.len()).filter(|k| ops[*k].0 != ' ').collect();
    let mut out = String::new();
    let mut k = 0;
    while k < changed.len() {
        let start = changed[k].saturating_sub(3);
        let mut end = changed[k];
        while k < changed.len() && changed[k] <= end + 7 {
            end = changed[k];
            k += 1;
        }
        let end = (end + 4).min(ops.len());
        let hunk = &ops[start..end];
        let a_len = hunk.iter().filter(|o| o.0 != '+').count();
        let b_len = hunk.iter().filter(|o| o.0 != '-').count();
        let _ = writeln!(
            out,
            "@@ -{},{a_len} +{},{b_len} @@",
            hunk[0].2 + 1,
            hunk[0].3 + 1
        );
        for (tag, line, _, _) in hunk {
            let _ = writeln!(out, "{tag}{line}");
        }
    }
    out
}
