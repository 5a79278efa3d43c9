//! Domain names: nfqmark's own owned name type and the reader of (compressed) names in messages.
//!
//! This module owns [`Name`], a name in wire form (length-prefixed labels ending with the root's
//! zero, RFC 1035 §3.1) held in a fixed 255-byte buffer: building, copying and dropping one never
//! allocates. Names are held lower-cased (ASCII only, as RFC 4343 defines DNS case), so equality
//! and hashing are case-insensitive: `wWw.ExAmPle.CoM` (0x20 randomisation) equals
//! `www.example.com`.
//!
//! It also owns [`read`], the one place that follows compression pointers (RFC 1035 §4.1.4), with
//! every rule checked before a byte is used:
//!
//! - a pointer points strictly before the run of labels it ends (not forward, not into itself,
//!   not into the name being read), so the runs visited move strictly backward and no loop is
//!   possible; it points after the 12-byte header; at most [`MAX_HOPS`] pointers per name;
//! - labels reached through a pointer lie before the run that pointed to them (no overlap);
//! - a label is at most 63 bytes (label types 0x40 and 0x80 are refused: a "64-byte label" reads
//!   as one), a name at most 255 bytes in wire form.
//!
//! It must never panic, index without a check, allocate, or accept a name another reader would
//! expand differently. Presentation text ([`Name::from_ascii`], `Display`) is for rules, logs and
//! tests, never the packet path.

use std::fmt;
use std::hash::{Hash, Hasher};

/// Longest name in wire form, root label included (RFC 1035 §2.3.4).
pub const MAX_WIRE: usize = 255;
/// Longest label (RFC 1035 §2.3.4).
pub const MAX_LABEL: usize = 63;
/// Most compression pointers followed in one name. Real encoders point once per name (to an
/// earlier name that holds the suffix) and rarely chain more than a few; 64 is far above any
/// real message and keeps a hostile one's cost per name small.
pub const MAX_HOPS: usize = 64;
/// The message header's length: no name lies in it, so no pointer may point into it.
pub const HEADER_LEN: usize = 12;

/// A domain name in lower-case wire form, inline. See the module header.
#[derive(Clone)]
pub struct Name {
    len: u8,
    wire: [u8; MAX_WIRE],
}

impl Name {
    /// The root name (`.`), a single zero byte.
    pub const fn root() -> Name {
        Name {
            len: 1,
            wire: [0; MAX_WIRE],
        }
    }

    /// The name in lower-case wire form: length-prefixed labels, ending with the root's 0.
    pub fn wire(&self) -> &[u8] {
        self.wire.get(..usize::from(self.len)).unwrap_or(&[0])
    }

    /// True for the root name.
    pub fn is_root(&self) -> bool {
        self.len <= 1
    }

