//! Decode/encode cost of every frame, and the fan-out encoding of one event to many
//! recipients (object serialized once) against serializing the whole frame per recipient;
//! and the server's way, queued frames then staged for a write: whole frames encoded per
//! recipient against event frames (`EventFrame`) sharing the object bytes.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use livequery_protocol::{
    ClientId, ClientMessage, EncodedObject, Envelope, ErrorCode, EventFrame, EventOp, FrameObjects,
    RequestId, ServerMessage, WireError,
};
use serde_json::{Map, Value, json};
use std::hint::black_box;
use std::sync::Arc;

const CONNECT: &str = r#"{"op":"connect","applicationId":"plqApp","javascriptKey":"plqJsKey","sessionToken":"r:f3e96e8dbe401afc8b41c72be3dddf67","installationId":"6067095f-bbe2-46b3-bd78-4eb5897c5203"}"#;
const SUBSCRIBE: &str = r#"{"op":"subscribe","requestId":1,"query":{"className":"Message","where":{"room":"room-1795338841947","score":{"$gt":10}},"keys":["room","score"]},"sessionToken":"r:f3e96e8dbe401afc8b41c72be3dddf67"}"#;
const UPDATE: &str =
    r#"{"op":"update","requestId":1,"query":{"className":"Message","where":{"room":"room-2"}}}"#;
const UNSUBSCRIBE: &str = r#"{"op":"unsubscribe","requestId":1}"#;
const QUERY: &str = r#"{"op":"query","requestId":1}"#;

fn object() -> Map<String, Value> {
    let Value::Object(map) = json!({
        "room": "room-1795338841947", "score": 20, "text": "a: created matching, with a body of some length",
        "tags": ["a", "b", "c"], "owner": {"__type": "Pointer", "className": "_User", "objectId": "8oD41B8wiH"},
        "ACL": {"8oD41B8wiH": {"read": true, "write": true}, "*": {"read": true}},
        "createdAt": "2026-11-22T09:14:02.198Z", "updatedAt": "2026-11-22T09:14:02.198Z",
        "className": "Message", "objectId": "EIUHq7jA3p"
    }) else {
        unreachable!()
    };
    map
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    for (name, text) in [
        ("connect", CONNECT),
        ("subscribe", SUBSCRIBE),
        ("update", UPDATE),
        ("unsubscribe", UNSUBSCRIBE),
        ("query", QUERY),
    ] {
        group.bench_function(name, |b| b.iter(|| ClientMessage::decode(black_box(text))));
    }
    group.finish();
}

fn encode(c: &mut Criterion) {
    let envelope = Envelope::new(
        ClientId::new("fdf64e98-c038-433b-b7ef-aea170730a47"),
        Some("6067095f-bbe2-46b3-bd78-4eb5897c5203"),
    );
    let object = EncodedObject::from_map(&object());
    let error = WireError::new(ErrorCode::InvalidQuery, "$or must be an array");
    let id = RequestId::from(1);
    let results = vec![object.clone(), object.clone()];
    let mut group = c.benchmark_group("encode");
    let messages = [
        (
            "connected",
            ServerMessage::Connected {
                envelope: &envelope,
            },
        ),
        (
            "subscribed",
            ServerMessage::Subscribed {
                envelope: &envelope,
                request_id: id,
            },
        ),
        (
            "unsubscribed",
            ServerMessage::Unsubscribed {
                envelope: &envelope,
                request_id: id,
            },
        ),
        (
            "create",
            ServerMessage::Event {
                op: EventOp::Create,
                envelope: &envelope,
                request_id: id,
                object: &object,
                original: None,
            },
        ),
        (
            "update",
            ServerMessage::Event {
                op: EventOp::Update,
                envelope: &envelope,
                request_id: id,
                object: &object,
                original: Some(&object),
            },
        ),
        (
            "result",
            ServerMessage::Result {
                envelope: &envelope,
                request_id: id,
                results: &results,
            },
        ),
        (
            "error",
            ServerMessage::Error {
                error: &error,
                request_id: Some(id),
            },
        ),
    ];
    for (name, message) in messages {
        group.bench_function(name, |b| b.iter(|| black_box(message).encode()));
    }
    group.finish();
}

