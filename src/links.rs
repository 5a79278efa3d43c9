//! The link table: which interface name each interface index has, right now, as rtnetlink says,
//! kept current by link notifications (RTNLGRP_LINK) on a thread of its own.
//!
//! Rules name interfaces (`iif lan0`, `oif ppp+`); the queue gives interface indexes. An index
//! changes when an interface is deleted and created again (a PPP or WireGuard link going down and
//! up), and a name can exist before or after the rules load. So nfqmark matches by name, through
//! this table: a full dump at start, then every link created, renamed or deleted, in order. Who
//! cares about the table (a rule set's interface binding, `crate::rules`) subscribes a
//! [`LinkWatcher`] and is told the whole table after each change, on the table's thread; the
//! packet path never reads this module.
//!
//! This module owns the rtnetlink link messages (the `RTM_GETLINK` dump request; `RTM_NEWLINK`
//! and `RTM_DELLINK` as dump replies and notifications), parsed by a pure function
//! ([`read_messages`], tested on byte fixtures), and the two sockets that carry them ([`watch`],
//! [`dump`]); only the socket code makes system calls. It must never panic on what the kernel
//! sends, never block a caller of [`Links`] on the kernel (the thread that reads the socket is
//! the only one that waits), and never lose a change silently: a receive queue overflow
//! (`ENOBUFS`) or a message it cannot read is followed by a full dump.
//!
//! Kernel facts this relies on (net/core/rtnetlink.c, net/bridge/br_netlink.c):
//! - every change to a link (created, renamed, up/down, MTU ...) is one `RTM_NEWLINK` to
//!   RTNLGRP_LINK with the whole link, its name (`IFLA_IFNAME`) included; a deleted link (or
//!   one moved to another namespace) is one `RTM_DELLINK`;
//! - the bridge sends `RTM_NEWLINK`/`RTM_DELLINK` with family `AF_BRIDGE` to the same group
//!   about a port's bridge state: a `RTM_DELLINK` there means "left the bridge", not "deleted",
//!   so only family `AF_UNSPEC` messages are read;
//! - a dump whose table changed while it ran has `NLM_F_DUMP_INTR` on its messages: the dump is
//!   then done again.

use std::collections::BTreeMap;
use std::io;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Kernel ABI (<linux/netlink.h>, <linux/rtnetlink.h>, <linux/if_link.h>). Netlink header and
// `ifinfomsg` fields are host order.
// ---------------------------------------------------------------------------------------------

/// `sizeof(struct nlmsghdr)`: u32 len, u16 type, u16 flags, u32 seq, u32 pid.
const NLMSG_HDRLEN: usize = 16;
/// `sizeof(struct ifinfomsg)`: u8 family, u8 pad, u16 type, i32 index, u32 flags, u32 change.
const IFINFOMSG_LEN: usize = 16;
/// `sizeof(struct rtattr)`: u16 len (header included), u16 type.
const RTA_HDRLEN: usize = 4;
/// Messages and attributes start on 4-byte boundaries.
const ALIGNTO: usize = 4;
const NLMSG_NOOP: u16 = 1;
/// `struct nlmsgerr`: i32 negative errno (0 is an acknowledgement), then the request's header.
const NLMSG_ERROR: u16 = 2;
/// End of a dump; its payload is an i32, negative errno when the dump failed.
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
/// `NLM_F_ROOT | NLM_F_MATCH`: every link.
const NLM_F_DUMP: u16 = 0x300;
/// The table changed while the dump ran: its replies may be inconsistent.
const NLM_F_DUMP_INTR: u16 = 0x10;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
/// `ifinfomsg.ifi_family` of plain link messages (the bridge uses `AF_BRIDGE`).
const AF_UNSPEC: u8 = 0;
/// The link's name, NUL-terminated.
const IFLA_IFNAME: u16 = 3;
/// Attribute type bits without `NLA_F_NESTED` and `NLA_F_NET_BYTEORDER`.
const NLA_TYPE_MASK: u16 = 0x3fff;
/// `RTMGRP_LINK`: the legacy group bit of RTNLGRP_LINK (group 1).
const RTMGRP_LINK: u32 = 1;

