//! iptables through `iptables-save` / `iptables-restore`: one save and one restore per family
//! and sync, whatever the number of rules.
//!
//! [`Iptables::apply`] takes the planner's `iptables-restore` input (chain declarations and
//! rules of kube-proxy's chains in `*nat` and `*filter`), reads the current state once with
//! `iptables-save`, adds the missing jump rules from the built-in chains (kube-proxy's
//! `iptablesJumpChain`, §2.2 of the reference) as `-I CHAIN 1 …` lines inside the same input,
//! and applies everything with one `iptables-restore --noflush --counters`. Upstream runs
//! `iptables -C` / `-I` once per jump rule per sync (#121933: ~32 % of sync CPU).
//!
//! The backend is the one `iptables` points to (`iptables --version` prints `(nf_tables)` or
//! `(legacy)`), unless forced.

use std::fmt;
use std::io::Write as _;
use std::process::{Command, Stdio};

use netlink::AddressFamily;

/// A jump rule from a built-in chain into one of kube-proxy's chains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JumpRule {
    pub table: &'static str,
    pub chain: &'static str,
    pub comment: &'static str,
    pub target: &'static str,
}

/// kube-proxy's jump rules, in the order it ensures them. Each missing one is inserted at
/// position 1, so on a fresh node the last one listed for a chain ends up first, as upstream.
pub const JUMP_RULES: [JumpRule; 9] = [
    jump(
        "nat",
        "OUTPUT",
        "kubernetes service portals",
        "KUBE-SERVICES",
    ),
    jump(
        "nat",
        "PREROUTING",
        "kubernetes service portals",
        "KUBE-SERVICES",
    ),
    jump(
        "nat",
        "POSTROUTING",
        "kubernetes postrouting rules",
        "KUBE-POSTROUTING",
    ),
    jump(
        "filter",
        "FORWARD",
        "kubernetes forwarding rules",
        "KUBE-FORWARD",
    ),
    jump(
        "filter",
        "INPUT",
        "kubernetes health check rules",
        "KUBE-NODE-PORT",
    ),
    jump(
        "filter",
        "INPUT",
        "kube-proxy firewall rules",
        "KUBE-PROXY-FIREWALL",
    ),
    jump(
        "filter",
        "FORWARD",
        "kube-proxy firewall rules",
        "KUBE-PROXY-FIREWALL",
    ),
    jump(
        "filter",
        "INPUT",
        "kubernetes ipvs access filter",
        "KUBE-IPVS-FILTER",
    ),
    jump(
        "filter",
        "OUTPUT",
        "kubernetes ipvs access filter",
        "KUBE-IPVS-OUT-FILTER",
    ),
];

const fn jump(
    table: &'static str,
    chain: &'static str,
    comment: &'static str,
    target: &'static str,
) -> JumpRule {
    JumpRule {
        table,
        chain,
        comment,
        target,
    }
}

impl JumpRule {
    /// The rule spec after the chain name, as `iptables-save` prints it.
    pub fn spec(&self) -> String {
        format!(
            "-m comment --comment \"{}\" -j {}",
            self.comment, self.target
        )
    }
}

/// Which iptables implementation to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// Whatever `iptables` / `ip6tables` is on this host.
    #[default]
    Auto,
    Legacy,
    Nft,
}

/// The implementation in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Legacy,
    Nft,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Legacy => "legacy",
            Self::Nft => "nf_tables",
        })
    }
}

/// An iptables failure; each names the program, and for a restore the table, chain and line
/// that failed when the tool said which.
#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} failed ({status}): {stderr}")]
    Failed {
        program: String,
        status: String,
        stderr: String,
    },
    #[error(
        "{} failed in table {}, chain {}, input line {} `{}`: {}",
        .0.program, .0.table, .0.chain, .0.line, .0.text, .0.stderr
    )]
    RestoreLine(Box<RestoreFailure>),
    #[error("cannot tell the iptables version from `{0}`")]
    Version(String),
}

