//! `where` clauses as raw JSON: compiling never panics, and neither does evaluating what
//! compiles against objects from the same input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use livequery_matcher::{CompileOptions, Query, SubqueryPolicy};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(Value::Array(items)) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let mut items = items.into_iter();
    let Some(Value::Object(where_)) = items.next() else {
        return;
    };
    for subqueries in [SubqueryPolicy::Reject, SubqueryPolicy::Represent] {
        let options = CompileOptions {
            subqueries,
            ..CompileOptions::default()
        };
        if let Ok(query) = Query::compile(&where_, &options) {
            assert!(!query.canonical().is_empty());
            let _ = query.footprint();
            for object in items.clone() {
                if let Value::Object(object) = object {
                    let _ = query.matches(&object);
                }
            }
        }
    }
});