/// One receive buffer. A link message without VF information is 1-2 KiB; the kernel sizes a
/// dump's datagrams to the reader's buffer (up to 32 KiB by default).
const RECV_BUF: usize = 64 << 10;
/// Receive buffer of the notification socket: a burst of link changes (a hundred containers
/// starting) fits; an overflow costs one dump, nothing is lost.
const EVENTS_RCVBUF: usize = 1 << 20;
/// Longest wait for one datagram of a dump.
const DUMP_WAIT: Duration = Duration::from_secs(5);
/// Dumps interrupted by concurrent changes are done again, at most this many times in a row.
const DUMP_TRIES: usize = 8;
/// How often [`Watcher::run`] looks at its stop condition.
const POLL: Duration = Duration::from_millis(500);

// ---------------------------------------------------------------------------------------------
// The table.
// ---------------------------------------------------------------------------------------------

/// Every link of a namespace at one moment: index -> name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkMap(BTreeMap<u32, String>);

impl LinkMap {
    pub fn new() -> LinkMap {
        LinkMap::default()
    }

    /// The name of link `index`.
    pub fn name(&self, index: u32) -> Option<&str> {
        self.0.get(&index).map(String::as_str)
    }

    /// The index of the link called `name`.
    pub fn index(&self, name: &str) -> Option<u32> {
        self.0.iter().find(|(_, n)| *n == name).map(|(i, _)| *i)
    }

    /// (index, name) of every link, by index.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &str)> {
        self.0.iter().map(|(i, n)| (*i, n.as_str()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Apply one change; true when the table changed.
    pub fn apply(&mut self, event: &LinkEvent) -> bool {
        match event {
            LinkEvent::New { index, name } => {
                if self.name(*index) == Some(name.as_str()) {
                    return false;
                }
                self.0.insert(*index, name.clone());
                true
            }
            LinkEvent::Gone { index } => self.0.remove(index).is_some(),
        }
    }
}

impl FromIterator<(u32, String)> for LinkMap {
    fn from_iter<I: IntoIterator<Item = (u32, String)>>(iter: I) -> LinkMap {
        LinkMap(iter.into_iter().collect())
    }
}

/// A change to the table, as one link message says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// Link `index` exists and is called `name` (created, renamed, or any other change).
    New { index: u32, name: String },
    /// Link `index` is gone (deleted, or moved to another namespace).
    Gone { index: u32 },
}

/// Told the whole table after every change (and once when it subscribes), on the thread that
/// changed it. It must not call back into [`Links`].
pub trait LinkWatcher: Send + Sync {
    fn links_changed(&self, links: &LinkMap);
}

/// The link table of the namespace nfqmark runs in, shared by whoever reads or follows it.
/// [`watch`] makes one kept current by the kernel; [`Links::new`] one that changes only when
/// told (tests).
#[derive(Default)]
pub struct Links {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    map: LinkMap,
    watchers: Vec<Weak<dyn LinkWatcher>>,
    /// Changes so far (a dump that changed anything counts once).
    changes: u64,
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.lock();
        f.debug_struct("Links")
            .field("map", &inner.map)
            .field("watchers", &inner.watchers.len())
            .field("changes", &inner.changes)
            .finish()
    }
}

impl Links {
    pub fn new(map: LinkMap) -> Links {
        Links {
            inner: Mutex::new(Inner {
                map,
                ..Inner::default()
            }),
        }
    }

    /// The table as it is now.
    pub fn snapshot(&self) -> LinkMap {
        self.lock().map.clone()
    }

    /// How many times the table has changed.
    pub fn changes(&self) -> u64 {
        self.lock().changes
    }

    /// Tell `watcher` the table now and after every change, for as long as it lives (the table
    /// keeps only a weak reference).
    pub fn subscribe(&self, watcher: &Arc<dyn LinkWatcher>) {
        let mut inner = self.lock();
        inner.watchers.retain(|w| w.strong_count() > 0);
        inner.watchers.push(Arc::downgrade(watcher));
        watcher.links_changed(&inner.map);
    }

    /// Apply changes in order; watchers are told once, if anything changed. True when it did.
    pub fn apply(&self, events: &[LinkEvent]) -> bool {
        let mut inner = self.lock();
        let mut changed = false;
        for event in events {
            let before = match event {
                LinkEvent::New { index, .. } | LinkEvent::Gone { index } => {
                    inner.map.name(*index).map(str::to_string)
                }
            };
            if inner.map.apply(event) {
                changed = true;
                log_change(before.as_deref(), event);
            }
        }
        if changed {
            notify(&mut inner);
        }
        changed
    }

