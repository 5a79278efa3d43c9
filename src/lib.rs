//! nfqmark: a Linux NFQUEUE packet marker that carries a DNS client's firewall mark onto the
//! local resolver's upstream query, its answer and the answer to the client, for any resolver.
//!
//! The crate is a pure core (packet, dns, rules, pairing, engine) that takes bytes and time and
//! returns decisions, and an edge (queue, worker) that talks to the kernel. Everything in the
//! core is testable without root.

mod bypass;
mod checksum;
pub mod cli;
pub mod ctmark;
pub mod daemon;
#[cfg(feature = "demo")]
pub mod demo;
pub mod dns;
pub mod engine;
#[cfg(debug_assertions)]
mod fault;
pub mod flows;
pub mod kernel_flows;
pub mod links;
mod lru;
mod metrics;
pub mod nfnl;
pub mod packet;
pub mod pairing;
mod queue;
pub mod replay;
pub mod rules;
pub mod setup;
pub mod sockdiag;
pub mod stats;
pub mod stream;
pub mod top;
pub mod types;
pub mod worker;

// Unit tests build packets with the testkit crate (a dev-dependency), under the name they use.
#[cfg(test)]
use nfqmark_testkit as fixtures;
