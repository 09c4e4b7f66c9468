//! Builds N distinct subscriptions of one shape and keeps them, to measure the heap a
//! distinct query costs with a heap profiler (the structures are leaked on purpose, so
//! that "memory leaked" is exactly what they hold):
//!
//! ```text
//! cargo build --release -p livequery-matcher --example index_footprint
//! heaptrack target/release/examples/index_footprint equality index 100000
//! ```
//!
//! Shapes: `equality` (`{room: "room-i", tag: {$ne: i}}`), `range` (`{score: {$gt: i}}`),
//! `window` (a one-second `createdAt` interval). Modes: `compile` keeps the compiled
//! queries, `index` inserts them into a `SubscriptionIndex` (one subscriber each). Prints
//! the matcher's own estimate ([`Query::footprint`]) for comparison.

use livequery_matcher::{CompileOptions, Query, SubscriptionIndex};
use serde_json::{Value, json};

fn clause(shape: &str, i: usize) -> Value {
    match shape {
        "equality" => json!({"room": format!("room-{i}"), "tag": {"$ne": i}}),
        "range" => json!({"score": {"$gt": i}}),
        "window" => {
            let second = |s: usize| {
                format!(
                    "2025-01-{:02}T{:02}:{:02}:{:02}.000Z",
                    1 + s / 86_400,
                    s / 3600 % 24,
                    s / 60 % 60,
                    s % 60
                )
            };
            json!({"createdAt": {"$gte": second(i), "$lt": second(i + 1)}})
        }
        other => panic!("unknown shape {other} (equality, range, window)"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let shape = args.get(1).map_or("equality", String::as_str);
    let mode = args.get(2).map_or("index", String::as_str);
    let n: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let options = CompileOptions::default();
    let compile = |i| {
        Query::compile(clause(shape, i).as_object().expect("object"), &options).expect("compiles")
    };
    let estimate: usize = (0..n.min(1000))
        .map(|i| compile(i).footprint())
        .sum::<usize>()
        / n.clamp(1, 1000);
    match mode {
        "compile" => {
            let queries: Vec<Query> = (0..n).map(compile).collect();
            std::mem::forget(queries);
        }
        "index" => {
            let mut index = SubscriptionIndex::new();
            for i in 0..n {
                index.insert("Msg", compile(i), i as u32);
            }
            std::mem::forget(index);
        }
        other => panic!("unknown mode {other} (compile, index)"),
    }
    println!("{shape} {mode} n={n}: Query::footprint estimate {estimate} bytes per query");
}