    /// Replace the whole table (after a dump); watchers are told if anything changed.
    pub fn replace(&self, map: LinkMap) -> bool {
        let mut inner = self.lock();
        if inner.map == map {
            return false;
        }
        log::debug!(
            "link table: {} links after a full dump (was {})",
            map.len(),
            inner.map.len()
        );
        inner.map = map;
        notify(&mut inner);
        true
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn notify(inner: &mut Inner) {
    inner.changes += 1;
    inner.watchers.retain(|w| w.strong_count() > 0);
    for w in &inner.watchers {
        if let Some(w) = w.upgrade() {
            w.links_changed(&inner.map);
        }
    }
}

fn log_change(before: Option<&str>, event: &LinkEvent) {
    match (before, event) {
        (None, LinkEvent::New { index, name }) => {
            log::debug!("interface {name} (index {index}) appeared")
        }
        (Some(old), LinkEvent::New { index, name }) => {
            log::debug!("interface {old} (index {index}) is now called {name}")
        }
        (Some(old), LinkEvent::Gone { index }) => {
            log::debug!("interface {old} (index {index}) is gone")
        }
        (None, LinkEvent::Gone { .. }) => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Wire format: pure.
// ---------------------------------------------------------------------------------------------

/// What a datagram said besides link changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Status {
    /// The dump ended (`NLMSG_DONE`).
    pub done: bool,
    /// A message carried `NLM_F_DUMP_INTR`: the dump must be done again.
    pub interrupted: bool,
    /// An error the kernel reported (a positive errno).
    pub error: Option<i32>,
}

fn align(n: usize) -> usize {
    n.div_ceil(ALIGNTO) * ALIGNTO
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    let bytes = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_ne_bytes([*bytes.first()?, *bytes.get(1)?]))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    let bytes: [u8; 4] = b.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_ne_bytes(bytes))
}

/// Read every message of one datagram, appending link changes to `events` in order. `Err` for a
/// datagram whose framing is broken (what was read before stays in `events`).
pub fn read_messages(buf: &[u8], events: &mut Vec<LinkEvent>) -> Result<Status, &'static str> {
    let mut status = Status::default();
    let mut rest = buf;
    while !rest.is_empty() {
        if rest.len() < NLMSG_HDRLEN {
            return Err("netlink header cut short");
        }
        let len = u32_at(rest, 0).ok_or("netlink header cut short")? as usize;
        let kind = u16_at(rest, 4).ok_or("netlink header cut short")?;
        let flags = u16_at(rest, 6).ok_or("netlink header cut short")?;
        if len < NLMSG_HDRLEN || len > rest.len() {
            return Err("netlink message length out of bounds");
        }
        let body = rest.get(NLMSG_HDRLEN..len).unwrap_or_default();
        status.interrupted |= flags & NLM_F_DUMP_INTR != 0;
        match kind {
            RTM_NEWLINK | RTM_DELLINK => {
                if let Some(event) = read_link(kind, body)? {
                    events.push(event);
                }
            }
            NLMSG_DONE => {
                status.done = true;
                // The dump's own error, when it failed (older kernels send no payload).
                if let Some(code) = u32_at(body, 0).map(|c| c as i32).filter(|c| *c < 0) {
                    status.error = Some(code.saturating_neg());
                }
            }
            NLMSG_ERROR => {
                let code = u32_at(body, 0).ok_or("error message cut short")? as i32;
                if code < 0 {
                    status.error = Some(code.saturating_neg());
                }
            }
            NLMSG_NOOP => {}
            _ => {}
        }
        rest = rest.get(align(len).min(rest.len())..).unwrap_or_default();
    }
    Ok(status)
}

