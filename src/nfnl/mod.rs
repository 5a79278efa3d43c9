//! nfnetlink spoken directly over netlink sockets: bind an NFQUEUE, receive the packets the
//! kernel queues to us and give them verdicts ([`Socket`]); read the packet counters of the
//! NFQUEUE rules nfqmark installed, get or change conntrack entries, and add, re-time, delete
//! and read the elements of nf_tables sets in batches ([`NfnlSocket`]); listen to set element
//! notifications ([`NftWatch`]).
//!
//! Three layers, each in its own place:
//! - [`abi`](self): the kernel's numbers and struct layouts, nothing else (`abi.rs`);
//! - [`wire`]: the pure codec, one file per subsystem (queue, nf_tables rule dumps, ctnetlink):
//!   parse what the kernel sends, encode what we send, every length checked, no system calls
//!   and no `unsafe` (unit-tested on byte fixtures, fuzzed by the `nfnl` target);
//! - `socket.rs`: the only code here with system calls or `unsafe`.
//!
//! This module decides nothing about packets and must never: panic or assert on what the kernel
//! sends, allocate per packet, block past the caller's timeout, or silently lose a packet it
//! was handed. A message that cannot be read is reported as a [`MsgError`] carrying the packet
//! id when one could be recovered, so the caller can still give that packet its verdict.
//!
//! Kernel facts checked on this kernel (Linux 6.18) and in net/netfilter/nfnetlink_queue.c:
//! - `NFQA_CFG_F_CONNTRACK` needs ctnetlink's glue (`CONFIG_NETFILTER_NETLINK_GLUE_CT`), which
//!   `nfqnl_recv_config` checks through `nfnl_ct_hook`: without it the flag is refused with
//!   `EOPNOTSUPP` and [`Socket::open`] binds the queue without it ([`Socket::conntrack`]);
//! - `NFQA_SKB_INFO` ([`ChecksumState`]) needs no flag; `NFQA_HWADDR` comes with packets that
//!   have an input device with a link-layer header;
//! - a connection's entry is only in the conntrack table (and visible to ctnetlink) once its
//!   first packet has left the last hook: while that packet is queued, a ctnetlink get by its
//!   tuple answers `ENOENT` ([`NfnlSocket::conntrack_get`]).

mod abi;
mod socket;
pub mod wire;

pub use abi::{MAX_COPY_RANGE, SKB_CSUM_NOT_READY, SKB_CSUM_NOT_VERIFIED, SKB_GSO};
pub use socket::{MAX_BATCH_ELEMENTS, MAX_BURST, NfnlSocket, NftWatch, OpenError, SetOp, Socket};
pub use wire::ct::{Ct, Direction as CtDirection, Tuple};
pub use wire::nft::{QueueRule, QueueSpan, packets_per_queue};
pub use wire::queue::{
    ChecksumState, Config, HwAddr, Messages, MsgError, PacketMsg, RecvBuf, Verdict, Verdicts,
};
pub use wire::set::{BatchReply, Element, Key as SetKey, Op as SetElemOp, SetId, SetInfo};

#[cfg(test)]
mod testdata;
