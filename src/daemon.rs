//! `nfqmark run` and `nfqmark check`: load rules, bind the queues, start one worker per queue,
//! and handle signals.
//!
//! This module owns the process's life: start-up errors are reported before any packet is
//! served; SIGHUP reloads the rules (a file with errors is rejected and the old rules stay in
//! force), SIGUSR1 logs the counters, SIGTERM and SIGINT stop. The main thread only waits for
//! events (signals, rules loaded, threads ended) on one channel: the rules file is read on its
//! own thread, so a stop never waits on a read; and a worker, the rules thread or the metrics
//! thread that ends without being asked takes the process down with exit status 2 and one line
//! naming it and the cause, so the service manager restarts nfqmark instead of a queue going
//! unserved (with `--queue-bypass`, unmarked) behind a healthy-looking process.
//!
//! It must never read the rules file, or do anything else that can block, on the main thread.

use std::fmt;
use std::io::Read as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender, TrySendError};
use std::thread;
use std::time::{Duration, Instant};

use crate::cli::{CheckArgs, RunArgs, SetupArgs};
use crate::engine::EngineConfig;
use crate::flows::LearnConfig;
use crate::links::{self, Links};
use crate::metrics::{Alive, Endpoint, QueueSnapshot, Snapshot};
use crate::pairing::PairingConfig;
use crate::queue::{OpenError, Queue, QueueOptions};
use crate::rules::{Diagnostic, RuleSet};
use crate::worker::{self, Shared};

/// Why `run` could not start, or stopped with an error.
#[derive(Debug)]
pub enum Error {
    Open(u16, OpenError),
    Rules(Vec<Diagnostic>),
    Metrics(std::io::Error),
    Signals(std::io::Error),
    /// A thread could not be started: which one, why, and how many threads nfqmark needs in
    /// all with these options.
    Spawn(String, std::io::Error, usize),
    Config(String),
    /// A thread that should run until told to stop ended.
    Died(Task, End),
}

/// A thread that runs for the life of the process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Task {
    /// The worker of this queue.
    Queue(u16),
    /// The thread that reads the rules file.
    Rules,
    /// The metrics endpoint.
    Metrics,
    /// The thread that counts packets let past the queues.
    Bypass,
    /// The thread that keeps the link table current (started when rules name an interface).
    Links,
    /// The thread that writes learned flows into the kernel's nft sets.
    KernelFlows,
    /// The thread that sets connection marks over ctnetlink.
    CtMarks,
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Task::Queue(n) => write!(f, "queue {n}: the worker"),
            Task::Rules => f.write_str("the rules thread"),
            Task::Metrics => f.write_str("the metrics endpoint"),
            Task::Bypass => f.write_str("the bypass counter"),
            Task::Links => f.write_str("the link table thread"),
            Task::KernelFlows => f.write_str("the kernel flow sets thread"),
            Task::CtMarks => f.write_str("the ctnetlink marks thread"),
        }
    }
}

/// How such a thread ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// It returned normally (asked to stop, or, unasked, a bug).
    Returned,
    /// It gave up with this error.
    Failed(String),
    /// It panicked with this message (debug builds; release builds abort on panic).
    Panicked(String),
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
            Error::Spawn(what, e, needed) => write!(
                f,
                "cannot start the {what} thread: {e} (nfqmark needs {needed} threads with these \
                 options: is a tasks limit, such as systemd's TasksMax, lower?)"
            ),
            Error::Config(e) => f.write_str(e),
            Error::Died(task, end) => {
                match end {
                    End::Returned => write!(f, "{task} ended without being asked to")?,
                    End::Failed(cause) => write!(f, "{task} stopped: {cause}")?,
                    End::Panicked(cause) => write!(f, "{task} panicked: {cause}")?,
                }
                f.write_str("; exiting with status 2 so the service manager restarts nfqmark")
            }
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
    let (tx, rx) = mpsc::channel();
    forward_signals(tx, |s| s)?;
    Ok(rx)
}

/// [`signal_channel`] into an existing channel, each signal wrapped by `wrap`. The thread ends
/// when the receiving side is gone.
///
/// This stays a `sigwait` thread rather than the signal-hook crate: signal-hook runs a handler
/// in whichever thread the kernel picks (a worker in `poll` would see EINTR) unless the
/// signals are blocked in every other thread anyway, which is all this code does besides
/// `sigwait`.
pub fn forward_signals<T: Send + 'static>(
    tx: Sender<T>,
    wrap: fn(Signal) -> T,
) -> std::io::Result<()> {
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
                if tx.send(wrap(event)).is_err() {
                    return;
                }
            }
        })?;
    Ok(())
}

/// Largest rules file read. The largest example in rules/ is a few KiB; a walled garden of
/// 100,000 names is about 3 MiB.
pub const MAX_RULES_BYTES: u64 = 16 << 20;

