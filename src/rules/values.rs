//! Value words -> typed values: addresses and CIDRs, ports and port ranges, marks, DNS names,
//! interface names, MAC addresses, protocols and record types, and lookups in the keyword tables
//! (hooks, directions, DNS kinds).
//!
//! This module owns what one value word may be. Each parser takes one word and returns the value
//! (in the types of `defs.rs`) or a (message, hint) pair for the caller to report at the word's
//! place. It never sees tokens, lines or other words (that is `syntax.rs`), never looks anything
//! up outside the text (whether an interface exists is the link table's business, at run time),
//! and never panics.

use std::net::IpAddr;

use super::defs::{AddrRange, IfPattern, NamePattern, PortRange};
use super::hints::{self, did_you_mean};
use super::keywords::{PROTOS, QTYPES};

// ------------------------------------------------------------------------------------------------
// Parsers. Each returns the value or (message, hint).

pub(super) type VErr = (String, Option<String>);

pub(super) fn verr(msg: String, hint: Option<String>) -> VErr {
    (msg, hint)
}

/// Decimal or 0x-prefixed hexadecimal.
pub(super) fn parse_u32(s: &str) -> Option<u32> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            u32::from_str_radix(hex, 16).ok()
        }
        Some(_) => None,
        None if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s.parse().ok(),
        None => None,
    }
}

/// `VALUE` or `VALUE/MASK`; the value may not have bits outside the mask.
pub(super) fn parse_mark(s: &str, setting: bool) -> Result<(u32, u32), VErr> {
    let example = if setting {
        "e.g. set-mark 0x1 or set-mark 0x100/0xff00"
    } else {
        "e.g. mark 0x1 or mark 0x100/0xff00"
    };
    let (v, m) = match s.split_once('/') {
        Some((v, m)) => (v, Some(m)),
        None => (s, None),
    };
    if v.is_empty() {
        return Err(verr(
            format!("mask without value in '{s}'"),
            Some(format!("write VALUE/MASK, {example}")),
        ));
    }
    let not_number = |t: &str| {
        verr(
            format!("'{t}' is not a 32-bit number"),
            Some("write it in decimal, or in hex like 0xff00".to_string()),
        )
    };
    let value = parse_u32(v).ok_or_else(|| not_number(v))?;
    let mask = match m {
        None => u32::MAX,
        Some("") => {
            return Err(verr(
                format!("'/' without a mask in '{s}'"),
                Some(format!("write VALUE/MASK, {example}")),
            ));
        }
        Some(m) => parse_u32(m).ok_or_else(|| not_number(m))?,
    };
    if value & !mask != 0 {
        let what = if setting {
            "those bits would not be set"
        } else {
            "the rule could never match"
        };
        return Err(verr(
            format!("value {value:#x} has bits outside mask {mask:#x}: {what}"),
            Some(format!("did you mean {:#x}/{mask:#x}?", value & mask)),
        ));
    }
    Ok((value, mask))
}

pub(super) fn parse_port(s: &str, whole: &str) -> Result<u16, VErr> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse::<u16>().map_err(|_| {
            verr(
                format!("port {s} is out of range"),
                Some("ports are 0-65535".to_string()),
            )
        });
    }
    Err(verr(
        format!("'{whole}' is not a port"),
        Some(hints::not_a_port(s)),
    ))
}

/// `80`, `1024-65535` or iptables' `1024:65535`; an open end means 0 or 65535.
pub(super) fn parse_port_range(s: &str) -> Result<PortRange, VErr> {
    let Some((a, b)) = s.split_once(['-', ':']) else {
        let p = parse_port(s, s)?;
        return Ok(PortRange { lo: p, hi: p });
    };
    let lo = if a.is_empty() { 0 } else { parse_port(a, s)? };
    let hi = if b.is_empty() {
        u16::MAX
    } else {
        parse_port(b, s)?
    };
    if lo > hi {
        return Err(verr(
            format!("port range {s} is backwards"),
            Some(format!("write {hi}-{lo}")),
        ));
    }
    Ok(PortRange { lo, hi })
}

