//! parse-server refusing livequery's key (HTTP 403, as parse-server 9 answers a master key
//! from an address outside `masterKeyIps`): one actionable error, no secret in it, a
//! readiness problem until a lookup succeeds again; the read-only master key is what is sent
//! when configured.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use livequery_server::Components;
use livequery_server::config::Config;
use livequery_server::identity::IdentityProvider;
use livequery_server::parse_rest::{KeyKind, ParseRest, READINESS_COMPONENT};
use livequery_server::readiness::Readiness;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const MASTER_KEY: &str = "master-key-never-logged";
const TOKEN: &str = "r:session-token-never-logged";

/// A fake parse-server: 403 `{"error":"unauthorized"}` while `refuse` is set, else an empty
/// result. Records the `X-Parse-Master-Key` header of every request.
struct FakeParseServer {
    url: String,
    refuse: Arc<AtomicBool>,
    keys: Arc<Mutex<Vec<String>>>,
}

impl FakeParseServer {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/parse", listener.local_addr().expect("addr"));
        let refuse = Arc::new(AtomicBool::new(true));
        let keys = Arc::new(Mutex::new(Vec::new()));
        let (refusing, seen) = (refuse.clone(), keys.clone());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let request = read_request(&mut socket).await;
                let key = request
                    .lines()
                    .find_map(|line| {
                        let (name, value) = line.split_once(':')?;
                        name.eq_ignore_ascii_case("x-parse-master-key")
                            .then(|| value.trim().to_owned())
                    })
                    .unwrap_or_default();
                seen.lock().expect("not poisoned").push(key);
                let (status, body) = if refusing.load(Ordering::SeqCst) {
                    ("403 Forbidden", r#"{"error":"unauthorized"}"#)
                } else {
                    ("200 OK", r#"{"results":[]}"#)
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            }
        });
        Self { url, refuse, keys }
    }
}

/// Reads one request (head and `content-length` body).
async fn read_request(socket: &mut tokio::net::TcpStream) -> String {
    let mut request = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let n = socket.read(&mut buffer).await.unwrap_or(0);
        request.extend_from_slice(&buffer[..n]);
        let text = String::from_utf8_lossy(&request);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            if body.len() >= length {
                return text.into_owned();
            }
        }
        if n == 0 {
            return text.into_owned();
        }
    }
}

/// Log output captured by a subscriber installed for the current thread.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .expect("not poisoned")
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("not poisoned")).into_owned()
    }
}

fn capture_logs() -> (Captured, tracing::subscriber::DefaultGuard) {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .finish();
    (captured, tracing::subscriber::set_default(subscriber))
}

// A current-thread runtime (the default): the subscriber set for this thread sees every log.
#[tokio::test]
async fn a_refused_key_is_one_actionable_error_and_a_readiness_problem_until_it_heals() {
    let (logs, _guard) = capture_logs();
    let parse = FakeParseServer::start().await;
    let readiness = Arc::new(Readiness::default());
    let rest = ParseRest::new(&parse.url, "app", MASTER_KEY, Duration::from_secs(5))
        .expect("client")
        .with_readiness(readiness.clone(), KeyKind::Master);

    for _ in 0..3 {
        assert!(
            rest.resolve_session(TOKEN).await.is_err(),
            "a 403 is no answer"
        );
    }
    let problem = readiness
        .problems()
        .get(READINESS_COMPONENT)
        .cloned()
        .expect("the refusal is a readiness problem");
    assert!(problem.contains("masterKeyIps"), "{problem}");
    assert!(
        problem.contains("127.0.0.1"),
        "names the address: {problem}"
    );
    let text = logs.text();
    let errors: Vec<&str> = text.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "logged once, not per lookup:\n{text}");
    assert!(errors[0].contains("masterKeyIps"), "{text}");
    assert!(!text.contains(MASTER_KEY), "the master key leaked:\n{text}");
    assert!(!text.contains(TOKEN), "the session token leaked:\n{text}");
    assert!(!problem.contains(MASTER_KEY) && !problem.contains(TOKEN));

    parse.refuse.store(false, Ordering::SeqCst);
    assert_eq!(rest.resolve_session(TOKEN).await.expect("answered"), None);
    assert!(
        readiness.problems().is_empty(),
        "{:?}",
        readiness.problems()
    );
    assert!(
        parse
            .keys
            .lock()
            .expect("not poisoned")
            .iter()
            .all(|k| k == MASTER_KEY)
    );

    // With the read-only master key, that key is sent and its own option named. (One test:
    // a log callsite first reached on a thread without the capturing subscriber could be
    // cached as disabled.)
    let parse = FakeParseServer::start().await;
    let readiness = Arc::new(Readiness::default());
    let rest = ParseRest::new(&parse.url, "app", "read-only-key", Duration::from_secs(5))
        .expect("client")
        .with_readiness(readiness.clone(), KeyKind::ReadOnly);
    assert!(rest.class_permissions("Message").await.is_err());
    let problem = readiness.problems()[READINESS_COMPONENT].clone();
    assert!(problem.contains("readOnlyMasterKeyIps"), "{problem}");
    assert_eq!(
        parse.keys.lock().expect("not poisoned").as_slice(),
        ["read-only-key"]
    );

    // Wired from the configuration: the Redis source's identities report to the register
    // the server's /readyz reads, with the read-only key preferred.
    let parse = FakeParseServer::start().await;
    let config = Config::from_toml_layers(&[&format!(
        "appId = \"app\"\nmasterKey = \"{MASTER_KEY}\"\nreadOnlyMasterKey = \"ro-key\"\nserverURL = \"{}\"\nredisURL = \"redis://127.0.0.1:1\"",
        parse.url
    )])
    .expect("valid");
    let components = Components::from_config(&config).await.expect("components");
    assert!(components.identities.resolve_session(TOKEN).await.is_err());
    let problem = components.readiness.problems()[READINESS_COMPONENT].clone();
    assert!(problem.contains("readOnlyMasterKeyIps"), "{problem}");
    assert_eq!(
        parse.keys.lock().expect("not poisoned").as_slice(),
        ["ro-key"]
    );
}
