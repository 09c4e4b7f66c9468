//! What of an object a reader receives.

use std::hash::{Hash, Hasher};

use serde_json::{Map, Value};

use super::hidden::{ClassKind, Hidden};

/// Which top-level keys of an object a subscriber receives: everything not hidden from it
/// ([`Hidden`]), minus `_User.sessionToken` and `_User.password`, which never leave (not
/// even for master), projected to `keys` (which always keeps `className`, `objectId`,
/// `createdAt`, `updatedAt` and `ACL`). Applied while serializing, so an object is never
/// copied to be filtered.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FieldView<'a> {
    hidden: Hidden<'a>,
    keys: Option<&'a [String]>,
}

impl<'a> FieldView<'a> {
    /// The view given the reader's hidden fields and the subscription's `keys`.
    pub fn new(hidden: Hidden<'a>, keys: Option<&'a [String]>) -> Self {
        Self { hidden, keys }
    }

    /// Whether `key` is sent.
    pub fn keeps(&self, key: &str) -> bool {
        if matches!(key, "className" | "objectId") {
            return true;
        }
        if let Some(keys) = self.keys
            && !matches!(key, "createdAt" | "updatedAt" | "ACL")
            && !keys.iter().any(|k| k == key)
        {
            return false;
        }
        if self.hidden.kind() == ClassKind::User && matches!(key, "sessionToken" | "password") {
            return false;
        }
        !self.hidden.contains(key)
    }
}

/// An object as one reader may see it: the only way the gate hands out an object's
/// fields. Equal (and hashing equally) for the same object seen through the same view, so
/// a server encodes each distinct one once per event.
#[derive(Debug, Clone)]
pub struct VisibleObject<'a> {
    view: FieldView<'a>,
    object: &'a Map<String, Value>,
}

impl<'a> VisibleObject<'a> {
    pub(crate) fn new(view: FieldView<'a>, object: &'a Map<String, Value>) -> Self {
        Self { view, object }
    }

    /// The entries the reader receives, in the object's order.
    pub fn entries(&self) -> impl Iterator<Item = (&'a String, &'a Value)> + '_ {
        self.object.iter().filter(|(k, _)| self.view.keeps(k))
    }

    /// Whether this is a view of `object` (the very map, not an equal one): which of an
    /// event's objects a payload shows.
    pub fn is_of(&self, object: &Map<String, Value>) -> bool {
        std::ptr::eq(self.object, object)
    }

    /// The view applied.
    pub fn view(&self) -> &FieldView<'a> {
        &self.view
    }

    /// The unfiltered object (tests only check payloads against it).
    #[cfg(test)]
    pub(crate) fn object(&self) -> &'a Map<String, Value> {
        self.object
    }
}

impl PartialEq for VisibleObject<'_> {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self.object, other.object) && self.view == other.view
    }
}

impl Eq for VisibleObject<'_> {}

impl Hash for VisibleObject<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        std::ptr::hash(self.object, state);
        self.view.hash(state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::{ClassPermissions, Reader};
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn views_sanitise_and_project() {
        let user_obj = map(json!({
            "username": "u", "email": "e", "sessionToken": "r:x", "password": "p",
            "authData": {"x": {}}, "_hashed_password": "h", "__type": "Object",
            "className": "_User", "objectId": "u1", "ACL": {}, "createdAt": "c", "updatedAt": "d"
        }));
        let clp = ClassPermissions::from_json(&json!({"protectedFields": {"*": ["email"]}}));
        let kept = |reader: &Reader, keys: Option<&[String]>| {
            let hidden = Hidden::for_object(ClassKind::User, Some(&clp), reader, &user_obj);
            VisibleObject::new(FieldView::new(hidden, keys), &user_obj)
                .entries()
                .map(|(k, _)| k.clone())
                .collect::<Vec<_>>()
        };
        let anon = Reader::anonymous();
        let owner = Reader::user("u1", Vec::<String>::new());
        assert_eq!(
            kept(&anon, None),
            [
                "username",
                "className",
                "objectId",
                "ACL",
                "createdAt",
                "updatedAt"
            ]
        );
        assert_eq!(
            kept(&owner, None),
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
        let master = kept(&Reader::master(), None);
        assert!(
            !master.contains(&"sessionToken".to_owned())
                && !master.contains(&"password".to_owned())
        );
        assert!(master.contains(&"email".to_owned()));
        let keys = vec!["username".to_owned(), "nope".to_owned(), "email".to_owned()];
        assert_eq!(
            kept(&anon, Some(&keys)),
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
        let view = |reader: &Reader| {
            FieldView::new(
                Hidden::for_object(ClassKind::Session, None, reader, &session),
                None,
            )
        };
        assert!(!view(&owner).keeps("sessionToken"));
        assert!(view(&Reader::master()).keeps("sessionToken"));
    }
}