    /// The labels, leftmost first, without the root's empty label.
    pub fn labels(&self) -> Labels<'_> {
        Labels(self.wire())
    }

    /// Number of labels, the root's not counted (`www.example.com` has 3).
    pub fn label_count(&self) -> usize {
        self.labels().count()
    }

    /// The name and each of its ancestors in wire form, from the name itself to the root
    /// (`a.example.com`, `example.com`, `com`, `.`). Each item is a valid wire-form name.
    pub fn suffixes(&self) -> Suffixes<'_> {
        Suffixes(Some(self.wire()))
    }

    /// The name one label up, `None` for the root.
    pub fn parent(&self) -> Option<Name> {
        let mut s = self.suffixes();
        s.next();
        s.next().and_then(|w| Name::from_wire(w).ok())
    }

    /// True when `self` is `other` or below it (`a.example.com` is below `example.com`).
    pub fn is_within(&self, other: &Name) -> bool {
        self.suffixes().any(|s| s == other.wire())
    }

    /// A name from uncompressed wire form, which must be exactly one name (no pointer, nothing
    /// after the root label). Labels are lower-cased.
    pub fn from_wire(wire: &[u8]) -> Result<Name, NameError> {
        let mut name = Name::root();
        let end = read_labels(wire, 0, &mut name, false)?;
        if end != wire.len() {
            return Err(NameError {
                at: end,
                kind: NameErrorKind::Trailing,
            });
        }
        Ok(name)
    }

    /// A name from presentation text (`www.example.com`, trailing dot optional; `.` or the
    /// empty string is the root). `\.` and `\\` escape a character, `\DDD` gives a byte in
    /// decimal (RFC 1035 §5.1). Labels are lower-cased.
    pub fn from_ascii(text: &str) -> Result<Name, TextError> {
        let mut name = Name::root();
        if text == "." || text.is_empty() {
            return Ok(name);
        }
        let mut label = [0u8; MAX_LABEL + 1];
        let mut label_len = 0usize;
        let mut len = 0usize;
        let mut bytes = text.bytes().peekable();
        let push_label = |label: &[u8], len: &mut usize, name: &mut Name| {
            if label.is_empty() {
                return Err(TextError::EmptyLabel);
            }
            name.push_label(*len, label).ok_or(TextError::TooLong)?;
            *len += 1 + label.len();
            Ok(())
        };
        while let Some(b) = bytes.next() {
            let byte = match b {
                b'.' => {
                    push_label(
                        label.get(..label_len).unwrap_or_default(),
                        &mut len,
                        &mut name,
                    )?;
                    label_len = 0;
                    if bytes.peek().is_none() {
                        // A trailing dot: the name is already complete.
                        name.finish(len).ok_or(TextError::TooLong)?;
                        return Ok(name);
                    }
                    continue;
                }
                b'\\' => match bytes.next() {
                    Some(d) if d.is_ascii_digit() => {
                        let mut value = u32::from(d - b'0');
                        for _ in 0..2 {
                            match bytes.next() {
                                Some(d) if d.is_ascii_digit() => {
                                    value = value * 10 + u32::from(d - b'0');
                                }
                                _ => return Err(TextError::BadEscape),
                            }
                        }
                        u8::try_from(value).map_err(|_| TextError::BadEscape)?
                    }
                    Some(c) => c,
                    None => return Err(TextError::BadEscape),
                },
                other => other,
            };
            let slot = label.get_mut(label_len).ok_or(TextError::LabelTooLong)?;
            *slot = byte;
            label_len += 1;
            if label_len > MAX_LABEL {
                return Err(TextError::LabelTooLong);
            }
        }
        push_label(
            label.get(..label_len).unwrap_or_default(),
            &mut len,
            &mut name,
        )?;
        name.finish(len).ok_or(TextError::TooLong)?;
        Ok(name)
    }

    /// The name as presentation text, fully qualified (`www.example.com.`; the root is `.`).
    pub fn to_ascii(&self) -> String {
        self.to_string()
    }

    /// Append `label` (lower-cased) at wire offset `at`; `None` if the name would pass 255
    /// bytes once its root label is added.
    fn push_label(&mut self, at: usize, label: &[u8]) -> Option<()> {
        if label.len() > MAX_LABEL || at + 1 + label.len() + 1 > MAX_WIRE {
            return None;
        }
        let (head, rest) = self
            .wire
            .get_mut(at..at + 1 + label.len())?
            .split_first_mut()?;
        *head = u8::try_from(label.len()).ok()?;
        for (d, s) in rest.iter_mut().zip(label) {
            *d = s.to_ascii_lowercase();
        }
        Some(())
    }

    /// End the name with the root label after `at` bytes of labels.
    fn finish(&mut self, at: usize) -> Option<()> {
        *self.wire.get_mut(at)? = 0;
        self.len = u8::try_from(at + 1).ok()?;
        Some(())
    }
}

impl Default for Name {
    fn default() -> Name {
        Name::root()
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Name) -> bool {
        self.wire() == other.wire()
    }
}

impl Eq for Name {}

impl Hash for Name {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.wire().hash(state);
    }
}

impl fmt::Display for Name {
    /// Presentation form (RFC 1035 §5.1): labels joined by dots, a final dot; a dot or
    /// backslash inside a label is escaped with `\`, other bytes outside printable ASCII as
    /// `\DDD`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_root() {
            return f.write_str(".");
        }
        for label in self.labels() {
            for &b in label {
                match b {
                    b'.' | b'\\' => write!(f, "\\{}", char::from(b))?,
                    0x21..=0x7e => write!(f, "{}", char::from(b))?,
                    _ => write!(f, "\\{b:03}")?,
                }
            }
            f.write_str(".")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Name({self})")
    }
}

/// The labels of a wire-form name, leftmost first.
pub struct Labels<'a>(&'a [u8]);

impl<'a> Iterator for Labels<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let (&len, rest) = self.0.split_first()?;
        let len = usize::from(len);
        if len == 0 || rest.len() < len {
            self.0 = &[];
            return None;
        }
        let (label, tail) = rest.split_at(len);
        self.0 = tail;
        Some(label)
    }
}

