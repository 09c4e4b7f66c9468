//! The identity an object is judged for.

use hashbrown::HashSet;

/// Who reads: master, a user with roles, or nobody in particular.
///
/// The server resolves a subscriber's session token into a `Reader` (user id, role names)
/// when it subscribes and keeps it current; every decision of the gate is made for one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reader {
    /// Master key: sees everything.
    pub master: bool,
    /// The user's objectId, when a session token resolved to a user.
    pub user_id: Option<Box<str>>,
    /// Names of the user's roles, inherited ones included, without the `role:` prefix.
    pub roles: HashSet<Box<str>>,
}

impl Reader {
    /// Nobody in particular: only public data.
    pub fn anonymous() -> Self {
        Self::default()
    }

    /// A master-key client.
    pub fn master() -> Self {
        Self {
            master: true,
            ..Self::default()
        }
    }

    /// A user with the given roles (names without `role:`).
    pub fn user(
        id: impl Into<Box<str>>,
        roles: impl IntoIterator<Item = impl Into<Box<str>>>,
    ) -> Self {
        Self {
            master: false,
            user_id: Some(id.into()),
            roles: roles.into_iter().map(Into::into).collect(),
        }
    }

    /// Whether this reader is the user `user_id`.
    pub fn is(&self, user_id: &str) -> bool {
        self.user_id.as_deref() == Some(user_id)
    }

    /// Whether `acl_key` (`role:<name>`) names one of the reader's roles.
    pub(crate) fn has_role_entry(&self, acl_key: &str) -> bool {
        acl_key
            .strip_prefix("role:")
            .is_some_and(|name| self.roles.contains(name))
    }

    /// A text that is equal for two readers exactly when they may read the same things
    /// (master; else user id and role set). Results computed for one reader (subquery
    /// sets) are shared only between readers with the same key.
    pub fn identity_key(&self) -> String {
        if self.master {
            return "master".to_owned();
        }
        let mut roles: Vec<&str> = self.roles.iter().map(|r| &**r).collect();
        roles.sort_unstable();
        // JSON, so that no user id or role name can imitate another combination.
        serde_json::json!([self.user_id.as_deref(), roles]).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_keys_tell_readers_apart() {
        let a = Reader::user("u", ["B", "A"]);
        let b = Reader::user("u", ["A", "B"]);
        assert_eq!(a.identity_key(), b.identity_key());
        assert_ne!(a.identity_key(), Reader::user("u", ["A"]).identity_key());
        assert_ne!(
            Reader::anonymous().identity_key(),
            Reader::master().identity_key()
        );
        // No user id or role name can imitate another combination.
        assert_ne!(
            Reader::user("u", ["a,b"]).identity_key(),
            Reader::user("u", ["a", "b"]).identity_key()
        );
    }
}
