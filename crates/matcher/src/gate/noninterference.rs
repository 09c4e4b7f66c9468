//! Non-interference, property-tested: for random objects, ACLs, class-level permissions,
//! protected fields, readers and queries, the frames a reader receives are identical when
//! any field hidden from that reader is changed arbitrarily, and no payload ever contains
//! a hidden field.
//!
//! The pipeline under test is exactly the server's: [`admit`] at subscribe time, then per
//! change [`QueryMatch::evaluate`] and [`judge`], and the payloads through the
//! [`VisibleObject`]s the gate returns. Fields that decide *whether* a reader may read an
//! object at all (`ACL`, pointer-permission fields, the fields of `userField:` groups,
//! `objectId`) are not varied: like Parse REST, a reader learns whether it may read an
//! object.

use proptest::prelude::*;
use serde_json::{Map, Value, json};

use super::*;
use crate::classify::ChangeKind;
use crate::{CompileOptions, Query};

const FIELDS: &[&str] = &[
    "f",
    "g",
    "secret",
    "email",
    "authData",
    "sessionToken",
    "password",
];
/// Fields that decide access; never varied.
const ACCESS_FIELDS: &[&str] = &["ACL", "owner", "objectId"];

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (0i64..3).prop_map(Value::from),
        prop_oneof![Just("a"), Just("b")].prop_map(Value::from),
        prop_oneof![Just("u1"), Just("u2")]
            .prop_map(|id| json!({"__type": "Pointer", "className": "_User", "objectId": id})),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => scalar(),
        1 => prop::collection::vec(scalar(), 0..3).prop_map(Value::Array),
        1 => scalar().prop_map(|v| json!({"x": v})),
    ]
}

fn acl() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        4 => Just(None),
        2 => Just(Some(json!({"*": {"read": true}}))),
        1 => Just(Some(json!({"u1": {"read": true}}))),
        1 => Just(Some(json!({"role:R": {"read": true}}))),
        1 => Just(Some(json!({}))),
    ]
}

fn owner() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        Just(None),
        prop_oneof![Just("u1"), Just("u2")].prop_map(|id| Some(
            json!({"__type": "Pointer", "className": "_User", "objectId": id})
        )),
        Just(Some(
            json!({"__type": "Pointer", "className": "Team", "objectId": "u1"})
        )),
    ]
}

fn object() -> impl Strategy<Value = Map<String, Value>> {
    (
        prop_oneof![Just("u1"), Just("u2"), Just("o")],
        prop::collection::vec((prop::sample::select(FIELDS), value()), 0..6),
        acl(),
        owner(),
    )
        .prop_map(|(id, fields, acl, owner)| {
            let mut map: Map<String, Value> =
                fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            map.insert("objectId".into(), id.into());
            if let Some(acl) = acl {
                map.insert("ACL".into(), acl);
            }
            if let Some(owner) = owner {
                map.insert("owner".into(), owner);
            }
            map
        })
}

fn permission() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        6 => Just(None),
        1 => Just(Some(json!({"*": true}))),
        1 => Just(Some(json!({}))),
        1 => Just(Some(json!({"requiresAuthentication": true}))),
        1 => Just(Some(json!({"u1": true}))),
        1 => Just(Some(json!({"role:R": true}))),
        1 => Just(Some(json!({"pointerFields": ["owner"]}))),
    ]
}

fn protected_fields() -> impl Strategy<Value = Value> {
    let group = prop_oneof![
        Just("*"),
        Just("authenticated"),
        Just("u1"),
        Just("role:R"),
        Just("userField:owner"),
    ];
    let fields = prop::collection::vec(
        prop::sample::select(&["f", "g", "secret", "email", "owner"][..]),
        0..3,
    );
    prop::collection::vec((group, fields), 0..4).prop_map(|groups| {
        Value::Object(
            groups
                .into_iter()
                .map(|(g, f)| (g.to_owned(), json!(f)))
                .collect(),
        )
    })
}

fn clp() -> impl Strategy<Value = Option<ClassPermissions>> {
    prop_oneof![
        1 => Just(None),
        4 => (permission(), permission(), any::<bool>(), protected_fields()).prop_map(
            |(find, get, read_user_fields, protected)| {
                let mut clp = Map::new();
                if let Some(find) = find {
                    clp.insert("find".into(), find);
                }
                if let Some(get) = get {
                    clp.insert("get".into(), get);
                }
                if read_user_fields {
                    clp.insert("readUserFields".into(), json!(["owner"]));
                }
                clp.insert("protectedFields".into(), protected);
                Some(ClassPermissions::from_json(&Value::Object(clp)))
            }
        ),
    ]
}

