//! Property tests: decoding never panics, decode∘encode round-trips for client frames, and
//! server frames decode back to what was encoded.

use livequery_protocol::{
    ClientId, ClientMessage, ConnectRequest, EncodedObject, Envelope, ErrorCode, EventOp,
    QueryRequest, QuerySpec, RequestId, ServerFrame, ServerMessage, SubscribeRequest,
    UnsubscribeRequest, WireError,
};
use proptest::prelude::*;
use serde_json::{Map, Value};

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i32>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        "[a-z$._]{0,6}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(("[a-z$_]{1,5}", inner), 0..4)
                .prop_map(|entries| Value::Object(entries.into_iter().collect())),
        ]
    })
}

fn object_map() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::vec(("[a-zA-Z][a-zA-Z0-9_]{0,6}", json_value()), 0..6)
        .prop_map(|entries| entries.into_iter().collect())
}

fn opt_string() -> impl Strategy<Value = Option<String>> {
    prop::option::of("[ -~]{0,12}")
}

fn string_set() -> impl Strategy<Value = Option<Vec<String>>> {
    prop::option::of(
        prop::collection::btree_set("[a-z]{1,5}", 1..4).prop_map(|s| s.into_iter().collect()),
    )
}

fn request_id() -> impl Strategy<Value = RequestId> {
    prop_oneof![
        (-1000i32..1000).prop_map(|i| RequestId::new(f64::from(i))),
        (-1e6f64..1e6).prop_map(RequestId::new)
    ]
}

fn client_message() -> impl Strategy<Value = ClientMessage> {
    let connect = (
        "[ -~]{0,10}",
        (opt_string(), opt_string(), opt_string(), opt_string()),
        (opt_string(), opt_string(), opt_string()),
    )
        .prop_map(|(application_id, (a, b, c, d), (e, f, g))| {
            ClientMessage::Connect(ConnectRequest {
                application_id,
                javascript_key: a,
                master_key: b,
                client_key: c,
                windows_key: d,
                rest_api_key: e,
                session_token: f,
                installation_id: g,
            })
        });
    let subscribe = (
        request_id(),
        "[A-Za-z_]{1,8}",
        object_map(),
        string_set(),
        string_set(),
        opt_string(),
        any::<bool>(),
    )
        .prop_map(
            |(request_id, class_name, where_, keys, watch, session_token, update)| {
                let request = SubscribeRequest {
                    request_id,
                    query: QuerySpec {
                        class_name: class_name.into(),
                        where_,
                        keys,
                        watch,
                    },
                    session_token,
                };
                if update {
                    ClientMessage::Update(request)
                } else {
                    ClientMessage::Subscribe(request)
                }
            },
        );
    prop_oneof![
        connect,
        subscribe,
        request_id()
            .prop_map(|request_id| ClientMessage::Unsubscribe(UnsubscribeRequest { request_id })),
        request_id().prop_map(|request_id| ClientMessage::Query(QueryRequest { request_id })),
    ]
}

proptest! {
    #[test]
    fn decoding_arbitrary_text_never_panics(text in "\\PC{0,200}") {
        let _ = ClientMessage::decode(&text);
    }

    #[test]
    fn decoding_arbitrary_json_never_panics(value in json_value()) {
        let _ = ClientMessage::decode(&value.to_string());
        let _ = ServerFrame::decode(&value.to_string());
    }

    #[test]
    fn decoding_frames_shaped_like_requests_never_panics(
        op in prop_oneof![Just("connect"), Just("subscribe"), Just("update"), Just("unsubscribe"), Just("query")],
        body in prop::collection::vec(("(requestId|query|applicationId|sessionToken|keys|where|className|[a-z]{1,4})", json_value()), 0..5),
    ) {
        let mut map: Map<String, Value> = body.into_iter().collect();
        map.insert("op".into(), op.into());
        let _ = ClientMessage::decode(&Value::Object(map).to_string());
    }

    #[test]
    fn client_frames_round_trip(message in client_message()) {
        let decoded = ClientMessage::decode(&message.encode()).expect("encoded frames are valid");
        prop_assert_eq!(decoded, message);
    }

    #[test]
    fn server_frames_round_trip(
        client in "[a-f0-9-]{1,36}",
        installation in opt_string(),
        id in request_id(),
        object in object_map(),
        original in prop::option::of(object_map()),
        op in prop_oneof![Just(EventOp::Create), Just(EventOp::Enter), Just(EventOp::Update), Just(EventOp::Leave), Just(EventOp::Delete)],
        message in "[ -~]{0,30}",
        reconnect in any::<bool>(),
    ) {
        let envelope = Envelope::new(ClientId::new(client.as_str()), installation.as_deref());
        let encoded = EncodedObject::from_map(&object);
        let encoded_original = original.as_ref().map(EncodedObject::from_map);
        let frame = ServerMessage::Event { op, envelope: &envelope, request_id: id, object: &encoded, original: encoded_original.as_ref() }.encode();
        let decoded = ServerFrame::decode(std::str::from_utf8(&frame).unwrap()).unwrap();
        prop_assert_eq!(decoded, ServerFrame::Event {
            op, client_id: client.clone(), installation_id: installation.clone(), request_id: id, object: object.clone(), original,
        });

        let results = [encoded.clone(), encoded.clone()];
        let frame = ServerMessage::Result { envelope: &envelope, request_id: id, results: &results }.encode();
        let decoded = ServerFrame::decode(std::str::from_utf8(&frame).unwrap()).unwrap();
        prop_assert_eq!(decoded, ServerFrame::Result {
            client_id: client.clone(), installation_id: installation.clone(), request_id: id, results: vec![object.clone(), object],
        });

        let error = WireError::new(ErrorCode::InvalidQuery, message.clone()).with_reconnect(reconnect);
        let frame = ServerMessage::Error { error: &error, request_id: Some(id) }.encode();
        let decoded = ServerFrame::decode(std::str::from_utf8(&frame).unwrap()).unwrap();
        prop_assert_eq!(decoded, ServerFrame::Error { error: message, code: 102, reconnect, request_id: Some(id) });
    }
}