/// Where a restore failed, from the tool's own report of the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreFailure {
    pub program: String,
    pub table: String,
    pub chain: String,
    /// 1-based line of the restore input.
    pub line: usize,
    pub text: String,
    pub stderr: String,
}

/// One family's iptables tools.
#[derive(Debug, Clone)]
pub struct Iptables {
    family: AddressFamily,
    backend: Backend,
    /// e.g. `iptables`, `iptables-legacy`, `ip6tables-nft`.
    main: String,
    version: (u32, u32, u32),
}

/// What [`Iptables::apply`] did besides the restore.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Jump rules that were missing and were inserted.
    pub jumps_added: Vec<JumpRule>,
    /// Extra copies of jump rules that were deleted.
    pub duplicates_removed: usize,
}

/// What [`Iptables::sync`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncOutcome {
    /// Whether an `iptables-restore` ran (false: everything was already so).
    pub restored: bool,
    pub report: ApplyReport,
}

/// Output of a finished command.
struct Output {
    stdout: String,
}

fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<Output, IptablesError> {
    let spawn = |source| IptablesError::Spawn {
        program: program.to_owned(),
        source,
    };
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
        .map_err(spawn)?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes()).map_err(spawn)?;
    }
    let out = child.wait_with_output().map_err(spawn)?;
    if !out.status.success() {
        return Err(IptablesError::Failed {
            program: program.to_owned(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(Output {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
    })
}

/// Parses `iptables v1.8.9 (nf_tables)`.
fn parse_version(text: &str) -> Option<((u32, u32, u32), Option<Backend>)> {
    let v = text.split_whitespace().find_map(|w| w.strip_prefix('v'))?;
    let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
    let version = (
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
        parts.next().flatten().unwrap_or(0),
    );
    let backend = if text.contains("(nf_tables)") {
        Some(Backend::Nft)
    } else if text.contains("(legacy)") {
        Some(Backend::Legacy)
    } else {
        None
    };
    Some((version, backend))
}

impl Iptables {
    /// Finds the tools for `family` and the backend; runs `<tool> --version` once.
    pub fn detect(family: AddressFamily, choice: BackendChoice) -> Result<Self, IptablesError> {
        let base = match family {
            AddressFamily::Inet => "iptables",
            AddressFamily::Inet6 => "ip6tables",
        };
        let main = match choice {
            BackendChoice::Auto => base.to_owned(),
            BackendChoice::Legacy => format!("{base}-legacy"),
            BackendChoice::Nft => format!("{base}-nft"),
        };
        let out = run(&main, &["--version"], None)?;
        let (version, seen) = parse_version(&out.stdout)
            .ok_or_else(|| IptablesError::Version(out.stdout.trim().to_owned()))?;
        // iptables before 1.8 has no nft variant and does not say "(legacy)".
        let backend = match choice {
            BackendChoice::Legacy => Backend::Legacy,
            BackendChoice::Nft => Backend::Nft,
            BackendChoice::Auto => seen.unwrap_or(Backend::Legacy),
        };
        Ok(Self {
            family,
            backend,
            main,
            version,
        })
    }

    pub const fn family(&self) -> AddressFamily {
        self.family
    }

    pub const fn backend(&self) -> Backend {
        self.backend
    }

    /// Whether `MASQUERADE --random-fully` is available: iptables >= 1.6.2, the same test as
    /// kube-proxy's `utiliptables` (`RandomFullyMinVersion`). A fact the planner consumes.
    pub fn has_random_fully(&self) -> bool {
        self.version >= (1, 6, 2)
    }

    fn tool(&self, suffix: &str) -> String {
        // `iptables-legacy` -> `iptables-legacy-save`; `iptables` -> `iptables-save`.
        format!("{}-{suffix}", self.main)
    }

    /// `iptables-save` of every table (or one).
    pub fn save(&self, table: Option<&str>) -> Result<String, IptablesError> {
        let program = self.tool("save");
        let args: Vec<&str> = table.map_or_else(Vec::new, |t| vec!["-t", t]);
        Ok(run(&program, &args, None)?.stdout)
    }

    /// One `iptables-restore --noflush --counters` of `input`. Chains declared in the input
    /// are flushed and rewritten; every other chain is left alone.
    pub fn restore(&self, input: &str) -> Result<(), IptablesError> {
        let program = self.tool("restore");
        // `-w`: wait for the xtables lock (legacy) rather than fail; nft ignores it.
        match run(
            &program,
            &["-w", "5", "--noflush", "--counters"],
            Some(input),
        ) {
            Ok(_) => Ok(()),
            Err(IptablesError::Failed { stderr, status, .. }) => Err(locate_restore_error(
                &program, input, &stderr,
            )
            .unwrap_or(IptablesError::Failed {
                program,
                status,
                stderr,
            })),
            Err(e) => Err(e),
        }
    }

    /// Like [`Iptables::apply`], but skips the restore when the chains of `rules` already
    /// hold exactly those rules (compared canonically, see [`super::canon`]) and no jump rule
    /// is missing or duplicated: one `iptables-save`, and a restore only for a change.
    pub fn sync(&self, rules: &str) -> Result<SyncOutcome, IptablesError> {
        let saved = self.save(None)?;
        let (input, report) = with_jump_rules(rules, &saved);
        if report == ApplyReport::default()
            && super::canon::chains_up_to_date(self.family, rules, &saved)
        {
            return Ok(SyncOutcome {
                restored: false,
                report,
            });
        }
        self.restore(&input)?;
        Ok(SyncOutcome {
            restored: true,
            report,
        })
    }

    /// Applies the planner's restore input plus whatever jump rules are missing, with one
    /// `iptables-save` and one `iptables-restore`.
    pub fn apply(&self, rules: &str) -> Result<ApplyReport, IptablesError> {
        let saved = self.save(None)?;
        let (input, report) = with_jump_rules(rules, &saved);
        self.restore(&input)?;
        Ok(report)
    }
}

/// Turns a restore error (`… line N failed` / `Error occurred at line: N`) into one that names
/// the table, chain and text of that input line.
fn locate_restore_error(program: &str, input: &str, stderr: &str) -> Option<IptablesError> {
    let line = stderr.lines().find_map(|l| {
        let rest = l
            .split_once("Error occurred at line: ")
            .map(|(_, r)| r)
            .or_else(|| l.split_once(": line ").map(|(_, r)| r))?;
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse::<usize>()
            .ok()
    })?;
    let lines: Vec<&str> = input.lines().collect();
    let text = (*lines.get(line.checked_sub(1)?)?).to_owned();
    let table = lines[..line]
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix('*'))
        .unwrap_or("?")
        .to_owned();
    let chain = text
        .split_whitespace()
        .nth(1)
        .filter(|_| text.starts_with("-A ") || text.starts_with("-I ") || text.starts_with("-D "))
        .or_else(|| {
            text.strip_prefix(':')
                .and_then(|c| c.split_whitespace().next())
        })
        .unwrap_or("?")
        .to_owned();
    Some(IptablesError::RestoreLine(Box::new(RestoreFailure {
        program: program.to_owned(),
        table,
        chain,
        line,
        text,
        stderr: stderr.trim().to_owned(),
    })))
}

/// The chains and rules of each table in `iptables-save` output.
fn tables_of(save: &str) -> Vec<(String, Vec<String>)> {
    let mut tables: Vec<(String, Vec<String>)> = Vec::new();
    for line in save.lines() {
        if let Some(name) = line.strip_prefix('*') {
            tables.push((name.to_owned(), Vec::new()));
        } else if let Some((_, lines)) = tables.last_mut()
            && (line.starts_with(':') || line.starts_with("-A "))
        {
            lines.push(line.to_owned());
        }
    }
    tables
}

/// Adds `-I` lines for missing jump rules (and `-D` lines for duplicates) to the restore input,
/// in the section of their table (creating the section when the input has none), and declares
/// a target chain the input does not declare if it does not exist yet.
pub fn with_jump_rules(rules: &str, saved: &str) -> (String, ApplyReport) {
    let current = tables_of(saved);
    let declared = tables_of(rules);
    let mut report = ApplyReport::default();
    let mut extra: Vec<(&'static str, Vec<String>)> = Vec::new();
    for rule in JUMP_RULES {
        let existing: &[String] = current
            .iter()
            .find(|(t, _)| t == rule.table)
            .map_or(&[], |(_, l)| l.as_slice());
        let wanted = format!("-A {} {}", rule.chain, rule.spec());
        let copies = existing.iter().filter(|l| **l == wanted).count();
        let chain_known = |lines: &[String]| {
            let decl = format!(":{} ", rule.target);
            lines.iter().any(|l| l.starts_with(&decl))
        };
        let in_input = declared
            .iter()
            .any(|(t, l)| t == rule.table && chain_known(l));
        let mut lines = Vec::new();
        if !in_input && !chain_known(existing) {
            lines.push(format!(":{} - [0:0]", rule.target));
        }
        if copies == 0 {
            lines.push(format!("-I {} 1 {}", rule.chain, rule.spec()));
            report.jumps_added.push(rule);
        }
        for _ in 1..copies {
            lines.push(format!("-D {} {}", rule.chain, rule.spec()));
            report.duplicates_removed += 1;
        }
        if lines.is_empty() {
            continue;
        }
        match extra.iter_mut().find(|(t, _)| *t == rule.table) {
            Some((_, l)) => l.extend(lines),
            None => extra.push((rule.table, lines)),
        }
    }

    let mut out = String::with_capacity(rules.len() + 1024);
    let mut table: Option<String> = None;
    for line in rules.lines() {
        if let Some(name) = line.strip_prefix('*') {
            table = Some(name.trim().to_owned());
        }
        // Our lines go just before the section's COMMIT, after the planner's declarations.
        if line.trim() == "COMMIT"
            && let Some(name) = table.take()
            && let Some(i) = extra.iter().position(|(t, _)| *t == name)
        {
            let (_, lines) = extra.remove(i);
            push_section_lines(&mut out, lines);
        }
        out.push_str(line);
        out.push('\n');
    }
    for (name, lines) in extra {
        out.push_str(&format!("*{name}\n"));
        push_section_lines(&mut out, lines);
        out.push_str("COMMIT\n");
    }
    (out, report)
}

/// Appends lines to a section, chain declarations first (they must precede their use).
fn push_section_lines(out: &mut String, lines: Vec<String>) {
    let (decls, ops): (Vec<_>, Vec<_>) = lines.into_iter().partition(|l| l.starts_with(':'));
    for l in decls.iter().chain(ops.iter()) {
        out.push_str(l);
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    #[test]
    fn version_and_backend_are_parsed() {
        assert_eq!(
            parse_version("iptables v1.8.9 (nf_tables)\n"),
            Some(((1, 8, 9), Some(Backend::Nft)))
        );
        assert_eq!(
            parse_version("ip6tables v1.8.7 (legacy)"),
            Some(((1, 8, 7), Some(Backend::Legacy)))
        );
        assert_eq!(parse_version("iptables v1.6.1"), Some(((1, 6, 1), None)));
        assert_eq!(parse_version("garbage"), None);
    }

    const PLANNED: &str = "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-POSTROUTING - [0:0]\n\
        -A KUBE-SERVICES -s 127.0.0.0/8 -j RETURN\nCOMMIT\n\
        *filter\n:KUBE-FORWARD - [0:0]\n:KUBE-NODE-PORT - [0:0]\n:KUBE-PROXY-FIREWALL - [0:0]\n\
        :KUBE-IPVS-FILTER - [0:0]\n:KUBE-IPVS-OUT-FILTER - [0:0]\nCOMMIT\n";

    #[test]
    fn missing_jumps_are_inserted_in_their_table_section() {
        let (input, report) = with_jump_rules(PLANNED, "*nat\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n");
        assert_eq!(report.jumps_added.len(), 9);
        assert_eq!(
            input,
            "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-POSTROUTING - [0:0]\n\
             -A KUBE-SERVICES -s 127.0.0.0/8 -j RETURN\n\
             -I OUTPUT 1 -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
             -I PREROUTING 1 -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
             -I POSTROUTING 1 -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
             COMMIT\n\
             *filter\n:KUBE-FORWARD - [0:0]\n:KUBE-NODE-PORT - [0:0]\n:KUBE-PROXY-FIREWALL - [0:0]\n\
             :KUBE-IPVS-FILTER - [0:0]\n:KUBE-IPVS-OUT-FILTER - [0:0]\n\
             -I FORWARD 1 -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n\
             -I INPUT 1 -m comment --comment \"kubernetes health check rules\" -j KUBE-NODE-PORT\n\
             -I INPUT 1 -m comment --comment \"kube-proxy firewall rules\" -j KUBE-PROXY-FIREWALL\n\
             -I FORWARD 1 -m comment --comment \"kube-proxy firewall rules\" -j KUBE-PROXY-FIREWALL\n\
             -I INPUT 1 -m comment --comment \"kubernetes ipvs access filter\" -j KUBE-IPVS-FILTER\n\
             -I OUTPUT 1 -m comment --comment \"kubernetes ipvs access filter\" -j KUBE-IPVS-OUT-FILTER\n\
             COMMIT\n"
        );
    }

    #[test]
    fn present_jumps_are_kept_duplicates_removed_and_undeclared_targets_declared() {
        let saved = "*nat\n:OUTPUT ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n:KUBE-POSTROUTING - [0:0]\n\
            -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
            -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
            -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
            -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
            COMMIT\n";
        // Only the nat section is planned here: the filter jumps get their own section and
        // their target chains (not in the input, not in the kernel) are declared.
        let planned = "*nat\n:KUBE-SERVICES - [0:0]\nCOMMIT\n";
        let (input, report) = with_jump_rules(planned, saved);
        assert_eq!(report.jumps_added.len(), 6);
        assert_eq!(report.duplicates_removed, 1);
        assert!(input.starts_with(
            "*nat\n:KUBE-SERVICES - [0:0]\n\
             -D PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
             COMMIT\n*filter\n:KUBE-FORWARD - [0:0]\n"
        ));
        assert!(input.contains(":KUBE-IPVS-OUT-FILTER - [0:0]\n"));
        assert!(input.ends_with("-j KUBE-IPVS-OUT-FILTER\nCOMMIT\n"));
    }

    #[test]
    fn a_restore_error_names_table_chain_and_line() {
        let input = "*nat\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -m nosuch -j RETURN\nCOMMIT\n";
        let err = locate_restore_error(
            "iptables-restore",
            input,
            "iptables-restore v1.8.9 (nf_tables): Couldn't load match `nosuch'\n\
             Error occurred at line: 3\n",
        );
        let Some(IptablesError::RestoreLine(f)) = err else {
            panic!("not located: {err:?}");
        };
        assert_eq!(
            (f.table.as_str(), f.chain.as_str(), f.line),
            ("nat", "KUBE-SERVICES", 3)
        );
        let legacy = locate_restore_error(
            "iptables-legacy-restore",
            input,
            "iptables-legacy-restore: line 2 failed\n",
        );
        assert!(
            matches!(&legacy, Some(IptablesError::RestoreLine(f)) if f.line == 2 && f.chain == "KUBE-SERVICES"),
            "{legacy:?}"
        );
    }
}
