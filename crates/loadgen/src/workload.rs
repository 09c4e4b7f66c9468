//! The deterministic workload: which event goes to which room, which subscription asks for
//! which room, and the exact bytes published to Redis.
//!
//! Everything is a pure function of the event index `i` and the global subscription index
//! `j`, so the publisher and the receivers (the oracle) agree on the expected deliveries
//! without talking to each other.

use std::fmt::Write as _;

use serde_json::json;

/// The family of subscription queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum QueryFamily {
    /// `where: {}` for every subscription: identical queries, every event matches every one.
    Broadcast,
    /// `where: {room: j mod R, tag: {$ne: j}}`: every where-clause differs; selectivity 1/R.
    Distinct,
    /// `where: {score: {$gte: 2r, $lt: 2r + 1}}` with r = j mod R: range-only clauses, as many
    /// distinct ones as rooms; an event of room r has score 2r + 0.5 (-1.5 outside every
    /// interval for room -1), so it matches exactly the subscriptions of its room.
    Range,
}

impl QueryFamily {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Broadcast => "broadcast",
            Self::Distinct => "distinct",
            Self::Range => "range",
        }
    }
}

/// How events are spread over rooms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Selectivity {
    /// Event i goes to room i mod R.
    Rooms,
    /// Every event goes to room -1, which no `distinct` or `range` subscription asks for
    /// (except every `canary_every`-th event, see [`Workload::canary_every`]).
    Zero,
}

/// The parameters shared by the publisher and the oracle.
#[derive(Debug, Clone)]
pub(crate) struct Workload {
    pub(crate) class: String,
    pub(crate) query: QueryFamily,
    pub(crate) rooms: u64,
    pub(crate) selectivity: Selectivity,
    /// M: the number of events published.
    pub(crate) events: u64,
    pub(crate) object_bytes: usize,
    pub(crate) run_id: String,
    /// K > 0 (with [`Selectivity::Zero`] only): event i with i mod K = 0 goes to room 0
    /// instead of -1, so the subscriptions of room 0 (subscription 0 alone when R is the
    /// number of subscriptions) are canaries receiving 1/K of the events: their latency and
    /// completeness tell whether the server keeps up with a feed that matches nothing else.
    pub(crate) canary_every: u64,
}

impl Workload {
    /// room(i).
    pub(crate) fn event_room(&self, i: u64) -> i64 {
        match self.selectivity {
            Selectivity::Zero if self.canary_every > 0 && i.is_multiple_of(self.canary_every) => 0,
            Selectivity::Zero => -1,
            Selectivity::Rooms => (i % self.rooms) as i64,
        }
    }

    /// The `score` of an event of `room` for the range family.
    fn range_score(room: i64) -> f64 {
        if room < 0 {
            -1.5
        } else {
            2.0 * room as f64 + 0.5
        }
    }

    /// The room subscription `j` asks for; `None` when it asks for every event.
    pub(crate) fn sub_room(&self, j: u64) -> Option<i64> {
        match self.query {
            QueryFamily::Broadcast => None,
            QueryFamily::Distinct | QueryFamily::Range => Some((j % self.rooms) as i64),
        }
    }

    /// The selectivity reported: the fraction of events one subscription receives.
    pub(crate) fn selectivity_value(&self) -> f64 {
        match (self.query, self.selectivity) {
            (QueryFamily::Broadcast, _) => 1.0,
            // The canaries' share, spread over every subscription (exact when the
            // subscriptions are a multiple of R).
            (_, Selectivity::Zero) if self.canary_every > 0 => {
                1.0 / (self.canary_every as f64 * self.rooms as f64)
            }
            (_, Selectivity::Zero) => 0.0,
            (_, Selectivity::Rooms) => 1.0 / self.rooms as f64,
        }
    }

    /// How many distinct where-clauses `subscriptions` subscriptions use.
    pub(crate) fn distinct_queries(&self, subscriptions: u64) -> u64 {
        match self.query {
            QueryFamily::Broadcast => subscriptions.min(1),
            QueryFamily::Distinct => subscriptions,
            QueryFamily::Range => subscriptions.min(self.rooms),
        }
    }

    /// How many of the M events a subscription on `room` must receive.
    pub(crate) fn expected_count(&self, room: Option<i64>) -> u64 {
        let Some(room) = room else {
            return self.events;
        };
        match self.selectivity {
            Selectivity::Zero if room == 0 && self.canary_every > 0 && self.events > 0 => {
                (self.events - 1) / self.canary_every + 1
            }
            Selectivity::Zero => 0,
            Selectivity::Rooms => {
                let r = room as u64;
                if room < 0 || r >= self.events {
                    0
                } else {
                    (self.events - 1 - r) / self.rooms + 1
                }
            }
        }
    }

