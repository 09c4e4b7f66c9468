//! The loopback-only rule: the generator refuses every target outside 127.0.0.0/8.
//!
//! A load generator pointed at the wrong address is a denial-of-service tool, so the check
//! is made on the parsed addresses, before any socket is opened, for both the WebSocket
//! server and Redis.

use std::net::{Ipv4Addr, SocketAddrV4};

use anyhow::{Context, bail};
use tokio_tungstenite::tungstenite::http::Uri;

/// `host` as a loopback IPv4 address: `localhost` or a literal `127.x.y.z`; `None` otherwise.
pub(crate) fn loopback_v4(host: &str) -> Option<Ipv4Addr> {
    if host.eq_ignore_ascii_case("localhost") {
        return Some(Ipv4Addr::LOCALHOST);
    }
    host.parse::<Ipv4Addr>()
        .ok()
        .filter(|ip| ip.octets()[0] == 127)
}

/// The TCP address of a `ws://` URL whose host is on 127.0.0.0/8.
pub(crate) fn websocket_target(url: &str) -> anyhow::Result<SocketAddrV4> {
    let uri: Uri = url
        .parse()
        .with_context(|| format!("--url {url:?} is not a URL"))?;
    match uri.scheme_str() {
        Some("ws") => {}
        Some(other) => bail!("--url must be ws:// (got {other}://): TLS is not supported"),
        None => bail!("--url {url:?} has no scheme: expected ws://127.0.0.1:PORT/"),
    }
    let host = uri.host().context("--url has no host")?;
    let Some(ip) = loopback_v4(host) else {
        bail!("--url host {host:?} is not on 127.0.0.0/8 (nor localhost): refusing to target it");
    };
    Ok(SocketAddrV4::new(ip, uri.port_u16().unwrap_or(80)))
}

/// Checks that a Redis URL names a TCP host on 127.0.0.0/8.
pub(crate) fn check_redis(url: &str) -> anyhow::Result<()> {
    let client =
        redis::Client::open(url).with_context(|| format!("--redis {url:?} is not a Redis URL"))?;
    match client.get_connection_info().addr() {
        redis::ConnectionAddr::Tcp(host, _) => {
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            if loopback_v4(bare).is_none() {
                bail!(
                    "--redis host {host:?} is not on 127.0.0.0/8 (nor localhost): refusing to target it"
                );
            }
            Ok(())
        }
        _ => bail!("--redis must be a plain redis:// URL on 127.0.0.0/8"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_accepted() {
        assert_eq!(loopback_v4("127.0.0.1"), Some(Ipv4Addr::LOCALHOST));
        assert_eq!(
            loopback_v4("127.255.3.9"),
            Some(Ipv4Addr::new(127, 255, 3, 9))
        );
        assert_eq!(loopback_v4("LocalHost"), Some(Ipv4Addr::LOCALHOST));
    }

    #[test]
    fn other_hosts_are_refused() {
        for host in [
            "10.0.0.1",
            "192.168.1.1",
            "128.0.0.1",
            "8.8.8.8",
            "::1",
            "example.com",
            "127.0.0.1.example.com",
            "",
        ] {
            assert_eq!(loopback_v4(host), None, "{host}");
        }
    }

    #[test]
    fn websocket_urls() {
        assert_eq!(
            websocket_target("ws://127.0.0.1:1399/").unwrap(),
            "127.0.0.1:1399".parse().unwrap()
        );
        assert_eq!(
            websocket_target("ws://localhost:1337/parse").unwrap(),
            "127.0.0.1:1337".parse().unwrap()
        );
        assert_eq!(
            websocket_target("ws://127.1.2.3/").unwrap(),
            "127.1.2.3:80".parse().unwrap()
        );
        assert!(websocket_target("ws://10.1.2.3:1337/").is_err());
        assert!(websocket_target("ws://example.com:1337/").is_err());
        assert!(websocket_target("wss://127.0.0.1:1337/").is_err());
        assert!(websocket_target("http://127.0.0.1:1337/").is_err());
        assert!(websocket_target("127.0.0.1:1337").is_err());
    }

    #[test]
    fn redis_urls() {
        assert!(check_redis("redis://127.0.0.1:6390").is_ok());
        assert!(check_redis("redis://localhost:6379/0").is_ok());
        assert!(check_redis("redis://127.9.9.9").is_ok());
        assert!(check_redis("redis://192.168.0.10:6379").is_err());
        assert!(check_redis("redis://redis:6379").is_err());
        assert!(check_redis("not a url").is_err());
    }
}
