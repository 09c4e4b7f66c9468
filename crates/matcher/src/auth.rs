//! Pure authorization helpers: who may read an object, and which of its fields.
//!
//! The server resolves a subscriber's identity into a [`Reader`] (user id, role names,
//! master) once per subscription and calls these functions per event; none of them does
//! I/O. Semantics are those of Parse REST reads (reference §2.3–§2.6) with the reference
//! LiveQuery server's known bugs fixed: role entries in class-level permissions grant
//! access, `userField:` protected-field groups are applied, the `_User` owner exemption
//! works whichever token identified the reader, master bypasses class-level permissions
//! as it does in REST, and a `_Session`'s `sessionToken` is only shown to master.

use hashbrown::HashSet;
use serde_json::{Map, Value};

/// The identity an object is filtered for.
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

    fn is(&self, user_id: &str) -> bool {
        self.user_id.as_deref() == Some(user_id)
    }

    fn has_role_entry(&self, acl_key: &str) -> bool {
        acl_key
            .strip_prefix("role:")
            .is_some_and(|name| self.roles.contains(name))
    }
}

/// Whether the object's `ACL` lets `reader` read it: no ACL means public; otherwise public
/// read, the reader's user id or one of its roles must be granted `read: true`.
pub fn acl_allows_read(object: &Map<String, Value>, reader: &Reader) -> bool {
    if reader.master {
        return true;
    }
    let acl = match object.get("ACL") {
        None => return true,
        Some(Value::Object(acl)) => acl,
        // A malformed ACL cannot come from parse-server; fail closed.
        Some(_) => return false,
    };
    acl.iter().any(|(key, perms)| {
        perms.get("read") == Some(&Value::Bool(true))
            && (key == "*" || reader.is(key) || reader.has_role_entry(key))
    })
}

/// A read operation governed by class-level permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOp {
    /// Query by constraints.
    Find,
    /// Fetch one object by id (a subscription to exactly `{objectId: <id>}`).
    Get,
}

/// The outcome of a class-level permission check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadAccess<'a> {
    /// Allowed for every object.
    Granted,
    /// Allowed for objects whose listed pointer fields point to the reader (pointer
    /// permissions); check each object with [`pointer_fields_allow`].
    PointerFields(&'a [Box<str>]),
    /// The class requires an authenticated user (wire code 101).
    RequiresAuthentication,
    /// Denied (wire code 119).
    Forbidden,
}

/// One operation's entry of a class-level permission object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permission {
    /// `"*": true`.
    pub public: bool,
    /// `"requiresAuthentication": true`.
    pub requires_authentication: bool,
    /// User ids granted.
    pub users: HashSet<Box<str>>,
    /// Role names granted (without `role:`).
    pub roles: HashSet<Box<str>>,
    /// `pointerFields`.
    pub pointer_fields: Vec<Box<str>>,
}

impl Permission {
    fn from_json(value: &Value) -> Self {
        let mut perm = Self::default();
        let Some(map) = value.as_object() else {
            return perm;
        };
        for (key, value) in map {
            match (key.as_str(), value) {
                ("*", Value::Bool(true)) => perm.public = true,
                ("requiresAuthentication", Value::Bool(true)) => {
                    perm.requires_authentication = true
                }
                ("pointerFields", Value::Array(fields)) => {
                    perm.pointer_fields = fields
                        .iter()
                        .filter_map(Value::as_str)
                        .map(Into::into)
                        .collect();
                }
                (key, Value::Bool(true)) => match key.strip_prefix("role:") {
                    Some(role) => {
                        perm.roles.insert(role.into());
                    }
                    None => {
                        perm.users.insert(key.into());
                    }
                },
                _ => {}
            }
        }
        perm
    }
}

/// `protectedFields` groups (`*`, `authenticated`, a user id, `role:<name>`,
/// `userField:<field>`) and the fields each hides, in order.
pub type ProtectedFieldGroups = Vec<(Box<str>, Vec<Box<str>>)>;

/// The read-related part of a class's class-level permissions (`find`, `get`,
/// `readUserFields`, `protectedFields`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClassPermissions {
    /// `find`; `None` when the CLP has no entry (allowed).
    pub find: Option<Permission>,
    /// `get`; `None` when the CLP has no entry (allowed).
    pub get: Option<Permission>,
    /// `readUserFields` (pointer permissions for reads).
    pub read_user_fields: Vec<Box<str>>,
    /// `protectedFields`: groups (`*`, `authenticated`, a user id, `role:<name>`,
    /// `userField:<field>`) and the fields they hide, in CLP order.
    pub protected_fields: ProtectedFieldGroups,
}

