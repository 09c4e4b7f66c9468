//! The `livequery` binary's configuration handling.

use std::process::Command;

fn livequery() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_livequery"));
    for (key, _) in std::env::vars() {
        if key.starts_with("LIVEQUERY__") {
            command.env_remove(key);
        }
    }
    command.current_dir(env!("CARGO_MANIFEST_DIR"));
    command
}

#[test]
fn check_config_prints_the_effective_configuration_with_secrets_redacted() {
    let dir = std::env::temp_dir().join(format!("livequery-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("extra.toml");
    std::fs::write(
        &file,
        "[limits]\nmax_connections = 1234\n[parse]\napp_id = \"fromFile\"\n",
    )
    .unwrap();
    let output = livequery()
        .arg("--config")
        .arg(&file)
        .arg("--check-config")
        .env("LIVEQUERY__PARSE__MASTER_KEY", "super-secret-master")
        .env(
            "LIVEQUERY__PARSE__KEY_PAIRS__JAVASCRIPTKEY",
            "super-secret-js",
        )
        .env("LIVEQUERY__SERVER__LISTEN", "127.0.0.1:4321")
        .env("LIVEQUERY__PARSE__APP_ID", "fromEnv")
        .output()
        .expect("run livequery");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed = String::from_utf8(output.stdout).unwrap();
    assert!(
        !printed.contains("super-secret"),
        "secrets leaked:\n{printed}"
    );
    assert!(printed.contains("<redacted>"), "{printed}");
    assert!(
        printed.contains("javascriptKey"),
        "key names are shown: {printed}"
    );
    assert!(
        printed.contains("\"127.0.0.1:4321\""),
        "env overrides defaults: {printed}"
    );
    assert!(
        printed.contains("max_connections = 1234"),
        "the file overrides defaults: {printed}"
    );
    assert!(
        printed.contains("\"fromEnv\""),
        "env overrides the file: {printed}"
    );
}

#[test]
fn bad_configuration_is_reported_and_fails() {
    let output = livequery()
        .args(["--config", "/nonexistent/livequery.toml", "--check-config"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("does not exist"));
    let output = livequery()
        .arg("--check-config")
        .env("LIVEQUERY__LIMITS__MAX_CONNECTIONS", "0")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("limits.max_connections must be greater than 0")
    );
}

#[test]
fn environment_values_keep_their_text_and_still_fill_typed_keys() {
    let output = livequery()
        .arg("--check-config")
        .env("LIVEQUERY__PARSE__APP_ID", "00123")
        .env("LIVEQUERY__LIMITS__MAX_CONNECTIONS", "0777")
        .env("LIVEQUERY__PARSE__ALLOW_REGEX", "false")
        .env("LIVEQUERY__MONGODB__CLASSES", "Message, Room")
        .output()
        .expect("run livequery");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed = String::from_utf8(output.stdout).unwrap();
    assert!(
        printed.contains("app_id = \"00123\""),
        "a numeric-looking string stays a string: {printed}"
    );
    assert!(printed.contains("max_connections = 777"), "{printed}");
    assert!(printed.contains("allow_regex = false"), "{printed}");
    assert!(
        printed.contains("classes = [\"Message\", \"Room\"]"),
        "lists are comma-separated in the environment: {printed}"
    );
}

/// A generated master key used to be logged in full (anyone reading the logs could publish
/// events and manage sessions). It is never shown now.
#[test]
fn a_generated_master_key_is_never_logged() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let mut child = livequery()
        .env("LIVEQUERY__SERVER__LISTEN", "127.0.0.1:0")
        .env("LIVEQUERY__LOG__FORMAT", "json")
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run livequery");
    let stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let serving = line.contains("livequery is serving");
            lines.push(line);
            if serving {
                break;
            }
        }
        lines
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !reader.is_finished() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
    }
    let mut log = reader.join().expect("reader").join("\n");
    log.push_str(&stderr);
    assert!(log.contains("livequery is serving"), "{log}");
    let hex32 = regex::Regex::new("[0-9a-f]{32}").expect("regex");
    assert!(!hex32.is_match(&log), "a key was logged:\n{log}");
    assert!(
        log.contains("ingest API"),
        "the missing key is reported: {log}"
    );
}

/// The embedded source's ingest API on a public address needs a master key of the
/// operator's own: livequery refuses to start without one.
#[test]
fn a_public_ingest_api_without_a_master_key_is_refused() {
    let output = livequery()
        .env("LIVEQUERY__SERVER__LISTEN", "0.0.0.0:0")
        .output()
        .expect("run livequery");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("parse.master_key"), "{stderr}");
}
