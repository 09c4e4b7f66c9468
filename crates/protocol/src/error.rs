//! The error catalogue: every `code` livequery puts on the wire, what it means, and whether the
//! client is told to reconnect.
//!
//! This is the only place where numbers and texts of wire errors are defined. The server maps
//! its failures to a [`WireError`] (its constructors hold every text) and lets
//! [`crate::ServerMessage::Error`] render the frame.

use std::borrow::Cow;
use std::fmt;

use crate::id::RequestId;

/// Every wire error code used by livequery.
///
/// The numbers are those of parse-server's LiveQuery server (1–4) and of `Parse.Error`
/// (101 and up), so the Parse SDKs interpret them as they would interpret the reference
/// server's errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// 1 — the frame violates the request schema (tv4-style message). Also used by the
    /// reference for internal errors.
    InvalidRequest,
    /// 2 — `subscribe`/`unsubscribe`/`update` before `connect`, or an unknown `requestId`.
    ClientOrSubscriptionNotFound,
    /// 3 — unknown operation (kept for completeness; schema validation reports unknown ops
    /// with code 1 first, exactly like the reference).
    UnknownOperation,
    /// 4 — the `connect` did not present a key that matches the configured `keyPairs`.
    InvalidKey,
    /// 100 — `Parse.Error.CONNECTION_FAILED`: the server lost events it should have
    /// delivered (the change source's history was lost); reconnect and query again.
    EventsLost,
    /// 101 — `Parse.Error.OBJECT_NOT_FOUND`; the reference uses it for a class-level
    /// permission that requires an authenticated user.
    RequiresAuthentication,
    /// 102 — `Parse.Error.INVALID_QUERY`: a `where` clause that cannot be compiled.
    InvalidQuery,
    /// 108 — `Parse.Error.COMMAND_UNAVAILABLE`: the operation is valid but the configured
    /// source cannot serve it (e.g. `query` on a source that cannot read current state).
    CommandUnavailable,
    /// 116 — `Parse.Error.OBJECT_TOO_LARGE`: a frame exceeded the configured size limit.
    FrameTooLarge,
    /// 119 — `Parse.Error.OPERATION_FORBIDDEN`: class-level permissions deny the read, or a
    /// protected field is used in `where`/`watch`.
    OperationForbidden,
    /// 124 — `Parse.Error.TIMEOUT`: the socket did not send `connect` in time.
    Timeout,
    /// 141 — `Parse.Error.SCRIPT_FAILED`: an unexpected server-side failure while serving a
    /// request (the reference uses it for exceptions thrown while subscribing).
    ScriptFailed,
    /// 155 — `Parse.Error.REQUEST_LIMIT_EXCEEDED`: a configured limit was hit (connections,
    /// subscriptions per connection, outbound queue of a slow client).
    LimitExceeded,
    /// 209 — `Parse.Error.INVALID_SESSION_TOKEN`.
    InvalidSessionToken,
    /// Any other code, chosen by Cloud Code: a hook that rejects a connection, a
    /// subscription or an event with a `Parse.Error` of its own (`protocol-spec/hooks.md`).
    Cloud(u32),
}

impl ErrorCode {
    /// The number that goes into the frame's `code` field.
    pub const fn code(self) -> u32 {
        match self {
            Self::InvalidRequest => 1,
            Self::ClientOrSubscriptionNotFound => 2,
            Self::UnknownOperation => 3,
            Self::InvalidKey => 4,
            Self::EventsLost => 100,
            Self::RequiresAuthentication => 101,
            Self::InvalidQuery => 102,
            Self::CommandUnavailable => 108,
            Self::FrameTooLarge => 116,
            Self::OperationForbidden => 119,
            Self::Timeout => 124,
            Self::ScriptFailed => 141,
            Self::LimitExceeded => 155,
            Self::InvalidSessionToken => 209,
            Self::Cloud(code) => code,
        }
    }

    /// Looks a wire code up; `None` for numbers livequery never sends.
    pub const fn from_code(code: u32) -> Option<Self> {
        Some(match code {
            1 => Self::InvalidRequest,
            2 => Self::ClientOrSubscriptionNotFound,
            3 => Self::UnknownOperation,
            4 => Self::InvalidKey,
            100 => Self::EventsLost,
            101 => Self::RequiresAuthentication,
            102 => Self::InvalidQuery,
            108 => Self::CommandUnavailable,
            116 => Self::FrameTooLarge,
            119 => Self::OperationForbidden,
            124 => Self::Timeout,
            141 => Self::ScriptFailed,
            155 => Self::LimitExceeded,
            209 => Self::InvalidSessionToken,
            _ => return None,
        })
    }

