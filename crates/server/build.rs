//! Decides which tests that need an outside tool run, so that a missing tool reports them
//! as ignored, never as passed:
//! - `cfg(mongodb_live)`: `LIVEQUERY_TEST_MONGODB_URL` names a MongoDB replica set;
//! - `cfg(redis_tests)`: `redis-server` is on `PATH`, or `LIVEQUERY_TEST_REQUIRE_REDIS` is
//!   set (the test suite sets it after installing Redis; then a missing tool fails);
//! - `cfg(node_tests)`: `node` is on `PATH` and the conformance suite's Node packages are
//!   installed, or `LIVEQUERY_TEST_REQUIRE_NODE` is set.

use std::path::Path;

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

fn main() {
    for cfg in ["mongodb_live", "redis_tests", "node_tests"] {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
    }
    for env in [
        "LIVEQUERY_TEST_MONGODB_URL",
        "LIVEQUERY_TEST_REQUIRE_REDIS",
        "LIVEQUERY_TEST_REQUIRE_NODE",
        "PATH",
    ] {
        println!("cargo::rerun-if-env-changed={env}");
    }
    let sdk =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/conformance/node_modules/parse");
    println!("cargo::rerun-if-changed={}", sdk.display());
    if std::env::var("LIVEQUERY_TEST_MONGODB_URL").is_ok_and(|url| !url.trim().is_empty()) {
        println!("cargo::rustc-cfg=mongodb_live");
    }
    if std::env::var_os("LIVEQUERY_TEST_REQUIRE_REDIS").is_some() || on_path("redis-server") {
        println!("cargo::rustc-cfg=redis_tests");
    }
    if std::env::var_os("LIVEQUERY_TEST_REQUIRE_NODE").is_some()
        || (on_path("node") && sdk.is_dir())
    {
        println!("cargo::rustc-cfg=node_tests");
    }
}
