//! Runs the data-driven fixtures in `tests/fixtures/`.

use livequery_matcher::gate::{Reader, acl_allows_read};
use livequery_matcher::{ChangeKind, Classification, CompileOptions, Query, Side, classify};
use serde_json::{Map, Value};

fn load(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture exists"))
        .expect("fixture is JSON")
}

fn compile(where_: &Value) -> Result<Query, livequery_matcher::QueryError> {
    Query::compile(
        where_.as_object().expect("where is an object"),
        &CompileOptions::default(),
    )
}

fn run_matching(file: &str) -> usize {
    let fixture = load(file);
    let objects = fixture["objects"].as_object().cloned().unwrap_or_default();
    let resolve = |item: &Value| -> Map<String, Value> {
        match item {
            Value::String(name) => objects[name]
                .as_object()
                .cloned()
                .unwrap_or_else(|| panic!("unknown object {name}")),
            Value::Object(o) => o.clone(),
            other => panic!("bad object reference {other}"),
        }
    };
    let mut failures = Vec::new();
    let cases = fixture["cases"].as_array().expect("cases");
    for case in cases {
        let name = case["name"].as_str().unwrap_or("?");
        let query = match compile(&case["where"]) {
            Ok(q) => q,
            Err(e) => {
                failures.push(format!("{name}: does not compile: {e}"));
                continue;
            }
        };
        for (key, expected) in [("match", true), ("no_match", false)] {
            for item in case[key].as_array().into_iter().flatten() {
                let object = resolve(item);
                if query.matches(&object) != expected {
                    failures.push(format!("{name}: expected {key} for {item}"));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failing fixture(s) in {file}:\n{}",
        failures.len(),
        failures.join("\n")
    );
    cases.len()
}

#[test]
fn operator_fixtures() {
    assert!(run_matching("operators.json") > 100);
}

#[test]
fn regression_fixtures() {
    assert!(run_matching("regressions.json") > 0);
}

#[test]
fn compile_error_fixtures() {
    let fixture = load("errors.json");
    let mut failures = Vec::new();
    for case in fixture["cases"].as_array().expect("cases") {
        match compile(&case["where"]) {
            Ok(_) => failures.push(format!("{}: compiled", case["where"])),
            Err(err) => {
                assert_eq!(err.code(), 102);
                let text = err.to_string();
                if let Some(message) = case["message"].as_str()
                    && text != message
                {
                    failures.push(format!("{}: got {text:?}, want {message:?}", case["where"]));
                }
                if let Some(part) = case["contains"].as_str()
                    && !text.contains(part)
                {
                    failures.push(format!(
                        "{}: got {text:?}, want it to contain {part:?}",
                        case["where"]
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn reader(spec: &Value) -> Reader {
    if spec["master"].as_bool() == Some(true) {
        return Reader::master();
    }
    match spec["user"].as_str() {
        Some(user) => Reader::user(
            user,
            spec["roles"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str),
        ),
        None => Reader::anonymous(),
    }
}

#[test]
fn classification_fixtures() {
    let fixture = load("classify.json");
    let mut failures = Vec::new();
    for case in fixture["cases"].as_array().expect("cases") {
        let name = case["name"].as_str().unwrap_or("?");
        let query = compile(&case["where"]).expect("scenario queries compile");
        let reader = reader(&case["reader"]);
        let kind = if case["kind"] == "delete" {
            ChangeKind::Delete
        } else {
            ChangeKind::Save
        };
        let original = case["original"].as_object();
        let current = case["current"].as_object().expect("current");
        fn side<'a>(query: &Query, reader: &Reader, o: &'a Map<String, Value>) -> Side<'a> {
            Side {
                object: o,
                matches: query.matches(o),
                readable: acl_allows_read(o, reader),
            }
        }
        let watch: Option<Vec<String>> = case["watch"].as_array().map(|w| {
            w.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        });
        let got = match classify(
            kind,
            original.map(|o| side(&query, &reader, o)),
            side(&query, &reader, current),
            watch.as_deref(),
        ) {
            Classification::Nothing => "nothing",
            Classification::Create => "create",
            Classification::Enter {
                with_original: true,
            } => "enter",
            Classification::Enter {
                with_original: false,
            } => "enter-no-original",
            Classification::Update => "update",
            Classification::Leave {
                object_is_original: false,
            } => "leave",
            Classification::Leave {
                object_is_original: true,
            } => "leave-as-original",
            Classification::Delete => "delete",
        };
        if got != case["expect"] {
            failures.push(format!("{name}: got {got}, want {}", case["expect"]));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
