//! Reading DNS answers for flow learning, per message: nfqmark's own reader (`dns::answer`,
//! and `flows::answer_addresses` on it) against the hickory-proto decoder it replaced (the old
//! `answer_addresses`, kept as the fuzz target's reference in `fuzz/src/answer.rs`).
//!
//! `cargo bench --bench answer` prints ns per message, the median of several timed runs after a
//! warm-up, for:
//!
//! - a typical answer: a CNAME and three A records (what flow learning reads most);
//! - a referral as nsd sends it: two NS in authority, glue and an OPT in additional (what
//!   attribution will read);
//! - a hostile answer: 256 records in each section, each with two names of 255 bytes reached
//!   through 63 compression pointers (the most work the reader's bounds allow per byte).
//!
//! Run without `--bench` (as `cargo test --benches` does) it makes one short pass as a smoke
//! test. No figure here is asserted anywhere.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "benchmark code, never shipped: a step that fails ends the run, loudly and at once"
)]

use std::hint::black_box;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message as HMessage, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS};
use hickory_proto::rr::{Name as HName, RData as HRData, Record as HRecord, RecordType};
use nfqmark::dns::answer::{Message, Section};
use nfqmark::flows;

/// The fuzz target's reference: `answer_addresses` as it was, on hickory-proto.
#[allow(dead_code)]
#[path = "../fuzz/src/answer.rs"]
mod reference;

fn name(s: &str) -> HName {
    HName::from_ascii(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn encode(m: &HMessage) -> Vec<u8> {
    m.to_vec().unwrap_or_else(|e| panic!("encode: {e}"))
}

/// `www.video.example A` -> CNAME `edge-7.cdn.example` -> three A records.
fn typical() -> Vec<u8> {
    let mut m = HMessage::new(7, MessageType::Response, OpCode::Query);
    m.add_query(Query::query(name("www.video.example."), RecordType::A));
    m.add_answer(HRecord::from_rdata(
        name("www.video.example."),
        300,
        HRData::CNAME(CNAME(name("edge-7.cdn.example."))),
    ));
    for last in 1..=3 {
        m.add_answer(HRecord::from_rdata(
            name("edge-7.cdn.example."),
            20,
            HRData::A(A(Ipv4Addr::new(198, 18, 7, last))),
        ));
    }
    encode(&m)
}

/// A referral: the question's zone's two name servers, their glue, an OPT.
fn referral() -> Vec<u8> {
    let mut m = HMessage::new(7, MessageType::Response, OpCode::Query);
    m.add_query(Query::query(name("www.nfqm.example."), RecordType::A));
    for ns in ["ns1.nfqm.example.", "ns2.nfqm.example."] {
        m.add_authority(HRecord::from_rdata(
            name("nfqm.example."),
            3600,
            HRData::NS(NS(name(ns))),
        ));
        m.add_additional(HRecord::from_rdata(
            name(ns),
            3600,
            HRData::A(A(Ipv4Addr::new(198, 18, 0, 53))),
        ));
    }
    m.add_additional(HRecord::from_rdata(
        name("ns1.nfqm.example."),
        3600,
        HRData::AAAA(AAAA(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x53))),
    ));
    m.set_edns(Edns::new());
    encode(&m)
}

/// 256 records per section, each with an owner and a CNAME target of 255 bytes reached
/// through 63 pointers: the question's name is 127 one-byte labels, a raw record's data holds
/// a chain of 62 pointers back to it, and every later name points at the chain's end.
fn hostile() -> Vec<u8> {
    const PER_SECTION: u16 = 256;
    let mut m = Vec::new();
    for word in [7u16, 0x8180, 1, PER_SECTION, PER_SECTION, PER_SECTION] {
        m.extend_from_slice(&word.to_be_bytes());
    }
    for _ in 0..127 {
        m.extend_from_slice(b"\x01a");
    }
    m.push(0);
    m.extend_from_slice(&[0, 1, 0, 1]);
    let pointer = |to: usize| (0xc000 | u16::try_from(to).unwrap_or(0)).to_be_bytes();
    // Answer 1: type NULL (10), its data the pointer chain.
    m.extend_from_slice(&pointer(12));
    m.extend_from_slice(&[0, 10, 0, 1, 0, 0, 0, 60, 0, 124]);
    let mut last = 12;
    for _ in 0..62 {
        let here = m.len();
        m.extend_from_slice(&pointer(last));
        last = here;
    }
    for _ in 1..3 * PER_SECTION {
        m.extend_from_slice(&pointer(last));
        m.extend_from_slice(&[0, 5, 0, 1, 0, 0, 0, 60, 0, 2]);
        m.extend_from_slice(&pointer(last));
    }
    m
}

struct Args {
    bench: bool,
    runs: usize,
    only: Option<usize>,
    reader: Option<usize>,
}

fn args() -> Args {
    let mut a = Args {
        bench: false,
        runs: 15,
        only: None,
        reader: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--bench" => a.bench = true,
            "--runs" => a.runs = it.next().and_then(|v| v.parse().ok()).unwrap_or(a.runs),
            "--only" => a.only = it.next().and_then(|v| v.parse().ok()),
            "--reader" => a.reader = it.next().and_then(|v| v.parse().ok()),
            "-h" | "--help" => {
                println!(
                    "cargo bench --bench answer [-- --runs N (default 15)] [--only 0|1|2 \
                     (typical, referral, hostile)] [--reader 0-4 (in the order shown)]"
                );
                std::process::exit(0);
            }
            _ => {}
        }
    }
    a
}

