//! Client → server frames: typed values, decoding with the reference's validation, and
//! encoding (for clients written in Rust: the example client and the load generator).

use serde_json::{Map, Value};

use crate::error::{ProtocolError, msg};
use crate::id::{ClassName, RequestId};
use crate::schema::{self, Schema};

/// One decoded client frame.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    /// `connect`: authenticate the socket and create a client.
    Connect(ConnectRequest),
    /// `subscribe`: register a query under a client-chosen `requestId`.
    Subscribe(SubscribeRequest),
    /// `update`: replace the query of an existing `requestId` (reply: `subscribed`).
    Update(SubscribeRequest),
    /// `unsubscribe`: drop a subscription.
    Unsubscribe(UnsubscribeRequest),
    /// `query`: run a subscription's query now and reply with `result` (Parse JS SDK 8
    /// `subscription.find()`; a livequery extension — the reference rejects it).
    Query(QueryRequest),
}

impl ClientMessage {
    /// The `op` string of this message.
    pub fn op(&self) -> &'static str {
        match self {
            Self::Connect(_) => "connect",
            Self::Subscribe(_) => "subscribe",
            Self::Update(_) => "update",
            Self::Unsubscribe(_) => "unsubscribe",
            Self::Query(_) => "query",
        }
    }

    /// Decodes a text frame, validating it exactly as the reference does.
    ///
    /// Two inputs the reference answers although they are not schema-valid JSON objects:
    /// an empty frame reaches its validator as a non-JSON event object (`Missing required
    /// property: op`, like a binary frame), and JSON nested deeper than
    /// [`MAX_FRAME_DEPTH`](crate::error::MAX_FRAME_DEPTH) levels gets
    /// [`ProtocolError::TooDeep`] (an error frame, never silence).
    pub fn decode(text: &str) -> Result<Self, ProtocolError> {
        if text.is_empty() {
            return Self::decode_binary(&[]);
        }
        let value: Value = serde_json::from_str(text).map_err(|e| {
            if is_recursion_limit(&e) {
                too_deep(text)
            } else {
                ProtocolError::InvalidJson(e.to_string())
            }
        })?;
        Self::from_value(value)
    }

    /// Decodes a binary frame. The reference never parses binary frames: the buffer reaches
    /// the validator as a non-JSON object and fails with `Missing required property: op`.
    pub fn decode_binary(_payload: &[u8]) -> Result<Self, ProtocolError> {
        Err(ProtocolError::Schema(
            "Missing required property: op".to_owned(),
        ))
    }

    /// Validates and converts an already-parsed JSON value.
    pub fn from_value(value: Value) -> Result<Self, ProtocolError> {
        let Value::Object(map) = value else {
            return Err(ProtocolError::Schema(
                schema::validate(&value, Schema::Object(&schema::GENERAL))
                    .err()
                    .unwrap_or_default(),
            ));
        };
        schema::validate_object(&map, &schema::GENERAL).map_err(ProtocolError::Schema)?;
        let op = map.get("op").and_then(Value::as_str).unwrap_or_default();
        let op_schema = match op {
            "connect" => &schema::CONNECT,
            "subscribe" | "update" => &schema::SUBSCRIBE,
            "unsubscribe" => &schema::UNSUBSCRIBE,
            "query" => &schema::QUERY,
            // The general schema's enum rejects every other op; keep the reference's
            // (unreachable) code-3 text rather than panicking if the two ever disagree.
            _ => return Err(ProtocolError::Schema(msg::UNKNOWN_OPERATION.to_owned())),
        };
        schema::validate_object(&map, op_schema).map_err(ProtocolError::Schema)?;
        Ok(match op {
            "connect" => Self::Connect(ConnectRequest::from_validated(map)),
            "subscribe" => Self::Subscribe(SubscribeRequest::from_validated(map)),
            "update" => Self::Update(SubscribeRequest::from_validated(map)),
            "unsubscribe" => Self::Unsubscribe(UnsubscribeRequest {
                request_id: request_id_of(&map),
            }),
            _ => Self::Query(QueryRequest {
                request_id: request_id_of(&map),
            }),
        })
    }

    /// Encodes the frame as the Parse JS SDK would send it (absent optional fields omitted).
    pub fn encode(&self) -> String {
        let mut out = Map::new();
        out.insert("op".into(), self.op().into());
        match self {
            Self::Connect(c) => {
                out.insert("applicationId".into(), c.application_id.clone().into());
                for (key, value) in c.optional_fields() {
                    if let Some(value) = value {
                        out.insert(key.into(), value.clone().into());
                    }
                }
            }
            Self::Subscribe(s) | Self::Update(s) => {
                out.insert("requestId".into(), request_id_value(s.request_id));
                let mut query = Map::new();
                query.insert("className".into(), s.query.class_name.as_str().into());
                query.insert("where".into(), Value::Object(s.query.where_.clone()));
                if let Some(keys) = &s.query.keys {
                    query.insert("keys".into(), keys.clone().into());
                }
                if let Some(watch) = &s.query.watch {
                    query.insert("watch".into(), watch.clone().into());
                }
                out.insert("query".into(), Value::Object(query));
                if let Some(token) = &s.session_token {
                    out.insert("sessionToken".into(), token.clone().into());
                }
            }
            Self::Unsubscribe(UnsubscribeRequest { request_id })
            | Self::Query(QueryRequest { request_id }) => {
                out.insert("requestId".into(), request_id_value(*request_id));
            }
        }
        Value::Object(out).to_string()
    }
}

