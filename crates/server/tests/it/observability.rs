//! What operators read: the `/metrics` exposition (checked by a strict parser), the Grafana
//! dashboard in `deploy/` (every metric it queries exists), and the binary's start-up and
//! shutdown as its logs show them (open-files limit raised, per-connection fields at info,
//! a drain on SIGTERM).

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bson::doc;
use livequery_server::capacity::Capacity;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::mongo_sim::SimMongo;
use crate::support::{Client, TestServer, object};

/// One sample line: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A family as declared by `# HELP` and `# TYPE`, with its samples.
#[derive(Debug, Default)]
struct Family {
    kind: String,
    helps: usize,
    types: usize,
    samples: Vec<Sample>,
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"").expect("label has =\"");
        let end = after.find('"').expect("label value is closed");
        assert!(
            key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "label name {key:?}"
        );
        assert!(
            labels
                .insert(key.to_owned(), after[..end].to_owned())
                .is_none(),
            "label {key} repeated"
        );
        rest = after[end + 1..].trim_start_matches(',');
    }
    labels
}

/// Parses a Prometheus text exposition strictly: every family has exactly one HELP and one
/// TYPE before its samples, samples are contiguous and belong to the family declared last,
/// no name is used twice (OpenMetrics family names included: a counter `foo_total` is
/// family `foo`), and histograms have cumulative buckets ending in `+Inf` equal to `_count`.
fn parse_strict(text: &str) -> BTreeMap<String, Family> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut finished = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP has text");
            assert!(!help.trim().is_empty(), "empty HELP for {name}");
            if let Some(previous) = current.replace(name.to_owned()) {
                finished.insert(previous);
            }
            assert!(!finished.contains(name), "family {name} declared twice");
            families.entry(name.to_owned()).or_default().helps += 1;
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE has a kind");
            assert_eq!(
                current.as_deref(),
                Some(name),
                "TYPE {name} without its HELP first"
            );
            assert!(
                ["counter", "gauge", "histogram"].contains(&kind),
                "{name}: kind {kind}"
            );
            let family = families.get_mut(name).expect("declared by HELP");
            family.types += 1;
            family.kind = kind.to_owned();
        } else if line.starts_with('#') {
            panic!("unexpected comment {line:?}");
        } else {
            let (series, value) = line.rsplit_once(' ').expect("sample has a value");
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("value of {line:?}"));
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (
                    name,
                    parse_labels(labels.strip_suffix('}').expect("labels are closed")),
                ),
                None => (series, BTreeMap::new()),
            };
            let family_name = current.as_deref().expect("a sample before any TYPE");
            let family = families.get_mut(family_name).expect("declared");
            assert_eq!(family.types, 1, "{name}: sample before TYPE");
            let allowed: Vec<String> = match family.kind.as_str() {
                "histogram" => ["_bucket", "_sum", "_count"]
                    .iter()
                    .map(|s| format!("{family_name}{s}"))
                    .collect(),
                _ => vec![family_name.to_owned()],
            };
            assert!(
                allowed.iter().any(|a| a == name),
                "sample {name} in family {family_name}"
            );
            family.samples.push(Sample {
                name: name.to_owned(),
                labels,
                value,
            });
        }
    }
    // One HELP and one TYPE each; no clash of OpenMetrics family names.
    let mut open_metrics_names = BTreeSet::new();
    for (name, family) in &families {
        assert_eq!((family.helps, family.types), (1, 1), "{name}");
        assert!(!family.samples.is_empty(), "{name} has no samples");
        let om = match family.kind.as_str() {
            "counter" => name
                .strip_suffix("_total")
                .unwrap_or_else(|| panic!("counter {name} does not end in _total")),
            _ => name,
        };
        assert!(
            open_metrics_names.insert(om.to_owned()),
            "family name {om} is used twice"
        );
        let mut series = BTreeSet::new();
        for sample in &family.samples {
            assert!(
                series.insert((sample.name.clone(), sample.labels.clone())),
                "{} {:?} repeated",
                sample.name,
                sample.labels
            );
        }
    }
    for (name, family) in families.iter().filter(|(_, f)| f.kind == "histogram") {
        // Each label set (`le` aside) is one histogram of the family.
        let mut label_sets: Vec<BTreeMap<String, String>> = Vec::new();
        for sample in &family.samples {
            let mut labels = sample.labels.clone();
            labels.remove("le");
            if !label_sets.contains(&labels) {
                label_sets.push(labels);
            }
        }
        for set in &label_sets {
            let of_set = |sample: &&Sample| {
                let mut labels = sample.labels.clone();
                labels.remove("le");
                &labels == set
            };
            let buckets: Vec<&Sample> = family
                .samples
                .iter()
                .filter(of_set)
                .filter(|s| s.name.ends_with("_bucket"))
                .collect();
            let bounds: Vec<f64> = buckets
                .iter()
                .map(|s| s.labels["le"].parse::<f64>().expect("le is a number"))
                .collect();
            assert!(bounds.len() >= 2, "{name} {set:?}: buckets");
            assert!(
                bounds.windows(2).all(|w| w[0] < w[1]),
                "{name} {set:?}: bounds {bounds:?}"
            );
            assert_eq!(buckets.last().unwrap().labels["le"], "+Inf", "{name}");
            assert!(
                buckets.windows(2).all(|w| w[0].value <= w[1].value),
                "{name} {set:?}: buckets are not cumulative"
            );
            let count = family
                .samples
                .iter()
                .filter(of_set)
                .find(|s| s.name.ends_with("_count"))
                .expect("_count")
                .value;
            let sum = family
                .samples
                .iter()
                .filter(of_set)
                .find(|s| s.name.ends_with("_sum"))
                .expect("_sum")
                .value;
            assert_eq!(
                buckets.last().unwrap().value,
                count,
                "{name} {set:?}: +Inf = _count"
            );
            assert!(sum >= 0.0, "{name}: sum");
        }
    }
    families
}

