//! Memory and CPU figures of a process, read from `/proc`.

use std::fs;

/// Kernel clock ticks per second (`CLK_TCK`), 100 on every Linux this runs on.
const CLK_TCK: f64 = 100.0;

/// A process to sample: `self`, the calling thread, or a pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Proc {
    Me,
    /// The calling thread alone (`/proc/thread-self`).
    ThisThread,
    Pid(u32),
}

impl Proc {
    fn path(self, file: &str) -> String {
        match self {
            Self::Me => format!("/proc/self/{file}"),
            Self::ThisThread => format!("/proc/thread-self/{file}"),
            Self::Pid(pid) => format!("/proc/{pid}/{file}"),
        }
    }

    /// A `kB` line of `/proc/PID/status` (`VmRSS`, `VmHWM`).
    pub(crate) fn status_kb(self, key: &str) -> Option<u64> {
        kb_field(&fs::read_to_string(self.path("status")).ok()?, key)
    }

    pub(crate) fn rss_kb(self) -> Option<u64> {
        self.status_kb("VmRSS")
    }

    /// Proportional set size from `/proc/PID/smaps_rollup`, when readable.
    pub(crate) fn pss_kb(self) -> Option<u64> {
        kb_field(&fs::read_to_string(self.path("smaps_rollup")).ok()?, "Pss")
    }

    /// User + system CPU time so far, in seconds.
    pub(crate) fn cpu_seconds(self) -> Option<f64> {
        let ticks = cpu_ticks(&fs::read_to_string(self.path("stat")).ok()?)?;
        Some(ticks as f64 / CLK_TCK)
    }

    /// A `/proc/PID/limits` soft limit (e.g. `Max open files`).
    pub(crate) fn soft_limit(self, name: &str) -> Option<u64> {
        let text = fs::read_to_string(self.path("limits")).ok()?;
        let line = text.lines().find(|l| l.starts_with(name))?;
        line[name.len()..].split_whitespace().next()?.parse().ok()
    }
}

/// `Key:   1234 kB` → 1234.
fn kb_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// utime + stime of a `/proc/PID/stat` line. The command name (field 2) is in parentheses
/// and may hold spaces, so fields are counted after its closing parenthesis.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    // After ")" come field 3 (state) onwards; utime and stime are fields 14 and 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let status = "Name:\tlivequery\nVmHWM:\t   9000 kB\nVmRSS:\t   8123 kB\n";
        assert_eq!(kb_field(status, "VmRSS"), Some(8123));
        assert_eq!(kb_field(status, "VmHWM"), Some(9000));
        assert_eq!(kb_field(status, "VmSwap"), None);
        let rollup = "55d0-7ffd [rollup]\nRss:   100 kB\nPss:    80 kB\nPss_Anon:  70 kB\n";
        assert_eq!(kb_field(rollup, "Pss"), Some(80));
        let stat = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 37 0 0 20 0 3 0";
        assert_eq!(cpu_ticks(stat), Some(287));
    }

    #[test]
    fn reads_self() {
        assert!(Proc::Me.rss_kb().unwrap() > 0);
        assert!(Proc::Me.cpu_seconds().is_some());
        assert!(Proc::Me.soft_limit("Max open files").unwrap() > 0);
    }
}
