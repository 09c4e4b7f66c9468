//! The `keyPairs` check of `connect` (`protocol-spec/authorization.md`).

use std::collections::BTreeMap;

use livequery_protocol::ConnectRequest;

/// The outcome of the key check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyCheck {
    /// No configured key matched: error code 4.
    Rejected,
    /// Accepted; `master` when the configured master key was presented.
    Accepted {
        /// Master client.
        master: bool,
    },
}

/// Checks a `connect` against the configured key pairs: with none configured every
/// connect passes; otherwise at least one presented key must equal the configured key of
/// the same name. A client is master iff `masterKey` is configured and presented.
pub fn check(key_pairs: &BTreeMap<String, String>, connect: &ConnectRequest) -> KeyCheck {
    let presented = |name: &str| {
        connect
            .presented_keys()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
    };
    let matches = |name: &str| match (key_pairs.get(name), presented(name)) {
        (Some(expected), Some(given)) => {
            !given.is_empty() && secrets_equal(expected.as_bytes(), given.as_bytes())
        }
        _ => false,
    };
    let master = matches("masterKey");
    if key_pairs.is_empty() || master || key_pairs.keys().any(|name| matches(name)) {
        KeyCheck::Accepted { master }
    } else {
        KeyCheck::Rejected
    }
}

/// Compares secrets without revealing where they differ through timing.
pub fn secrets_equal(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq as _;
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect(keys: &[(&str, &str)]) -> ConnectRequest {
        let mut c = ConnectRequest {
            application_id: "app".into(),
            ..ConnectRequest::default()
        };
        for (name, value) in keys {
            let value = Some((*value).to_owned());
            match *name {
                "javascriptKey" => c.javascript_key = value,
                "masterKey" => c.master_key = value,
                "clientKey" => c.client_key = value,
                "restAPIKey" => c.rest_api_key = value,
                "windowsKey" => c.windows_key = value,
                _ => unreachable!(),
            }
        }
        c
    }

    #[test]
    fn follows_the_reference_rules() {
        let none = BTreeMap::new();
        assert_eq!(
            check(&none, &connect(&[])),
            KeyCheck::Accepted { master: false }
        );
        assert_eq!(
            check(&none, &connect(&[("masterKey", "x")])),
            KeyCheck::Accepted { master: false }
        );

        let pairs: BTreeMap<String, String> = [("javascriptKey", "jsk"), ("masterKey", "mk")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into();
        assert_eq!(check(&pairs, &connect(&[])), KeyCheck::Rejected);
        assert_eq!(
            check(&pairs, &connect(&[("javascriptKey", "wrong")])),
            KeyCheck::Rejected
        );
        assert_eq!(
            check(&pairs, &connect(&[("clientKey", "jsk")])),
            KeyCheck::Rejected
        );
        assert_eq!(
            check(&pairs, &connect(&[("masterKey", "nope")])),
            KeyCheck::Rejected
        );
        assert_eq!(
            check(&pairs, &connect(&[("javascriptKey", "jsk")])),
            KeyCheck::Accepted { master: false }
        );
        assert_eq!(
            check(
                &pairs,
                &connect(&[("javascriptKey", "jsk"), ("masterKey", "wrong")])
            ),
            KeyCheck::Accepted { master: false }
        );
        assert_eq!(
            check(&pairs, &connect(&[("masterKey", "mk")])),
            KeyCheck::Accepted { master: true }
        );
    }
}
