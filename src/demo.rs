//! `nfqmark demo`: build the lab, send queries from both clients, and show live which link the
//! resolver's upstream queries took. A newcomer sees nfqmark do its job in under a minute.
//!
//! This module owns the demo's presentation only: the network is the one the end-to-end tests
//! build ([`nfqmark_lab`]), and nfqmark runs in it as the real daemon (this same binary, `run`).
//! It touches nothing outside its own namespaces, and tears them down on exit, on error and on
//! Ctrl-C.

use std::fmt;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use std::sync::mpsc::{Receiver, RecvTimeoutError};

use crate::daemon::{Signal, signal_channel};
use nfqmark_lab::{self as lab, Client, Family, LinkCounts, Options, Resolver, World};

/// What the demo was asked to do.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub resolver: Resolver,
    /// How long queries are sent.
    pub seconds: u64,
    /// Queries per client per second.
    pub rate: usize,
    /// Keep the network up after the run, until Ctrl-C, and print how to explore it.
    pub keep: bool,
    /// The nfqmark binary to run on the router.
    pub nfqmark: PathBuf,
}

/// Why the demo could not run.
#[derive(Debug)]
pub enum Error {
    NotRoot,
    Missing(String),
    Setup(&'static str, io::Error),
    Interrupted,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotRoot => f.write_str(
                "the demo builds network namespaces and firewall rules inside them: run it as root (sudo nfqmark demo)",
            ),
            Error::Missing(what) => f.write_str(what),
            Error::Setup(step, e) => write!(f, "{step}: {e}"),
            Error::Interrupted => f.write_str("interrupted; the demo network was torn down"),
        }
    }
}

impl std::error::Error for Error {}

/// The final tally, also printed as one `RESULT` line for scripts and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub a_sent: usize,
    pub b_sent: usize,
    pub links: LinkCounts,
    /// nfqmark's last counter line.
    pub counters: String,
}

impl Summary {
    pub fn result_line(&self) -> String {
        format!(
            "RESULT a_sent={} a_cheap={} a_fast={} b_sent={} b_cheap={} b_fast={} dropped={} \
             unanswered={}",
            self.a_sent,
            self.links.a_link2,
            self.links.a_link1,
            self.b_sent,
            self.links.b_link2,
            self.links.b_link1,
            self.links.dropped(),
            self.links.unanswered
        )
    }
}

fn step<T>(
    out: &mut impl Write,
    what: &'static str,
    f: impl FnOnce() -> io::Result<T>,
) -> Result<T, Error> {
    let _ = write!(out, "  {what} ... ");
    let _ = out.flush();
    let started = Instant::now();
    match f() {
        Ok(v) => {
            let _ = writeln!(out, "ok ({} ms)", started.elapsed().as_millis());
            Ok(v)
        }
        Err(e) => {
            let _ = writeln!(out, "failed");
            Err(Error::Setup(what, e))
        }
    }
}

