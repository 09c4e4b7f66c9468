//! Cloud Code LiveQuery hooks: parse-server's `Parse.Cloud.beforeConnect`,
//! `Parse.Cloud.beforeSubscribe` and `Parse.Cloud.afterLiveQueryEvent`, called over HTTP —
//! as a Cloud Function of the parse-server deployment, or as a webhook in parse-server's
//! webhook format (`protocol-spec/hooks.md`).
//!
//! - [`client`]: one call — the request, its timeout, the answer read as an [`Outcome`].
//! - [`after_event`]: the per-class tasks that run `afterLiveQueryEvent` off the dispatcher.
//!
//! Where each hook runs:
//! - `beforeConnect` and `beforeSubscribe` on the connection's own task, awaited there (the
//!   connection reads its next frame only after the answer, so its frames keep their order);
//! - `afterLiveQueryEvent` on a task of the class, fed by a bounded queue: the dispatcher
//!   only judges the recipients and hands the batch over. A class without a hook costs the
//!   dispatcher one lookup in an empty-or-small map, nothing else.
//!
//! Whatever a hook answers, the authorization gate decides what each reader receives: a
//! rewritten query is compiled and admitted like a client's own, a replaced object is cut to
//! each recipient's field view, secrets of included `_User` objects included.

pub mod after_event;
pub mod client;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use livequery_protocol::WireError;
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::metrics::Metrics;

pub use client::{HookClient, MAX_CALLS_IN_FLIGHT, Outcome};

/// Which of parse-server's LiveQuery triggers a hook stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Trigger {
    /// `Parse.Cloud.beforeConnect`.
    #[serde(rename = "beforeConnect")]
    BeforeConnect,
    /// `Parse.Cloud.beforeSubscribe`.
    #[serde(rename = "beforeSubscribe")]
    BeforeSubscribe,
    /// `Parse.Cloud.afterLiveQueryEvent`.
    #[serde(rename = "afterLiveQueryEvent")]
    AfterLiveQueryEvent,
}

impl Trigger {
    /// Every trigger, in metric order.
    pub const ALL: [Self; 3] = [
        Self::BeforeConnect,
        Self::BeforeSubscribe,
        Self::AfterLiveQueryEvent,
    ];

    /// parse-server's name of the trigger (the `triggerName` of the request).
    pub fn name(self) -> &'static str {
        match self {
            Self::BeforeConnect => "beforeConnect",
            Self::BeforeSubscribe => "beforeSubscribe",
            Self::AfterLiveQueryEvent => "afterLiveQueryEvent",
        }
    }

    /// The trigger named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    fn index(self) -> usize {
        match self {
            Self::BeforeConnect => 0,
            Self::BeforeSubscribe => 1,
            Self::AfterLiveQueryEvent => 2,
        }
    }
}

/// What a failed call (timeout, connection error, HTTP 5xx, unparsable answer) leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// As a rejection: error frame 141 `<trigger> hook failed: <reason>`.
    Reject,
    /// As if the hook had answered nothing: connect, subscribe or send unchanged.
    SendUnmodified,
    /// The event is silently not sent (`afterLiveQueryEvent` only).
    Drop,
}

impl OnFailure {
    /// The policy named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "reject" => Some(Self::Reject),
            "send_unmodified" => Some(Self::SendUnmodified),
            "drop" => Some(Self::Drop),
            _ => None,
        }
    }
}

/// Where a hook is delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// A Cloud Function of the deployment's parse-server, by name.
    Function(String),
    /// A webhook URL.
    Url(String),
}

/// One configured hook.
#[derive(Debug, Clone, Serialize)]
pub struct HookSpec {
    /// The trigger.
    pub trigger: Trigger,
    /// The class (`None` for `beforeConnect`).
    pub class_name: Option<String>,
    /// Where it is delivered.
    pub target: Target,
    /// How long one call may take.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// What a failed call leads to.
    pub on_failure: OnFailure,
}

/// Counters of hook calls by trigger and outcome, and their durations.
#[derive(Debug, Default)]
pub struct HookMetrics {
    calls: [[std::sync::atomic::AtomicU64; 4]; 3],
    /// Call durations by trigger.
    pub durations: [crate::metrics::Histogram; 3],
    /// `afterLiveQueryEvent` batches refused by a full hook queue (their failure policy was
    /// applied on the dispatcher).
    pub queue_full: std::sync::atomic::AtomicU64,
}

/// The `outcome` label of a hook call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    /// Answered.
    Ok,
    /// Deliberately rejected.
    Rejected,
    /// Failed (connection error, HTTP 5xx, unparsable answer, or a full hook queue).
    Failed,
    /// No answer within the hook's timeout.
    Timeout,
}

