//! parse-server's REST API as the auth provider and object reader.
//!
//! Every request uses the master key, like the reference LiveQuery server's own lookups.
//! Queries are sent as `POST` with `"_method": "GET"` (parse-server's method override, as
//! the JS SDK does for long queries): their constraints — a session token above all — travel
//! in the body, never in a URL that proxies and access logs record. Errors are reported
//! without URLs.
//! - a session token → a `_Session` query on `sessionToken` (expired or missing: no user);
//! - a user's roles → `_Role` objects whose `users` relation holds the user, then,
//!   breadth-first, the roles whose `roles` relation holds a role already found (members of
//!   a child role inherit the parent), with a visited set and a bound on the total;
//! - a class's permissions → `GET /schemas/<class>`;
//! - the `query` op → a query on `/classes/<class>`.
//!
//! A failed request is an [`LookupError`]; [`crate::identity::IdentityCache`] never turns one into access.
//!
//! The key is the master key or, when configured, parse-server's read-only master key (sent
//! the same way, in `X-Parse-Master-Key`). parse-server 9 accepts the master key only from
//! the addresses in its `masterKeyIps` (default: 127.0.0.1 and ::1) and answers 403 to any
//! other: livequery on another host would then resolve every session as anonymous. A 403
//! is therefore logged as one actionable error (again at most every few minutes while it
//! lasts) and recorded in the readiness register, which `/readyz` reports, until a request
//! succeeds again.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use reqwest::StatusCode;
use serde_json::{Map, Value, json};
use tokio::sync::Semaphore;

use crate::backend::ObjectReader;
use crate::identity::{IdentityProvider, LookupError, ResolvedUser, SessionRecord, roles};
use crate::readiness::Readiness;

/// Page size of role queries.
const ROLE_PAGE: usize = 1000;

/// The component name of parse-server refusals in the readiness register.
pub const READINESS_COMPONENT: &str = "parse_server";

/// While parse-server keeps refusing the key, the error is logged again this often.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(300);

/// Which of parse-server's keys [`ParseRest`] sends; it decides which option a refusal
/// names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// `masterKey`, limited by parse-server's `masterKeyIps`.
    Master,
    /// `readOnlyMasterKey`, limited by parse-server's `readOnlyMasterKeyIps`.
    ReadOnly,
}

/// Requests to parse-server in flight at once (lookups of sessions, roles, schemas). A
/// flood of distinct tokens waits for a slot instead of opening a connection each: the
/// server's own file descriptors are a reserve of fixed size
/// (`capacity::INTERNAL_FDS`), shared with the hooks' calls
/// ([`crate::hooks::MAX_CALLS_IN_FLIGHT`]).
pub const MAX_REQUESTS_IN_FLIGHT: usize = 32;

/// A client for parse-server's REST API.
#[derive(Debug, Clone)]
pub struct ParseRest {
    http: reqwest::Client,
    /// At most [`MAX_REQUESTS_IN_FLIGHT`] requests at once, shared by the clones.
    in_flight: Arc<Semaphore>,
    base: String,
    app_id: String,
    master_key: String,
    key_kind: KeyKind,
    /// Where a refusal is reported (`None`: only logged).
    readiness: Option<Arc<Readiness>>,
    refusal: Arc<Refusal>,
}

/// Whether parse-server is refusing the key, and when that was last logged.
#[derive(Debug, Default)]
struct Refusal {
    refused: AtomicBool,
    /// A mutex held for no `.await`: taken only on a refusal.
    last_logged: parking_lot::Mutex<Option<Instant>>,
}

