//! parse-server's LiveQuery options, as a layer of livequery's configuration.
//!
//! parse-server's LiveQuery server is configured with a flat object (`appId`, `masterKey`,
//! `keyPairs`, `websocketTimeout` in milliseconds, …; `LiveQueryServerOptions` in
//! parse-server's `src/Options/Definitions.js`) or with `PARSE_LIVE_QUERY_SERVER_*`
//! environment variables. Each is rewritten here into livequery's own key before the layers
//! are merged, so a layer's parse-server option and livequery key have the same precedence,
//! and units are converted explicitly (a bare `10000` is milliseconds, as in parse-server,
//! never seconds). Setting both spellings of one key in the same layer is an error, as is an
//! option livequery cannot honour: nothing is silently ignored.

use anyhow::{Context, bail};
use toml::{Table, Value};

/// Prefix of parse-server's LiveQuery environment variables.
pub(crate) const ENV_PREFIX: &str = "PARSE_LIVE_QUERY_SERVER_";

/// How one parse-server option becomes livequery configuration.
#[derive(Debug, Clone, Copy)]
enum Target {
    /// A string, copied to `section.key`.
    Text(&'static str, &'static str),
    /// Milliseconds (an integer, or digits in a string) → a duration at `section.key`.
    Millis(&'static str, &'static str),
    /// A JSON object of client keys → `parse.key_pairs`.
    KeyPairs,
    /// A port → `server.listen = "0.0.0.0:<port>"` (parse-server listens on every interface).
    Port,
    /// A Redis URL → `source.redis_url`, and `source.kind = "redis"` unless the layer sets
    /// the kind (parse-server's LiveQuery server reads Redis whenever `redisURL` is set).
    RedisUrl,
    /// node-redis client options → `source.redis_username` / `source.redis_password`.
    RedisOptions,
    /// Not supported; the text says what to do instead.
    Unsupported(&'static str),
}

/// One option: its name in parse-server's options, the suffix of its environment variable.
#[derive(Debug)]
struct ParseOption {
    name: &'static str,
    env: &'static str,
    target: Target,
}

/// Every `LiveQueryServerOptions` key of parse-server 9, plus `readOnlyMasterKey`.
const OPTIONS: &[ParseOption] = &[
    ParseOption {
        name: "appId",
        env: "APP_ID",
        target: Target::Text("parse", "app_id"),
    },
    ParseOption {
        name: "masterKey",
        env: "MASTER_KEY",
        target: Target::Text("parse", "master_key"),
    },
    ParseOption {
        name: "readOnlyMasterKey",
        env: "READ_ONLY_MASTER_KEY",
        target: Target::Text("parse", "read_only_master_key"),
    },
    ParseOption {
        name: "serverURL",
        env: "SERVER_URL",
        target: Target::Text("parse", "server_url"),
    },
    ParseOption {
        name: "keyPairs",
        env: "KEY_PAIRS",
        target: Target::KeyPairs,
    },
    ParseOption {
        name: "websocketTimeout",
        env: "WEBSOCKET_TIMEOUT",
        target: Target::Millis("server", "websocket_timeout"),
    },
    ParseOption {
        name: "cacheTimeout",
        env: "CACHE_TIMEOUT",
        target: Target::Millis("auth", "cache_timeout"),
    },
    ParseOption {
        name: "logLevel",
        env: "LOG_LEVEL",
        target: Target::Text("log", "level"),
    },
    ParseOption {
        name: "port",
        env: "PORT",
        target: Target::Port,
    },
    ParseOption {
        name: "redisURL",
        env: "REDIS_URL",
        target: Target::RedisUrl,
    },
    ParseOption {
        name: "redisOptions",
        env: "REDIS_OPTIONS",
        target: Target::RedisOptions,
    },
    ParseOption {
        name: "pubSubAdapter",
        env: "PUB_SUB_ADAPTER",
        target: Target::Unsupported(
            "livequery reads parse-server's Redis channels (redisURL) or MongoDB change streams, or takes messages on its ingest API",
        ),
    },
    ParseOption {
        name: "wssAdapter",
        env: "WSS_ADAPTER",
        target: Target::Unsupported("livequery has its own WebSocket server"),
    },
];

/// Rewrites the parse-server options at the top of `layer` (a file's table) into
/// livequery's keys. `origin` names the layer in errors.
pub(crate) fn translate_file(layer: &mut Table, origin: &str) -> anyhow::Result<()> {
    for option in OPTIONS {
        if let Some(value) = layer.remove(option.name) {
            apply(layer, option, option.name, value)
                .with_context(|| format!("{origin}: option {}", option.name))?;
        }
    }
    Ok(())
}

/// The layer made of parse-server's environment variables in `env`:
/// `PARSE_LIVE_QUERY_SERVER_*`, and `PORT` (which `PARSE_LIVE_QUERY_SERVER_PORT` overrides).
/// An unknown `PARSE_LIVE_QUERY_SERVER_*` variable is an error: a misspelt one would
/// otherwise be ignored without a word.
pub(crate) fn env_layer(env: &[(String, String)]) -> anyhow::Result<Table> {
    let mut layer = Table::new();
    let port = OPTIONS
        .iter()
        .find(|o| matches!(o.target, Target::Port))
        .expect("OPTIONS has a port option");
    // A name given twice keeps its last value, as a process environment would.
    let env: std::collections::BTreeMap<&str, &str> =
        env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let lookup = |name: &str| env.get(name).copied();
    if let Some(value) = lookup("PORT")
        && lookup(&format!("{ENV_PREFIX}PORT")).is_none()
    {
        apply(&mut layer, port, "PORT", Value::String(value.to_owned()))
            .context("environment variable PORT")?;
    }
    for (&name, &value) in &env {
        let Some(suffix) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let Some(option) = OPTIONS.iter().find(|o| o.env == suffix) else {
            let known: Vec<String> = OPTIONS
                .iter()
                .map(|o| format!("{ENV_PREFIX}{}", o.env))
                .collect();
            bail!(
                "unknown environment variable {name} (parse-server's LiveQuery variables are {})",
                known.join(", ")
            );
        };
        apply(&mut layer, option, name, Value::String(value.to_owned()))
            .with_context(|| format!("environment variable {name}"))?;
    }
    Ok(layer)
}

/// Sets livequery's key(s) for `option` in `layer`. `label` is how the user wrote it.
fn apply(layer: &mut Table, option: &ParseOption, label: &str, value: Value) -> anyhow::Result<()> {
    match option.target {
        Target::Text(section, key) => {
            let Value::String(text) = value else {
                bail!("expected a string");
            };
            set(layer, section, key, Value::String(text), label)
        }
        Target::Millis(section, key) => {
            let millis = match &value {
                Value::Integer(n) => u64::try_from(*n).ok(),
                Value::String(text) => text.trim().parse::<u64>().ok(),
                _ => None,
            };
            let Some(millis) = millis else {
                bail!("expected a number of milliseconds (an integer, e.g. 10000), got {value}");
            };
            set(
                layer,
                section,
                key,
                Value::String(format!("{millis}ms")),
                label,
            )
        }
        Target::KeyPairs => {
            let pairs = object(
                value,
                "a JSON object of keys, e.g. {\"javascriptKey\": \"…\"}",
            )?;
            let mut keys = Table::new();
            for (name, key) in pairs {
                let Value::String(key) = key else {
                    bail!("the value of {name:?} is not a string");
                };
                keys.insert(name, Value::String(key));
            }
            set(layer, "parse", "key_pairs", Value::Table(keys), label)
        }
        Target::Port => {
            let port = match &value {
                Value::Integer(n) => u16::try_from(*n).ok(),
                Value::String(text) => text.trim().parse::<u16>().ok(),
                _ => None,
            }
            .filter(|port| *port != 0);
            let Some(port) = port else {
                bail!("expected a port number from 1 to 65535, got {value}");
            };
            set(
                layer,
                "server",
                "listen",
                Value::String(format!("0.0.0.0:{port}")),
                label,
            )
        }
        Target::RedisUrl => {
            let Value::String(url) = value else {
                bail!("expected a string");
            };
            set(layer, "source", "redis_url", Value::String(url), label)?;
            let source = section(layer, "source")?;
            source
                .entry("kind")
                .or_insert_with(|| Value::String("redis".to_owned()));
            Ok(())
        }
        Target::RedisOptions => {
            let options = object(value, "a JSON object of Redis client options")?;
            for (name, value) in options {
                let key = match name.as_str() {
                    "username" => "redis_username",
                    "password" => "redis_password",
                    "database" | "db" => bail!(
                        "redisOptions.{name} is not supported: put the database number in the URL's path (redis://host:6379/2)"
                    ),
                    "socket" | "tls" => bail!(
                        "redisOptions.{name} is not supported: use a rediss:// URL, with source.redis_tls_ca_file (and redis_tls_cert_file / redis_tls_key_file for client certificates)"
                    ),
                    _ => bail!(
                        "redisOptions.{name} is not supported (livequery honours username and password; TLS comes from a rediss:// URL and source.redis_tls_*)"
                    ),
                };
                let Value::String(text) = value else {
                    bail!("redisOptions.{name}: expected a string");
                };
                set(layer, "source", key, Value::String(text), label)?;
            }
            Ok(())
        }
        Target::Unsupported(instead) => bail!("not supported: {instead}"),
    }
}

/// A table, or a JSON object in a string (the form environment variables take).
fn object(value: Value, expected: &str) -> anyhow::Result<Table> {
    match value {
        Value::Table(table) => Ok(table),
        Value::String(text) => {
            let json: serde_json::Value = serde_json::from_str(&text)
                .map_err(|err| anyhow::anyhow!("expected {expected}: {err}"))?;
            if !json.is_object() {
                bail!("expected {expected}");
            }
            Table::try_from(json).map_err(|err| anyhow::anyhow!("expected {expected}: {err}"))
        }
        _ => bail!("expected {expected}"),
    }
}

fn section<'a>(layer: &'a mut Table, name: &str) -> anyhow::Result<&'a mut Table> {
    match layer
        .entry(name)
        .or_insert_with(|| Value::Table(Table::new()))
    {
        Value::Table(table) => Ok(table),
        _ => bail!("[{name}] is not a table"),
    }
}