    /// The position of event `seq` among the events a subscription on `room` expects, or
    /// `None` when the subscription must not receive it.
    pub(crate) fn expected_index(&self, room: Option<i64>, seq: u64) -> Option<u64> {
        if seq >= self.events {
            return None;
        }
        let Some(room) = room else {
            return Some(seq);
        };
        if self.event_room(seq) != room {
            return None;
        }
        match self.selectivity {
            Selectivity::Zero => Some(seq / self.canary_every.max(1)),
            Selectivity::Rooms => Some(seq / self.rooms),
        }
    }

    /// The `query` of subscription `j`.
    pub(crate) fn subscribe_query(&self, j: u64) -> serde_json::Value {
        match self.sub_room(j) {
            None => json!({"className": self.class, "where": {}}),
            Some(room) if self.query == QueryFamily::Range => json!({
                "className": self.class,
                "where": {"score": {"$gte": 2 * room, "$lt": 2 * room + 1}},
            }),
            Some(room) => json!({
                "className": self.class,
                "where": {"room": room, "tag": {"$ne": j}},
            }),
        }
    }

    /// A deterministic score in [0, 1) with at most 6 decimals (short to print, and printed
    /// alike by JavaScript and Rust).
    fn score(i: u64) -> f64 {
        (i.wrapping_mul(618_034) % 1_000_000) as f64 / 1e6
    }

    /// Appends the Redis payload of event `i` (an afterSave of a new object), scheduled at
    /// `sent_at_ns`, to `out`. The `currentParseObject` JSON is padded with its `body` to
    /// `object_bytes` (it is longer only when the other fields alone exceed that). Like
    /// parse-server's, the message carries the class's `classLevelPermissions` (those of a
    /// class created without any: [`DEFAULT_CLASS_LEVEL_PERMISSIONS`]).
    pub(crate) fn encode_event(&self, i: u64, sent_at_ns: u64, out: &mut String) {
        const PREFIX: &str = "{\"currentParseObject\":";
        // Padding is inserted in slices of this (no allocation per event: the publisher
        // shares its core with Redis at the matching sweep's rates).
        const PAD: &str = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";
        let start = out.len();
        out.push_str(PREFIX);
        let object_start = out.len();
        // `write!` into a String cannot fail.
        let room = self.event_room(i);
        let score = match self.query {
            QueryFamily::Range => Self::range_score(room),
            QueryFamily::Broadcast | QueryFamily::Distinct => Self::score(i),
        };
        let _ = write!(
            out,
            "{{\"room\":{room},\"score\":{score},\"seq\":{i},\"sentAt\":{sent_at_ns},\"body\":\"",
        );
        let body_at = out.len();
        out.push_str("\",\"createdAt\":\"");
        write_iso8601_millis(out, sent_at_ns);
        out.push_str("\",\"updatedAt\":\"");
        write_iso8601_millis(out, sent_at_ns);
        let _ = write!(
            out,
            "\",\"ACL\":{{\"*\":{{\"read\":true}}}},\"objectId\":\"b{}{i}\",\"__type\":\"Object\",\"className\":",
            self.run_id,
        );
        push_json_string(out, &self.class);
        out.push('}');
        let mut body = self.object_bytes.saturating_sub(out.len() - object_start);
        while body > 0 {
            let n = body.min(PAD.len());
            out.insert_str(body_at, &PAD[..n]);
            body -= n;
        }
        out.push_str(",\"classLevelPermissions\":");
        out.push_str(DEFAULT_CLASS_LEVEL_PERMISSIONS);
        out.push('}');
        debug_assert!(out.len() > start);
    }
}