/// Run the demo, printing to `out`.
pub fn run(opts: &DemoOptions, out: &mut impl Write) -> Result<Summary, Error> {
    if !lab::netns::is_root() {
        return Err(Error::NotRoot);
    }
    let extra: &[(&str, &str)] = match opts.resolver {
        Resolver::Unbound => &[("unbound", "unbound")],
        Resolver::Knot => &[("kresd", "knot-resolver")],
        _ => &[],
    };
    lab::check_programs(extra).map_err(Error::Missing)?;
    // Signals first, so Ctrl-C during setup still tears down what was built.
    let signals = signal_channel().map_err(|e| Error::Setup("signal handling", e))?;
    let _ = writeln!(
        out,
        "nfqmark demo: building the network ({})",
        opts.resolver
    );
    let mut options = Options::new("demo", opts.resolver, Some(opts.nfqmark.clone()));
    options.queue = 0;
    let mut world = step(
        out,
        "namespaces, links, routes, marking rules, upstream DNS",
        || World::build(options),
    )?;
    interrupted(&signals)?;
    step(out, "nfqmark on the router", || world.start_nfqmark())?;
    interrupted(&signals)?;
    step(out, "resolver on the router", || {
        world.start_resolver(Family::V4)
    })?;
    interrupted(&signals)?;
    world.sniffer.clear();
    let _ = writeln!(
        out,
        "\nclient A ({}) is marked {} by the router's iptables rules; `ip rule fwmark {}` sends\n\
         marked packets to the upstream DNS over the cheap link. Both links masquerade, and the\n\
         upstream host drops what arrives with another link's address. nfqmark carries client\n\
         A's mark onto {}'s upstream queries; a query counts when the upstream host accepted it.\n",
        lab::addr::A_V4,
        lab::MARK_A,
        lab::MARK_A,
        opts.resolver
    );
    let _ = writeln!(
        out,
        "{:>4}  {:>13}  {:>22}  {:>13}  {:>22}  nfqmark",
        "sec", "A sent", "A upstream fast/cheap", "B sent", "B upstream fast/cheap"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let sent_a = Arc::new(AtomicUsize::new(0));
    let sent_b = Arc::new(AtomicUsize::new(0));
    let summary = thread::scope(|s| -> Result<Summary, Error> {
        for (client, sent) in [(Client::A, &sent_a), (Client::B, &sent_b)] {
            let stop = &stop;
            let world = &world;
            let rate = opts.rate.max(1);
            s.spawn(move || {
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let names: Vec<String> = (0..rate)
                        .map(|i| format!("{}-{}-{}.demo.nfqm.example", client.letter(), n, i))
                        .collect();
                    n += 1;
                    if world.query(client, Family::V4, &names, false).is_ok() {
                        sent.fetch_add(names.len(), Ordering::Relaxed);
                    }
                    if let Some(rest) = Duration::from_secs(1).checked_sub(started.elapsed()) {
                        thread::sleep(rest);
                    }
                }
            });
        }
        let mut next_tick = Instant::now() + Duration::from_secs(1);
        let mut second = 0u64;
        let mut result = Ok(());
        while second < opts.seconds {
            match signals.recv_timeout(next_tick.saturating_duration_since(Instant::now())) {
                Ok(Signal::Stop) | Err(RecvTimeoutError::Disconnected) => {
                    result = Err(Error::Interrupted);
                    break;
                }
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    next_tick += Duration::from_secs(1);
                    second += 1;
                    let links = LinkCounts::from_sniffer(&world.sniffer, "demo.nfqm");
                    let _ = writeln!(
                        out,
                        "{:>4}  {:>13}  {:>22}  {:>13}  {:>22}  {}",
                        second,
                        sent_a.load(Ordering::Relaxed),
                        format!("{} / {}", links.a_link1, links.a_link2),
                        sent_b.load(Ordering::Relaxed),
                        format!("{} / {}", links.b_link1, links.b_link2),
                        short_counters(&world.nfqmark_counters()),
                    );
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        result?;
        Ok(Summary::default())
    });
    if let Err(e) = summary {
        let _ = writeln!(out, "tearing down the demo network");
        return Err(e);
    }
    // Let the last queries reach the upstream host.
    thread::sleep(Duration::from_millis(500));
    let log = world.stop_nfqmark();
    let summary = Summary {
        a_sent: sent_a.load(Ordering::Relaxed),
        b_sent: sent_b.load(Ordering::Relaxed),
        links: LinkCounts::from_sniffer(&world.sniffer, "demo.nfqm"),
        counters: lab::last_counters(&log),
    };
    let _ = writeln!(
        out,
        "\nsummary: client A sent {} queries: their upstream queries left {} via the cheap link, {} via the fast link.\n\
         \x20        client B sent {} queries: their upstream queries left {} via the cheap link, {} via the fast link.\n\
         \x20        upstream host: {} name(s) dropped for a foreign source, {} accepted but not answered.\n\
         \x20        nfqmark: {}\n{}",
        summary.a_sent,
        summary.links.a_link2,
        summary.links.a_link1,
        summary.b_sent,
        summary.links.b_link2,
        summary.links.b_link1,
        summary.links.dropped(),
        summary.links.unanswered,
        summary.counters,
        summary.result_line()
    );
    if opts.keep {
        keep(&mut world, &signals, out)?;
    }
    let _ = writeln!(out, "tearing down the demo network");
    Ok(summary)
}

fn interrupted(signals: &Receiver<Signal>) -> Result<(), Error> {
    match signals.try_recv() {
        Ok(Signal::Stop) => Err(Error::Interrupted),
        _ => Ok(()),
    }
}

/// Leave the network up (nfqmark restarted) until Ctrl-C, with commands to explore it.
fn keep(world: &mut World, signals: &Receiver<Signal>, out: &mut impl Write) -> Result<(), Error> {
    step(out, "restarting nfqmark for exploring", || {
        world.start_nfqmark()
    })?;
    let (a, r, u) = (world.a.name(), world.router.name(), world.upstream.name());
    let _ = writeln!(
        out,
        "\nThe network stays up until you press Ctrl-C. Try, in another terminal:\n\
         \x20 ip netns exec {a} dig @{ra} marked-by-nfqmark.nfqm.example\n\
         \x20 ip netns exec {r} iptables -t mangle -L -v -n\n\
         \x20 ip netns exec {r} conntrack -L -p udp --dport 53\n\
         \x20 ip netns exec {r} iptables -t nat -L POSTROUTING -v -n\n\
         \x20 ip netns exec {u} iptables -t raw -L {ingress} -v -n\n\
         \x20 ip netns exec {r} ip rule show\n\
         \x20 ip netns exec {u} tcpdump -ni link2 port 53\n",
        ra = lab::addr::ROUTER_A_V4,
        ingress = lab::INGRESS_CHAIN,
    );
    loop {
        match signals.recv() {
            Ok(Signal::Stop) | Err(_) => return Ok(()),
            Ok(_) => {}
        }
    }
}

/// `paired=.. ambiguous=.. unpaired=..` out of a counter line.
fn short_counters(line: &str) -> String {
    line.split_whitespace()
        .filter(|kv| {
            ["paired=", "ambiguous=", "unpaired=", "marked="]
                .iter()
                .any(|k| kv.starts_with(k))
        })
        .collect::<Vec<_>>()
        .join(" ")
}