impl ClassPermissions {
    /// Parses a CLP object as parse-server publishes it (`classLevelPermissions`).
    pub fn from_json(value: &Value) -> Self {
        let Some(map) = value.as_object() else {
            return Self::default();
        };
        Self {
            find: map.get("find").map(Permission::from_json),
            get: map.get("get").map(Permission::from_json),
            read_user_fields: map
                .get("readUserFields")
                .and_then(Value::as_array)
                .map(|fields| {
                    fields
                        .iter()
                        .filter_map(Value::as_str)
                        .map(Into::into)
                        .collect()
                })
                .unwrap_or_default(),
            protected_fields: map
                .get("protectedFields")
                .and_then(Value::as_object)
                .map(|groups| {
                    groups
                        .iter()
                        .map(|(group, fields)| {
                            let fields = fields
                                .as_array()
                                .map(|f| {
                                    f.iter().filter_map(Value::as_str).map(Into::into).collect()
                                })
                                .unwrap_or_default();
                            (group.as_str().into(), fields)
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// Adds the server-level default protected fields (parse-server's `protectedFields`
    /// option, e.g. `_User: {"*": ["email"]}`): per group, the union with the class's own.
    pub fn merge_default_protected_fields(&mut self, defaults: &ProtectedFieldGroups) {
        // parse-server: the class's list and the default list of each group are united.
        for (group, fields) in defaults {
            match self.protected_fields.iter_mut().find(|(g, _)| g == group) {
                Some((_, existing)) => {
                    for field in fields {
                        if !existing.contains(field) {
                            existing.push(field.clone());
                        }
                    }
                }
                None => self.protected_fields.push((group.clone(), fields.clone())),
            }
        }
    }

    /// Checks `op` for `reader`, as Parse REST does, except that master bypasses the check
    /// (as in REST) and role entries grant access (the reference never consults roles).
    pub fn read_access(&self, op: ReadOp, reader: &Reader) -> ReadAccess<'_> {
        if reader.master {
            return ReadAccess::Granted;
        }
        let Some(perm) = (match op {
            ReadOp::Find => self.find.as_ref(),
            ReadOp::Get => self.get.as_ref(),
        }) else {
            return ReadAccess::Granted;
        };
        if perm.public
            || reader
                .user_id
                .as_deref()
                .is_some_and(|id| perm.users.contains(id))
            || reader.roles.iter().any(|role| perm.roles.contains(role))
        {
            return ReadAccess::Granted;
        }
        if perm.requires_authentication {
            return if reader.user_id.is_some() {
                ReadAccess::Granted
            } else {
                ReadAccess::RequiresAuthentication
            };
        }
        if !self.read_user_fields.is_empty() {
            return ReadAccess::PointerFields(&self.read_user_fields);
        }
        if !perm.pointer_fields.is_empty() {
            return ReadAccess::PointerFields(&perm.pointer_fields);
        }
        ReadAccess::Forbidden
    }

    /// The fields of `object` hidden from `reader` (reference §2.5): the intersection of
    /// the lists of every group that applies to the reader (`*`; `authenticated` when
    /// logged in; the user id; `role:<name>` for each role; `userField:<f>` when the
    /// object's `f` points to the reader). Nothing is hidden from master, from a `_User`
    /// reading its own object, or when no group applies.
    ///
    /// Without `object`, only the groups that do not depend on the object are applied
    /// (used to check `where`/`watch` at subscribe time).
    pub fn protected_fields<'a>(
        &'a self,
        class_name: &str,
        reader: &Reader,
        object: Option<&Map<String, Value>>,
    ) -> Vec<&'a str> {
        if reader.master || self.protected_fields.is_empty() {
            return Vec::new();
        }
        if class_name == "_User"
            && let (Some(object), Some(user_id)) = (object, reader.user_id.as_deref())
            && object.get("objectId").and_then(Value::as_str) == Some(user_id)
        {
            return Vec::new();
        }
        let mut result: Option<Vec<&'a str>> = None;
        let mut intersect = |fields: &'a [Box<str>]| {
            result = Some(match result.take() {
                None => fields.iter().map(|f| &**f).collect(),
                Some(current) => current
                    .into_iter()
                    .filter(|f| fields.iter().any(|g| &**g == *f))
                    .collect(),
            });
        };
        for (group, fields) in &self.protected_fields {
            let applies = match &**group {
                "*" => true,
                "authenticated" => reader.user_id.is_some(),
                g => {
                    if let Some(field) = g.strip_prefix("userField:") {
                        match (object, reader.user_id.as_deref()) {
                            (Some(object), Some(user_id)) => {
                                points_to_user(object.get(field), user_id)
                            }
                            _ => false,
                        }
                    } else {
                        reader.is(g) || reader.has_role_entry(g)
                    }
                }
            };
            if applies {
                intersect(fields);
            }
        }
        result.unwrap_or_default()
    }
}

/// Whether any of `fields` of `object` is a pointer (or an array holding a pointer) to the
/// user `user_id` (pointer permissions).
pub fn pointer_fields_allow(
    object: &Map<String, Value>,
    fields: &[Box<str>],
    user_id: Option<&str>,
) -> bool {
    let Some(user_id) = user_id else { return false };
    fields
        .iter()
        .any(|field| points_to_user(object.get(&**field), user_id))
}

fn points_to_user(value: Option<&Value>, user_id: &str) -> bool {
    let is_pointer = |v: &Value| v.get("objectId").and_then(Value::as_str) == Some(user_id);
    match value {
        Some(Value::Array(items)) => items.iter().any(is_pointer),
        Some(v) => is_pointer(v),
        None => false,
    }
}

/// Which top-level keys of an object a subscriber receives (reference §2.6 and §1.8).
///
/// Applied while serializing, so an event is never copied to be filtered. Keys that are
/// not identifier-like (`_hashed_password`, `_rperm`, `__type`, …) never leave; protected
/// fields are dropped for non-master readers; `_User` objects lose `sessionToken` and
/// `password` always and `authData` unless the reader is master or the user itself;
/// `_Session` objects lose `sessionToken` unless the reader is master; `keys` keeps only
/// the listed fields plus `className`, `objectId`, `createdAt`, `updatedAt` and `ACL`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FieldView<'a> {
    class: ClassKind,
    master: bool,
    owner: bool,
    protected: Vec<&'a str>,
    keys: Option<&'a [String]>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ClassKind {
    User,
    Session,
    Other,
}

impl<'a> FieldView<'a> {
    /// The view of `object` (of class `class_name`) for `reader`, with the protected fields
    /// computed by [`ClassPermissions::protected_fields`] and the subscription's `keys`.
    pub fn new(
        class_name: &str,
        object: &Map<String, Value>,
        reader: &Reader,
        protected: Vec<&'a str>,
        keys: Option<&'a [String]>,
    ) -> Self {
        let class = match class_name {
            "_User" => ClassKind::User,
            "_Session" => ClassKind::Session,
            _ => ClassKind::Other,
        };
        let owner = class == ClassKind::User
            && reader
                .user_id
                .as_deref()
                .is_some_and(|id| object.get("objectId").and_then(Value::as_str) == Some(id));
        let mut protected = protected;
        protected.sort_unstable();
        protected.dedup();
        Self {
            class,
            master: reader.master,
            owner,
            protected,
            keys,
        }
    }

