//! Which fields a reader may not see: the single definition every rule of the gate uses.
//!
//! A field is hidden from a reader when it is
//! - internal: any top-level key that is not identifier-like (`_rperm`, `_hashed_password`,
//!   `__type`, …);
//! - a secret of its class: `_User.sessionToken` and `_User.password` (from everyone but
//!   master), `_User.authData` (from everyone but master and the user itself),
//!   `_Session.sessionToken` (from everyone but master);
//! - protected for the reader by the class's `protectedFields` (nothing is protected from
//!   master, nor from a user reading its own `_User` object).
//!
//! `className` and `objectId` are never hidden. Hidden fields never leave in a payload, and
//! nothing the reader asks about (`where` at any depth, `watch`) may name one.

use serde_json::{Map, Value};

use super::permissions::ClassPermissions;
use super::reader::Reader;

/// What kind of class an object belongs to, as far as visibility goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClassKind {
    /// `_User`: secrets (`sessionToken`, `password`, `authData`) and the owner exemption.
    User,
    /// `_Session`: its `sessionToken` is a secret.
    Session,
    /// parse-server's internal classes (`_Installation`, `_PushStatus`, `_JobStatus`,
    /// `_JobSchedule`, `_Audience`, `_Idempotency`, `_Hooks`, `_GlobalConfig`,
    /// `_GraphQLConfig`, `_SCHEMA`, relation tables, and any other `_` class): master only,
    /// as parse-server's REST API refuses clients reads of them.
    Internal,
    /// `_Role`, `_Product` and every application class.
    Ordinary,
}

impl ClassKind {
    /// The kind of `class_name`.
    pub fn of(class_name: &str) -> Self {
        match class_name {
            "_User" => Self::User,
            "_Session" => Self::Session,
            "_Role" | "_Product" => Self::Ordinary,
            name if name.starts_with('_') => Self::Internal,
            _ => Self::Ordinary,
        }
    }
}

/// `^[A-Za-z][0-9A-Za-z_]*$`: the only top-level keys that ever reach a client.
pub fn is_identifier(key: &str) -> bool {
    // Bytes, not chars: every byte of a non-ASCII char fails the test, as the char would.
    let mut bytes = key.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The top-level field a dotted path starts with (`authData.facebook.id` → `authData`).
pub(crate) fn head(path: &str) -> &str {
    path.split('.').next().unwrap_or(path)
}

/// The fields hidden from one reader, on one object or on every object of a class.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Hidden<'p> {
    kind: ClassKind,
    master: bool,
    /// The reader is the `_User` object itself.
    owner: bool,
    /// Protected fields for this reader, sorted and de-duplicated.
    protected: Vec<&'p str>,
}

impl<'p> Hidden<'p> {
    fn new(kind: ClassKind, reader: &Reader, owner: bool, mut protected: Vec<&'p str>) -> Self {
        protected.sort_unstable();
        protected.dedup();
        Self {
            kind,
            master: reader.master,
            owner,
            protected,
        }
    }

    /// The fields hidden from `reader` on `object`.
    pub fn for_object(
        kind: ClassKind,
        permissions: Option<&'p ClassPermissions>,
        reader: &Reader,
        object: &Map<String, Value>,
    ) -> Self {
        let owner = kind == ClassKind::User
            && reader
                .user_id
                .as_deref()
                .is_some_and(|id| object.get("objectId").and_then(Value::as_str) == Some(id));
        let protected = match permissions {
            // The owner exemption: a user sees its own protected fields.
            Some(permissions) if !owner => permissions.protected_for(reader, Some(object)),
            _ => Vec::new(),
        };
        Self::new(kind, reader, owner, protected)
    }

    /// The fields hidden from `reader` whatever the object, as known when it subscribes:
    /// the groups that depend on an object (`userField:`) do not apply, and the owner
    /// exemption applies only when the clause is pinned to the reader's own `_User`
    /// object (`pinned_object_id`).
    pub fn for_subscription(
        kind: ClassKind,
        permissions: Option<&'p ClassPermissions>,
        reader: &Reader,
        pinned_object_id: Option<&str>,
    ) -> Self {
        let owner = kind == ClassKind::User
            && reader
                .user_id
                .as_deref()
                .is_some_and(|id| pinned_object_id == Some(id));
        let protected = match permissions {
            Some(permissions) if !owner => permissions.protected_for(reader, None),
            _ => Vec::new(),
        };
        Self::new(kind, reader, owner, protected)
    }

    /// A superset of the fields hidden from `reader` on any object of the class: used for
    /// an object that is not fully known (an original without pre-image), when what decides
    /// its hidden fields may have changed.
    pub fn at_most(
        kind: ClassKind,
        permissions: Option<&'p ClassPermissions>,
        reader: &Reader,
    ) -> Self {
        let protected = match permissions {
            Some(permissions) if !reader.master => permissions.any_protected(),
            _ => Vec::new(),
        };
        Self::new(kind, reader, false, protected)
    }

