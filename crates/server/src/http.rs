//! The HTTP side of the ports: `/livez`, `/readyz`, `/health`, `/metrics`, and the embedded
//! source's ingest API. WebSocket upgrades on any path of the client port are handed to
//! [`crate::listener`]. With an admin port (`server.admin_listen`), `/metrics` and the ingest
//! API are served only there; the probes on both.
//!
//! - `/livez`: 200 whenever the process serves HTTP (a liveness probe: restart me if not).
//! - `/readyz`: 200 when this node should be sent clients; 503 while the source is
//!   disconnected, while a component reports a problem ([`crate::readiness`], listed in the
//!   body), and from the start of a graceful drain ([`crate::drain`]).
//! - `/health`: the original combined probe (200 while the source is connected), kept for
//!   deployments that use it.

use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use livequery_matcher::date::parse_iso_millis;
use serde_json::{Value, json};

use crate::client_keys::secrets_equal;
use crate::source::embedded::{Channel, IngestError};
use crate::state::ServerState;

/// Which port a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// The client port (`server.listen`): WebSockets, and the HTTP endpoints unless an
    /// admin port is configured (then only the probes: `/livez`, `/readyz`, `/health`).
    Client,
    /// The admin port (`server.admin_listen`): the probes, `/metrics`, the ingest API.
    Admin,
}

/// The response type of every handler.
pub type HttpResponse = Response<Full<Bytes>>;

pub(crate) fn json_response(status: StatusCode, body: &Value) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> HttpResponse {
    json_response(status, &json!({ "error": message.to_string() }))
}