fn count_of(families: &BTreeMap<String, Family>, histogram: &str) -> f64 {
    families[histogram]
        .samples
        .iter()
        .find(|s| s.name.ends_with("_count"))
        .expect("_count")
        .value
}

#[test]
fn the_parser_catches_the_old_family_clash() {
    let clash = "# HELP livequery_connections a\n# TYPE livequery_connections gauge\nlivequery_connections 1\n# HELP livequery_connections_total b\n# TYPE livequery_connections_total counter\nlivequery_connections_total 1\n";
    assert!(std::panic::catch_unwind(|| parse_strict(clash)).is_err());
    let not_cumulative = "# HELP h a\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n";
    assert!(std::panic::catch_unwind(|| parse_strict(not_cumulative)).is_err());
    let fine = "# HELP h a\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 2\n";
    assert_eq!(parse_strict(fine)["h"].samples.len(), 4);
}

#[tokio::test]
async fn metrics_parse_strictly_and_measure_deliveries() {
    let server = TestServer::start("").await;
    let mut a = server.connected(None).await;
    let mut b = server.connected(None).await;
    a.subscribe(1, "M", json!({})).await;
    b.subscribe(1, "M", json!({})).await;
    for i in 0..5 {
        server
            .create(object("M", &format!("o{i}"), json!({})))
            .await;
    }
    for _ in 0..5 {
        assert_eq!(a.recv().await["op"], "create");
        assert_eq!(b.recv().await["op"], "create");
    }
    // The latency is recorded once the write returns: wait for all ten.
    let mut families = parse_strict(&server.metrics().await);
    for _ in 0..100 {
        if count_of(&families, "livequery_delivery_latency_seconds") >= 10.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        families = parse_strict(&server.metrics().await);
    }
    assert_eq!(
        count_of(&families, "livequery_delivery_latency_seconds"),
        10.0
    );
    let value = |name: &str| families[name].samples[0].value;
    assert_eq!(value("livequery_connections_open"), 2.0);
    assert_eq!(value("livequery_connections_accepted_total"), 2.0);
    assert_eq!(value("livequery_events_in_total"), 5.0);
    assert_eq!(families["livequery_build_info"].samples[0].value, 1.0);
    assert_eq!(
        families["livequery_build_info"].samples[0].labels["version"],
        env!("CARGO_PKG_VERSION")
    );
    // The embedded source reports no timestamp of its own: no source-lag observations.
    assert_eq!(count_of(&families, "livequery_source_lag_seconds"), 0.0);
    if std::path::Path::new("/proc/self/stat").exists() {
        assert!(value("process_resident_memory_bytes") > 1e6);
        assert!(value("process_open_fds") >= 3.0);
        assert!(value("process_max_fds") >= value("process_open_fds"));
        assert!(value("process_start_time_seconds") > 1.6e9);
    }
}

