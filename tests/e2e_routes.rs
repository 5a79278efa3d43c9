//! End to end: the policy routing `nfqmark setup --routes` prints, applied with `sh` in a
//! router namespace, sends marked packets over the mark's link, and while that link is down
//! refuses them instead of letting them leave by the main table (the kill switch); IPv4 and
//! IPv6.
//!
//! The world: a router namespace with two links to a far namespace, link1 (the main table's
//! default route) and link2 (the mark's table). The router marks its UDP packets to port 9 with
//! 137 (mangle OUTPUT, which routes them again by the mark) and counts, per link, what leaves
//! (mangle POSTROUTING). Port 10 stays unmarked.
//!
//! Control: with the kill switch's routes deleted, the same marked packets leave by link1 while
//! link2 is down: the leak the kill switch is there to stop, so the test can fail.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a step that fails fails the test, loudly and at once"
)]

mod common;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::{Command, Stdio};

use nfqmark_lab::netns::{self, Netns};

struct World {
    router: Netns,
    _far: Netns,
}

const FAR_V4: &str = "198.18.9.80";
const FAR_V6: &str = "2001:db8:9::80";

fn build(tag: &str) -> World {
    let prefix = netns::unique_prefix(tag);
    let router = Netns::new(&format!("{prefix}-r")).expect("router namespace");
    let far = Netns::new(&format!("{prefix}-f")).expect("far namespace");
    for link in ["link1", "link2"] {
        router
            .ip(&[
                "link",
                "add",
                link,
                "type",
                "veth",
                "peer",
                "name",
                link,
                "netns",
                far.name(),
            ])
            .expect("veth");
    }
    for (ns, dev, v4, v6) in [
        (&router, "link1", "198.18.3.1/24", "2001:db8:3::1/64"),
        (&router, "link2", "198.18.4.1/24", "2001:db8:4::1/64"),
        (&far, "link1", "198.18.3.2/24", "2001:db8:3::2/64"),
        (&far, "link2", "198.18.4.2/24", "2001:db8:4::2/64"),
    ] {
        ns.ip(&["addr", "add", v4, "dev", dev]).expect("addr");
        ns.ip(&["addr", "add", v6, "dev", dev, "nodad"])
            .expect("addr6");
        ns.ip(&["link", "set", dev, "up"]).expect("up");
    }
    far.ip(&["addr", "add", "198.18.9.80/32", "dev", "lo"])
        .expect("far addr");
    far.ip(&["addr", "add", "2001:db8:9::80/128", "dev", "lo"])
        .expect("far addr6");
    // The uplink keeps its IPv6 address while down (as an uplink configured statically does;
    // otherwise the address comes back from its DHCP or RA client when it is up again).
    router
        .sysctl("net.ipv6.conf.link2.keep_addr_on_down", "1")
        .expect("keep_addr_on_down");
    router
        .ip(&["route", "add", "default", "via", "198.18.3.2"])
        .expect("main route");
    router
        .ip(&["-6", "route", "add", "default", "via", "2001:db8:3::2"])
        .expect("main route6");
    for tool in ["iptables", "ip6tables"] {
        let rules: [&[&str]; 5] = [
            &[
                "-t",
                "mangle",
                "-A",
                "OUTPUT",
                "-p",
                "udp",
                "--dport",
                "9",
                "-j",
                "MARK",
                "--set-mark",
                "137",
            ],
            &[
                "-t",
                "mangle",
                "-A",
                "POSTROUTING",
                "-o",
                "link1",
                "-p",
                "udp",
                "--dport",
                "9",
            ],
            &[
                "-t",
                "mangle",
                "-A",
                "POSTROUTING",
                "-o",
                "link2",
                "-p",
                "udp",
                "--dport",
                "9",
            ],
            &[
                "-t",
                "mangle",
                "-A",
                "POSTROUTING",
                "-o",
                "link1",
                "-p",
                "udp",
                "--dport",
                "10",
            ],
            &[
                "-t",
                "mangle",
                "-A",
                "POSTROUTING",
                "-o",
                "link2",
                "-p",
                "udp",
                "--dport",
                "10",
            ],
        ];
        for r in rules {
            router.exec(tool, r).expect("iptables");
        }
    }
    World { router, _far: far }
}