/// Read a rules file: it must be a regular file of at most [`MAX_RULES_BYTES`]. It is opened
/// non-blocking, so a FIFO at the path is refused instead of waited on (and a device such as
/// /dev/zero is refused instead of read forever). The error is a whole-file diagnostic.
pub fn read_rules_file(path: &Path) -> Result<String, Diagnostic> {
    let source = path.display().to_string();
    let fail = |message: String, hint: &str| Diagnostic {
        source: source.clone(),
        line: 0,
        col: 0,
        message,
        hint: (!hint.is_empty()).then(|| hint.to_string()),
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| fail(format!("cannot read the rules file: {e}"), ""))?;
    let meta = file
        .metadata()
        .map_err(|e| fail(format!("cannot read the rules file: {e}"), ""))?;
    if !meta.is_file() {
        let kind = {
            use std::os::unix::fs::FileTypeExt as _;
            let t = meta.file_type();
            if t.is_fifo() {
                "a FIFO"
            } else if t.is_char_device() || t.is_block_device() {
                "a device"
            } else if t.is_dir() {
                "a directory"
            } else if t.is_socket() {
                "a socket"
            } else {
                "not a regular file"
            }
        };
        return Err(fail(
            format!("the rules file is {kind}, not a regular file"),
            "give the path of a rules file; nfqmark reads it whole at start and on SIGHUP",
        ));
    }
    let too_big = |size: u64| {
        fail(
            format!(
                "the rules file is {size} bytes, more than the {} MiB nfqmark reads",
                MAX_RULES_BYTES >> 20
            ),
            "split large sets of names or addresses, or check that this is the right file",
        )
    };
    if meta.len() > MAX_RULES_BYTES {
        return Err(too_big(meta.len()));
    }
    // The file may grow while being read: read one byte past the cap to notice.
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(MAX_RULES_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(format!("cannot read the rules file: {e}"), ""))?;
    if bytes.len() as u64 > MAX_RULES_BYTES {
        return Err(too_big(bytes.len() as u64));
    }
    String::from_utf8(bytes).map_err(|e| {
        fail(
            format!(
                "the rules file is not UTF-8 text (bad byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
            "save it as UTF-8",
        )
    })
}

/// Load a rules file, read with [`read_rules_file`], resolving interface names with `ifaces`.
pub fn load_rules_with(
    path: &Path,
    ifaces: &dyn Fn(&str) -> Option<u32>,
) -> Result<RuleSet, Vec<Diagnostic>> {
    let text = read_rules_file(path).map_err(|d| vec![d])?;
    RuleSet::parse(&text, &path.display().to_string(), ifaces)
}

/// `nfqmark check FILE`: 0 and a summary when good (a rule naming an interface this machine
/// lacks is a warning, or with `--strict-interfaces` an error); 1 and every error when not.
pub fn check(args: &CheckArgs) -> i32 {
    let result = load_rules_with(&args.file, &|_: &str| None).and_then(|rules| {
        if args.any_interface || !rules.names_interfaces() {
            return Ok((rules, Vec::new()));
        }
        match links::dump() {
            Ok(here) => {
                let missing = rules.missing_interfaces(&here, args.strict_interfaces);
                if args.strict_interfaces && !missing.is_empty() {
                    return Err(missing);
                }
                Ok((rules, missing))
            }
            Err(e) => {
                eprintln!(
                    "{}: warning: cannot list this machine's interfaces ({e}); interface names \
                     not checked",
                    args.file.display()
                );
                Ok((rules, Vec::new()))
            }
        }
    });
    match result {
        Ok((rules, warnings)) => {
            for w in &warnings {
                eprintln!("{}", w.warning());
            }
            let noted = match warnings.len() {
                0 => String::new(),
                n => format!(" ({n} warning(s))"),
            };
            println!("{}: ok: {}{noted}", args.file.display(), rules.summary());
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
    if args.routes {
        let source = args.rules.as_ref().map_or_else(
            || "the marks given".to_string(),
            |p| p.display().to_string(),
        );
        let mut specs = Vec::with_capacity(args.route.len());
        for r in &args.route {
            match s::parse_route(r) {
                Ok(spec) => specs.push(spec),
                Err(e) => {
                    eprintln!("nfqmark setup: --route {e}");
                    return 2;
                }
            }
        }
        return match s::routes(&specs, args.mark_mask, &source) {
            Ok(text) => {
                print!("{text}");
                0
            }
            Err(e) => {
                eprintln!("nfqmark setup: {e}");
                2
            }
        };
    }
    let (rules, source) = match &args.rules {
        Some(path) => match load_rules_with(path, &|_: &str| Some(1u32)) {
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
    let flow_sets = setup_flow_sets(args, &rules);
    if args.flow_table {
        if flow_sets.is_empty() {
            eprintln!(
                "nfqmark setup: --flow-table prints the nft sets of the kernel backend of flow \
                 rules: {} (see --flow-backend)",
                if rules.has_flow_rules() {
                    "this setup queues flows instead"
                } else {
                    "these rules have no flow rules"
                }
            );
            return 1;
        }
        let plan = Plan {
            queues: args.queue,
            mask: args.mark_mask,
            dns_ports: args.dns_ports.clone(),
            flow_clients_v4: v4,
            flow_clients_v6: v6,
            zones: false,
            flow_sets,
            lean: false,
            source,
        };
        print!("{}", s::nft_flow_table(&plan));
        return 0;
    }
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
        flow_sets,
        lean: args.lean,
        source,
    };
    if args.lean && args.nft {
        eprintln!("nfqmark setup: --lean needs the iptables form (a u32 match on the TC bit)");
        return 2;
    }
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
        if !plan.flow_sets.is_empty() {
            eprintln!(
                "nfqmark setup: flow rules are marked by the kernel from nfqmark's nft sets: load \
                 them too, with `nfqmark setup --rules FILE --flow-table | nft -f -`"
            );
        }
        print!("{}", s::iptables(&plan, family));
    }
    0
}

/// The kernel backend's sets for `setup`, per `--flow-backend` (auto: where the kernel and nft
/// take them); none for the queue backend or without flow rules.
fn setup_flow_sets(args: &SetupArgs, rules: &RuleSet) -> Vec<crate::kernel_flows::SetSpec> {
    use crate::cli::FlowBackend;
    if !rules.has_flow_rules() {
        return Vec::new();
    }
    let nft = match args.flow_backend {
        FlowBackend::Queue => false,
        FlowBackend::Nft => {
            match crate::setup::probe_nft_flow_sets() {
                Ok(true) => {}
                Ok(false) => eprintln!(
                    "nfqmark setup: this kernel or nft refuses the kernel backend's sets (timed \
                     concatenated sets, marks under a mask): these rules will not load here; use \
                     --flow-backend queue"
                ),
                Err(e) => eprintln!("nfqmark setup: could not probe nft's sets ({e})"),
            }
            true
        }
        FlowBackend::Auto => match crate::setup::probe_nft_flow_sets() {
            Ok(true) => true,
            Ok(false) => {
                eprintln!(
                    "nfqmark setup: this kernel or nft refuses the kernel backend's sets: flow \
                     rules queue each new flow's first packet instead"
                );
                false
            }
            Err(e) => {
                eprintln!(
                    "nfqmark setup: could not probe nft's sets ({e}); flow rules queue each new \
                     flow's first packet (--flow-backend nft prints the sets anyway)"
                );
                false
            }
        },
    };
    if nft {
        crate::kernel_flows::layout(&rules.flow_targets())
    } else {
        Vec::new()
    }
}

pub(crate) fn engine_config(args: &RunArgs) -> EngineConfig {
    EngineConfig {
        pairing: PairingConfig {
            window: args.window,
            client_capacity: args.capacity,
            upstream_capacity: args.capacity,
            mask: args.mark_mask,
            // One host may hold a quarter of the table: a flood from one LAN host cannot evict
            // every other client's waiting queries.
            per_client: (args.capacity / 4).max(1),
            claimed_grace: args.lean.then_some(Duration::from_secs(1)),
            ..PairingConfig::default()
        },
        dns_ports: args.dns_ports.clone(),
    }
}

pub(crate) fn learn_config(args: &RunArgs) -> LearnConfig {
    LearnConfig {
        ttl_floor: args.flow_ttl_min,
        ttl_ceiling: args.flow_ttl_max,
        capacity: args.flow_capacity,
        // One client may hold an eighth of the table.
        per_client: (args.flow_capacity / 8).max(1),
    }
}

/// What the main thread waits for.
enum Event {
    Signal(Signal),
    /// The first load of the rules file finished.
    Loaded(Result<Box<RuleSet>, Vec<Diagnostic>>),
    /// A thread that runs for the life of the process ended.
    Ended(Task, End),
}

/// Longest a stop waits for the workers to give queued packets their verdicts and unbind
/// (each drains for at most half a second).
const STOP_WAIT: Duration = Duration::from_secs(3);

/// The text of a panic's payload.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

/// Start a thread that runs for the life of the process; when it ends, however it ends
/// (returns, fails, panics), the main thread hears of it as [`Event::Ended`].
fn supervised<F>(
    name: String,
    task: Task,
    events: &Sender<Event>,
    body: F,
) -> Result<thread::JoinHandle<()>, Error>
where
    F: FnOnce() -> Result<(), String> + Send + 'static,
{
    let events = events.clone();
    let what = name.clone();
    thread::Builder::new()
        .name(name)
        .spawn(move || {
            let end = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
                Ok(Ok(())) => End::Returned,
                Ok(Err(cause)) => End::Failed(cause),
                Err(payload) => End::Panicked(panic_text(payload.as_ref())),
            };
            let _ = events.send(Event::Ended(task, end));
        })
        .map_err(|e| Error::Spawn(what, e, 0))
}

/// Threads `run` starts with these options, the main thread included: signals, the rules
/// thread with a rules file, the metrics endpoint with `--metrics`, the ctnetlink marks thread
/// with `--ct-marks on`, one worker per queue. (Rules that name an interface start one more when
/// they load, the link table's; flow rules start the kernel flow sets thread, or with the queue
/// backend the ctnetlink marks thread: `run` adds those it starts to the count it reports.)
pub fn threads_needed(args: &RunArgs) -> usize {
    3 + usize::from(args.rules.is_some())
        + usize::from(args.metrics.is_some())
        + usize::from(args.ct_marks == crate::cli::CtMarks::On)
        + args.queue_numbers().len()
}

/// The rules file as the rules thread reads it: interfaces named by its rules are followed in
/// the link table, which is started (dump, then a thread of its own) the first time a file
/// names one.
struct RulesFile {
    path: PathBuf,
    /// `--strict-interfaces`: a rule naming an interface that does not exist is an error.
    strict: bool,
    links: Option<Arc<Links>>,
    events: Sender<Event>,
}

impl RulesFile {
    /// Read and check the file; its rules follow the link table from now on.
    fn load(&mut self) -> Result<RuleSet, Vec<Diagnostic>> {
        let rules = load_rules_with(&self.path, &|_: &str| None)?;
        if !rules.names_interfaces() {
            return Ok(rules);
        }
        let links = self.links().map_err(|e| {
            vec![Diagnostic {
                source: self.path.display().to_string(),
                line: 0,
                col: 0,
                message: format!("cannot follow the interfaces the rules name: {e}"),
                hint: None,
            }]
        })?;
        rules.follow(&links);
        let missing = rules.missing_interfaces(&links.snapshot(), self.strict);
        if self.strict && !missing.is_empty() {
            return Err(missing);
        }
        for d in &missing {
            log::warn!("{d}");
        }
        Ok(rules)
    }

    /// The link table, started on first use.
    fn links(&mut self) -> Result<Arc<Links>, String> {
        if let Some(links) = &self.links {
            return Ok(Arc::clone(links));
        }
        let (links, watcher) = links::watch().map_err(|e| format!("rtnetlink: {e}"))?;
        supervised("links".into(), Task::Links, &self.events, move || {
            watcher
                .run(&|| false)
                .map_err(|e| format!("link notifications failed: {e}"))
        })
        .map_err(|e| e.to_string())?;
        log::info!(
            "link table: {} interfaces now; rules match interfaces by name as they come and go",
            links.snapshot().len()
        );
        self.links = Some(Arc::clone(&links));
        Ok(links)
    }
}

/// Work for the rules thread.
enum Job {
    /// Load the file and send [`Event::Loaded`].
    Initial,
    /// Load the file and put it in force (SIGHUP).
    Reload(Arc<Shared>),
}

/// The thread that reads the rules file, so that the main thread never blocks on it.
struct Loader {
    jobs: SyncSender<Job>,
}

impl Loader {
    fn start(path: PathBuf, strict: bool, events: &Sender<Event>) -> Result<Loader, Error> {
        // One job waiting at most: a SIGHUP while another reload waits is already covered by
        // it (it reads the file as it is then).
        let (jobs, todo) = mpsc::sync_channel::<Job>(1);
        let reply = events.clone();
        let mut file = RulesFile {
            path,
            strict,
            links: None,
            events: events.clone(),
        };
        supervised("rules".into(), Task::Rules, events, move || {
            for job in todo {
                match job {
                    Job::Initial => {
                        let _ = reply.send(Event::Loaded(file.load().map(Box::new)));
                    }
                    Job::Reload(shared) => reload(&mut file, &shared),
                }
            }
            Ok(())
        })?;
        Ok(Loader { jobs })
    }

    fn ask(&self, job: Job) {
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                log::info!("SIGHUP: a reload is already waiting; it will read the file as it is")
            }
            // The thread is gone; its end is reported as an event.
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

/// Run until SIGTERM/SIGINT. An error when start-up fails or a thread ends unasked.
pub fn run(args: &RunArgs) -> Result<(), Error> {
    let extra = std::cell::Cell::new(0);
    run_inner(args, &extra).map_err(|e| match e {
        Error::Spawn(what, e, _) => Error::Spawn(what, e, threads_needed(args) + extra.get()),
        e => e,
    })
}

/// `extra` counts the threads started beyond [`threads_needed`] (for the flow rules).
fn run_inner(args: &RunArgs, extra: &std::cell::Cell<usize>) -> Result<(), Error> {
    let (events_tx, events) = mpsc::channel();
    forward_signals(events_tx.clone(), Event::Signal).map_err(Error::Signals)?;
    if args.flow_ttl_min > args.flow_ttl_max {
        return Err(Error::Config(format!(
            "--flow-ttl-min ({:?}) is above --flow-ttl-max ({:?}): lower the first or raise the second",
            args.flow_ttl_min, args.flow_ttl_max
        )));
    }
    let loader = match &args.rules {
        Some(path) => Some(Loader::start(
            path.clone(),
            args.strict_interfaces,
            &events_tx,
        )?),
        None => None,
    };
    let rules = match (&loader, &args.rules) {
        (Some(loader), Some(path)) => {
            loader.ask(Job::Initial);
            let Some(rules) = first_rules(&events)? else {
                log::info!("stopped before start");
                return Ok(());
            };
            log::info!("rules {}: {}", path.display(), rules.summary());
            rules
        }
        _ => RuleSet::empty(),
    };
    let nums = args.queue_numbers();
    let flow_targets = rules.flow_targets();
    let shared = Arc::new(Shared::new(
        engine_config(args),
        learn_config(args),
        rules,
        &nums,
    ));

    // Bind every queue before serving any, so a bad queue fails the start, not the night.
    let mut queues = Vec::new();
    for &num in &nums {
        let opts = QueueOptions {
            num,
            copy_range: args.copy_range,
            max_len: args.queue_maxlen,
            fail_open: !args.fail_closed,
            rcvbuf: (args.rcvbuf > 0).then_some(args.rcvbuf),
            conntrack: args.conntrack_info,
        };
        queues.push(Queue::open(&opts).map_err(|e| Error::Open(num, e))?);
    }
    // After the queues: a start that fails for want of permission says so about the queue.
    let kernel_flows = if flow_targets.is_empty() {
        false
    } else {
        extra.set(extra.get() + 1);
        let started = start_kernel_flows(args, &shared, &flow_targets, &events_tx)?;
        if !started {
            extra.set(extra.get() - 1);
        }
        started
    };
    let ct_marks = match args.ct_marks {
        crate::cli::CtMarks::On => true,
        // Where it helps most: every new flow's mark rests on the save-mark rule otherwise.
        crate::cli::CtMarks::Auto => !flow_targets.is_empty() && !kernel_flows,
        crate::cli::CtMarks::Off => false,
    };
    if ct_marks {
        if args.ct_marks == crate::cli::CtMarks::Auto {
            extra.set(extra.get() + 1);
        }
        start_ct_marks(args, &shared, &events_tx)?;
    }
    let alive = Arc::new(Alive::new(&nums));
    if let Some(addr) = args.metrics {
        let endpoint = Endpoint::bind(addr).map_err(Error::Metrics)?;
        let (shared, alive) = (Arc::clone(&shared), Arc::clone(&alive));
        supervised("metrics".into(), Task::Metrics, &events_tx, move || {
            endpoint.run(&shared, &alive);
            Ok(())
        })?;
        log::info!("metrics on http://{addr}/metrics and /health");
    }
    {
        let shared = Arc::clone(&shared);
        let nums = nums.clone();
        supervised("bypass".into(), Task::Bypass, &events_tx, move || {
            count_bypass(&shared, &nums);
            Ok(())
        })?;
    }
    for (index, queue) in queues.into_iter().enumerate() {
        let num = queue.num();
        alive.set(num, true);
        let for_worker = Arc::clone(&shared);
        let started = supervised(
            format!("queue-{num}"),
            Task::Queue(num),
            &events_tx,
            move || {
                worker::run(queue, for_worker, index).map_err(|e| format!("receive failed: {e}"))
            },
        );
        if let Err(e) = started {
            alive.set(num, false);
            // The workers already started stop before the error is reported.
            shared.stop.store(true, Ordering::Relaxed);
            let _ = wait_for_workers(&events, &alive);
            return Err(e);
        }
    }
    let listed: Vec<String> = nums.iter().map(u16::to_string).collect();
    log::info!(
        "nfqmark {} serving queue(s) {} (mark mask {:#x}, window {:?})",
        env!("CARGO_PKG_VERSION"),
        listed.join(","),
        args.mark_mask,
        args.window
    );
    let outcome = serve_events(&events, &shared, &alive, loader.as_ref());
    // Workers notice within their poll interval, stop the kernel queueing, give what is queued
    // its verdict and unbind.
    shared.stop.store(true, Ordering::Relaxed);
    let outcome = outcome.and(wait_for_workers(&events, &alive));
    log::info!("stopping: {}", report(&shared));
    outcome
}

/// Start the kernel backend of flow rules when the rules have flow rules and `--flow-backend`
/// allows: with `auto` only when the kernel has their sets (`nfqmark setup` loaded them).
fn start_kernel_flows(
    args: &RunArgs,
    shared: &Arc<Shared>,
    targets: &[crate::flows::FlowTarget],
    events: &Sender<Event>,
) -> Result<bool, Error> {
    use crate::cli::FlowBackend;
    use crate::kernel_flows as kf;
    if targets.is_empty() || args.flow_backend == FlowBackend::Queue {
        return Ok(false);
    }
    let forced = args.flow_backend == FlowBackend::Nft;
    let config = kf::Config {
        queue: 16_384,
        readback: args.flow_readback,
    };
    let started = {
        let mut tables = worker::lock(&shared.tables);
        kf::start(targets, &mut tables.learned, config, Instant::now())
    };
    let (handle, backend, info) = match started {
        Ok(s) => s,
        Err(e) if forced => {
            return Err(Error::Config(format!(
                "--flow-backend nft: cannot reach the kernel's nft sets: {e} (is nf_tables in \
                 the kernel, and nfqmark run with CAP_NET_ADMIN?)"
            )));
        }
        Err(e) => {
            log::info!("flow rules: queue backend (cannot reach the kernel's nft sets: {e})");
            return Ok(false);
        }
    };
    if info.present == 0 && !forced {
        log::info!(
            "flow rules: queue backend (table inet {} has none of their sets; `nfqmark setup \
             --flow-backend nft` prints them)",
            kf::TABLE
        );
        return Ok(false);
    }
    if !info.missing.is_empty() {
        log::warn!(
            "flow rules: table inet {} lacks set(s) {}: load `nfqmark setup --rules FILE \
             --flow-table` (nft -f) again; until then those rules' addresses mark nothing",
            kf::TABLE,
            info.missing.join(", ")
        );
    }
    log::info!(
        "flow rules: nft backend: {} set(s) in table inet {}, {} element(s) adopted from the \
         kernel, refresh by {:?}, read back every {:?}",
        info.present,
        kf::TABLE,
        info.adopted,
        info.refresh,
        args.flow_readback
    );
    worker::lock(&shared.tables)
        .learned
        .enable_outbox(config.queue);
    let _ = shared.kernel_flows.set(handle);
    let for_thread = Arc::clone(shared);
    supervised("kflows".into(), Task::KernelFlows, events, move || {
        backend
            .run(&for_thread.stop)
            .map_err(|e| format!("netlink: {e}"))
    })?;
    Ok(true)
}

/// Start setting connection marks over ctnetlink (the caller decided `--ct-marks` wants it),
/// unless the kernel does not answer ctnetlink (then the save-mark rule alone keeps connection
/// marks).
fn start_ct_marks(
    args: &RunArgs,
    shared: &Arc<Shared>,
    events: &Sender<Event>,
) -> Result<(), Error> {
    let (handle, marker) = match crate::ctmark::start(args.mark_mask) {
        Ok(Some(started)) => started,
        Ok(None) => {
            log::info!(
                "connection marks: this kernel does not answer ctnetlink; the save-mark rule \
                 alone keeps them"
            );
            return Ok(());
        }
        Err(e) => {
            log::info!(
                "connection marks: ctnetlink unavailable ({e}); the save-mark rule alone keeps them"
            );
            return Ok(());
        }
    };
    let _ = shared.ct_marks.set(handle);
    let for_thread = Arc::clone(shared);
    supervised("ctmarks".into(), Task::CtMarks, events, move || {
        marker
            .run(&for_thread.stop)
            .map_err(|e| format!("ctnetlink: {e}"))
    })?;
    log::info!(
        "connection marks: set over ctnetlink too, under mask {:#x}, for first packets nfqmark marks",
        args.mark_mask
    );
    Ok(())
}

/// How often the queue rules' counters are read.
const BYPASS_SAMPLE: Duration = Duration::from_secs(2);
/// At most one warning about packets let past per this long.
const BYPASS_WARN_EVERY: Duration = Duration::from_secs(60);

/// Until the stop flag: read the packet counters of nfqmark's NFQUEUE rules and count what the
/// kernel let past the queues unseen (see [`crate::bypass`]). Off the packet path; a rule dump
/// costs about 0.1 ms (5 ms with 1,000 other rules in the table).
fn count_bypass(shared: &Shared, nums: &[u16]) {
    let mut meter = crate::bypass::Meter::default();
    let mut socket = None;
    let mut said_unknown = false;
    let mut last_warning: Option<Instant> = None;
    let mut unwarned = 0u64;
    let mut next = Instant::now();
    while !shared.stop.load(Ordering::Relaxed) {
        if Instant::now() < next {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        next = Instant::now() + BYPASS_SAMPLE;
        let sock = match socket.as_mut() {
            Some(s) => s,
            None => match crate::nfnl::NfnlSocket::open() {
                Ok(s) => socket.insert(s),
                Err(e) => {
                    log::info!("bypass accounting off: cannot open a netfilter socket: {e}");
                    // A supervised thread must not end before the stop.
                    while !shared.stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    return;
                }
            },
        };
        let rules = match sock.queue_rules() {
            Ok(r) => r,
            Err(e) => {
                shared.bypass_known.store(false, Ordering::Relaxed);
                if !said_unknown {
                    log::info!(
                        "bypass accounting off for now: cannot read the NFQUEUE rules' counters \
                         ({e}); retrying"
                    );
                    said_unknown = true;
                }
                continue;
            }
        };
        let sums = crate::nfnl::wire::nft::packets_per_queue(&rules);
        let ours =
            |span: &crate::nfnl::wire::nft::QueueSpan| nums.iter().any(|&n| span.contains(n));
        let rule_packets: u64 = sums
            .iter()
            .filter(|(span, _)| ours(span))
            .map(|(_, &n)| n)
            .sum();
        let found = sums.keys().any(ours);
        shared.bypass_known.store(found, Ordering::Relaxed);
        if !found {
            if !said_unknown {
                log::info!(
                    "bypass accounting off for now: no NFQUEUE rule tagged 'nfqmark' sends to \
                     queue(s) {nums:?} (install the rules `nfqmark setup` prints)"
                );
                said_unknown = true;
            }
            continue;
        }
        said_unknown = false;
        // Read in the order packets move (rule, queue, nfqmark): a packet that moves on between
        // two reads is then counted twice at worst (never as let past), and the next sample
        // sees it right.
        let waiting: u64 = std::fs::read_to_string("/proc/net/netfilter/nfnetlink_queue")
            .map(|t| crate::metrics::parse_proc_queues(&t))
            .unwrap_or_default()
            .iter()
            .filter(|k| nums.contains(&k.num))
            .map(|k| k.waiting)
            .sum();
        let received: u64 = shared.queues.iter().map(|q| q.stats.packets.get()).sum();
        let more = meter.sample(rule_packets, received, waiting);
        if more > 0 {
            shared.bypassed.add(more);
            unwarned += more;
            if last_warning.is_none_or(|t| t.elapsed() >= BYPASS_WARN_EVERY) {
                log::warn!(
                    "{unwarned} packet(s) passed queue(s) {nums:?} unseen and unmarked (queue \
                     full with fail-open, or nobody listening); {} in all since start (raise \
                     --queue-maxlen, add queues)",
                    meter.total()
                );
                last_warning = Some(Instant::now());
                unwarned = 0;
            }
        }
    }
}

/// Wait for the first load of the rules file; `None` when asked to stop meanwhile.
fn first_rules(events: &Receiver<Event>) -> Result<Option<RuleSet>, Error> {
    loop {
        match events.recv() {
            Ok(Event::Loaded(Ok(rules))) => return Ok(Some(*rules)),
            Ok(Event::Loaded(Err(diags))) => return Err(Error::Rules(diags)),
            Ok(Event::Signal(Signal::Stop)) | Err(_) => return Ok(None),
            Ok(Event::Signal(_)) => {}
            Ok(Event::Ended(task, end)) => return Err(Error::Died(task, end)),
        }
    }
}

/// The main loop: act on signals until asked to stop (`Ok`) or until a thread ends (`Err`).
fn serve_events(
    events: &Receiver<Event>,
    shared: &Arc<Shared>,
    alive: &Alive,
    loader: Option<&Loader>,
) -> Result<(), Error> {
    loop {
        let Ok(event) = events.recv() else {
            return Ok(());
        };
        match event {
            Event::Signal(Signal::Stop) => return Ok(()),
            Event::Signal(Signal::Reload) => match loader {
                Some(loader) => loader.ask(Job::Reload(Arc::clone(shared))),
                None => log::info!("SIGHUP: no rules file to reload (start with --rules FILE)"),
            },
            Event::Signal(Signal::Report) => log::info!("{}", report(shared)),
            Event::Loaded(_) => {}
            Event::Ended(task, end) => {
                if let Task::Queue(n) = task {
                    alive.set(n, false);
                }
                return Err(Error::Died(task, end));
            }
        }
    }
}

/// After the stop flag is set: wait (at most [`STOP_WAIT`], or until a second SIGTERM) for every
/// worker to report its end. An error if one failed or panicked on its way out.
fn wait_for_workers(events: &Receiver<Event>, alive: &Alive) -> Result<(), Error> {
    let deadline = Instant::now() + STOP_WAIT;
    let mut outcome = Ok(());
    let mut running = alive.serving();
    while !running.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(Event::Ended(Task::Queue(n), end)) => {
                alive.set(n, false);
                running.retain(|&q| q != n);
                if end != End::Returned && outcome.is_ok() {
                    outcome = Err(Error::Died(Task::Queue(n), end));
                }
            }
            Ok(Event::Signal(Signal::Stop)) => {
                log::warn!("second stop signal: exiting without waiting for the workers");
                break;
            }
            Ok(_) => {}
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                let late: Vec<String> = running.iter().map(u16::to_string).collect();
                log::warn!(
                    "queue(s) {} did not stop within {STOP_WAIT:?}; exiting anyway",
                    late.join(",")
                );
                break;
            }
        }
    }
    outcome
}

/// SIGHUP, on the rules thread: load the rules file again; keep the old rules if the new file
/// has errors.
fn reload(file: &mut RulesFile, shared: &Shared) {
    let path = file.path.clone();
    match file.load() {
        Ok(rules) => {
            log::info!(
                "SIGHUP: rules {} reloaded: {}",
                path.display(),
                rules.summary()
            );
            if let Some(kernel) = shared.kernel_flows.get() {
                kernel.relayout(&rules.flow_targets());
            }
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
    let s = Snapshot::of(shared);
    let t = QueueSnapshot::sum(&s.queues);
    let p = s.pairing;
    format!(
        "packets={} marked={} accepted={} dropped={} repeated={} parse_errors={} dns={} dns_errors={} \
         not_dns={} bad_checksums={} conn_conflicts={} client_queries={} over_quota={} paired={} \
         ambiguous={} by_own_name={} by_ancestor={} by_derived={} unpaired={} upstream_answers={} client_answers={} tcp_intents={} \
         tcp_opened={} tcp_by_socket={} tcp_ambiguous={} tcp_unpaired={} expired={} evicted={} retired={} waiting_clients={} \
         waiting_upstream={} flows_learned={} flows_marked={} enobufs={} lock_waits={} verdict_errors={} \
         bypassed={} rules={} reloads={} reloads_rejected={}",
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
        p.by_own_name,
        p.by_ancestor,
        p.by_derived,
        p.unpaired,
        p.upstream_answers,
        p.client_answers,
        p.tcp_intents,
        p.tcp_opened,
        p.tcp_by_socket,
        p.tcp_ambiguous,
        p.tcp_unpaired,
        p.expired,
        p.evicted,
        p.retired,
        s.waiting_clients,
        s.waiting_upstream,
        s.learned.learned,
        s.learned.flows_marked,
        t.enobufs,
        t.lock_waits,
        t.verdict_errors,
        s.bypassed
            .map_or_else(|| "unknown".to_string(), |n| n.to_string()),
        s.rules_loaded,
        s.reloads_ok,
        s.reloads_failed,
    ) + &s.kernel_flows.map_or_else(String::new, |k| {
        format!(
            " kflows_added={} kflows_refreshed={} kflows_removed={} kflows_expired={} \
             kflows_restored={} kflows_adopted={} kflows_dropped={} kflows_failed={} \
             kflows_no_set={} kflows_elements={}",
            k.added,
            k.refreshed,
            k.removed,
            k.expired,
            k.restored,
            k.adopted,
            k.dropped,
            k.failed,
            k.no_set,
            k.elements
        )
    }) + &s.ct_marks.map_or_else(String::new, |c| {
        format!(
            " ct_marks_set={} ct_marks_missed={} ct_marks_dropped={} ct_marks_failed={}",
            c.set, c.missed, c.dropped, c.failed
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory under the system's temporary directory, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let dir = std::env::temp_dir().join(format!("nfqmark-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create a temporary directory");
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn message(r: Result<String, Diagnostic>) -> String {
        r.expect_err("refused").to_string()
    }

    #[test]
    fn rules_files_must_be_regular_files() {
        let dir = TempDir::new("rules-kinds");
        let fifo = dir.0.join("fifo.rules");
        let c = std::ffi::CString::new(fifo.display().to_string()).expect("path");
        // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
        // No writer ever opens the FIFO: a blocking open would hang this test.
        let m = message(read_rules_file(&fifo));
        assert!(m.contains("is a FIFO, not a regular file"), "{m}");
        assert!(m.starts_with(&format!("{}: ", fifo.display())), "{m}");
        assert!(m.contains("(give the path of a rules file"), "{m}");
        let m = message(read_rules_file(Path::new("/dev/zero")));
        assert!(m.contains("is a device"), "{m}");
        let m = message(read_rules_file(&dir.0));
        assert!(m.contains("is a directory"), "{m}");
        let m = message(read_rules_file(&dir.0.join("missing.rules")));
        assert!(m.contains("cannot read the rules file"), "{m}");
        // Through the loader, as `check` and `run` see it: one whole-file diagnostic.
        let diags = load_rules_with(&fifo, &|_: &str| Some(1)).expect_err("a FIFO");
        assert_eq!(diags.len(), 1);
        assert_eq!((diags[0].line, diags[0].col), (0, 0));
    }

    #[test]
    fn rules_files_are_read_up_to_the_size_cap() {
        let dir = TempDir::new("rules-size");
        let ok = dir.0.join("ok.rules");
        std::fs::write(&ok, "default accept\n").expect("write");
        assert_eq!(read_rules_file(&ok).as_deref(), Ok("default accept\n"));
        assert!(load_rules_with(&ok, &|_: &str| Some(1)).is_ok());
        // A sparse file one byte past the cap: refused from its size, never read.
        let big = dir.0.join("big.rules");
        let f = std::fs::File::create(&big).expect("create");
        f.set_len(MAX_RULES_BYTES + 1).expect("grow");
        let m = message(read_rules_file(&big));
        assert!(m.contains("more than the 16 MiB"), "{m}");
        let bad = dir.0.join("latin1.rules");
        std::fs::write(&bad, b"# caf\xe9\ndefault accept\n").expect("write");
        let m = message(read_rules_file(&bad));
        assert!(m.contains("not UTF-8") && m.contains("offset 5"), "{m}");
    }

    #[test]
    fn died_errors_name_the_queue_and_the_cause() {
        let e = Error::Died(Task::Queue(11), End::Failed("receive failed: boom".into()));
        assert_eq!(
            e.to_string(),
            "queue 11: the worker stopped: receive failed: boom; exiting with status 2 so the \
             service manager restarts nfqmark"
        );
        let e = Error::Died(Task::Metrics, End::Panicked("oops".into()));
        assert!(
            e.to_string()
                .starts_with("the metrics endpoint panicked: oops;")
        );
        let e = Error::Died(Task::Queue(3), End::Returned);
        assert!(
            e.to_string()
                .starts_with("queue 3: the worker ended without being asked to;")
        );
    }

    #[test]
    fn supervised_threads_report_how_they_ended() {
        let (tx, rx) = mpsc::channel();
        type Body = fn() -> Result<(), String>;
        let bodies: [(u16, Body); 3] = [
            (1, || Ok(())),
            (2, || Err("receive failed: boom".into())),
            (3, || panic!("bang (expected in this test)")),
        ];
        for (n, body) in bodies {
            let h = supervised(format!("t{n}"), Task::Queue(n), &tx, body).expect("spawn");
            h.join().expect("the wrapper itself never panics");
        }
        let ends: Vec<(Task, End)> = rx
            .try_iter()
            .filter_map(|e| match e {
                Event::Ended(t, end) => Some((t, end)),
                _ => None,
            })
            .collect();
        assert_eq!(
            ends,
            vec![
                (Task::Queue(1), End::Returned),
                (Task::Queue(2), End::Failed("receive failed: boom".into())),
                (
                    Task::Queue(3),
                    End::Panicked("bang (expected in this test)".into())
                ),
            ]
        );
    }

    fn shared_for(queues: &[u16]) -> (RunArgs, Arc<Shared>) {
        use clap::Parser as _;
        let cli = crate::cli::Cli::try_parse_from(["nfqmark", "run"]).expect("arguments");
        let crate::cli::Command::Run(args) = cli.command else {
            panic!("not run");
        };
        let learn = learn_config(&args);
        let shared = Shared::new(engine_config(&args), learn, RuleSet::empty(), queues);
        (args, Arc::new(shared))
    }

    #[test]
    fn a_worker_ending_unasked_ends_the_main_loop_with_its_cause() {
        let (_, shared) = shared_for(&[4, 5]);
        let alive = Alive::new(&[4, 5]);
        alive.set(4, true);
        alive.set(5, true);
        let (tx, rx) = mpsc::channel();
        tx.send(Event::Signal(Signal::Report)).expect("send");
        tx.send(Event::Ended(
            Task::Queue(5),
            End::Failed("receive failed: x".into()),
        ))
        .expect("send");
        let e = serve_events(&rx, &shared, &alive, None).expect_err("a dead worker");
        assert!(
            matches!(e, Error::Died(Task::Queue(5), End::Failed(_))),
            "{e}"
        );
        assert_eq!(alive.dead(), vec![5]);
        // The stop waits for queue 4 only; its normal end is no error.
        tx.send(Event::Ended(Task::Queue(4), End::Returned))
            .expect("send");
        assert!(wait_for_workers(&rx, &alive).is_ok());
        assert_eq!(alive.serving(), Vec::<u16>::new());
    }

    #[test]
    fn a_stop_is_clean_unless_a_worker_fails_on_its_way_out() {
        let (_, shared) = shared_for(&[1]);
        let alive = Alive::new(&[1]);
        alive.set(1, true);
        let (tx, rx) = mpsc::channel();
        tx.send(Event::Signal(Signal::Stop)).expect("send");
        assert!(serve_events(&rx, &shared, &alive, None).is_ok());
        tx.send(Event::Ended(Task::Queue(1), End::Panicked("late".into())))
            .expect("send");
        let e = wait_for_workers(&rx, &alive).expect_err("a panic while stopping");
        assert!(
            e.to_string()
                .starts_with("queue 1: the worker panicked: late;"),
            "{e}"
        );
    }

    #[test]
    fn threads_needed_counts_what_run_starts() {
        let (mut args, _) = shared_for(&[0]);
        assert_eq!(threads_needed(&args), 4);
        args.queues = vec![(0, 3)];
        args.rules = Some(PathBuf::from("x.rules"));
        args.metrics = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 9120)));
        assert_eq!(threads_needed(&args), 9);
        args.ct_marks = crate::cli::CtMarks::On;
        assert_eq!(threads_needed(&args), 10, "with the ctnetlink marks thread");
    }

    #[test]
    fn panic_payloads_become_text() {
        let p = std::panic::catch_unwind(|| panic!("static")).expect_err("panics");
        assert_eq!(panic_text(p.as_ref()), "static");
        let n = 7;
        let p = std::panic::catch_unwind(|| panic!("formatted {n}")).expect_err("panics");
        assert_eq!(panic_text(p.as_ref()), "formatted 7");
    }
}