/// Median ns per call of `f` on `msg`: `runs` timed runs of `iters` calls after a warm-up.
fn time(
    msg: &[u8],
    runs: usize,
    iters: usize,
    warmup: Duration,
    f: &dyn Fn(&[u8]) -> usize,
) -> f64 {
    let warm = Instant::now();
    while warm.elapsed() < warmup {
        black_box(f(black_box(msg)));
    }
    let mut per_call: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..iters {
                black_box(f(black_box(msg)));
            }
            start.elapsed().as_nanos() as f64 / iters as f64
        })
        .collect();
    per_call.sort_by(f64::total_cmp);
    per_call
        .get(per_call.len() / 2)
        .copied()
        .unwrap_or(f64::NAN)
}

fn main() {
    let args = args();
    let (runs, budget, warmup) = if args.bench {
        (
            args.runs.max(1),
            Duration::from_millis(200),
            Duration::from_millis(300),
        )
    } else {
        (1, Duration::ZERO, Duration::ZERO)
    };
    let cases: [(&str, Vec<u8>); 3] = [
        ("typical: CNAME + 3 A", typical()),
        ("referral: 2 NS, 3 glue, OPT", referral()),
        (
            "hostile: 3 x 256 records, 255-byte names, 63 hops",
            hostile(),
        ),
    ];
    type Reader = (&'static str, fn(&[u8]) -> usize);
    let readers: [Reader; 5] = [
        ("old answer_addresses (hickory-proto)", |m| {
            reference::reference_addresses(m).map_or(0, |r| r.addresses.len() + r.names.len())
        }),
        ("new answer_addresses (dns::answer)", |m| {
            flows::answer_addresses(m).map_or(0, |r| r.addresses.len() + r.names.len())
        }),
        ("hickory-proto Message::from_vec", |m| {
            HMessage::from_vec(m).map_or(0, |m| m.answers.len())
        }),
        ("dns::answer, answer section", |m| {
            Message::parse(m).map_or(0, |m| m.section(Section::Answer).count())
        }),
        ("dns::answer, every section", |m| {
            Message::parse(m).map_or(0, |m| m.records().count())
        }),
    ];
    if !args.bench {
        for (i, (_, msg)) in cases.iter().enumerate() {
            if args.only.is_some_and(|o| o != i) {
                continue;
            }
            for (j, (_, f)) in readers.iter().enumerate() {
                if args.reader.is_none_or(|r| r == j) {
                    black_box(f(msg));
                }
            }
        }
        println!(
            "answer: smoke pass under `cargo test` (no figures); use cargo bench --bench answer"
        );
        return;
    }
    for (i, (case, msg)) in cases.iter().enumerate() {
        if args.only.is_some_and(|o| o != i) {
            continue;
        }
        println!("{case} ({} bytes)", msg.len());
        for (j, (label, f)) in readers.iter().enumerate() {
            if args.reader.is_some_and(|r| r != j) {
                continue;
            }
            // Iterations for about `budget` per run, from one timed call.
            let one = Instant::now();
            black_box(f(msg));
            let iters = (budget.as_nanos() / one.elapsed().as_nanos().max(1)).clamp(1, 1_000_000);
            let ns = time(msg, runs, iters as usize, warmup, f);
            println!("  {label:<40} {:>12.0} ns  (returns {})", ns, f(msg));
        }
    }
}
