//! An event frame kept as its parts until it is written.
//!
//! An event reaches many recipients with the same object bytes; only `op`, the
//! connection's envelope and the `requestId` differ between their frames. An
//! [`EventFrame`] holds those parts and a reference-counted handle to the shared
//! [`FrameObjects`] (the object and original, made once per event and view), so queuing an
//! event for one more recipient allocates nothing, copies no object, and takes a few
//! words of its queue: the frame's text is produced only when it is written, by
//! [`EventFrame::write`], into whatever the writer stages (a buffer on the stack, a batch's
//! staging buffer) or, for large objects, as slices of the objects' own bytes. Its length is
//! known without writing it ([`EventFrame::len`]). The text is byte for byte what
//! [`ServerMessage::Event`](crate::ServerMessage::Event) encodes.

use std::sync::Arc;

use bytes::Bytes;

use crate::id::RequestId;
use crate::response::{EncodedObject, Envelope, EventOp};

/// Room for any `requestId` as JavaScript prints it: at most 24 bytes
/// (`-1.2345678901234567e-308`).
const REQUEST_ID_ROOM: usize = 32;

/// Receives the text of a frame, in order ([`EventFrame::write`]).
pub trait FrameSink<'a> {
    /// Text to copy: what the frame renders itself, and objects of at most the writer's
    /// copy limit.
    fn copy(&mut self, bytes: &[u8]);

    /// The bytes of an object larger than the copy limit, to be written from where they
    /// are (they live as long as the frame).
    fn share(&mut self, bytes: &'a [u8]);
}

impl FrameSink<'_> for Vec<u8> {
    fn copy(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }

    fn share(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// The object and original an event frame carries, shared by every recipient that sees the
/// same views of them.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameObjects {
    object: EncodedObject,
    original: Option<EncodedObject>,
}

impl FrameObjects {
    /// The object (after the change; for `delete` the last state) and the original, if the
    /// frame carries one.
    pub fn new(object: EncodedObject, original: Option<EncodedObject>) -> Self {
        Self { object, original }
    }

    /// The object.
    pub fn object(&self) -> &EncodedObject {
        &self.object
    }

    /// The original, if any.
    pub fn original(&self) -> Option<&EncodedObject> {
        self.original.as_ref()
    }

    /// Whether these are the very bytes of `object` and `original` (the same shared
    /// buffers, not equal copies): a pointer comparison.
    pub fn holds(&self, object: &EncodedObject, original: Option<&EncodedObject>) -> bool {
        self.object.same_bytes(object)
            && match (&self.original, original) {
                (Some(mine), Some(theirs)) => mine.same_bytes(theirs),
                (None, None) => true,
                _ => false,
            }
    }
}

/// One recipient's event frame: `{"op":…,<envelope>,"requestId":…,"object":…,"original":…}`,
/// with the object (and original) shared with every other recipient that sees the same
/// view of them.
#[derive(Debug, Clone, PartialEq)]
pub struct EventFrame {
    envelope: Arc<Envelope>,
    objects: Arc<FrameObjects>,
    request_id: RequestId,
    /// The length of the text, computed once: queue bounds and metrics ask for it often.
    len: usize,
    op: EventOp,
}

