//! Server → client frames.
//!
//! Encoding is built for fan-out: an event's object is serialized once into an
//! [`EncodedObject`] (shared, reference-counted bytes) and every recipient's frame is the
//! object bytes framed by a tiny per-recipient envelope. The envelope of a connection
//! (`clientId`, `installationId`) is rendered once, at `connect`, into an [`Envelope`].
//! The server queues event frames as [`EventFrame`](crate::EventFrame)s, their parts, and
//! writes their text only when it writes them to a socket; [`ServerMessage::Event`] encodes
//! the same text whole.
//!
//! Shapes follow the reference byte for byte where it matters: keys in the order
//! `op, clientId, installationId, requestId, object, original`; optional fields absent
//! (never `null`); error frames without `clientId`/`installationId` and with
//! `requestId: null` when they concern no subscription.

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::error::{ErrorCode, WireError};
use crate::id::{ClientId, RequestId};

/// The JSON text of one Parse object, serialized once and shared by every frame that
/// carries it.
#[derive(Clone, PartialEq, Eq)]
pub struct EncodedObject(Bytes);

impl EncodedObject {
    /// Serializes an object map.
    pub fn from_map(map: &Map<String, Value>) -> Self {
        let mut out = Vec::with_capacity(256);
        write_json(&mut out, map);
        Self(Bytes::from(out))
    }

    /// Serializes the given entries as one JSON object, in order (used to serialize a
    /// filtered view of an object without copying it first).
    pub fn from_entries<'a>(entries: impl Iterator<Item = (&'a String, &'a Value)>) -> Self {
        let mut out = Vec::with_capacity(256);
        out.push(b'{');
        for (i, (key, value)) in entries.enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_json(&mut out, key.as_str());
            out.push(b':');
            write_json(&mut out, value);
        }
        out.push(b'}');
        Self(Bytes::from(out))
    }

    /// The JSON bytes (a JSON object).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Length of the JSON text in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the JSON text is empty (never true for objects built by this crate).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `other` shares these very bytes (a clone of this object), not merely equal
    /// ones.
    pub fn same_bytes(&self, other: &Self) -> bool {
        std::ptr::eq(self.0.as_ptr(), other.0.as_ptr()) && self.0.len() == other.0.len()
    }
}

impl std::fmt::Debug for EncodedObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("EncodedObject")
            .field(&String::from_utf8_lossy(&self.0))
            .finish()
    }
}

fn write_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    // Serializing `serde_json::Value`s and strings into a Vec cannot fail: every map key
    // is a string and I/O into a Vec is infallible.
    serde_json::to_writer(out, value).expect("serializing JSON values into memory cannot fail");
}

/// The per-connection part of every frame: `"clientId":"…"` and, when the client sent
/// one on `connect`, `"installationId":"…"`, rendered once.
#[derive(Clone, PartialEq, Eq)]
pub struct Envelope {
    client_id: ClientId,
    installation_id: Option<Box<str>>,
    rendered: Box<[u8]>,
}

impl Envelope {
    /// Renders the envelope of a connection.
    pub fn new(client_id: ClientId, installation_id: Option<&str>) -> Self {
        let mut rendered = Vec::with_capacity(64);
        rendered.extend_from_slice(b"\"clientId\":");
        write_json(&mut rendered, client_id.as_str());
        if let Some(installation_id) = installation_id {
            rendered.extend_from_slice(b",\"installationId\":");
            write_json(&mut rendered, installation_id);
        }
        Self {
            client_id,
            installation_id: installation_id.map(Into::into),
            rendered: rendered.into_boxed_slice(),
        }
    }

    /// The client id.
    pub fn client_id(&self) -> &ClientId {
        &self.client_id
    }

    /// The installation id echoed in every frame, if any.
    pub fn installation_id(&self) -> Option<&str> {
        self.installation_id.as_deref()
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.rendered);
    }

    /// `"clientId":"…"` and the installation id, if any, as written in frames.
    pub(crate) fn rendered(&self) -> &[u8] {
        &self.rendered
    }
}

impl std::fmt::Debug for Envelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Envelope")
            .field("client_id", &self.client_id)
            .field("installation_id", &self.installation_id)
            .finish()
    }
}