/// One `RTM_NEWLINK`/`RTM_DELLINK` body; `None` for messages about something else (another
/// family, a new link without a name).
fn read_link(kind: u16, body: &[u8]) -> Result<Option<LinkEvent>, &'static str> {
    if body.len() < IFINFOMSG_LEN {
        return Err("link message shorter than its header");
    }
    if body.first() != Some(&AF_UNSPEC) {
        return Ok(None);
    }
    let index = u32_at(body, 4).ok_or("link message shorter than its header")? as i32;
    let Ok(index) = u32::try_from(index) else {
        return Err("link message with a negative index");
    };
    if index == 0 {
        return Err("link message with index 0");
    }
    if kind == RTM_DELLINK {
        return Ok(Some(LinkEvent::Gone { index }));
    }
    let mut attrs = body.get(IFINFOMSG_LEN..).unwrap_or_default();
    while !attrs.is_empty() {
        let len = u16_at(attrs, 0).ok_or("attribute header cut short")? as usize;
        let typ = u16_at(attrs, 2).ok_or("attribute header cut short")? & NLA_TYPE_MASK;
        if len < RTA_HDRLEN || len > attrs.len() {
            return Err("attribute length out of bounds");
        }
        if typ == IFLA_IFNAME {
            let value = attrs.get(RTA_HDRLEN..len).unwrap_or_default();
            let name = value.split(|b| *b == 0).next().unwrap_or_default();
            if name.is_empty() {
                return Err("empty interface name");
            }
            return Ok(Some(LinkEvent::New {
                index,
                name: String::from_utf8_lossy(name).into_owned(),
            }));
        }
        attrs = attrs.get(align(len).min(attrs.len())..).unwrap_or_default();
    }
    Ok(None)
}

/// `RTM_GETLINK` with `NLM_F_DUMP`: every link, family `AF_UNSPEC`.
pub fn dump_request(seq: u32) -> [u8; NLMSG_HDRLEN + IFINFOMSG_LEN] {
    let mut req = [0u8; NLMSG_HDRLEN + IFINFOMSG_LEN];
    let len = (NLMSG_HDRLEN + IFINFOMSG_LEN) as u32;
    let fields: [(usize, &[u8]); 4] = [
        (0, &len.to_ne_bytes()),
        (4, &RTM_GETLINK.to_ne_bytes()),
        (6, &(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes()),
        (8, &seq.to_ne_bytes()),
    ];
    for (at, bytes) in fields {
        if let Some(slot) = req.get_mut(at..at + bytes.len()) {
            slot.copy_from_slice(bytes);
        }
    }
    // ifinfomsg: all zero (AF_UNSPEC, any index).
    req
}

// ---------------------------------------------------------------------------------------------
// Sockets: the only system calls.
// ---------------------------------------------------------------------------------------------

/// A NETLINK_ROUTE socket, subscribed to `groups`.
struct RtSocket {
    fd: OwnedFd,
}

impl RtSocket {
    fn open(groups: u32, rcvbuf: Option<usize>) -> io::Result<RtSocket> {
        // SAFETY: socket(2) with constant arguments; the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a descriptor we just opened and own alone.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        if let Some(size) = rcvbuf {
            let size = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
            // SAFETY: `size` is a valid c_int for the duration of the call, its length given.
            let rc = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUF,
                    (&size as *const libc::c_int).cast(),
                    mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        // SAFETY: sockaddr_nl is plain data; all-zero is a valid value before we fill it.
        let mut addr: libc::sockaddr_nl = unsafe { mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups = groups;
        // SAFETY: `addr` is a valid sockaddr_nl for the duration of the call, its size given.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(RtSocket { fd })
    }

    fn send(&self, buf: &[u8]) -> io::Result<()> {
        // SAFETY: the kernel reads `buf.len()` bytes from a live slice. Unbound destination:
        // netlink sends to the kernel.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// One datagram into `buf`, waiting at most `wait`: `Ok(None)` when nothing came. A
    /// datagram larger than `buf` is an error (`EMSGSIZE`): its messages are lost.
    fn recv(&self, buf: &mut [u8], wait: Duration) -> io::Result<Option<usize>> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(wait.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
        if ready < 0 {
            return Err(io::Error::last_os_error());
        }
        if ready == 0 {
            return Ok(None);
        }
        // SAFETY: the kernel writes at most `buf.len()` bytes into a live, exclusive slice;
        // MSG_TRUNC makes it return the datagram's real length.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_TRUNC | libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(None),
                _ => Err(e),
            };
        }
        let n = n as usize;
        if n > buf.len() {
            return Err(io::Error::from_raw_os_error(libc::EMSGSIZE));
        }
        Ok(Some(n))
    }
}

/// Every link, read from the kernel through `sock` (bound to no group).
fn dump_on(sock: &RtSocket, buf: &mut [u8], seq: &mut u32) -> io::Result<LinkMap> {
    for _ in 0..DUMP_TRIES {
        *seq = seq.wrapping_add(1);
        sock.send(&dump_request(*seq))?;
        let mut events = Vec::new();
        let mut interrupted = false;
        let deadline = Instant::now() + DUMP_WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(n) = sock.recv(buf, left)? else {
                if left.is_zero() {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the kernel did not finish the link dump within 5 s",
                    ));
                }
                continue;
            };
            let status = read_messages(buf.get(..n).unwrap_or_default(), &mut events)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            if let Some(errno) = status.error {
                return Err(io::Error::from_raw_os_error(errno));
            }
            interrupted |= status.interrupted;
            if status.done {
                break;
            }
        }
        if !interrupted {
            let mut map = LinkMap::new();
            for e in &events {
                map.apply(e);
            }
            return Ok(map);
        }
    }
    Err(io::Error::other(format!(
        "the link dump was interrupted by changes {DUMP_TRIES} times in a row"
    )))
}

