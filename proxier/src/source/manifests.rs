//! The manifests source: Services, EndpointSlices and our Node from a YAML file or a
//! directory of them (`*.yaml`, `*.yml`, not recursive), re-read when they change.
//!
//! Owns change detection (a poll of each file's size and modification time; no watcher
//! dependency, and a poll also sees files on network or bind-mounted filesystems where
//! inotify does not) and the per-file bookkeeping: every object remembers its file, so a
//! removed file removes exactly its objects. Each document is parsed on its own, so a YAML
//! syntax error costs only that document, not the rest of the file. Problems are logged
//! with the file and the 0-based document index; they never stop the source.
//!
//! Ready right after the first read: there is nothing more to wait for.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Node;

use super::{ObjectKey, Objects, Snapshot, Source, SourceError, SourceOptions};
use crate::model::{Diagnostic, Manifests, parse_manifests};

/// How often the files are checked for changes.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Reads `path` once (an error if it cannot be read at all), then polls it every
/// `poll_interval` in a background task.
pub fn start(
    path: PathBuf,
    options: &SourceOptions,
    poll_interval: Duration,
) -> Result<Source, SourceError> {
    let objects = Objects::new();
    let mut reader = Reader {
        path,
        node_name: options.node_name.clone(),
        files: BTreeMap::new(),
    };
    let files = reader.list().map_err(|source| SourceError::Manifests {
        path: reader.path.clone(),
        source,
    })?;
    reader.refresh(files);
    objects.replace_all(reader.snapshot());
    objects.mark_services_listed();
    objects.mark_slices_listed();

    let store = objects.clone();
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first tick is immediate; the first read is done
        loop {
            tick.tick().await;
            match reader.list() {
                Ok(files) => {
                    if reader.refresh(files) {
                        store.replace_all(reader.snapshot());
                    }
                }
                Err(error) => tracing::warn!(
                    path = %reader.path.display(),
                    %error,
                    "cannot list manifests; keeping the last objects read"
                ),
            }
        }
    });
    Ok(Source::new(objects, vec![task]))
}

/// What a file looked like when last read.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
}

#[derive(Debug)]
struct FileState {
    stamp: Stamp,
    objects: Manifests,
}

#[derive(Debug)]
struct Reader {
    path: PathBuf,
    node_name: String,
    files: BTreeMap<PathBuf, FileState>,
}

impl Reader {
    /// The manifest files now present, with their stamps.
    fn list(&self) -> std::io::Result<Vec<(PathBuf, Stamp)>> {
        let meta = std::fs::metadata(&self.path)?;
        let paths = if meta.is_dir() {
            let mut paths = Vec::new();
            for entry in std::fs::read_dir(&self.path)? {
                let path = entry?.path();
                let yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
                if yaml && path.is_file() {
                    paths.push(path);
                }
            }
            paths
        } else {
            vec![self.path.clone()]
        };
        let mut files = Vec::new();
        for path in paths {
            // A file removed between the listing and here is simply gone.
            if let Ok(meta) = std::fs::metadata(&path) {
                let stamp = Stamp {
                    len: meta.len(),
                    modified: meta.modified().ok(),
                };
                files.push((path, stamp));
            }
        }
        Ok(files)
    }

    /// Re-reads new and changed files, forgets removed ones. Whether anything changed.
    fn refresh(&mut self, files: Vec<(PathBuf, Stamp)>) -> bool {
        let mut changed = false;
        let present: BTreeMap<PathBuf, Stamp> = files.into_iter().collect();
        self.files.retain(|path, _| {
            let keep = present.contains_key(path);
            if !keep {
                tracing::info!(file = %path.display(), "manifest file removed");
                changed = true;
            }
            keep
        });
        for (path, stamp) in present {
            if self.files.get(&path).is_some_and(|f| f.stamp == stamp) {
                continue;
            }
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    let objects = parse_documents(&path, &text);
                    tracing::debug!(
                        file = %path.display(),
                        services = objects.services.len(),
                        endpoint_slices = objects.endpoint_slices.len(),
                        nodes = objects.nodes.len(),
                        "read manifest file"
                    );
                    self.files.insert(path, FileState { stamp, objects });
                    changed = true;
                }
                // Keep what the file held before: it may be mid-write or briefly unreadable.
                Err(error) => tracing::warn!(
                    file = %path.display(),
                    %error,
                    "cannot read manifest file; keeping its last objects"
                ),
            }
        }
        changed
    }

    /// Every file's objects, in file name order; a later duplicate wins (and is logged).
    fn snapshot(&self) -> Snapshot {
        let mut snapshot = Snapshot::default();
        let mut origin: BTreeMap<(&'static str, ObjectKey), PathBuf> = BTreeMap::new();
        let mut note = |kind: &'static str, key: &ObjectKey, file: &Path| {
            if let Some(first) = origin.insert((kind, key.clone()), file.to_owned()) {
                tracing::warn!(
                    kind,
                    namespace = %key.namespace,
                    name = %key.name,
                    first = %first.display(),
                    file = %file.display(),
                    "object defined twice; the later file wins"
                );
            }
        };
        let mut node: Option<Node> = None;
        for (path, file) in &self.files {
            for service in &file.objects.services {
                if let Some(key) = ObjectKey::of(&service.metadata) {
                    note("Service", &key, path);
                    snapshot.services.insert(key, service.clone());
                }
            }
            for slice in &file.objects.endpoint_slices {
                if let Some(key) = ObjectKey::of(&slice.metadata) {
                    note("EndpointSlice", &key, path);
                    snapshot.endpoint_slices.insert(key, slice.clone());
                }
            }
            for n in &file.objects.nodes {
                if n.metadata.name.as_deref() == Some(self.node_name.as_str()) {
                    node = Some(n.clone());
                }
            }
        }
        snapshot.node = node;
        snapshot
    }
}

