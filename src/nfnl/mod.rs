//! nfnetlink spoken directly over netlink sockets: bind an NFQUEUE, receive the packets the
//! kernel queues to us, give them verdicts (one by one or in batches).
//!
//! Three layers, each in its own file:
//! - [`abi`]: the kernel's numbers and struct layouts, nothing else;
//! - [`wire`]: the pure codec: parse what the kernel sends, encode what we send, every length
//!   checked, no system calls (unit-tested on byte fixtures, fuzzed);
//! - [`socket`]: the only code here with system calls or `unsafe`.
//!
//! This module decides nothing about packets and must never: panic or assert on what the kernel
//! sends, allocate per packet, block past the caller's timeout, or silently lose a packet it
//! was handed. A message that cannot be read is reported as a [`MsgError`] carrying the packet
//! id when one could be recovered, so the caller can still give that packet its verdict.

mod abi;
mod socket;
mod wire;

pub use abi::{MAX_COPY_RANGE, SKB_CSUM_NOT_READY, SKB_CSUM_NOT_VERIFIED, SKB_GSO};
pub use socket::{MAX_BURST, NfnlSocket, OpenError, Socket};
pub use wire::nft::{QueueRule, QueueSpan, packets_per_queue};
pub use wire::queue::{
    ChecksumState, Config, Ct, HwAddr, Messages, MsgError, PacketMsg, RecvBuf, Verdict, Verdicts,
};

#[cfg(test)]
mod testdata;
