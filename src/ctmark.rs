//! Connection marks set over ctnetlink: when nfqmark gives a connection's first packet a mark
//! (a new flow to a learned address in the queue backend, the resolver's TCP SYN paired with a
//! client), it also sets the connection's mark, under `--mark-mask`, over ctnetlink, so the
//! connection keeps the mark (later packets get it back from the connection) even where the
//! firewall's save-mark rule is missing or placed where the queue's verdict skips it. This
//! kernel ignores conntrack-mark verdicts from the queue, so ctnetlink is the direct way.
//!
//! A connection's entry is only in the conntrack table once its first packet has left the last
//! hook (while that packet is queued, ctnetlink answers `ENOENT`: `crate::nfnl`), so the mark is
//! set from a thread of its own after the verdict, trying again a few times within a quarter
//! of a second while the entry is not there yet. It is what the save-mark rule would have done
//! (bits under the mask, from the packet's mark), a moment later: a packet that follows the
//! first one within that moment (the client's ACK of a TCP handshake on a fast LAN) may still
//! miss the mark, so the save-mark rule stays the first line and this the second.
//!
//! Not for the resolver's UDP queries: with conntrack zones taken from the mark, a query's
//! connection is in the zone its mark picks, and a lookup in another zone could find (and
//! re-mark) another client's connection on the same ports. Those are left to zones and the
//! save-mark rule.
//!
//! The workers only hand jobs over without waiting (a full queue drops the job, counted); this
//! module never touches the packet path, and it changes nothing but the marks of connections
//! whose first packet nfqmark marked.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant};

use crate::nfnl::{CtDirection, NfnlSocket, Tuple};
use crate::packet::{self, Proto};
use crate::stats::Counter;

/// When a mark is tried again while the entry is not confirmed yet, counted from the verdict.
const RETRIES: [Duration; 6] = [
    Duration::from_micros(200),
    Duration::from_millis(1),
    Duration::from_millis(3),
    Duration::from_millis(10),
    Duration::from_millis(50),
    Duration::from_millis(250),
];
/// Most jobs waiting for the thread, and most waiting for a retry.
const QUEUE: usize = 4096;
/// How often the thread looks at the stop flag while idle.
const IDLE: Duration = Duration::from_millis(100);

/// Counters of ctnetlink marking.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connection marks set.
    pub set: Counter,
    /// Connections whose entry never showed up within the retries (gone already, or the
    /// packet was dropped later on its way).
    pub missed: Counter,
    /// Jobs dropped: the queue to the thread was full.
    pub dropped: Counter,
    /// Refused by the kernel for another reason than a missing entry.
    pub failed: Counter,
}

/// The counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub set: u64,
    pub missed: u64,
    pub dropped: u64,
    pub failed: u64,
}

impl Stats {
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            set: self.set.get(),
            missed: self.missed.get(),
            dropped: self.dropped.get(),
            failed: self.failed.get(),
        }
    }
}

/// One connection to mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Job {
    tuple: Tuple,
    value: u32,
    mask: u32,
    /// When the packet was decided: retries count from it.
    at: Instant,
}

/// The workers' side: hand a marked first packet over, never waiting.
#[derive(Debug)]
pub struct Handle {
    tx: SyncSender<Job>,
    pub stats: Arc<Stats>,
    /// Bits of the connection's mark set: `--mark-mask`, as the save-mark rule uses.
    mask: u32,
}

impl Handle {
    /// The connection of this packet (its bytes, as queued) is to carry `mark` under the mask.
    /// Packets that are not TCP or UDP are skipped.
    pub fn offer(&self, bytes: &[u8], mark: u32) {
        let Some(tuple) = tuple_of(bytes) else {
            return;
        };
        let job = Job {
            tuple,
            value: mark & self.mask,
            mask: self.mask,
            at: Instant::now(),
        };
        if self.tx.try_send(job).is_err() {
            self.stats.dropped.inc();
        }
    }
}

/// The original-direction tuple of a TCP or UDP packet as queued (before any NAT of its
/// connection's first packet, which is what conntrack files the connection under).
fn tuple_of(bytes: &[u8]) -> Option<Tuple> {
    let p = packet::parse(bytes).ok()?;
    let proto = match p.proto {
        Proto::Tcp => 6,
        Proto::Udp => 17,
        _ => return None,
    };
    Some(Tuple {
        src: p.src,
        dst: p.dst,
        proto,
        src_port: p.sport,
        dst_port: p.dport,
    })
}