impl ParseRest {
    /// A client for `server_url` (e.g. `http://127.0.0.1:1337/parse`).
    pub fn new(
        server_url: &str,
        app_id: &str,
        master_key: &str,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        // reqwest uses rustls without a built-in provider; install ring once per process.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(concat!("livequery/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            in_flight: Arc::new(Semaphore::new(MAX_REQUESTS_IN_FLIGHT)),
            base: server_url.trim_end_matches('/').to_owned(),
            app_id: app_id.to_owned(),
            master_key: master_key.to_owned(),
            key_kind: KeyKind::Master,
            readiness: None,
            refusal: Arc::default(),
        })
    }

    /// Reports refusals of the key (a `kind` key) to `readiness`.
    #[must_use]
    pub fn with_readiness(mut self, readiness: Arc<Readiness>, kind: KeyKind) -> Self {
        self.readiness = Some(readiness);
        self.key_kind = kind;
        self
    }

    /// parse-server answered 403 to a request with the key.
    fn refused(&self, server: Option<SocketAddr>) {
        let first = !self.refusal.refused.swap(true, Ordering::Relaxed);
        let log = {
            let mut last = self.refusal.last_logged.lock();
            let due = last.is_none_or(|at| at.elapsed() >= REFUSAL_LOG_INTERVAL);
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        if !first && !log {
            return;
        }
        let message = self.refusal_message(server);
        if let Some(readiness) = &self.readiness {
            readiness.set_problem(READINESS_COMPONENT, message.clone());
        }
        if log {
            tracing::error!(parse_server = ?server, "{message}");
        }
    }

    /// parse-server accepted a request with the key.
    fn accepted(&self) {
        if self.refusal.refused.swap(false, Ordering::Relaxed) {
            *self.refusal.last_logged.lock() = None;
            if let Some(readiness) = &self.readiness {
                readiness.clear_problem(READINESS_COMPONENT);
            }
            tracing::info!("parse-server accepts livequery's key again");
        }
    }

    fn refusal_message(&self, server: Option<SocketAddr>) -> String {
        let (key, option, default, instead) = match self.key_kind {
            KeyKind::Master => (
                "master key",
                "masterKeyIps",
                "127.0.0.1 and ::1 only",
                " Or give livequery parse-server's readOnlyMasterKey (parse.read_only_master_key), which parse-server accepts from any address unless readOnlyMasterKeyIps says otherwise.",
            ),
            KeyKind::ReadOnly => (
                "read-only master key",
                "readOnlyMasterKeyIps",
                "any address",
                "",
            ),
        };
        let from = match server.and_then(|server| local_address_towards(server.ip())) {
            Some(ip) => format!(
                " ({ip} as seen from here; parse-server sees the address after any proxy or NAT)"
            ),
            None => String::new(),
        };
        format!(
            "parse-server refused livequery's {key} (HTTP 403): sessions, roles and permissions cannot be read, so every subscriber is treated as anonymous. Add the address livequery connects from{from} to parse-server's {option} option (default: {default}).{instead} If it is listed, check that parse.app_id and the key match parse-server's."
        )
    }

    /// Sends a request; `body` (a query's constraints) goes in the body of a `POST` that
    /// parse-server treats as a `GET`. Errors never carry the URL.
    async fn request(
        &self,
        path: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, Value), LookupError> {
        // Never closed; held until the answer is read (the connection is busy until then).
        let _slot = self
            .in_flight
            .acquire()
            .await
            .map_err(|_| LookupError(format!("{path}: the client is shutting down")))?;
        let url = format!("{}{path}", self.base);
        let request = match body {
            None => self.http.get(url),
            Some(mut body) => {
                body["_method"] = Value::from("GET");
                self.http.post(url).json(&body)
            }
        };
        let response = request
            .header("X-Parse-Application-Id", &self.app_id)
            .header("X-Parse-Master-Key", &self.master_key)
            .send()
            .await
            .map_err(|e| LookupError(format!("{path}: {}", e.without_url())))?;
        let status = response.status();
        if status == StatusCode::FORBIDDEN {
            self.refused(response.remote_addr());
        } else if status.is_success() {
            self.accepted();
        }
        let body: Value = response
            .json()
            .await
            .map_err(|e| LookupError(format!("{path}: bad response body: {}", e.without_url())))?;
        Ok((status, body))
    }

    async fn find(
        &self,
        class_name: &str,
        where_: &Value,
        extra: &[(&str, Value)],
    ) -> Result<Vec<Value>, LookupError> {
        let path = format!(
            "/classes/{}",
            crate::encoding::encode_path_segment(class_name)
        );
        let mut query = json!({ "where": where_ });
        for (key, value) in extra {
            query[*key] = value.clone();
        }
        match self.request(&path, Some(query)).await? {
            (status, body) if status.is_success() => match body.get("results") {
                Some(Value::Array(results)) => Ok(results.clone()),
                _ => Err(LookupError(format!("{path}: no results array"))),
            },
            (status, body) => Err(LookupError(format!(
                "{path}: {status} {}",
                error_text(&body)
            ))),
        }
    }

    async fn role_ids_and_names(
        &self,
        where_: Value,
    ) -> Result<Vec<(String, String)>, LookupError> {
        let mut found = Vec::new();
        for page in 0.. {
            let results = self
                .find(
                    "_Role",
                    &where_,
                    &[
                        ("keys", json!("name")),
                        ("limit", json!(ROLE_PAGE)),
                        ("skip", json!(page * ROLE_PAGE)),
                        ("order", json!("objectId")),
                    ],
                )
                .await?;
            let done = results.len() < ROLE_PAGE;
            found.extend(results.iter().filter_map(|role| {
                Some((
                    role.get("objectId")?.as_str()?.to_owned(),
                    role.get("name")?.as_str()?.to_owned(),
                ))
            }));
            if done || found.len() >= roles::MAX_ROLES {
                break;
            }
        }
        Ok(found)
    }

    /// Role names of `user_id`, inherited ones included.
    pub async fn roles_of(&self, user_id: &str) -> Result<Vec<String>, LookupError> {
        let direct = self
            .role_ids_and_names(
                json!({"users": {"__type": "Pointer", "className": "_User", "objectId": user_id}}),
            )
            .await?;
        let all = roles::closure(direct, |frontier| {
            let pointers: Vec<Value> = frontier
                .iter()
                .map(|id| json!({"__type": "Pointer", "className": "_Role", "objectId": id}))
                .collect();
            self.role_ids_and_names(json!({"roles": {"$in": pointers}}))
        })
        .await?;
        Ok(all.into_iter().map(|(_, name)| name).collect())
    }
}

