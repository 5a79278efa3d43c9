//! `nfqmark run` and `nfqmark check`: load rules, bind the queues, start one worker per queue,
//! and handle signals.
//!
//! This module owns the process's life: start-up errors are reported before any packet is
//! served, SIGHUP reloads the rules (a file with errors is rejected and the old rules stay in
//! force), SIGUSR1 logs the counters, SIGTERM and SIGINT stop.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread;

use crossbeam_channel::{Receiver, bounded};

use crate::cli::{CheckArgs, RunArgs, SetupArgs};
use crate::engine::EngineConfig;
use crate::flows::LearnConfig;
use crate::metrics::QueueSnapshot;
use crate::pairing::PairingConfig;
use crate::queue::{OpenError, Queue, QueueOptions};
use crate::rules::{self, Diagnostic, RuleSet};
use crate::worker::{self, Shared};

/// Why `run` could not start.
#[derive(Debug)]
pub enum Error {
    Open(u16, OpenError),
    Rules(Vec<Diagnostic>),
    Metrics(std::io::Error),
    Signals(std::io::Error),
    Spawn(std::io::Error),
    Config(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // A busy queue's message names the queue already.
            Error::Open(_, e @ OpenError::Busy(_)) => write!(f, "{e}"),
            Error::Open(n, e) => write!(f, "queue {n}: {e}"),
            Error::Rules(diags) => {
                for d in diags {
                    writeln!(f, "{d}")?;
                }
                write!(
                    f,
                    "the rules file has {} error(s); nothing was started",
                    diags.len()
                )
            }
            Error::Metrics(e) => write!(f, "cannot serve metrics: {e} (is the port in use?)"),
            Error::Signals(e) => write!(f, "cannot set up signal handling: {e}"),
            Error::Spawn(e) => write!(f, "cannot start a worker thread: {e}"),
            Error::Config(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for Error {}

/// Signals the daemon acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Stop,
    Reload,
    Report,
}

/// Block the signals we handle in every thread, and deliver them through a channel from one
/// thread that waits for them: no async-signal-safety puzzles, and workers are never interrupted.
/// Call before starting other threads (they inherit the mask).
pub fn signal_channel() -> std::io::Result<Receiver<Signal>> {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it before use, and
    // pthread_sigmask only reads it.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR1] {
            libc::sigaddset(&mut set, sig);
        }
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        set
    };
    let (tx, rx) = bounded(16);
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            loop {
                let mut sig: libc::c_int = 0;
                // SAFETY: `set` is initialised above and outlives the call; `sig` is a valid
                // out-pointer.
                let rc = unsafe { libc::sigwait(&set, &mut sig) };
                if rc != 0 {
                    continue;
                }
                let event = match sig {
                    libc::SIGHUP => Signal::Reload,
                    libc::SIGUSR1 => Signal::Report,
                    _ => Signal::Stop,
                };
                if tx.send(event).is_err() {
                    return;
                }
            }
        })?;
    Ok(rx)
}

/// Interface name -> index on this machine (0 = no such interface).
pub fn if_index(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (index != 0).then_some(index)
}

/// Load a rules file against this machine's interfaces.
pub fn load_rules(path: &Path) -> Result<RuleSet, Vec<Diagnostic>> {
    rules::load(path, &if_index)
}

/// `nfqmark check FILE`: 0 and a summary when good; 1 and every error when not.
pub fn check(args: &CheckArgs) -> i32 {
    let any = |_: &str| Some(1u32);
    let result = if args.any_interface {
        rules::load(&args.file, &any)
    } else {
        load_rules(&args.file)
    };
    match result {
        Ok(rules) => {
            println!("{}: ok: {}", args.file.display(), rules.summary());
            0
        }
        Err(diags) => {
            for d in &diags {
                eprintln!("{d}");
            }
            eprintln!("{}: {} error(s)", args.file.display(), diags.len());
            1
        }
    }
}

