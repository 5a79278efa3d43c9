//! Network namespaces as test hosts: create, run commands in, enter from a thread, destroy.
//!
//! This module owns the lifetime of a namespace: [`Netns`] deletes it (and kills whatever still
//! runs in it) when dropped, so a failing test or an interrupted demo leaves nothing behind.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A unique prefix for this process's namespaces: tests run in parallel, in one process and in
/// several, so names carry the process id and a counter.
pub fn unique_prefix(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("nfqm-{tag}-{}-{n}", std::process::id())
}

/// Run a command to completion; a non-zero exit is an error carrying its stderr.
pub fn run<I, S>(program: &str, args: I) -> io::Result<Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null());
    let line = format!("{cmd:?}");
    let out = cmd
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("{line}: {e}")))?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{line} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out)
}

/// Enter the namespace named `name` (made by `ip netns add`) from the calling thread: sockets
/// it opens afterwards live there. Use only on threads of your own; the thread stays in the
/// namespace until it ends.
pub fn enter(name: &str) -> io::Result<()> {
    let file = File::open(format!("/run/netns/{name}"))?;
    // SAFETY: setns takes an open namespace fd, which `file` keeps open for the call.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Start `f` on a thread of its own (named `thread`) that enters namespace `name` first; the
/// caller's thread stays where it is. [`join`] takes its result.
pub fn spawn_in<T: Send + 'static>(
    name: &str,
    thread: &str,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<std::thread::JoinHandle<io::Result<T>>> {
    let ns = name.to_string();
    std::thread::Builder::new()
        .name(thread.to_string())
        .spawn(move || {
            enter(&ns)?;
            f()
        })
}

/// The result of a thread started by [`spawn_in`]; a panic comes back as an error naming the
/// thread.
pub fn join<T>(handle: std::thread::JoinHandle<io::Result<T>>) -> io::Result<T> {
    let thread = handle.thread().name().unwrap_or("namespace").to_string();
    handle
        .join()
        .map_err(|_| io::Error::other(format!("{thread} thread panicked")))?
}

/// Run `f` on a thread inside namespace `name` ([`spawn_in`]) and wait for its result.
pub fn on_thread<T: Send + 'static>(
    name: &str,
    thread: &str,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    join(spawn_in(name, thread, f)?)
}

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Create `name` with its loopback up.
    pub fn new(name: &str) -> io::Result<Netns> {
        run("ip", ["netns", "add", name])?;
        let ns = Netns {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        // No duplicate address detection on the links: the lab's addresses are unique by
        // construction, and a tentative link-local address keeps the router from soliciting
        // neighbours for forwarded IPv6 packets for a second or two after the links come up.
        for key in ["all", "default"] {
            ns.sysctl(&format!("net.ipv6.conf.{key}.accept_dad"), "0")?;
        }
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Run a command inside the namespace to completion.
    pub fn exec(&self, program: &str, args: &[&str]) -> io::Result<Output> {
        let mut all = vec!["netns", "exec", self.name.as_str(), program];
        all.extend_from_slice(args);
        run("ip", all)
    }

    /// `ip -n NAME ...`
    pub fn ip(&self, args: &[&str]) -> io::Result<Output> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", all)
    }

    /// Each rule of `chain` in `table` as `TOOL -L` lists it with exact counters (`-v -x -n`):
    /// its packet count and its line (target, interfaces, matches). How the lab and the benches
    /// read their counting rules.
    pub fn rule_packets(
        &self,
        tool: &str,
        table: &str,
        chain: &str,
    ) -> io::Result<Vec<(u64, String)>> {
        let out = self.exec(tool, &["-w", "-t", table, "-L", chain, "-v", "-x", "-n"])?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| {
                let packets = line.split_whitespace().next()?.parse().ok()?;
                Some((packets, line.to_string()))
            })
            .collect())
    }

    /// Whether some process has bound NFQUEUE `queue` in this namespace (its line in
    /// `/proc/net/netfilter/nfnetlink_queue`).
    pub fn queue_bound(&self, queue: u16) -> bool {
        let queue = queue.to_string();
        self.exec("cat", &["/proc/net/netfilter/nfnetlink_queue"])
            .map(|out| {
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .any(|l| l.split_whitespace().next() == Some(queue.as_str()))
            })
            .unwrap_or(false)
    }

    /// Set a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> io::Result<()> {
        self.exec("sysctl", &["-q", "-w", &format!("{key}={value}")])
            .map(drop)
    }

    /// Start a long-running process inside the namespace.
    pub fn spawn(&self, program: &str, args: &[&str]) -> io::Result<Child> {
        self.command(program)
            .args(args)
            .stdin(Stdio::null())
            .spawn()
    }

    /// Enter the namespace from the calling thread: sockets it opens afterwards live there.
    /// Use only on threads of your own; the thread stays in the namespace until it ends.
    pub fn enter(&self) -> io::Result<()> {
        enter(&self.name)
    }

    /// Interface index of `iface` inside the namespace.
    pub fn ifindex(&self, iface: &str) -> io::Result<u32> {
        let out = self.exec("cat", &[&format!("/sys/class/net/{iface}/ifindex")])?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|_| io::Error::other(format!("no ifindex for {iface} in {}", self.name)))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Kill what still runs inside, then delete. Errors are ignored: this is cleanup.
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .stderr(Stdio::null())
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    // SAFETY: kill(2) with a pid read from the kernel; no memory is involved.
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                    }
                }
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// A child process killed (and reaped) on drop.
#[derive(Debug)]
pub struct Guarded(pub Child);

impl Guarded {
    /// Ask the process to stop (SIGTERM) and wait up to `grace` for it; the drop that follows
    /// kills it if it is still there.
    pub fn terminate(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        loop {
            if let Ok(Some(status)) = self.0.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// True when running as root (the lab needs it: namespaces, iptables, queues).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