    /// The `reconnect` hint the reference server sends with this code.
    ///
    /// Connection-level errors (1–4, and our connection limits) tell the SDK to reconnect;
    /// errors about one subscription do not.
    pub const fn reconnect(self) -> bool {
        matches!(
            self,
            Self::InvalidRequest
                | Self::ClientOrSubscriptionNotFound
                | Self::UnknownOperation
                | Self::InvalidKey
                | Self::EventsLost
                | Self::FrameTooLarge
                | Self::Timeout
        )
    }
}

/// Fixed error texts. Messages that SDKs compare literally (notably
/// [`ADDITIONAL_PROPERTIES`](msg::ADDITIONAL_PROPERTIES)) must never change.
pub mod msg {
    /// tv4 text for an unknown property; the JS SDK compares it literally and stops sending
    /// `installationId` when it sees it.
    pub const ADDITIONAL_PROPERTIES: &str = "Additional properties not allowed";
    /// Code 2, `subscribe` (or the second half of `update`) before `connect`.
    pub const NOT_CONNECTED_SUBSCRIBING: &str =
        "Can not find this client, make sure you connect to server before subscribing";
    /// Code 2, `unsubscribe` (or the first half of `update`) before `connect`.
    pub const NOT_CONNECTED_UNSUBSCRIBING: &str =
        "Can not find this client, make sure you connect to server before unsubscribing";
    /// Code 2, `query` before `connect` (livequery extension).
    pub const NOT_CONNECTED_QUERYING: &str =
        "Can not find this client, make sure you connect to server before querying";
    /// Code 3.
    pub const UNKNOWN_OPERATION: &str = "Get unknown operation";
    /// Code 4.
    pub const INVALID_KEY: &str = "Key in request is not valid";
    /// Codes 101 and 119 (the reference's sanitized message).
    pub const PERMISSION_DENIED: &str = "Permission denied";
    /// Code 209.
    pub const INVALID_SESSION_TOKEN: &str = "Invalid session token";
}

/// An error frame's content before it is addressed: code, text and the `reconnect` hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError {
    /// Catalogue entry.
    pub code: ErrorCode,
    /// Human-readable text sent in the `error` field.
    pub message: Cow<'static, str>,
    /// The `reconnect` hint; defaults to [`ErrorCode::reconnect`].
    pub reconnect: bool,
}

