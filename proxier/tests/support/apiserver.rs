//! A list/watch Kubernetes API server on loopback for the source tests.
//!
//! Speaks the real JSON wire for Services (`/api/v1/services`), EndpointSlices
//! (`/apis/discovery.k8s.io/v1/endpointslices`) and Nodes (`/api/v1/nodes`) at cluster
//! scope: lists carry `metadata.resourceVersion`; `?watch=true` answers a chunked stream of
//! `{"type":…,"object":…}` lines from the requested resourceVersion, with BOOKMARKs when
//! `allowWatchBookmarks=true`, and an `ERROR` event holding a `410 Expired` Status when that
//! version was compacted away (as kube-apiserver's watch cache does). Label selectors
//! (`key`, `!key`, `key=value`, `key!=value`) and the `metadata.name` / `metadata.namespace`
//! field selectors are honoured; an object that stops matching a watch's selector is sent
//! as `DELETED`, one that starts matching as `ADDED`, as the API server does.
//!
//! A hand-written HTTP/1.1 server (one request per connection, `Connection: close`) rather
//! than hyper's: the tests need to drop connections mid-stream and refuse them on demand,
//! which is a few lines here and awkward through a server framework.

#![allow(dead_code)] // each test binary uses its own part

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Service,
    EndpointSlice,
    Node,
}

impl Kind {
    fn from_path(path: &str) -> Option<Kind> {
        match path {
            "/api/v1/services" => Some(Kind::Service),
            "/apis/discovery.k8s.io/v1/endpointslices" => Some(Kind::EndpointSlice),
            "/api/v1/nodes" => Some(Kind::Node),
            _ => None,
        }
    }

    fn from_object(object: &Value) -> Kind {
        match object["kind"].as_str() {
            Some("Service") => Kind::Service,
            Some("EndpointSlice") => Kind::EndpointSlice,
            Some("Node") => Kind::Node,
            other => panic!("test server does not serve kind {other:?}"),
        }
    }

    fn list_kind(self) -> (&'static str, &'static str) {
        match self {
            Kind::Service => ("v1", "ServiceList"),
            Kind::EndpointSlice => ("discovery.k8s.io/v1", "EndpointSliceList"),
            Kind::Node => ("v1", "NodeList"),
        }
    }
}

type Key = (Kind, String, String);

#[derive(Debug, Clone)]
struct Entry {
    rv: u64,
    kind: Kind,
    old: Option<Value>,
    /// `None`: deleted (then `old` is the object, stamped with this rv).
    new: Option<Value>,
}

#[derive(Debug, Default)]
struct State {
    rv: u64,
    /// Watches from a resourceVersion below this get 410 Expired.
    compacted: u64,
    objects: BTreeMap<Key, Value>,
    log: Vec<Entry>,
    lists: BTreeMap<Kind, usize>,
    open_watches: usize,
    refused: usize,
    bookmarks_sent: usize,
    expired_sent: usize,
    uid: u64,
}

/// Counters the tests assert on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub service_lists: usize,
    pub slice_lists: usize,
    pub node_lists: usize,
    pub open_watches: usize,
    pub refused: usize,
    pub bookmarks_sent: usize,
    pub expired_sent: usize,
}

struct Shared {
    state: Mutex<State>,
    /// Bumped on every state change (objects, counters): what waiters wait on.
    changed: watch::Sender<u64>,
    /// Bumped when objects change: what watch streams wait on.
    objects: watch::Sender<u64>,
    /// `true`: refuse connections and drop open ones.
    down: watch::Sender<bool>,
    /// Bumped to make every open watch stream end, as an API server restart would.
    close_watches: watch::Sender<u64>,
}

pub struct ApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.shared.down.send_replace(true);
        self.task.abort();
    }
}