#[tokio::test]
async fn a_source_with_commit_times_fills_the_source_lag_histogram() {
    let sim = SimMongo::new();
    sim.insert(
        "_SCHEMA",
        doc! {"_id": "Message", "objectId": "string", "createdAt": "date", "updatedAt": "date", "ACL": "object", "room": "string"},
    );
    let server = TestServer::start_mongo("", sim.store(), true).await;
    let mut client = server.connected(None).await;
    client.subscribe(1, "Message", json!({})).await;
    let now = bson::DateTime::now();
    sim.insert(
        "Message",
        doc! {"_id": "m1", "room": "r", "_created_at": now, "_updated_at": now},
    );
    assert_eq!(client.recv().await["op"], "create");
    let families = parse_strict(&server.metrics().await);
    assert!(count_of(&families, "livequery_source_lag_seconds") >= 1.0);
}

#[tokio::test]
async fn the_dashboard_queries_only_metrics_the_server_exposes() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/grafana-dashboard.json"
    );
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("the dashboard")).expect("JSON");
    assert!(dashboard["title"].is_string() && dashboard["panels"].is_array());
    let mut queries = Vec::new();
    collect_queries(&dashboard, &mut queries);
    let names: BTreeSet<String> = queries.iter().flat_map(|q| metric_names(q)).collect();

    let server = TestServer::start("").await;
    let families = parse_strict(&server.metrics().await);
    let exposed: BTreeSet<&str> = families
        .values()
        .flat_map(|f| f.samples.iter().map(|s| s.name.as_str()))
        .collect();
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !exposed.contains(n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries unknown metrics: {missing:?}"
    );
    // It shows what operators need.
    for needed in [
        "livequery_connections_open",
        "livequery_subscriptions",
        "livequery_events_in_total",
        "livequery_deliveries_total",
        "livequery_delivery_latency_seconds_bucket",
        "livequery_source_lag_seconds_bucket",
        "livequery_drops_total",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        assert!(
            names.contains(needed),
            "the dashboard does not show {needed}"
        );
    }
}

fn collect_queries(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr" | "definition", Value::String(q)) => out.push(q.clone()),
                    ("query", Value::String(q)) => out.push(q.clone()),
                    _ => collect_queries(value, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_queries(v, out)),
        _ => {}
    }
}

/// The `livequery_*` and `process_*` identifiers of a PromQL expression.
fn metric_names(query: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut current = String::new();
    for c in query.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            current.push(c);
        } else {
            if current.starts_with("livequery_") || current.starts_with("process_") {
                names.push(current.clone());
            }
            current.clear();
        }
    }
    names
}

/// The log lines of a spawned server, as JSON.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Value>>>);