impl WireError {
    /// An error with the catalogue's default `reconnect` hint.
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code,
            message: message.into(),
            reconnect: code.reconnect(),
        }
    }

    /// Overrides the `reconnect` hint.
    #[must_use]
    pub fn with_reconnect(mut self, reconnect: bool) -> Self {
        self.reconnect = reconnect;
        self
    }

    /// Code 2: an operation before `connect` (`op` is what it tried: `subscribing`,
    /// `unsubscribing` or `querying`).
    pub fn not_connected(op: NotConnected) -> Self {
        Self::new(
            ErrorCode::ClientOrSubscriptionNotFound,
            match op {
                NotConnected::Subscribing => msg::NOT_CONNECTED_SUBSCRIBING,
                NotConnected::Unsubscribing => msg::NOT_CONNECTED_UNSUBSCRIBING,
                NotConnected::Querying => msg::NOT_CONNECTED_QUERYING,
            },
        )
    }

    /// Code 4: no presented key matches the configured `keyPairs`.
    pub fn invalid_key() -> Self {
        Self::new(ErrorCode::InvalidKey, msg::INVALID_KEY)
    }

    /// Code 4: `applicationId` differs while `check_application_id` is on.
    pub fn invalid_application_id() -> Self {
        Self::new(ErrorCode::InvalidKey, "Invalid applicationId")
    }

    /// Code 101: the class requires an authenticated user.
    pub fn requires_authentication() -> Self {
        Self::new(ErrorCode::RequiresAuthentication, msg::PERMISSION_DENIED)
    }

    /// Code 119: not allowed (class-level permissions, an internal class, a hidden field).
    pub fn forbidden() -> Self {
        Self::new(ErrorCode::OperationForbidden, msg::PERMISSION_DENIED)
    }

    /// Code 209: a `_Session` subscription without a valid session token.
    pub fn invalid_session_token() -> Self {
        Self::new(ErrorCode::InvalidSessionToken, msg::INVALID_SESSION_TOKEN)
    }

    /// Code 102: a `where` clause that cannot be compiled; `reason` is the compiler's text.
    pub fn invalid_query(reason: impl fmt::Display) -> Self {
        Self::new(ErrorCode::InvalidQuery, reason.to_string())
    }

    /// Code 155: `limits.max_subscriptions_per_connection` reached.
    pub fn too_many_subscriptions(limit: usize) -> Self {
        Self::new(
            ErrorCode::LimitExceeded,
            format!("Too many subscriptions on this connection (limit {limit})"),
        )
    }

    /// Code 155: the subscription would take the connection beyond
    /// `limits.max_subscription_bytes`.
    pub fn subscription_budget(budget: usize, footprint: usize) -> Self {
        Self::new(
            ErrorCode::LimitExceeded,
            format!(
                "Subscriptions on this connection would hold more than {budget} bytes (this one: {footprint})"
            ),
        )
    }

    /// Code 155 with `reconnect: true`: the client reads too slowly and is cut off.
    pub fn slow_consumer() -> Self {
        Self::new(
            ErrorCode::LimitExceeded,
            "Client too slow: outbound queue overflow",
        )
        .with_reconnect(true)
    }

    /// Code 108: `query` on a source that cannot read current objects.
    pub fn cannot_read_current_objects() -> Self {
        Self::new(
            ErrorCode::CommandUnavailable,
            "The configured source cannot read current objects",
        )
    }

    /// Code 141: a request failed on the server's side (`what` failed: `detail`).
    pub fn server_failure(what: &str, detail: impl fmt::Display) -> Self {
        Self::new(ErrorCode::ScriptFailed, format!("{what} failed: {detail}"))
    }

    /// Code 141: a Cloud Code hook call failed (timeout, connection error, HTTP 5xx, an
    /// answer that is not parse-server's format) and its failure policy is `reject`.
    pub fn hook_failed(trigger: &str, reason: impl fmt::Display) -> Self {
        Self::new(
            ErrorCode::ScriptFailed,
            format!("{trigger} hook failed: {reason}"),
        )
    }

    /// A Cloud Code hook's deliberate rejection, as parse-server's LiveQuery server forwards
    /// it: the hook's own code (141 when it gave none) and message, `reconnect: false`.
    pub fn hook_rejection(code: u32, message: impl Into<Cow<'static, str>>) -> Self {
        let code = ErrorCode::from_code(code).unwrap_or(ErrorCode::Cloud(code));
        Self::new(code, message).with_reconnect(false)
    }

    /// Code 124: a `query` took longer than allowed.
    pub fn query_timed_out() -> Self {
        Self::new(ErrorCode::Timeout, "query timed out")
    }

    /// Code 124: no `connect` within `limits.connect_timeout`.
    pub fn connect_timeout() -> Self {
        Self::new(ErrorCode::Timeout, "Timed out waiting for connect")
    }

    /// Code 116: a frame larger than `limits.max_message_bytes`.
    pub fn frame_too_large(limit: usize) -> Self {
        Self::new(
            ErrorCode::FrameTooLarge,
            format!("Message too large (limit {limit} bytes)"),
        )
    }

    /// Code 100: the source lost events (its history is gone); reconnect and query again.
    pub fn events_lost() -> Self {
        Self::new(
            ErrorCode::EventsLost,
            "Events may have been lost: the change stream's history is gone. Reconnect and query again.",
        )
    }

    /// Code 2 for an unknown `requestId`, with the reference's exact text.
    pub fn subscription_not_found(client_id: &str, request_id: crate::RequestId) -> Self {
        Self::new(
            ErrorCode::ClientOrSubscriptionNotFound,
            format!(
                "Cannot find subscription with clientId {client_id} subscriptionId {request_id}. \
                 Make sure you subscribe to live query server before unsubscribing."
            ),
        )
    }

    /// Code 2 for an unknown `requestId` in a `query` (livequery extension).
    pub fn query_subscription_not_found(client_id: &str, request_id: crate::RequestId) -> Self {
        Self::new(
            ErrorCode::ClientOrSubscriptionNotFound,
            format!(
                "Cannot find subscription with clientId {client_id} subscriptionId {request_id}. \
                 Make sure you subscribe to live query server before querying."
            ),
        )
    }
}