/// Every link of the calling thread's namespace, once (for `nfqmark check`).
pub fn dump() -> io::Result<LinkMap> {
    let sock = RtSocket::open(0, None)?;
    let mut buf = vec![0u8; RECV_BUF];
    dump_on(&sock, &mut buf, &mut 0)
}

/// Reads link notifications and applies them to its table; made by [`watch`].
pub struct Watcher {
    events: RtSocket,
    dumper: RtSocket,
    links: Arc<Links>,
    buf: Vec<u8>,
    seq: u32,
}

/// A link table of the calling thread's namespace, filled by a full dump, and the [`Watcher`]
/// that keeps it current once run (on a thread of its own). The notification socket is
/// subscribed before the dump, so no change between the two is missed: changes queued meanwhile
/// are applied after the dump, in order, and converge on the kernel's table.
pub fn watch() -> io::Result<(Arc<Links>, Watcher)> {
    let events = RtSocket::open(RTMGRP_LINK, Some(EVENTS_RCVBUF))?;
    let dumper = RtSocket::open(0, None)?;
    let mut buf = vec![0u8; RECV_BUF];
    let mut seq = 0;
    let map = dump_on(&dumper, &mut buf, &mut seq)?;
    let links = Arc::new(Links::new(map));
    Ok((
        Arc::clone(&links),
        Watcher {
            events,
            dumper,
            links,
            buf,
            seq,
        },
    ))
}

impl Watcher {
    /// Apply link notifications until `stop` says so (looked at every half second). A receive
    /// queue overflow, a datagram too large or a message it cannot read is followed by a full
    /// dump. `Err` when the socket fails otherwise or a dump fails: the table can no longer be
    /// kept current.
    pub fn run(mut self, stop: &dyn Fn() -> bool) -> io::Result<()> {
        let mut events = Vec::new();
        while !stop() {
            let got = match self.events.recv(&mut self.buf, POLL) {
                Ok(got) => got,
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOBUFS | libc::EMSGSIZE)) => {
                    log::warn!("link notifications lost ({e}); reading the whole table again");
                    self.resync()?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let Some(n) = got else { continue };
            events.clear();
            let read = read_messages(self.buf.get(..n).unwrap_or_default(), &mut events);
            self.links.apply(&events);
            if let Err(e) = read {
                log::warn!("unreadable link notification ({e}); reading the whole table again");
                self.resync()?;
            }
        }
        Ok(())
    }

