//! nf_tables rule dumps, read for one thing: the packet counters of the NFQUEUE rules nfqmark's
//! setup installed. The kernel counts every packet such a rule sent to a queue, including the
//! ones it accepted without queueing (`--queue-bypass` with nobody listening, or a full queue
//! with fail-open), which the queue itself never counts; what nfqmark received subtracted from
//! these counters is what it never saw.
//!
//! A rule counts when it carries nfqmark's comment — rule userdata (libnftnl's
//! `NFTNL_UDATA_RULE_COMMENT`) or an xtables `comment` match, which is what iptables-nft 1.8.9
//! writes for `-m comment --comment nfqmark` — or sits in the `inet nfqmark` table of
//! `nfqmark setup --nft`, and it ends in a queue: the xtables `NFQUEUE` target (queue number in
//! its info struct, revisions 0-3) or the native `queue` expression; and it has a `counter`.
//!
//! Pure, like all of `wire`: no system calls, no `unsafe`, no panics on what the kernel sends.

use std::collections::BTreeMap;

use super::{Attrs, FrameError, Request, be16, be32, be64, c_str, error_code, next_frame};
use crate::nfnl::abi::*;

/// The comment nfqmark's rules carry.
pub const COMMENT: &[u8] = b"nfqmark";
/// The table `nfqmark setup --nft` creates (family inet): every queue rule in it is nfqmark's.
pub const NFT_TABLE: &[u8] = b"nfqmark";

/// The (family, table) pairs a dump reads: iptables-nft's and ip6tables-nft's `mangle` and
/// `raw`, and `nfqmark setup --nft`'s own table.
pub const DUMPED_TABLES: [(u8, &str); 5] = [
    (NFPROTO_IPV4, "mangle"),
    (NFPROTO_IPV4, "raw"),
    (NFPROTO_IPV6, "mangle"),
    (NFPROTO_IPV6, "raw"),
    (NFPROTO_INET, "nfqmark"),
];

/// Room for a rule dump request (header, nfgenmsg and a table name).
pub(crate) const DUMP_REQUEST_CAP: usize = 64;

/// `NFT_MSG_GETRULE` with `NLM_F_DUMP` for every rule of table `table` in family `family`.
pub(crate) fn encode_rule_dump(seq: u32, family: u8, table: &str) -> Request<DUMP_REQUEST_CAP> {
    let mut req = Request::new(
        NFNL_SUBSYS_NFTABLES,
        NFT_MSG_GETRULE,
        NLM_F_DUMP,
        seq,
        family,
        0,
    );
    let mut name = Vec::with_capacity(table.len() + 1);
    name.extend_from_slice(table.as_bytes());
    name.push(0);
    req.attr(NFTA_RULE_TABLE, &name);
    req
}

/// A range of queues: a rule's `--queue-num N` is `{ first: N, count: 1 }`, its
/// `--queue-balance A:B` is `{ first: A, count: B - A + 1 }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueueSpan {
    pub first: u16,
    pub count: u16,
}

impl QueueSpan {
    /// Whether queue `queue` is one of the span's.
    pub fn contains(&self, queue: u16) -> bool {
        queue >= self.first && u32::from(queue) < u32::from(self.first) + u32::from(self.count)
    }
}

/// One of nfqmark's NFQUEUE rules and what its counter says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueRule {
    /// `NFPROTO_*` of its table (2 ip, 10 ip6, 1 inet).
    pub family: u8,
    pub table: String,
    pub chain: String,
    pub handle: u64,
    /// The queue(s) it sends to.
    pub queues: QueueSpan,
    /// Packets and bytes its counter counted: every packet the rule sent to the queue,
    /// accepted by the kernel without queueing or not.
    pub packets: u64,
    pub bytes: u64,
}

/// Packets nfqmark's rules sent to each queue span, summed over rules and families.
pub fn packets_per_queue(rules: &[QueueRule]) -> BTreeMap<QueueSpan, u64> {
    let mut sums = BTreeMap::new();
    for rule in rules {
        let sum: &mut u64 = sums.entry(rule.queues).or_default();
        *sum = sum.saturating_add(rule.packets);
    }
    sums
}