/// The five event ops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventOp {
    /// A new object matches.
    Create,
    /// An existing object started to match (or became readable).
    Enter,
    /// A matching object changed and still matches.
    Update,
    /// A matching object stopped matching (or became unreadable).
    Leave,
    /// A matching object was deleted.
    Delete,
}

impl EventOp {
    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Enter => "enter",
            Self::Update => "update",
            Self::Leave => "leave",
            Self::Delete => "delete",
        }
    }

    /// Parses a wire name.
    pub fn parse(op: &str) -> Option<Self> {
        Some(match op {
            "create" => Self::Create,
            "enter" => Self::Enter,
            "update" => Self::Update,
            "leave" => Self::Leave,
            "delete" => Self::Delete,
            _ => return None,
        })
    }
}

/// One server frame, borrowed from its parts, ready to encode.
#[derive(Debug, Clone, Copy)]
pub enum ServerMessage<'a> {
    /// Reply to a successful `connect`.
    Connected {
        /// The connection's envelope.
        envelope: &'a Envelope,
    },
    /// Reply to a successful `subscribe` or `update`.
    Subscribed {
        /// The connection's envelope.
        envelope: &'a Envelope,
        /// The subscription.
        request_id: RequestId,
    },
    /// Reply to a successful `unsubscribe`.
    Unsubscribed {
        /// The connection's envelope.
        envelope: &'a Envelope,
        /// The subscription.
        request_id: RequestId,
    },
    /// An event for one subscription.
    Event {
        /// Which event.
        op: EventOp,
        /// The connection's envelope.
        envelope: &'a Envelope,
        /// The subscription.
        request_id: RequestId,
        /// The object (after the change; for `delete` the last state).
        object: &'a EncodedObject,
        /// The object before the change (`enter`, `update`, `leave`).
        original: Option<&'a EncodedObject>,
    },
    /// Reply to `query`: the objects currently matching the subscription.
    Result {
        /// The connection's envelope.
        envelope: &'a Envelope,
        /// The subscription.
        request_id: RequestId,
        /// Matching objects, each already filtered for the subscriber.
        results: &'a [EncodedObject],
    },
    /// An error; never carries `clientId`/`installationId`.
    Error {
        /// What went wrong.
        error: &'a WireError,
        /// The subscription concerned, or `None` (sent as `null`).
        request_id: Option<RequestId>,
    },
}

impl ServerMessage<'_> {
    /// The `op` string.
    pub fn op(&self) -> &'static str {
        match self {
            Self::Connected { .. } => "connected",
            Self::Subscribed { .. } => "subscribed",
            Self::Unsubscribed { .. } => "unsubscribed",
            Self::Event { op, .. } => op.as_str(),
            Self::Result { .. } => "result",
            Self::Error { .. } => "error",
        }
    }

    /// Encodes the frame into a fresh buffer sized for it (event frames, the bulk of what
    /// is queued for clients, exactly: a queued frame holds no spare capacity).
    pub fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(self.size_hint());
        self.encode_into(&mut out);
        Bytes::from(out)
    }

    fn size_hint(&self) -> usize {
        const ENVELOPE: usize = 160;
        match self {
            Self::Event {
                op,
                envelope,
                request_id,
                object,
                original,
            } => {
                br#"{"op":""#.len()
                    + op.as_str().len()
                    + br#"","#.len()
                    + envelope.rendered.len()
                    + br#","requestId":"#.len()
                    + request_id.written_len()
                    + br#","object":"#.len()
                    + object.len()
                    + original.map_or(0, |o| br#","original":"#.len() + o.len())
                    + 1
            }
            Self::Result { results, .. } => {
                ENVELOPE + results.iter().map(|r| r.len() + 1).sum::<usize>()
            }
            Self::Error { error, .. } => 96 + error.message.len(),
            _ => ENVELOPE,
        }
    }

    /// Appends the frame's JSON text to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"op\":\"");
        out.extend_from_slice(self.op().as_bytes());
        out.push(b'"');
        match self {
            Self::Connected { envelope } => {
                out.push(b',');
                envelope.write(out);
            }
            Self::Subscribed {
                envelope,
                request_id,
            }
            | Self::Unsubscribed {
                envelope,
                request_id,
            } => {
                out.push(b',');
                envelope.write(out);
                write_request_id(out, *request_id);
            }
            Self::Event {
                envelope,
                request_id,
                object,
                original,
                ..
            } => {
                out.push(b',');
                envelope.write(out);
                write_request_id(out, *request_id);
                out.extend_from_slice(b",\"object\":");
                out.extend_from_slice(object.as_bytes());
                if let Some(original) = original {
                    out.extend_from_slice(b",\"original\":");
                    out.extend_from_slice(original.as_bytes());
                }
            }
            Self::Result {
                envelope,
                request_id,
                results,
            } => {
                out.push(b',');
                envelope.write(out);
                write_request_id(out, *request_id);
                out.extend_from_slice(b",\"results\":[");
                for (i, result) in results.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(result.as_bytes());
                }
                out.push(b']');
            }
            Self::Error { error, request_id } => {
                out.extend_from_slice(b",\"error\":");
                write_json(out, error.message.as_ref());
                out.extend_from_slice(b",\"code\":");
                out.extend_from_slice(error.code.code().to_string().as_bytes());
                out.extend_from_slice(if error.reconnect {
                    b",\"reconnect\":true"
                } else {
                    b",\"reconnect\":false"
                });
                match request_id {
                    Some(id) => write_request_id(out, *id),
                    None => out.extend_from_slice(b",\"requestId\":null"),
                }
            }
        }
        out.push(b'}');
    }
}