impl CallOutcome {
    const ALL: [Self; 4] = [Self::Ok, Self::Rejected, Self::Failed, Self::Timeout];

    fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Rejected => "rejected",
            Self::Failed => "failed",
            Self::Timeout => "timeout",
        }
    }

    fn index(self) -> usize {
        match self {
            Self::Ok => 0,
            Self::Rejected => 1,
            Self::Failed => 2,
            Self::Timeout => 3,
        }
    }
}

impl HookMetrics {
    /// Counts one call.
    pub fn count(&self, trigger: Trigger, outcome: CallOutcome) {
        self.calls[trigger.index()][outcome.index()].fetch_add(1, Relaxed);
    }

    /// Reads one counter.
    pub fn calls(&self, trigger: Trigger, outcome: CallOutcome) -> u64 {
        self.calls[trigger.index()][outcome.index()].load(Relaxed)
    }

    /// Writes `livequery_hook_calls_total`, `livequery_hook_duration_seconds` and
    /// `livequery_hook_queue_full_total`.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let _ = writeln!(
            out,
            "# HELP livequery_hook_calls_total Cloud Code hook calls, by trigger and outcome.\n# TYPE livequery_hook_calls_total counter"
        );
        for trigger in Trigger::ALL {
            for outcome in CallOutcome::ALL {
                let _ = writeln!(
                    out,
                    "livequery_hook_calls_total{{trigger=\"{}\",outcome=\"{}\"}} {}",
                    trigger.name(),
                    outcome.label(),
                    self.calls(trigger, outcome)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP livequery_hook_queue_full_total afterLiveQueryEvent batches refused by a full hook queue (their failure policy applied at once).\n# TYPE livequery_hook_queue_full_total counter\nlivequery_hook_queue_full_total {}",
            self.queue_full.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP livequery_hook_duration_seconds Duration of Cloud Code hook calls, by trigger.\n# TYPE livequery_hook_duration_seconds histogram"
        );
        for trigger in Trigger::ALL {
            self.durations[trigger.index()].render_labelled(
                out,
                "livequery_hook_duration_seconds",
                &format!("trigger=\"{}\"", trigger.name()),
            );
        }
    }
}

/// One hook, ready to call.
#[derive(Debug)]
pub struct Hook {
    /// Its configuration.
    pub spec: HookSpec,
    client: Arc<HookClient>,
    metrics: Arc<Metrics>,
}

/// What the server does with a hook's call.
#[derive(Debug)]
pub enum Decision {
    /// Proceed with the hook's answer (`Value::Null`: unchanged).
    Proceed(Value),
    /// Send this error frame instead.
    Reject(WireError),
    /// Send nothing (`afterLiveQueryEvent` with `on_failure = "drop"`).
    Drop,
}

impl Hook {
    /// Calls the hook with `request` and applies its failure policy; counts the call.
    pub async fn decide(&self, request: &Value) -> Decision {
        let started = Instant::now();
        let outcome = self
            .client
            .call(&self.spec.target, request, self.spec.timeout)
            .await;
        let trigger = self.spec.trigger;
        let hooks = &self.metrics.hooks;
        hooks.durations[trigger.index()].observe(started.elapsed());
        match outcome {
            Outcome::Answer(answer) => {
                hooks.count(trigger, CallOutcome::Ok);
                Decision::Proceed(answer)
            }
            Outcome::Rejected { code, message } => {
                hooks.count(trigger, CallOutcome::Rejected);
                Decision::Reject(WireError::hook_rejection(code, message))
            }
            Outcome::Failed { reason, timed_out } => {
                let outcome = if timed_out {
                    CallOutcome::Timeout
                } else {
                    CallOutcome::Failed
                };
                hooks.count(trigger, outcome);
                tracing::warn!(trigger = trigger.name(), class = ?self.spec.class_name, %reason, "a hook call failed");
                self.failure(&reason)
            }
        }
    }

    /// The failure policy applied to a call that failed for `reason`.
    pub fn failure(&self, reason: &str) -> Decision {
        match self.spec.on_failure {
            OnFailure::Reject => {
                Decision::Reject(WireError::hook_failed(self.spec.trigger.name(), reason))
            }
            OnFailure::SendUnmodified => Decision::Proceed(Value::Null),
            OnFailure::Drop => Decision::Drop,
        }
    }
}

/// Every configured hook, by trigger and class.
#[derive(Debug, Default)]
pub struct Hooks {
    before_connect: Option<Arc<Hook>>,
    before_subscribe: HashMap<String, Arc<Hook>>,
    after_event: HashMap<String, Arc<Hook>>,
}

