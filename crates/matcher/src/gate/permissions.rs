//! Class-level permissions (CLP) as parse-server publishes them, object ACLs and pointer
//! permissions: who may read a class and an object at all.

use hashbrown::HashSet;
use serde_json::{Map, Value};

use super::reader::Reader;

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

    /// The fields the protected-field groups that apply to `reader` hide on `object`: the
    /// intersection of the lists of every applicable group (`*`; `authenticated` when
    /// logged in; the user id; `role:<name>` for each role; `userField:<f>` when the
    /// object's `f` is a `_User` pointer to the reader). Empty for master and when no group
    /// applies. Without `object`, only the groups that do not depend on an object apply.
    pub(crate) fn protected_for<'a>(
        &'a self,
        reader: &Reader,
        object: Option<&Map<String, Value>>,
    ) -> Vec<&'a str> {
        if reader.master || self.protected_fields.is_empty() {
            return Vec::new();
        }
        let mut result: Option<Vec<&'a str>> = None;
        for (group, fields) in &self.protected_fields {
            let applies = match &**group {
                "*" => true,
                "authenticated" => reader.user_id.is_some(),
                g => match g.strip_prefix("userField:") {
                    Some(field) => match (object, reader.user_id.as_deref()) {
                        (Some(object), Some(user_id)) => points_to_user(object.get(field), user_id),
                        _ => false,
                    },
                    None => reader.is(g) || reader.has_role_entry(g),
                },
            };
            if applies {
                result = Some(match result.take() {
                    None => fields.iter().map(|f| &**f).collect(),
                    Some(current) => current
                        .into_iter()
                        .filter(|f| fields.iter().any(|g| &**g == *f))
                        .collect(),
                });
            }
        }
        result.unwrap_or_default()
    }

    /// Every field any protected-field group lists: what may be hidden from some reader
    /// on some object (used when the object is not fully known).
    pub(crate) fn any_protected(&self) -> Vec<&str> {
        let mut all: Vec<&str> = self
            .protected_fields
            .iter()
            .flat_map(|(_, fields)| fields.iter().map(|f| &**f))
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    /// The pointer fields of `userField:<field>` groups: whether they point to the reader
    /// decides which fields it sees.
    pub(crate) fn user_field_groups(&self) -> impl Iterator<Item = &str> {
        self.protected_fields
            .iter()
            .filter_map(|(group, _)| group.strip_prefix("userField:"))
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

/// Whether `value` is a pointer (or an array holding a pointer) to the user `user_id`.
/// Only a `_User` pointer counts, as in parse-server's REST checks: a pointer to another
/// class or a bare `{objectId}` with the user's id grants nothing.
pub(crate) fn points_to_user(value: Option<&Value>, user_id: &str) -> bool {
    let is_pointer = |v: &Value| {
        v.get("__type").and_then(Value::as_str) == Some("Pointer")
            && v.get("className").and_then(Value::as_str) == Some("_User")
            && v.get("objectId").and_then(Value::as_str) == Some(user_id)
    };
    match value {
        Some(Value::Array(items)) => items.iter().any(is_pointer),
        Some(v) => is_pointer(v),
        None => false,
    }
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
            sorted(clp.protected_for(&anon, Some(&obj))),
            vec!["email", "phone", "secret"]
        );
        assert_eq!(
            sorted(clp.protected_for(&user, Some(&obj))),
            vec!["email", "secret"]
        );
        assert_eq!(clp.protected_for(&staff, Some(&obj)), vec!["secret"]);
        assert!(clp.protected_for(&user, Some(&owned)).is_empty());
        assert!(clp.protected_for(&Reader::master(), Some(&obj)).is_empty());
        // `userField:` needs a `_User` pointer: another class or a bare id does not count.
        for not_a_user_pointer in [
            json!({"objectId": "o", "owner": {"__type": "Pointer", "className": "Other", "objectId": "u1"}}),
            json!({"objectId": "o", "owner": {"objectId": "u1"}}),
            json!({"objectId": "o", "owner": "u1"}),
        ] {
            let object = map(not_a_user_pointer);
            assert_eq!(
                sorted(clp.protected_for(&user, Some(&object))),
                vec!["email", "secret"]
            );
        }
    }

    #[test]
    fn pointer_permissions_need_a_user_pointer() {
        let fields: Vec<Box<str>> = vec!["owner".into()];
        for (owner, allowed) in [
            (
                json!({"__type": "Pointer", "className": "_User", "objectId": "alice"}),
                true,
            ),
            (
                json!([{"__type": "Pointer", "className": "_User", "objectId": "alice"}]),
                true,
            ),
            (
                json!({"__type": "Pointer", "className": "Team", "objectId": "alice"}),
                false,
            ),
            (json!({"objectId": "alice"}), false),
            (json!([{"objectId": "alice"}]), false),
            (json!("alice"), false),
        ] {
            let object = map(json!({"owner": owner}));
            assert_eq!(
                pointer_fields_allow(&object, &fields, Some("alice")),
                allowed,
                "{object:?}"
            );
        }
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
        let mut fields = clp.protected_for(&anon, None);
        fields.sort_unstable();
        assert_eq!(fields, ["email", "phone"]);
        clp.merge_default_protected_fields(&defaults);
        assert_eq!(
            clp.protected_for(&anon, None).len(),
            2,
            "merging twice changes nothing"
        );
    }
}