fn write_request_id(out: &mut Vec<u8>, id: RequestId) {
    out.extend_from_slice(b",\"requestId\":");
    id.write_to(out);
}

/// A server frame decoded by a client (the Rust example client, the load generator and
/// tests). Objects are kept as JSON values.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerFrame {
    /// `connected`.
    Connected {
        /// Assigned client id.
        client_id: String,
        /// Echoed installation id.
        installation_id: Option<String>,
    },
    /// `subscribed`.
    Subscribed {
        /// Client id.
        client_id: String,
        /// Echoed installation id.
        installation_id: Option<String>,
        /// Subscription.
        request_id: RequestId,
    },
    /// `unsubscribed`.
    Unsubscribed {
        /// Client id.
        client_id: String,
        /// Echoed installation id.
        installation_id: Option<String>,
        /// Subscription.
        request_id: RequestId,
    },
    /// `create`, `enter`, `update`, `leave` or `delete`.
    Event {
        /// Which event.
        op: EventOp,
        /// Client id.
        client_id: String,
        /// Echoed installation id.
        installation_id: Option<String>,
        /// Subscription.
        request_id: RequestId,
        /// Object after the change.
        object: Map<String, Value>,
        /// Object before the change.
        original: Option<Map<String, Value>>,
    },
    /// `result`.
    Result {
        /// Client id.
        client_id: String,
        /// Echoed installation id.
        installation_id: Option<String>,
        /// Subscription.
        request_id: RequestId,
        /// Matching objects.
        results: Vec<Map<String, Value>>,
    },
    /// `error`.
    Error {
        /// Error text.
        error: String,
        /// Wire code.
        code: u32,
        /// Reconnect hint.
        reconnect: bool,
        /// Subscription concerned, if any.
        request_id: Option<RequestId>,
    },
}

/// Why a server frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid server frame: {0}")]
pub struct FrameError(String);

