//! The Redis source over TLS, as managed Redis offers it: a real redis-server with
//! `--tls-port`, certificates made by the test (`openssl`), a CA file, a client certificate
//! (the server requires one) and an ACL user in the URL. A wrong CA is reported as such.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use livequery_server::Components;
use livequery_server::config::RedisConfig;
use livequery_server::identity::memory::MemoryIdentities;
use livequery_server::source::redis::RedisSource;
use serde_json::json;
use tokio::process::{Child, Command};

use crate::support::{TestServer, object};

const USER: &str = "lq";
const PASSWORD: &str = "tls-test-secret";

/// A directory of PEM files: two CAs, a server certificate for 127.0.0.1 signed by the
/// first, and a client certificate signed by it.
struct Certificates {
    dir: PathBuf,
}

impl Certificates {
    fn make() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "livequery-redis-tls-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let openssl = |args: &[&str]| {
            let output = std::process::Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .output()
                .unwrap_or_else(|err| panic!("openssl is required ({err})"));
            assert!(
                output.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
        for ca in ["ca", "other-ca"] {
            let subject = format!("/CN=livequery test {ca}");
            let (key, crt) = (format!("{ca}.key"), format!("{ca}.crt"));
            let mut args = vec!["req", "-x509", "-nodes", "-days", "2"];
            args.extend(ec);
            args.extend(["-keyout", &key, "-out", &crt, "-subj", &subject]);
            args.extend(["-addext", "basicConstraints=critical,CA:TRUE"]);
            args.extend(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
            openssl(&args);
        }
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        )
        .expect("ext");
        std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").expect("ext");
        for (name, cn) in [("server", "localhost"), ("client", "livequery")] {
            let subject = format!("/CN={cn}");
            let (key, csr, crt, ext) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.crt"),
                format!("{name}.ext"),
            );
            let mut args = vec!["req", "-nodes"];
            args.extend(ec);
            args.extend(["-keyout", &key, "-out", &csr, "-subj", &subject]);
            openssl(&args);
            openssl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-set_serial",
                "2",
                "-days",
                "2",
                "-out",
                &crt,
                "-extfile",
                &ext,
            ]);
        }
        Self { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

impl Drop for Certificates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// redis-server with a plain port (for the test's publisher) and a TLS port that requires a
/// client certificate; the default user is off, only `lq` with its password may connect.
async fn tls_redis(certs: &Certificates, port: u16, tls_port: u16) -> Child {
    let user_password = format!(">{PASSWORD}");
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--tls-port", &tls_port.to_string()])
        .args(["--tls-cert-file", &certs.path("server.crt")])
        .args(["--tls-key-file", &certs.path("server.key")])
        .args(["--tls-ca-cert-file", &certs.path("ca.crt")])
        .args(["--tls-auth-clients", "yes"])
        .args(["--save", "", "--appendonly", "no"])
        .args(["--user", "default", "off"])
        .args(["--user", USER, "on", &user_password, "~*", "&*", "+@all"])
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|err| {
            panic!("redis-server is required: run scripts/stack-install ({err})")
        });
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", tls_port))
            .await
            .is_ok()
        {
            return child;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("redis-server did not start with TLS (is it built with TLS support?)");
}

fn tls_config(certs: &Certificates, tls_port: u16, ca: &str) -> RedisConfig {
    RedisConfig {
        url: format!("rediss://{USER}:{PASSWORD}@127.0.0.1:{tls_port}"),
        channel_prefix: "lqApp".to_owned(),
        username: String::new(),
        password: String::new(),
        tls_ca_file: certs.path(ca),
        tls_cert_file: certs.path("client.crt"),
        tls_key_file: certs.path("client.key"),
        sentinels: Vec::new(),
        sentinel_master: String::new(),
    }
}

#[tokio::test]
#[cfg_attr(
    not(redis_tests),
    ignore = "needs redis-server: run scripts/stack-install"
)]
async fn a_tls_redis_with_a_client_certificate_and_an_acl_user_feeds_subscribers() {
    let certs = Certificates::make();
    let (port, tls_port) = (free_port(), free_port());
    let _redis = tls_redis(&certs, port, tls_port).await;
    let source = RedisSource::from_config(&tls_config(&certs, tls_port, "ca.crt")).expect("valid");
    let components = Components::redis(source, Arc::new(MemoryIdentities::new()));
    // Waits for /health: the source is subscribed over TLS.
    let server = TestServer::start_components("", components, true).await;
    let mut client = server.connected(None).await;
    client.subscribe(1, "Message", json!({"room": "r"})).await;

    let publisher =
        redis::Client::open(format!("redis://{USER}:{PASSWORD}@127.0.0.1:{port}")).expect("url");
    let mut connection = publisher
        .get_multiplexed_async_connection()
        .await
        .expect("publisher connects as the ACL user");
    let mut message = object("Message", "m1", json!({"room": "r"}));
    message["__type"] = json!("Object");
    let receivers: i64 = redis::cmd("PUBLISH")
        .arg("lqAppafterSave")
        .arg(json!({"currentParseObject": message}).to_string())
        .query_async(&mut connection)
        .await
        .expect("publish");
    assert_eq!(receivers, 1, "livequery is the one subscriber");
    let event = client.recv().await;
    assert_eq!(
        (event["op"].as_str(), event["object"]["objectId"].as_str()),
        (Some("create"), Some("m1"))
    );
    server.stop().await;

    // The same user given as source.redis_username / redis_password instead of in the URL.
    let mut by_fields = tls_config(&certs, tls_port, "ca.crt");
    by_fields.url = format!("rediss://127.0.0.1:{tls_port}");
    by_fields.username = USER.to_owned();
    by_fields.password = PASSWORD.to_owned();
    let components = Components::redis(
        RedisSource::from_config(&by_fields).expect("valid"),
        Arc::new(MemoryIdentities::new()),
    );
    // Waits for /health (the subscription) or fails.
    TestServer::start_components("", components, true)
        .await
        .stop()
        .await;
}