/// `nfqmark setup`: print the firewall rules for a rules file. Exit status 1 when the rules
/// file has errors, 0 otherwise.
pub fn setup(args: &SetupArgs) -> i32 {
    use crate::setup::{self as s, Family, Plan};
    let (rules, source) = match &args.rules {
        Some(path) => match rules::load(path, &|_: &str| Some(1u32)) {
            Ok(r) => (r, path.display().to_string()),
            Err(diags) => {
                for d in &diags {
                    eprintln!("{d}");
                }
                return 1;
            }
        },
        None => (
            RuleSet::empty(),
            "no rules file (DNS pairing only)".to_string(),
        ),
    };
    let (v4, v6) = s::flow_clients(&rules);
    let family = if args.ipv6 { Family::V6 } else { Family::V4 };
    let zones = !args.no_zones
        && match s::probe_ct_zone_mark(family) {
            Ok(true) => true,
            Ok(false) => {
                eprintln!(
                    "nfqmark setup: this kernel has no conntrack zones from the mark (CT \
                     --zone-orig mark): behind NAT, a resolver that reuses its query port for \
                     differently marked clients keeps the first client's mark on that port \
                     (counted as conn_conflicts)"
                );
                false
            }
            Err(e) => {
                eprintln!(
                    "nfqmark setup: could not probe for conntrack zones ({e}); printing them \
                     (--no-zones leaves them out)"
                );
                true
            }
        };
    let plan = Plan {
        queues: args.queue,
        mask: args.mark_mask,
        dns_ports: args.dns_ports.clone(),
        flow_clients_v4: v4,
        flow_clients_v6: v6,
        zones,
        source,
    };
    let nft = if args.nft {
        match s::probe_nft_queue() {
            Ok(true) => {}
            Ok(false) => eprintln!(
                "nfqmark setup: this kernel rejects the nft 'queue' expression (no nft_queue \
                 module): these rules will not load here; use `nfqmark setup --iptables`"
            ),
            Err(e) => eprintln!("nfqmark setup: could not probe nft ({e})"),
        }
        true
    } else if args.iptables {
        false
    } else {
        match s::probe_nft_queue() {
            Ok(true) => true,
            Ok(false) => {
                eprintln!(
                    "nfqmark setup: this kernel rejects the nft 'queue' expression; printing \
                     the iptables form (pipe it into iptables-restore --noflush)"
                );
                false
            }
            Err(_) => false,
        }
    };
    if nft {
        print!("{}", s::nft(&plan));
    } else {
        print!("{}", s::iptables(&plan, family));
    }
    0
}

fn engine_config(args: &RunArgs) -> EngineConfig {
    EngineConfig {
        pairing: PairingConfig {
            window: args.window,
            client_capacity: args.capacity,
            upstream_capacity: args.capacity,
            mask: args.mark_mask,
            // One host may hold a quarter of the table: a flood from one LAN host cannot evict
            // every other client's waiting queries.
            per_client: (args.capacity / 4).max(1),
            ..PairingConfig::default()
        },
        dns_ports: args.dns_ports.clone(),
    }
}

