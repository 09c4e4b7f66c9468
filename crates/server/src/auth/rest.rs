//! parse-server's REST API as the auth provider and object reader.
//!
//! Every request uses the master key, like the reference LiveQuery server's own lookups:
//! - a session token → `GET /classes/_Session?where={"sessionToken":…}` (expired or
//!   missing: no user);
//! - a user's roles → `_Role` objects whose `users` relation holds the user, then,
//!   breadth-first, the roles whose `roles` relation holds a role already found (members of
//!   a child role inherit the parent), with a visited set and a bound on the total;
//! - a class's permissions → `GET /schemas/<class>`;
//! - the `query` op → `GET /classes/<class>?where=…`.
//!
//! A failed request is an [`AuthError`]; [`crate::auth::Auth`] never turns one into access.

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use livequery_matcher::date::parse_iso_millis;
use reqwest::StatusCode;
use serde_json::{Map, Value, json};

use super::{AuthError, AuthProvider, SessionInfo};
use crate::source::ObjectReader;

/// Page size of role queries.
const ROLE_PAGE: usize = 1000;
/// Roles beyond this many per user are not followed (a runaway hierarchy cannot stall
/// lookups); the reference has no bound.
const MAX_ROLES: usize = 10_000;

/// A client for parse-server's REST API.
#[derive(Debug, Clone)]
pub struct ParseRest {
    http: reqwest::Client,
    base: String,
    app_id: String,
    master_key: String,
}

impl ParseRest {
    /// A client for `server_url` (e.g. `http://127.0.0.1:1337/parse`).
    pub fn new(
        server_url: &str,
        app_id: &str,
        master_key: &str,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        // reqwest uses rustls without a built-in provider; install ring once per process.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(concat!("livequery/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            base: server_url.trim_end_matches('/').to_owned(),
            app_id: app_id.to_owned(),
            master_key: master_key.to_owned(),
        })
    }

    async fn get(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<(StatusCode, Value), AuthError> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .query(query)
            .header("X-Parse-Application-Id", &self.app_id)
            .header("X-Parse-Master-Key", &self.master_key)
            .send()
            .await
            .map_err(|e| AuthError(format!("GET {path}: {e}")))?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .map_err(|e| AuthError(format!("GET {path}: bad response body: {e}")))?;
        Ok((status, body))
    }

    async fn find(
        &self,
        class_name: &str,
        where_: &Value,
        extra: &[(&str, String)],
    ) -> Result<Vec<Value>, AuthError> {
        let path = format!("/classes/{}", urlencode(class_name));
        let mut query = vec![("where", where_.to_string())];
        query.extend(extra.iter().cloned());
        match self.get(&path, &query).await? {
            (status, body) if status.is_success() => match body.get("results") {
                Some(Value::Array(results)) => Ok(results.clone()),
                _ => Err(AuthError(format!("GET {path}: no results array"))),
            },
            (status, body) => Err(AuthError(format!("GET {path}: {status} {body}"))),
        }
    }

    async fn role_ids_and_names(&self, where_: Value) -> Result<Vec<(String, String)>, AuthError> {
        let mut found = Vec::new();
        for page in 0.. {
            let results = self
                .find(
                    "_Role",
                    &where_,
                    &[
                        ("keys", "name".to_owned()),
                        ("limit", ROLE_PAGE.to_string()),
                        ("skip", (page * ROLE_PAGE).to_string()),
                        ("order", "objectId".to_owned()),
                    ],
                )
                .await?;
            let done = results.len() < ROLE_PAGE;
            found.extend(results.iter().filter_map(|role| {
                Some((
                    role.get("objectId")?.as_str()?.to_owned(),
                    role.get("name")?.as_str()?.to_owned(),
                ))
            }));
            if done || found.len() >= MAX_ROLES {
                break;
            }
        }
        Ok(found)
    }

    /// Role names of `user_id`, inherited ones included.
    pub async fn roles_of(&self, user_id: &str) -> Result<Vec<String>, AuthError> {
        let direct = self
            .role_ids_and_names(
                json!({"users": {"__type": "Pointer", "className": "_User", "objectId": user_id}}),
            )
            .await?;
        let mut visited: HashSet<String> = HashSet::new();
        let mut names = Vec::new();
        let mut frontier = Vec::new();
        for (id, name) in direct {
            if visited.insert(id.clone()) {
                names.push(name);
                frontier.push(id);
            }
        }
        while !frontier.is_empty() && visited.len() < MAX_ROLES {
            let pointers: Vec<Value> = frontier
                .iter()
                .map(|id| json!({"__type": "Pointer", "className": "_Role", "objectId": id}))
                .collect();
            frontier.clear();
            for (id, name) in self
                .role_ids_and_names(json!({"roles": {"$in": pointers}}))
                .await?
            {
                if visited.insert(id.clone()) {
                    names.push(name);
                    frontier.push(id);
                }
            }
        }
        Ok(names)
    }
}

fn urlencode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[async_trait]
impl AuthProvider for ParseRest {
    async fn resolve_session(&self, token: &str) -> Result<Option<SessionInfo>, AuthError> {
        let sessions = self
            .find(
                "_Session",
                &json!({"sessionToken": token}),
                &[("limit", "1".to_owned())],
            )
            .await?;
        let Some(session) = sessions.first() else {
            return Ok(None);
        };
        let Some(user_id) = session
            .get("user")
            .and_then(|u| u.get("objectId"))
            .and_then(Value::as_str)
        else {
            return Ok(None);
        };
        let expires = session
            .get("expiresAt")
            .and_then(|e| e.get("iso"))
            .and_then(Value::as_str)
            .and_then(parse_iso_millis);
        if expires.is_some_and(|expires| expires <= crate::auth::unix_millis()) {
            return Ok(None);
        }
        let roles = self.roles_of(user_id).await?;
        Ok(Some(SessionInfo {
            user_id: user_id.to_owned(),
            roles,
        }))
    }

    async fn class_permissions(&self, class_name: &str) -> Result<Option<Value>, AuthError> {
        let path = format!("/schemas/{}", urlencode(class_name));
        match self.get(&path, &[]).await? {
            (status, body) if status.is_success() => Ok(body.get("classLevelPermissions").cloned()),
            // Class not found (code 103): no schema yet, nothing restricted.
            (status, body)
                if status == StatusCode::BAD_REQUEST
                    && body.get("code").and_then(Value::as_u64) == Some(103) =>
            {
                Ok(None)
            }
            (status, _) if status == StatusCode::NOT_FOUND => Ok(None),
            (status, body) => Err(AuthError(format!("GET {path}: {status} {body}"))),
        }
    }
}

#[async_trait]
impl ObjectReader for ParseRest {
    async fn find(
        &self,
        class_name: &str,
        where_: &Map<String, Value>,
        _query: &livequery_matcher::Query,
        limit: usize,
    ) -> anyhow::Result<Vec<Map<String, Value>>> {
        let results = ParseRest::find(
            self,
            class_name,
            &Value::Object(where_.clone()),
            &[("limit", limit.to_string())],
        )
        .await?;
        Ok(results
            .into_iter()
            .filter_map(|result| match result {
                Value::Object(mut object) => {
                    object.insert("className".into(), class_name.into());
                    Some(object)
                }
                _ => None,
            })
            .collect())
    }
}