fn reader() -> impl Strategy<Value = Reader> {
    prop_oneof![
        Just(Reader::anonymous()),
        Just(Reader::master()),
        Just(Reader::user("u1", Vec::<String>::new())),
        Just(Reader::user("u1", ["R"])),
        Just(Reader::user("u2", ["R"])),
    ]
}

fn path() -> impl Strategy<Value = &'static str> {
    prop::sample::select(
        &[
            "f",
            "g",
            "secret",
            "email",
            "owner",
            "f.x",
            "secret.x",
            "authData.x",
            "sessionToken",
            "password",
            "objectId",
        ][..],
    )
}

fn constraint() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => scalar(),
        1 => prop::collection::vec(scalar(), 0..3).prop_map(|items| json!({"$in": items})),
        1 => prop::collection::vec(scalar(), 0..3).prop_map(|items| json!({"$nin": items})),
        1 => scalar().prop_map(|v| json!({"$ne": v})),
        1 => (0i64..3).prop_map(|v| json!({"$gt": v})),
        1 => any::<bool>().prop_map(|b| json!({"$exists": b})),
        1 => Just(json!({"$regex": "^a"})),
        1 => prop_oneof![Just("u1"), Just("u2"), Just("o")].prop_map(Value::from),
    ]
}

fn clause(depth: u32) -> BoxedStrategy<Map<String, Value>> {
    let leaf = prop::collection::vec((path(), constraint()), 0..2).prop_map(|entries| {
        entries
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect::<Map<String, Value>>()
    });
    if depth == 0 {
        return leaf.boxed();
    }
    (
        leaf,
        prop::option::of((
            prop_oneof![Just("$or"), Just("$and"), Just("$nor")],
            prop::collection::vec(clause(depth - 1), 1..3),
        )),
    )
        .prop_map(|(mut map, logical)| {
            if let Some((op, branches)) = logical {
                map.insert(
                    op.to_owned(),
                    Value::Array(branches.into_iter().map(Value::Object).collect()),
                );
            }
            map
        })
        .boxed()
}

fn field_list() -> impl Strategy<Value = Option<Vec<String>>> {
    prop::option::of(
        prop::collection::btree_set(
            prop::sample::select(
                &[
                    "f",
                    "g",
                    "secret",
                    "email",
                    "authData",
                    "authData.x",
                    "sessionToken",
                    "owner",
                ][..],
            ),
            1..3,
        )
        .prop_map(|set| set.into_iter().map(str::to_owned).collect()),
    )
}

/// How the original of a change is known.
#[derive(Debug, Clone)]
enum OriginalShape {
    Exact(Option<Map<String, Value>>),
    Partial(Vec<String>),
    Unknown,
}

fn original_shape() -> impl Strategy<Value = OriginalShape> {
    prop_oneof![
        1 => Just(OriginalShape::Exact(None)),
        4 => object().prop_map(|o| OriginalShape::Exact(Some(o))),
        2 => prop::collection::vec(
            prop::sample::select(&["f", "g", "secret", "email", "owner", "ACL"][..]),
            1..3
        )
        .prop_map(|changed| OriginalShape::Partial(changed.into_iter().map(str::to_owned).collect())),
        1 => Just(OriginalShape::Unknown),
    ]
}

#[derive(Debug, Clone)]
struct Case {
    class_name: &'static str,
    kind: ChangeKind,
    permissions: Option<ClassPermissions>,
    reader: Reader,
    where_: Map<String, Value>,
    watch: Option<Vec<String>>,
    keys: Option<Vec<String>>,
    current: Map<String, Value>,
    original: OriginalShape,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop_oneof![Just("C"), Just("_User"), Just("_Session")],
        prop_oneof![4 => Just(ChangeKind::Save), 1 => Just(ChangeKind::Delete)],
        clp(),
        reader(),
        clause(2),
        field_list(),
        field_list(),
        object(),
        original_shape(),
    )
        .prop_map(
            |(class_name, kind, permissions, reader, where_, watch, keys, current, original)| {
                Case {
                    class_name,
                    kind,
                    permissions,
                    reader,
                    where_,
                    watch,
                    keys,
                    current,
                    original,
                }
            },
        )
}

