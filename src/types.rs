//! The shared vocabulary: what the kernel tells us about a queued packet ([`Meta`], [`Hook`],
//! [`Direction`]), what we answer ([`Verdict`]) and marks under a mask ([`Mark`]).
//!
//! This module is a leaf: it uses nothing from the crate, so the rules, the engine, the pairing
//! table and the queue can all speak it without importing each other.

/// The netfilter hook a packet was queued from (NFQUEUE tells us), kept as data when unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hook {
    PreRouting,
    Input,
    Forward,
    Output,
    PostRouting,
    Other(u8),
}

impl Hook {
    /// From the kernel's `NF_INET_*` numbering.
    pub fn from_kernel(n: u8) -> Hook {
        match n {
            0 => Hook::PreRouting,
            1 => Hook::Input,
            2 => Hook::Forward,
            3 => Hook::Output,
            4 => Hook::PostRouting,
            n => Hook::Other(n),
        }
    }
}

/// Which way a packet goes relative to this host, derived from hook and interfaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Arriving for this host, or not yet routed (PREROUTING, INPUT).
    Incoming,
    /// Sent by a process on this host (OUTPUT, or POSTROUTING with no input interface).
    LocalOut,
    /// Routed through this host.
    Forwarded,
}

/// What the kernel tells us about a queued packet besides its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub hook: Hook,
    /// The packet's firewall mark when it was queued.
    pub mark: u32,
    /// Input interface index, 0 when none (locally generated).
    pub indev: u32,
    /// Output interface index, 0 when none (not routed yet, or for this host).
    pub outdev: u32,
    /// The packet's connection as conntrack saw it, when the queue reports it (packets queued
    /// before conntrack, in the raw table, have none yet).
    pub conn: Option<Conn>,
    /// What the kernel knows of the transport checksum.
    pub checksum: Checksum,
    /// The source MAC address, for packets that arrived over an Ethernet-like link (the queue
    /// reports the link-layer source); none for packets this host sends, or from other links.
    pub src_mac: Option<[u8; 6]>,
}

/// A packet's conntrack entry, as the queue reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conn {
    /// The connection's mark.
    pub mark: u32,
    /// The entry is not confirmed yet: this packet is the connection's first, and its route and
    /// NAT binding are still to be chosen. A mark set now starts the connection with it.
    pub first: bool,
}

/// What the kernel says about a packet's transport checksum (NFQA_SKB_INFO).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checksum {
    /// Checked already (by the kernel or the network card), or nothing to check.
    Verified,
    /// Not computed yet: the packet was made on this host and the checksum is filled in later.
    NotReady,
    /// Nobody has checked it yet; the receiving socket will, and drops the packet if it is bad.
    NotVerified,
}

impl Meta {
    /// Metadata with no conntrack information, no source MAC and a checksum the kernel has
    /// verified.
    pub const fn new(hook: Hook, mark: u32, indev: u32, outdev: u32) -> Meta {
        Meta {
            hook,
            mark,
            indev,
            outdev,
            conn: None,
            checksum: Checksum::Verified,
            src_mac: None,
        }
    }

    pub fn direction(&self) -> Direction {
        match self.hook {
            Hook::PreRouting | Hook::Input => Direction::Incoming,
            Hook::Output => Direction::LocalOut,
            Hook::PostRouting if self.indev == 0 => Direction::LocalOut,
            Hook::Forward | Hook::PostRouting | Hook::Other(_) => Direction::Forwarded,
        }
    }
}

/// Verdicts nfqmark gives. `Repeat` sends the packet through the hook again (with its new mark),
/// so rules after the queue rule can act on the mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Drop,
    Repeat,
}

/// A mark value and the bits of the packet mark it owns: applying it replaces those bits and
/// keeps the others (so nfqmark coexists with other users of the mark, such as mwan3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mark {
    pub value: u32,
    pub mask: u32,
}

impl Mark {
    pub const fn new(value: u32, mask: u32) -> Mark {
        Mark { value, mask }
    }

    /// `old` with the bits under the mask replaced by the value's.
    pub const fn apply(self, old: u32) -> u32 {
        apply_mask(old, self.value, self.mask)
    }
}

/// `old` with the bits under `mask` replaced by those of `value`.
pub const fn apply_mask(old: u32, value: u32, mask: u32) -> u32 {
    (old & !mask) | (value & mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mark_apply_keeps_bits_outside_the_mask() {
        assert_eq!(Mark::new(0x20, 0xff).apply(0x3f00), 0x3f20);
        assert_eq!(Mark::new(0x20, 0xff).apply(0x3fff), 0x3f20);
        assert_eq!(Mark::new(137, u32::MAX).apply(0xdead_beef), 137);
    }

    #[test]
    fn direction_follows_hook_and_input_interface() {
        let meta = |hook, indev| Meta::new(hook, 0, indev, 0);
        assert_eq!(meta(Hook::PreRouting, 3).direction(), Direction::Incoming);
        assert_eq!(meta(Hook::Output, 0).direction(), Direction::LocalOut);
        assert_eq!(meta(Hook::PostRouting, 0).direction(), Direction::LocalOut);
        assert_eq!(meta(Hook::PostRouting, 3).direction(), Direction::Forwarded);
        assert_eq!(Hook::from_kernel(9), Hook::Other(9));
    }
}
