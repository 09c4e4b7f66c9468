//! Identifiers that cross module boundaries: [`RequestId`] and [`ClientId`].

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use bytes::BufMut;

/// A subscription's `requestId`, chosen by the client and scoped to its connection.
///
/// The reference accepts any JSON number (0, negative and fractional ones included) and
/// echoes it the way JavaScript prints numbers, so the value is kept as an `f64` and
/// printed with JavaScript's number-to-string rules (`1`, `1.5`, `-3`, `1e+21`).
/// Equality follows JavaScript `Map` keys (SameValueZero): `-0` equals `0`.
#[derive(Clone, Copy)]
pub struct RequestId(f64);

impl RequestId {
    /// Wraps a finite number. Non-finite values cannot come from JSON and are mapped to 0.
    pub fn new(value: f64) -> Self {
        if value.is_finite() {
            // Normalise -0.0 so that hashing agrees with equality.
            Self(if value == 0.0 { 0.0 } else { value })
        } else {
            Self(0.0)
        }
    }

    /// The numeric value.
    pub fn get(self) -> f64 {
        self.0
    }

    /// Whether the Parse JS SDK routes frames carrying this id to a subscription: it only
    /// does so for truthy ids, so `0` never reaches an SDK subscription.
    pub fn is_truthy(self) -> bool {
        self.0 != 0.0
    }

    /// Appends the JavaScript rendering of the number to `out`.
    pub fn write_to(self, out: &mut impl BufMut) {
        // Integers (what every SDK sends) print as plain digits below 1e21 in JavaScript;
        // stay well inside the exactly-representable range for the fast path.
        if self.0.fract() == 0.0 && self.0.abs() < 1e15 {
            let value = self.0 as i64;
            let mut digits = [0u8; 20];
            let mut n = value.unsigned_abs();
            let mut i = digits.len();
            loop {
                i -= 1;
                digits[i] = b'0' + (n % 10) as u8;
                n /= 10;
                if n == 0 {
                    break;
                }
            }
            if value < 0 {
                out.put_u8(b'-');
            }
            out.put_slice(&digits[i..]);
            return;
        }
        let mut buf = ryu_js::Buffer::new();
        out.put_slice(buf.format_finite(self.0).as_bytes());
    }

    /// The length of what [`RequestId::write_to`] appends.
    pub fn written_len(self) -> usize {
        if self.0.fract() == 0.0 && self.0.abs() < 1e15 {
            let value = self.0 as i64;
            let mut n = value.unsigned_abs();
            let mut len = usize::from(value < 0) + 1;
            while n >= 10 {
                n /= 10;
                len += 1;
            }
            return len;
        }
        ryu_js::Buffer::new().format_finite(self.0).len()
    }
}

impl From<u32> for RequestId {
    fn from(value: u32) -> Self {
        Self::new(f64::from(value))
    }
}

impl PartialEq for RequestId {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Eq for RequestId {}

impl Hash for RequestId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.to_bits().hash(state);
    }
}

impl PartialOrd for RequestId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for RequestId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = ryu_js::Buffer::new();
        f.write_str(buf.format_finite(self.0))
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequestId({self})")
    }
}

/// The `clientId` the server assigns on `connect` (a UUID v4 string in the reference).
///
/// Cheap to clone: it is copied into every frame sent to that client.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(Arc<str>);

impl ClientId {
    /// Wraps an id. The server generates UUID v4 strings; the SDK only requires a truthy
    /// string.
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        Self(id.into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientId({})", self.0)
    }
}

/// The name of a Parse class (`Message`, `_User`, `_Session`, …), as a subscription names it
/// and as an event carries it.
///
/// Cheap to clone: every subscription and every event holds one. It reads as a `&str`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ClassName(Arc<str>);

impl ClassName {
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for ClassName {
    fn from(name: &str) -> Self {
        Self(name.into())
    }
}

impl From<String> for ClassName {
    fn from(name: String) -> Self {
        Self(name.into())
    }
}

impl std::ops::Deref for ClassName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for ClassName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for ClassName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for ClassName {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for ClassName {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl fmt::Display for ClassName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ClassName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClassName({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_print_like_javascript() {
        for (value, text) in [
            (1.0, "1"),
            (0.0, "0"),
            (-0.0, "0"),
            (-3.0, "-3"),
            (1.5, "1.5"),
            (1e21, "1e+21"),
            (123456789012.0, "123456789012"),
            (0.1, "0.1"),
            (-123.0, "-123"),
            (999_999_999_999_999.0, "999999999999999"),
            (1e15, "1000000000000000"),
        ] {
            assert_eq!(RequestId::new(value).to_string(), text);
            let mut written = Vec::new();
            RequestId::new(value).write_to(&mut written);
            assert_eq!(written, text.as_bytes());
            assert_eq!(RequestId::new(value).written_len(), text.len(), "{text}");
        }
        for value in [
            9.0,
            10.0,
            99.0,
            100.0,
            -9.0,
            -10.0,
            4_294_967_295.0,
            1e-7,
            -2.5e30,
        ] {
            let mut written = Vec::new();
            RequestId::new(value).write_to(&mut written);
            assert_eq!(
                RequestId::new(value).written_len(),
                written.len(),
                "{value}"
            );
        }
    }

    #[test]
    fn negative_zero_equals_zero() {
        use std::collections::HashSet;
        let set: HashSet<_> = [RequestId::new(0.0)].into_iter().collect();
        assert!(set.contains(&RequestId::new(-0.0)));
        assert!(!RequestId::new(0.0).is_truthy());
        assert!(RequestId::new(-1.0).is_truthy());
    }
}