/// The envelopes of 1,000 connections, with client ids as long as the SDK's UUIDs.
fn envelopes() -> Vec<Envelope> {
    (0..1000)
        .map(|i| {
            Envelope::new(
                ClientId::new(format!("client-{i:08}-0000-4000-8000-000000000000")),
                None,
            )
        })
        .collect()
}

/// One `update` event to N recipients: serialize the objects once and frame per recipient,
/// against building and serializing a full frame value per recipient.
fn fan_out(c: &mut Criterion) {
    let object = object();
    let envelopes = envelopes();
    let mut group = c.benchmark_group("fan_out_update");
    for recipients in [1usize, 100, 1000] {
        group.throughput(Throughput::Elements(recipients as u64));
        group.bench_with_input(
            BenchmarkId::new("serialize_once", recipients),
            &recipients,
            |b, &n| {
                b.iter(|| {
                    let encoded = EncodedObject::from_map(&object);
                    let mut total = 0;
                    for envelope in &envelopes[..n] {
                        let frame = ServerMessage::Event {
                            op: EventOp::Update,
                            envelope,
                            request_id: RequestId::from(1),
                            object: &encoded,
                            original: Some(&encoded),
                        }
                        .encode();
                        total += frame.len();
                    }
                    total
                });
            },
        );
        group.bench_with_input(
            BenchmarkId::new("serialize_per_recipient", recipients),
            &recipients,
            |b, &n| {
                b.iter(|| {
                let mut total = 0;
                for envelope in &envelopes[..n] {
                    let frame = json!({
                        "op": "update", "clientId": envelope.client_id().as_str(), "requestId": 1,
                        "object": &object, "original": &object,
                    });
                    total += serde_json::to_vec(&frame).map(|v| v.len()).unwrap_or(0);
                }
                total
            });
            },
        );
    }
    group.finish();
}

/// One `update` event queued for N recipients, then copied into a write's staging buffer
/// (as the server does for frames of at most 1 KiB): a whole frame encoded per recipient,
/// against an event frame per recipient holding the shared object bytes.
fn queue_and_stage(c: &mut Criterion) {
    let object = object();
    let envelopes: Vec<Arc<Envelope>> = envelopes().into_iter().map(Arc::new).collect();
    let mut group = c.benchmark_group("queue_and_stage_update");
    for recipients in [1usize, 100, 1000] {
        group.throughput(Throughput::Elements(recipients as u64));
        group.bench_with_input(
            BenchmarkId::new("whole_frames", recipients),
            &recipients,
            |b, &n| {
                let mut queued = Vec::with_capacity(n);
                let mut staged = Vec::new();
                b.iter(|| {
                    let encoded = EncodedObject::from_map(&object);
                    for envelope in &envelopes[..n] {
                        queued.push(
                            ServerMessage::Event {
                                op: EventOp::Update,
                                envelope,
                                request_id: RequestId::from(1),
                                object: &encoded,
                                original: Some(&encoded),
                            }
                            .encode(),
                        );
                    }
                    staged.clear();
                    for frame in queued.drain(..) {
                        staged.extend_from_slice(&frame);
                    }
                    staged.len()
                });
            },
        );
        group.bench_with_input(
            BenchmarkId::new("event_frames", recipients),
            &recipients,
            |b, &n| {
                let mut queued = Vec::with_capacity(n);
                let mut staged = Vec::new();
                b.iter(|| {
                    let encoded = EncodedObject::from_map(&object);
                    let objects = Arc::new(FrameObjects::new(encoded.clone(), Some(encoded)));
                    for envelope in &envelopes[..n] {
                        queued.push(EventFrame::new(
                            EventOp::Update,
                            envelope.clone(),
                            RequestId::from(1),
                            objects.clone(),
                        ));
                    }
                    staged.clear();
                    for frame in queued.drain(..) {
                        frame.write_to(&mut staged);
                    }
                    staged.len()
                });
            },
        );
    }
    group.finish();
}

criterion_group!(benches, decode, encode, fan_out, queue_and_stage);
criterion_main!(benches);
