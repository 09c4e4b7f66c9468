//! Configuration: layered loading, validation, redaction.
//!
//! Layers, later ones winning: built-in defaults (`config/default.toml`, compiled in) →
//! `config/default.toml` next to the working directory, if present → `--config FILE` →
//! environment variables `LIVEQUERY__SECTION__KEY` (e.g. `LIVEQUERY__SERVER__LISTEN`).
//! Loading is two-stage: the raw serde structs mirror the file and reject unknown keys;
//! `Config::from_raw` validates them into the typed [`Config`] the server uses.
//!
//! parse-server's own LiveQuery options (`appId`, `websocketTimeout` in ms, …) are accepted
//! too, at the top of a file (TOML, or a parse-server JSON configuration: `--config x.json`)
//! and as `PARSE_LIVE_QUERY_SERVER_*` / `PORT` variables, which form a layer between the
//! files and the `LIVEQUERY__` variables (`config/parse_options.rs`).

mod parse_options;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use livequery_matcher::gate::{ClassPermissions, ProtectedFieldGroups};
use serde::{Deserialize, Serialize};

use crate::hooks::{HookSpec, OnFailure, Target, Trigger};

/// The defaults, compiled in so the binary runs without any file.
pub const DEFAULT_TOML: &str = include_str!("../../../config/default.toml");

/// The names `key_pairs` may use (parse-server's `keyPairs`), in canonical spelling.
pub const KEY_NAMES: [&str; 5] = [
    "javascriptKey",
    "clientKey",
    "restAPIKey",
    "windowsKey",
    "masterKey",
];

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: RawServer,
    parse: RawParse,
    auth: RawAuth,
    limits: RawLimits,
    source: RawSource,
    mongodb: RawMongo,
    dispatch: RawDispatch,
    log: RawLog,
    #[serde(default)]
    hooks: RawHooks,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
struct RawHooks {
    webhook_key: String,
    #[serde(with = "humantime_serde")]
    default_timeout: Duration,
    hook: Vec<RawHook>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawHook {
    trigger: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    class_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    function: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    on_failure: Option<String>,
}

/// The `[hooks]` section, validated (`protocol-spec/hooks.md`).
#[derive(Clone, Default, Serialize)]
pub struct HooksConfig {
    /// parse-server's `webhookKey`, sent as `X-Parse-Webhook-Key` to webhook URLs.
    #[serde(serialize_with = "redact")]
    pub webhook_key: String,
    /// The hooks.
    pub hooks: Vec<HookSpec>,
}

impl std::fmt::Debug for HooksConfig {
    // The webhook key and the URLs (which may hold secrets) stay out of debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HooksConfig")
            .field("hooks", &self.hooks.len())
            .finish_non_exhaustive()
    }
}

/// Validates the `[hooks]` section; `server_url` and `has_key` say whether Cloud Functions
/// can be called.
fn hooks_config(raw: &RawHooks, server_url: &str, has_key: bool) -> anyhow::Result<HooksConfig> {
    if raw.default_timeout.is_zero() {
        bail!("hooks.default_timeout must be greater than 0");
    }
    let mut hooks: Vec<HookSpec> = Vec::new();
    for (i, hook) in raw.hook.iter().enumerate() {
        let at = format!("hooks.hook[{i}]");
        let Some(trigger) = Trigger::from_name(&hook.trigger) else {
            bail!(
                "{at}.trigger: {:?} is not beforeConnect, beforeSubscribe or afterLiveQueryEvent",
                hook.trigger
            );
        };
        let class_name = hook.class_name.clone().filter(|c| !c.is_empty());
        match (trigger, &class_name) {
            (Trigger::BeforeConnect, Some(_)) => {
                bail!("{at}: beforeConnect concerns no class; remove class_name")
            }
            (Trigger::BeforeSubscribe | Trigger::AfterLiveQueryEvent, None) => {
                bail!("{at}: {} needs class_name", trigger.name())
            }
            _ => {}
        }
        let target = match (&hook.function, &hook.url) {
            (Some(name), None) if !name.is_empty() => {
                if name.contains(['/', '?', '#']) {
                    bail!("{at}.function: {name:?} is not a Cloud Function name");
                }
                if server_url.is_empty() || !has_key {
                    bail!(
                        "{at}.function: calling a Cloud Function needs parse.server_url and parse.master_key (or parse.read_only_master_key)"
                    );
                }
                Target::Function(name.clone())
            }
            (None, Some(url)) if url.starts_with("http://") || url.starts_with("https://") => {
                Target::Url(url.clone())
            }
            (None, Some(url)) => bail!(
                "{at}.url: {:?} is not an http(s) URL",
                redact_url_credentials(url)
            ),
            _ => bail!("{at}: set exactly one of function and url"),
        };
        let timeout = hook.timeout.unwrap_or(raw.default_timeout);
        if timeout.is_zero() {
            bail!("{at}.timeout must be greater than 0");
        }
        let on_failure = match hook.on_failure.as_deref() {
            None => OnFailure::Reject,
            Some(name) => OnFailure::from_name(name).with_context(|| {
                format!("{at}.on_failure: {name:?} is not reject, send_unmodified or drop")
            })?,
        };
        if on_failure == OnFailure::Drop && trigger != Trigger::AfterLiveQueryEvent {
            bail!("{at}.on_failure: drop applies to afterLiveQueryEvent only");
        }
        if hooks
            .iter()
            .any(|h| h.trigger == trigger && h.class_name == class_name)
        {
            bail!(
                "{at}: a second {} hook{}",
                trigger.name(),
                class_name
                    .as_deref()
                    .map_or(String::new(), |c| format!(" for class {c}"))
            );
        }
        hooks.push(HookSpec {
            trigger,
            class_name,
            target,
            timeout,
            on_failure,
        });
    }
    Ok(HooksConfig {
        webhook_key: raw.webhook_key.clone(),
        hooks,
    })
}

