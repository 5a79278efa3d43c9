//! `nfqmark run`: bind the queues, start one worker per queue, and handle signals.
//!
//! This module owns the process's life: start-up errors are reported before any packet is
//! served, SIGHUP reloads rules, SIGUSR1 logs the counters, SIGTERM and SIGINT stop.

use std::fmt;
use std::sync::Arc;
use std::thread;

use crossbeam_channel::{Receiver, bounded};

use crate::cli::RunArgs;
use crate::engine::EngineConfig;
use crate::pairing::PairingConfig;
use crate::queue::{OpenError, Queue, QueueOptions};
use crate::rules::RuleSet;
use crate::worker::{self, Shared};

/// Why `run` could not start or had to stop.
#[derive(Debug)]
pub enum Error {
    Open(u16, OpenError),
    Signals(std::io::Error),
    Spawn(std::io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Open(n, e) => write!(f, "queue {n}: {e}"),
            Error::Signals(e) => write!(f, "cannot set up signal handling: {e}"),
            Error::Spawn(e) => write!(f, "cannot start a worker thread: {e}"),
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

fn engine_config(args: &RunArgs) -> EngineConfig {
    EngineConfig {
        pairing: PairingConfig {
            window: args.window,
            client_capacity: args.capacity,
            upstream_capacity: args.capacity,
            mask: args.mark_mask,
        },
        dns_ports: args.dns_ports.clone(),
    }
}

/// Run until SIGTERM/SIGINT.
pub fn run(args: &RunArgs) -> Result<(), Error> {
    let signals = signal_channel().map_err(Error::Signals)?;
    let shared = Arc::new(Shared::new(engine_config(args), RuleSet::empty()));
    // Bind every queue before serving any, so a bad queue fails the start, not the night.
    let mut queues = Vec::new();
    for num in args.queue_numbers() {
        let opts = QueueOptions {
            num,
            copy_range: args.copy_range,
            max_len: args.queue_maxlen,
            fail_open: !args.fail_closed,
        };
        queues.push(Queue::open(&opts).map_err(|e| Error::Open(num, e))?);
    }
    let nums: Vec<String> = queues.iter().map(|q| q.num().to_string()).collect();
    let mut workers = Vec::new();
    for queue in queues {
        let shared = Arc::clone(&shared);
        let name = format!("queue-{}", queue.num());
        let handle = thread::Builder::new()
            .name(name)
            .spawn(move || worker::run(queue, shared))
            .map_err(Error::Spawn)?;
        workers.push(handle);
    }
    log::info!(
        "nfqmark {} serving queue(s) {} (mark mask {:#x}, window {:?})",
        env!("CARGO_PKG_VERSION"),
        nums.join(","),
        args.mark_mask,
        args.window
    );
    for signal in signals.iter() {
        match signal {
            Signal::Stop => break,
            Signal::Reload => log::info!("SIGHUP: no rules file to reload"),
            Signal::Report => log::info!("{}", report(&shared)),
        }
    }
    shared
        .stop
        .store(true, std::sync::atomic::Ordering::Relaxed);
    log::info!("stopping: {}", report(&shared));
    Ok(())
}

/// One line with every counter, for SIGUSR1 and the exit log.
pub fn report(shared: &Shared) -> String {
    let s = &shared.stats;
    let (p, clients, upstream) = match shared.pairing.lock() {
        Ok(t) => (t.counters, t.client_len(), t.upstream_len()),
        Err(poisoned) => {
            let t = poisoned.into_inner();
            (t.counters, t.client_len(), t.upstream_len())
        }
    };
    format!(
        "packets={} marked={} accepted={} dropped={} parse_errors={} dns={} dns_errors={} \
         not_dns={} client_queries={} paired={} ambiguous={} unpaired={} upstream_answers={} \
         client_answers={} expired={} evicted={} waiting_clients={} waiting_upstream={} \
         enobufs={} verdict_errors={}",
        s.packets.get(),
        s.marked.get(),
        s.accepted.get(),
        s.dropped.get(),
        s.parse_errors.get(),
        s.dns.get(),
        s.dns_errors.get(),
        s.not_dns.get(),
        p.client_queries,
        p.paired,
        p.ambiguous,
        p.unpaired,
        p.upstream_answers,
        p.client_answers,
        p.expired,
        p.evicted,
        clients,
        upstream,
        s.enobufs.get(),
        s.verdict_errors.get(),
    )
}