/// What the datagrams of a dump held, accumulated.
#[derive(Debug, Default)]
pub struct RuleDump {
    /// nfqmark's queue rules seen so far.
    pub rules: Vec<QueueRule>,
    /// `NLMSG_DONE` arrived: the dump is complete.
    pub done: bool,
    /// The kernel flagged a message `NLM_F_DUMP_INTR`: the ruleset changed during the dump,
    /// which must be run again.
    pub interrupted: bool,
}

/// Why a dump failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DumpError {
    /// The kernel refused the dump (`NLMSG_ERROR` with this errno).
    Kernel(i32),
    /// A message that is not what the kernel sends.
    Malformed(&'static str),
}

impl RuleDump {
    /// Take in one datagram of the dump answering request `seq`. Messages for other requests
    /// are skipped.
    pub fn feed(&mut self, datagram: &[u8], seq: u32) -> Result<(), DumpError> {
        let mut rest = datagram;
        while let Some(frame) = next_frame(&mut rest) {
            let frame = frame.map_err(|e| {
                DumpError::Malformed(match e {
                    FrameError::HeaderCut | FrameError::Truncated { .. } => {
                        "rule dump message cut short"
                    }
                    FrameError::LengthBelowHeader => "rule dump message length below its header",
                })
            })?;
            if frame.seq != seq {
                continue;
            }
            if frame.flags & NLM_F_DUMP_INTR != 0 {
                self.interrupted = true;
            }
            match frame.msg_type {
                NLMSG_DONE => {
                    self.done = true;
                    return Ok(());
                }
                NLMSG_ERROR => match error_code(frame.body) {
                    Some(0) => {}
                    Some(errno) => return Err(DumpError::Kernel(errno)),
                    None => return Err(DumpError::Malformed("error message cut short")),
                },
                t if t == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWRULE => {
                    if let Some(rule) = parse_rule(frame.body).map_err(DumpError::Malformed)? {
                        self.rules.push(rule);
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// What a rule's expressions say, as far as we care.
#[derive(Debug, Default)]
struct Exprs {
    queues: Option<QueueSpan>,
    counter: Option<(u64, u64)>,
    comment: bool,
}

/// One `NFT_MSG_NEWRULE` body: `Some` when it is one of nfqmark's queue rules with a counter.
fn parse_rule(body: &[u8]) -> Result<Option<QueueRule>, &'static str> {
    let (&[family, _version, _, _], attrs) = body
        .split_first_chunk::<NFGENMSG_LEN>()
        .ok_or("rule message shorter than its nfgenmsg header")?;
    let (mut table, mut chain, mut handle) = (&[][..], &[][..], 0);
    let mut exprs = Exprs::default();
    for attr in Attrs::new(attrs) {
        let (attr_type, value) = attr?;
        match attr_type {
            NFTA_RULE_TABLE => table = c_str(value),
            NFTA_RULE_CHAIN => chain = c_str(value),
            NFTA_RULE_HANDLE => handle = be64(value).ok_or("rule handle shorter than 8 bytes")?,
            NFTA_RULE_EXPRESSIONS => parse_exprs(value, &mut exprs)?,
            NFTA_RULE_USERDATA => exprs.comment |= userdata_comment(value) == Some(COMMENT),
            _ => {}
        }
    }
    let ours = exprs.comment || (family == NFPROTO_INET && table == NFT_TABLE);
    let (Some(queues), Some((packets, bytes)), true) = (exprs.queues, exprs.counter, ours) else {
        return Ok(None);
    };
    Ok(Some(QueueRule {
        family,
        table: String::from_utf8_lossy(table).into_owned(),
        chain: String::from_utf8_lossy(chain).into_owned(),
        handle,
        queues,
        packets,
        bytes,
    }))
}

/// The expressions of a rule, in order. A counter after the queue verdict would count
/// nothing, so the first counter is the rule's.
fn parse_exprs(list: &[u8], out: &mut Exprs) -> Result<(), &'static str> {
    for elem in Attrs::new(list) {
        let (elem_type, expr) = elem?;
        if elem_type != NFTA_LIST_ELEM {
            continue;
        }
        let (mut name, mut data) = (&[][..], &[][..]);
        for attr in Attrs::new(expr) {
            let (attr_type, value) = attr?;
            match attr_type {
                NFTA_EXPR_NAME => name = c_str(value),
                NFTA_EXPR_DATA => data = value,
                _ => {}
            }
        }
        match name {
            b"counter" if out.counter.is_none() => out.counter = Some(parse_counter(data)?),
            b"target" => {
                if let Some(span) = parse_xt_nfqueue(data)? {
                    out.queues = Some(span);
                }
            }
            b"queue" => {
                if let Some(span) = parse_queue_expr(data)? {
                    out.queues = Some(span);
                }
            }
            b"match" => out.comment |= parse_xt_comment(data)? == Some(COMMENT),
            _ => {}
        }
    }
    Ok(())
}

/// `(packets, bytes)` of a counter expression.
fn parse_counter(data: &[u8]) -> Result<(u64, u64), &'static str> {
    let (mut packets, mut bytes) = (0, 0);
    for attr in Attrs::new(data) {
        match attr? {
            (NFTA_COUNTER_PACKETS, v) => packets = be64(v).ok_or("counter shorter than 8 bytes")?,
            (NFTA_COUNTER_BYTES, v) => bytes = be64(v).ok_or("counter shorter than 8 bytes")?,
            _ => {}
        }
    }
    Ok((packets, bytes))
}

/// An xtables compat match or target inside a rule.
#[derive(Debug, Default)]
struct Xt<'a> {
    name: &'a [u8],
    rev: Option<u32>,
    info: &'a [u8],
}

/// The name, revision and info of an xtables compat match or target.
fn xt_parts(data: &[u8]) -> Result<Xt<'_>, &'static str> {
    let mut xt = Xt::default();
    for attr in Attrs::new(data) {
        match attr? {
            (NFTA_XT_NAME, v) => xt.name = c_str(v),
            (NFTA_XT_REV, v) => xt.rev = Some(be32(v).ok_or("xt revision shorter than 4 bytes")?),
            (NFTA_XT_INFO, v) => xt.info = v,
            _ => {}
        }
    }
    Ok(xt)
}

/// The queues of an xtables `NFQUEUE` target; `None` for any other target. The info structs
/// (xt_NFQUEUE.h) are host-order u16s: revision 0 `queuenum`; 1-3 `queuenum, queues_total`
/// (then `bypass` or `flags`).
fn parse_xt_nfqueue(data: &[u8]) -> Result<Option<QueueSpan>, &'static str> {
    let Xt { name, rev, info } = xt_parts(data)?;
    if name != b"NFQUEUE" {
        return Ok(None);
    }
    let first = info
        .first_chunk::<2>()
        .map(|b| u16::from_ne_bytes(*b))
        .ok_or("NFQUEUE target info shorter than its queue number")?;
    let count = match rev.unwrap_or(0) {
        0 => 1,
        _ => info
            .get(2..4)
            .and_then(|b| b.first_chunk::<2>())
            .map(|b| u16::from_ne_bytes(*b))
            .ok_or("NFQUEUE target info shorter than its queue count")?,
    };
    Ok(Some(QueueSpan {
        first,
        count: count.max(1),
    }))
}

/// The queues of a native `queue` expression; `None` when the number comes from a register.
fn parse_queue_expr(data: &[u8]) -> Result<Option<QueueSpan>, &'static str> {
    let (mut first, mut count, mut from_register) = (None, 1, false);
    for attr in Attrs::new(data) {
        match attr? {
            (NFTA_QUEUE_NUM, v) => {
                first = Some(be16(v).ok_or("queue number shorter than 2 bytes")?)
            }
            (NFTA_QUEUE_TOTAL, v) => count = be16(v).ok_or("queue total shorter than 2 bytes")?,
            (NFTA_QUEUE_SREG_QNUM, _) => from_register = true,
            _ => {}
        }
    }
    Ok(first.filter(|_| !from_register).map(|first| QueueSpan {
        first,
        count: count.max(1),
    }))
}