/// Routes a plain HTTP request that came in on `port`.
pub async fn handle(request: Request<Incoming>, ctx: &ServerState, port: Port) -> HttpResponse {
    let path = request.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let admin_here = match port {
        Port::Admin => true,
        Port::Client => ctx.config.admin_listen.is_none(),
    };
    match (request.method(), segments.as_slice()) {
        (&Method::GET, ["health"]) => health(ctx),
        (&Method::GET, ["livez"]) => json_response(StatusCode::OK, &json!({"status": "ok"})),
        (&Method::GET, ["readyz"]) => readyz(ctx),
        _ if !admin_here => error(
            StatusCode::NOT_FOUND,
            "not found: connect with a WebSocket client, or use /livez, /readyz, /health (operations are served on server.admin_listen)",
        ),
        (&Method::GET, ["metrics"]) => {
            let mut response = Response::new(Full::new(Bytes::from(ctx.metrics.render())));
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        (_, ["livequery", "v1", ..]) => ingest_api(request, ctx).await,
        _ => error(
            StatusCode::NOT_FOUND,
            "not found: connect with a WebSocket client, or use /livez, /readyz, /health, /metrics",
        ),
    }
}

fn health(ctx: &ServerState) -> HttpResponse {
    let connected = ctx.metrics.source_connected.load(Relaxed) == 1;
    let body = json!({
        "status": if connected { "ok" } else { "unavailable" },
        "source": ctx.source_name,
        "sourceConnected": connected,
        "connections": ctx.metrics.connections.load(Relaxed),
        "subscriptions": ctx.metrics.subscriptions.load(Relaxed),
    });
    json_response(
        if connected {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        &body,
    )
}

/// Whether this node should be sent clients, and if not, why.
fn readyz(ctx: &ServerState) -> HttpResponse {
    let connected = ctx.metrics.source_connected.load(Relaxed) == 1;
    let draining = ctx.readiness.is_draining();
    let mut problems: serde_json::Map<String, Value> = ctx
        .readiness
        .problems()
        .into_iter()
        .map(|(component, message)| (component.to_owned(), Value::String(message)))
        .collect();
    if !connected {
        problems
            .entry("source")
            .or_insert_with(|| json!(format!("the {} source is not connected", ctx.source_name)));
    }
    let ready = problems.is_empty() && !draining;
    let body = json!({
        "status": if ready { "ready" } else if draining { "draining" } else { "unavailable" },
        "source": ctx.source_name,
        "sourceConnected": connected,
        "draining": draining,
        "problems": problems,
    });
    json_response(
        if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        &body,
    )
}

async fn ingest_api(request: Request<Incoming>, ctx: &ServerState) -> HttpResponse {
    let Some(embedded) = ctx.embedded.clone() else {
        return error(
            StatusCode::NOT_FOUND,
            "the ingest API is only served when source.kind = \"embedded\"",
        );
    };
    let expected = ctx.config.master_key.as_bytes();
    let presented = request
        .headers()
        .get("x-parse-master-key")
        .map(|v| v.as_bytes());
    if expected.is_empty() || !presented.is_some_and(|p| secrets_equal(p, expected)) {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized: send the master key in the X-Parse-Master-Key header",
        );
    }
    let method = request.method().clone();
    let path = request.uri().path().trim_matches('/').to_owned();
    let segments: Vec<String> = path
        .split('/')
        .skip(2)
        .map(crate::encoding::decode_path_segment)
        .collect();
    let limit = ctx.config.limits.max_ingest_bytes;
    let body = match Limited::new(request.into_body(), limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body too large (limit {limit} bytes)"),
            );
        }
    };
    let parse_body = || -> Result<Value, String> {
        if body.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&body).map_err(|e| format!("body is not JSON: {e}"))
    };
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    match (method, segments.as_slice()) {
        (Method::POST, ["publish", channel]) => {
            let Some(channel) = Channel::parse(channel) else {
                return error(
                    StatusCode::NOT_FOUND,
                    "unknown channel: use afterSave, afterDelete or clearCache",
                );
            };
            let body = match parse_body() {
                Ok(body) => body,
                Err(message) => return error(StatusCode::BAD_REQUEST, message),
            };
            match embedded.accept(channel, body).await {
                Ok(accepted) => {
                    json_response(StatusCode::ACCEPTED, &json!({ "accepted": accepted }))
                }
                Err(err @ (IngestError::Invalid { .. } | IngestError::BadClearCache)) => {
                    error(StatusCode::BAD_REQUEST, err)
                }
                Err(err @ IngestError::Unavailable) => error(StatusCode::SERVICE_UNAVAILABLE, err),
            }
        }
        (Method::PUT, ["sessions", token]) => {
            let body = match parse_body() {
                Ok(body) => body,
                Err(message) => return error(StatusCode::BAD_REQUEST, message),
            };
            let Some(user_id) = body.get("userId").and_then(Value::as_str) else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "body needs {\"userId\": <string>, \"roles\"?: [<string>], \"expiresAt\"?: <ISO date>}",
                );
            };
            let roles = match body.get("roles") {
                None | Some(Value::Null) => None,
                Some(Value::Array(items)) if items.iter().all(Value::is_string) => Some(
                    items
                        .iter()
                        .filter_map(Value::as_str)
                        .map(|r| r.trim_start_matches("role:").to_owned())
                        .collect(),
                ),
                Some(_) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "roles must be an array of role names",
                    );
                }
            };
            let expires = match body.get("expiresAt") {
                None | Some(Value::Null) => None,
                Some(value) => match value
                    .as_str()
                    .or_else(|| value.get("iso").and_then(Value::as_str))
                    .and_then(parse_iso_millis)
                {
                    Some(ms) => Some(ms),
                    None => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            "expiresAt must be an ISO date or a Parse Date",
                        );
                    }
                },
            };
            embedded.put_session(token, user_id, roles, expires).await;
            json_response(StatusCode::OK, &json!({}))
        }
        (Method::DELETE, ["sessions", token]) => {
            let existed = embedded.delete_session(token).await;
            json_response(
                if existed {
                    StatusCode::OK
                } else {
                    StatusCode::NOT_FOUND
                },
                &json!({ "deleted": existed }),
            )
        }
        (Method::PUT, ["users", user_id, "roles"]) => {
            let body = match parse_body() {
                Ok(body) => body,
                Err(message) => return error(StatusCode::BAD_REQUEST, message),
            };
            let Some(roles) = body
                .get("roles")
                .and_then(Value::as_array)
                .filter(|r| r.iter().all(Value::is_string))
            else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "body needs {\"roles\": [<role name>, ...]} (inherited roles included)",
                );
            };
            let roles = roles
                .iter()
                .filter_map(Value::as_str)
                .map(|r| r.trim_start_matches("role:").to_owned())
                .collect();
            embedded.set_user_roles(user_id, roles).await;
            json_response(StatusCode::OK, &json!({}))
        }
        (Method::PUT, ["schemas", class_name]) => {
            let body = match parse_body() {
                Ok(body) => body,
                Err(message) => return error(StatusCode::BAD_REQUEST, message),
            };
            let clp = body.get("classLevelPermissions").cloned().unwrap_or(body);
            if !clp.is_object() {
                return error(
                    StatusCode::BAD_REQUEST,
                    "body must be a class-level permissions object",
                );
            }
            match embedded.put_schema(class_name, clp).await {
                Ok(()) => json_response(StatusCode::OK, &json!({})),
                Err(err) => error(StatusCode::SERVICE_UNAVAILABLE, err),
            }
        }
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}