/// A list from a file, or a comma-separated string from the environment
/// (`LIVEQUERY__MONGODB__CLASSES=Message,Room`).
fn list_or_comma_separated<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum List {
        Items(Vec<String>),
        Text(String),
    }
    Ok(match List::deserialize(deserializer)? {
        List::Items(items) => items,
        List::Text(text) => text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawMongo {
    url: String,
    database: String,
    collection_prefix: String,
    #[serde(deserialize_with = "list_or_comma_separated")]
    classes: Vec<String>,
    enable_pre_images: bool,
    resume_token_file: String,
    object_cache_entries: usize,
    max_subquery_results: usize,
    files_url: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: String,
    admin_listen: String,
    #[serde(with = "humantime_serde")]
    websocket_timeout: Duration,
    #[serde(with = "humantime_serde")]
    shutdown_grace: Duration,
    #[serde(with = "humantime_serde")]
    drain_period: Duration,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawParse {
    app_id: String,
    master_key: String,
    read_only_master_key: String,
    server_url: String,
    check_application_id: bool,
    key_pairs: BTreeMap<String, String>,
    protected_fields: BTreeMap<String, BTreeMap<String, Vec<String>>>,
    allow_regex: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    #[serde(with = "humantime_serde")]
    cache_timeout: Duration,
    #[serde(with = "humantime_serde")]
    lookup_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_connections: usize,
    max_message_bytes: usize,
    max_subscriptions_per_connection: usize,
    #[serde(with = "humantime_serde")]
    connect_timeout: Duration,
    outbound_queue_frames: usize,
    outbound_queue_bytes: usize,
    #[serde(with = "humantime_serde")]
    write_timeout: Duration,
    max_query_depth: usize,
    max_operand_items: usize,
    max_query_conditions: usize,
    max_subscription_bytes: usize,
    query_result_limit: usize,
    max_ingest_bytes: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    kind: String,
    queue: usize,
    redis_url: String,
    channel_prefix: String,
    redis_username: String,
    redis_password: String,
    redis_tls_ca_file: String,
    redis_tls_cert_file: String,
    redis_tls_key_file: String,
    #[serde(deserialize_with = "list_or_comma_separated")]
    redis_sentinels: Vec<String>,
    redis_sentinel_master: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawDispatch {
    workers: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    level: String,
    format: String,
}

/// Which change source feeds the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// parse-server's pub/sub messages posted to the HTTP ingest endpoint on the same port.
    Embedded,
    /// parse-server's Redis pub/sub channels (`liveQuery.redisURL`).
    Redis(RedisConfig),
    /// MongoDB change streams on parse-server's database.
    #[serde(rename = "mongodb")]
    Mongo(MongoConfig),
}

/// Settings of the Redis source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RedisConfig {
    /// `redis://…` or `rediss://…` (TLS) URL, possibly with `user:password@`.
    #[serde(serialize_with = "redact_url")]
    pub url: String,
    /// Channel prefix (parse-server uses the app id).
    pub channel_prefix: String,
    /// ACL user name, when not in the URL (empty: the URL's).
    pub username: String,
    /// Password, when not in the URL (empty: the URL's).
    #[serde(serialize_with = "redact")]
    pub password: String,
    /// PEM file of the CA(s) the server's certificate must chain to (empty: the system's).
    pub tls_ca_file: String,
    /// PEM file of a client certificate chain (mutual TLS; empty: none).
    pub tls_cert_file: String,
    /// PEM file of the client certificate's private key.
    pub tls_key_file: String,
    /// Redis Sentinel addresses (`host:port` or `redis://…`); empty: connect to `url`.
    #[serde(skip)]
    pub sentinels: Vec<String>,
    /// The master's name in Sentinel (`sentinel monitor <name> …`).
    pub sentinel_master: String,
}

/// Settings of the MongoDB source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MongoConfig {
    /// `mongodb://…` URL of the replica set.
    pub url: String,
    /// Database (empty: the URL's).
    pub database: String,
    /// parse-server's `collectionPrefix`.
    pub collection_prefix: String,
    /// Live classes (empty: every class).
    pub classes: Vec<String>,
    /// Switch pre- and post-images on at start-up.
    pub enable_pre_images: bool,
    /// Where the resume token is saved (empty: not saved).
    pub resume_token_file: String,
    /// Documents kept to reconstruct originals without pre-images.
    pub object_cache_entries: usize,
    /// Largest result of one subquery.
    pub max_subquery_results: usize,
    /// Base of File URLs (parse-server's publicServerURL; empty: `parse.server_url`).
    pub files_url: String,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable, multi-line.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// The validated configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// Address the WebSocket and HTTP endpoints listen on.
    pub listen: SocketAddr,
    /// Separate address for `/health`, `/metrics` and the ingest API, with capacity of its
    /// own (`None`: they are served on `listen`).
    pub admin_listen: Option<SocketAddr>,
    /// Ping interval; a peer that misses a pong is dropped at the next tick.
    #[serde(with = "humantime_serde")]
    pub websocket_timeout: Duration,
    /// How long shutdown waits for connections to close.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Over how long a graceful drain closes the open WebSockets, in waves (0: at once).
    #[serde(with = "humantime_serde")]
    pub drain_period: Duration,
    /// The Parse application id (channel prefix for the Redis source).
    pub app_id: String,
    /// The Parse master key: authenticates the HTTP ingest endpoint, and REST lookups unless
    /// `read_only_master_key` is set.
    #[serde(serialize_with = "redact")]
    pub master_key: String,
    /// parse-server's read-only master key: used for REST lookups when set (empty: not set).
    #[serde(serialize_with = "redact")]
    pub read_only_master_key: String,
    /// parse-server's REST URL, for auth lookups and `query` (empty: not used).
    pub server_url: String,
    /// Compare `connect`'s `applicationId` with `app_id`.
    pub check_application_id: bool,
    /// Allowed client keys by canonical name; `masterKey` enables master clients.
    #[serde(serialize_with = "redact_map")]
    pub key_pairs: BTreeMap<String, String>,
    /// Default protected fields per class (merged into each class's CLP).
    #[serde(skip)]
    pub protected_fields: BTreeMap<String, ProtectedFieldGroups>,
    /// Raw form of `protected_fields`, for printing.
    #[serde(rename = "protected_fields")]
    pub protected_fields_raw: BTreeMap<String, BTreeMap<String, Vec<String>>>,
    /// Whether non-master clients may use `$regex`.
    pub allow_regex: bool,
    /// TTL of resolved sessions and class schemas.
    #[serde(with = "humantime_serde")]
    pub cache_timeout: Duration,
    /// Timeout of one auth lookup (session, roles, schema).
    #[serde(with = "humantime_serde")]
    pub lookup_timeout: Duration,
    /// Limits.
    pub limits: Limits,
    /// The source.
    pub source: SourceKind,
    /// Capacity of the queue between the sources and the dispatch workers, in events.
    pub source_queue: usize,
    /// Workers workers (events are sharded by object across them).
    pub dispatch_workers: usize,
    /// Log filter (`RUST_LOG` syntax; `RUST_LOG` overrides it).
    pub log_level: String,
    /// Log format.
    pub log_format: LogFormat,
    /// Cloud Code LiveQuery hooks (not serialized: webhook URLs may hold secrets; the
    /// effective values are printed redacted).
    #[serde(skip)]
    pub hooks: HooksConfig,
    /// The effective layered values in the file's structure, secrets redacted.
    #[serde(skip)]
    effective: RawConfig,
}

/// Resource limits; every one of them produces an error frame or close code when hit.
#[derive(Debug, Clone, Serialize)]
pub struct Limits {
    /// Concurrent WebSocket connections.
    pub max_connections: usize,
    /// Largest inbound frame or message.
    pub max_message_bytes: usize,
    /// Subscriptions per connection.
    pub max_subscriptions_per_connection: usize,
    /// Time between socket open and `connect`.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Frames queued for one client before it is cut off as too slow.
    pub outbound_queue_frames: usize,
    /// Bytes queued for one client before it is cut off as too slow.
    pub outbound_queue_bytes: usize,
    /// Longest a write to one client may block.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Nesting of `$or`/`$and`/`$nor`.
    pub max_query_depth: usize,
    /// Items in one `$in`/`$nin`/`$all`/`$containedBy` operand.
    pub max_operand_items: usize,
    /// Conditions in one `where` (predicates and logical branches, subqueries included).
    pub max_query_conditions: usize,
    /// Bytes the subscriptions of one connection may hold (compiled queries, index
    /// postings, kept `where` text).
    pub max_subscription_bytes: usize,
    /// Objects in one `result` frame.
    pub query_result_limit: usize,
    /// Largest body accepted by the HTTP ingest endpoint.
    pub max_ingest_bytes: usize,
}

/// One file's layer, parse-server option names rewritten into livequery's keys.
fn layer(
    text: &str,
    json: bool,
    origin: &str,
) -> anyhow::Result<config::File<config::FileSourceString, config::FileFormat>> {
    let mut table: toml::Table = if json {
        let value: serde_json::Value =
            serde_json::from_str(text).with_context(|| format!("{origin}: not valid JSON"))?;
        toml::Table::try_from(value).with_context(|| format!("{origin}: not a JSON object"))?
    } else {
        toml::from_str(text).with_context(|| format!("{origin}: not valid TOML"))?
    };
    parse_options::translate_file(&mut table, origin)?;
    let text = toml::to_string(&table).with_context(|| format!("rendering {origin}"))?;
    Ok(config::File::from_str(&text, config::FileFormat::Toml))
}

/// `scheme://user:password@host` → `scheme://<redacted>@host`.
fn redact_url_credentials(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    match authority.rfind('@') {
        Some(at) => format!("{scheme}://<redacted>@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

fn redact_url<S: serde::Serializer>(value: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&redact_url_credentials(value))
}

fn redact<S: serde::Serializer>(value: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(if value.is_empty() { "" } else { "<redacted>" })
}

fn redact_map<S: serde::Serializer>(
    value: &BTreeMap<String, String>,
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = s.serialize_map(Some(value.len()))?;
    for key in value.keys() {
        map.serialize_entry(key, "<redacted>")?;
    }
    map.end()
}

/// The Redis source's settings; every error that no retry could heal is found here.
fn redis_config(raw: &RawSource, app_id: &str) -> anyhow::Result<RedisConfig> {
    use redis::IntoConnectionInfo;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let url = &raw.redis_url;
    let shown = redact_url_credentials(url);
    let tls = url.starts_with("rediss://");
    if !tls
        && !url.starts_with("redis://")
        && !url.starts_with("redis+unix://")
        && !url.starts_with("unix://")
    {
        bail!("source.redis_url: {shown:?} is not a redis://, rediss:// or unix:// URL");
    }
    // The driver's own parse (host, port, database, credentials); its error is generic, so
    // it cannot echo a password.
    url.as_str()
        .into_connection_info()
        .map_err(|err| anyhow::anyhow!("source.redis_url: {shown:?} is not valid: {err}"))?;
    let files = [
        ("source.redis_tls_ca_file", &raw.redis_tls_ca_file),
        ("source.redis_tls_cert_file", &raw.redis_tls_cert_file),
        ("source.redis_tls_key_file", &raw.redis_tls_key_file),
    ];
    if let Some((name, _)) = files.iter().find(|(_, path)| !path.is_empty())
        && !tls
    {
        bail!("{name} is set but source.redis_url is not a rediss:// (TLS) URL");
    }
    if raw.redis_tls_cert_file.is_empty() != raw.redis_tls_key_file.is_empty() {
        bail!(
            "source.redis_tls_cert_file and source.redis_tls_key_file go together: set both or neither"
        );
    }
    let sentinels: Vec<String> = raw
        .redis_sentinels
        .iter()
        .map(|s| {
            if s.contains("://") {
                s.clone()
            } else {
                format!("redis://{s}")
            }
        })
        .collect();
    if sentinels.is_empty() != raw.redis_sentinel_master.is_empty() {
        bail!(
            "source.redis_sentinels and source.redis_sentinel_master go together: set both or neither"
        );
    }
    for sentinel in &sentinels {
        sentinel.as_str().into_connection_info().map_err(|err| {
            let shown = redact_url_credentials(sentinel);
            anyhow::anyhow!("source.redis_sentinels: {shown:?} is not a Sentinel address: {err}")
        })?;
    }
    if !sentinels.is_empty() && files.iter().any(|(_, path)| !path.is_empty()) {
        bail!("source.redis_tls_* files are not supported with source.redis_sentinels");
    }
    for (name, path) in files.iter().take(2).filter(|(_, path)| !path.is_empty()) {
        let certificates = CertificateDer::pem_file_iter(path.as_str())
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|err| {
                anyhow::anyhow!("{name}: cannot read certificates from {path:?}: {err}")
            })?;
        if certificates.is_empty() {
            bail!("{name}: {path:?} holds no PEM certificate");
        }
    }
    if !raw.redis_tls_key_file.is_empty() {
        let path = &raw.redis_tls_key_file;
        PrivateKeyDer::from_pem_file(path.as_str()).map_err(|err| {
            anyhow::anyhow!(
                "source.redis_tls_key_file: cannot read a private key from {path:?}: {err}"
            )
        })?;
    }
    Ok(RedisConfig {
        url: url.clone(),
        channel_prefix: if raw.channel_prefix.is_empty() {
            app_id.to_owned()
        } else {
            raw.channel_prefix.clone()
        },
        username: raw.redis_username.clone(),
        password: raw.redis_password.clone(),
        tls_ca_file: raw.redis_tls_ca_file.clone(),
        tls_cert_file: raw.redis_tls_cert_file.clone(),
        tls_key_file: raw.redis_tls_key_file.clone(),
        sentinels,
        sentinel_master: raw.redis_sentinel_master.clone(),
    })
}

impl Config {
    /// Loads the layered configuration from the process environment. `file` is
    /// `--config FILE`.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        // Variables that are not valid UTF-8 cannot be configuration; skip them.
        let env: Vec<(String, String)> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        Self::load_from(file, &env)
    }

    /// Loads the layered configuration with `env` as the environment: the defaults,
    /// `./config/default.toml`, `file` (TOML, or JSON when it ends in `.json`), parse-server's
    /// variables (`PARSE_LIVE_QUERY_SERVER_*`, `PORT`), then `LIVEQUERY__SECTION__KEY`.
    pub fn load_from(file: Option<&Path>, env: &[(String, String)]) -> anyhow::Result<Self> {
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULT_TOML,
            config::FileFormat::Toml,
        ));
        let local = Path::new("config/default.toml");
        let files = local.exists().then_some(local).into_iter().chain(
            file.map(|file| {
                if file.exists() {
                    Ok(file)
                } else {
                    Err(anyhow::anyhow!(
                        "config file {} does not exist",
                        file.display()
                    ))
                }
            })
            .transpose()?,
        );
        for file in files {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?;
            let json = file
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("json"));
            builder = builder.add_source(layer(&text, json, &file.display().to_string())?);
        }
        let parse_env = parse_options::env_layer(env)?;
        builder = builder.add_source(config::File::from_str(
            &toml::to_string(&parse_env).context("rendering parse-server's variables")?,
            config::FileFormat::Toml,
        ));
        let ours: config::Map<String, String> = env
            .iter()
            .filter(|(k, _)| k.starts_with("LIVEQUERY__"))
            .cloned()
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix("LIVEQUERY")
                .prefix_separator("__")
                .separator("__")
                .source(Some(ours))
                // Values stay strings until a typed key asks for a number or a boolean, so a key
                // like "00123" is not turned into the number 123.
                .try_parsing(false),
        );
        let raw: RawConfig = builder
            .build()
            .context("reading configuration")?
            .try_deserialize()
            .context("invalid configuration")?;
        Self::from_raw(raw)
    }

    /// The defaults with `layers` (TOML texts, which may use parse-server's option names)
    /// applied in order; no files, no environment.
    pub fn from_toml_layers(layers: &[&str]) -> anyhow::Result<Self> {
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULT_TOML,
            config::FileFormat::Toml,
        ));
        for (i, text) in layers.iter().enumerate() {
            builder = builder.add_source(layer(text, false, &format!("layer {i}"))?);
        }
        let raw: RawConfig = builder
            .build()?
            .try_deserialize()
            .context("invalid configuration")?;
        Self::from_raw(raw)
    }

    fn from_raw(raw: RawConfig) -> anyhow::Result<Self> {
        let mut effective = raw.clone();
        let listen: SocketAddr = raw.server.listen.parse().with_context(|| {
            format!(
                "server.listen: {:?} is not an IP:port address",
                raw.server.listen
            )
        })?;
        let admin_listen: Option<SocketAddr> = match raw.server.admin_listen.as_str() {
            "" => None,
            text => Some(text.parse().with_context(|| {
                format!("server.admin_listen: {text:?} is not an IP:port address")
            })?),
        };
        let mut key_pairs = BTreeMap::new();
        for (name, value) in raw.parse.key_pairs {
            // Environment variables arrive lower-cased; accept any case.
            let Some(canonical) = KEY_NAMES.iter().find(|k| k.eq_ignore_ascii_case(&name)) else {
                bail!(
                    "parse.key_pairs: unknown key name {name:?} (expected one of {})",
                    KEY_NAMES.join(", ")
                );
            };
            if !value.is_empty() {
                key_pairs.insert((*canonical).to_owned(), value);
            }
        }
        effective.parse.key_pairs = key_pairs
            .keys()
            .map(|name| (name.clone(), "<redacted>".to_owned()))
            .collect();
        for secret in [
            &mut effective.parse.master_key,
            &mut effective.parse.read_only_master_key,
            &mut effective.source.redis_password,
            &mut effective.hooks.webhook_key,
        ] {
            if !secret.is_empty() {
                "<redacted>".clone_into(secret);
            }
        }
        effective.source.redis_url = redact_url_credentials(&effective.source.redis_url);
        for sentinel in &mut effective.source.redis_sentinels {
            *sentinel = redact_url_credentials(sentinel);
        }
        effective.mongodb.url = redact_url_credentials(&effective.mongodb.url);
        effective.parse.server_url = redact_url_credentials(&effective.parse.server_url);
        for hook in &mut effective.hooks.hook {
            if let Some(url) = &mut hook.url {
                *url = redact_url_credentials(url);
            }
        }
        let hooks = hooks_config(
            &raw.hooks,
            &raw.parse.server_url,
            !(raw.parse.master_key.is_empty() && raw.parse.read_only_master_key.is_empty()),
        )?;
        let protected_fields = raw
            .parse
            .protected_fields
            .iter()
            .map(|(class, groups)| {
                let groups = groups
                    .iter()
                    .map(|(group, fields)| {
                        (
                            group.as_str().into(),
                            fields.iter().map(|f| f.as_str().into()).collect(),
                        )
                    })
                    .collect();
                (class.clone(), groups)
            })
            .collect();
        let source = match raw.source.kind.as_str() {
            "embedded" => SourceKind::Embedded,
            "redis" => SourceKind::Redis(redis_config(&raw.source, &raw.parse.app_id)?),
            "mongodb" => {
                let mongo = &raw.mongodb;
                if !mongo.url.starts_with("mongodb://") && !mongo.url.starts_with("mongodb+srv://")
                {
                    bail!(
                        "mongodb.url: {:?} is not a mongodb:// or mongodb+srv:// URL",
                        redact_url_credentials(&mongo.url)
                    );
                }
                if mongo.max_subquery_results == 0 {
                    bail!("mongodb.max_subquery_results must be at least 1");
                }
                if let Some(bad) = mongo
                    .classes
                    .iter()
                    .find(|c| c.is_empty() || c.starts_with("_Join:") || c.as_str() == "_SCHEMA")
                {
                    bail!("mongodb.classes: {bad:?} is not a class that can be served");
                }
                SourceKind::Mongo(MongoConfig {
                    url: mongo.url.clone(),
                    database: mongo.database.clone(),
                    collection_prefix: mongo.collection_prefix.clone(),
                    classes: mongo.classes.clone(),
                    enable_pre_images: mongo.enable_pre_images,
                    resume_token_file: mongo.resume_token_file.clone(),
                    object_cache_entries: mongo.object_cache_entries,
                    max_subquery_results: mongo.max_subquery_results,
                    files_url: mongo.files_url.trim_end_matches('/').to_owned(),
                })
            }
            other => {
                bail!(
                    "source.kind: unknown source {other:?} (expected \"embedded\", \"redis\" or \"mongodb\")"
                )
            }
        };
        if !raw.parse.server_url.is_empty()
            && !raw.parse.server_url.starts_with("http://")
            && !raw.parse.server_url.starts_with("https://")
        {
            bail!(
                "parse.server_url: {:?} is not an http(s) URL",
                raw.parse.server_url
            );
        }
        let log_level = parse_options::log_filter(&raw.log.level)?;
        let log_format = match raw.log.format.as_str() {
            "pretty" => LogFormat::Pretty,
            "json" => LogFormat::Json,
            other => bail!("log.format: {other:?} is not \"pretty\" or \"json\""),
        };
        let l = raw.limits;
        for (name, value) in [
            ("limits.max_connections", l.max_connections),
            ("limits.max_message_bytes", l.max_message_bytes),
            (
                "limits.max_subscriptions_per_connection",
                l.max_subscriptions_per_connection,
            ),
            ("limits.outbound_queue_frames", l.outbound_queue_frames),
            ("limits.outbound_queue_bytes", l.outbound_queue_bytes),
            ("limits.max_query_depth", l.max_query_depth),
            ("limits.max_operand_items", l.max_operand_items),
            ("limits.max_query_conditions", l.max_query_conditions),
            ("limits.max_subscription_bytes", l.max_subscription_bytes),
            ("limits.query_result_limit", l.query_result_limit),
            ("limits.max_ingest_bytes", l.max_ingest_bytes),
            ("source.queue", raw.source.queue),
        ] {
            if value == 0 {
                bail!("{name} must be greater than 0");
            }
        }
        // Each `$or`/`$and`/`$nor` level nests the frame's JSON two levels deeper (an array,
        // then a clause), below the three levels of the frame, `query` and `where`: a deeper
        // limit could never be reached, frames that deep are refused before they are compiled.
        let reachable_query_depth = (livequery_protocol::error::MAX_FRAME_DEPTH - 3) / 2 - 2;
        if l.max_query_depth > reachable_query_depth {
            bail!(
                "limits.max_query_depth = {} cannot be reached: a frame nesting JSON deeper than {} levels is refused first, which allows at most {reachable_query_depth} levels of $or/$and/$nor",
                l.max_query_depth,
                livequery_protocol::error::MAX_FRAME_DEPTH
            );
        }
        for (name, value) in [
            ("server.websocket_timeout", raw.server.websocket_timeout),
            ("limits.connect_timeout", l.connect_timeout),
            ("limits.write_timeout", l.write_timeout),
            ("auth.lookup_timeout", raw.auth.lookup_timeout),
        ] {
            if value.is_zero() {
                bail!("{name} must be greater than 0");
            }
        }
        // The ingest API publishes events and manages sessions with the master key: reachable
        // from other hosts, it must have a key the operator chose (a generated one is never
        // shown, so it could not be used anyway).
        let ingest_address = admin_listen.unwrap_or(listen);
        if source == SourceKind::Embedded
            && raw.parse.master_key.is_empty()
            && !ingest_address.ip().is_loopback()
        {
            bail!(
                "source.kind = \"embedded\" serves its ingest API on {ingest_address}, which is not a loopback address: set parse.master_key (LIVEQUERY__PARSE__MASTER_KEY) to a secret of your own"
            );
        }
        // parse-server's application id and a master key are what a feed from parse-server
        // and lookups on it need: without them nothing matches and no lookup succeeds, while
        // /health says all is well. The embedded source needs neither.
        let needs_parse = match &source {
            SourceKind::Redis(_) => Some("source.kind = \"redis\""),
            SourceKind::Mongo(_) => Some("source.kind = \"mongodb\""),
            SourceKind::Embedded => {
                (!raw.parse.server_url.is_empty()).then_some("parse.server_url")
            }
        };
        if let Some(user) = needs_parse {
            if raw.parse.app_id.trim().is_empty() {
                bail!(
                    "{user} needs parse.app_id (parse-server's appId; PARSE_LIVE_QUERY_SERVER_APP_ID or LIVEQUERY__PARSE__APP_ID)"
                );
            }
            if raw.parse.master_key.is_empty() && raw.parse.read_only_master_key.is_empty() {
                bail!(
                    "{user} needs parse-server's master key: parse.master_key or parse.read_only_master_key (masterKey / readOnlyMasterKey; PARSE_LIVE_QUERY_SERVER_MASTER_KEY or LIVEQUERY__PARSE__MASTER_KEY)"
                );
            }
        }
        if raw.parse.check_application_id && raw.parse.app_id.is_empty() {
            bail!("parse.check_application_id needs parse.app_id");
        }
        let workers = if raw.dispatch.workers == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            raw.dispatch.workers
        };
        Ok(Self {
            listen,
            admin_listen,
            websocket_timeout: raw.server.websocket_timeout,
            shutdown_grace: raw.server.shutdown_grace,
            drain_period: raw.server.drain_period,
            app_id: raw.parse.app_id,
            master_key: raw.parse.master_key,
            read_only_master_key: raw.parse.read_only_master_key,
            server_url: raw.parse.server_url,
            check_application_id: raw.parse.check_application_id,
            key_pairs,
            protected_fields,
            protected_fields_raw: raw.parse.protected_fields,
            allow_regex: raw.parse.allow_regex,
            cache_timeout: raw.auth.cache_timeout,
            lookup_timeout: raw.auth.lookup_timeout,
            limits: Limits {
                max_connections: l.max_connections,
                max_message_bytes: l.max_message_bytes,
                max_subscriptions_per_connection: l.max_subscriptions_per_connection,
                connect_timeout: l.connect_timeout,
                outbound_queue_frames: l.outbound_queue_frames,
                outbound_queue_bytes: l.outbound_queue_bytes,
                write_timeout: l.write_timeout,
                max_query_depth: l.max_query_depth,
                max_operand_items: l.max_operand_items,
                max_query_conditions: l.max_query_conditions,
                max_subscription_bytes: l.max_subscription_bytes,
                query_result_limit: l.query_result_limit,
                max_ingest_bytes: l.max_ingest_bytes,
            },
            source,
            source_queue: raw.source.queue,
            dispatch_workers: workers,
            log_level,
            log_format,
            hooks,
            effective,
        })
    }

    /// The effective configuration as TOML in the layout of `config/default.toml`, secrets
    /// redacted (`--check-config`).
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string(&self.effective)
            .unwrap_or_else(|err| format!("# cannot render the configuration: {err}\n"))
    }

    /// Default protected fields of `class_name` merged into `clp`.
    pub fn apply_protected_defaults(&self, class_name: &str, clp: &mut ClassPermissions) {
        if let Some(defaults) = self.protected_fields.get(class_name) {
            clp.merge_default_protected_fields(defaults);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_load() {
        let config = Config::from_toml_layers(&[""]).expect("defaults are valid");
        assert_eq!(config.websocket_timeout, Duration::from_secs(10));
        assert_eq!(config.cache_timeout, Duration::from_secs(5));
        assert!(config.key_pairs.is_empty());
        assert_eq!(config.source, SourceKind::Embedded);
        assert!(
            config.protected_fields["_User"]
                .iter()
                .any(|(g, f)| &**g == "*" && f.iter().any(|f| &**f == "email"))
        );
    }

    #[test]
    fn key_pair_names_are_canonicalised_and_secrets_redacted() {
        let config = Config::from_toml_layers(&[
            "[parse]\nmaster_key = \"mk\"\nkey_pairs = { javascriptkey = \"jsk\", MASTERKEY = \"mk\" }\n",
        ])
        .unwrap();
        assert_eq!(
            config.key_pairs.get("javascriptKey").map(String::as_str),
            Some("jsk")
        );
        assert_eq!(
            config.key_pairs.get("masterKey").map(String::as_str),
            Some("mk")
        );
        let printed = config.to_redacted_toml();
        assert!(
            !printed.contains("jsk") && !printed.contains("\"mk\""),
            "{printed}"
        );
        assert!(printed.contains("<redacted>"));
    }

    #[test]
    fn a_query_depth_no_frame_can_reach_is_refused() {
        assert!(Config::from_toml_layers(&["[limits]\nmax_query_depth = 60\n"]).is_ok());
        let err = Config::from_toml_layers(&["[limits]\nmax_query_depth = 61\n"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot be reached"), "{err}");
        // 60 levels of `$or` around an operator fit in a frame the parser accepts.
        let mut clause = serde_json::json!({"a": {"$in": [1]}});
        for _ in 0..60 {
            clause = serde_json::json!({"$or": [clause]});
        }
        let frame = serde_json::json!({"op": "subscribe", "requestId": 1, "query": {"className": "C", "where": clause}});
        assert!(livequery_protocol::ClientMessage::decode(&frame.to_string()).is_ok());
    }

    #[test]
    fn a_public_ingest_api_needs_an_explicit_master_key() {
        let public = "[server]\nlisten = \"0.0.0.0:1337\"\n";
        assert!(Config::from_toml_layers(&[public]).is_err());
        assert!(Config::from_toml_layers(&[public, "[parse]\nmaster_key = \"k\""]).is_ok());
        // Other sources have no ingest API; a loopback admin address keeps it private.
        assert!(
            Config::from_toml_layers(&[
                public,
                "[source]\nkind = \"redis\"\n[parse]\napp_id = \"a\"\nread_only_master_key = \"r\""
            ])
            .is_ok()
        );
        assert!(
            Config::from_toml_layers(&[public, "[server]\nadmin_listen = \"127.0.0.1:1338\""])
                .is_ok()
        );
        assert!(Config::from_toml_layers(&["[server]\nlisten = \"[::1]:1337\""]).is_ok());
    }

    #[test]
    fn url_credentials_are_redacted() {
        assert_eq!(
            redact_url_credentials("redis://:secret@127.0.0.1:6379/0"),
            "redis://<redacted>@127.0.0.1:6379/0"
        );
        assert_eq!(
            redact_url_credentials("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(
            redact_url_credentials("http://host/path@x"),
            "http://host/path@x"
        );
        let config = Config::from_toml_layers(&[
            "[source]\nkind = \"redis\"\nredis_url = \"redis://u:pw@h:1\"\nredis_password = \"pw2\"",
            "[parse]\napp_id = \"a\"\nmaster_key = \"mk\"\nread_only_master_key = \"rok\"",
        ])
        .unwrap();
        let printed = config.to_redacted_toml();
        for secret in ["pw", "pw2", "\"mk\"", "rok"] {
            assert!(!printed.contains(secret), "{secret} in {printed}");
        }
    }

    #[test]
    fn the_mongodb_source_is_configured_and_its_credentials_redacted() {
        let config = Config::from_toml_layers(&[
            "[source]\nkind = \"mongodb\"\n[mongodb]\nurl = \"mongodb://lq:pw@db:27017/app?replicaSet=rs0\"\nclasses = [\"Message\"]\nfiles_url = \"https://x/parse/\"",
            "appId = \"a\"\nmasterKey = \"mk\"",
        ])
        .unwrap();
        let SourceKind::Mongo(mongo) = &config.source else {
            panic!("{:?}", config.source)
        };
        assert_eq!(mongo.classes, ["Message"]);
        assert!(mongo.enable_pre_images);
        assert_eq!(mongo.files_url, "https://x/parse");
        assert!(!config.to_redacted_toml().contains("pw"));
    }

    #[test]
    fn invalid_values_are_rejected() {
        for bad in [
            "[server]\nlisten = \"nope\"",
            "[server]\nadmin_listen = \"nope\"",
            "[limits]\nmax_operand_items = 0",
            "[server]\nlisten = \"0.0.0.0:1337\"",
            "[server]\nadmin_listen = \"10.0.0.1:1338\"",
            "[parse]\nkey_pairs = { fooKey = \"x\" }",
            "[limits]\nmax_connections = 0",
            "[source]\nkind = \"kafka\"",
            "[source]\nkind = \"mongodb\"\n[mongodb]\nurl = \"http://h\"",
            "[source]\nkind = \"mongodb\"\n[mongodb]\nmax_subquery_results = 0",
            "[source]\nkind = \"mongodb\"\n[mongodb]\nclasses = [\"_SCHEMA\"]",
            "[mongodb]\nresume_token = \"x\"",
            "[log]\nformat = \"xml\"",
            "[server]\nunknown = 1",
        ] {
            assert!(Config::from_toml_layers(&[bad]).is_err(), "{bad}");
        }
    }

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn parse_server_variables_configure_the_server_below_livequery_ones() {
        let env = vars(&[
            ("PARSE_LIVE_QUERY_SERVER_APP_ID", "app"),
            ("PARSE_LIVE_QUERY_SERVER_MASTER_KEY", "mk"),
            ("PARSE_LIVE_QUERY_SERVER_READ_ONLY_MASTER_KEY", "ro"),
            (
                "PARSE_LIVE_QUERY_SERVER_SERVER_URL",
                "http://parse:1337/parse",
            ),
            (
                "PARSE_LIVE_QUERY_SERVER_KEY_PAIRS",
                r#"{"javascriptKey":"js","masterKey":"mk"}"#,
            ),
            ("PARSE_LIVE_QUERY_SERVER_WEBSOCKET_TIMEOUT", "2500"),
            ("PARSE_LIVE_QUERY_SERVER_CACHE_TIMEOUT", "60000"),
            ("PARSE_LIVE_QUERY_SERVER_LOG_LEVEL", "VERBOSE"),
            ("PORT", "8080"),
            ("PARSE_LIVE_QUERY_SERVER_REDIS_URL", "redis://redis:6379"),
            (
                "PARSE_LIVE_QUERY_SERVER_REDIS_OPTIONS",
                r#"{"username":"lq","password":"pw"}"#,
            ),
        ]);
        let config = Config::load_from(None, &env).expect("valid");
        assert_eq!(config.app_id, "app");
        assert_eq!(config.master_key, "mk");
        assert_eq!(config.read_only_master_key, "ro");
        assert_eq!(config.server_url, "http://parse:1337/parse");
        assert_eq!(config.key_pairs["javascriptKey"], "js");
        assert_eq!(config.key_pairs["masterKey"], "mk");
        assert_eq!(config.websocket_timeout, Duration::from_millis(2500));
        assert_eq!(config.cache_timeout, Duration::from_secs(60));
        assert_eq!(config.log_level, "debug");
        assert_eq!(config.listen, "0.0.0.0:8080".parse().unwrap());
        let SourceKind::Redis(redis) = &config.source else {
            panic!("{:?}", config.source)
        };
        assert_eq!(redis.url, "redis://redis:6379");
        assert_eq!(redis.channel_prefix, "app");
        assert_eq!(
            (redis.username.as_str(), redis.password.as_str()),
            ("lq", "pw")
        );

        // PARSE_LIVE_QUERY_SERVER_PORT beats PORT; LIVEQUERY__ variables beat both.
        let mut more = env.clone();
        more.push(("PARSE_LIVE_QUERY_SERVER_PORT".into(), "9090".into()));
        more.push(("LIVEQUERY__PARSE__APP_ID".into(), "ours".into()));
        let config = Config::load_from(None, &more).expect("valid");
        assert_eq!(config.listen.port(), 9090);
        assert_eq!(config.app_id, "ours");

        let mut unknown = env.clone();
        unknown.push(("PARSE_LIVE_QUERY_SERVER_MASTERKEY".into(), "x".into()));
        assert!(Config::load_from(None, &unknown).is_err());
        let mut loud = env;
        loud.push(("PARSE_LIVE_QUERY_SERVER_LOG_LEVEL".into(), "LOUD".into()));
        let err = Config::load_from(None, &loud).expect_err("unknown level");
        assert!(format!("{err:#}").contains("LOUD"), "{err:#}");
    }

    #[test]
    fn a_parse_server_json_configuration_is_a_config_file() {
        let dir = std::env::temp_dir().join(format!("lq-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("liveQuery.json");
        std::fs::write(
            &file,
            r#"{"appId": "app", "masterKey": "mk", "serverURL": "http://p/parse",
                "keyPairs": {"clientKey": "ck"}, "websocketTimeout": 30000, "logLevel": "ERROR",
                "port": 1340, "redisURL": "rediss://default:pw@cache.example:6380"}"#,
        )
        .unwrap();
        let config = Config::load_from(Some(&file), &[]).expect("valid");
        std::fs::remove_dir_all(&dir).ok();
        assert_eq!(config.app_id, "app");
        assert_eq!(config.key_pairs["clientKey"], "ck");
        assert_eq!(config.websocket_timeout, Duration::from_secs(30));
        assert_eq!(config.log_level, "error");
        assert_eq!(config.listen.port(), 1340);
        assert!(matches!(&config.source, SourceKind::Redis(r) if r.url.starts_with("rediss://")));
        assert!(!config.to_redacted_toml().contains("pw"));
    }

    #[test]
    fn parse_server_option_names_work_in_toml_files() {
        let config = Config::from_toml_layers(&[
            "appId = \"app\"\nreadOnlyMasterKey = \"ro\"\ncacheTimeout = 1500\nlogLevel = \"none\"\nredisURL = \"redis://r:1\"\n",
        ])
        .expect("valid");
        assert_eq!(config.app_id, "app");
        assert_eq!(config.cache_timeout, Duration::from_millis(1500));
        assert_eq!(config.log_level, "off");
        assert!(matches!(config.source, SourceKind::Redis(_)));
        // Both spellings in one layer: refused; in different layers: the later one wins.
        assert!(Config::from_toml_layers(&["appId = \"a\"\n[parse]\napp_id = \"b\"\n"]).is_err());
        let later =
            Config::from_toml_layers(&["appId = \"a\"", "[parse]\napp_id = \"b\""]).expect("valid");
        assert_eq!(later.app_id, "b");
        assert!(Config::from_toml_layers(&["pubSubAdapter = \"x\""]).is_err());
        assert!(Config::from_toml_layers(&["websocketTimeout = \"10s\""]).is_err());
    }

    #[test]
    fn feeds_from_parse_server_need_its_app_id_and_a_master_key() {
        for (layer, missing) in [
            (
                "[source]\nkind = \"redis\"\n[parse]\nmaster_key = \"mk\"",
                "app_id",
            ),
            (
                "[source]\nkind = \"redis\"\n[parse]\napp_id = \"a\"",
                "master key",
            ),
            (
                "[source]\nkind = \"mongodb\"\n[parse]\nmaster_key = \"mk\"",
                "app_id",
            ),
            (
                "[source]\nkind = \"mongodb\"\n[parse]\napp_id = \"a\"",
                "master key",
            ),
            (
                "[parse]\nserver_url = \"http://p/parse\"\nmaster_key = \"mk\"",
                "app_id",
            ),
            (
                "[parse]\nserver_url = \"http://p/parse\"\napp_id = \"a\"",
                "master key",
            ),
            ("[parse]\ncheck_application_id = true", "app_id"),
        ] {
            let err = Config::from_toml_layers(&[layer]).expect_err(layer);
            assert!(format!("{err:#}").contains(missing), "{layer}: {err:#}");
        }
        // The embedded source starts with no configuration at all.
        assert!(Config::load_from(None, &[]).is_ok());
    }

    #[test]
    fn redis_settings_that_can_never_work_are_refused() {
        let base = "[parse]\napp_id = \"a\"\nmaster_key = \"mk\"\n[source]\nkind = \"redis\"\n";
        let dir = std::env::temp_dir().join(format!("lq-redis-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let not_pem = dir.join("not.pem");
        std::fs::write(&not_pem, "not a certificate").unwrap();
        let not_pem = not_pem.display().to_string();
        for (layer, expected) in [
            ("redis_url = \"http://h:6379\"", "not a redis"),
            ("redis_url = \"redis://h:notaport\"", "not valid"),
            (
                "redis_url = \"redis://h:6379\"\nredis_tls_ca_file = \"/ca.pem\"",
                "not a rediss://",
            ),
            (
                "redis_url = \"rediss://h:6379\"\nredis_tls_ca_file = \"/nonexistent/ca.pem\"",
                "cannot read",
            ),
            (
                &format!("redis_url = \"rediss://h:6379\"\nredis_tls_ca_file = \"{not_pem}\""),
                "no PEM certificate",
            ),
            (
                &format!("redis_url = \"rediss://h:6379\"\nredis_tls_cert_file = \"{not_pem}\""),
                "go together",
            ),
            (
                &format!(
                    "redis_url = \"rediss://h:6379\"\nredis_tls_cert_file = \"/nonexistent\"\nredis_tls_key_file = \"{not_pem}\""
                ),
                "redis_tls_cert_file",
            ),
            ("redis_sentinel_master = \"m\"", "go together"),
            ("redis_sentinels = \"s1:26379\"", "go together"),
            (
                "redis_sentinels = \"s1:26379,s2:x\"\nredis_sentinel_master = \"m\"",
                "not a Sentinel address",
            ),
            (
                "redis_sentinels = [\"s1:26379\"]\nredis_sentinel_master = \"m\"\nredis_url = \"rediss://h:1\"\nredis_tls_ca_file = \"/nonexistent\"",
                "not supported with source.redis_sentinels",
            ),
        ] {
            let err = Config::from_toml_layers(&[&format!("{base}{layer}")]).expect_err(layer);
            assert!(format!("{err:#}").contains(expected), "{layer}: {err:#}");
        }
        std::fs::remove_dir_all(&dir).ok();
        let sentinel = Config::from_toml_layers(&[&format!(
            "{base}redis_sentinels = \"s1:26379, redis://:pw@s2:26379\"\nredis_sentinel_master = \"m\""
        )])
        .expect("valid");
        let SourceKind::Redis(redis) = &sentinel.source else {
            panic!("{:?}", sentinel.source)
        };
        assert_eq!(
            redis.sentinels,
            ["redis://s1:26379", "redis://:pw@s2:26379"]
        );
        assert!(!sentinel.to_redacted_toml().contains("pw"));
    }
}