/// A wire-form name and its ancestors, each in wire form: see [`Name::suffixes`].
pub struct Suffixes<'a>(Option<&'a [u8]>);

impl<'a> Iterator for Suffixes<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let wire = self.0?;
        self.0 = match wire.split_first() {
            Some((&len, rest)) if len != 0 => rest.get(usize::from(len)..),
            _ => None,
        };
        Some(wire)
    }
}

/// Why a name in a message cannot be read, and where (a byte offset in the message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameError {
    /// The offset of the byte that breaks the rule (a length byte, a pointer, the end).
    pub at: usize,
    pub kind: NameErrorKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameErrorKind {
    /// The message ends inside the name.
    Truncated,
    /// A length byte with label type 0x40 or 0x80 (RFC 6891 §5 retired them): also what a
    /// "label of 64 bytes or more" reads as.
    LabelType(u8),
    /// The name passes 255 bytes in wire form.
    TooLong,
    /// A compression pointer into the 12-byte header, where no name is.
    PointerIntoHeader { target: u16 },
    /// A compression pointer to itself, forward, or into the name being read (the only ways
    /// to make a loop).
    PointerNotBackward { target: u16 },
    /// Labels reached through a pointer run into the bytes the pointer came from.
    Overlap,
    /// More than [`MAX_HOPS`] pointers in one name.
    TooManyHops,
    /// A pointer where none may be (a name given as uncompressed wire form).
    Pointer,
    /// Bytes after the root label of a name given as uncompressed wire form.
    Trailing,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = self.at;
        match self.kind {
            NameErrorKind::Truncated => write!(f, "the message ends inside a name (byte {at})"),
            NameErrorKind::LabelType(b) => write!(
                f,
                "unknown label type {:#04x} at byte {at} (a label is at most 63 bytes)",
                b & 0xc0
            ),
            NameErrorKind::TooLong => {
                write!(f, "name longer than 255 bytes (at byte {at})")
            }
            NameErrorKind::PointerIntoHeader { target } => write!(
                f,
                "compression pointer at byte {at} points into the header (byte {target})"
            ),
            NameErrorKind::PointerNotBackward { target } => write!(
                f,
                "compression pointer at byte {at} to byte {target} does not point back before \
                 its own name (forward, to itself, or a loop)"
            ),
            NameErrorKind::Overlap => write!(
                f,
                "labels reached through a pointer run into the name that points to them (byte \
                 {at})"
            ),
            NameErrorKind::TooManyHops => write!(
                f,
                "more than {MAX_HOPS} compression pointers in one name (byte {at})"
            ),
            NameErrorKind::Pointer => write!(f, "compression pointer at byte {at} in a plain name"),
            NameErrorKind::Trailing => write!(f, "bytes after the end of the name (byte {at})"),
        }
    }
}

impl std::error::Error for NameError {}

/// Why presentation text is not a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextError {
    /// Two dots in a row, or a leading dot.
    EmptyLabel,
    /// A label of more than 63 bytes.
    LabelTooLong,
    /// More than 255 bytes in wire form.
    TooLong,
    /// A `\` at the end, or `\DDD` not three digits up to 255.
    BadEscape,
}

impl fmt::Display for TextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TextError::EmptyLabel => "empty label (two dots in a row, or a leading dot)",
            TextError::LabelTooLong => "label longer than 63 bytes",
            TextError::TooLong => "name longer than 255 bytes in wire form",
            TextError::BadEscape => "bad escape: use \\. \\\\ or \\DDD (three digits, 0-255)",
        })
    }
}

impl std::error::Error for TextError {}

/// Read the name at `start` in `msg` into `out` (lower-cased), following compression pointers
/// under the rules in the module header. Returns the offset just after the name where it
/// started (after its first pointer, if it has one).
#[inline]
pub fn read(msg: &[u8], start: usize, out: &mut Name) -> Result<usize, NameError> {
    read_labels(msg, start, out, true)
}