/// The error parse-server answered with (`{code, error}`), without echoing anything else
/// of the response.
fn error_text(body: &Value) -> String {
    match (body.get("code"), body.get("error").and_then(Value::as_str)) {
        (Some(code), Some(error)) => format!("code {code}: {error}"),
        (None, Some(error)) => error.to_owned(),
        _ => "unexpected response".to_owned(),
    }
}

/// The local address this host would use to reach `server` (no packet is sent: connecting
/// a UDP socket only picks a route).
fn local_address_towards(server: IpAddr) -> Option<IpAddr> {
    let any: SocketAddr = match server {
        IpAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = std::net::UdpSocket::bind(any).ok()?;
    socket.connect((server, 9)).ok()?;
    Some(socket.local_addr().ok()?.ip())
}

#[async_trait]
impl IdentityProvider for ParseRest {
    async fn resolve_session(&self, token: &str) -> Result<Option<ResolvedUser>, LookupError> {
        let sessions = self
            .find(
                "_Session",
                &json!({"sessionToken": token}),
                &[("limit", json!(1))],
            )
            .await?;
        let Some(session) = sessions
            .first()
            .and_then(Value::as_object)
            .and_then(SessionRecord::from_object)
        else {
            return Ok(None);
        };
        let Some(user_id) = session
            .user_id
            .as_deref()
            .filter(|_| session.is_valid_now())
        else {
            return Ok(None);
        };
        let roles = self.roles_of(user_id).await?;
        Ok(Some(ResolvedUser {
            user_id: user_id.to_owned(),
            roles,
        }))
    }

    async fn class_permissions(&self, class_name: &str) -> Result<Option<Value>, LookupError> {
        let path = format!(
            "/schemas/{}",
            crate::encoding::encode_path_segment(class_name)
        );
        match self.request(&path, None).await? {
            (status, body) if status.is_success() => Ok(body.get("classLevelPermissions").cloned()),
            // Class not found (code 103): no schema yet, nothing restricted.
            (status, body)
                if status == StatusCode::BAD_REQUEST
                    && body.get("code").and_then(Value::as_u64) == Some(103) =>
            {
                Ok(None)
            }
            (status, _) if status == StatusCode::NOT_FOUND => Ok(None),
            (status, body) => Err(LookupError(format!(
                "{path}: {status} {}",
                error_text(&body)
            ))),
        }
    }
}

#[async_trait]
impl ObjectReader for ParseRest {
    async fn find(
        &self,
        class_name: &str,
        where_: &Map<String, Value>,
        _query: &livequery_matcher::Query,
        limit: usize,
    ) -> anyhow::Result<Vec<Map<String, Value>>> {
        let results = ParseRest::find(
            self,
            class_name,
            &Value::Object(where_.clone()),
            &[("limit", json!(limit))],
        )
        .await?;
        Ok(results
            .into_iter()
            .filter_map(|result| match result {
                Value::Object(mut object) => {
                    object.insert("className".into(), class_name.into());
                    Some(object)
                }
                _ => None,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_http::{answer_json, read_request};

    const TOKEN: &str = "r:0123456789abcdef";

    fn contains_token(text: &str) -> bool {
        text.contains(TOKEN)
            || text.contains("r%3A0123456789abcdef")
            || text.contains("0123456789abcdef")
    }

    /// A failed lookup's error (which is logged) never carries the token.
    #[tokio::test]
    async fn lookup_errors_do_not_carry_the_token() {
        // Nothing listens on port 9 of the loopback: the connection is refused.
        let rest = ParseRest::new(
            "http://127.0.0.1:9/parse",
            "app",
            "mk",
            Duration::from_secs(2),
        )
        .expect("client");
        let err = rest.resolve_session(TOKEN).await.expect_err("refused");
        assert!(!contains_token(&err.to_string()), "{err}");
    }

    /// The token travels in the body of a POST (method override), not in the URL that
    /// proxies and access logs record.
    #[tokio::test]
    async fn session_lookups_keep_the_token_out_of_the_url() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let request = read_request(&mut socket).await.expect("a request");
            answer_json(&mut socket, r#"{"results":[]}"#).await;
            request
        });
        let rest = ParseRest::new(
            &format!("http://{addr}/parse"),
            "app",
            "mk",
            Duration::from_secs(5),
        )
        .expect("client");
        assert_eq!(rest.resolve_session(TOKEN).await.expect("answered"), None);
        let request = server.await.expect("server");
        let (head, body) = request.split_once("\r\n\r\n").expect("a full request");
        let request_line = head.lines().next().unwrap_or_default();
        assert_eq!(request_line, "POST /parse/classes/_Session HTTP/1.1");
        assert!(!contains_token(head), "{head}");
        let body: Value = serde_json::from_str(body).expect("JSON body");
        assert_eq!(body["_method"], "GET");
        assert_eq!(body["where"]["sessionToken"], TOKEN);
    }
    /// A flood of distinct lookups waits for a slot instead of opening a connection each, and
    /// every lookup is answered in the end.
    #[tokio::test]
    async fn lookups_in_flight_are_bounded() {
        use std::sync::atomic::AtomicUsize;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(tokio::sync::Notify::new());
        let (counted, answer) = (connections.clone(), release.clone());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let answer = answer.clone();
                tokio::spawn(async move {
                    // Held until released; then every request on the connection is answered.
                    answer.notified().await;
                    while read_request(&mut socket).await.is_some() {
                        answer_json(&mut socket, r#"{"results":[]}"#).await;
                    }
                });
            }
        });
        let rest = ParseRest::new(
            &format!("http://{addr}/parse"),
            "app",
            "mk",
            Duration::from_secs(30),
        )
        .expect("client");
        let lookups: Vec<_> = (0..100)
            .map(|i| {
                let rest = rest.clone();
                tokio::spawn(async move { rest.resolve_session(&format!("r:{i}")).await })
            })
            .collect();
        // Wait for the slots to fill, then give the others time to (wrongly) connect too.
        while connections.load(Ordering::SeqCst) < MAX_REQUESTS_IN_FLIGHT {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(connections.load(Ordering::SeqCst), MAX_REQUESTS_IN_FLIGHT);
        release.notify_waiters();
        // Connections opened from now on are released at once.
        let keep_releasing = tokio::spawn(async move {
            loop {
                release.notify_waiters();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        for lookup in lookups {
            assert_eq!(lookup.await.expect("task").expect("answered"), None);
        }
        keep_releasing.abort();
        assert!(connections.load(Ordering::SeqCst) <= 2 * MAX_REQUESTS_IN_FLIGHT);
    }
}
