//! The `livequery` binary configured the way parse-server's LiveQuery server is:
//! `PARSE_LIVE_QUERY_SERVER_*` variables, parse-server's log levels, and mistakes that used to
//! pass silently (an unknown level, a forgotten app id) stopping it at start-up.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The binary, with no configuration from the test's own environment.
fn livequery(env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_livequery"));
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

#[test]
fn parse_server_variables_make_the_effective_configuration() {
    let output = livequery(&[
        ("PARSE_LIVE_QUERY_SERVER_APP_ID", "fromParseEnv"),
        ("PARSE_LIVE_QUERY_SERVER_MASTER_KEY", "secret-master"),
        (
            "PARSE_LIVE_QUERY_SERVER_KEY_PAIRS",
            r#"{"javascriptKey":"secret-js"}"#,
        ),
        ("PARSE_LIVE_QUERY_SERVER_WEBSOCKET_TIMEOUT", "2500"),
        ("PARSE_LIVE_QUERY_SERVER_CACHE_TIMEOUT", "60000"),
        ("PARSE_LIVE_QUERY_SERVER_LOG_LEVEL", "VERBOSE"),
        (
            "PARSE_LIVE_QUERY_SERVER_REDIS_URL",
            "rediss://lq:secret-redis@cache.example:6380",
        ),
        ("LIVEQUERY__SERVER__LISTEN", "127.0.0.1:4322"),
    ])
    .arg("--check-config")
    .output()
    .expect("run livequery");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let printed = String::from_utf8_lossy(&output.stdout);
    for expected in [
        "app_id = \"fromParseEnv\"",
        "websocket_timeout = \"2s 500ms\"",
        "cache_timeout = \"1m\"",
        "kind = \"redis\"",
        "javascriptKey",
    ] {
        assert!(printed.contains(expected), "{expected} in:\n{printed}");
    }
    assert!(!printed.contains("secret"), "a secret leaked:\n{printed}");
}

#[test]
fn mistakes_that_used_to_pass_silently_stop_livequery_at_start_up() {
    for (env, expected) in [
        (
            vec![("PARSE_LIVE_QUERY_SERVER_LOG_LEVEL", "LOUD")],
            "unknown level \"LOUD\"",
        ),
        (vec![("LIVEQUERY__LOG__LEVEL", "livequery")], "livequery"),
        (
            vec![
                ("PARSE_LIVE_QUERY_SERVER_REDIS_URL", "redis://127.0.0.1:1"),
                ("PARSE_LIVE_QUERY_SERVER_MASTER_KEY", "mk"),
            ],
            "needs parse.app_id",
        ),
        (
            vec![
                ("PARSE_LIVE_QUERY_SERVER_APP_ID", "app"),
                (
                    "PARSE_LIVE_QUERY_SERVER_SERVER_URL",
                    "http://127.0.0.1:1/parse",
                ),
            ],
            "master key",
        ),
        (
            vec![("PARSE_LIVE_QUERY_SERVER_WEBSOCKET_TIMEOUT", "10s")],
            "milliseconds",
        ),
        (
            vec![("PARSE_LIVE_QUERY_SERVER_MASTERKEY", "mk")],
            "unknown environment variable PARSE_LIVE_QUERY_SERVER_MASTERKEY",
        ),
    ] {
        let output = livequery(&env).output().expect("run livequery");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{env:?} started");
        assert!(stderr.contains(expected), "{env:?}: {stderr}");
        assert!(!stderr.contains("\"mk\""), "{stderr}");
    }
}

#[test]
fn logs_written_to_a_pipe_carry_no_colour_codes() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = livequery(&[
        ("PARSE_LIVE_QUERY_SERVER_LOG_LEVEL", "INFO"),
        ("LIVEQUERY__SERVER__LISTEN", &listen),
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .expect("run livequery");
    let stdout = child.stdout.take().expect("piped");
    // Bounded: the reader thread waits while the test is behind.
    let (tx, rx) = std::sync::mpsc::sync_channel(256);
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut lines = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => {
                let serving = line.contains("livequery is serving");
                lines.push(line);
                if serving {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let all = lines.join("\n");
    assert!(all.contains("livequery is serving"), "{all}");
    assert!(all.contains("INFO"), "{all}");
    assert!(!all.contains('\u{1b}'), "colour codes in a pipe:\n{all}");
}
