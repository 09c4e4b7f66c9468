//! Allocation-free parsing of the ISO-8601 dates Parse uses (`2026-11-22T08:49:51.247Z`),
//! their JavaScript text form, and the re-encoding of the dates of a published object.

use serde_json::{Map, Value};

/// Milliseconds since the Unix epoch, or `None` when `text` is not an ISO-8601 date.
///
/// Accepts `YYYY-MM-DD`, optionally followed by `T` (or a space) and `HH:MM`, `HH:MM:SS`
/// or `HH:MM:SS.fff…`, and an optional `Z` or `±HH:MM` / `±HHMM` / `±HH` offset; extended
/// years `±YYYYYY` are accepted as JavaScript does. Date-only forms are UTC, like
/// JavaScript's `Date.parse`; date-time forms without an offset are taken as UTC too (the
/// only deterministic choice for a server).
pub fn parse_iso_millis(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let mut i = 0;
    let (year, next) = parse_year(b)?;
    i += next;
    expect(b, &mut i, b'-')?;
    let month = digits(b, &mut i, 2)?;
    expect(b, &mut i, b'-')?;
    let day = digits(b, &mut i, 2)?;
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    let mut millis_of_day: i64 = 0;
    let mut offset_minutes: i64 = 0;
    if i < b.len() {
        if b[i] != b'T' && b[i] != b't' && b[i] != b' ' {
            return None;
        }
        i += 1;
        let hour = digits(b, &mut i, 2)?;
        expect(b, &mut i, b':')?;
        let minute = digits(b, &mut i, 2)?;
        let mut second = 0;
        let mut millis = 0;
        if i < b.len() && b[i] == b':' {
            i += 1;
            second = digits(b, &mut i, 2)?;
            if i < b.len() && (b[i] == b'.' || b[i] == b',') {
                i += 1;
                let start = i;
                let mut scale = 100;
                while i < b.len() && b[i].is_ascii_digit() {
                    millis += i64::from(b[i] - b'0') * scale;
                    scale /= 10;
                    i += 1;
                }
                if i == start {
                    return None;
                }
            }
        }
        // 24:00:00 is allowed by ISO-8601 and JavaScript as the end of the day.
        if hour > 24
            || minute > 59
            || second > 59
            || (hour == 24 && (minute | second | millis) != 0)
        {
            return None;
        }
        millis_of_day = ((hour * 60 + minute) * 60 + second) * 1000 + millis;
        if i < b.len() {
            match b[i] {
                b'Z' | b'z' => i += 1,
                sign @ (b'+' | b'-') => {
                    i += 1;
                    let oh = digits(b, &mut i, 2)?;
                    let mut om = 0;
                    if i < b.len() && b[i] == b':' {
                        i += 1;
                        om = digits(b, &mut i, 2)?;
                    } else if i < b.len() {
                        om = digits(b, &mut i, 2)?;
                    }
                    if oh > 23 || om > 59 {
                        return None;
                    }
                    offset_minutes = (oh * 60 + om) * if sign == b'+' { 1 } else { -1 };
                }
                _ => return None,
            }
        }
    }
    if i != b.len() {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(days * 86_400_000 + millis_of_day - offset_minutes * 60_000)
}

fn parse_year(b: &[u8]) -> Option<(i64, usize)> {
    match b.first()? {
        sign @ (b'+' | b'-') => {
            let mut i = 1;
            let year = digits(b, &mut i, 6)?;
            Some((if *sign == b'-' { -year } else { year }, i))
        }
        _ => {
            let mut i = 0;
            Some((digits(b, &mut i, 4)?, i))
        }
    }
}

fn expect(b: &[u8], i: &mut usize, byte: u8) -> Option<()> {
    (b.get(*i) == Some(&byte)).then(|| *i += 1)
}

fn digits(b: &[u8], i: &mut usize, count: usize) -> Option<i64> {
    let slice = b.get(*i..*i + count)?;
    let mut value = 0i64;
    for &d in slice {
        if !d.is_ascii_digit() {
            return None;
        }
        value = value * 10 + i64::from(d - b'0');
    }
    *i += count;
    Some(value)
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Formats milliseconds since the epoch as `YYYY-MM-DDTHH:MM:SS.sssZ` (JavaScript's
/// `toISOString`).
pub fn format_iso_millis(millis: i64) -> String {
    let days = millis.div_euclid(86_400_000);
    let ms = millis.rem_euclid(86_400_000);
    let (y, m, d) = civil_from_days(days);
    let (h, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (mi, rest) = (rest / 60_000, rest % 60_000);
    let (s, frac) = (rest / 1000, rest % 1000);
    if (0..=9999).contains(&y) {
        format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{frac:03}Z")
    } else {
        let sign = if y < 0 { '-' } else { '+' };
        format!(
            "{sign}{:06}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{frac:03}Z",
            y.abs()
        )
    }
}

/// The range of JavaScript dates: ±100,000,000 days around the epoch, in milliseconds.
const JS_DATE_LIMIT: i64 = 8_640_000_000_000_000;

/// `text` as JavaScript's `toISOString` writes the same instant, or `None` when it is not
/// an ISO-8601 date (or lies outside JavaScript's date range).
pub fn normalize_iso(text: &str) -> Option<String> {
    parse_iso_millis(text)
        .filter(|millis| millis.abs() <= JS_DATE_LIMIT)
        .map(format_iso_millis)
}

/// Whether `text` is already what [`normalize_iso`] would write (`YYYY-MM-DDTHH:MM:SS.sssZ`,
/// a valid date): the common case, recognised without allocating.
fn is_normal_iso(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 24
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'.',
            23 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
        // 24:00:00.000 is read as the next day's midnight and written so.
        && &b[11..13] != b"24"
        && parse_iso_millis(text).is_some()
}

/// The normalised form of `text` when it differs from `text`.
fn renormalized(text: &str) -> Option<String> {
    if is_normal_iso(text) {
        None
    } else {
        normalize_iso(text)
    }
}

/// Re-encodes the dates of a Parse object the way parse-server's LiveQuery server does when
/// it inflates a published object into a `Parse.Object` and serializes it back (its
/// `_finishFetch` then `toJSON`), so that events carry the same date texts whatever the
/// source wrote:
/// - `createdAt` and `updatedAt` become ISO strings with milliseconds in UTC
///   (`2024-01-02T03:04:05Z` → `2024-01-02T03:04:05.000Z`, offsets applied; a
///   `{__type: "Date"}` value becomes its string);
/// - a missing (or `null`, or empty) `updatedAt` is copied from `createdAt`;
/// - every `{__type: "Date", iso}` value, at any depth, is rewritten as
///   `{__type: "Date", iso: <UTC with milliseconds>}`.
///
/// Texts that are not dates are left as they are (the reference fails on them and drops
/// the whole event). Only the `Date` values change: other typed values are kept as sent.
pub fn normalize_object_dates(object: &mut Map<String, Value>) {
    for (key, value) in object.iter_mut() {
        match key.as_str() {
            "createdAt" | "updatedAt" => {
                let iso = match value {
                    Value::String(text) => renormalized(text),
                    Value::Object(map) if is_date(map) => date_iso(map).and_then(normalize_iso),
                    _ => None,
                };
                if let Some(iso) = iso {
                    *value = Value::String(iso);
                }
            }
            "ACL" => {}
            _ => normalize_value_dates(value),
        }
    }
    let updated_missing = match object.get("updatedAt") {
        None | Some(Value::Null) => true,
        Some(Value::String(text)) => text.is_empty(),
        Some(_) => false,
    };
    if !updated_missing {
        return;
    }
    let created = object
        .get("createdAt")
        .and_then(Value::as_str)
        .filter(|text| parse_iso_millis(text).is_some())
        .map(str::to_owned);
    if let Some(created) = created {
        object.insert("updatedAt".to_owned(), Value::String(created));
    }
}

fn is_date(map: &Map<String, Value>) -> bool {
    map.get("__type").and_then(Value::as_str) == Some("Date")
}

fn date_iso(map: &Map<String, Value>) -> Option<&str> {
    map.get("iso").and_then(Value::as_str)
}

/// Rewrites the `{__type: "Date"}` values inside a field value.
fn normalize_value_dates(value: &mut Value) {
    match value {
        Value::Object(map)
            if is_date(map) && map.len() == 2 && date_iso(map).is_some_and(is_normal_iso) => {}
        Value::Object(map) if is_date(map) => {
            if let Some(iso) = date_iso(map).and_then(normalize_iso) {
                // The reference re-encodes the date: exactly these two keys remain.
                let mut date = Map::new();
                date.insert("__type".to_owned(), Value::from("Date"));
                date.insert("iso".to_owned(), Value::String(iso));
                *map = date;
            }
        }
        // Other typed values (GeoPoint, File, Pointer, …) hold no dates.
        Value::Object(map) if map.contains_key("__type") && !is_full_object(map) => {}
        Value::Object(map) => map.values_mut().for_each(normalize_value_dates),
        Value::Array(items) => items.iter_mut().for_each(normalize_value_dates),
        _ => {}
    }
}

/// An embedded full object (`{__type: "Object", className, …}`): its fields are values.
fn is_full_object(map: &Map<String, Value>) -> bool {
    map.get("__type").and_then(Value::as_str) == Some("Object")
}

fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_parse_dates() {
        assert_eq!(parse_iso_millis("1970-01-01T00:00:00.000Z"), Some(0));
        assert_eq!(
            parse_iso_millis("2020-01-02T03:04:05.678Z"),
            Some(1_577_934_245_678)
        );
        assert_eq!(
            parse_iso_millis("2020-01-02T03:04:05Z"),
            Some(1_577_934_245_000)
        );
        assert_eq!(parse_iso_millis("2020-01-02"), Some(1_577_923_200_000));
        assert_eq!(
            parse_iso_millis("2020-01-02T04:04:05.678+01:00"),
            Some(1_577_934_245_678)
        );
        assert_eq!(parse_iso_millis("1969-12-31T23:59:59.999Z"), Some(-1));
        assert_eq!(
            parse_iso_millis("+002020-01-02T03:04:05.678Z"),
            Some(1_577_934_245_678)
        );
        assert_eq!(
            parse_iso_millis("2020-01-02T03:04:05.6789Z"),
            Some(1_577_934_245_678)
        );
    }

    #[test]
    fn rejects_non_dates() {
        for text in [
            "",
            "2020",
            "2020-13-01",
            "2020-02-30",
            "2020-01-02T25:00",
            "abc",
            "2020-01-02Tx",
            "2020-01-02T03:04:05.Z",
            "2020-01-02T03:04:05Zjunk",
        ] {
            assert_eq!(parse_iso_millis(text), None, "{text}");
        }
    }

    #[test]
    fn normalizes_object_dates_like_the_reference() {
        let mut object = serde_json::json!({
            "createdAt": "2024-01-02T03:04:05Z",
            "when": {"__type": "Date", "iso": "2024-01-02T05:04:05.5+02:00", "extra": 1},
            "list": [{"__type": "Date", "iso": "2024-01-02T03:04:05.123456Z"}, "2024-01-02T03:04:05Z"],
            "nested": {"deep": {"__type": "Date", "iso": "2024-01-02"}},
            "bad": {"__type": "Date", "iso": "yesterday"},
            "text": "2024-01-02T03:04:05Z",
            "loc": {"__type": "GeoPoint", "latitude": 1, "longitude": 2},
            "ACL": {"*": {"read": true}},
            "className": "T", "objectId": "o"
        });
        let map = object.as_object_mut().expect("object");
        normalize_object_dates(map);
        assert_eq!(
            object,
            serde_json::json!({
                "createdAt": "2024-01-02T03:04:05.000Z",
                "updatedAt": "2024-01-02T03:04:05.000Z",
                "when": {"__type": "Date", "iso": "2024-01-02T03:04:05.500Z"},
                "list": [{"__type": "Date", "iso": "2024-01-02T03:04:05.123Z"}, "2024-01-02T03:04:05Z"],
                "nested": {"deep": {"__type": "Date", "iso": "2024-01-02T00:00:00.000Z"}},
                "bad": {"__type": "Date", "iso": "yesterday"},
                "text": "2024-01-02T03:04:05Z",
                "loc": {"__type": "GeoPoint", "latitude": 1, "longitude": 2},
                "ACL": {"*": {"read": true}},
                "className": "T", "objectId": "o"
            })
        );
    }

    #[test]
    fn normalizes_created_and_updated_at() {
        let normalized = |value: serde_json::Value| {
            let mut value = value;
            normalize_object_dates(value.as_object_mut().expect("object"));
            value
        };
        // Offsets are applied; a Date value becomes a string; updatedAt is kept when set.
        assert_eq!(
            normalized(serde_json::json!({
                "createdAt": {"__type": "Date", "iso": "2024-01-02T03:04:05.678-01:30"},
                "updatedAt": "2024-01-02T23:59:59.999+00:00"
            })),
            serde_json::json!({
                "createdAt": "2024-01-02T04:34:05.678Z",
                "updatedAt": "2024-01-02T23:59:59.999Z"
            })
        );
        // A null or empty updatedAt is replaced by createdAt, as the reference does.
        for updated in [serde_json::Value::Null, serde_json::json!("")] {
            assert_eq!(
                normalized(
                    serde_json::json!({"createdAt": "2024-01-02T03:04:05.678Z", "updatedAt": updated})
                ),
                serde_json::json!({"createdAt": "2024-01-02T03:04:05.678Z", "updatedAt": "2024-01-02T03:04:05.678Z"})
            );
        }
        // Without a readable createdAt nothing is invented; texts that are not dates stay.
        assert_eq!(
            normalized(serde_json::json!({"createdAt": "soon"})),
            serde_json::json!({"createdAt": "soon"})
        );
        assert_eq!(
            normalized(serde_json::json!({"a": 1})),
            serde_json::json!({"a": 1})
        );
        // Outside JavaScript's date range: kept as sent.
        assert_eq!(normalize_iso("+275761-01-01T00:00:00Z"), None);
        assert_eq!(
            normalize_iso("+275760-09-13T00:00:00Z").as_deref(),
            Some("+275760-09-13T00:00:00.000Z")
        );
    }

    #[test]
    fn recognises_normal_texts() {
        assert!(is_normal_iso("2024-01-02T03:04:05.678Z"));
        for text in [
            "2024-01-02T03:04:05Z",
            "2024-01-02t03:04:05.678Z",
            "2024-01-02T03:04:05.678z",
            "2024-02-30T03:04:05.678Z",
            "2024-01-02T03:04:05.678+00",
            "2024-01-02T24:00:00.000Z",
        ] {
            assert!(!is_normal_iso(text), "{text}");
        }
        // Whatever is recognised as normal is exactly what normalization writes.
        for text in [
            "2024-01-02T03:04:05.678Z",
            "0001-01-01T00:00:00.000Z",
            "9999-12-31T23:59:59.999Z",
        ] {
            assert_eq!(normalize_iso(text).as_deref(), Some(text));
        }
    }

    #[test]
    fn formats_round_trip() {
        for millis in [
            0,
            1_577_934_245_678,
            -1,
            253_402_300_799_999,
            -62_135_596_800_000,
        ] {
            assert_eq!(parse_iso_millis(&format_iso_millis(millis)), Some(millis));
        }
        assert_eq!(
            format_iso_millis(1_577_934_245_678),
            "2020-01-02T03:04:05.678Z"
        );
    }
}
