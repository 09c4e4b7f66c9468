//! One hook call over HTTP: a Cloud Function of parse-server (`POST
//! {server_url}/functions/<name>` with the application id and the master key) or a webhook
//! (`POST <url>` with `X-Parse-Webhook-Key`), the request JSON as the body, the answer read
//! as an [`Outcome`]. Errors never carry the URL (a webhook URL may hold a secret).

use std::time::Duration;

use serde_json::Value;
use tokio::sync::Semaphore;

use super::Target;

/// The most of an answer read; a longer one is a failure.
const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// What one call gave.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The hook answered `X` (`{"result": X}` / `{"success": X}`).
    Answer(Value),
    /// The hook deliberately refused: a Cloud Function threw (HTTP 400 `{"code","error"}`)
    /// or a webhook answered `{"error": ...}`.
    Rejected {
        /// The Parse error code (141 when the hook gave none).
        code: u32,
        /// The message.
        message: String,
    },
    /// No usable answer.
    Failed {
        /// Why, without the URL.
        reason: String,
        /// The call took longer than its timeout.
        timed_out: bool,
    },
}

impl Outcome {
    fn failed(reason: impl Into<String>) -> Self {
        Self::Failed {
            reason: reason.into(),
            timed_out: false,
        }
    }
}

/// Hook calls in flight at once, all hooks together (beforeConnect at a connect flood,
/// afterLiveQueryEvent once per identity of an event): calls beyond wait for a slot, within
/// their timeout, so the calls never hold more than this many of the server's reserved file
/// descriptors (`capacity::INTERNAL_FDS`).
pub const MAX_CALLS_IN_FLIGHT: usize = 32;

/// Delivers hook calls.
#[derive(Debug)]
pub struct HookClient {
    http: reqwest::Client,
    /// At most [`MAX_CALLS_IN_FLIGHT`] calls at once.
    in_flight: Semaphore,
    /// `{server_url}/functions/` (empty: no Cloud Function can be called).
    functions_base: String,
    app_id: String,
    master_key: String,
    webhook_key: String,
}

impl HookClient {
    /// A client calling Cloud Functions under `server_url` (with `app_id` and `master_key`)
    /// and webhooks with `webhook_key`.
    pub fn new(
        server_url: &str,
        app_id: &str,
        master_key: &str,
        webhook_key: &str,
    ) -> anyhow::Result<Self> {
        // reqwest uses rustls without a built-in provider; install ring once per process.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .user_agent(concat!("livequery/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let functions_base = if server_url.is_empty() {
            String::new()
        } else {
            format!("{}/functions/", server_url.trim_end_matches('/'))
        };
        Ok(Self {
            http,
            in_flight: Semaphore::new(MAX_CALLS_IN_FLIGHT),
            functions_base,
            app_id: app_id.to_owned(),
            master_key: master_key.to_owned(),
            webhook_key: webhook_key.to_owned(),
        })
    }

    /// Calls `target` with `request`, waiting at most `timeout` for the whole answer.
    pub async fn call(&self, target: &Target, request: &Value, timeout: Duration) -> Outcome {
        match tokio::time::timeout(timeout, self.exchange(target, request)).await {
            Ok(outcome) => outcome,
            Err(_) => Outcome::Failed {
                reason: format!("no answer within {timeout:?}"),
                timed_out: true,
            },
        }
    }

    async fn exchange(&self, target: &Target, request: &Value) -> Outcome {
        let Ok(_slot) = self.in_flight.acquire().await else {
            return Outcome::failed("the hook client is shutting down");
        };
        let builder = match target {
            Target::Function(name) => self
                .http
                .post(format!("{}{name}", self.functions_base))
                .header("X-Parse-Application-Id", &self.app_id)
                .header("X-Parse-Master-Key", &self.master_key),
            Target::Url(url) => self
                .http
                .post(url)
                .header("X-Parse-Webhook-Key", &self.webhook_key),
        };
        let response = match builder.json(request).send().await {
            Ok(response) => response,
            Err(err) => return Outcome::failed(err.without_url().to_string()),
        };
        let status = response.status();
        let body = match read_limited(response).await {
            Ok(body) => body,
            Err(reason) => return Outcome::failed(reason),
        };
        let answer: Option<Value> = serde_json::from_slice(&body).ok();
        match target {
            Target::Function(_) => function_outcome(status, answer),
            Target::Url(_) => webhook_outcome(status, answer),
        }
    }
}

async fn read_limited(mut response: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                    return Err(format!("answer larger than {MAX_ANSWER_BYTES} bytes"));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(err) => return Err(err.without_url().to_string()),
        }
    }
}

/// parse-server's answer to a Cloud Function call: 200 `{"result": X}`, or a thrown error
/// as `{"code": n, "error": "message"}` (HTTP 400).
fn function_outcome(status: reqwest::StatusCode, answer: Option<Value>) -> Outcome {
    if status.is_server_error() {
        return Outcome::failed(format!("HTTP {}", status.as_u16()));
    }
    let Some(Value::Object(mut answer)) = answer else {
        return Outcome::failed(format!(
            "HTTP {}: the answer is not a JSON object",
            status.as_u16()
        ));
    };
    if status.is_success() {
        return match answer.remove("result") {
            Some(result) => Outcome::Answer(result),
            None => Outcome::failed("the answer has no \"result\""),
        };
    }
    match (
        answer.get("code").and_then(Value::as_u64),
        answer.get("error"),
    ) {
        (Some(code), Some(Value::String(message))) => Outcome::Rejected {
            code: u32::try_from(code).unwrap_or(141),
            message: message.clone(),
        },
        _ => Outcome::failed(format!("HTTP {}", status.as_u16())),
    }
}