/// What a client tried before `connect` (the texts of code 2 differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotConnected {
    /// `subscribe`, or the second half of `update`.
    Subscribing,
    /// `unsubscribe`, or the first half of `update`.
    Unsubscribing,
    /// `query`.
    Querying,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (code {})", self.message, self.code.code())
    }
}

/// Why an inbound frame could not be turned into a [`crate::ClientMessage`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The text is not JSON. The reference logs this and sends nothing back; so does
    /// livequery.
    #[error("frame is not valid JSON: {0}")]
    InvalidJson(String),
    /// The JSON violates the request schema; the text is the tv4-style first violation.
    #[error("{0}")]
    Schema(String),
    /// Valid JSON nested deeper than the parser accepts ([`MAX_FRAME_DEPTH`] levels). The
    /// reference parses any depth (and answers, or subscribes); livequery answers with an
    /// error frame instead of silence: code 102 with the `requestId` for a `subscribe` or
    /// `update` that names one, code 1 otherwise.
    #[error("frame nested deeper than {MAX_FRAME_DEPTH} levels")]
    TooDeep {
        /// The frame's `op`, when its top level could be read.
        op: Option<String>,
        /// The frame's `requestId`, when its top level could be read.
        request_id: Option<RequestId>,
    },
}

/// The deepest nesting of arrays and objects a client frame may have (the frame itself is
/// level 1; serde_json's recursion limit stops at the next level).
pub const MAX_FRAME_DEPTH: usize = 127;

impl ProtocolError {
    /// The error frame to answer with, or `None` when the reference stays silent.
    pub fn to_wire(&self) -> Option<WireError> {
        match self {
            Self::InvalidJson(_) => None,
            Self::Schema(message) => {
                Some(WireError::new(ErrorCode::InvalidRequest, message.clone()))
            }
            Self::TooDeep { .. } if self.request_id().is_some() => Some(WireError::new(
                ErrorCode::InvalidQuery,
                format!("Query nested too deeply: JSON deeper than {MAX_FRAME_DEPTH} levels"),
            )),
            Self::TooDeep { .. } => Some(WireError::new(
                ErrorCode::InvalidRequest,
                format!("Frame nested too deeply: JSON deeper than {MAX_FRAME_DEPTH} levels"),
            )),
        }
    }

    /// The `requestId` the error frame carries: only a too-deep `subscribe` or `update`
    /// names one (schema errors carry `null`, like the reference's).
    pub fn request_id(&self) -> Option<RequestId> {
        match self {
            Self::TooDeep {
                op: Some(op),
                request_id,
            } if op == "subscribe" || op == "update" => *request_id,
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_through_its_number() {
        for code in [
            ErrorCode::InvalidRequest,
            ErrorCode::ClientOrSubscriptionNotFound,
            ErrorCode::UnknownOperation,
            ErrorCode::InvalidKey,
            ErrorCode::EventsLost,
            ErrorCode::RequiresAuthentication,
            ErrorCode::InvalidQuery,
            ErrorCode::CommandUnavailable,
            ErrorCode::FrameTooLarge,
            ErrorCode::OperationForbidden,
            ErrorCode::Timeout,
            ErrorCode::ScriptFailed,
            ErrorCode::LimitExceeded,
            ErrorCode::InvalidSessionToken,
        ] {
            assert_eq!(ErrorCode::from_code(code.code()), Some(code));
        }
        assert_eq!(ErrorCode::from_code(0), None);
    }

    #[test]
    fn reconnect_hints_follow_the_reference() {
        assert!(ErrorCode::InvalidRequest.reconnect());
        assert!(ErrorCode::InvalidKey.reconnect());
        assert!(!ErrorCode::InvalidQuery.reconnect());
        assert!(!ErrorCode::OperationForbidden.reconnect());
        assert!(!ErrorCode::InvalidSessionToken.reconnect());
    }
}