/// Run until SIGTERM/SIGINT.
pub fn run(args: &RunArgs) -> Result<(), Error> {
    let signals = signal_channel().map_err(Error::Signals)?;
    let rules = match &args.rules {
        Some(path) => {
            let rules = load_rules(path).map_err(Error::Rules)?;
            log::info!("rules {}: {}", path.display(), rules.summary());
            rules
        }
        None => RuleSet::empty(),
    };
    let nums = args.queue_numbers();
    if args.flow_ttl_min > args.flow_ttl_max {
        return Err(Error::Config(format!(
            "--flow-ttl-min ({:?}) is above --flow-ttl-max ({:?}): lower the first or raise the second",
            args.flow_ttl_min, args.flow_ttl_max
        )));
    }
    let learn = LearnConfig {
        ttl_floor: args.flow_ttl_min,
        ttl_ceiling: args.flow_ttl_max,
        capacity: args.flow_capacity,
        // One client may hold an eighth of the table.
        per_client: (args.flow_capacity / 8).max(1),
    };
    let shared = Arc::new(Shared::new(engine_config(args), learn, rules, &nums));
    // Bind every queue before serving any, so a bad queue fails the start, not the night.
    let mut queues = Vec::new();
    for &num in &nums {
        let opts = QueueOptions {
            num,
            copy_range: args.copy_range,
            max_len: args.queue_maxlen,
            fail_open: !args.fail_closed,
            rcvbuf: (args.rcvbuf > 0).then_some(args.rcvbuf),
        };
        queues.push(Queue::open(&opts).map_err(|e| Error::Open(num, e))?);
    }
    let metrics = match args.metrics {
        Some(addr) => {
            let handle =
                crate::metrics::serve(addr, Arc::clone(&shared)).map_err(Error::Metrics)?;
            log::info!("metrics on http://{addr}/metrics");
            Some(handle)
        }
        None => None,
    };
    let mut workers = Vec::new();
    for (index, queue) in queues.into_iter().enumerate() {
        let shared = Arc::clone(&shared);
        let name = format!("queue-{}", queue.num());
        let handle = thread::Builder::new()
            .name(name)
            .spawn(move || worker::run(queue, shared, index))
            .map_err(Error::Spawn)?;
        workers.push(handle);
    }
    let listed: Vec<String> = nums.iter().map(u16::to_string).collect();
    log::info!(
        "nfqmark {} serving queue(s) {} (mark mask {:#x}, window {:?})",
        env!("CARGO_PKG_VERSION"),
        listed.join(","),
        args.mark_mask,
        args.window
    );
    for signal in signals.iter() {
        match signal {
            Signal::Stop => break,
            Signal::Reload => reload(args, &shared),
            Signal::Report => log::info!("{}", report(&shared)),
        }
    }
    // Workers notice within their poll interval, stop the kernel queueing, give what is queued
    // its verdict and unbind.
    shared.stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    if let Some(m) = metrics {
        let _ = m.join();
    }
    log::info!("stopping: {}", report(&shared));
    Ok(())
}

/// SIGHUP: load the rules file again; keep the old rules if the new file has errors.
fn reload(args: &RunArgs, shared: &Shared) {
    let Some(path) = &args.rules else {
        log::info!("SIGHUP: no rules file to reload (start with --rules FILE)");
        return;
    };
    match load_rules(path) {
        Ok(rules) => {
            log::info!(
                "SIGHUP: rules {} reloaded: {}",
                path.display(),
                rules.summary()
            );
            shared.replace_rules(rules);
        }
        Err(diags) => {
            shared.reloads_failed.inc();
            for d in &diags {
                log::error!("{d}");
            }
            log::error!(
                "SIGHUP: {} has {} error(s); the previous rules stay in force",
                path.display(),
                diags.len()
            );
        }
    }
}

/// One line with every counter, for SIGUSR1 and the exit log.
pub fn report(shared: &Shared) -> String {
    // One read of every counter: the totals are summed from the same snapshot.
    let s = shared.snapshot();
    let t = QueueSnapshot::sum(&s.queues);
    let p = s.pairing;
    format!(
        "packets={} marked={} accepted={} dropped={} repeated={} parse_errors={} dns={} dns_errors={} \
         not_dns={} bad_checksums={} conn_conflicts={} client_queries={} over_quota={} paired={} \
         ambiguous={} unpaired={} upstream_answers={} client_answers={} tcp_intents={} \
         tcp_opened={} tcp_ambiguous={} tcp_unpaired={} expired={} evicted={} waiting_clients={} \
         waiting_upstream={} flows_learned={} flows_marked={} enobufs={} verdict_errors={} \
         rules={} reloads={} reloads_rejected={}",
        t.packets,
        t.marked,
        t.accepted,
        t.dropped,
        t.repeated,
        t.parse_errors,
        t.dns,
        t.dns_errors,
        t.not_dns,
        t.bad_checksums,
        t.conn_conflicts,
        p.client_queries,
        p.over_quota,
        p.paired,
        p.ambiguous,
        p.unpaired,
        p.upstream_answers,
        p.client_answers,
        p.tcp_intents,
        p.tcp_opened,
        p.tcp_ambiguous,
        p.tcp_unpaired,
        p.expired,
        p.evicted,
        s.waiting_clients,
        s.waiting_upstream,
        s.learned.learned,
        s.learned.flows_marked,
        t.enobufs,
        t.verdict_errors,
        s.rules_loaded,
        s.reloads_ok,
        s.reloads_failed,
    )
}