    /// Whether the top-level field `field` is hidden.
    pub fn contains(&self, field: &str) -> bool {
        if !is_identifier(field) {
            return true;
        }
        if matches!(field, "className" | "objectId") || self.master {
            return false;
        }
        match (self.kind, field) {
            (ClassKind::User, "sessionToken" | "password")
            | (ClassKind::Session, "sessionToken") => {
                return true;
            }
            (ClassKind::User, "authData") => return !self.owner,
            _ => {}
        }
        self.protected.binary_search(&field).is_ok()
    }

    /// Whether the dotted path `path` reads a hidden field (its first segment is hidden).
    pub fn covers_path(&self, path: &str) -> bool {
        self.contains(head(path))
    }

    /// The class kind these fields were computed for.
    pub fn kind(&self) -> ClassKind {
        self.kind
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    proptest::proptest! {
        /// Read byte by byte, a key is an identifier exactly when its chars make one.
        #[test]
        fn identifiers_are_told_by_their_chars(key in "[a-zA-Z0-9_é€-]{0,5}") {
            let mut chars = key.chars();
            let by_chars = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
            proptest::prop_assert_eq!(is_identifier(&key), by_chars, "{}", key);
        }
    }

    #[test]
    fn identifiers() {
        for key in ["a", "room", "a_1", "Z9"] {
            assert!(is_identifier(key), "{key}");
        }
        for key in ["", "_a", "1a", "a-b", "é", "aé", "a\u{0}", "__type"] {
            assert!(!is_identifier(key), "{key}");
        }
    }

    #[test]
    fn class_kinds() {
        assert_eq!(ClassKind::of("_User"), ClassKind::User);
        assert_eq!(ClassKind::of("_Session"), ClassKind::Session);
        for internal in [
            "_Installation",
            "_PushStatus",
            "_JobStatus",
            "_JobSchedule",
            "_Audience",
            "_Idempotency",
            "_Hooks",
            "_GlobalConfig",
            "_GraphQLConfig",
            "_SCHEMA",
            "_Join:users:_Role",
            "_Anything",
        ] {
            assert_eq!(ClassKind::of(internal), ClassKind::Internal, "{internal}");
        }
        for ordinary in ["_Role", "_Product", "Message"] {
            assert_eq!(ClassKind::of(ordinary), ClassKind::Ordinary, "{ordinary}");
        }
    }

    #[test]
    fn user_secrets_and_the_owner_exemption() {
        let clp = ClassPermissions::from_json(&json!({"protectedFields": {"*": ["email"]}}));
        let me = map(json!({"objectId": "u1", "email": "a@b"}));
        let anon = Reader::anonymous();
        let owner = Reader::user("u1", Vec::<String>::new());
        let other = Reader::user("u2", Vec::<String>::new());
        let master = Reader::master();
        let of = |reader: &Reader| Hidden::for_object(ClassKind::User, Some(&clp), reader, &me);
        for reader in [&anon, &other] {
            let hidden = of(reader);
            for field in [
                "email",
                "sessionToken",
                "password",
                "authData",
                "_hashed_password",
            ] {
                assert!(hidden.contains(field), "{field} visible to {reader:?}");
            }
            assert!(hidden.covers_path("authData.facebook.id"));
            assert!(!hidden.contains("username") && !hidden.contains("objectId"));
        }
        let hidden = of(&owner);
        assert!(!hidden.contains("email") && !hidden.contains("authData"));
        assert!(hidden.contains("sessionToken") && hidden.contains("password"));
        let hidden = of(&master);
        assert!(
            ["email", "authData", "sessionToken", "password"]
                .iter()
                .all(|f| !hidden.contains(f))
        );
        assert!(
            hidden.contains("_hashed_password"),
            "internal keys never show"
        );

        // At subscribe time the owner is only known from a pinned objectId.
        let pinned = Hidden::for_subscription(ClassKind::User, Some(&clp), &owner, Some("u1"));
        assert!(!pinned.contains("email") && !pinned.contains("authData"));
        let unpinned = Hidden::for_subscription(ClassKind::User, Some(&clp), &owner, None);
        assert!(unpinned.contains("email") && unpinned.contains("authData"));
    }

    #[test]
    fn session_tokens_are_for_master_only() {
        let session = map(json!({"objectId": "s", "sessionToken": "r:1"}));
        let user = Reader::user("u", Vec::<String>::new());
        assert!(
            Hidden::for_object(ClassKind::Session, None, &user, &session).contains("sessionToken")
        );
        assert!(
            !Hidden::for_object(ClassKind::Session, None, &Reader::master(), &session)
                .contains("sessionToken")
        );
        // Other classes have no built-in secrets.
        assert!(
            !Hidden::for_object(ClassKind::Ordinary, None, &user, &session)
                .contains("sessionToken")
        );
    }

    #[test]
    fn at_most_covers_every_group() {
        let clp = ClassPermissions::from_json(&json!({"protectedFields": {
            "*": ["a"], "userField:owner": ["b"], "role:R": []
        }}));
        let reader = Reader::user("u", ["R"]);
        let hidden = Hidden::at_most(ClassKind::Ordinary, Some(&clp), &reader);
        assert!(hidden.contains("a") && hidden.contains("b"));
    }
}
