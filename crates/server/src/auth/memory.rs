//! An in-memory [`AuthProvider`]: sessions, user roles and class permissions pushed in by
//! the embedded source (its HTTP API and the `_Session` objects it is fed), or by tests.

use std::collections::HashMap;

use async_trait::async_trait;
use parking_lot::RwLock;
use serde_json::Value;

use super::{AuthError, AuthProvider, SessionInfo};

/// Sessions, roles and schemas held in memory.
#[derive(Debug, Default)]
pub struct MemoryAuth {
    sessions: RwLock<HashMap<String, Session>>,
    user_roles: RwLock<HashMap<String, Vec<String>>>,
    schemas: RwLock<HashMap<String, Value>>,
}

#[derive(Debug, Clone)]
struct Session {
    user_id: String,
    expires_at_ms: Option<i64>,
}

impl MemoryAuth {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers (or replaces) a session token for a user.
    pub fn put_session(&self, token: &str, user_id: &str, expires_at_ms: Option<i64>) {
        self.sessions.write().insert(
            token.to_owned(),
            Session {
                user_id: user_id.to_owned(),
                expires_at_ms,
            },
        );
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
impl AuthProvider for MemoryAuth {
    async fn resolve_session(&self, token: &str) -> Result<Option<SessionInfo>, AuthError> {
        let Some(session) = self.sessions.read().get(token).cloned() else {
            return Ok(None);
        };
        if session
            .expires_at_ms
            .is_some_and(|expires| expires <= crate::auth::unix_millis())
        {
            return Ok(None);
        }
        let roles = self
            .user_roles
            .read()
            .get(&session.user_id)
            .cloned()
            .unwrap_or_default();
        Ok(Some(SessionInfo {
            user_id: session.user_id,
            roles,
        }))
    }

    async fn class_permissions(&self, class_name: &str) -> Result<Option<Value>, AuthError> {
        Ok(self.schemas.read().get(class_name).cloned())
    }
}