impl ServerFrame {
    /// Decodes a server text frame strictly (every required field present and typed).
    pub fn decode(text: &str) -> Result<Self, FrameError> {
        let value: Value = serde_json::from_str(text).map_err(|e| FrameError(e.to_string()))?;
        let Value::Object(mut map) = value else {
            return Err(FrameError("not an object".into()));
        };
        let op = match map.remove("op") {
            Some(Value::String(op)) => op,
            _ => return Err(FrameError("missing op".into())),
        };
        if op == "error" {
            return Ok(Self::Error {
                error: take_str(&mut map, "error")?,
                code: map
                    .get("code")
                    .and_then(Value::as_u64)
                    .and_then(|c| u32::try_from(c).ok())
                    .ok_or_else(|| FrameError("missing code".into()))?,
                reconnect: map
                    .get("reconnect")
                    .and_then(Value::as_bool)
                    .ok_or_else(|| FrameError("missing reconnect".into()))?,
                request_id: match map.get("requestId") {
                    Some(Value::Null) => None,
                    Some(Value::Number(n)) => n.as_f64().map(RequestId::new),
                    _ => return Err(FrameError("missing requestId".into())),
                },
            });
        }
        let client_id = take_str(&mut map, "clientId")?;
        let installation_id = match map.remove("installationId") {
            None => None,
            Some(Value::String(s)) => Some(s),
            Some(_) => return Err(FrameError("installationId is not a string".into())),
        };
        if op == "connected" {
            return Ok(Self::Connected {
                client_id,
                installation_id,
            });
        }
        let request_id = map
            .get("requestId")
            .and_then(Value::as_f64)
            .map(RequestId::new)
            .ok_or_else(|| FrameError("missing requestId".into()))?;
        Ok(match op.as_str() {
            "subscribed" => Self::Subscribed {
                client_id,
                installation_id,
                request_id,
            },
            "unsubscribed" => Self::Unsubscribed {
                client_id,
                installation_id,
                request_id,
            },
            "result" => Self::Result {
                client_id,
                installation_id,
                request_id,
                results: match map.remove("results") {
                    Some(Value::Array(items)) => items
                        .into_iter()
                        .map(|item| match item {
                            Value::Object(o) => Ok(o),
                            _ => Err(FrameError("result item is not an object".into())),
                        })
                        .collect::<Result<_, _>>()?,
                    _ => return Err(FrameError("missing results".into())),
                },
            },
            other => {
                let op = EventOp::parse(other)
                    .ok_or_else(|| FrameError(format!("unknown op {other}")))?;
                Self::Event {
                    op,
                    client_id,
                    installation_id,
                    request_id,
                    object: match map.remove("object") {
                        Some(Value::Object(o)) => o,
                        _ => return Err(FrameError("missing object".into())),
                    },
                    original: match map.remove("original") {
                        None => None,
                        Some(Value::Object(o)) => Some(o),
                        Some(_) => return Err(FrameError("original is not an object".into())),
                    },
                }
            }
        })
    }

    /// The `requestId` of the frame, if it has one.
    pub fn request_id(&self) -> Option<RequestId> {
        match self {
            Self::Connected { .. } => None,
            Self::Subscribed { request_id, .. }
            | Self::Unsubscribed { request_id, .. }
            | Self::Event { request_id, .. }
            | Self::Result { request_id, .. } => Some(*request_id),
            Self::Error { request_id, .. } => *request_id,
        }
    }

    /// The wire error this frame carries, if it is an error frame with a known code.
    pub fn error_code(&self) -> Option<ErrorCode> {
        match self {
            Self::Error { code, .. } => ErrorCode::from_code(*code),
            _ => None,
        }
    }
}

fn take_str(map: &mut Map<String, Value>, key: &str) -> Result<String, FrameError> {
    match map.remove(key) {
        Some(Value::String(s)) => Ok(s),
        _ => Err(FrameError(format!("missing {key}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_frames_are_sized_exactly() {
        let object = EncodedObject::from_map(
            serde_json::json!({"objectId": "o", "n": "é"})
                .as_object()
                .unwrap(),
        );
        let original = EncodedObject::from_map(serde_json::json!({"a": 1}).as_object().unwrap());
        for installation in [None, Some("inst\"1")] {
            let envelope = Envelope::new(ClientId::new("c-1"), installation);
            for request_id in [0.0, 7.0, -12.0, 1.5, 1e21, 123_456_789.0] {
                for original in [None, Some(&original)] {
                    for op in [EventOp::Create, EventOp::Leave] {
                        let message = ServerMessage::Event {
                            op,
                            envelope: &envelope,
                            request_id: RequestId::new(request_id),
                            object: &object,
                            original,
                        };
                        assert_eq!(message.size_hint(), message.encode().len());
                    }
                }
            }
        }
    }
}