/// An address or CIDR, IPv4 or IPv6. Host bits under the prefix must be zero.
pub(super) fn parse_addr(s: &str) -> Result<AddrRange, VErr> {
    let (a, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let addr: IpAddr = a.parse().map_err(|_| {
        let hint = if a.chars().any(|c| c.is_ascii_alphabetic()) && !a.contains(':') {
            "host names are not resolved here; write an address or a CIDR like \
             198.18.0.0/15, or use dns-name to match DNS questions"
        } else {
            "write an IPv4 or IPv6 address, or a CIDR like 198.18.0.0/15 or 2001:db8::/32"
        };
        verr(
            format!("'{a}' is not an IPv4 or IPv6 address"),
            Some(hint.to_string()),
        )
    })?;
    let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(l) => {
            let n: u8 = l
                .parse()
                .ok()
                .filter(|_| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| {
                    verr(
                        format!("'/{l}' is not a prefix length"),
                        Some(format!(
                            "write a number from 0 to {max}, as in 198.18.0.0/15"
                        )),
                    )
                })?;
            if n > max {
                let family = if max == 32 { "IPv4" } else { "IPv6" };
                return Err(verr(
                    format!("prefix /{n} is too long for {family}"),
                    Some(format!("{family} prefixes are at most /{max}")),
                ));
            }
            n
        }
    };
    let host_bits_err = |net: IpAddr| {
        verr(
            format!("{s} has host bits set"),
            Some(format!("the network is {net}/{len}")),
        )
    };
    match addr {
        IpAddr::V4(v4) => {
            let a = u32::from(v4);
            let host = u32::MAX.checked_shr(u32::from(len)).unwrap_or(0);
            if a & host != 0 {
                return Err(host_bits_err(IpAddr::V4((a & !host).into())));
            }
            Ok(AddrRange::V4(a, a | host))
        }
        IpAddr::V6(v6) => {
            let a = u128::from(v6);
            let host = u128::MAX.checked_shr(u32::from(len)).unwrap_or(0);
            if a & host != 0 {
                return Err(host_bits_err(IpAddr::V6((a & !host).into())));
            }
            Ok(AddrRange::V6(a, a | host))
        }
    }
}

/// `host.example`, `host.example.` or `*.example`, into lower-case wire form.
pub(super) fn parse_name(s: &str) -> Result<NamePattern, VErr> {
    let (wildcard, rest) = match s.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    if s == "*" {
        return Err(verr(
            "'*' alone is not a name pattern".to_string(),
            Some("to match any question, write 'dns query' or 'dns any'".to_string()),
        ));
    }
    let rest = rest.strip_suffix('.').unwrap_or(rest);
    if rest.is_empty() {
        return Err(verr(
            format!("'{s}' is not a DNS name"),
            Some("write a name like portal.example or *.portal.example".to_string()),
        ));
    }
    if rest.contains('*') {
        return Err(verr(
            format!("'*' in '{s}' is only allowed as the whole first label"),
            Some("write *.example to match every name below example".to_string()),
        ));
    }
    let mut wire = Vec::with_capacity(rest.len() + 2);
    for label in rest.split('.') {
        if label.is_empty() {
            return Err(verr(
                format!("empty label in '{s}'"),
                Some("two dots in a row, or a leading dot".to_string()),
            ));
        }
        if let Some(bad) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            let hint = if bad.is_ascii() {
                "names hold letters, digits, '-' and '_'".to_string()
            } else {
                "write internationalised names in their xn-- form".to_string()
            };
            return Err(verr(
                format!("'{bad}' is not allowed in DNS name '{s}'"),
                Some(hint),
            ));
        }
        let len = u8::try_from(label.len())
            .ok()
            .filter(|l| *l <= 63)
            .ok_or_else(|| {
                verr(
                    format!("label '{label}' is longer than 63 bytes"),
                    Some("DNS labels are at most 63 bytes".to_string()),
                )
            })?;
        wire.push(len);
        wire.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
    }
    wire.push(0);
    if wire.len() > 255 {
        return Err(verr(
            format!("name '{s}' is longer than 255 bytes"),
            Some("DNS names are at most 255 bytes in wire form".to_string()),
        ));
    }
    Ok(NamePattern {
        wire: wire.into_boxed_slice(),
        wildcard,
    })
}

/// Longest interface name the kernel takes (`IFNAMSIZ` less the NUL).
pub(super) const IFNAME_MAX: usize = 15;

