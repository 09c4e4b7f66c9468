//! Subscribe time: may this reader subscribe to this query at all?

use serde_json::{Map, Value, json};

use super::hidden::{ClassKind, Hidden};
use super::permissions::{ClassPermissions, ReadAccess, ReadOp};
use super::reader::Reader;
use crate::query::{Query, SubqueryKind};

/// Why a subscription is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// The class requires an authenticated user (Parse code 101, `Permission denied`).
    RequiresAuthentication,
    /// Not allowed: class-level permissions deny the read, the class is internal, or the
    /// query names a field hidden from the reader (Parse code 119, `Permission denied`).
    Forbidden,
    /// `_Session` without a user (Parse code 209, `Invalid session token`).
    InvalidSessionToken,
}

/// An admitted subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// The class-level permission its events are checked against: `get` for a clause that
    /// is exactly `{objectId: "<id>"}`, `find` otherwise.
    pub op: ReadOp,
}

/// What a client asks to subscribe to, compiled.
#[derive(Debug, Clone, Copy)]
pub struct SubscriptionRequest<'a> {
    /// The class.
    pub class_name: &'a str,
    /// The compiled `where` (after [`restrict_where`]).
    pub query: &'a Query,
    /// `watch`.
    pub watch: Option<&'a [String]>,
}

/// The class-level permissions of a class, as the server knows them now (`None`: nothing
/// restricted).
pub type PermissionsOf<'p> = dyn Fn(&str) -> Option<&'p ClassPermissions> + 'p;

/// Rewrites a `where` before it is compiled: a `_Session` subscription is forced to the
/// sessions of the user behind the subscriber's session token (`user_id`), whatever the
/// client asked — master included, as in the reference; without a user it is refused.
pub fn restrict_where(
    class_name: &str,
    user_id: Option<&str>,
    where_: &mut Map<String, Value>,
) -> Result<(), Denial> {
    if class_name != "_Session" {
        return Ok(());
    }
    let Some(user) = user_id else {
        return Err(Denial::InvalidSessionToken);
    };
    where_.insert(
        "user".into(),
        json!({"__type": "Pointer", "className": "_User", "objectId": user}),
    );
    Ok(())
}

/// Whether `$regex` may be used: parse-server's `requestComplexity.allowRegex`, which does
/// not bind master.
pub fn regex_allowed(reader: &Reader, allow_regex: bool) -> bool {
    allow_regex || reader.master
}

/// The classes whose permissions [`admit`] consults: the subscription's and those of its
/// subqueries.
pub fn classes_involved<'q>(class_name: &'q str, query: &'q Query) -> Vec<&'q str> {
    let mut classes = vec![class_name];
    for sub in query.subqueries() {
        if !classes.contains(&sub.class_name.as_str()) {
            classes.push(&sub.class_name);
        }
    }
    classes
}

/// Decides whether `reader` may subscribe. The rules, in order:
/// 1. internal classes are for master only;
/// 2. class-level permissions (`get` for exactly `{objectId}`, `find` otherwise; roles
///    grant; pointer permissions admit the subscription, each object is checked later);
/// 3. no field hidden from the reader (on every object, as far as known now) may be named
///    by the `where` (any path, under any operator) or by `watch`;
/// 4. the same for each subquery against its own class: the inner class must be readable
///    (`find`), its `where` and `$select`'s `key` must not name a field hidden there;
///    `$relatedTo` needs its owner class readable and its relation key visible.
///
/// `keys` is not checked: it only selects among the fields the reader receives, and hidden
/// fields are never among them (parse-server accepts such `keys` too).
pub fn admit(
    request: &SubscriptionRequest<'_>,
    reader: &Reader,
    permissions: &PermissionsOf<'_>,
) -> Result<Admission, Denial> {
    let query = request.query;
    let op = if query.object_id_lookup().is_some() {
        ReadOp::Get
    } else {
        ReadOp::Find
    };
    let class_permissions = readable_class(request.class_name, op, reader, permissions)?;
    let hidden = Hidden::for_subscription(
        ClassKind::of(request.class_name),
        class_permissions,
        reader,
        query.pinned_object_id(),
    );
    let watched = request.watch.into_iter().flatten().map(String::as_str);
    if query
        .referenced_fields()
        .chain(watched)
        .any(|path| hidden.covers_path(path))
    {
        return Err(Denial::Forbidden);
    }
    for sub in query.subqueries() {
        let inner_permissions = readable_class(&sub.class_name, ReadOp::Find, reader, permissions)?;
        let hidden = Hidden::for_subscription(
            ClassKind::of(&sub.class_name),
            inner_permissions,
            reader,
            None,
        );
        let inner_fields = sub.inner.iter().flat_map(|inner| inner.referenced_fields());
        let key = match sub.kind {
            SubqueryKind::Select | SubqueryKind::DontSelect | SubqueryKind::RelatedTo => {
                sub.key.as_deref()
            }
            SubqueryKind::InQuery | SubqueryKind::NotInQuery => None,
        };
        if inner_fields.chain(key).any(|path| hidden.covers_path(path)) {
            return Err(Denial::Forbidden);
        }
    }
    Ok(Admission { op })
}