/// The routing script for mark 137 over link2.
fn script() -> String {
    let out = Command::new(common::nfqmark_bin())
        .args([
            "setup",
            "--routes",
            "--route",
            "137=link2,via=198.18.4.2,via6=2001:db8:4::2",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("nfqmark setup --routes");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn apply(world: &World, script: &str) {
    let path = std::env::temp_dir().join(format!("{}.sh", world.router.name()));
    std::fs::write(&path, script).expect("write the script");
    let out = world
        .router
        .exec("sh", &[&path.to_string_lossy()])
        .expect("apply the routes");
    let _ = std::fs::remove_file(&path);
    println!("applied: {}", String::from_utf8_lossy(&out.stderr).trim());
}

/// Send `n` datagrams from the router to the far host's port; errors (no route) are expected
/// while the kill switch refuses them.
fn send(world: &World, to: &str, port: u16, n: usize) {
    let name = world.router.name().to_string();
    let to: IpAddr = to.parse().expect("address");
    std::thread::spawn(move || {
        netns::enter(&name).expect("enter the router");
        let bind: SocketAddr = if to.is_ipv4() {
            "0.0.0.0:0".parse().expect("any")
        } else {
            "[::]:0".parse().expect("any6")
        };
        let socket = UdpSocket::bind(bind).expect("socket");
        for _ in 0..n {
            let _ = socket.send_to(b"nfqmark kill switch test", SocketAddr::new(to, port));
        }
    })
    .join()
    .expect("sender");
}

/// Packets to `port` that left by link1 and link2 so far.
fn left(world: &World, tool: &str, port: u16) -> (u64, u64) {
    let out = world
        .router
        .exec(
            tool,
            &["-t", "mangle", "-L", "POSTROUTING", "-v", "-x", "-n"],
        )
        .expect("counters");
    let text = String::from_utf8_lossy(&out.stdout);
    let count = |link: &str| {
        text.lines()
            .find(|l| l.contains(link) && l.contains(&format!("dpt:{port}")))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no counter for {link} port {port} in\n{text}"))
    };
    (count("link1"), count("link2"))
}

/// Send 3 marked and 3 unmarked datagrams; what left by each link, (marked, unmarked).
fn round(world: &World, tool: &str, to: &str) -> ((u64, u64), (u64, u64)) {
    let (m0, u0) = (left(world, tool, 9), left(world, tool, 10));
    send(world, to, 9, 3);
    send(world, to, 10, 3);
    let (m1, u1) = (left(world, tool, 9), left(world, tool, 10));
    ((m1.0 - m0.0, m1.1 - m0.1), (u1.0 - u0.0, u1.1 - u0.1))
}

#[test]
fn marked_traffic_never_leaves_by_the_main_table_while_its_link_is_down() {
    if !common::require_root("routes") {
        return;
    }
    let world = build("routes");
    let script = script();
    apply(&world, &script);
    for (tool, to) in [("iptables", FAR_V4), ("ip6tables", FAR_V6)] {
        world
            .router
            .ip(&["link", "set", "link2", "up"])
            .expect("up");
        apply(&world, &script);
        // Up: marked over link2, unmarked over link1.
        let (marked, unmarked) = round(&world, tool, to);
        assert_eq!(marked, (0, 3), "{tool}: marked packets with link2 up");
        assert_eq!(unmarked, (3, 0), "{tool}: unmarked packets");
        // Down: marked packets are refused; unmarked ones still leave by link1.
        world
            .router
            .ip(&["link", "set", "link2", "down"])
            .expect("down");
        let (marked, unmarked) = round(&world, tool, to);
        assert_eq!(marked, (0, 0), "{tool}: marked packets with link2 down");
        assert_eq!(unmarked, (3, 0), "{tool}: unmarked packets with link2 down");
    }

    // Control: without the kill switch, marked packets leak by the main table.
    for (family, tool, to) in [("-4", "iptables", FAR_V4), ("-6", "ip6tables", FAR_V6)] {
        world
            .router
            .ip(&[
                family,
                "route",
                "del",
                "unreachable",
                "default",
                "metric",
                "4294967295",
                "table",
                "100",
            ])
            .expect("delete the kill switch");
        let (marked, _) = round(&world, tool, to);
        assert_eq!(
            marked,
            (3, 0),
            "{tool}: control: without the kill switch the marked packets leave by link1"
        );
    }
}
