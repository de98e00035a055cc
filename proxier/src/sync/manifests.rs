//! Reading manifests from a file or a directory (every `*.yaml` / `*.yml` in it, in name
//! order): the static source of Services, EndpointSlices and Nodes for `plan` and `sync`
//! until the API watch exists.

use std::path::{Path, PathBuf};

use crate::model::manifests::{Manifests, parse_manifests};

/// A manifest path that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read manifests {path}: {source}")]
pub struct ManifestError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Parses `path` (a file, or a directory's YAML files in name order) into one object list.
/// Undecodable documents become diagnostics, as in [`parse_manifests`].
pub fn load(path: &Path) -> Result<Manifests, ManifestError> {
    let err = |source| ManifestError {
        path: path.to_owned(),
        source,
    };
    let files = if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(err)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        files.sort();
        files
    } else {
        vec![path.to_owned()]
    };
    let mut all = Manifests::default();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|source| ManifestError {
            path: file.clone(),
            source,
        })?;
        let mut m = parse_manifests(&text);
        all.services.append(&mut m.services);
        all.endpoint_slices.append(&mut m.endpoint_slices);
        all.nodes.append(&mut m.nodes);
        all.diagnostics.append(&mut m.diagnostics);
    }
    Ok(all)
}
