//! CPU time from /proc, for the benchmarks that run processes (`e2e`, `raw`): shared by
//! `#[path]`. Times are in clock ticks (`sysconf(_SC_CLK_TCK)`, 100 per second on Linux).
// Each benchmark uses only some of these.
#![allow(dead_code)]

/// Clock ticks per second.
pub fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// utime + stime of a /proc/.../stat file.
pub fn stat_ticks(path: &str) -> Option<u64> {
    stat_user_system(path).map(|(user, system)| user + system)
}

/// (utime, stime) of a /proc/.../stat file: time in the process's own code, and time in the
/// kernel on its behalf (system calls, and whatever the kernel does inside them: a verdict's
/// reinjection carries the packet on through routing, NAT and the next hook).
pub fn stat_user_system(path: &str) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    // The command name is in parentheses and may hold spaces: split after the last ')'.
    let rest = text.get(text.rfind(')')? + 1..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `rest` starts at field 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime, stime))
}

/// A process's or thread's name (`/proc/.../comm`), empty when gone.
pub fn comm(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The whole machine's (busy, total) ticks, summed over all CPUs.
pub fn machine_ticks() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    // idle + iowait
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}