impl ApiServer {
    pub async fn start() -> ApiServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                rv: 100,
                ..State::default()
            }),
            changed: watch::Sender::new(0),
            objects: watch::Sender::new(0),
            down: watch::Sender::new(false),
            close_watches: watch::Sender::new(0),
        });
        let accept_shared = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                if *accept_shared.down.borrow() {
                    accept_shared.update(|s| s.refused += 1);
                    drop(stream); // as if the server were gone
                    continue;
                }
                tokio::spawn(serve(Arc::clone(&accept_shared), stream));
            }
        });
        ApiServer { addr, shared, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The real kube-rs client, pointed at this server.
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url().parse().expect("server url"));
        kube::Client::try_from(config).expect("kube client")
    }

    /// Creates or replaces an object (any of the three kinds, as `k8s-openapi` serializes
    /// it), stamping resourceVersion and uid.
    pub fn apply<T: serde::Serialize>(&self, object: &T) -> u64 {
        let mut object = serde_json::to_value(object).expect("serialize object");
        let kind = Kind::from_object(&object);
        let key = (
            kind,
            object["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            object["metadata"]["name"]
                .as_str()
                .expect("object name")
                .to_owned(),
        );
        self.shared.update_objects(|s| {
            s.rv += 1;
            let rv = s.rv;
            object["metadata"]["resourceVersion"] = json!(rv.to_string());
            let old = s.objects.get(&key).cloned();
            let uid = match &old {
                Some(old) => old["metadata"]["uid"].clone(),
                None => {
                    s.uid += 1;
                    json!(format!("00000000-0000-0000-0000-{:012}", s.uid))
                }
            };
            object["metadata"]["uid"] = uid;
            s.objects.insert(key, object.clone());
            s.log.push(Entry {
                rv,
                kind,
                old,
                new: Some(object),
            });
            rv
        })
    }

    /// Deletes an object; panics if it does not exist (a test bug).
    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) -> u64 {
        self.shared.update_objects(|s| {
            let mut old = s
                .objects
                .remove(&(kind, namespace.to_owned(), name.to_owned()))
                .expect("delete of a missing object");
            s.rv += 1;
            let rv = s.rv;
            old["metadata"]["resourceVersion"] = json!(rv.to_string());
            s.log.push(Entry {
                rv,
                kind,
                old: Some(old),
                new: None,
            });
            rv
        })
    }

    /// Forgets the change history before `rv`: a watch from an older version gets 410.
    pub fn compact_to(&self, rv: u64) {
        self.shared.update(|s| {
            s.compacted = rv;
            s.log.retain(|e| e.rv > rv);
        });
    }

    /// Forgets all history (as after an API server restart with a fresh watch cache).
    pub fn compact(&self) {
        let rv = self.shared.update(|s| s.rv);
        self.compact_to(rv);
    }

    pub fn resource_version(&self) -> u64 {
        self.shared.update(|s| s.rv)
    }

    /// Ends every open watch stream cleanly (as the server's watch timeout does).
    pub fn close_watches(&self) {
        self.shared.close_watches.send_modify(|n| *n += 1);
    }

    /// `true`: refuse new connections and drop open ones, until set back to `false`.
    pub fn set_down(&self, down: bool) {
        self.shared.down.send_replace(down);
    }

    pub fn stats(&self) -> Stats {
        self.shared.update(|s| Stats {
            service_lists: s.lists.get(&Kind::Service).copied().unwrap_or_default(),
            slice_lists: s
                .lists
                .get(&Kind::EndpointSlice)
                .copied()
                .unwrap_or_default(),
            node_lists: s.lists.get(&Kind::Node).copied().unwrap_or_default(),
            open_watches: s.open_watches,
            refused: s.refused,
            bookmarks_sent: s.bookmarks_sent,
            expired_sent: s.expired_sent,
        })
    }

    /// Waits (event-driven) until `cond` holds for the server's counters.
    pub async fn wait_stats(&self, what: &str, timeout: Duration, cond: impl Fn(&Stats) -> bool) {
        let mut rx = self.shared.changed.subscribe();
        let wait = async {
            loop {
                if cond(&self.stats()) {
                    return;
                }
                rx.changed().await.expect("server alive");
            }
        };
        if tokio::time::timeout(timeout, wait).await.is_err() {
            panic!(
                "timed out after {timeout:?} waiting for {what}; stats {:?}",
                self.stats()
            );
        }
    }
}

impl Shared {
    fn update<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let r = f(&mut self.state.lock().expect("server state"));
        self.changed.send_modify(|n| *n += 1);
        r
    }

    fn update_objects<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let r = self.update(f);
        self.objects.send_modify(|n| *n += 1);
        r
    }
}

struct Request {
    path: String,
    query: BTreeMap<String, String>,
}