/// Sets `section.key`, refusing to replace a value the same layer gave livequery's key.
fn set(
    layer: &mut Table,
    section_name: &str,
    key: &str,
    value: Value,
    label: &str,
) -> anyhow::Result<()> {
    let section = section(layer, section_name)?;
    if section.contains_key(key) {
        bail!("{label} and {section_name}.{key} are both set; keep one");
    }
    section.insert(key.to_owned(), value);
    Ok(())
}

/// The log filter for `log.level`: parse-server's levels (any case) — `error`, `warn`,
/// `info`, `http`, `verbose`, `debug`, `silly`, and `none`/`silent` for no logging — or `RUST_LOG`
/// directives in which every part names a level (`info,livequery_server::connection=debug`).
/// Anything else is an error: a bare unknown word would be read by `tracing` as a module
/// name and silence every other line, errors included.
pub(crate) fn log_filter(level: &str) -> anyhow::Result<String> {
    let word = |w: &str| -> Option<&'static str> {
        Some(match w.trim().to_ascii_lowercase().as_str() {
            "none" | "silent" | "off" => "off",
            "error" => "error",
            "warn" | "warning" => "warn",
            // winston's `http` sits between info and verbose; livequery logs nothing there.
            "info" | "http" => "info",
            "verbose" | "debug" => "debug",
            "silly" | "trace" => "trace",
            _ => return None,
        })
    };
    if let Some(level) = word(level) {
        return Ok(level.to_owned());
    }
    let expected = "expected error, warn, info, verbose, debug, silly or none (parse-server's levels), or RUST_LOG directives such as \"info,livequery_server::connection=debug\"";
    let mut directives = Vec::new();
    for part in level.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('=') {
            Some((target, level)) if !target.trim().is_empty() => {
                let Some(level) = word(level) else {
                    bail!("log.level: {part:?} does not end in a level; {expected}");
                };
                directives.push(format!("{}={level}", target.trim()));
            }
            Some(_) => bail!("log.level: {part:?} has no module before '='; {expected}"),
            None => match word(part) {
                Some(level) => directives.push(level.to_owned()),
                None => bail!("log.level: unknown level {part:?}; {expected}"),
            },
        }
    }
    if directives.is_empty() {
        bail!("log.level is empty; {expected}");
    }
    let filter = directives.join(",");
    tracing_subscriber::EnvFilter::builder()
        .parse(&filter)
        .with_context(|| format!("log.level: {level:?}"))?;
    Ok(filter)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn log_levels_map_and_unknown_ones_are_refused() {
        for (given, filter) in [
            ("VERBOSE", "debug"),
            ("INFO", "info"),
            ("ERROR", "error"),
            ("NONE", "off"),
            ("silent", "off"),
            ("warn", "warn"),
            ("silly", "trace"),
            ("debug", "debug"),
            (
                "info,livequery_server::connection=VERBOSE",
                "info,livequery_server::connection=debug",
            ),
        ] {
            assert_eq!(log_filter(given).expect(given), filter, "{given}");
        }
        for bad in [
            "LOUD",
            "livequery_server",
            "info,verbose2",
            "x=loud",
            "=info",
            "",
        ] {
            assert!(log_filter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_environment_variable_is_translated() {
        let layer = env_layer(&env(&[
            ("PARSE_LIVE_QUERY_SERVER_APP_ID", "app"),
            ("PARSE_LIVE_QUERY_SERVER_MASTER_KEY", "mk"),
            ("PARSE_LIVE_QUERY_SERVER_READ_ONLY_MASTER_KEY", "ro"),
            ("PARSE_LIVE_QUERY_SERVER_SERVER_URL", "http://p/parse"),
            (
                "PARSE_LIVE_QUERY_SERVER_KEY_PAIRS",
                r#"{"javascriptKey":"js"}"#,
            ),
            ("PARSE_LIVE_QUERY_SERVER_WEBSOCKET_TIMEOUT", "2500"),
            ("PARSE_LIVE_QUERY_SERVER_CACHE_TIMEOUT", "60000"),
            ("PARSE_LIVE_QUERY_SERVER_LOG_LEVEL", "VERBOSE"),
            ("PARSE_LIVE_QUERY_SERVER_PORT", "8080"),
            ("PORT", "9999"),
            ("PARSE_LIVE_QUERY_SERVER_REDIS_URL", "redis://r:6379"),
            (
                "PARSE_LIVE_QUERY_SERVER_REDIS_OPTIONS",
                r#"{"username":"u","password":"p"}"#,
            ),
            ("UNRELATED", "x"),
        ]))
        .expect("valid");
        let expected: Table = toml::from_str(
            r#"
            [parse]
            app_id = "app"
            master_key = "mk"
            read_only_master_key = "ro"
            server_url = "http://p/parse"
            key_pairs = { javascriptKey = "js" }
            [server]
            websocket_timeout = "2500ms"
            listen = "0.0.0.0:8080"
            [auth]
            cache_timeout = "60000ms"
            [log]
            level = "VERBOSE"
            [source]
            redis_url = "redis://r:6379"
            kind = "redis"
            redis_username = "u"
            redis_password = "p"
            "#,
        )
        .expect("toml");
        assert_eq!(layer, expected);
        let port_only = env_layer(&env(&[("PORT", "9999")])).expect("valid");
        assert_eq!(port_only["server"]["listen"].as_str(), Some("0.0.0.0:9999"));
    }

    #[test]
    fn bad_or_unsupported_environment_values_are_refused() {
        for (name, value) in [
            ("PARSE_LIVE_QUERY_SERVER_WEBSOCKET_TIMEOUT", "10s"),
            ("PARSE_LIVE_QUERY_SERVER_CACHE_TIMEOUT", "-1"),
            ("PARSE_LIVE_QUERY_SERVER_KEY_PAIRS", "javascriptKey=js"),
            (
                "PARSE_LIVE_QUERY_SERVER_KEY_PAIRS",
                r#"{"javascriptKey":1}"#,
            ),
            ("PARSE_LIVE_QUERY_SERVER_PORT", "0"),
            ("PORT", "http"),
            (
                "PARSE_LIVE_QUERY_SERVER_REDIS_OPTIONS",
                r#"{"socket":{"tls":true}}"#,
            ),
            ("PARSE_LIVE_QUERY_SERVER_REDIS_OPTIONS", r#"{"database":2}"#),
            ("PARSE_LIVE_QUERY_SERVER_PUB_SUB_ADAPTER", "x"),
            ("PARSE_LIVE_QUERY_SERVER_APPID", "typo"),
        ] {
            assert!(env_layer(&env(&[(name, value)])).is_err(), "{name}={value}");
        }
    }

    #[test]
    fn file_options_are_rewritten_and_conflicts_refused() {
        let mut layer: Table = toml::from_str(
            "appId = \"a\"\nwebsocketTimeout = 1500\nkeyPairs = { masterKey = \"m\" }\nport = 1338\n[source]\nkind = \"mongodb\"\n",
        )
        .expect("toml");
        layer.insert("redisURL".into(), Value::String("rediss://h:6380".into()));
        translate_file(&mut layer, "f").expect("valid");
        assert_eq!(layer["parse"]["app_id"].as_str(), Some("a"));
        assert_eq!(
            layer["server"]["websocket_timeout"].as_str(),
            Some("1500ms")
        );
        assert_eq!(layer["server"]["listen"].as_str(), Some("0.0.0.0:1338"));
        assert_eq!(layer["parse"]["key_pairs"]["masterKey"].as_str(), Some("m"));
        // The layer's own kind wins over the one redisURL implies.
        assert_eq!(layer["source"]["kind"].as_str(), Some("mongodb"));
        assert!(!layer.contains_key("appId"));

        let mut both: Table =
            toml::from_str("appId = \"a\"\n[parse]\napp_id = \"b\"\n").expect("toml");
        let err = translate_file(&mut both, "f").expect_err("conflict");
        assert!(format!("{err:#}").contains("both set"), "{err:#}");
        let mut seconds: Table = toml::from_str("cacheTimeout = \"5s\"").expect("toml");
        assert!(translate_file(&mut seconds, "f").is_err());
    }
}