/// Whether serde_json gave up because the input nests deeper than its recursion limit.
fn is_recursion_limit(error: &serde_json::Error) -> bool {
    error.is_syntax() && error.to_string().starts_with("recursion limit exceeded")
}

/// The top level of a frame too deep to parse: `op` and `requestId` when they are plain
/// values. Every other member is skipped without recursion (serde_json's `IgnoredAny`).
#[derive(serde::Deserialize)]
struct Head {
    op: Option<String>,
    #[serde(rename = "requestId")]
    request_id: Option<f64>,
}

fn too_deep(text: &str) -> ProtocolError {
    // Invalid JSON stays invalid JSON (silence), however deep it starts.
    if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(text) {
        return ProtocolError::InvalidJson(e.to_string());
    }
    let head: Option<Head> = serde_json::from_str(text).ok();
    let (op, request_id) = head.map_or((None, None), |h| (h.op, h.request_id));
    ProtocolError::TooDeep {
        op,
        request_id: request_id.map(RequestId::new),
    }
}

fn request_id_value(id: RequestId) -> Value {
    let value = id.get();
    if value.fract() == 0.0 && value.abs() < 9.0e15 {
        Value::from(value as i64)
    } else {
        serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number)
    }
}

fn request_id_of(map: &Map<String, Value>) -> RequestId {
    RequestId::new(
        map.get("requestId")
            .and_then(Value::as_f64)
            .unwrap_or_default(),
    )
}

fn take_string(map: &mut Map<String, Value>, key: &str) -> Option<String> {
    match map.remove(key) {
        Some(Value::String(s)) => Some(s),
        _ => None,
    }
}

fn take_string_list(map: &mut Map<String, Value>, key: &str) -> Option<Vec<String>> {
    match map.remove(key) {
        Some(Value::Array(items)) => Some(
            items
                .into_iter()
                .filter_map(|item| match item {
                    Value::String(s) => Some(s),
                    _ => None,
                })
                .collect(),
        ),
        _ => None,
    }
}

