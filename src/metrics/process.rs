//! The process's own figures for the metrics page: resident memory, open file descriptors,
//! threads, CPU time, start time, under the names Prometheus' client libraries use
//! (`process_*`), so generic dashboards and alerts work on nfqmark too.
//!
//! This module owns reading and parsing `/proc/self/stat`, `/proc/self/fd`,
//! `/proc/self/limits` and `/proc/stat`. Parsing is pure (text in, numbers out) and tested on
//! fixtures; [`read`] does the file I/O, on the metrics thread only, at each scrape. It must
//! never be called from the packet path, and a figure it cannot read is left out of the page
//! (never a made-up zero).

use std::fmt::Write as _;

/// What the page shows about the process; `None` where /proc did not say.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Process {
    pub resident_bytes: Option<u64>,
    pub virtual_bytes: Option<u64>,
    pub threads: Option<u64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
    pub cpu_seconds: Option<f64>,
    pub start_time_seconds: Option<f64>,
}

/// The fields of `/proc/self/stat` nfqmark reports, in the kernel's units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stat {
    /// User and system time, in clock ticks.
    pub utime: u64,
    pub stime: u64,
    pub threads: u64,
    /// Start time after boot, in clock ticks.
    pub start_ticks: u64,
    pub vsize_bytes: u64,
    pub rss_pages: u64,
}

/// Parse `/proc/PID/stat`. The second field, the command name in parentheses, may itself hold
/// spaces and parentheses, so the fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let (_, rest) = text.rsplit_once(')')?;
    // After the name: field 3 (state) is the first.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Option<u64> { f.get(n.checked_sub(3)?)?.parse().ok() };
    Some(Stat {
        utime: field(14)?,
        stime: field(15)?,
        threads: field(20)?,
        start_ticks: field(22)?,
        vsize_bytes: field(23)?,
        rss_pages: field(24)?,
    })
}

/// The soft limit on open files from `/proc/PID/limits` (`None` for "unlimited").
pub fn parse_max_fds(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line
        .strip_prefix("Max open files")?
        .split_whitespace()
        .next()?;
    soft.parse().ok()
}

/// Boot time in seconds since the epoch, from `/proc/stat`'s `btime` line.
pub fn parse_boot_time(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// Put the parsed files together; `page` and `ticks` are the system's page size and clock
/// ticks per second.
pub fn combine(
    stat: Option<Stat>,
    open_fds: Option<u64>,
    max_fds: Option<u64>,
    boot_time: Option<u64>,
    page: u64,
    ticks: u64,
) -> Process {
    let ticks = ticks.max(1) as f64;
    Process {
        resident_bytes: stat.map(|s| s.rss_pages.saturating_mul(page)),
        virtual_bytes: stat.map(|s| s.vsize_bytes),
        threads: stat.map(|s| s.threads),
        open_fds,
        max_fds,
        cpu_seconds: stat.map(|s| (s.utime + s.stime) as f64 / ticks),
        start_time_seconds: match (stat, boot_time) {
            (Some(s), Some(boot)) => Some(boot as f64 + s.start_ticks as f64 / ticks),
            _ => None,
        },
    }
}

/// Read this process's figures from /proc.
pub fn read() -> Process {
    let stat = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|t| parse_stat(&t));
    // The directory listing's own descriptor is among the entries: not counted.
    let open_fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| (d.count() as u64).saturating_sub(1));
    let max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| parse_max_fds(&t));
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|t| parse_boot_time(&t));
    // SAFETY: sysconf reads a configuration value; it has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    // SAFETY: as above.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    combine(
        stat,
        open_fds,
        max_fds,
        boot,
        u64::try_from(page).unwrap_or(4096),
        u64::try_from(ticks).unwrap_or(100),
    )
}