/// An interface name, or iptables' `NAME+` for every interface whose name starts with `NAME`.
/// Names are kept as written: the kernel's are case-sensitive.
pub(super) fn parse_iface(s: &str) -> Result<IfPattern, VErr> {
    if let Some(stem) = s.strip_suffix('*') {
        return Err(verr(
            format!("'*' in interface name '{s}'"),
            Some(format!(
                "write '{stem}+': a trailing '+' matches every interface whose name starts with \
                 '{stem}', as in iptables"
            )),
        ));
    }
    let (name, prefix) = match s.strip_suffix('+') {
        Some(stem) => (stem, true),
        None => (s, false),
    };
    if let Some(bad) = name.chars().find(|c| matches!(c, '/' | ':' | '*')) {
        let hint = match (bad, name.split_once(':')) {
            (':', Some((dev, _))) => {
                format!("'{name}' is an address label, not an interface: write '{dev}'")
            }
            _ => "interface names cannot hold '/', ':' or '*'".to_string(),
        };
        return Err(verr(
            format!("'{bad}' is not allowed in interface name '{s}'"),
            Some(hint),
        ));
    }
    if !prefix && (name == "." || name == "..") {
        return Err(verr(
            format!("'{s}' is not an interface name"),
            Some("write the name 'ip link' shows, e.g. lan0".to_string()),
        ));
    }
    if name.len() > IFNAME_MAX {
        return Err(verr(
            format!("interface name '{name}' is longer than {IFNAME_MAX} bytes"),
            Some(format!(
                "Linux interface names are at most {IFNAME_MAX} bytes; check the name with \
                 'ip link'"
            )),
        ));
    }
    Ok(IfPattern {
        name: name.into(),
        prefix,
    })
}

/// A MAC address, `02:00:5e:10:00:01` (any case), as a 48-bit number.
pub(super) fn parse_mac(s: &str) -> Result<u64, VErr> {
    let bad = || {
        verr(
            format!("'{s}' is not a MAC address"),
            Some(
                "write six two-digit hex bytes separated by ':', as in 02:00:5e:10:00:01"
                    .to_string(),
            ),
        )
    };
    let mut mac = 0u64;
    let mut bytes = 0;
    for part in s.split(':') {
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        mac = (mac << 8) | u64::from(byte);
        bytes += 1;
    }
    if bytes != 6 {
        return Err(bad());
    }
    if (mac >> 40) & 1 == 1 {
        return Err(verr(
            format!("{s} is a group (multicast or broadcast) address"),
            Some(
                "no packet comes from a group address: the first byte of a source MAC is even"
                    .to_string(),
            ),
        ));
    }
    Ok(mac)
}

/// Look `s` up (case-insensitively) in a keyword table, with a did-you-mean on failure.
pub(super) fn lookup<T: Copy>(s: &str, table: &[(&str, T)], what: &str) -> Result<T, VErr> {
    let lower = s.to_ascii_lowercase();
    if let Some((_, v)) = table.iter().find(|(n, _)| *n == lower) {
        return Ok(*v);
    }
    let names: Vec<&str> = table.iter().map(|(n, _)| *n).collect();
    let hint = hints::dym_hint(s, &names).unwrap_or_else(|| hints::one_of(&names));
    Err(verr(format!("unknown {what} '{s}'"), Some(hint)))
}

pub(super) fn parse_proto(s: &str) -> Result<u8, VErr> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().map_err(|_| {
            verr(
                format!("protocol number {s} is out of range"),
                Some("protocol numbers are 0-255".to_string()),
            )
        });
    }
    lookup(s, PROTOS, "protocol")
}

/// `AAAA`, `TYPE65` (RFC 3597) or a number.
pub(super) fn parse_qtype(s: &str) -> Result<u16, VErr> {
    let digits = s
        .get(..4)
        .filter(|p| p.eq_ignore_ascii_case("type"))
        .and_then(|_| s.get(4..))
        .unwrap_or(s);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return digits.parse().map_err(|_| {
            verr(
                format!("record type {s} is out of range"),
                Some("record types are 0-65535".to_string()),
            )
        });
    }
    let lower = s.to_ascii_lowercase();
    if let Some((_, v)) = QTYPES.iter().find(|(n, _)| *n == lower) {
        return Ok(*v);
    }
    let names: Vec<&str> = QTYPES.iter().map(|(n, _)| *n).collect();
    let hint = did_you_mean(s, &names)
        .map(|c| format!("did you mean '{}'?", c.to_ascii_uppercase()))
        .unwrap_or_else(|| "write a mnemonic like AAAA, or a number like 65".to_string());
    Err(verr(format!("unknown DNS record type '{s}'"), Some(hint)))
}

/// Set names hold letters, digits, '-' and '_'.
pub(super) fn valid_set_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}
