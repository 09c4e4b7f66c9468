//! An in-memory [`IdentityProvider`]: sessions, user roles and class permissions pushed in by
//! the embedded source (its HTTP API and the `_Session` objects it is fed), or by tests.

use std::collections::HashMap;

use async_trait::async_trait;
use livequery_matcher::ChangeKind;
use parking_lot::RwLock;
use serde_json::{Map, Value};

use super::{IdentityProvider, LookupError, ResolvedUser, SessionRecord};

/// Sessions, roles and schemas held in memory. Each map has its own lock, held only for one
/// lookup or update (never across an await); writes are rare (an API call, a fed
/// `_Session`), reads one per lookup.
#[derive(Debug, Default)]
pub struct MemoryIdentities {
    /// Session token → its user and expiry.
    sessions: RwLock<HashMap<String, StoredSession>>,
    /// User id → role names (inherited ones included).
    user_roles: RwLock<HashMap<String, Vec<String>>>,
    /// Class name → class-level permissions (parse-server's CLP JSON).
    schemas: RwLock<HashMap<String, Value>>,
}

#[derive(Debug, Clone)]
struct StoredSession {
    user_id: String,
    expires_at_ms: Option<i64>,
}

impl MemoryIdentities {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers (or replaces) a session token for a user.
    pub fn put_session(&self, token: &str, user_id: &str, expires_at_ms: Option<i64>) {
        self.sessions.write().insert(
            token.to_owned(),
            StoredSession {
                user_id: user_id.to_owned(),
                expires_at_ms,
            },
        );
    }

    /// Keeps the sessions in step with a `_Session` object that was saved or deleted.
    pub fn record_session(&self, kind: ChangeKind, object: &Map<String, Value>) {
        let Some(session) = SessionRecord::from_object(object) else {
            return;
        };
        match (kind, &session.user_id) {
            (ChangeKind::Save, Some(user_id)) => {
                self.put_session(&session.token, user_id, session.expires_at_ms);
            }
            (ChangeKind::Save, None) => {}
            (ChangeKind::Delete, _) => {
                self.remove_session(&session.token);
            }
        }
    }

    /// Removes a session; returns the user it belonged to.
    pub fn remove_session(&self, token: &str) -> Option<String> {
        self.sessions.write().remove(token).map(|s| s.user_id)
    }

    /// Sets a user's role names (inherited roles included, without `role:`).
    pub fn set_user_roles(&self, user_id: &str, roles: Vec<String>) {
        self.user_roles.write().insert(user_id.to_owned(), roles);
    }

    /// Sets a class's class-level permissions (parse-server's CLP JSON).
    pub fn put_schema(&self, class_name: &str, clp: Value) {
        self.schemas.write().insert(class_name.to_owned(), clp);
    }
}

#[async_trait]
impl IdentityProvider for MemoryIdentities {
    async fn resolve_session(&self, token: &str) -> Result<Option<ResolvedUser>, LookupError> {
        let Some(session) = self.sessions.read().get(token).cloned() else {
            return Ok(None);
        };
        if session
            .expires_at_ms
            .is_some_and(|expires| expires <= crate::clock::unix_millis())
        {
            return Ok(None);
        }
        let roles = self
            .user_roles
            .read()
            .get(&session.user_id)
            .cloned()
            .unwrap_or_default();
        Ok(Some(ResolvedUser {
            user_id: session.user_id,
            roles,
        }))
    }

    async fn class_permissions(&self, class_name: &str) -> Result<Option<Value>, LookupError> {
        Ok(self.schemas.read().get(class_name).cloned())
    }
}
