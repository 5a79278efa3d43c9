//! NFQUEUE I/O for the workers: the only place that talks to the kernel's packet queue.
//!
//! This module owns binding a queue (through our own netlink module, [`crate::nfnl`]), receiving
//! batches of packets with a timeout, and giving verdicts, batching consecutive "accept,
//! unchanged" verdicts into one message. It decides nothing. We do not use the `nfq` crate: it
//! has no file descriptor to wait on with a timeout (so no clean shutdown), no forced receive
//! buffer and no batch verdicts, and it asserts on kernel messages.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::nfnl::{self, ChecksumState, MsgError, PacketMsg, RecvBuf, Socket, Verdicts};
use crate::types::{Checksum, Conn, Hook, Meta, Verdict};

pub use crate::nfnl::OpenError;

/// How to bind one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueOptions {
    pub num: u16,
    /// Bytes of each packet copied to us (DNS needs whole packets).
    pub copy_range: u16,
    /// Most packets the kernel holds for us before it drops (or, fail-open, accepts) new ones.
    pub max_len: u32,
    /// When the queue is full, the kernel accepts packets instead of dropping them.
    pub fail_open: bool,
    /// Socket receive buffer in bytes (forced past rmem_max where permitted).
    pub rcvbuf: Option<usize>,
    /// Ask the kernel for each packet's conntrack entry ([`Meta::conn`]). A kernel that cannot
    /// (no `CONFIG_NETFILTER_NETLINK_GLUE_CT`) binds the queue without it, and nfqmark says so
    /// once.
    pub conntrack: bool,
}

impl Default for QueueOptions {
    fn default() -> Self {
        QueueOptions {
            num: 0,
            copy_range: u16::MAX,
            max_len: 4096,
            fail_open: true,
            rcvbuf: Some(8 << 20),
            conntrack: false,
        }
    }
}

/// A bound NFQUEUE with its receive buffer.
pub struct Queue {
    sock: Socket,
    /// One buffer per datagram of a burst.
    bufs: Vec<RecvBuf>,
    fail_open: bool,
    /// Consecutive packets that all get "accept, unchanged": answered with one batch verdict.
    run_end: Option<u32>,
    /// Verdicts of the burst being served, sent in one datagram.
    verdicts: Verdicts,
}

/// Metadata of a queued packet, as the engine wants it: the conntrack entry when the kernel
/// sent one with its status, the checksum state always, the source MAC when there is one.
pub fn meta(msg: &PacketMsg<'_>) -> Meta {
    let mut meta = Meta::new(Hook::from_kernel(msg.hook), msg.mark, msg.indev, msg.outdev);
    meta.conn = msg.ct.and_then(|ct| {
        ct.first().map(|first| Conn {
            mark: ct.mark,
            first,
        })
    });
    meta.checksum = match msg.checksum() {
        ChecksumState::Verified => Checksum::Verified,
        ChecksumState::NotReady => Checksum::NotReady,
        ChecksumState::NotVerified => Checksum::NotVerified,
    };
    // The link-layer source, when the packet came over an Ethernet-like link (rules' src-mac).
    meta.src_mac = msg.hwaddr.and_then(|h| h.mac());
    meta
}

/// Set once the kernel has refused conntrack reporting, so the warning is logged once per run.
static CONNTRACK_REFUSED: AtomicBool = AtomicBool::new(false);

fn kernel_verdict(v: Verdict) -> nfnl::Verdict {
    match v {
        Verdict::Accept => nfnl::Verdict::Accept,
        Verdict::Drop => nfnl::Verdict::Drop,
        Verdict::Repeat => nfnl::Verdict::Repeat,
    }
}

/// Add the pending run of unchanged accepts to `verdicts`: a plain verdict for a run of one
/// packet's length is no cheaper, so runs always go as one batch verdict.
fn close_run(verdicts: &mut Verdicts, queue: u16, run_end: &mut Option<u32>) -> io::Result<()> {
    match run_end.take() {
        Some(id) => verdicts.batch(queue, id, nfnl::Verdict::Accept, None),
        None => Ok(()),
    }
}

fn note(served: &mut Served, r: io::Result<()>) {
    if let Err(e) = r {
        served.verdict_errors += 1;
        served.last_error = Some(e);
    }
}

/// What one [`Queue::serve`] call did.
#[derive(Debug, Default)]
pub struct Served {
    /// Messages handled (packets and unreadable messages).
    pub handled: usize,
    /// Verdict messages the kernel refused.
    pub verdict_errors: usize,
    pub last_error: Option<io::Error>,
}

/// One item of a received batch.
pub enum Item<'a> {
    Packet(PacketMsg<'a>),
    /// A message we could not read; `id`, when known, still needs its verdict.
    Unreadable(MsgError),
}

