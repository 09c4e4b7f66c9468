//! Deciding which event, if any, a change produces for one subscription (`protocol-spec/frames.md`).

use serde_json::{Map, Value};

use crate::value::json_equal;

/// The kind of change a source reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// An object was created or updated (`afterSave`).
    Save,
    /// An object was deleted (`afterDelete`); the object is its last state.
    Delete,
}

/// One side of a change as seen by one subscriber.
#[derive(Debug, Clone, Copy)]
pub struct Side<'a> {
    /// The object (unfiltered Parse JSON).
    pub object: &'a Map<String, Value>,
    /// Whether the subscription's query matches it.
    pub matches: bool,
    /// Whether the subscriber may read it (ACL, pointer permissions).
    pub readable: bool,
}

impl Side<'_> {
    fn visible_match(&self) -> bool {
        self.matches && self.readable
    }
}

/// What to send to one subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Classification {
    /// Nothing.
    Nothing,
    /// `create` with the current object and no original.
    Create,
    /// `enter`; `with_original` is false when the subscriber could not read the original
    /// (the object became readable): the original is then withheld.
    Enter {
        /// Whether to send `original`.
        with_original: bool,
    },
    /// `update` with object and original.
    Update,
    /// `leave`; `object_is_original` is true when the subscriber cannot read the current
    /// object (it lost access): `object` is then the last readable state, the original.
    Leave {
        /// Whether to send the original in place of the current object.
        object_is_original: bool,
    },
    /// `delete` with the deleted object.
    Delete,
}

/// Classifies a change for one subscription.
///
/// `original` is the object before the change (absent for creates and deletes);
/// `watch` is the subscription's `watch` list: `create` and `update` are suppressed unless
/// a watched field differs between the unfiltered objects (for `create`: is present).
pub fn classify(
    kind: ChangeKind,
    original: Option<Side<'_>>,
    current: Side<'_>,
    watch: Option<&[String]>,
) -> Classification {
    if kind == ChangeKind::Delete {
        return if current.visible_match() {
            Classification::Delete
        } else {
            Classification::Nothing
        };
    }
    let was = original.is_some_and(|o| o.visible_match());
    let is = current.visible_match();
    match (was, is, original) {
        (true, true, Some(original)) => {
            if watch_allows(watch, Some(original.object), current.object) {
                Classification::Update
            } else {
                Classification::Nothing
            }
        }
        (true, false, _) => Classification::Leave {
            object_is_original: !current.readable,
        },
        (false, true, Some(original)) => Classification::Enter {
            with_original: original.readable,
        },
        (false, true, None) => {
            if watch_allows(watch, None, current.object) {
                Classification::Create
            } else {
                Classification::Nothing
            }
        }
        _ => Classification::Nothing,
    }
}

/// Whether something about the original is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Knowledge {
    /// Known to be true or false.
    Known(bool),
    /// Cannot be told (the original is not fully known).
    Unknown,
}

/// Classification when the original is only partly known (a source without pre-images).
/// Only data from the current object is ever sent, and only when the reader may read it
/// now; when the transition cannot be told, a matching object is reported as `enter`
/// without original, and a possible `leave` is not reported.
///
/// `visible_now` is "matches and is readable now"; `watch_changed` is whether a watched
/// field is among the changed ones (`None` without `watch`).
pub fn classify_uncertain(
    original_matches: Knowledge,
    original_readable: Knowledge,
    visible_now: bool,
    current_readable: bool,
    watch_changed: Option<bool>,
) -> Classification {
    use Knowledge::{Known, Unknown};
    let classification = match (original_matches, original_readable, visible_now) {
        (Known(true), Known(true) | Unknown, true) => Classification::Update,
        (Known(true), Known(true) | Unknown, false) if current_readable => Classification::Leave {
            object_is_original: false,
        },
        (Known(false) | Unknown, _, true) | (Known(true), Known(false), true) => {
            Classification::Enter {
                with_original: false,
            }
        }
        _ => Classification::Nothing,
    };
    // The `watch` rule needs only the changed fields, which are known.
    match classification {
        Classification::Update if watch_changed == Some(false) => Classification::Nothing,
        other => other,
    }
}

