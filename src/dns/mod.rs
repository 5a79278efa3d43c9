//! DNS messages as nfqmark reads them: no general-purpose decoder on the packet path.
//!
//! - [`question`]: the header and first question of every DNS packet (pairing and rules).
//!
//! Everything here is pure: bytes in, values out, every length checked before it is read, no
//! panic, no I/O, and no allocation sized from a number read off the wire.

pub mod question;

pub use question::{Dns, Error, QKey, Question, parse_tcp, parse_udp};