/// The `connect` frame.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectRequest {
    /// Required by the schema; whether it is compared to the server's app id is a server
    /// setting (the reference never compares it).
    pub application_id: String,
    /// Candidate key for `keyPairs.javascriptKey`.
    pub javascript_key: Option<String>,
    /// Candidate key for `keyPairs.masterKey`; grants master rights when it matches.
    pub master_key: Option<String>,
    /// Candidate key for `keyPairs.clientKey`.
    pub client_key: Option<String>,
    /// Candidate key for `keyPairs.windowsKey`.
    pub windows_key: Option<String>,
    /// Candidate key for `keyPairs.restAPIKey`.
    pub rest_api_key: Option<String>,
    /// Connection-level session token (fallback identity for every subscription).
    pub session_token: Option<String>,
    /// Echoed in every later server frame of this connection.
    pub installation_id: Option<String>,
}

impl ConnectRequest {
    fn from_validated(mut map: Map<String, Value>) -> Self {
        Self {
            application_id: take_string(&mut map, "applicationId").unwrap_or_default(),
            javascript_key: take_string(&mut map, "javascriptKey"),
            master_key: take_string(&mut map, "masterKey"),
            client_key: take_string(&mut map, "clientKey"),
            windows_key: take_string(&mut map, "windowsKey"),
            rest_api_key: take_string(&mut map, "restAPIKey"),
            session_token: take_string(&mut map, "sessionToken"),
            installation_id: take_string(&mut map, "installationId"),
        }
    }

    /// The optional string fields with their wire names, in the SDK's order.
    pub fn optional_fields(&self) -> [(&'static str, &Option<String>); 7] {
        [
            ("javascriptKey", &self.javascript_key),
            ("masterKey", &self.master_key),
            ("clientKey", &self.client_key),
            ("windowsKey", &self.windows_key),
            ("restAPIKey", &self.rest_api_key),
            ("sessionToken", &self.session_token),
            ("installationId", &self.installation_id),
        ]
    }

    /// The key candidates (`keyPairs` names and values) this frame presents.
    pub fn presented_keys(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("javascriptKey", &self.javascript_key),
            ("masterKey", &self.master_key),
            ("clientKey", &self.client_key),
            ("windowsKey", &self.windows_key),
            ("restAPIKey", &self.rest_api_key),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.as_deref().map(|value| (name, value)))
    }
}

/// The `subscribe` and `update` frames.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscribeRequest {
    /// Client-chosen subscription id.
    pub request_id: RequestId,
    /// What to watch.
    pub query: QuerySpec,
    /// Subscription-level session token; takes precedence over the connection's token.
    pub session_token: Option<String>,
}

impl SubscribeRequest {
    fn from_validated(mut map: Map<String, Value>) -> Self {
        let request_id = request_id_of(&map);
        let query = match map.remove("query") {
            Some(Value::Object(query)) => QuerySpec::from_validated(query),
            _ => QuerySpec::default(),
        };
        Self {
            request_id,
            query,
            session_token: take_string(&mut map, "sessionToken"),
        }
    }
}

/// The `query` object of a `subscribe`/`update` frame.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QuerySpec {
    /// The class to watch (`_User`, `_Session`, … included).
    pub class_name: ClassName,
    /// Parse REST `where` JSON.
    pub where_: Map<String, Value>,
    /// Field projection for event payloads.
    pub keys: Option<Vec<String>>,
    /// Only fire `create`/`update` when one of these fields changed.
    pub watch: Option<Vec<String>>,
}

impl QuerySpec {
    fn from_validated(mut map: Map<String, Value>) -> Self {
        Self {
            class_name: take_string(&mut map, "className")
                .unwrap_or_default()
                .into(),
            where_: match map.remove("where") {
                Some(Value::Object(where_)) => where_,
                _ => Map::new(),
            },
            keys: take_string_list(&mut map, "keys"),
            watch: take_string_list(&mut map, "watch"),
        }
    }
}

/// The `unsubscribe` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnsubscribeRequest {
    /// The subscription to drop.
    pub request_id: RequestId,
}

/// The `query` frame (livequery extension for `subscription.find()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryRequest {
    /// The subscription whose query to run.
    pub request_id: RequestId,
}