impl EventFrame {
    /// The frame of `op` for the subscription `request_id` of the connection `envelope`.
    pub fn new(
        op: EventOp,
        envelope: Arc<Envelope>,
        request_id: RequestId,
        objects: Arc<FrameObjects>,
    ) -> Self {
        let len = br#"{"op":""#.len()
            + op.as_str().len()
            + br#"","#.len()
            + envelope.rendered().len()
            + br#","requestId":"#.len()
            + request_id.written_len()
            + br#","object":"#.len()
            + objects.object.len()
            + objects
                .original
                .as_ref()
                .map_or(0, |o| br#","original":"#.len() + o.len())
            + 1;
        Self {
            envelope,
            objects,
            request_id,
            len,
            op,
        }
    }

    /// The length of the frame's text in bytes (what [`EventFrame::write`] produces).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a frame is never empty (the method pairs with [`EventFrame::len`]).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The event op.
    pub fn op(&self) -> EventOp {
        self.op
    }

    /// The subscription.
    pub fn request_id(&self) -> RequestId {
        self.request_id
    }

    /// The object carried.
    pub fn object(&self) -> &EncodedObject {
        &self.objects.object
    }

    /// The original carried, if any.
    pub fn original(&self) -> Option<&EncodedObject> {
        self.objects.original.as_ref()
    }

    /// Hands the frame's text to `sink`, in order: what the frame renders (and objects of
    /// at most `copy_max` bytes) to be copied, larger objects' bytes to be shared.
    pub fn write<'a>(&'a self, copy_max: usize, sink: &mut impl FrameSink<'a>) {
        sink.copy(br#"{"op":""#);
        sink.copy(self.op.as_str().as_bytes());
        sink.copy(br#"","#);
        sink.copy(self.envelope.rendered());
        sink.copy(br#","requestId":"#);
        let mut digits = [0u8; REQUEST_ID_ROOM];
        let mut rest = &mut digits[..];
        self.request_id.write_to(&mut rest);
        let written = REQUEST_ID_ROOM - rest.len();
        sink.copy(&digits[..written]);
        sink.copy(br#","object":"#);
        write_object(&self.objects.object, copy_max, sink);
        if let Some(original) = &self.objects.original {
            sink.copy(br#","original":"#);
            write_object(original, copy_max, sink);
        }
        sink.copy(b"}");
    }

    /// Appends the frame's text to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        self.write(usize::MAX, out);
    }

    /// The frame's text in a buffer of its own (for the rare frame that must be kept whole:
    /// the rest of one a write left unfinished, tests).
    pub fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(self.len);
        self.write_to(&mut out);
        Bytes::from(out)
    }
}

fn write_object<'a>(object: &'a EncodedObject, copy_max: usize, sink: &mut impl FrameSink<'a>) {
    if object.len() <= copy_max {
        sink.copy(object.as_bytes());
    } else {
        sink.share(object.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ServerMessage;
    use crate::id::ClientId;
    use proptest::prelude::*;
    use serde_json::{Map, Value};

    /// Records what a write hands over: the whole text, and which runs were shared.
    #[derive(Default)]
    struct Recorder<'a> {
        text: Vec<u8>,
        shared: Vec<&'a [u8]>,
    }

    impl<'a> FrameSink<'a> for Recorder<'a> {
        fn copy(&mut self, bytes: &[u8]) {
            self.text.extend_from_slice(bytes);
        }

        fn share(&mut self, bytes: &'a [u8]) {
            self.text.extend_from_slice(bytes);
            self.shared.push(bytes);
        }
    }

    fn op() -> impl Strategy<Value = EventOp> {
        prop_oneof![
            Just(EventOp::Create),
            Just(EventOp::Enter),
            Just(EventOp::Update),
            Just(EventOp::Leave),
            Just(EventOp::Delete),
        ]
    }

    fn request_id() -> impl Strategy<Value = f64> {
        prop_oneof![
            any::<u32>().prop_map(f64::from),
            any::<i64>().prop_map(|n| n as f64),
            any::<f64>(),
            Just(0.0),
            Just(-0.0),
            Just(f64::MAX),
            Just(f64::MIN),
            Just(-5e-324),
            Just(-1.234_567_890_123_456_7e-300),
        ]
    }

    fn object() -> impl Strategy<Value = EncodedObject> {
        proptest::collection::vec(("[a-zA-Z_é\"\\\\]{1,8}", ".{0,300}"), 0..8).prop_map(|fields| {
            let map: Map<String, Value> = fields
                .into_iter()
                .map(|(key, value)| (key, Value::String(value)))
                .collect();
            EncodedObject::from_map(&map)
        })
    }

    proptest! {
        #[test]
        fn the_text_is_the_encoded_event_and_its_length(
            op in op(),
            client_id in ".{0,40}",
            installation_id in proptest::option::of(".{0,40}"),
            request_id in request_id(),
            object in object(),
            original in proptest::option::of(object()),
            copy_max in 0usize..400,
        ) {
            let envelope = Arc::new(Envelope::new(ClientId::new(client_id.as_str()), installation_id.as_deref()));
            let request_id = RequestId::new(request_id);
            let expected = ServerMessage::Event {
                op,
                envelope: &envelope,
                request_id,
                object: &object,
                original: original.as_ref(),
            }
            .encode();
            let objects = Arc::new(FrameObjects::new(object.clone(), original.clone()));
            prop_assert!(objects.holds(&object, original.as_ref()));
            let frame = EventFrame::new(op, envelope.clone(), request_id, objects);
            prop_assert_eq!(frame.len(), expected.len());
            prop_assert_eq!(&frame.encode(), &expected);
            let mut recorder = Recorder::default();
            frame.write(copy_max, &mut recorder);
            prop_assert_eq!(&recorder.text[..], &expected[..]);
            // Exactly the objects above the copy limit are shared, as their own bytes.
            let large: Vec<&[u8]> = std::iter::once(&object)
                .chain(original.as_ref())
                .filter(|o| o.len() > copy_max)
                .map(EncodedObject::as_bytes)
                .collect();
            prop_assert_eq!(recorder.shared.len(), large.len());
            for (shared, large) in recorder.shared.iter().zip(&large) {
                prop_assert!(std::ptr::eq(*shared, *large), "shared, not copied");
            }
        }
    }

    #[test]
    fn frame_objects_hold_the_very_bytes_not_equal_copies() {
        let map = serde_json::json!({"a": 1});
        let object = EncodedObject::from_map(map.as_object().unwrap());
        let copy = EncodedObject::from_map(map.as_object().unwrap());
        let objects = FrameObjects::new(object.clone(), Some(object.clone()));
        assert!(objects.holds(&object, Some(&object)));
        assert!(!objects.holds(&copy, Some(&object)));
        assert!(!objects.holds(&object, Some(&copy)));
        assert!(!objects.holds(&object, None));
        assert!(FrameObjects::new(object.clone(), None).holds(&object, None));
    }

    #[test]
    fn the_widest_request_ids_fit() {
        for value in [
            f64::MIN,
            -f64::MIN_POSITIVE,
            -5e-324,
            -1.234_567_890_123_456_7e-300,
        ] {
            let id = RequestId::new(value);
            assert!(id.written_len() <= 24, "{value}");
        }
    }
}