async fn read_request(stream: &mut TcpStream) -> Option<Request> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() > 64 * 1024 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let target = head.lines().next()?.split(' ').nth(1)?.to_owned();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let query = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    Some(Request {
        path: path.to_owned(),
        query,
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn serve(shared: Arc<Shared>, mut stream: TcpStream) {
    let Some(request) = read_request(&mut stream).await else {
        return;
    };
    let Some(kind) = Kind::from_path(&request.path) else {
        let status = status_object(404, "NotFound", &format!("no route {}", request.path));
        let _ = respond(&mut stream, 404, "Not Found", &status).await;
        return;
    };
    let selector = Selector::parse(&request.query);
    if request
        .query
        .get("watch")
        .is_some_and(|w| w == "true" || w == "1")
    {
        watch_stream(shared, stream, kind, &request, &selector).await;
    } else {
        // Pages as a real API server does for `limit` (client-go and kube send 500): the
        // `continue` token is the offset of the next page. Consistent only while nothing is
        // written between pages, which holds for the tests that list more than a page.
        let limit = request
            .query
            .get("limit")
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|l| *l > 0)
            .unwrap_or(usize::MAX);
        let offset = request
            .query
            .get("continue")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0);
        let body = shared.update(|s| {
            *s.lists.entry(kind).or_default() += 1;
            let matching = || {
                s.objects
                    .iter()
                    .filter(|((k, _, _), o)| *k == kind && selector.matches(o))
            };
            let more = matching().count() > offset.saturating_add(limit);
            let items: Vec<Value> = matching()
                .skip(offset)
                .take(limit)
                .map(|(_, o)| {
                    // Items of a real list response carry no kind/apiVersion.
                    let mut o = o.clone();
                    if let Some(map) = o.as_object_mut() {
                        map.remove("kind");
                        map.remove("apiVersion");
                    }
                    o
                })
                .collect();
            let (api_version, list_kind) = kind.list_kind();
            let mut metadata = json!({"resourceVersion": s.rv.to_string()});
            if more {
                metadata["continue"] = json!((offset + limit).to_string());
            }
            json!({
                "apiVersion": api_version,
                "kind": list_kind,
                "metadata": metadata,
                "items": items,
            })
        });
        let _ = respond(&mut stream, 200, "OK", &body).await;
    }
}

async fn respond(
    stream: &mut TcpStream,
    code: u16,
    reason: &str,
    body: &Value,
) -> std::io::Result<()> {
    let body = body.to_string();
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

fn status_object(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

async fn write_chunk(stream: &mut TcpStream, line: &Value) -> std::io::Result<()> {
    let mut data = line.to_string();
    data.push('\n');
    let chunk = format!("{:x}\r\n{data}\r\n", data.len());
    stream.write_all(chunk.as_bytes()).await
}

struct OpenWatch<'a>(&'a Shared);

impl Drop for OpenWatch<'_> {
    fn drop(&mut self) {
        self.0.update(|s| s.open_watches -= 1);
    }
}