/// Lines livequery writes to standard output until one satisfies `done` (or it exits, or
/// 15 s pass).
fn output_until(child: &mut std::process::Child, done: impl Fn(&str) -> bool) -> Vec<String> {
    let stdout = child.stdout.take().expect("piped stdout");
    // Bounded: the reader thread waits while the test is behind.
    let (tx, rx) = std::sync::mpsc::sync_channel(256);
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut lines = Vec::new();
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => {
                let found = done(&line);
                lines.push(line);
                if found {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    lines
}

fn livequery(env: &[(&str, String)]) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_livequery"));
    for (key, _) in std::env::vars() {
        if key.starts_with("LIVEQUERY__") || key.starts_with("PARSE_LIVE_QUERY_SERVER_") {
            command.env_remove(key);
        }
    }
    command.env_remove("PORT").env_remove("RUST_LOG");
    command.current_dir(env!("CARGO_MANIFEST_DIR"));
    for (key, value) in env {
        command.env(key, value);
    }
    command
}

#[tokio::test]
#[cfg_attr(
    not(redis_tests),
    ignore = "needs redis-server: run scripts/stack-install"
)]
async fn a_certificate_from_another_ca_is_reported_as_an_error_naming_the_setting() {
    let certs = Certificates::make();
    let (port, tls_port) = (free_port(), free_port());
    let _redis = tls_redis(&certs, port, tls_port).await;
    let config = tls_config(&certs, tls_port, "other-ca.crt");
    let (report, lines) = first_log_line_with(config.url.clone(), config, "redis_tls_ca_file");
    assert_eq!(report["level"], "ERROR", "{report}");
    assert!(
        report["error"]
            .as_str()
            .is_some_and(|e| e.contains("certificate")),
        "{report}"
    );
    let all = lines.join("\n");
    assert!(!all.contains(PASSWORD), "the password leaked: {all}");
    assert!(
        !all.contains("tls-test-master"),
        "the master key leaked: {all}"
    );
    assert!(!all.contains('\u{1b}'), "colour codes in a pipe: {all}");
}