impl Log {
    /// The first line whose `message` is `message`, waiting up to ten seconds.
    async fn wait_for(&self, message: &str) -> Value {
        for _ in 0..500 {
            if let Some(line) = self
                .0
                .lock()
                .iter()
                .find(|l| l["message"] == message)
                .cloned()
            {
                return line;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no log line {message:?} in {:#?}", self.0.lock());
    }
}

/// The binary, started by `sh` with a soft open-files limit of 1024 (or half the hard
/// limit, when that is lower), logs the raise, sizes its WebSocket cap by the raised limit,
/// logs connections at info with their fields, and drains on SIGTERM.
#[tokio::test]
async fn the_binary_raises_the_open_files_limit_and_drains_on_sigterm() {
    let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).expect("getrlimit");
    if hard == rlimit::INFINITY {
        // Linux refuses an unlimited soft limit for files; nothing meaningful to check.
        return;
    }
    let soft = hard.min(2048) / 2;
    let max_connections = 1_000_000;
    let mut command = tokio::process::Command::new("sh");
    command
        .arg("-c")
        .arg(format!("ulimit -Sn {soft} && exec \"$0\""))
        .arg(env!("CARGO_BIN_EXE_livequery"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    for (key, _) in std::env::vars() {
        if key.starts_with("LIVEQUERY__") {
            command.env_remove(key);
        }
    }
    for (key, value) in [
        ("LIVEQUERY__SERVER__LISTEN", "127.0.0.1:0"),
        ("LIVEQUERY__SERVER__DRAIN_PERIOD", "1s"),
        ("LIVEQUERY__SERVER__SHUTDOWN_GRACE", "2s"),
        ("LIVEQUERY__PARSE__MASTER_KEY", "observability-test-key"),
        ("LIVEQUERY__LOG__FORMAT", "json"),
        ("LIVEQUERY__LOG__LEVEL", "info"),
        ("LIVEQUERY__LIMITS__MAX_CONNECTIONS", "1000000"),
    ] {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("spawn livequery");
    let log = Log::default();
    let stdout = child.stdout.take().expect("piped");
    let reader = {
        let log = log.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let value = serde_json::from_str(&line)
                    .unwrap_or_else(|_| panic!("a log line that is not JSON: {line}"));
                log.0.lock().push(value);
            }
        })
    };

    let raised = log
        .wait_for("raised the open-files limit (RLIMIT_NOFILE) to its hard limit")
        .await;
    assert_eq!(
        (raised["from"].as_u64(), raised["to"].as_u64()),
        (Some(soft), Some(hard))
    );
    let serving = log.wait_for("livequery is serving").await;
    let expected = Capacity::new(max_connections, false, usize::try_from(hard).ok());
    assert_eq!(
        serving["websockets"].as_u64(),
        Some(expected.websockets as u64)
    );
    assert!(
        expected.websockets > Capacity::new(max_connections, false, Some(soft as usize)).websockets,
        "the cap follows the raised limit"
    );
    let addr: std::net::SocketAddr = serving["listen"]
        .as_str()
        .expect("listen")
        .parse()
        .expect("an address");
    let server = TestServer {
        addr,
        shutdown: tokio_util::sync::CancellationToken::new(),
        handle: None,
    };
    let text = server.metrics().await;
    assert!(
        text.lines().any(|l| l == format!("process_max_fds {hard}")),
        "{text}"
    );

    // Per-connection fields at info.
    let mut client = Client::open(addr, "/").await;
    client
        .send(json!({"op": "connect", "applicationId": "test"}))
        .await;
    assert_eq!(client.recv().await["op"], "connected");
    let connected = log.wait_for("client connected").await;
    let span = &connected["span"];
    assert_eq!(span["name"], "connection", "{connected}");
    assert!(
        span["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{connected}"
    );
    assert!(
        span["client_id"].as_str().is_some_and(|id| !id.is_empty()),
        "{connected}"
    );

    // SIGTERM: unready at once, the client closed with 1001, a clean exit.
    let pid = child.id().expect("running").to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    log.wait_for(
        "draining: /readyz answers 503, new WebSockets are refused, open ones close in waves",
    )
    .await;
    let (status, body) = server.http("GET", "/readyz", None, None).await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(client.closed().await, Some(1001));
    let closed = log.wait_for("connection closed").await;
    assert_eq!(closed["reason"], "server shutting down", "{closed}");
    assert!(closed["span"]["client_id"].is_string(), "{closed}");
    drop(client);
    let exit = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("the server exits after the drain")
        .expect("wait");
    assert!(exit.success(), "{exit}");
    reader.await.expect("log reader");
    log.wait_for("stopped").await;
}