/// Parses each `---`-separated document of `text` on its own and logs its problems.
fn parse_documents(path: &Path, text: &str) -> Manifests {
    let mut all = Manifests::default();
    for (index, document) in split_documents(text) {
        // serde_yaml's multi-document iterator repeats a syntax error forever instead of
        // ending, which `parse_manifests` would loop on; so each document is checked as
        // YAML on its own first and only valid ones are handed over.
        let mut parsed = match serde_yaml::from_str::<serde_yaml::Value>(document) {
            Ok(_) => parse_manifests(document),
            Err(error) => Manifests {
                diagnostics: vec![Diagnostic::UndecodableDocument {
                    document: index,
                    error: error.to_string(),
                }],
                ..Manifests::default()
            },
        };
        for diagnostic in &parsed.diagnostics {
            // `parse_manifests` saw a single document, always index 0; report the real one.
            let message = match diagnostic {
                Diagnostic::UnknownKind {
                    api_version, kind, ..
                } => {
                    format!("skipped: not a Service, EndpointSlice or Node ({api_version} {kind})")
                }
                Diagnostic::UndecodableDocument { error, .. } => format!("undecodable: {error}"),
                other => other.to_string(),
            };
            tracing::warn!(file = %path.display(), document = index, "{message}");
        }
        all.services.append(&mut parsed.services);
        all.endpoint_slices.append(&mut parsed.endpoint_slices);
        all.nodes.append(&mut parsed.nodes);
        all.diagnostics
            .extend(parsed.diagnostics.into_iter().map(|d| match d {
                Diagnostic::UnknownKind {
                    api_version, kind, ..
                } => Diagnostic::UnknownKind {
                    document: index,
                    api_version,
                    kind,
                },
                Diagnostic::UndecodableDocument { error, .. } => Diagnostic::UndecodableDocument {
                    document: index,
                    error,
                },
                other => other,
            }));
    }
    all
}

/// Splits a YAML stream at its `---` document markers, numbering documents as a YAML
/// parser does: text before the first marker is a document only if it holds more than
/// blank lines and comments. A `---` at column 0 always starts a document in YAML (even
/// inside a block scalar), so a line-based split is exact.
fn split_documents(text: &str) -> Vec<(usize, &str)> {
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let content = line.trim_end_matches(['\n', '\r']);
        let is_marker =
            content == "---" || content.starts_with("--- ") || content.starts_with("---\t");
        if is_marker {
            chunks.push(&text[start..offset]);
            // Content after `--- ` on the marker line belongs to the new document.
            start = offset + 3;
        }
        offset += line.len();
    }
    chunks.push(&text[start..]);

    let mut documents = Vec::new();
    let mut index = 0;
    for (i, chunk) in chunks.into_iter().enumerate() {
        let only_comments = chunk
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'));
        if i == 0 && only_comments {
            continue;
        }
        if only_comments {
            // An empty document: numbered, but nothing to parse.
            index += 1;
            continue;
        }
        documents.push((index, chunk));
        index += 1;
    }
    documents
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_a_yaml_parser_numbers_documents() {
        let docs = split_documents("# c\n---\na: 1\n---\nb: 2\n--- {c: 3}\n");
        let texts: Vec<_> = docs.iter().map(|(i, t)| (*i, t.trim())).collect();
        assert_eq!(texts, [(0, "a: 1"), (1, "b: 2"), (2, "{c: 3}")]);
        let docs = split_documents("a: 1\n---\n---\nb: 2\n");
        let texts: Vec<_> = docs.iter().map(|(i, t)| (*i, t.trim())).collect();
        assert_eq!(texts, [(0, "a: 1"), (2, "b: 2")]);
    }

    #[test]
    fn a_syntax_error_costs_only_its_document() {
        let text = "\
apiVersion: v1
kind: Service
metadata: {name: a, namespace: ns}
---
apiVersion: v1
kind: Service
metadata: {name: [broken
---
apiVersion: v1
kind: Service
metadata: {name: c, namespace: ns}
";
        let m = parse_documents(Path::new("x.yaml"), text);
        assert_eq!(m.services.len(), 2);
        assert!(matches!(
            m.diagnostics.as_slice(),
            [Diagnostic::UndecodableDocument { document: 1, .. }]
        ));
    }
}
