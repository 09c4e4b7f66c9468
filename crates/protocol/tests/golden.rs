//! Golden tests: every rejected frame gets the reference's exact error, and every frame
//! livequery encodes has the reference's exact shape (captures in
//! frames captured from parse-server 9.10 and the Parse JS SDK 8.6).

use livequery_protocol::{
    ClientId, ClientMessage, EncodedObject, Envelope, ErrorCode, EventOp, ProtocolError, RequestId,
    ServerFrame, ServerMessage, WireError,
};
use serde_json::{Value, json};

fn error_frame(text: &str) -> Option<String> {
    let err = ClientMessage::decode(text).expect_err(text);
    err.to_wire().map(|wire| {
        String::from_utf8(
            ServerMessage::Error {
                error: &wire,
                request_id: None,
            }
            .encode()
            .to_vec(),
        )
        .unwrap()
    })
}

fn schema_error(message: &str) -> String {
    format!(
        r#"{{"op":"error","error":{},"code":1,"reconnect":true,"requestId":null}}"#,
        json!(message)
    )
}

#[test]
fn rejected_frames_get_the_reference_error() {
    let cases: &[(&str, &str)] = &[
        ("null", "Invalid type: null (expected object)"),
        ("[]", "Invalid type: array (expected object)"),
        ("42", "Invalid type: number (expected object)"),
        (r#""hello""#, "Invalid type: string (expected object)"),
        ("{}", "Missing required property: op"),
        (r#"{"requestId":1}"#, "Missing required property: op"),
        (r#"{"op":"foo"}"#, r#"No enum match for: "foo""#),
        (r#"{"op":"ping"}"#, r#"No enum match for: "ping""#),
        (r#"{"op":5}"#, "Invalid type: number (expected string)"),
        (
            r#"{"op":"connect","javascriptKey":"k"}"#,
            "Missing required property: applicationId",
        ),
        (
            r#"{"op":"connect","applicationId":"a","foo":1}"#,
            "Additional properties not allowed",
        ),
        (
            r#"{"op":"connect","applicationId":"a","clientId":"x"}"#,
            "Additional properties not allowed",
        ),
        (
            r#"{"op":"connect","applicationId":"a","requestId":1}"#,
            "Additional properties not allowed",
        ),
        (
            r#"{"op":"connect","applicationId":"a","sessionToken":null}"#,
            "Invalid type: null (expected string)",
        ),
        (
            r#"{"op":"connect","applicationId":5}"#,
            "Invalid type: number (expected string)",
        ),
        (
            r#"{"op":"subscribe","query":{"className":"M","where":{}}}"#,
            "Missing required property: requestId",
        ),
        (
            r#"{"op":"subscribe","requestId":"1","query":{"className":"M","where":{}}}"#,
            "Invalid type: string (expected number)",
        ),
        (
            r#"{"op":"subscribe","requestId":1}"#,
            "Missing required property: query",
        ),
        (
            r#"{"op":"subscribe","requestId":1,"query":{"className":"M"}}"#,
            "Missing required property: where",
        ),
        (
            r#"{"op":"subscribe","requestId":1,"query":{"where":{}}}"#,
            "Missing required property: className",
        ),
        (
            r#"{"op":"subscribe","requestId":1,"query":{}}"#,
            "Missing required property: where",
        ),
        (
            r#"{"op":"subscribe","requestId":1,"query":{"className":"M","where":[]}}"#,
            "Invalid type: array (expected object)",
        ),
        (
            r#"{"op":"subscribe","requestId":1,"query":{"className":"M","where":null}}"#,
            "Invalid type: null (expected object)",
        ),
        (
            r#"{"op":"subscribe","requestId":1,"query":"x"}"#,
            "Invalid type: string (expected object)",
        ),
        (
            r#"{"op":"subscribe","requestId":1,"query":{"className":"M","where":{},"keys":[]}}"#,
            "Array is too short (0), minimum 1",
        ),
        (
            r#"{"op":"subscribe","requestId":1,"query":{"className":"M","where":{},"keys":["a","a"]}}"#,
            "Array items are not unique (indices 0 and 1)",
        ),
        (
            r#"{"op":"subscribe","requestId":1,"query":{"className":"M","where":{},"keys":"a,b"}}"#,
            "Invalid type: string (expected array)",
        ),
        (
            r#"{"op":"subscribe","requestId":1,"query":{"className":"M","where":{},"watch":[1]}}"#,
            "Invalid type: number (expected string)",
        ),
        (
            r#"{"op":"subscribe","requestId":1,"query":{"className":"M","where":{},"limit":5}}"#,
            "Additional properties not allowed",
        ),
        (
            r#"{"op":"subscribe","requestId":1,"query":{"className":"M","where":{},"fields":["a"]}}"#,
            "Additional properties not allowed",
        ),
        (
            r#"{"op":"subscribe","requestId":1,"query":{"className":"M","where":{},"order":"a"}}"#,
            "Additional properties not allowed",
        ),
        (
            r#"{"op":"subscribe","requestId":1,"query":{"className":"M","where":{},"include":["a"]}}"#,
            "Additional properties not allowed",
        ),
        (
            r#"{"op":"subscribe","requestId":1,"query":{"className":"M","where":{}},"sessionToken":null}"#,
            "Invalid type: null (expected string)",
        ),
        (
            r#"{"op":"unsubscribe"}"#,
            "Missing required property: requestId",
        ),
        (
            r#"{"op":"unsubscribe","requestId":1,"query":{}}"#,
            "Additional properties not allowed",
        ),
        (r#"{"op":"query"}"#, "Missing required property: requestId"),
        (
            r#"{"op":"query","requestId":1,"sessionToken":"x"}"#,
            "Additional properties not allowed",
        ),
        // tv4 visits data keys in JavaScript order: the extra key comes first here…
        (
            r#"{"op":"connect","foo":1,"applicationId":5}"#,
            "Additional properties not allowed",
        ),
        // …and integer-like keys are visited before every other key.
        (
            r#"{"op":"connect","applicationId":5,"1":true}"#,
            "Additional properties not allowed",
        ),
        (
            r#"{"op":"connect","applicationId":5,"foo":1}"#,
            "Invalid type: number (expected string)",
        ),
    ];
    for (input, message) in cases {
        assert_eq!(
            error_frame(input).as_deref(),
            Some(schema_error(message).as_str()),
            "input: {input}"
        );
    }
}

#[test]
fn invalid_json_is_silently_dropped() {
    let deep_and_broken = format!("{}1", "[".repeat(1000));
    for text in [
        r#"{"op":"connect","#,
        " ",
        "not json",
        "{'op':'connect'}",
        &deep_and_broken,
    ] {
        let err = ClientMessage::decode(text).unwrap_err();
        assert!(matches!(err, ProtocolError::InvalidJson(_)), "{text}");
        assert_eq!(err.to_wire(), None);
    }
}

#[test]
fn an_empty_frame_fails_like_the_reference() {
    // parse-server's socket wrapper hands the validator the event object when the data is
    // empty (falsy): it has no `op`.
    assert_eq!(
        error_frame("").as_deref(),
        Some(schema_error("Missing required property: op").as_str())
    );
}

/// `depth` levels of `{"$or": [ … ]}` around `{"a": 1}`.
fn nested_or(depth: usize) -> String {
    format!(
        "{}{{\"a\":1}}{}",
        "{\"$or\":[".repeat(depth),
        "]}".repeat(depth)
    )
}

#[test]
fn too_deep_frames_get_an_error_frame() {
    let max = livequery_protocol::error::MAX_FRAME_DEPTH;
    // A subscribe (or update) whose `where` is 1,000 levels deep: 102 with its requestId.
    for op in ["subscribe", "update"] {
        let text = format!(
            r#"{{"op":"{op}","requestId":7,"query":{{"className":"T","where":{}}}}}"#,
            nested_or(500)
        );
        let err = ClientMessage::decode(&text).unwrap_err();
        assert!(matches!(err, ProtocolError::TooDeep { .. }), "{err:?}");
        assert_eq!(err.request_id(), Some(RequestId::new(7.0)));
        let wire = err.to_wire().unwrap();
        assert_eq!(wire.code, ErrorCode::InvalidQuery);
        assert!(!wire.reconnect);
        assert_eq!(
            wire.message,
            format!("Query nested too deeply: JSON deeper than {max} levels")
        );
    }
    // Any other frame (or one whose top level cannot be read): code 1, requestId null.
    for text in [
        format!(
            r#"{{"op":"connect","applicationId":"a","x":{}}}"#,
            "[".repeat(200) + &"]".repeat(200)
        ),
        format!(r#"{{"op":"subscribe","query":{}}}"#, nested_or(100)),
        format!(r#"{{"op":{},"requestId":1}}"#, nested_or(100)),
        "[".repeat(10_000) + &"]".repeat(10_000),
    ] {
        let err = ClientMessage::decode(&text).unwrap_err();
        assert!(matches!(err, ProtocolError::TooDeep { .. }), "{err:?}");
        assert_eq!(err.request_id(), None);
        assert_eq!(
            error_frame(&text).as_deref(),
            Some(
                schema_error(&format!(
                    "Frame nested too deeply: JSON deeper than {max} levels"
                ))
                .as_str()
            )
        );
    }
    // Just within the limit (the frame, `query`, `where` and the arrays): parsed as usual.
    let within = format!(
        r#"{{"op":"subscribe","requestId":1,"query":{{"className":"T","where":{{"a":{}}}}}}}"#,
        "[".repeat(max - 3) + &"]".repeat(max - 3)
    );
    assert!(ClientMessage::decode(&within).is_ok());
    let beyond = format!(
        r#"{{"op":"subscribe","requestId":1,"query":{{"className":"T","where":{{"a":{}}}}}}}"#,
        "[".repeat(max - 2) + &"]".repeat(max - 2)
    );
    assert!(matches!(
        ClientMessage::decode(&beyond),
        Err(ProtocolError::TooDeep { .. })
    ));
}

#[test]
fn binary_frames_fail_like_the_reference() {
    let err = ClientMessage::decode_binary(br#"{"op":"connect","applicationId":"a"}"#).unwrap_err();
    assert_eq!(
        err.to_wire().unwrap().message,
        "Missing required property: op"
    );
}

#[test]
fn accepted_frames_decode_to_typed_values() {
    let ClientMessage::Connect(connect) = ClientMessage::decode(
        r#"{"op":"connect","applicationId":"plqApp","javascriptKey":"plqJsKey","sessionToken":"r:1","installationId":"inst"}"#,
    )
    .unwrap() else {
        panic!("not a connect");
    };
    assert_eq!(connect.application_id, "plqApp");
    assert_eq!(connect.javascript_key.as_deref(), Some("plqJsKey"));
    assert_eq!(connect.session_token.as_deref(), Some("r:1"));
    assert_eq!(connect.installation_id.as_deref(), Some("inst"));
    assert_eq!(
        connect.presented_keys().collect::<Vec<_>>(),
        vec![("javascriptKey", "plqJsKey")]
    );

    let ClientMessage::Subscribe(sub) = ClientMessage::decode(
        r#"{"op":"subscribe","requestId":1.5,"query":{"className":"Message","where":{"room":"r","score":{"$gt":10}},"keys":["a"],"watch":["b"]},"sessionToken":"r:2"}"#,
    )
    .unwrap() else {
        panic!("not a subscribe");
    };
    assert_eq!(sub.request_id, RequestId::new(1.5));
    assert_eq!(sub.query.class_name, "Message");
    assert_eq!(
        Value::Object(sub.query.where_.clone()),
        json!({"room":"r","score":{"$gt":10}})
    );
    assert_eq!(sub.query.keys, Some(vec!["a".to_owned()]));
    assert_eq!(sub.query.watch, Some(vec!["b".to_owned()]));
    assert_eq!(sub.session_token.as_deref(), Some("r:2"));

    assert!(matches!(
        ClientMessage::decode(r#"{"op":"update","requestId":-3,"query":{"className":"M","where":{}}}"#).unwrap(),
        ClientMessage::Update(s) if s.request_id == RequestId::new(-3.0)
    ));
    assert!(matches!(
        ClientMessage::decode(r#"{"op":"unsubscribe","requestId":0}"#).unwrap(),
        ClientMessage::Unsubscribe(u) if u.request_id == RequestId::new(0.0)
    ));
    assert!(matches!(
        ClientMessage::decode(r#"{"op":"query","requestId":7}"#).unwrap(),
        ClientMessage::Query(q) if q.request_id == RequestId::from(7)
    ));
}

fn text(bytes: bytes::Bytes) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[test]
fn frames_have_the_reference_shapes() {
    let with_inst = Envelope::new(
        ClientId::new("fdf64e98-c038-433b-b7ef-aea170730a47"),
        Some("6067095f-bbe2-46b3-bd78-4eb5897c5203"),
    );
    let bare = Envelope::new(ClientId::new("89a0f28b-d47f-41bc-96a9-d2daf81cda7e"), None);
    assert_eq!(
        text(
            ServerMessage::Connected {
                envelope: &with_inst
            }
            .encode()
        ),
        r#"{"op":"connected","clientId":"fdf64e98-c038-433b-b7ef-aea170730a47","installationId":"6067095f-bbe2-46b3-bd78-4eb5897c5203"}"#
    );
    assert_eq!(
        text(ServerMessage::Connected { envelope: &bare }.encode()),
        r#"{"op":"connected","clientId":"89a0f28b-d47f-41bc-96a9-d2daf81cda7e"}"#
    );
    assert_eq!(
        text(
            ServerMessage::Subscribed {
                envelope: &with_inst,
                request_id: RequestId::from(1)
            }
            .encode()
        ),
        r#"{"op":"subscribed","clientId":"fdf64e98-c038-433b-b7ef-aea170730a47","installationId":"6067095f-bbe2-46b3-bd78-4eb5897c5203","requestId":1}"#
    );
    assert_eq!(
        text(
            ServerMessage::Unsubscribed {
                envelope: &bare,
                request_id: RequestId::new(1.5)
            }
            .encode()
        ),
        r#"{"op":"unsubscribed","clientId":"89a0f28b-d47f-41bc-96a9-d2daf81cda7e","requestId":1.5}"#
    );

    let Value::Object(object) = json!({"room":"raw","score":21,"text":"a","createdAt":"2026-11-22T09:13:05.786Z","updatedAt":"2026-11-22T09:13:06.208Z","className":"Message","objectId":"F6eHDW86Rb"})
    else {
        unreachable!()
    };
    let Value::Object(original) = json!({"room":"raw","score":20,"text":"a","createdAt":"2026-11-22T09:13:05.786Z","updatedAt":"2026-11-22T09:13:05.786Z","className":"Message","objectId":"F6eHDW86Rb"})
    else {
        unreachable!()
    };
    let object = EncodedObject::from_map(&object);
    let original = EncodedObject::from_map(&original);
    assert_eq!(
        text(
            ServerMessage::Event {
                op: EventOp::Update,
                envelope: &bare,
                request_id: RequestId::from(1),
                object: &object,
                original: Some(&original)
            }
            .encode()
        ),
        r#"{"op":"update","clientId":"89a0f28b-d47f-41bc-96a9-d2daf81cda7e","requestId":1,"object":{"room":"raw","score":21,"text":"a","createdAt":"2026-11-22T09:13:05.786Z","updatedAt":"2026-11-22T09:13:06.208Z","className":"Message","objectId":"F6eHDW86Rb"},"original":{"room":"raw","score":20,"text":"a","createdAt":"2026-11-22T09:13:05.786Z","updatedAt":"2026-11-22T09:13:05.786Z","className":"Message","objectId":"F6eHDW86Rb"}}"#
    );
    assert_eq!(
        text(
            ServerMessage::Event {
                op: EventOp::Create,
                envelope: &bare,
                request_id: RequestId::from(1),
                object: &object,
                original: None
            }
            .encode()
        ),
        r#"{"op":"create","clientId":"89a0f28b-d47f-41bc-96a9-d2daf81cda7e","requestId":1,"object":{"room":"raw","score":21,"text":"a","createdAt":"2026-11-22T09:13:05.786Z","updatedAt":"2026-11-22T09:13:06.208Z","className":"Message","objectId":"F6eHDW86Rb"}}"#
    );
    assert_eq!(
        text(
            ServerMessage::Result {
                envelope: &bare,
                request_id: RequestId::from(2),
                results: std::slice::from_ref(&object)
            }
            .encode()
        ),
        format!(
            r#"{{"op":"result","clientId":"89a0f28b-d47f-41bc-96a9-d2daf81cda7e","requestId":2,"results":[{}]}}"#,
            String::from_utf8_lossy(object.as_bytes())
        )
    );
    assert_eq!(
        text(
            ServerMessage::Result {
                envelope: &bare,
                request_id: RequestId::from(2),
                results: &[]
            }
            .encode()
        ),
        r#"{"op":"result","clientId":"89a0f28b-d47f-41bc-96a9-d2daf81cda7e","requestId":2,"results":[]}"#
    );

    let regex = WireError::new(
        ErrorCode::InvalidQuery,
        "Invalid regular expression: Invalid regular expression: /(/: Unterminated group",
    );
    assert_eq!(
        text(
            ServerMessage::Error {
                error: &regex,
                request_id: Some(RequestId::from(1))
            }
            .encode()
        ),
        r#"{"op":"error","error":"Invalid regular expression: Invalid regular expression: /(/: Unterminated group","code":102,"reconnect":false,"requestId":1}"#
    );
    let unknown = WireError::subscription_not_found(
        "5f372656-ba6a-4539-82ff-ae02313ade65",
        RequestId::from(99),
    );
    assert_eq!(
        text(
            ServerMessage::Error {
                error: &unknown,
                request_id: None
            }
            .encode()
        ),
        r#"{"op":"error","error":"Cannot find subscription with clientId 5f372656-ba6a-4539-82ff-ae02313ade65 subscriptionId 99. Make sure you subscribe to live query server before unsubscribing.","code":2,"reconnect":true,"requestId":null}"#
    );
    let key = WireError::new(
        ErrorCode::InvalidKey,
        livequery_protocol::error::msg::INVALID_KEY,
    );
    assert_eq!(
        text(
            ServerMessage::Error {
                error: &key,
                request_id: None
            }
            .encode()
        ),
        r#"{"op":"error","error":"Key in request is not valid","code":4,"reconnect":true,"requestId":null}"#
    );
    let session = WireError::new(
        ErrorCode::InvalidSessionToken,
        livequery_protocol::error::msg::INVALID_SESSION_TOKEN,
    );
    assert_eq!(
        text(
            ServerMessage::Error {
                error: &session,
                request_id: Some(RequestId::from(3))
            }
            .encode()
        ),
        r#"{"op":"error","error":"Invalid session token","code":209,"reconnect":false,"requestId":3}"#
    );
}

#[test]
fn installation_ids_are_escaped() {
    let envelope = Envelope::new(ClientId::new("c"), Some("a\"b\\c\n"));
    let frame = text(
        ServerMessage::Connected {
            envelope: &envelope,
        }
        .encode(),
    );
    let ServerFrame::Connected {
        installation_id, ..
    } = ServerFrame::decode(&frame).unwrap()
    else {
        panic!("{frame}")
    };
    assert_eq!(installation_id.as_deref(), Some("a\"b\\c\n"));
}