impl Queue {
    pub fn open(opts: &QueueOptions) -> Result<Queue, OpenError> {
        let cfg = nfnl::Config {
            queue: opts.num,
            copy_range: u32::from(opts.copy_range),
            max_len: opts.max_len,
            fail_open: opts.fail_open,
            rcvbuf: opts.rcvbuf,
            gso: false,
            uid_gid: false,
            conntrack: opts.conntrack,
        };
        let sock = Socket::open(&cfg)?;
        if opts.conntrack && !sock.conntrack() && !CONNTRACK_REFUSED.swap(true, Ordering::Relaxed) {
            log::warn!(
                "queue {}: the kernel does not report conntrack entries with queued packets \
                 (built without CONFIG_NETFILTER_NETLINK_GLUE_CT); queueing without them",
                opts.num
            );
        }
        if opts.rcvbuf.is_some() && !sock.rcvbuf_forced() {
            log::warn!(
                "queue {}: could not force the receive buffer past net.core.rmem_max (no \
                 CAP_NET_ADMIN?); using {} bytes",
                opts.num,
                sock.rcvbuf().unwrap_or(0)
            );
        }
        Ok(Queue {
            sock,
            bufs: (0..nfnl::MAX_BURST)
                .map(|_| RecvBuf::new(u32::from(opts.copy_range)))
                .collect(),
            fail_open: opts.fail_open,
            run_end: None,
            verdicts: Verdicts::new(),
        })
    }

    pub fn num(&self) -> u16 {
        self.sock.queue()
    }

    /// Whether packets come with their conntrack entry ([`QueueOptions::conntrack`] asked and
    /// the kernel agreed).
    pub fn conntrack(&self) -> bool {
        self.sock.conntrack()
    }

    /// Wait up to `timeout` for packets and take the whole burst that is waiting in one
    /// system call (up to [`nfnl::MAX_BURST`] datagrams, `recvmmsg`), hand each packet, in
    /// order, to `handle`, which returns the verdict and new mark, and send all verdicts of the
    /// burst in one datagram: runs of "accept, unchanged" as one batch verdict each, other
    /// packets one by one. Two system calls per burst, however many packets it holds. Every
    /// packet received gets its verdict before this returns. `Err` is a receive error (ENOBUFS
    /// among them).
    pub fn serve<F>(&mut self, timeout: Duration, mut handle: F) -> io::Result<Served>
    where
        F: FnMut(Item<'_>) -> (Verdict, Option<u32>),
    {
        let mut served = Served::default();
        let got = self.sock.recv_many(&mut self.bufs, timeout)?;
        if got == 0 {
            return Ok(served);
        }
        let queue = self.sock.queue();
        for buf in self.bufs.iter().take(got) {
            for item in buf.messages() {
                served.handled += 1;
                let (id, verdict, mark) = match item {
                    Ok(msg) => {
                        let id = msg.id;
                        let (v, m) = handle(Item::Packet(msg));
                        (Some(id), v, m)
                    }
                    Err(e) => {
                        let id = e.packet_id();
                        let (v, m) = handle(Item::Unreadable(e));
                        (id, v, m)
                    }
                };
                let Some(id) = id else { continue };
                if verdict == Verdict::Accept && mark.is_none() {
                    self.run_end = Some(id);
                    continue;
                }
                // Close the run first so verdicts take effect in id order.
                let closed = close_run(&mut self.verdicts, queue, &mut self.run_end);
                note(&mut served, closed);
                let one = self
                    .verdicts
                    .verdict(queue, id, kernel_verdict(verdict), mark);
                note(&mut served, one);
            }
        }
        let closed = close_run(&mut self.verdicts, queue, &mut self.run_end);
        note(&mut served, closed);
        let sent = self.sock.send_verdicts(&mut self.verdicts);
        note(&mut served, sent);
        Ok(served)
    }

    /// Stop taking packets: with fail-open, new packets are accepted by the kernel from now on
    /// (unmarked) instead of queued, so the worker can drain what waits and unbind without the
    /// kernel dropping anything. Fail-closed queues keep queueing until unbound.
    pub fn stop_taking(&self) -> io::Result<()> {
        if self.fail_open {
            self.sock.set_max_len(0)
        } else {
            Ok(())
        }
    }

    /// Unbind the queue (the socket closes when dropped).
    pub fn unbind(&self) -> io::Result<()> {
        self.sock.unbind()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nfnl::Ct;

    fn msg(ct: Option<Ct>, skb_info: u32) -> PacketMsg<'static> {
        PacketMsg {
            id: 1,
            hw_protocol: 0x0800,
            hook: 0,
            mark: 7,
            indev: 2,
            outdev: 0,
            payload: &[],
            orig_len: None,
            uid: None,
            gid: None,
            skb_info,
            ct,
            hwaddr: None,
        }
    }

    #[test]
    fn meta_carries_the_conntrack_entry_and_the_checksum_state() {
        let plain = meta(&msg(None, 0));
        assert_eq!(plain, Meta::new(Hook::PreRouting, 7, 2, 0));
        let new = Ct {
            mark: 0x2a,
            status: Some(0),
            ..Ct::default()
        };
        assert_eq!(
            meta(&msg(Some(new), 0)).conn,
            Some(Conn {
                mark: 0x2a,
                first: true
            })
        );
        let confirmed = Ct {
            status: Some(1 << 3),
            ..new
        };
        assert_eq!(
            meta(&msg(Some(confirmed), 0)).conn.map(|c| c.first),
            Some(false)
        );
        let unknown = Ct {
            status: None,
            ..new
        };
        assert_eq!(
            meta(&msg(Some(unknown), 0)).conn,
            None,
            "no status: no entry"
        );
        assert_eq!(meta(&msg(None, 1)).checksum, Checksum::NotReady);
        assert_eq!(meta(&msg(None, 4)).checksum, Checksum::NotVerified);
        assert_eq!(meta(&msg(None, 2)).checksum, Checksum::Verified);
    }
}
