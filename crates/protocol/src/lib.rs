//! # livequery-protocol
//!
//! The wire protocol of Parse Server's LiveQuery, as spoken by the Parse SDKs: typed
//! frames, validation that answers exactly like parse-server 9.x, and encoding built for
//! fan-out to many recipients.
//!
//! This crate is a pure library: no I/O, no async runtime. The server reads a text frame,
//! calls [`ClientMessage::decode`], and answers with [`ServerMessage::encode`].
//!
//! ## Module map
//! - [`error`]: the error catalogue ([`ErrorCode`], fixed texts in [`error::msg`],
//!   [`WireError`]) — the only place where wire codes and their meaning are defined.
//! - `schema` (private): a tv4-compatible validator, so that every rejected frame gets the
//!   reference's first-violation message (`Additional properties not allowed`, …).
//! - [`request`]: client → server frames ([`ClientMessage`]); decoding and encoding.
//! - [`response`]: server → client frames: [`Envelope`] (rendered once per connection),
//!   [`EncodedObject`] (an object serialized once, shared by every recipient),
//!   [`ServerMessage`] (encoding) and [`ServerFrame`] (decoding, for Rust clients).
//! - [`event_frame`]: [`EventFrame`], one recipient's event frame kept as its parts (op,
//!   envelope, request id, shared objects) until it is written: no allocation and no copy of
//!   the object per recipient.
//! - [`handshake`]: the subprotocol a WebSocket handshake selects (the first offered, like
//!   parse-server's `ws` server).
//! - [`id`]: [`RequestId`] (any JSON number, printed like JavaScript), [`ClientId`] and
//!   [`ClassName`].
//! - [`websocket_frame`]: the header of a server text frame (RFC 6455), so the server can
//!   write a pre-encoded frame's bytes to the socket behind it without copying them; the
//!   server's control frames and the close codes.
//! - [`websocket_read`]: a client's frames decoded into whole messages, every rule of
//!   RFC 6455 a server enforces checked, each violation mapped to its close code.
//!
//! ## Invariants
//! - Decoding never panics, whatever the input; invalid JSON yields
//!   [`ProtocolError::InvalidJson`], which the reference answers with silence; JSON nested
//!   deeper than [`error::MAX_FRAME_DEPTH`] yields [`ProtocolError::TooDeep`], answered
//!   with an error frame (never silence, never unbounded recursion).
//! - Encoded frames never contain `null` for an absent optional field, never carry
//!   `clientId` on errors, and always echo the connection's `installationId`.
//! - An event's object bytes are produced once ([`EncodedObject`]); a recipient's frame
//!   ([`EventFrame`]) holds handles to them, and its text is produced only when written,
//!   byte for byte what [`ServerMessage::Event`] encodes.
#![deny(missing_docs)]

pub mod error;
pub mod event_frame;
pub mod handshake;
pub mod id;
pub mod request;
pub mod response;
mod schema;
pub mod websocket_frame;
pub mod websocket_read;

pub use error::{ErrorCode, NotConnected, ProtocolError, WireError};
pub use event_frame::{EventFrame, FrameObjects, FrameSink};
pub use id::{ClassName, ClientId, RequestId};
pub use request::{
    ClientMessage, ConnectRequest, QueryRequest, QuerySpec, SubscribeRequest, UnsubscribeRequest,
};
pub use response::{EncodedObject, Envelope, EventOp, FrameError, ServerFrame, ServerMessage};