/// Appends `text` as a JSON string.
fn push_json_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The class-level permissions parse-server 9.10 gives a class created without any (its
/// `defaultColumns`' CLP), as it publishes them with every LiveQuery message of the class.
pub(crate) const DEFAULT_CLASS_LEVEL_PERMISSIONS: &str = concat!(
    r#"{"find":{"*":true},"count":{"*":true},"get":{"*":true},"create":{"*":true},"#,
    r#""update":{"*":true},"delete":{"*":true},"addField":{"*":true},"protectedFields":{"*":[]}}"#
);

/// `ns` since the UNIX epoch as Parse prints dates: `2026-11-22T09:13:04.224Z`.
#[cfg(test)]
pub(crate) fn iso8601_millis(ns: u64) -> String {
    let mut out = String::with_capacity(24);
    write_iso8601_millis(&mut out, ns);
    out
}

/// Appends `ns` since the UNIX epoch to `out` as Parse prints dates.
fn write_iso8601_millis(out: &mut String, ns: u64) {
    let ms = ns / 1_000_000;
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(query: QueryFamily, rooms: u64, selectivity: Selectivity) -> Workload {
        Workload {
            class: "LQBench".into(),
            query,
            rooms,
            selectivity,
            events: 1000,
            object_bytes: 256,
            run_id: "r1".into(),
            canary_every: 0,
        }
    }

    #[test]
    fn rooms_and_selectivity() {
        let w = workload(QueryFamily::Distinct, 100, Selectivity::Rooms);
        assert_eq!(w.event_room(0), 0);
        assert_eq!(w.event_room(257), 57);
        assert_eq!(w.sub_room(1234), Some(34));
        assert_eq!(w.selectivity_value(), 0.01);
        assert_eq!(w.distinct_queries(500), 500);
        // 1000 events over 100 rooms: 10 each.
        assert_eq!(w.expected_count(Some(0)), 10);
        assert_eq!(w.expected_count(Some(99)), 10);
        assert_eq!(w.expected_index(Some(34), 34), Some(0));
        assert_eq!(w.expected_index(Some(34), 934), Some(9));
        assert_eq!(w.expected_index(Some(34), 35), None);
        assert_eq!(w.expected_index(Some(34), 1034), None);

        let w = workload(QueryFamily::Distinct, 1, Selectivity::Rooms);
        assert_eq!(w.selectivity_value(), 1.0);
        assert_eq!(w.expected_count(Some(0)), 1000);
        assert_eq!(w.expected_index(Some(0), 999), Some(999));

        let w = Workload {
            events: 7,
            ..workload(QueryFamily::Distinct, 3, Selectivity::Rooms)
        };
        // Events 0..7 in rooms 0,1,2,0,1,2,0.
        assert_eq!(
            [0, 1, 2].map(|r| w.expected_count(Some(r))),
            [3, 2, 2],
            "uneven split"
        );
        let w = Workload {
            events: 2,
            ..workload(QueryFamily::Distinct, 5, Selectivity::Rooms)
        };
        assert_eq!(w.expected_count(Some(3)), 0, "room beyond the last event");

        let w = workload(QueryFamily::Distinct, 10, Selectivity::Zero);
        assert_eq!(w.event_room(5), -1);
        assert_eq!(w.selectivity_value(), 0.0);
        assert_eq!(w.expected_count(Some(0)), 0);
        assert_eq!(w.expected_index(Some(0), 0), None);

        let w = workload(QueryFamily::Broadcast, 10, Selectivity::Rooms);
        assert_eq!(w.sub_room(7), None);
        assert_eq!(w.selectivity_value(), 1.0);
        assert_eq!(w.distinct_queries(500), 1);
        assert_eq!(w.expected_count(None), 1000);
        assert_eq!(w.expected_index(None, 999), Some(999));
        assert_eq!(w.expected_index(None, 1000), None);
    }

    #[test]
    fn canaries_in_a_feed_that_matches_nothing() {
        let w = Workload {
            canary_every: 10,
            events: 95,
            ..workload(QueryFamily::Distinct, 1000, Selectivity::Zero)
        };
        assert_eq!(w.event_room(0), 0);
        assert_eq!(w.event_room(5), -1);
        assert_eq!(w.event_room(90), 0);
        // Events 0, 10, .., 90 reach room 0 (subscription 0 alone); nothing reaches the others.
        assert_eq!(w.expected_count(Some(0)), 10);
        assert_eq!(w.expected_count(Some(1)), 0);
        assert_eq!(w.expected_index(Some(0), 30), Some(3));
        assert_eq!(w.expected_index(Some(0), 31), None);
        assert_eq!(w.expected_index(Some(1), 30), None);
        assert_eq!(w.expected_index(Some(0), 100), None);
        assert_eq!(w.selectivity_value(), 1.0 / 10_000.0);
        let none = Workload {
            events: 0,
            ..w.clone()
        };
        assert_eq!(none.expected_count(Some(0)), 0);
    }

    #[test]
    fn range_family() {
        let w = workload(QueryFamily::Range, 100, Selectivity::Rooms);
        assert_eq!(
            w.subscribe_query(1234).to_string(),
            r#"{"className":"LQBench","where":{"score":{"$gte":68,"$lt":69}}}"#
        );
        assert_eq!(w.sub_room(1234), Some(34));
        assert_eq!(w.distinct_queries(500), 100);
        assert_eq!(w.distinct_queries(50), 50);
        assert_eq!(w.selectivity_value(), 0.01);
        let score = |w: &Workload, i: u64| {
            let mut out = String::new();
            w.encode_event(i, 1, &mut out);
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            v["currentParseObject"]["score"].as_f64().unwrap()
        };
        // Event 234 is in room 34: score 68.5, inside [68, 69) only.
        assert_eq!(score(&w, 234), 68.5);
        let zero = Workload {
            canary_every: 4,
            ..workload(QueryFamily::Range, 100, Selectivity::Zero)
        };
        assert_eq!(score(&zero, 1), -1.5, "below every interval");
        assert_eq!(score(&zero, 8), 0.5, "a canary event, inside [0, 1)");
        // The other families keep their pseudo-random score in [0, 1).
        let distinct = workload(QueryFamily::Distinct, 100, Selectivity::Rooms);
        assert!(score(&distinct, 234) < 1.0);
    }

    #[test]
    fn queries() {
        let w = workload(QueryFamily::Distinct, 100, Selectivity::Rooms);
        assert_eq!(
            w.subscribe_query(1234).to_string(),
            r#"{"className":"LQBench","where":{"room":34,"tag":{"$ne":1234}}}"#
        );
        let w = workload(QueryFamily::Broadcast, 100, Selectivity::Rooms);
        assert_eq!(
            w.subscribe_query(3).to_string(),
            r#"{"className":"LQBench","where":{}}"#
        );
    }

    #[test]
    fn event_message_is_valid_and_sized() {
        let sent_at = 1_795_338_784_224_123_456u64;
        for (query, object_bytes) in [
            (QueryFamily::Distinct, 256),
            (QueryFamily::Broadcast, 1024),
            (QueryFamily::Distinct, 10_240),
        ] {
            let w = Workload {
                object_bytes,
                ..workload(query, 7, Selectivity::Rooms)
            };
            for i in [0, 9, 123_456, 99_999_999] {
                let mut out = String::new();
                w.encode_event(i, sent_at, &mut out);
                let v: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
                let obj = &v["currentParseObject"];
                assert_eq!(v.as_object().unwrap().len(), 2, "{out}");
                assert_eq!(
                    v["classLevelPermissions"],
                    json!({
                        "find": {"*": true}, "count": {"*": true}, "get": {"*": true},
                        "create": {"*": true}, "update": {"*": true}, "delete": {"*": true},
                        "addField": {"*": true}, "protectedFields": {"*": []}
                    })
                );
                let obj_len = serde_json::to_string(obj).unwrap().len();
                if obj["body"] == "" {
                    assert!(obj_len >= object_bytes - 4, "{obj_len}");
                } else {
                    assert!(
                        obj_len.abs_diff(object_bytes) <= 4,
                        "object is {obj_len} bytes, want {object_bytes}"
                    );
                }
                assert_eq!(obj["seq"], i);
                assert_eq!(obj["sentAt"], sent_at);
                assert_eq!(obj["room"], w.event_room(i));
                assert_eq!(obj["className"], "LQBench");
                assert_eq!(obj["__type"], "Object");
                assert_eq!(obj["objectId"], format!("br1{i}"));
                assert_eq!(obj["ACL"], json!({"*": {"read": true}}));
                assert_eq!(obj["createdAt"], "2026-11-22T09:13:04.224Z");
                assert!(obj["score"].as_f64().unwrap() < 1.0);
                assert!(obj["body"].as_str().unwrap().bytes().all(|b| b == b'x'));
            }
        }
        // Tiny objects cannot shrink below their fixed fields; the body is then empty.
        let w = Workload {
            object_bytes: 10,
            ..workload(QueryFamily::Distinct, 7, Selectivity::Zero)
        };
        let mut out = String::new();
        w.encode_event(3, sent_at, &mut out);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["currentParseObject"]["body"], "");
        assert_eq!(v["currentParseObject"]["room"], -1);
    }

    #[test]
    fn iso_dates() {
        assert_eq!(iso8601_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            iso8601_millis(951_782_400_123_000_000),
            "2000-02-29T00:00:00.123Z"
        );
        assert_eq!(
            iso8601_millis(1_795_338_784_224_999_999),
            "2026-11-22T09:13:04.224Z"
        );
    }

    #[test]
    fn class_names_are_written_as_json_strings() {
        for name in [
            "LQBench",
            "a\"b\\c",
            "tab\there\r\n\u{8}\u{c}",
            "é\u{1}\u{1f}",
        ] {
            let mut out = String::new();
            push_json_string(&mut out, name);
            assert_eq!(out, serde_json::to_string(name).unwrap());
        }
    }
}