#[inline]
fn read_labels(
    msg: &[u8],
    start: usize,
    out: &mut Name,
    pointers: bool,
) -> Result<usize, NameError> {
    let err = |at, kind| Err(NameError { at, kind });
    let mut at = start;
    // Start of the run of labels being read; a pointer must point before it.
    let mut run = start;
    // After a jump: the start of the run we came from, which the new run must not reach.
    let mut limit = usize::MAX;
    let mut end = None;
    let mut hops = 0;
    let mut len = 0usize;
    loop {
        if at >= limit {
            return err(at, NameErrorKind::Overlap);
        }
        let Some(&b) = msg.get(at) else {
            return err(at, NameErrorKind::Truncated);
        };
        match b & 0xc0 {
            0x00 if b == 0 => {
                out.finish(len).ok_or(NameError {
                    at,
                    kind: NameErrorKind::TooLong,
                })?;
                return Ok(end.unwrap_or(at + 1));
            }
            0x00 => {
                let l = usize::from(b);
                let Some(label) = msg.get(at + 1..at + 1 + l) else {
                    return err(msg.len(), NameErrorKind::Truncated);
                };
                if out.push_label(len, label).is_none() {
                    return err(at, NameErrorKind::TooLong);
                }
                len += 1 + l;
                at += 1 + l;
            }
            0xc0 if pointers => {
                let Some(&lo) = msg.get(at + 1) else {
                    return err(msg.len(), NameErrorKind::Truncated);
                };
                let target = u16::from_be_bytes([b & 0x3f, lo]);
                let t = usize::from(target);
                if t < HEADER_LEN {
                    return err(at, NameErrorKind::PointerIntoHeader { target });
                }
                if t >= run {
                    return err(at, NameErrorKind::PointerNotBackward { target });
                }
                hops += 1;
                if hops > MAX_HOPS {
                    return err(at, NameErrorKind::TooManyHops);
                }
                end.get_or_insert(at + 2);
                limit = run;
                run = t;
                at = t;
            }
            0xc0 => return err(at, NameErrorKind::Pointer),
            _ => return err(at, NameErrorKind::LabelType(b)),
        }
    }
}