/// A webhook's answer, as parse-server reads a Cloud Code webhook's: `{"success": X}`, or
/// `{"error": "message"}` / `{"error": {"code": n, "message": "..."}}`.
fn webhook_outcome(status: reqwest::StatusCode, answer: Option<Value>) -> Outcome {
    let rejection = |error: &Value| match error {
        Value::String(message) => Some(Outcome::Rejected {
            code: 141,
            message: message.clone(),
        }),
        Value::Object(error) => Some(Outcome::Rejected {
            code: error
                .get("code")
                .and_then(Value::as_u64)
                .and_then(|c| u32::try_from(c).ok())
                .unwrap_or(141),
            message: error
                .get("message")
                .or_else(|| error.get("error"))
                .and_then(Value::as_str)
                .unwrap_or("Script failed.")
                .to_owned(),
        }),
        _ => None,
    };
    match answer {
        Some(Value::Object(answer)) => {
            if let Some(outcome) = answer.get("error").and_then(rejection) {
                return outcome;
            }
            if !status.is_success() {
                return Outcome::failed(format!("HTTP {}", status.as_u16()));
            }
            match answer.get("success") {
                Some(success) => Outcome::Answer(success.clone()),
                None => Outcome::failed("the answer has neither \"success\" nor \"error\""),
            }
        }
        _ if !status.is_success() => Outcome::failed(format!("HTTP {}", status.as_u16())),
        _ => Outcome::failed("the answer is not a JSON object"),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn answers_are_read_as_parse_server_writes_them() {
        let ok = reqwest::StatusCode::OK;
        let bad = reqwest::StatusCode::BAD_REQUEST;
        let down = reqwest::StatusCode::BAD_GATEWAY;
        assert_eq!(
            function_outcome(ok, Some(json!({"result": {"a": 1}}))),
            Outcome::Answer(json!({"a": 1}))
        );
        assert_eq!(
            function_outcome(bad, Some(json!({"code": 141, "error": "no"}))),
            Outcome::Rejected {
                code: 141,
                message: "no".into()
            }
        );
        assert!(matches!(
            function_outcome(down, Some(json!({"code": 1, "error": "x"}))),
            Outcome::Failed { .. }
        ));
        assert!(matches!(
            function_outcome(ok, Some(json!({"results": []}))),
            Outcome::Failed { .. }
        ));
        assert_eq!(
            webhook_outcome(ok, Some(json!({"success": null}))),
            Outcome::Answer(Value::Null)
        );
        assert_eq!(
            webhook_outcome(ok, Some(json!({"error": "nope"}))),
            Outcome::Rejected {
                code: 141,
                message: "nope".into()
            }
        );
        assert_eq!(
            webhook_outcome(bad, Some(json!({"error": {"code": 3000, "message": "m"}}))),
            Outcome::Rejected {
                code: 3000,
                message: "m".into()
            }
        );
        assert!(matches!(
            webhook_outcome(down, None),
            Outcome::Failed { .. }
        ));
        assert!(matches!(
            webhook_outcome(ok, Some(json!([1]))),
            Outcome::Failed { .. }
        ));
    }
    /// A burst of calls (a connect flood with a beforeConnect hook) waits for a slot instead
    /// of opening a connection each; every call is answered in the end.
    #[tokio::test]
    async fn calls_in_flight_are_bounded() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};

        use crate::test_http::{answer_json, read_request};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let released = Arc::new(tokio::sync::Semaphore::new(0));
        let (counted, gate) = (connections.clone(), released.clone());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let gate = gate.clone();
                tokio::spawn(async move {
                    // Held until released; then every request on the connection is answered.
                    let _open = gate.acquire().await;
                    while read_request(&mut socket).await.is_some()
                        && answer_json(&mut socket, r#"{"success":{}}"#).await
                    {}
                });
            }
        });
        let client = Arc::new(HookClient::new("", "app", "mk", "key").expect("client"));
        let target = Target::Url(format!("http://{addr}/hook"));
        let calls: Vec<_> = (0..100)
            .map(|i| {
                let (client, target) = (client.clone(), target.clone());
                tokio::spawn(async move {
                    client
                        .call(&target, &json!({"n": i}), Duration::from_secs(60))
                        .await
                })
            })
            .collect();
        // Wait for the slots to fill, then give the others time to (wrongly) connect too.
        while connections.load(Ordering::SeqCst) < MAX_CALLS_IN_FLIGHT {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(connections.load(Ordering::SeqCst), MAX_CALLS_IN_FLIGHT);
        released.add_permits(10_000);
        for call in calls {
            assert_eq!(call.await.expect("task"), Outcome::Answer(json!({})));
        }
        assert!(connections.load(Ordering::SeqCst) <= 2 * MAX_CALLS_IN_FLIGHT);
    }
}
