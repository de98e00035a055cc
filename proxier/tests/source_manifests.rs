//! The manifests source on a real directory: ready at once, edits, removals, broken
//! documents (logged with file and document index, the rest kept).

// Test helpers outside #[test] fns: a panic there is a test failure, which is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipvs_proxier::source::{self, ObjectKey, Objects, Snapshot, SourceOptions};

const TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("source-manifests-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn service(name: &str, ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n\
         spec: {{clusterIP: {ip}, ports: [{{port: 80}}]}}\n"
    )
}

fn slice(name: &str, service: &str) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, \
         namespace: default, labels: {{kubernetes.io/service-name: {service}}}}}\n\
         addressType: IPv4\nendpoints: [{{addresses: [10.0.0.1]}}]\n"
    )
}

fn node(name: &str) -> String {
    format!("apiVersion: v1\nkind: Node\nmetadata: {{name: {name}}}\n")
}

fn options() -> SourceOptions {
    SourceOptions {
        node_name: "node-a".to_owned(),
        service_proxy_name: None,
    }
}

fn names(s: &Snapshot) -> (Vec<String>, Vec<String>) {
    (
        s.services.keys().map(|k| k.name.clone()).collect(),
        s.endpoint_slices.keys().map(|k| k.name.clone()).collect(),
    )
}

fn key(name: &str) -> ObjectKey {
    ObjectKey {
        namespace: "default".to_owned(),
        name: name.to_owned(),
    }
}

async fn wait_for(objects: &Objects, what: &str, cond: impl Fn(&Snapshot) -> bool) {
    let mut rx = objects.subscribe();
    let wait = async {
        loop {
            if cond(&objects.snapshot()) {
                return;
            }
            rx.changed().await.expect("store alive");
        }
    };
    if tokio::time::timeout(TIMEOUT, wait).await.is_err() {
        panic!(
            "timed out waiting for {what}; snapshot {:?}",
            names(&objects.snapshot())
        );
    }
}

/// Log lines, captured for the current thread (the tests run on a current-thread runtime,
/// so the polling task logs here too).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("logs").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let logs = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || logs.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        tracing::subscriber::set_default(subscriber)
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("logs")).into_owned()
    }
}

#[tokio::test]
async fn directory_edits_and_removals_are_followed() {
    let dir = scratch("follow");
    std::fs::write(
        dir.join("a.yaml"),
        service("web", "10.96.0.10") + "---\n" + &slice("web-1", "web"),
    )
    .expect("write a");
    std::fs::write(
        dir.join("b.yml"),
        service("db", "10.96.0.11") + "---\n" + &node("node-a") + "---\n" + &node("node-b"),
    )
    .expect("write b");
    std::fs::write(dir.join("notes.txt"), "not a manifest").expect("write txt");

    let src = source::manifests::start(dir.clone(), &options(), POLL).expect("start");
    let objects = src.objects().clone();
    assert!(objects.is_ready(), "ready right after the first read");
    let snap = objects.snapshot();
    assert_eq!(
        names(&snap),
        (
            vec!["db".to_owned(), "web".to_owned()],
            vec!["web-1".to_owned()]
        )
    );
    assert_eq!(
        snap.node.as_ref().and_then(|n| n.metadata.name.as_deref()),
        Some("node-a")
    );
    let _ = objects.take();

    // Edit one file: its object changes, the other file's are untouched.
    std::fs::write(
        dir.join("a.yaml"),
        service("web", "10.96.0.100") + "---\n" + &slice("web-1", "web"),
    )
    .expect("edit a");
    wait_for(&objects, "web's new clusterIP", |s| {
        s.services
            .get(&key("web"))
            .and_then(|s| s.spec.as_ref()?.cluster_ip.clone())
            .as_deref()
            == Some("10.96.0.100")
    })
    .await;
    let changed: Vec<String> = objects
        .take()
        .changes
        .services
        .iter()
        .map(|s| s.name.clone())
        .collect();
    assert_eq!(changed, ["web"]);

    // A new file adds its objects; removing a file removes exactly its objects.
    std::fs::write(dir.join("c.yaml"), service("cache", "10.96.0.12")).expect("write c");
    wait_for(&objects, "cache added", |s| {
        s.services.contains_key(&key("cache"))
    })
    .await;
    std::fs::remove_file(dir.join("b.yml")).expect("remove b");
    wait_for(&objects, "db and node gone", |s| {
        !s.services.contains_key(&key("db")) && s.node.is_none()
    })
    .await;
    assert_eq!(
        names(&objects.snapshot()),
        (
            vec!["cache".to_owned(), "web".to_owned()],
            vec!["web-1".to_owned()]
        )
    );
}

#[tokio::test]
async fn broken_documents_are_reported_and_the_rest_kept() {
    let logs = Logs::default();
    let _guard = logs.install();
    let dir = scratch("broken");
    std::fs::write(dir.join("a.yaml"), service("web", "10.96.0.10")).expect("write a");
    std::fs::write(dir.join("b.yaml"), service("db", "10.96.0.11")).expect("write b");
    let src = source::manifests::start(dir.clone(), &options(), POLL).expect("start");
    let objects = src.objects().clone();

    // Document 1 of b.yaml has a YAML syntax error, document 2 is of a foreign kind;
    // documents 0 and 3 still count.
    let broken = service("db", "10.96.0.11")
        + "---\napiVersion: v1\nkind: Service\nmetadata: {name: [oops\n"
        + "---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n"
        + "---\n"
        + &service("cache", "10.96.0.12");
    std::fs::write(dir.join("b.yaml"), broken).expect("break b");
    wait_for(&objects, "cache after the broken document", |s| {
        s.services.contains_key(&key("cache"))
    })
    .await;
    assert_eq!(
        names(&objects.snapshot()).0,
        ["cache".to_owned(), "db".to_owned(), "web".to_owned()]
    );
    let text = logs.text();
    let b = dir.join("b.yaml").display().to_string();
    let line = |doc: &str| {
        text.lines()
            .find(|l| l.contains(&b) && l.contains(&format!("document={doc}")))
            .map(str::to_owned)
    };
    let syntax = line("1").unwrap_or_else(|| panic!("no diagnostic for document 1 in:\n{text}"));
    assert!(syntax.contains("undecodable"), "{syntax}");
    let foreign = line("2").unwrap_or_else(|| panic!("no diagnostic for document 2 in:\n{text}"));
    assert!(foreign.contains("Deployment"), "{foreign}");
    assert!(
        !text.contains("a.yaml"),
        "a.yaml had nothing to report:\n{text}"
    );
}

#[tokio::test]
async fn a_single_file_source_and_a_missing_path() {
    let dir = scratch("single");
    let file = dir.join("all.yaml");
    std::fs::write(&file, service("web", "10.96.0.10")).expect("write");
    let src = source::manifests::start(file.clone(), &options(), POLL).expect("start");
    assert_eq!(names(&src.objects().snapshot()).0, ["web".to_owned()]);

    let missing = source::manifests::start(dir.join("nope"), &options(), POLL);
    assert!(matches!(
        missing,
        Err(source::SourceError::Manifests { .. })
    ));
}