/// The partial original: the current object without the changed fields.
fn partial_of(current: &Map<String, Value>, changed: &[String]) -> Map<String, Value> {
    current
        .iter()
        .filter(|(k, _)| !changed.contains(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// One delivered frame, rendered; `None` when the subscription is refused.
type Frames = Option<Vec<String>>;

/// Runs the gate as the server does; checks every payload against the hidden fields of
/// the object it shows.
fn frames(
    case: &Case,
    current: &Map<String, Value>,
    original: &OriginalShape,
) -> Result<Frames, TestCaseError> {
    let mut where_ = case.where_.clone();
    if restrict_where(case.class_name, case.reader.user_id.as_deref(), &mut where_).is_err() {
        return Ok(None);
    }
    let options = CompileOptions {
        allow_regex: regex_allowed(&case.reader, true),
        ..CompileOptions::default()
    };
    let Ok(query) = Query::compile(&where_, &options) else {
        return Ok(None);
    };
    let permissions = case.permissions.as_ref();
    let lookup = |_: &str| permissions;
    let request = SubscriptionRequest {
        class_name: case.class_name,
        query: &query,
        watch: case.watch.as_deref(),
    };
    let Ok(admission) = admit(&request, &case.reader, &lookup) else {
        return Ok(None);
    };
    let partial;
    let original = match original {
        OriginalShape::Exact(original) => Original::Exact(original.as_ref()),
        OriginalShape::Partial(changed) => {
            partial = partial_of(current, changed);
            Original::Partial {
                object: &partial,
                changed,
            }
        }
        OriginalShape::Unknown => Original::Unknown,
    };
    let change = Change {
        kind: case.kind,
        class_name: case.class_name,
        permissions,
        current,
        original,
    };
    let subscriber = Subscriber {
        reader: &case.reader,
        op: admission.op,
        query: &query,
        watch: case.watch.as_deref(),
        keys: case.keys.as_deref(),
    };
    let matched = QueryMatch::evaluate(&query, &change);
    let mut out = Vec::new();
    if let Verdict::Deliver {
        event,
        object,
        original,
    } = judge(&change, &subscriber, matched)
    {
        let mut rendered = format!("{event:?}");
        for shown in std::iter::once(&object).chain(original.as_ref()) {
            let hidden = Hidden::for_object(
                ClassKind::of(case.class_name),
                permissions,
                &case.reader,
                shown.object(),
            );
            // Sorted: the variation below may reorder keys, which is not a leak.
            let entries: std::collections::BTreeMap<String, Value> = shown
                .entries()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            for key in entries.keys() {
                prop_assert!(!hidden.contains(key), "{key} leaked in {entries:?}");
                prop_assert!(
                    !(case.class_name == "_User"
                        && matches!(key.as_str(), "sessionToken" | "password")),
                    "{key} leaked"
                );
            }
            rendered.push_str(&serde_json::to_string(&entries).expect("JSON values serialize"));
        }
        out.push(rendered);
    }
    Ok(Some(out))
}

/// Changes every field hidden on `object` (except access-deciding ones) to another value,
/// or removes it, or adds it.
fn vary(
    object: &Map<String, Value>,
    hidden: &Hidden<'_>,
    replacements: &[(bool, Value)],
) -> Map<String, Value> {
    let mut varied = object.clone();
    for (i, field) in FIELDS.iter().enumerate() {
        if ACCESS_FIELDS.contains(field) || !hidden.contains(field) {
            continue;
        }
        let (remove, value) = &replacements[i % replacements.len()];
        if *remove {
            varied.shift_remove(*field);
        } else {
            varied.insert((*field).to_owned(), value.clone());
        }
    }
    varied
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8192, ..ProptestConfig::default() })]

    #[test]
    fn hidden_fields_never_influence_or_appear_in_frames(
        case in case(),
        current_replacements in prop::collection::vec((any::<bool>(), value()), 1..4),
        original_replacements in prop::collection::vec((any::<bool>(), value()), 1..4),
    ) {
        let base = frames(&case, &case.current, &case.original)?;
        let kind = ClassKind::of(case.class_name);
        let permissions = case.permissions.as_ref();
        let hidden_current = Hidden::for_object(kind, permissions, &case.reader, &case.current);
        let current = vary(&case.current, &hidden_current, &current_replacements);
        let original = match &case.original {
            OriginalShape::Exact(Some(original)) => {
                let hidden = Hidden::for_object(kind, permissions, &case.reader, original);
                OriginalShape::Exact(Some(vary(original, &hidden, &original_replacements)))
            }
            other => other.clone(),
        };
        let varied = frames(&case, &current, &original)?;
        prop_assert_eq!(base, varied);
    }
}
