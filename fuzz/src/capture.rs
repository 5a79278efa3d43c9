//! Target `capture`: `nfqmark replay`'s capture reader and link layers, then every frame through
//! the replay model and the decision path. Besides "no panic, no hang": every frame the reader
//! reports is passed on (its count is the reader's), every frame's data lies within the input
//! or the reader's buffer as a slice of at most the input's length, and every row replay makes
//! for a frame holds a packet of that frame.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use nfqmark::engine::EngineConfig;
use nfqmark::flows::LearnConfig;
use nfqmark::links::LinkMap;
use nfqmark::replay::{Model, ModelConfig, Replayer, linktype, read_capture_from};
use nfqmark::rules::RuleSet;
use nfqmark::worker::Shared;
use nfqmark_testkit as fixtures;
use nfqmark_testkit::capture::{ethernet, pcap, pcapng, sll2};

/// The target.
pub fn capture(data: &[u8]) {
    let model = Model::new(ModelConfig {
        locals: vec![IpAddr::V4(Ipv4Addr::new(198, 18, 1, 1))],
        hook: None,
        client_marks: Vec::new(),
        mask: u32::MAX,
        dns_ports: vec![53],
        flow_rules: false,
        conntrack_info: true,
        copy_range: usize::from(u16::MAX),
    });
    let shared = Shared::new(
        EngineConfig::default(),
        LearnConfig::default(),
        RuleSet::empty(),
        &[0],
    );
    let mut replayer = Replayer::new(shared, model, LinkMap::new());
    let mut frames = 0u64;
    let result = read_capture_from("fuzz", data, &mut |frame| {
        frames += 1;
        assert!(
            frame.data.len() <= data.len(),
            "a frame longer than the input"
        );
        if let Some(row) = replayer.frame(frame) {
            assert!(row.passes <= 4, "more passes than the cap");
        }
    });
    if let Ok(info) = result {
        assert_eq!(info.frames, frames, "frames reported and passed on differ");
    }
}

/// Seed captures: pcap (SLL2, Ethernet) and pcapng with a resolution through the router.
pub fn seed_captures() -> Vec<(String, Vec<u8>)> {
    let client = IpAddr::V4(Ipv4Addr::new(198, 18, 1, 2));
    let router = IpAddr::V4(Ipv4Addr::new(198, 18, 1, 1));
    let t0 = Duration::from_secs(1_800_000_000);
    let q = fixtures::udp(
        client,
        40_001,
        router,
        53,
        &fixtures::dns_query(1, "a.example"),
    );
    let a = fixtures::udp(
        router,
        53,
        client,
        40_001,
        &fixtures::dns_answer(1, "a.example"),
    );
    let mac = [2, 0, 0, 0, 0, 1];
    vec![
        (
            "capture-sll2".into(),
            pcap(
                linktype::LINUX_SLL2,
                &[
                    (t0, sll2(&q, 2, false, mac)),
                    (t0 + Duration::from_millis(1), sll2(&a, 2, true, mac)),
                ],
            ),
        ),
        (
            "capture-ethernet".into(),
            pcap(linktype::ETHERNET, &[(t0, ethernet(&q, mac))]),
        ),
        (
            "capture-pcapng".into(),
            pcapng(
                &[(linktype::RAW, "lan0")],
                &[
                    (t0, 0, Some(false), q.clone()),
                    (t0, 0, Some(true), a.clone()),
                ],
            ),
        ),
    ]
}
