//! DNS messages as nfqmark reads them: no general-purpose decoder on the packet path.
//!
//! - [`question`]: the header and first question of every DNS packet (pairing and rules).
//! - [`answer`]: every record of a message, bounded (flow learning; attribution next).
//! - [`name`]: the owned, case-insensitive name type and the one reader of compressed names.
//! - [`rtype`]: record type numbers and their mnemonics.
//!
//! Everything here is pure: bytes in, values out, every length checked before it is read, no
//! panic, no I/O, and no allocation sized from a number read off the wire.

pub mod answer;
pub mod name;
pub mod question;

pub use name::Name;
pub use question::{Dns, Error, QKey, Question, parse_tcp, parse_udp};

/// Record type numbers nfqmark reads or shows (IANA "Resource Record (RR) TYPEs").
pub mod rtype {
    use std::fmt;

    pub const A: u16 = 1;
    pub const NS: u16 = 2;
    pub const CNAME: u16 = 5;
    pub const SOA: u16 = 6;
    pub const PTR: u16 = 12;
    pub const MX: u16 = 15;
    pub const TXT: u16 = 16;
    pub const AAAA: u16 = 28;
    pub const SRV: u16 = 33;
    pub const DNAME: u16 = 39;
    pub const OPT: u16 = 41;
    pub const DS: u16 = 43;
    pub const RRSIG: u16 = 46;
    pub const NSEC: u16 = 47;
    pub const DNSKEY: u16 = 48;
    pub const NSEC3: u16 = 50;
    pub const SVCB: u16 = 64;
    pub const HTTPS: u16 = 65;
    pub const ANY: u16 = 255;

    /// The mnemonic of a type nfqmark knows, `None` for others.
    pub fn mnemonic(t: u16) -> Option<&'static str> {
        Some(match t {
            A => "A",
            NS => "NS",
            CNAME => "CNAME",
            SOA => "SOA",
            PTR => "PTR",
            MX => "MX",
            TXT => "TXT",
            AAAA => "AAAA",
            SRV => "SRV",
            DNAME => "DNAME",
            OPT => "OPT",
            DS => "DS",
            RRSIG => "RRSIG",
            NSEC => "NSEC",
            DNSKEY => "DNSKEY",
            NSEC3 => "NSEC3",
            SVCB => "SVCB",
            HTTPS => "HTTPS",
            ANY => "ANY",
            _ => return None,
        })
    }

    /// Shows a type by its mnemonic, or as `TYPE1234` (RFC 3597 §5) when it has none here.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Show(pub u16);

    impl fmt::Display for Show {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match mnemonic(self.0) {
                Some(m) => f.write_str(m),
                None => write!(f, "TYPE{}", self.0),
            }
        }
    }
}