/// Step over the name at `start` without expanding it: its labels in place, up to its root
/// label or its first pointer. Checks only what framing needs (bounds, label types, at most
/// 255 bytes in place), not where a pointer points. Returns the offset after the name.
pub fn skip(msg: &[u8], start: usize) -> Result<usize, NameError> {
    let err = |at, kind| Err(NameError { at, kind });
    let mut at = start;
    loop {
        if at - start >= MAX_WIRE {
            return err(at, NameErrorKind::TooLong);
        }
        let Some(&b) = msg.get(at) else {
            return err(at, NameErrorKind::Truncated);
        };
        match b & 0xc0 {
            0x00 if b == 0 => return Ok(at + 1),
            0x00 if at + 1 + usize::from(b) < msg.len() => at += 1 + usize::from(b),
            // The label runs to the end or past it: no room for what ends the name.
            0x00 => return err(msg.len(), NameErrorKind::Truncated),
            0xc0 if at + 2 <= msg.len() => return Ok(at + 2),
            0xc0 => return err(msg.len(), NameErrorKind::Truncated),
            _ => return err(at, NameErrorKind::LabelType(b)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message: a 12-byte header of zeros, then `body` given in hex (spaces ignored).
    fn msg(body: &str) -> Vec<u8> {
        let hex: String = body.split_whitespace().collect();
        let mut out = vec![0u8; HEADER_LEN];
        out.extend(
            (0..hex.len() / 2).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap()),
        );
        out
    }

    fn read_at(m: &[u8], at: usize) -> Result<(String, usize), NameError> {
        let mut n = Name::root();
        let end = read(m, at, &mut n)?;
        Ok((n.to_string(), end))
    }

    fn kind(m: &[u8], at: usize) -> NameErrorKind {
        read_at(m, at)
            .map(|ok| panic!("read {ok:?}"))
            .unwrap_err()
            .kind
    }

    fn text(s: &str) -> Name {
        Name::from_ascii(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn plain_name_is_read_lower_cased() {
        // WWW.Example.COM at 12, then a byte that is not part of it.
        let m = msg("03 575757 07 4578616d706c65 03 434f4d 00 ff");
        assert_eq!(read_at(&m, 12), Ok(("www.example.com.".into(), 29)));
    }

    #[test]
    fn root_name_is_a_single_zero() {
        let m = msg("00");
        assert_eq!(read_at(&m, 12), Ok((".".into(), 13)));
        assert_eq!(Name::root().wire(), b"\x00");
        assert!(Name::root().is_root());
        assert_eq!(Name::from_ascii("."), Ok(Name::root()));
        assert_eq!(Name::from_ascii(""), Ok(Name::root()));
    }

    #[test]
    fn pointer_to_a_whole_earlier_name_ends_the_name_in_place() {
        // example.com at 12; at 25: www + pointer to 12.
        let m = msg("07 6578616d706c65 03 636f6d 00  03 777777 c00c");
        assert_eq!(read_at(&m, 25), Ok(("www.example.com.".into(), 31)));
        // A name that is only a pointer.
        let m = msg("07 6578616d706c65 03 636f6d 00  c00c");
        assert_eq!(read_at(&m, 25), Ok(("example.com.".into(), 27)));
    }

    #[test]
    fn pointer_into_the_middle_of_an_earlier_name_takes_its_suffix() {
        // www.example.com at 12; at 29: mail + pointer to 16 (example.com).
        let m = msg("03 777777 07 6578616d706c65 03 636f6d 00  04 6d61696c c010");
        assert_eq!(read_at(&m, 29), Ok(("mail.example.com.".into(), 36)));
        // A pointer to the root label of an earlier name gives the root.
        let m = msg("03 777777 00  c010");
        assert_eq!(read_at(&m, 17), Ok((".".into(), 19)));
    }

    #[test]
    fn chained_pointers_are_followed_backward() {
        // com at 12; example + ptr(12) at 17; www + ptr(17) at 27.
        let m = msg("03 636f6d 00  07 6578616d706c65 c00c  03 777777 c011");
        assert_eq!(read_at(&m, 27), Ok(("www.example.com.".into(), 33)));
    }

    #[test]
    fn pointer_to_itself_is_refused() {
        let m = msg("c00c");
        assert_eq!(
            kind(&m, 12),
            NameErrorKind::PointerNotBackward { target: 12 }
        );
        // Into the name being read: www + pointer to www's own length byte.
        let m = msg("03 777777 c00c");
        assert_eq!(
            kind(&m, 12),
            NameErrorKind::PointerNotBackward { target: 12 }
        );
    }

    #[test]
    fn forward_pointer_is_refused() {
        let m = msg("c00e 03 777777 00");
        assert_eq!(
            kind(&m, 12),
            NameErrorKind::PointerNotBackward { target: 14 }
        );
    }

    #[test]
    fn pointer_loop_is_refused() {
        // Two pointers to each other: whichever is read first, one of them points forward.
        let m = msg("c00e c00c");
        assert_eq!(
            kind(&m, 14),
            NameErrorKind::PointerNotBackward { target: 14 }
        );
        assert_eq!(
            kind(&m, 12),
            NameErrorKind::PointerNotBackward { target: 14 }
        );
        // a + pointer back to a's run: the second pass would loop; the run rule stops it.
        let m = msg("01 61 c00c  c00c");
        assert_eq!(
            kind(&m, 16),
            NameErrorKind::PointerNotBackward { target: 12 }
        );
    }

    #[test]
    fn pointer_into_the_header_is_refused() {
        for target in 0..HEADER_LEN as u16 {
            let mut m = msg("00");
            m.extend_from_slice(&(0xc000 | target).to_be_bytes());
            assert_eq!(
                kind(&m, 13),
                NameErrorKind::PointerIntoHeader { target },
                "to {target}"
            );
        }
    }

    #[test]
    fn labels_reached_by_a_pointer_may_not_run_into_the_pointing_name() {
        // At 12: label "ab" whose bytes run to 15; at 14 a name that points to 12: the run
        // from 12 reaches 14 (where the pointing name starts) before it ends.
        let m = msg("02 6162 c00c");
        assert_eq!(kind(&m, 15), NameErrorKind::Overlap);
        let m = msg("01 61 00 c00c");
        assert_eq!(read_at(&m, 15), Ok(("a.".into(), 17)));
    }

    #[test]
    fn hops_are_bounded() {
        // a. at 12, then pointers each to the one before: the n-th needs n hops.
        let mut m = msg("01 61 00");
        let mut at = Vec::new();
        let mut prev = 12u16;
        for _ in 0..=MAX_HOPS {
            at.push(m.len());
            let here = u16::try_from(m.len()).unwrap();
            m.extend_from_slice(&(0xc000 | prev).to_be_bytes());
            prev = here;
        }
        assert_eq!(read_at(&m, at[MAX_HOPS - 1]).unwrap().0, "a.");
        assert_eq!(kind(&m, at[MAX_HOPS]), NameErrorKind::TooManyHops);
    }

    #[test]
    fn label_of_63_is_read_and_64_is_a_label_type() {
        let mut m = msg("3f");
        m.extend_from_slice(&[b'a'; 63]);
        m.push(0);
        assert_eq!(read_at(&m, 12).unwrap().0, format!("{}.", "a".repeat(63)));
        let mut m = msg("40");
        m.extend_from_slice(&[b'a'; 64]);
        m.push(0);
        assert_eq!(kind(&m, 12), NameErrorKind::LabelType(0x40));
        assert_eq!(kind(&msg("80 00"), 12), NameErrorKind::LabelType(0x80));
    }

    /// A wire-form name of `total` bytes: labels of 63 and one shorter, then the root.
    fn wire_of(total: usize) -> Vec<u8> {
        let mut w = Vec::new();
        let mut left = total - 1;
        while left > 0 {
            let l = (left - 1).min(63);
            w.push(l as u8);
            w.extend(std::iter::repeat_n(b'x', l));
            left -= l + 1;
        }
        w.push(0);
        assert_eq!(w.len(), total);
        w
    }

    #[test]
    fn name_of_255_is_read_and_256_is_too_long() {
        let mut m = msg("");
        m.extend_from_slice(&wire_of(255));
        let mut n = Name::root();
        assert_eq!(read(&m, 12, &mut n), Ok(12 + 255));
        assert_eq!(n.wire().len(), 255);
        assert_eq!(Name::from_ascii(&n.to_string()), Ok(n.clone()));
        let mut m = msg("");
        m.extend_from_slice(&wire_of(256));
        assert_eq!(kind(&m, 12), NameErrorKind::TooLong);
        // 256 bytes reached through a pointer: 250 bytes of labels, then a pointer to "abcd".
        let mut m = msg("04 61626364 00");
        let w = wire_of(251);
        m.extend_from_slice(&w[..250]);
        m.extend_from_slice(&[0xc0, 12]);
        assert_eq!(kind(&m, 18), NameErrorKind::TooLong);
        // The same with a 2-byte label: 255 bytes, fine.
        let mut m = msg("01 61 00");
        m.extend_from_slice(&w[..250]);
        m.extend_from_slice(&[0xc0, 12]);
        assert_eq!(read_at(&m, 15).map(|(_, end)| end), Ok(15 + 252));
    }

    #[test]
    fn truncation_anywhere_in_a_name_is_clean() {
        let m = msg("03 777777 07 6578616d706c65 c00c");
        for len in 12..m.len() {
            assert_eq!(
                kind(&m[..len], 12),
                NameErrorKind::Truncated,
                "cut at {len}"
            );
            assert_eq!(
                skip(&m[..len], 12).map_err(|e| e.kind),
                Err(NameErrorKind::Truncated),
                "skip cut at {len}"
            );
        }
    }

    #[test]
    fn truncation_is_reported_at_the_end_not_past_it() {
        // Found by the fuzzer: skip() named an offset past the message when a label's length
        // ran beyond its end.
        let m = msg("3f 6162");
        assert_eq!(
            skip(&m, 12),
            Err(NameError {
                at: 15,
                kind: NameErrorKind::Truncated
            })
        );
        assert_eq!(kind(&m, 12), NameErrorKind::Truncated);
        assert_eq!(read_at(&m, 12).unwrap_err().at, 15);
        let m = msg("03 616263");
        assert_eq!(skip(&m, 12).map_err(|e| e.at), Err(16));
    }

    #[test]
    fn skip_steps_over_labels_and_a_pointer_without_following_it() {
        let m = msg("03 777777 c0ff 00");
        assert_eq!(skip(&m, 12), Ok(18));
        assert_eq!(skip(&msg("00"), 12), Ok(13));
        assert_eq!(
            skip(&msg("40"), 12).map_err(|e| e.kind),
            Err(NameErrorKind::LabelType(0x40))
        );
    }

    #[test]
    fn text_round_trips_with_escapes() {
        let n = text("A\\.b\\\\c\\000\\255.Example.");
        assert_eq!(n.wire(), b"\x07a.b\\c\x00\xff\x07example\x00");
        assert_eq!(n.to_string(), "a\\.b\\\\c\\000\\255.example.");
        assert_eq!(Name::from_ascii(&n.to_string()), Ok(n));
        assert_eq!(text("www.example.com"), text("WWW.example.COM."));
        assert_eq!(text("www.example.com").to_ascii(), "www.example.com.");
    }

    #[test]
    fn bad_text_says_why() {
        assert_eq!(Name::from_ascii("a..b"), Err(TextError::EmptyLabel));
        assert_eq!(Name::from_ascii(".a"), Err(TextError::EmptyLabel));
        assert_eq!(
            Name::from_ascii(&"a".repeat(64)),
            Err(TextError::LabelTooLong)
        );
        assert!(Name::from_ascii(&"a".repeat(63)).is_ok());
        assert_eq!(Name::from_ascii("a\\"), Err(TextError::BadEscape));
        assert_eq!(Name::from_ascii("a\\25"), Err(TextError::BadEscape));
        assert_eq!(Name::from_ascii("a\\256"), Err(TextError::BadEscape));
        let long = [&"a".repeat(63)[..]; 4].join(".");
        assert_eq!(Name::from_ascii(&long), Err(TextError::TooLong));
        let fits = [
            &"a".repeat(63)[..],
            &"a".repeat(63),
            &"a".repeat(63),
            &"a".repeat(61),
        ]
        .join(".");
        assert_eq!(Name::from_ascii(&fits).map(|n| n.wire().len()), Ok(255));
        for e in [
            TextError::EmptyLabel,
            TextError::LabelTooLong,
            TextError::TooLong,
            TextError::BadEscape,
        ] {
            assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn from_wire_takes_exactly_one_plain_name() {
        assert_eq!(
            Name::from_wire(b"\x03WWW\x00").map(|n| n.to_string()),
            Ok("www.".into())
        );
        assert_eq!(
            Name::from_wire(b"\x03www\x00\x00").map_err(|e| e.kind),
            Err(NameErrorKind::Trailing)
        );
        assert_eq!(
            Name::from_wire(b"\x03www\xc0\x00").map_err(|e| e.kind),
            Err(NameErrorKind::Pointer)
        );
        assert_eq!(
            Name::from_wire(b"\x03ww").map_err(|e| e.kind),
            Err(NameErrorKind::Truncated)
        );
    }

    #[test]
    fn suffixes_parent_and_within_walk_toward_the_root() {
        let n = text("a.example.com");
        let s: Vec<&[u8]> = n.suffixes().collect();
        assert_eq!(
            s,
            [
                &b"\x01a\x07example\x03com\x00"[..],
                b"\x07example\x03com\x00",
                b"\x03com\x00",
                b"\x00"
            ]
        );
        assert_eq!(n.parent(), Some(text("example.com")));
        assert_eq!(Name::root().parent(), None);
        assert!(n.is_within(&text("EXAMPLE.com")));
        assert!(n.is_within(&n));
        assert!(n.is_within(&Name::root()));
        assert!(!n.is_within(&text("xample.com")));
        assert!(!text("example.com").is_within(&n));
        assert_eq!(n.label_count(), 3);
        assert_eq!(
            n.labels().collect::<Vec<_>>(),
            [&b"a"[..], b"example", b"com"]
        );
    }

    #[test]
    fn equality_and_hash_ignore_case_and_unused_bytes() {
        use std::collections::HashSet;
        // A name read into a buffer that held a longer one: the stale bytes past its end
        // must not count.
        let mut reused = text(&"b".repeat(60));
        let m = msg("01 58 00");
        assert_eq!(read(&m, 12, &mut reused), Ok(15));
        let set: HashSet<Name> = [text("WwW.Example.Com"), reused].into_iter().collect();
        assert!(set.contains(&text("www.example.com")));
        assert!(set.contains(&text("x")));
        assert_ne!(text("a.bc"), text("ab.c"));
    }

    #[test]
    fn error_display_names_the_place() {
        let e = read_at(&msg("c00c"), 12).unwrap_err();
        assert!(e.to_string().contains("byte 12"), "{e}");
        for kind in [
            NameErrorKind::Truncated,
            NameErrorKind::LabelType(0x40),
            NameErrorKind::TooLong,
            NameErrorKind::PointerIntoHeader { target: 3 },
            NameErrorKind::Overlap,
            NameErrorKind::TooManyHops,
            NameErrorKind::Pointer,
            NameErrorKind::Trailing,
        ] {
            assert!(
                NameError { at: 7, kind }.to_string().contains('7'),
                "{kind:?}"
            );
        }
    }
}