#[test]
fn a_missing_ca_file_stops_livequery_at_start_up() {
    let output = livequery(&[
        ("LIVEQUERY__PARSE__APP_ID", "lqApp".to_owned()),
        ("LIVEQUERY__PARSE__MASTER_KEY", "mk".to_owned()),
        ("LIVEQUERY__SOURCE__KIND", "redis".to_owned()),
        (
            "LIVEQUERY__SOURCE__REDIS_URL",
            "rediss://127.0.0.1:1".to_owned(),
        ),
        (
            "LIVEQUERY__SOURCE__REDIS_TLS_CA_FILE",
            Path::new("/nonexistent/ca.pem").display().to_string(),
        ),
    ])
    .output()
    .expect("run livequery");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("source.redis_tls_ca_file"), "{stderr}");
}

/// A password Redis refuses is reported as an error naming the settings to check, and
/// appears in no log line.
#[tokio::test]
#[cfg_attr(
    not(redis_tests),
    ignore = "needs redis-server: run scripts/stack-install"
)]
async fn a_refused_password_is_reported_as_an_error_naming_the_settings() {
    const WRONG: &str = "not-the-tls-test-secret";
    let certs = Certificates::make();
    let (port, tls_port) = (free_port(), free_port());
    let _redis = tls_redis(&certs, port, tls_port).await;
    let config = tls_config(&certs, tls_port, "ca.crt");
    let url = format!("rediss://{USER}:{WRONG}@127.0.0.1:{tls_port}");
    let (report, lines) = first_log_line_with(url, config, "credentials");
    assert_eq!(report["level"], "ERROR", "{report}");
    assert!(
        report["fields"]["message"]
            .as_str()
            .or(report["message"].as_str())
            .is_some_and(|m| m.contains("source.redis_url")),
        "{report}"
    );
    let all = lines.join("\n");
    assert!(!all.contains(WRONG), "the password leaked: {all}");
    assert!(
        !all.contains("tls-test-master"),
        "the master key leaked: {all}"
    );
}

/// Runs livequery on the Redis at `url` with `config`'s certificates (JSON logs) until a
/// log line contains `needle`: that line, parsed, and every line logged until then.
fn first_log_line_with(
    url: String,
    config: RedisConfig,
    needle: &str,
) -> (serde_json::Value, Vec<String>) {
    let mut child = livequery(&[
        ("PARSE_LIVE_QUERY_SERVER_APP_ID", "lqApp".to_owned()),
        (
            "PARSE_LIVE_QUERY_SERVER_MASTER_KEY",
            "tls-test-master".to_owned(),
        ),
        ("PARSE_LIVE_QUERY_SERVER_REDIS_URL", url),
        (
            "LIVEQUERY__SERVER__LISTEN",
            format!("127.0.0.1:{}", free_port()),
        ),
        ("LIVEQUERY__SOURCE__REDIS_TLS_CA_FILE", config.tls_ca_file),
        (
            "LIVEQUERY__SOURCE__REDIS_TLS_CERT_FILE",
            config.tls_cert_file,
        ),
        ("LIVEQUERY__SOURCE__REDIS_TLS_KEY_FILE", config.tls_key_file),
        ("LIVEQUERY__LOG__FORMAT", "json".to_owned()),
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("run livequery");
    let lines = output_until(&mut child, |line| line.contains(needle));
    let _ = child.kill();
    let _ = child.wait();
    let report = lines
        .iter()
        .find(|line| line.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{}", lines.join("\n")));
    let report = serde_json::from_str(report).expect("a JSON log line");
    (report, lines)
}