async fn watch_stream(
    shared: Arc<Shared>,
    mut stream: TcpStream,
    kind: Kind,
    request: &Request,
    selector: &Selector,
) {
    let bookmarks = request
        .query
        .get("allowWatchBookmarks")
        .is_some_and(|b| b == "true");
    let timeout = request
        .query
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .map_or(Duration::from_secs(1800), Duration::from_secs);
    let from: u64 = match request.query.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => 0,
        Some(rv) => rv.parse().unwrap_or(0),
    };
    let mut down = shared.down.subscribe();
    let mut close = shared.close_watches.subscribe();
    let mut changed = shared.objects.subscribe();

    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    if stream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    shared.update(|s| s.open_watches += 1);
    let _open = OpenWatch(&shared);

    // Starting point: "0"/absent means "from now, with the current objects as ADDED".
    let (mut pos, initial, expired) = shared.update(|s| {
        if from == 0 {
            let initial: Vec<Value> = s
                .objects
                .iter()
                .filter(|((k, _, _), o)| *k == kind && selector.matches(o))
                .map(|(_, o)| json!({"type": "ADDED", "object": o}))
                .collect();
            (s.rv, initial, None)
        } else if from < s.compacted {
            s.expired_sent += 1;
            let message = format!("too old resource version: {from} ({})", s.compacted);
            (
                from,
                Vec::new(),
                Some(status_object(410, "Expired", &message)),
            )
        } else {
            (from, Vec::new(), None)
        }
    });
    if let Some(status) = expired {
        let _ = write_chunk(&mut stream, &json!({"type": "ERROR", "object": status})).await;
        let _ = stream.write_all(b"0\r\n\r\n").await;
        return;
    }
    for line in initial {
        if write_chunk(&mut stream, &line).await.is_err() {
            return;
        }
    }

    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    loop {
        let lines = shared.update(|s| {
            let mut lines = Vec::new();
            // The log is in resourceVersion order: skip what this stream has sent without
            // scanning it (a long churn makes the log long).
            let start = s.log.partition_point(|e| e.rv <= pos);
            for e in s.log[start..].iter().filter(|e| e.kind == kind) {
                let was = e.old.as_ref().is_some_and(|o| selector.matches(o));
                let is = e.new.as_ref().is_some_and(|o| selector.matches(o));
                let line = match (was, is, &e.new) {
                    (false, true, Some(new)) => json!({"type": "ADDED", "object": new}),
                    (true, true, Some(new)) => json!({"type": "MODIFIED", "object": new}),
                    (true, false, Some(new)) => json!({"type": "DELETED", "object": new}),
                    (true, _, None) => json!({"type": "DELETED", "object": e.old}),
                    _ if bookmarks => {
                        s.bookmarks_sent += 1;
                        let (api_version, _) = kind.list_kind();
                        let object_kind = format!("{kind:?}");
                        json!({"type": "BOOKMARK", "object": {
                            "kind": object_kind,
                            "apiVersion": api_version,
                            "metadata": {"resourceVersion": e.rv.to_string()},
                        }})
                    }
                    _ => continue,
                };
                lines.push(line);
            }
            pos = pos.max(s.rv);
            lines
        });
        for line in lines {
            if write_chunk(&mut stream, &line).await.is_err() {
                return;
            }
        }
        tokio::select! {
            r = changed.changed() => if r.is_err() { return },
            _ = down.wait_for(|d| *d) => return, // dropped without the last chunk
            _ = close.changed() => break,
            () = &mut deadline => break,
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let _ = stream.shutdown().await;
}

/// The selector forms the proxier uses.
#[derive(Debug, Default)]
struct Selector {
    labels: Vec<(String, Op)>,
    fields: Vec<(String, String)>,
}

#[derive(Debug)]
enum Op {
    Exists,
    NotExists,
    Equals(String),
    NotEquals(String),
}

impl Selector {
    fn parse(query: &BTreeMap<String, String>) -> Selector {
        let mut selector = Selector::default();
        for term in query
            .get("labelSelector")
            .map(String::as_str)
            .unwrap_or("")
            .split(',')
        {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            let parsed = if let Some(key) = term.strip_prefix('!') {
                (key.to_owned(), Op::NotExists)
            } else if let Some((k, v)) = term.split_once("!=") {
                (k.to_owned(), Op::NotEquals(v.to_owned()))
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (k.to_owned(), Op::Equals(v.to_owned()))
            } else {
                (term.to_owned(), Op::Exists)
            };
            selector.labels.push(parsed);
        }
        for term in query
            .get("fieldSelector")
            .map(String::as_str)
            .unwrap_or("")
            .split(',')
        {
            if let Some((k, v)) = term.split_once('=') {
                selector.fields.push((k.to_owned(), v.to_owned()));
            }
        }
        selector
    }

    fn matches(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        let label_ok = self.labels.iter().all(|(key, op)| {
            let value = labels.get(key).and_then(Value::as_str);
            match op {
                Op::Exists => value.is_some(),
                Op::NotExists => value.is_none(),
                Op::Equals(v) => value == Some(v.as_str()),
                Op::NotEquals(v) => value != Some(v.as_str()),
            }
        });
        let field_ok = self.fields.iter().all(|(field, want)| {
            let have = match field.as_str() {
                "metadata.name" => object["metadata"]["name"].as_str(),
                "metadata.namespace" => object["metadata"]["namespace"].as_str(),
                _ => None,
            };
            have.unwrap_or_default() == want
        });
        label_ok && field_ok
    }
}