/// The thread's state.
pub struct Marker {
    sock: NfnlSocket,
    rx: Receiver<Job>,
    stats: Arc<Stats>,
    /// (when, seq) -> (job, retries done): jobs waiting for their entry.
    waiting: BinaryHeap<Reverse<(Instant, u64, usize)>>,
    jobs: std::collections::HashMap<u64, Job>,
    next: u64,
}

impl std::fmt::Debug for Marker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Marker")
            .field("waiting", &self.waiting.len())
            .finish()
    }
}

/// Open ctnetlink and check that the kernel answers it; `Ok(None)` when it does not (no
/// ctnetlink in this kernel): the save-mark rule alone keeps connection marks then.
pub fn start(mask: u32) -> std::io::Result<Option<(Handle, Marker)>> {
    let mut sock = NfnlSocket::open()?;
    if !sock.conntrack_available()? {
        return Ok(None);
    }
    let (tx, rx) = mpsc::sync_channel(QUEUE);
    let stats = Arc::new(Stats::default());
    Ok(Some((
        Handle {
            tx,
            stats: Arc::clone(&stats),
            mask,
        },
        Marker {
            sock,
            rx,
            stats,
            waiting: BinaryHeap::new(),
            jobs: std::collections::HashMap::new(),
            next: 0,
        },
    )))
}

impl Marker {
    /// Mark connections until `stop` is set. `Err` when the socket fails for good.
    pub fn run(mut self, stop: &AtomicBool) -> std::io::Result<()> {
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            // Retries that are due.
            while let Some(Reverse((due, seq, tries))) = self.waiting.peek().copied() {
                if due > now {
                    break;
                }
                self.waiting.pop();
                if let Some(job) = self.jobs.remove(&seq) {
                    self.attempt(job, tries)?;
                }
            }
            let wait = self
                .waiting
                .peek()
                .map_or(IDLE, |Reverse((due, _, _))| {
                    due.saturating_duration_since(Instant::now())
                })
                .min(IDLE);
            match self.rx.recv_timeout(wait) {
                Ok(job) => {
                    // The packet is on its way: its entry is confirmed within microseconds.
                    self.schedule(job, 0);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        Ok(())
    }

    /// Try to set the mark; when the entry is not there yet, try again later (or give up).
    fn attempt(&mut self, job: Job, tries: usize) -> std::io::Result<()> {
        match self.sock.conntrack_set_mark(
            &job.tuple,
            CtDirection::Original,
            0,
            job.value,
            job.mask,
        ) {
            Ok(true) => self.stats.set.inc(),
            Ok(false) if tries + 1 < RETRIES.len() => self.schedule(job, tries + 1),
            Ok(false) => self.stats.missed.inc(),
            Err(e) if e.raw_os_error().is_some() => {
                self.stats.failed.inc();
                log::debug!("ctnetlink refused a mark for {:?}: {e}", job.tuple);
            }
            Err(e) => {
                log::warn!("ctnetlink: {e}; opening a new socket");
                self.stats.failed.inc();
                self.sock = NfnlSocket::open()?;
            }
        }
        Ok(())
    }

    fn schedule(&mut self, job: Job, tries: usize) {
        if self.jobs.len() >= QUEUE {
            self.stats.dropped.inc();
            return;
        }
        let delay = RETRIES.get(tries).copied().unwrap_or(Duration::ZERO);
        self.next = self.next.wrapping_add(1);
        self.jobs.insert(self.next, job);
        self.waiting
            .push(Reverse((job.at + delay, self.next, tries)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    fn ip(s: &str) -> std::net::IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn tuples_come_from_tcp_and_udp_packets_only() {
        let udp = fixtures::udp(ip("198.18.1.2"), 40_000, ip("198.18.9.81"), 5000, b"x");
        let t = tuple_of(&udp).expect("udp");
        assert_eq!(
            (t.proto, t.src_port, t.dst_port, t.dst),
            (17, 40_000, 5000, ip("198.18.9.81"))
        );
        let syn = fixtures::tcp_syn(ip("2001:db8:1::2"), 40_001, ip("2001:db8:9::81"), 80);
        assert_eq!(
            tuple_of(&syn).map(|t| (t.proto, t.src)),
            Some((6, ip("2001:db8:1::2")))
        );
        assert_eq!(tuple_of(&[0x45, 0, 0]), None, "not a packet");
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let (tx, _rx) = mpsc::sync_channel(1);
        let h = Handle {
            tx,
            stats: Arc::new(Stats::default()),
            mask: 0xff,
        };
        let udp = fixtures::udp(ip("198.18.1.2"), 40_000, ip("198.18.9.81"), 5000, b"x");
        h.offer(&udp, 0x1234);
        h.offer(&udp, 0x1234);
        assert_eq!(h.stats.snapshot().dropped, 1);
    }
}
