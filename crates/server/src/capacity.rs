//! How many connections each port accepts: the WebSocket cap and the connection pools of
//! the client and admin ports, sized within the process's open-file limit.

/// Extra TCP connections allowed on the client port beyond its WebSockets, for HTTP clients.
pub(crate) const HTTP_MARGIN: usize = 256;
/// Connections of the admin port.
pub(crate) const ADMIN_CONNECTIONS: usize = 64;
/// File descriptors kept for the server itself: the source's connections (Redis with its
/// Sentinels, or MongoDB's pool), the requests to parse-server (at most
/// [`crate::parse_rest::MAX_REQUESTS_IN_FLIGHT`] lookups and
/// [`crate::hooks::MAX_CALLS_IN_FLIGHT`] hook calls at once), the resume token file, the
/// runtime, the listeners.
pub(crate) const INTERNAL_FDS: usize = 128;

/// How many connections each port accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// TCP connections on the client port.
    pub client_connections: usize,
    /// WebSockets (a part of the client connections).
    pub websockets: usize,
    /// TCP connections on the admin port (0 without one).
    pub admin_connections: usize,
}

impl Capacity {
    /// Sizes the pools: `max_connections` WebSockets plus an HTTP margin, within
    /// `open_files` (the process's limit, if any) minus what the admin port and the server
    /// itself need.
    pub fn new(max_connections: usize, admin_port: bool, open_files: Option<usize>) -> Self {
        let admin_connections = if admin_port { ADMIN_CONNECTIONS } else { 0 };
        let wanted = max_connections.saturating_add(HTTP_MARGIN);
        let available = open_files.map_or(usize::MAX, |limit| {
            limit.saturating_sub(INTERNAL_FDS + admin_connections)
        });
        let client_connections = wanted.min(available).max(1);
        let margin = HTTP_MARGIN.min(client_connections / 2);
        Self {
            client_connections,
            websockets: max_connections.min(client_connections - margin).max(1),
            admin_connections,
        }
    }
}

/// The process's soft limit on open files, when it has one (Linux: `/proc/self/limits`).
pub fn open_files_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_fit_the_open_file_limit() {
        // Unlimited: what is configured.
        let capacity = Capacity::new(20_000, false, None);
        assert_eq!(
            capacity,
            Capacity {
                client_connections: 20_256,
                websockets: 20_000,
                admin_connections: 0
            }
        );
        // 20,000 files: the reserve and the admin pool stay free, the HTTP margin is kept.
        let capacity = Capacity::new(20_000, true, Some(20_000));
        assert_eq!(capacity.admin_connections, ADMIN_CONNECTIONS);
        assert_eq!(
            capacity.client_connections,
            20_000 - INTERNAL_FDS - ADMIN_CONNECTIONS
        );
        assert_eq!(
            capacity.websockets,
            capacity.client_connections - HTTP_MARGIN
        );
        // A small limit still serves something.
        let capacity = Capacity::new(20_000, false, Some(100));
        assert!(capacity.client_connections >= 1 && capacity.websockets >= 1);
        assert!(capacity.websockets <= capacity.client_connections);
    }

    #[test]
    fn the_open_file_limit_is_read() {
        if std::path::Path::new("/proc/self/limits").exists() {
            assert!(open_files_limit().is_some_and(|n| n > 0));
        }
    }
}