impl Hooks {
    /// The hooks of `specs`, delivered by `client`.
    pub fn new(specs: &[HookSpec], client: &Arc<HookClient>, metrics: &Arc<Metrics>) -> Self {
        let mut hooks = Self::default();
        for spec in specs {
            let hook = Arc::new(Hook {
                spec: spec.clone(),
                client: client.clone(),
                metrics: metrics.clone(),
            });
            let class = spec.class_name.clone().unwrap_or_default();
            match spec.trigger {
                Trigger::BeforeConnect => hooks.before_connect = Some(hook),
                Trigger::BeforeSubscribe => {
                    hooks.before_subscribe.insert(class, hook);
                }
                Trigger::AfterLiveQueryEvent => {
                    hooks.after_event.insert(class, hook);
                }
            }
        }
        hooks
    }

    /// The `beforeConnect` hook.
    pub fn before_connect(&self) -> Option<&Arc<Hook>> {
        self.before_connect.as_ref()
    }

    /// The `beforeSubscribe` hook of `class_name`.
    pub fn before_subscribe(&self, class_name: &str) -> Option<&Arc<Hook>> {
        self.before_subscribe.get(class_name)
    }

    /// The `afterLiveQueryEvent` hooks, by class.
    pub fn after_event(&self) -> &HashMap<String, Arc<Hook>> {
        &self.after_event
    }
}

/// Who a hook request is about.
#[derive(Debug, Clone, Default)]
pub struct Caller<'a> {
    /// The connection presented the master key.
    pub master: bool,
    /// The `installationId` of the connection (`None` in `afterLiveQueryEvent`).
    pub installation_id: Option<&'a str>,
    /// The session token (`None` in `afterLiveQueryEvent`).
    pub session_token: Option<&'a str>,
    /// The user's objectId, when a session token resolved to one.
    pub user_id: Option<&'a str>,
}

/// The members every trigger's request has (`protocol-spec/hooks.md`).
pub fn request_base(
    trigger: Trigger,
    caller: &Caller<'_>,
    metrics: &Metrics,
) -> Map<String, Value> {
    let user = caller.user_id.map_or(
        Value::Null,
        |id| json!({"__type": "Object", "className": "_User", "objectId": id}),
    );
    let mut request = Map::new();
    request.insert("triggerName".into(), trigger.name().into());
    request.insert(
        "clients".into(),
        metrics.clients.load(Relaxed).max(0).into(),
    );
    request.insert(
        "subscriptions".into(),
        metrics.subscriptions.load(Relaxed).max(0).into(),
    );
    request.insert("useMasterKey".into(), caller.master.into());
    request.insert(
        "installationId".into(),
        caller.installation_id.map_or(Value::Null, Value::from),
    );
    request.insert(
        "sessionToken".into(),
        caller.session_token.map_or(Value::Null, Value::from),
    );
    request.insert("user".into(), user);
    request
}

/// A `requestId` as the client sent it (integers as integers).
pub fn request_id_json(request_id: livequery_protocol::RequestId) -> Value {
    let value = request_id.get();
    if value.fract() == 0.0 && value.abs() < 1e15 {
        #[allow(clippy::cast_possible_truncation)]
        Value::from(value as i64)
    } else {
        Value::from(value)
    }
}

/// Applies a `beforeSubscribe` answer to `query`: `null` or `{}` leave it; `{"query":
/// {"where"?, "keys"?, "watch"?}}` replaces each member given (`Err`: an answer of another
/// shape, a failure of the hook).
pub fn apply_query_rewrite(
    answer: Value,
    query: &mut livequery_protocol::QuerySpec,
) -> Result<(), &'static str> {
    let mut answer = match answer {
        Value::Null => return Ok(()),
        Value::Object(answer) => answer,
        _ => return Err("the answer is not a JSON object"),
    };
    let rewrite = match answer.remove("query") {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Object(rewrite)) => rewrite,
        Some(_) => return Err("the answer's query is not a JSON object"),
    };
    let fields = |value: Value| -> Result<Option<Vec<String>>, &'static str> {
        match value {
            Value::Null => Ok(None),
            Value::Array(items) => items
                .into_iter()
                .map(|item| match item {
                    Value::String(field) if !field.is_empty() => Ok(field),
                    _ => Err("the answer's keys or watch holds something else than field names"),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            _ => Err("the answer's keys or watch is not an array"),
        }
    };
    let where_ = match rewrite.get("where") {
        None => None,
        Some(Value::Object(where_)) => Some(where_.clone()),
        Some(_) => return Err("the answer's where is not a JSON object"),
    };
    let keys = rewrite.get("keys").cloned().map(fields).transpose()?;
    let watch = rewrite.get("watch").cloned().map(fields).transpose()?;
    if let Some(where_) = where_ {
        query.where_ = where_;
    }
    if let Some(keys) = keys {
        query.keys = keys;
    }
    if let Some(watch) = watch {
        query.watch = watch;
    }
    Ok(())
}
