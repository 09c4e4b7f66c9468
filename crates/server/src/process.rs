//! The process's own figures, in the names every Prometheus client library exports
//! (`process_resident_memory_bytes`, `process_open_fds`, `process_max_fds`,
//! `process_start_time_seconds`), read from `/proc/self` on Linux at each scrape; elsewhere
//! the families are left out. And raising the open-files limit at start.

use std::fmt::Write as _;

/// The kernel's `USER_HZ`: the unit of the times in `/proc/<pid>/stat`, fixed at 100 by
/// Linux's user-space ABI whatever the kernel's internal tick rate.
const USER_HZ: f64 = 100.0;

/// The process figures a scrape reports.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessStats {
    /// Resident set size, in bytes.
    pub resident_memory_bytes: Option<u64>,
    /// Open file descriptors.
    pub open_fds: Option<u64>,
    /// The soft limit on open file descriptors.
    pub max_fds: Option<u64>,
    /// Start time, in seconds since the Unix epoch.
    pub start_time_seconds: Option<f64>,
}

impl ProcessStats {
    /// Reads this process's figures (each `None` where `/proc` does not tell).
    pub fn read() -> Self {
        Self {
            resident_memory_bytes: std::fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|status| resident_bytes(&status)),
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                // The directory handle being read is itself one of the entries.
                .map(|entries| (entries.count() as u64).saturating_sub(1)),
            max_fds: crate::capacity::open_files_limit().map(|n| n as u64),
            start_time_seconds: start_time(),
        }
    }
}

/// `VmRSS` of a `/proc/<pid>/status` text, in bytes.
fn resident_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The process's start time: boot time (`btime` of `/proc/stat`) plus the start offset
/// (field 22 of `/proc/self/stat`, in `USER_HZ` ticks).
fn start_time() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let boot = std::fs::read_to_string("/proc/stat").ok()?;
    start_time_of(&stat, &boot)
}

fn start_time_of(stat: &str, boot: &str) -> Option<f64> {
    // The command name (field 2) is parenthesized and may hold spaces: count from its end.
    let after_name = &stat[stat.rfind(')')? + 1..];
    // Fields from 3 on; `starttime` is field 22.
    let ticks: u64 = after_name.split_whitespace().nth(22 - 3)?.parse().ok()?;
    let btime: u64 = boot
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Some(btime as f64 + ticks as f64 / USER_HZ)
}

/// Appends the `process_*` families (those known) to a Prometheus exposition.
pub(crate) fn render(out: &mut String) {
    let stats = ProcessStats::read();
    let mut gauge = |name: &str, help: &str, value: Option<String>| {
        if let Some(value) = value {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
    };
    gauge(
        "process_resident_memory_bytes",
        "Resident memory size in bytes.",
        stats.resident_memory_bytes.map(|v| v.to_string()),
    );
    gauge(
        "process_open_fds",
        "Number of open file descriptors.",
        stats.open_fds.map(|v| v.to_string()),
    );
    gauge(
        "process_max_fds",
        "Maximum number of open file descriptors (the soft limit).",
        stats.max_fds.map(|v| v.to_string()),
    );
    gauge(
        "process_start_time_seconds",
        "Start time of the process since the Unix epoch in seconds.",
        stats.start_time_seconds.map(|v| format!("{v:.2}")),
    );
}

/// The open-files limit before and after [`raise_open_files_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFilesLimit {
    /// The soft limit found at start.
    pub before: u64,
    /// The soft limit now (the hard limit, when raising it succeeded).
    pub after: u64,
    /// The hard limit.
    pub hard: u64,
}

/// Raises the soft limit on open files to the hard limit: containers and service managers
/// often start processes with a soft limit of 1024, far below what a WebSocket server needs,
/// while allowing far more. `None` where the platform has no such limit or it cannot be read.
pub fn raise_open_files_limit() -> Option<std::io::Result<OpenFilesLimit>> {
    if !rlimit::Resource::NOFILE.is_supported() {
        return None;
    }
    let (soft, hard) = match rlimit::getrlimit(rlimit::Resource::NOFILE) {
        Ok(limits) => limits,
        Err(err) => return Some(Err(err)),
    };
    if soft >= hard {
        return Some(Ok(OpenFilesLimit {
            before: soft,
            after: soft,
            hard,
        }));
    }
    Some(
        rlimit::setrlimit(rlimit::Resource::NOFILE, hard, hard).map(|()| OpenFilesLimit {
            before: soft,
            after: hard,
            hard,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_and_stat_are_parsed() {
        let status = "Name:\tlivequery\nVmPeak:\t  9000 kB\nVmRSS:\t    1234 kB\nThreads:\t4\n";
        assert_eq!(resident_bytes(status), Some(1234 * 1024));
        assert_eq!(resident_bytes("Name:\tx\n"), None);
        // A command name with spaces and parentheses; starttime (field 22) = 250 ticks.
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 4 0 250 1000 50";
        let boot = "cpu  1 2 3\nbtime 1700000000\nprocesses 9\n";
        assert_eq!(start_time_of(stat, boot), Some(1_700_000_002.5));
        assert_eq!(start_time_of("garbage", boot), None);
    }

    #[test]
    fn this_process_is_measured_on_linux() {
        if !std::path::Path::new("/proc/self/stat").exists() {
            return;
        }
        let stats = ProcessStats::read();
        assert!(stats.resident_memory_bytes.is_some_and(|b| b > 1024 * 1024));
        assert!(stats.open_fds.is_some_and(|n| n >= 3));
        assert!(
            stats
                .max_fds
                .is_some_and(|n| n >= stats.open_fds.unwrap_or(0))
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("the clock is past 1970")
            .as_secs_f64();
        let started = stats.start_time_seconds.expect("start time");
        assert!(
            started <= now + 1.0 && started > now - 86_400.0,
            "{started} vs {now}"
        );
    }
}
