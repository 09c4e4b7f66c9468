//! Helpers shared by the unit tests of the matcher's modules.

use serde_json::{Map, Value};

use crate::CompileOptions;
use crate::query::Query;

/// `where_` compiled with the default options.
pub(crate) fn compile(where_: Value) -> Query {
    Query::compile(
        where_.as_object().expect("object"),
        &CompileOptions::default(),
    )
    .expect("compiles")
}

/// `v` as an object.
pub(crate) fn object(v: Value) -> Map<String, Value> {
    v.as_object().cloned().expect("object")
}