/// The process families in the exposition format; a figure that is `None` is left out.
pub fn render(p: &Process) -> String {
    let mut o = String::with_capacity(1024);
    let mut family = |name: &str, kind: &str, help: &str, value: Option<String>| {
        if let Some(v) = value {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        }
    };
    let int = |v: Option<u64>| v.map(|v| v.to_string());
    let float = |v: Option<f64>| v.map(|v| format!("{v:.3}"));
    family(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        int(p.resident_bytes),
    );
    family(
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes.",
        int(p.virtual_bytes),
    );
    family(
        "process_threads",
        "gauge",
        "Threads of the process.",
        int(p.threads),
    );
    family(
        "process_open_fds",
        "gauge",
        "Open file descriptors.",
        int(p.open_fds),
    );
    family(
        "process_max_fds",
        "gauge",
        "Most file descriptors the process may open (soft limit).",
        int(p.max_fds),
    );
    family(
        "process_cpu_seconds_total",
        "counter",
        "User and system CPU time spent, in seconds.",
        float(p.cpu_seconds),
    );
    family(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since the Unix epoch, in seconds.",
        float(p.start_time_seconds),
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    // A real /proc/self/stat line (kernel 6.18), with a command name that has spaces and a ')'.
    const STAT: &str = "4242 (nfq) mark x) S 1 4242 4242 0 -1 4194560 1024 0 0 0 150 50 0 0 \
                        15 -5 6 0 123456 987654321 2048 18446744073709551615 1 1 0 0 0 0 0 \
                        4096 0 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n";

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis() {
        assert_eq!(
            parse_stat(STAT),
            Some(Stat {
                utime: 150,
                stime: 50,
                threads: 6,
                start_ticks: 123456,
                vsize_bytes: 987654321,
                rss_pages: 2048,
            })
        );
        assert_eq!(parse_stat("4242 (nfqmark S 1"), None);
        assert_eq!(parse_stat("4242 (nfqmark) S 1 2 3"), None);
        assert_eq!(parse_stat(""), None);
    }

    #[test]
    fn limits_and_boot_time_parse_and_unlimited_is_none() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             127674               127674               processes \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(parse_max_fds(limits), Some(1024));
        assert_eq!(
            parse_max_fds(
                "Max open files            unlimited            unlimited            files\n"
            ),
            None
        );
        assert_eq!(
            parse_boot_time("cpu  1 2 3\nbtime 1763800000\nprocesses 99\n"),
            Some(1_763_800_000)
        );
        assert_eq!(parse_boot_time("cpu 1 2 3\n"), None);
    }

    #[test]
    fn combined_figures_are_in_seconds_and_bytes_and_missing_ones_are_left_out() {
        let p = combine(
            parse_stat(STAT),
            Some(9),
            Some(1024),
            Some(1_763_800_000),
            4096,
            100,
        );
        assert_eq!(p.resident_bytes, Some(2048 * 4096));
        assert_eq!(p.cpu_seconds, Some(2.0));
        assert_eq!(p.start_time_seconds, Some(1_763_800_000.0 + 1234.56));
        let text = render(&p);
        assert!(text.contains("# TYPE process_threads gauge\nprocess_threads 6\n"));
        assert!(text.contains("process_resident_memory_bytes 8388608\n"));
        assert!(text.contains("process_cpu_seconds_total 2.000\n"));
        assert!(text.contains("process_start_time_seconds 1763801234.560\n"));
        let none = render(&combine(None, Some(3), None, None, 4096, 100));
        assert_eq!(
            none,
            "# HELP process_open_fds Open file descriptors.\n# TYPE process_open_fds gauge\n\
             process_open_fds 3\n"
        );
    }

    #[test]
    fn this_process_reads_itself() {
        let p = read();
        assert!(p.threads.is_some_and(|t| t >= 1), "{p:?}");
        assert!(p.resident_bytes.is_some_and(|b| b > 0), "{p:?}");
        assert!(p.open_fds.is_some_and(|n| n >= 3), "{p:?}");
    }
}