/// Checks that `reader` may read `class_name` with `op`; returns its permissions.
fn readable_class<'p>(
    class_name: &str,
    op: ReadOp,
    reader: &Reader,
    permissions: &PermissionsOf<'p>,
) -> Result<Option<&'p ClassPermissions>, Denial> {
    if ClassKind::of(class_name) == ClassKind::Internal && !reader.master {
        return Err(Denial::Forbidden);
    }
    let class_permissions = permissions(class_name);
    match class_permissions.map(|p| p.read_access(op, reader)) {
        None | Some(ReadAccess::Granted | ReadAccess::PointerFields(_)) => Ok(class_permissions),
        Some(ReadAccess::RequiresAuthentication) => Err(Denial::RequiresAuthentication),
        Some(ReadAccess::Forbidden) => Err(Denial::Forbidden),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CompileOptions, SubqueryPolicy};

    fn compile(where_: Value) -> Query {
        let options = CompileOptions {
            subqueries: SubqueryPolicy::Represent,
            ..CompileOptions::default()
        };
        Query::compile(where_.as_object().expect("object"), &options).expect("compiles")
    }

    fn admit_json(
        class_name: &str,
        where_: Value,
        watch: Option<&[String]>,
        reader: &Reader,
        clps: &[(&str, Value)],
    ) -> Result<Admission, Denial> {
        let parsed: Vec<(String, ClassPermissions)> = clps
            .iter()
            .map(|(c, v)| ((*c).to_owned(), ClassPermissions::from_json(v)))
            .collect();
        let lookup = |class: &str| parsed.iter().find(|(c, _)| c == class).map(|(_, p)| p);
        let query = compile(where_);
        admit(
            &SubscriptionRequest {
                class_name,
                query: &query,
                watch,
            },
            reader,
            &lookup,
        )
    }

    #[test]
    fn user_secrets_cannot_be_queried() {
        let anon = Reader::anonymous();
        let user = Reader::user("u1", Vec::<String>::new());
        for where_ in [
            json!({"sessionToken": {"$regex": "^r:a"}}),
            json!({"sessionToken": {"$exists": true}}),
            json!({"$or": [{"username": "x"}, {"sessionToken": "r:1"}]}),
            json!({"$and": [{"$nor": [{"password": "p"}]}]}),
            json!({"authData.anonymous.id": "x"}),
            json!({"authData": {"$exists": true}}),
        ] {
            for reader in [&anon, &user] {
                assert_eq!(
                    admit_json("_User", where_.clone(), None, reader, &[]),
                    Err(Denial::Forbidden),
                    "{where_} by {reader:?}"
                );
            }
        }
        // The server's default protected fields are part of the class's permissions.
        let email = [("_User", json!({"protectedFields": {"*": ["email"]}}))];
        assert_eq!(
            admit_json("_User", json!({"email": "a"}), None, &anon, &email),
            Err(Denial::Forbidden)
        );
        // Pinned to the reader's own object: its protected fields and authData are its own.
        assert!(
            admit_json(
                "_User",
                json!({"objectId": "u1", "email": "a", "authData.x": 1}),
                None,
                &user,
                &email
            )
            .is_ok()
        );
        // The token stays a secret even there (only master sees it).
        assert_eq!(
            admit_json(
                "_User",
                json!({"objectId": "u1", "sessionToken": "r:1"}),
                None,
                &user,
                &[]
            ),
            Err(Denial::Forbidden)
        );
        assert!(
            admit_json(
                "_User",
                json!({"sessionToken": "r:1"}),
                None,
                &Reader::master(),
                &[]
            )
            .is_ok()
        );
        assert!(admit_json("_User", json!({"username": "x"}), None, &anon, &email).is_ok());
        let watch = ["authData.facebook".to_owned()];
        assert_eq!(
            admit_json("_User", json!({}), Some(&watch), &anon, &[]),
            Err(Denial::Forbidden)
        );
        let watch = ["_rperm".to_owned()];
        assert_eq!(
            admit_json("M", json!({}), Some(&watch), &anon, &[]),
            Err(Denial::Forbidden)
        );
    }

    #[test]
    fn session_tokens_cannot_be_queried() {
        let user = Reader::user("u1", Vec::<String>::new());
        let mut where_ = Map::new();
        restrict_where("_Session", user.user_id.as_deref(), &mut where_).expect("a user");
        where_.insert("sessionToken".into(), json!({"$regex": "^r:"}));
        assert_eq!(
            admit_json("_Session", Value::Object(where_), None, &user, &[]),
            Err(Denial::Forbidden)
        );
        assert_eq!(
            restrict_where("_Session", None, &mut Map::new()),
            Err(Denial::InvalidSessionToken)
        );
    }

    #[test]
    fn internal_classes_are_master_only() {
        for class in [
            "_Installation",
            "_PushStatus",
            "_JobStatus",
            "_Idempotency",
            "_GlobalConfig",
        ] {
            assert_eq!(
                admit_json(class, json!({}), None, &Reader::user("u", ["Admin"]), &[]),
                Err(Denial::Forbidden)
            );
            assert!(admit_json(class, json!({}), None, &Reader::master(), &[]).is_ok());
        }
    }

    #[test]
    fn subqueries_are_judged_against_their_own_class() {
        let anon = Reader::anonymous();
        let email = ("_User", json!({"protectedFields": {"*": ["email"]}}));
        // A protected field of the inner class.
        assert_eq!(
            admit_json(
                "M",
                json!({"owner": {"$inQuery": {"className": "_User", "where": {"email": {"$regex": "^a"}}}}}),
                None,
                &anon,
                std::slice::from_ref(&email)
            ),
            Err(Denial::Forbidden)
        );
        // A secret of the inner class, under $notInQuery and logical operators.
        assert_eq!(
            admit_json(
                "M",
                json!({"$or": [{"owner": {"$notInQuery": {"className": "_User", "where": {"$and": [{"sessionToken": {"$exists": true}}]}}}}]}),
                None,
                &anon,
                &[]
            ),
            Err(Denial::Forbidden)
        );
        // $select's key.
        assert_eq!(
            admit_json(
                "M",
                json!({"mail": {"$select": {"query": {"className": "_User", "where": {}}, "key": "email"}}}),
                None,
                &anon,
                std::slice::from_ref(&email)
            ),
            Err(Denial::Forbidden)
        );
        // The inner class's find permission.
        assert_eq!(
            admit_json(
                "M",
                json!({"team": {"$inQuery": {"className": "Team", "where": {}}}}),
                None,
                &anon,
                &[("Team", json!({"find": {"requiresAuthentication": true}}))]
            ),
            Err(Denial::RequiresAuthentication)
        );
        assert_eq!(
            admit_json(
                "M",
                json!({"i": {"$inQuery": {"className": "_Installation", "where": {}}}}),
                None,
                &anon,
                &[]
            ),
            Err(Denial::Forbidden)
        );
        // $relatedTo: the owner class and the relation key.
        assert_eq!(
            admit_json(
                "M",
                json!({"$relatedTo": {"object": {"__type": "Pointer", "className": "Team", "objectId": "t"}, "key": "members"}}),
                None,
                &anon,
                &[("Team", json!({"find": {}, "get": {}}))]
            ),
            Err(Denial::Forbidden)
        );
        assert!(
            admit_json(
                "M",
                json!({"owner": {"$inQuery": {"className": "_User", "where": {"username": "x"}}}}),
                None,
                &anon,
                &[email]
            )
            .is_ok()
        );
    }

    #[test]
    fn class_permissions_decide_first() {
        let anon = Reader::anonymous();
        assert_eq!(
            admit_json("C", json!({}), None, &anon, &[("C", json!({"find": {}}))]),
            Err(Denial::Forbidden)
        );
        assert_eq!(
            admit_json(
                "C",
                json!({"objectId": "x"}),
                None,
                &anon,
                &[("C", json!({"find": {}, "get": {"*": true}}))]
            ),
            Ok(Admission { op: ReadOp::Get })
        );
    }
}
