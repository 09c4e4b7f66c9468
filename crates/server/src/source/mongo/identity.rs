//! Sessions, roles and class permissions read straight from MongoDB (as
//! parse-server's MongoDB adapter stores them). Invalidation comes from the change stream itself: a deleted session, a role
//! membership row, a schema change reach [`crate::identity::IdentityCache`] as they happen.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use bson::{Bson, doc};
use parking_lot::Mutex;
use serde_json::Value;

use super::schema::Schemas;
use super::store::Store;
use crate::identity::{IdentityProvider, LookupError, ResolvedUser, roles};

/// Session ids remembered for delete events without pre-image. When full the map starts
/// over; the auth refresher re-resolves every token in use within `auth.cache_timeout`, which
/// both refills it and bounds how late a forgotten session's logout takes effect.
const MAX_SESSION_IDS: usize = 200_000;

/// The MongoDB auth provider.
pub struct MongoIdentities {
    store: Arc<dyn Store>,
    prefix: String,
    schemas: Arc<Schemas>,
    /// `_Session` objectId → token, for sessions resolved so far (a delete event without
    /// pre-image names only the objectId).
    session_tokens: Mutex<HashMap<String, String>>,
}

impl std::fmt::Debug for MongoIdentities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoIdentities")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn err(context: &str, error: anyhow::Error) -> LookupError {
    LookupError(format!("{context}: {error:#}"))
}

impl MongoIdentities {
    /// Reads from `store`; collections are `<prefix><class>`.
    pub fn new(store: Arc<dyn Store>, prefix: &str, schemas: Arc<Schemas>) -> Self {
        Self {
            store,
            prefix: prefix.to_owned(),
            schemas,
            session_tokens: Mutex::new(HashMap::new()),
        }
    }

    /// The token of a session resolved earlier.
    pub fn token_of_session(&self, session_id: &str) -> Option<String> {
        self.session_tokens.lock().get(session_id).cloned()
    }

    async fn owning_ids(&self, join: &str, related: Bson) -> Result<Vec<String>, LookupError> {
        let collection = format!("{}{join}", self.prefix);
        let filter = match related {
            Bson::Array(ids) => doc! {"relatedId": {"$in": ids}},
            single => doc! {"relatedId": single},
        };
        let rows = self
            .store
            .find(&collection, filter, 0)
            .await
            .map_err(|e| err(&collection, e))?;
        Ok(rows
            .iter()
            .filter_map(|r| r.get_str("owningId").ok().map(str::to_owned))
            .collect())
    }

    /// Role names of `user_id`: the roles whose `users` relation holds the user, then the
    /// roles whose `roles` relation holds a role already found (members of a child role are
    /// members of its parents), breadth-first with a visited set.
    pub async fn roles_of(&self, user_id: &str) -> Result<Vec<String>, LookupError> {
        let direct = self
            .owning_ids("_Join:users:_Role", Bson::String(user_id.to_owned()))
            .await?;
        let direct = direct.into_iter().map(|id| (id, ())).collect();
        let all = roles::closure(direct, |frontier| async move {
            let ids = Bson::Array(frontier.into_iter().map(Bson::String).collect());
            let parents = self.owning_ids("_Join:roles:_Role", ids).await?;
            Ok(parents.into_iter().map(|id| (id, ())).collect())
        })
        .await?;
        if all.is_empty() {
            return Ok(Vec::new());
        }
        let collection = format!("{}_Role", self.prefix);
        let ids: Vec<Bson> = all.into_iter().map(|(id, ())| Bson::String(id)).collect();
        let roles = self
            .store
            .find(&collection, doc! {"_id": {"$in": ids}}, 0)
            .await
            .map_err(|e| err(&collection, e))?;
        Ok(roles
            .iter()
            .filter_map(|r| r.get_str("name").ok().map(str::to_owned))
            .collect())
    }
}

#[async_trait]
impl IdentityProvider for MongoIdentities {
    async fn resolve_session(&self, token: &str) -> Result<Option<ResolvedUser>, LookupError> {
        let collection = format!("{}_Session", self.prefix);
        let sessions = self
            .store
            .find(&collection, doc! {"_session_token": token}, 1)
            .await
            .map_err(|e| err(&collection, e))?;
        let Some(session) = sessions.first() else {
            return Ok(None);
        };
        if let Ok(id) = session.get_str("_id") {
            let mut tokens = self.session_tokens.lock();
            if tokens.len() >= MAX_SESSION_IDS && !tokens.contains_key(id) {
                tokens.clear();
            }
            tokens.insert(id.to_owned(), token.to_owned());
        }
        let Some(user_id) = session
            .get_str("_p_user")
            .ok()
            .and_then(|p| p.strip_prefix("_User$"))
        else {
            return Ok(None);
        };
        if let Ok(expires) = session.get_datetime("expiresAt")
            && expires.timestamp_millis() <= crate::clock::unix_millis()
        {
            return Ok(None);
        }
        let roles = self.roles_of(user_id).await?;
        Ok(Some(ResolvedUser {
            user_id: user_id.to_owned(),
            roles,
        }))
    }

    async fn class_permissions(&self, class_name: &str) -> Result<Option<Value>, LookupError> {
        if let Some(schema) = self.schemas.get(class_name) {
            return Ok(Some(schema.permissions.clone()));
        }
        let collection = format!("{}_SCHEMA", self.prefix);
        let found = self
            .store
            .find(&collection, doc! {"_id": class_name}, 1)
            .await
            .map_err(|e| err(&collection, e))?;
        match found.first() {
            Some(document) => {
                self.schemas.put_document(document);
                Ok(self.schemas.get(class_name).map(|s| s.permissions.clone()))
            }
            // A class without a schema has no objects yet: parse-server's defaults apply.
            None => Ok(None),
        }
    }
}