fn watch_allows(
    watch: Option<&[String]>,
    original: Option<&Map<String, Value>>,
    current: &Map<String, Value>,
) -> bool {
    let Some(fields) = watch else { return true };
    fields.iter().any(
        |field| match (original.and_then(|o| o.get(field)), current.get(field)) {
            (None, None) => false,
            (Some(before), Some(after)) => !json_equal(before, after),
            _ => true,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn truth_table() {
        let o = map(json!({"a": 1}));
        let side = |matches, readable| Side {
            object: &o,
            matches,
            readable,
        };
        use Classification::*;
        let save = ChangeKind::Save;
        assert_eq!(classify(save, None, side(true, true), None), Create);
        assert_eq!(classify(save, None, side(true, false), None), Nothing);
        assert_eq!(classify(save, None, side(false, true), None), Nothing);
        assert_eq!(
            classify(save, Some(side(true, true)), side(true, true), None),
            Update
        );
        assert_eq!(
            classify(save, Some(side(true, true)), side(false, true), None),
            Leave {
                object_is_original: false
            }
        );
        assert_eq!(
            classify(save, Some(side(true, true)), side(true, false), None),
            Leave {
                object_is_original: true
            }
        );
        assert_eq!(
            classify(save, Some(side(false, true)), side(true, true), None),
            Enter {
                with_original: true
            }
        );
        assert_eq!(
            classify(save, Some(side(true, false)), side(true, true), None),
            Enter {
                with_original: false
            }
        );
        assert_eq!(
            classify(save, Some(side(false, true)), side(false, true), None),
            Nothing
        );
        assert_eq!(
            classify(ChangeKind::Delete, None, side(true, true), None),
            Delete
        );
        assert_eq!(
            classify(ChangeKind::Delete, None, side(true, false), None),
            Nothing
        );
    }

    #[test]
    fn watch_suppresses_creates_and_updates_only() {
        let before = map(json!({"w": 1, "x": 1}));
        let same = map(json!({"w": 1, "x": 2}));
        let changed = map(json!({"w": 2, "x": 2}));
        let without = map(json!({"x": 2}));
        let watch = vec!["w".to_owned()];
        let w = Some(watch.as_slice());
        let s = |o| Side {
            object: o,
            matches: true,
            readable: true,
        };
        let n = |o| Side {
            object: o,
            matches: false,
            readable: true,
        };
        assert_eq!(
            classify(ChangeKind::Save, Some(s(&before)), s(&same), w),
            Classification::Nothing
        );
        assert_eq!(
            classify(ChangeKind::Save, Some(s(&before)), s(&changed), w),
            Classification::Update
        );
        assert_eq!(
            classify(ChangeKind::Save, Some(s(&before)), s(&without), w),
            Classification::Update
        );
        assert_eq!(
            classify(ChangeKind::Save, None, s(&without), w),
            Classification::Nothing
        );
        assert_eq!(
            classify(ChangeKind::Save, None, s(&same), w),
            Classification::Create
        );
        // enter and leave are never suppressed
        assert_eq!(
            classify(ChangeKind::Save, Some(n(&before)), s(&same), w),
            Classification::Enter {
                with_original: true
            }
        );
        assert_eq!(
            classify(ChangeKind::Save, Some(s(&before)), n(&same), w),
            Classification::Leave {
                object_is_original: false
            }
        );
        // numbers compare by value, object keys by set
        let a = map(json!({"w": {"x": 1, "y": 2.0}}));
        let b = map(json!({"w": {"y": 2, "x": 1.0}}));
        assert_eq!(
            classify(ChangeKind::Save, Some(s(&a)), s(&b), w),
            Classification::Nothing
        );
    }
}