/// The comment of an xtables `comment` match; `None` for any other match.
fn parse_xt_comment(data: &[u8]) -> Result<Option<&[u8]>, &'static str> {
    let Xt { name, info, .. } = xt_parts(data)?;
    if name != b"comment" {
        return Ok(None);
    }
    let info = info.get(..XT_MAX_COMMENT_LEN).unwrap_or(info);
    Ok(Some(c_str(info)))
}

/// The comment in a rule's userdata TLVs (u8 type, u8 length, value), without its NUL.
fn userdata_comment(udata: &[u8]) -> Option<&[u8]> {
    let mut rest = udata;
    while let [kind, len, tail @ ..] = rest {
        let value = tail.get(..usize::from(*len))?;
        if *kind == NFTNL_UDATA_RULE_COMMENT {
            return Some(c_str(value));
        }
        rest = tail.get(usize::from(*len)..)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nfnl::testdata::*;

    fn nested(attr_type: u16, inner: &[Vec<u8>]) -> Vec<u8> {
        attr(NLA_F_NESTED | attr_type, &inner.concat())
    }

    fn strz(attr_type: u16, s: &str) -> Vec<u8> {
        attr(attr_type, &[s.as_bytes(), &[0]].concat())
    }

    fn expr(name: &str, data: &[Vec<u8>]) -> Vec<u8> {
        nested(
            NFTA_LIST_ELEM,
            &[strz(NFTA_EXPR_NAME, name), nested(NFTA_EXPR_DATA, data)],
        )
    }

    fn counter(packets: u64, bytes: u64) -> Vec<u8> {
        expr(
            "counter",
            &[
                attr(NFTA_COUNTER_BYTES, &bytes.to_be_bytes()),
                attr(NFTA_COUNTER_PACKETS, &packets.to_be_bytes()),
            ],
        )
    }

    fn xt(kind: &str, name: &str, rev: u32, info: &[u8]) -> Vec<u8> {
        expr(
            kind,
            &[
                strz(NFTA_XT_NAME, name),
                attr(NFTA_XT_REV, &rev.to_be_bytes()),
                attr(NFTA_XT_INFO, info),
            ],
        )
    }

    /// `struct xt_NFQ_info_v3` padded to 8 bytes as the compat layer sends it.
    fn nfqueue_v3(queue: u16, total: u16, flags: u16) -> Vec<u8> {
        xt(
            "target",
            "NFQUEUE",
            3,
            &[
                &queue.to_ne_bytes()[..],
                &total.to_ne_bytes(),
                &flags.to_ne_bytes(),
                &[0, 0],
            ]
            .concat(),
        )
    }

    fn comment_match(text: &str) -> Vec<u8> {
        let mut info = [0u8; XT_MAX_COMMENT_LEN];
        info[..text.len()].copy_from_slice(text.as_bytes());
        xt("match", "comment", 0, &info)
    }

    /// An `NFT_MSG_NEWRULE` as a dump sends it.
    fn rule(family: u8, table: &str, handle: u64, exprs: &[Vec<u8>], udata: &[u8]) -> Vec<u8> {
        let mut body = vec![family, 0, 0, 7]; // res_id: the ruleset generation
        body.extend(strz(NFTA_RULE_TABLE, table));
        body.extend(strz(NFTA_RULE_CHAIN, "OUTPUT"));
        body.extend(attr(NFTA_RULE_HANDLE, &handle.to_be_bytes()));
        body.extend(nested(NFTA_RULE_EXPRESSIONS, exprs));
        if !udata.is_empty() {
            body.extend(attr(NFTA_RULE_USERDATA, udata));
        }
        let mut msg = nlmsg((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWRULE, 5, &body);
        msg[6..8].copy_from_slice(&NLM_F_MULTI.to_ne_bytes());
        msg
    }

    fn done(seq: u32) -> Vec<u8> {
        nlmsg(NLMSG_DONE, seq, &0i32.to_ne_bytes())
    }

    /// `-p udp --dport 53 -m comment --comment nfqmark -j NFQUEUE --queue-num 3 --queue-bypass`
    /// as iptables-nft 1.8.9 writes it (match, then counter, then target).
    fn iptables_rule(handle: u64, queue: u16, packets: u64, text: &str) -> Vec<u8> {
        let proto = expr("meta", &[attr(2, &[0; 4])]);
        rule(
            NFPROTO_IPV4,
            "mangle",
            handle,
            &[
                proto,
                comment_match(text),
                counter(packets, packets * 92),
                nfqueue_v3(queue, 1, 1),
            ],
            &[],
        )
    }

    fn dump(datagram: &[u8]) -> Result<RuleDump, DumpError> {
        let mut d = RuleDump::default();
        d.feed(datagram, 5)?;
        Ok(d)
    }

    #[test]
    fn iptables_nft_rule_with_comment_match_counts() {
        let mut buf = iptables_rule(2, 3, 17, "nfqmark");
        buf.extend(done(5));
        let d = dump(&buf).expect("dump");
        assert!(d.done && !d.interrupted);
        assert_eq!(
            d.rules,
            [QueueRule {
                family: NFPROTO_IPV4,
                table: "mangle".into(),
                chain: "OUTPUT".into(),
                handle: 2,
                queues: QueueSpan { first: 3, count: 1 },
                packets: 17,
                bytes: 17 * 92,
            }]
        );
    }

    #[test]
    fn rules_without_our_comment_queue_or_counter_do_not_count() {
        let other_comment = iptables_rule(1, 3, 5, "somebody else");
        let no_comment = rule(
            NFPROTO_IPV4,
            "mangle",
            2,
            &[counter(9, 9), nfqueue_v3(3, 1, 0)],
            &[],
        );
        let no_queue = rule(
            NFPROTO_IPV4,
            "mangle",
            3,
            &[
                comment_match("nfqmark"),
                counter(9, 9),
                xt("target", "CONNMARK", 1, &[0; 16]),
            ],
            &[],
        );
        let no_counter = rule(
            NFPROTO_IPV4,
            "mangle",
            4,
            &[comment_match("nfqmark"), nfqueue_v3(3, 1, 0)],
            &[],
        );
        let buf = [other_comment, no_comment, no_queue, no_counter, done(5)].concat();
        let d = dump(&buf).expect("dump");
        assert!(d.done);
        assert_eq!(d.rules, []);
    }

    #[test]
    fn userdata_comment_and_nft_table_count_too() {
        // libnftnl TLVs: an unrelated type first, then the comment.
        let udata = [
            &[9u8, 2, 0xaa, 0xbb][..],
            &[NFTNL_UDATA_RULE_COMMENT, 8],
            b"nfqmark\0",
        ]
        .concat();
        let by_udata = rule(
            NFPROTO_IPV6,
            "raw",
            8,
            &[counter(4, 400), nfqueue_v3(0, 4, 0)],
            &udata,
        );
        let native = expr(
            "queue",
            &[
                attr(NFTA_QUEUE_NUM, &5u16.to_be_bytes()),
                attr(NFTA_QUEUE_TOTAL, &1u16.to_be_bytes()),
                attr(3, &1u16.to_be_bytes()), // NFTA_QUEUE_FLAGS: bypass
            ],
        );
        let in_our_table = rule(
            NFPROTO_INET,
            "nfqmark",
            9,
            &[counter(6, 600), native.clone()],
            &[],
        );
        let in_other_table = rule(NFPROTO_INET, "filter", 10, &[counter(6, 600), native], &[]);
        let buf = [by_udata, in_our_table, in_other_table, done(5)].concat();
        let d = dump(&buf).expect("dump");
        let got: Vec<(u8, QueueSpan, u64)> = d
            .rules
            .iter()
            .map(|r| (r.family, r.queues, r.packets))
            .collect();
        assert_eq!(
            got,
            [
                (NFPROTO_IPV6, QueueSpan { first: 0, count: 4 }, 4),
                (NFPROTO_INET, QueueSpan { first: 5, count: 1 }, 6),
            ]
        );
    }

    #[test]
    fn every_nfqueue_revision_and_register_queues() {
        let span = |data: Vec<u8>| {
            let Ok(Some(r)) =
                parse_rule(&rule_body(&[comment_match("nfqmark"), counter(1, 1), data]))
            else {
                return None;
            };
            Some(r.queues)
        };
        let rev = |rev: u32, info: &[u8]| span(xt("target", "NFQUEUE", rev, info));
        let q = |v: u16| v.to_ne_bytes();
        assert_eq!(
            rev(0, &[&q(7)[..], &[0; 6]].concat()),
            Some(QueueSpan { first: 7, count: 1 })
        );
        assert_eq!(
            rev(1, &[&q(2)[..], &q(3)].concat()),
            Some(QueueSpan { first: 2, count: 3 })
        );
        assert_eq!(
            rev(2, &[&q(2)[..], &q(0), &q(1)].concat()),
            Some(QueueSpan { first: 2, count: 1 })
        );
        let from_register = expr("queue", &[attr(NFTA_QUEUE_SREG_QNUM, &1u32.to_be_bytes())]);
        assert_eq!(span(from_register), None);
        assert_eq!(
            parse_rule(&rule_body(&[
                comment_match("nfqmark"),
                counter(1, 1),
                xt("target", "NFQUEUE", 3, &[1])
            ])),
            Err("NFQUEUE target info shorter than its queue number")
        );
        assert_eq!(
            parse_rule(&rule_body(&[
                comment_match("nfqmark"),
                counter(1, 1),
                xt("target", "NFQUEUE", 1, &[1, 0])
            ])),
            Err("NFQUEUE target info shorter than its queue count")
        );
    }

    /// The body of a rule message (nfgenmsg + attributes) with these expressions.
    fn rule_body(exprs: &[Vec<u8>]) -> Vec<u8> {
        let msg = rule(NFPROTO_IPV4, "mangle", 1, exprs, &[]);
        msg[16..].to_vec()
    }

    #[test]
    fn spans_sum_over_rules_and_families() {
        let r = |family, first, count, packets| QueueRule {
            family,
            table: "mangle".into(),
            chain: "OUTPUT".into(),
            handle: 1,
            queues: QueueSpan { first, count },
            packets,
            bytes: 0,
        };
        let sums = packets_per_queue(&[
            r(NFPROTO_IPV4, 0, 1, 10),
            r(NFPROTO_IPV6, 0, 1, 5),
            r(NFPROTO_IPV4, 2, 2, 7),
            r(NFPROTO_IPV4, 0, 1, u64::MAX),
        ]);
        assert_eq!(sums.get(&QueueSpan { first: 0, count: 1 }), Some(&u64::MAX));
        assert_eq!(sums.get(&QueueSpan { first: 2, count: 2 }), Some(&7));
        let span = QueueSpan { first: 2, count: 2 };
        assert!(span.contains(2) && span.contains(3) && !span.contains(4) && !span.contains(1));
        assert!(
            QueueSpan {
                first: u16::MAX,
                count: 1
            }
            .contains(u16::MAX)
        );
    }

    #[test]
    fn dump_flags_errors_and_foreign_messages() {
        let mut interrupted = iptables_rule(1, 3, 1, "nfqmark");
        interrupted[6..8].copy_from_slice(&(NLM_F_MULTI | NLM_F_DUMP_INTR).to_ne_bytes());
        let d = dump(&interrupted).expect("dump");
        assert!(d.interrupted && !d.done);
        let mut refused = (-libc::EPERM).to_ne_bytes().to_vec();
        refused.extend_from_slice(&[0; 16]);
        assert_eq!(
            dump(&nlmsg(NLMSG_ERROR, 5, &refused)).err(),
            Some(DumpError::Kernel(libc::EPERM))
        );
        // Another request's messages are not ours.
        let other = [nlmsg(NLMSG_ERROR, 4, &refused), done(4)].concat();
        let d = dump(&other).expect("dump");
        assert!(!d.done);
        assert!(matches!(dump(&[1, 2, 3]), Err(DumpError::Malformed(_))));
    }

    #[test]
    fn broken_rules_are_errors_not_panics() {
        let good = iptables_rule(1, 3, 17, "nfqmark");
        for_each_mutant(&good, 0x2545_f491_4f6c_dd1du64, 20_000, |mutant| {
            let mut d = RuleDump::default();
            let _ = d.feed(mutant, 5);
            assert!(d.rules.len() <= 1);
        });
    }

    #[test]
    fn dump_request_encodes() {
        let mut req = encode_rule_dump(9, NFPROTO_IPV6, "mangle");
        let bytes = req.bytes().expect("fits").to_vec();
        let mut rest = &bytes[..];
        let frame = next_frame(&mut rest).expect("one").expect("framed");
        assert_eq!(frame.msg_type, 0x0a07);
        assert_eq!(frame.flags, NLM_F_REQUEST | NLM_F_DUMP);
        assert_eq!(frame.seq, 9);
        assert_eq!(&frame.body[..4], &[NFPROTO_IPV6, 0, 0, 0]);
        assert_eq!(
            Attrs::new(&frame.body[4..]).next(),
            Some(Ok((NFTA_RULE_TABLE, &b"mangle\0"[..])))
        );
    }
}