    fn resync(&mut self) -> io::Result<()> {
        let map = dump_on(&self.dumper, &mut self.buf, &mut self.seq)?;
        self.links.replace(map);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One netlink message: header (type, flags) and body, padded to 4 bytes.
    fn nlmsg(kind: u16, flags: u16, body: &[u8]) -> Vec<u8> {
        let len = (NLMSG_HDRLEN + body.len()) as u32;
        let mut m = Vec::new();
        m.extend_from_slice(&len.to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&flags.to_ne_bytes());
        m.extend_from_slice(&7u32.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(body);
        while m.len() % 4 != 0 {
            m.push(0);
        }
        m
    }

    fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((RTA_HDRLEN + value.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(value);
        while a.len() % 4 != 0 {
            a.push(0);
        }
        a
    }

    /// An `ifinfomsg` of `family` for `index`, then attributes.
    fn link(family: u8, index: i32, attrs: &[Vec<u8>]) -> Vec<u8> {
        let mut b = vec![family, 0, 1, 0];
        b.extend_from_slice(&index.to_ne_bytes());
        b.extend_from_slice(&0x1003u32.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        for a in attrs {
            b.extend_from_slice(a);
        }
        b
    }

    fn new_link(index: i32, name: &str) -> Vec<u8> {
        let mut n = name.as_bytes().to_vec();
        n.push(0);
        nlmsg(
            RTM_NEWLINK,
            0,
            &link(
                AF_UNSPEC,
                index,
                &[attr(4, &1500u32.to_ne_bytes()), attr(IFLA_IFNAME, &n)],
            ),
        )
    }

    fn read(buf: &[u8]) -> (Result<Status, &'static str>, Vec<LinkEvent>) {
        let mut events = Vec::new();
        let r = read_messages(buf, &mut events);
        (r, events)
    }

    fn new(index: u32, name: &str) -> LinkEvent {
        LinkEvent::New {
            index,
            name: name.to_string(),
        }
    }

    #[test]
    fn new_and_deleted_links_are_read_in_order() {
        let mut buf = new_link(2, "lan0");
        buf.extend(new_link(7, "ppp0"));
        buf.extend(nlmsg(RTM_DELLINK, 0, &link(AF_UNSPEC, 7, &[])));
        let (r, events) = read(&buf);
        assert_eq!(r, Ok(Status::default()));
        assert_eq!(
            events,
            vec![new(2, "lan0"), new(7, "ppp0"), LinkEvent::Gone { index: 7 }]
        );
    }

    #[test]
    fn bridge_port_messages_are_not_link_changes() {
        // AF_BRIDGE (7): "port 3 left the bridge" must not delete link 3.
        let mut buf = nlmsg(RTM_DELLINK, 0, &link(7, 3, &[]));
        buf.extend(nlmsg(
            RTM_NEWLINK,
            0,
            &link(7, 3, &[attr(IFLA_IFNAME, b"veth9\0")]),
        ));
        let (r, events) = read(&buf);
        assert_eq!(r, Ok(Status::default()));
        assert!(events.is_empty(), "{events:?}");
    }

    #[test]
    fn dump_end_interruption_and_errors_are_reported() {
        let mut buf = nlmsg(
            RTM_NEWLINK,
            NLM_F_DUMP_INTR,
            &link(AF_UNSPEC, 1, &[attr(IFLA_IFNAME, b"lo\0")]),
        );
        buf.extend(nlmsg(NLMSG_DONE, 0, &0i32.to_ne_bytes()));
        let (r, events) = read(&buf);
        assert_eq!(
            r,
            Ok(Status {
                done: true,
                interrupted: true,
                error: None
            })
        );
        assert_eq!(events, vec![new(1, "lo")]);
        let (r, _) = read(&nlmsg(NLMSG_DONE, 0, &(-16i32).to_ne_bytes()));
        assert_eq!(r.map(|s| s.error), Ok(Some(16)));
        let (r, _) = read(&nlmsg(NLMSG_ERROR, 0, &(-1i32).to_ne_bytes()));
        assert_eq!(r.map(|s| s.error), Ok(Some(1)));
        // An acknowledgement is no error; an old kernel's DONE without a payload is an end.
        let (r, _) = read(&nlmsg(NLMSG_ERROR, 0, &0i32.to_ne_bytes()));
        assert_eq!(r, Ok(Status::default()));
        let (r, _) = read(&nlmsg(NLMSG_DONE, 0, &[]));
        assert_eq!(r.map(|s| s.done), Ok(true));
    }

    #[test]
    fn broken_framing_is_an_error_after_what_was_read() {
        let mut buf = new_link(2, "lan0");
        buf.extend_from_slice(&[40, 0, 0, 0, 16, 0]);
        let (r, events) = read(&buf);
        assert_eq!(r, Err("netlink header cut short"));
        assert_eq!(events, vec![new(2, "lan0")]);
        let mut long = new_link(2, "lan0");
        long[0] = 255;
        assert_eq!(read(&long).0, Err("netlink message length out of bounds"));
        let short = nlmsg(RTM_NEWLINK, 0, &[0; 8]);
        assert_eq!(read(&short).0, Err("link message shorter than its header"));
        let bad_attr = nlmsg(
            RTM_NEWLINK,
            0,
            &link(AF_UNSPEC, 2, &[vec![200, 0, 3, 0, b'x', 0, 0, 0]]),
        );
        assert_eq!(read(&bad_attr).0, Err("attribute length out of bounds"));
        let negative = nlmsg(RTM_DELLINK, 0, &link(AF_UNSPEC, -4, &[]));
        assert_eq!(read(&negative).0, Err("link message with a negative index"));
        let zero = nlmsg(RTM_DELLINK, 0, &link(AF_UNSPEC, 0, &[]));
        assert_eq!(read(&zero).0, Err("link message with index 0"));
        let unnamed = nlmsg(
            RTM_NEWLINK,
            0,
            &link(AF_UNSPEC, 2, &[attr(IFLA_IFNAME, b"\0")]),
        );
        assert_eq!(read(&unnamed).0, Err("empty interface name"));
    }

    #[test]
    fn names_without_a_nul_and_links_without_a_name() {
        let buf = nlmsg(
            RTM_NEWLINK,
            0,
            &link(AF_UNSPEC, 5, &[attr(IFLA_IFNAME, b"wg0")]),
        );
        assert_eq!(read(&buf).1, vec![new(5, "wg0")]);
        let buf = nlmsg(RTM_NEWLINK, 0, &link(AF_UNSPEC, 5, &[attr(4, &[0; 4])]));
        assert_eq!(read(&buf), (Ok(Status::default()), vec![]));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut seed = 0x1234_5678_9abc_def0u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let good = {
            let mut b = new_link(2, "lan0");
            b.extend(nlmsg(RTM_DELLINK, 0, &link(AF_UNSPEC, 2, &[])));
            b.extend(nlmsg(NLMSG_DONE, 0, &0i32.to_ne_bytes()));
            b
        };
        for _ in 0..20_000 {
            let mut b = good.clone();
            for _ in 0..1 + next() % 4 {
                let i = (next() as usize) % b.len();
                b[i] = next() as u8;
            }
            let cut = (next() as usize) % (b.len() + 1);
            let _ = read(&b[..cut]);
            let _ = read(&b);
        }
    }

    #[test]
    fn the_dump_request_asks_for_every_link() {
        let req = dump_request(0x0102_0304);
        assert_eq!(u32_at(&req, 0), Some(32));
        assert_eq!(u16_at(&req, 4), Some(RTM_GETLINK));
        assert_eq!(u16_at(&req, 6), Some(0x301));
        assert_eq!(u32_at(&req, 8), Some(0x0102_0304));
        assert!(req[12..].iter().all(|b| *b == 0));
    }

    /// Records every table it is told.
    #[derive(Default)]
    struct Seen(Mutex<Vec<Vec<(u32, String)>>>);

    impl LinkWatcher for Seen {
        fn links_changed(&self, links: &LinkMap) {
            let table = links.iter().map(|(i, n)| (i, n.to_string())).collect();
            self.0.lock().unwrap_or_else(|p| p.into_inner()).push(table);
        }
    }

    impl Seen {
        fn tables(&self) -> Vec<Vec<(u32, String)>> {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
        }
    }

    fn table(pairs: &[(u32, &str)]) -> Vec<(u32, String)> {
        pairs.iter().map(|(i, n)| (*i, n.to_string())).collect()
    }

    #[test]
    fn watchers_see_the_table_now_and_after_each_change() {
        let links = Links::new([(1, "lo".to_string())].into_iter().collect());
        let seen = Arc::new(Seen::default());
        let watcher: Arc<dyn LinkWatcher> = seen.clone();
        links.subscribe(&watcher);
        // Created, renamed, then deleted and created again with a new index.
        assert!(links.apply(&[new(4, "ppp0")]));
        assert!(links.apply(&[new(4, "wan0")]));
        assert!(links.apply(&[LinkEvent::Gone { index: 4 }, new(5, "wan0")]));
        // Nothing new: no call.
        assert!(!links.apply(&[new(5, "wan0"), LinkEvent::Gone { index: 9 }]));
        assert!(!links.replace(links.snapshot()));
        assert!(links.replace([(1, "lo".to_string())].into_iter().collect()));
        assert_eq!(
            seen.tables(),
            vec![
                table(&[(1, "lo")]),
                table(&[(1, "lo"), (4, "ppp0")]),
                table(&[(1, "lo"), (4, "wan0")]),
                table(&[(1, "lo"), (5, "wan0")]),
                table(&[(1, "lo")]),
            ]
        );
        assert_eq!(links.changes(), 4);
        // A watcher that is gone is told nothing and forgotten.
        drop(watcher);
        drop(seen);
        assert!(links.apply(&[new(6, "wg0")]));
        assert_eq!(links.snapshot().index("wg0"), Some(6));
        assert_eq!(links.snapshot().name(1), Some("lo"));
    }
}