    /// Whether `key` is sent.
    pub fn keeps(&self, key: &str) -> bool {
        if !is_identifier(key) {
            return false;
        }
        if matches!(key, "className" | "objectId") {
            return true;
        }
        if let Some(keys) = self.keys
            && !matches!(key, "createdAt" | "updatedAt" | "ACL")
            && !keys.iter().any(|k| k == key)
        {
            return false;
        }
        match self.class {
            ClassKind::User if matches!(key, "sessionToken" | "password") => return false,
            ClassKind::User if key == "authData" && !(self.master || self.owner) => return false,
            ClassKind::Session if key == "sessionToken" && !self.master => return false,
            _ => {}
        }
        self.master || self.protected.binary_search(&key).is_err()
    }

    /// The kept entries of `object`, in order.
    pub fn entries<'o>(
        &'o self,
        object: &'o Map<String, Value>,
    ) -> impl Iterator<Item = (&'o String, &'o Value)> + 'o {
        object.iter().filter(|(k, _)| self.keeps(k))
    }
}

/// `^[A-Za-z][0-9A-Za-z_]*$`: the only top-level keys that ever reach a client.
pub fn is_identifier(key: &str) -> bool {
    let mut chars = key.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn acl_checks() {
        let alice = Reader::user("alice", ["Admin"]);
        let bob = Reader::user("bob", Vec::<String>::new());
        let none = Reader::anonymous();
        let no_acl = map(json!({"a": 1}));
        let public = map(json!({"ACL": {"*": {"read": true}}}));
        let private = map(json!({"ACL": {"alice": {"read": true, "write": true}}}));
        let role = map(json!({"ACL": {"role:Admin": {"read": true}}}));
        let write_only = map(json!({"ACL": {"bob": {"write": true}}}));
        let empty = map(json!({"ACL": {}}));
        assert!(acl_allows_read(&no_acl, &none));
        assert!(acl_allows_read(&public, &none));
        assert!(acl_allows_read(&private, &alice));
        assert!(!acl_allows_read(&private, &bob));
        assert!(!acl_allows_read(&private, &none));
        assert!(acl_allows_read(&role, &alice));
        assert!(!acl_allows_read(&role, &bob));
        assert!(!acl_allows_read(&write_only, &bob));
        assert!(!acl_allows_read(&empty, &alice));
        assert!(acl_allows_read(&empty, &Reader::master()));
    }

    #[test]
    fn clp_checks() {
        let clp = |v: Value| ClassPermissions::from_json(&json!({ "find": v }));
        let alice = Reader::user("alice", ["Admin"]);
        let none = Reader::anonymous();
        assert_eq!(
            ClassPermissions::default().read_access(ReadOp::Find, &none),
            ReadAccess::Granted
        );
        assert_eq!(
            clp(json!({"*": true})).read_access(ReadOp::Find, &none),
            ReadAccess::Granted
        );
        assert_eq!(
            clp(json!({})).read_access(ReadOp::Find, &none),
            ReadAccess::Forbidden
        );
        assert_eq!(
            clp(json!({})).read_access(ReadOp::Find, &Reader::master()),
            ReadAccess::Granted
        );
        assert_eq!(
            clp(json!({"alice": true})).read_access(ReadOp::Find, &alice),
            ReadAccess::Granted
        );
        // Role entries grant access (the reference ignores them).
        assert_eq!(
            clp(json!({"role:Admin": true})).read_access(ReadOp::Find, &alice),
            ReadAccess::Granted
        );
        assert_eq!(
            clp(json!({"role:Other": true})).read_access(ReadOp::Find, &alice),
            ReadAccess::Forbidden
        );
        assert_eq!(
            clp(json!({"requiresAuthentication": true})).read_access(ReadOp::Find, &none),
            ReadAccess::RequiresAuthentication
        );
        assert_eq!(
            clp(json!({"requiresAuthentication": true})).read_access(ReadOp::Find, &alice),
            ReadAccess::Granted
        );
        let pointer = clp(json!({"pointerFields": ["owner"]}));
        let ReadAccess::PointerFields(fields) = pointer.read_access(ReadOp::Find, &alice) else {
            panic!()
        };
        let mine =
            map(json!({"owner": {"__type": "Pointer", "className": "_User", "objectId": "alice"}}));
        let shared = map(
            json!({"owner": [{"__type": "Pointer", "className": "_User", "objectId": "x"}, {"__type": "Pointer", "className": "_User", "objectId": "alice"}]}),
        );
        let theirs =
            map(json!({"owner": {"__type": "Pointer", "className": "_User", "objectId": "bob"}}));
        assert!(pointer_fields_allow(&mine, fields, Some("alice")));
        assert!(pointer_fields_allow(&shared, fields, Some("alice")));
        assert!(!pointer_fields_allow(&theirs, fields, Some("alice")));
        assert!(!pointer_fields_allow(&mine, fields, None));
        // `get` is separate from `find`
        let by_id = ClassPermissions::from_json(&json!({"find": {}, "get": {"*": true}}));
        assert_eq!(by_id.read_access(ReadOp::Get, &none), ReadAccess::Granted);
        assert_eq!(
            by_id.read_access(ReadOp::Find, &none),
            ReadAccess::Forbidden
        );
    }

    #[test]
    fn protected_fields_intersect_applicable_groups() {
        let clp = ClassPermissions::from_json(&json!({"protectedFields": {
            "*": ["email", "phone", "secret"],
            "authenticated": ["email", "secret"],
            "role:Staff": ["secret"],
            "userField:owner": [],
        }}));
        let anon = Reader::anonymous();
        let user = Reader::user("u1", Vec::<String>::new());
        let staff = Reader::user("u2", ["Staff"]);
        let obj = map(
            json!({"objectId": "o", "owner": {"__type": "Pointer", "className": "_User", "objectId": "u3"}}),
        );
        let owned = map(
            json!({"objectId": "o", "owner": {"__type": "Pointer", "className": "_User", "objectId": "u1"}}),
        );
        fn sorted(mut v: Vec<&str>) -> Vec<&str> {
            v.sort_unstable();
            v
        }
        assert_eq!(
            sorted(clp.protected_fields("C", &anon, Some(&obj))),
            vec!["email", "phone", "secret"]
        );
        assert_eq!(
            sorted(clp.protected_fields("C", &user, Some(&obj))),
            vec!["email", "secret"]
        );
        assert_eq!(
            clp.protected_fields("C", &staff, Some(&obj)),
            vec!["secret"]
        );
        assert!(clp.protected_fields("C", &user, Some(&owned)).is_empty());
        assert!(
            clp.protected_fields("C", &Reader::master(), Some(&obj))
                .is_empty()
        );
        // Owner exemption for users.
        let users = ClassPermissions::from_json(&json!({"protectedFields": {"*": ["email"]}}));
        let me = map(json!({"objectId": "u1", "email": "a@b"}));
        assert!(users.protected_fields("_User", &user, Some(&me)).is_empty());
        assert_eq!(
            users.protected_fields("_User", &anon, Some(&me)),
            vec!["email"]
        );
    }

    #[test]
    fn views_sanitise_and_project() {
        let user_obj = map(json!({
            "username": "u", "email": "e", "sessionToken": "r:x", "password": "p",
            "authData": {"x": {}}, "_hashed_password": "h", "__type": "Object",
            "className": "_User", "objectId": "u1", "ACL": {}, "createdAt": "c", "updatedAt": "d"
        }));
        let kept = |view: &FieldView<'_>| {
            view.entries(&user_obj)
                .map(|(k, _)| k.clone())
                .collect::<Vec<_>>()
        };
        let anon = Reader::anonymous();
        let owner = Reader::user("u1", Vec::<String>::new());
        let view = FieldView::new("_User", &user_obj, &anon, vec!["email"], None);
        assert_eq!(
            kept(&view),
            [
                "username",
                "className",
                "objectId",
                "ACL",
                "createdAt",
                "updatedAt"
            ]
        );
        let view = FieldView::new("_User", &user_obj, &owner, vec![], None);
        assert_eq!(
            kept(&view),
            [
                "username",
                "email",
                "authData",
                "className",
                "objectId",
                "ACL",
                "createdAt",
                "updatedAt"
            ]
        );
        let view = FieldView::new("_User", &user_obj, &Reader::master(), vec![], None);
        assert!(!kept(&view).contains(&"sessionToken".to_owned()));
        let keys = vec!["username".to_owned(), "nope".to_owned()];
        let view = FieldView::new("_User", &user_obj, &anon, vec![], Some(&keys));
        assert_eq!(
            kept(&view),
            [
                "username",
                "className",
                "objectId",
                "ACL",
                "createdAt",
                "updatedAt"
            ]
        );

        let session = map(
            json!({"sessionToken": "r:1", "user": {}, "className": "_Session", "objectId": "s"}),
        );
        let view = FieldView::new("_Session", &session, &owner, vec![], None);
        assert!(!view.keeps("sessionToken"));
        let view = FieldView::new("_Session", &session, &Reader::master(), vec![], None);
        assert!(view.keeps("sessionToken"));
    }

    #[test]
    fn default_protected_fields_are_united_with_the_class_ones() {
        let mut clp = ClassPermissions::from_json(
            &json!({"protectedFields": {"*": ["phone"], "role:HR": []}}),
        );
        let defaults: ProtectedFieldGroups = vec![
            ("*".into(), vec!["email".into(), "phone".into()]),
            ("authenticated".into(), vec!["email".into()]),
        ];
        clp.merge_default_protected_fields(&defaults);
        let anon = Reader::anonymous();
        let mut fields = clp.protected_fields("_User", &anon, None);
        fields.sort_unstable();
        assert_eq!(fields, ["email", "phone"]);
        clp.merge_default_protected_fields(&defaults);
        assert_eq!(
            clp.protected_fields("_User", &anon, None).len(),
            2,
            "merging twice changes nothing"
        );
    }
}
