//! The lab: a small network of namespaces where nfqmark does its job for real. The end-to-end
//! tests, `nfqmark demo` and the end-to-end benchmark all build it here (one implementation).
//!
//! ```text
//!   client A ─┐                       ┌─ link1 "fast"  198.18.3.0/24, 2001:db8:3::/64 ─┐
//!             ├─ router (resolver,  ──┤    (router side masquerades on each link)     ├─ upstream
//!   client B ─┘   nfqmark)            └─ link2 "cheap" 198.18.4.0/24, 2001:db8:4::/64 ─┘   host
//!
//!   client A 198.18.1.2, 2001:db8:1::2      client B 198.18.2.2, 2001:db8:2::2
//!   upstream DNS 198.18.9.53, 2001:db8:9::53 (answers A and AAAA with 198.18.9.99, 2001:db8:9::99)
//! ```
//!
//! The router marks client A's packets 137 with the dnsmasq `--conntrack` README's rules, and
//! `ip rule add fwmark 137 table 100` routes the upstream server over link 2. So a resolver
//! query that carries client A's mark leaves over link 2; everything else over link 1.
//!
//! By default the network is a real multi-WAN router ([`Network::Real`]): the router masquerades
//! on each uplink (IPv4, and IPv6 by NAT66 masquerade as mwan3 setups do), and the upstream host
//! drops every packet whose source does not belong to the link it arrives on (ISP ingress
//! filtering, BCP 38), has no route to the clients' subnets (NAT hides them) and answers over
//! the link a query came in on. A packet of a conntrack flow whose mark changes after the flow's
//! first packet leaves by the other link with the first link's NAT address, and is dropped
//! there. [`Network::Ideal`] is the older, friendlier layout: no NAT, no source validation, the
//! upstream host routes the clients' subnets back over link 1.
//!
//! The upstream host's sniffer records the link every query, answer and flow opening came
//! over, and whether its source got past the ingress filter ([`sniffer`]).
//!
//! With [`Options::recursion`], the upstream host also serves a real DNS hierarchy (root, TLD
//! and second-level knotd servers, [`hierarchy`]) and unbound or kresd recurse from its root
//! instead of forwarding to the responder.
//!
//! This crate (nfqmark-lab) owns building and tearing down that world. Namespace names are
//! unique per process and call, so tests run in parallel; addresses come only from
//! 198.18.0.0/15 and 2001:db8::/32 and stay inside the namespaces; nothing touches the host's own
//! network. It must never depend on the nfqmark library: it runs the nfqmark binary it is given
//! ([`Options::nfqmark`]), for the queue rules too (`nfqmark setup`, [`queue_rules`]), and
//! everything it observes, it parses itself. Its own tests build packets with nfqmark-testkit.

pub mod hierarchy;
pub mod netns;
pub mod sniffer;
pub mod upstream;

use std::collections::BTreeSet;
use std::fmt;
use std::io::{self, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use netns::{Guarded, Netns};
use sniffer::{Prefix, Seen, Sniffer, Transport, Watched};
use upstream::{Responder, Sink};

/// The mark client A's traffic gets, as in the dnsmasq `--conntrack` README.
pub const MARK_A: u32 = 137;
/// The routing table that sends the upstream server over link 2.
pub const CHEAP_TABLE: u32 = 100;

/// Address family of the clients' queries and of the resolver's upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// Which resolver runs on the router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolver {
    /// dnsmasq without `--conntrack`.
    Dnsmasq,
    /// dnsmasq with `--conntrack` (for comparison; nfqmark not needed).
    DnsmasqConntrack,
    /// unbound with a forward-zone, 0x20 case randomisation on.
    Unbound,
    /// knot-resolver (kresd) in stub mode towards the upstream host.
    Knot,
}

impl fmt::Display for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Resolver::Dnsmasq => "dnsmasq",
            Resolver::DnsmasqConntrack => "dnsmasq --conntrack",
            Resolver::Unbound => "unbound",
            Resolver::Knot => "knot-resolver",
        })
    }
}

/// The router's uplinks and what is on their far side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Network {
    /// A real multi-WAN router: MASQUERADE on each uplink (IPv4 and IPv6), the upstream host
    /// drops packets whose source does not belong to the link they arrive on, has no route to
    /// the clients and answers over the link a query came in on.
    #[default]
    Real,
    /// The idealized layout: no NAT, no source validation; the upstream host routes the clients'
    /// subnets back over link 1, whatever link a packet came in on.
    Ideal,
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Network::Real => {
                "real multi-WAN (NAT on each uplink, the upstream host drops foreign sources)"
            }
            Network::Ideal => "idealized (no NAT, no source validation)",
        })
    }
}

/// Addresses of the lab. Every world uses the same ones: each lives in its own namespaces.
pub mod addr {
    pub const A_V4: &str = "198.18.1.2";
    pub const A_V6: &str = "2001:db8:1::2";
    pub const B_V4: &str = "198.18.2.2";
    pub const B_V6: &str = "2001:db8:2::2";
    pub const ROUTER_A_V4: &str = "198.18.1.1";
    pub const ROUTER_A_V6: &str = "2001:db8:1::1";
    pub const ROUTER_B_V4: &str = "198.18.2.1";
    pub const ROUTER_B_V6: &str = "2001:db8:2::1";
    pub const UPSTREAM_V4: &str = "198.18.9.53";
    pub const UPSTREAM_V6: &str = "2001:db8:9::53";
    /// A service address on the upstream host, for flow tests (TCP and UDP sinks).
    pub const SERVICE_V4: &str = "198.18.9.80";
    pub const SERVICE_V6: &str = "2001:db8:9::80";
    /// The router's and the upstream host's ends of link 1 and link 2; in the real layout the
    /// router masquerades behind its end.
    pub const ROUTER_LINK1_V4: &str = "198.18.3.1";
    pub const ROUTER_LINK1_V6: &str = "2001:db8:3::1";
    pub const ROUTER_LINK2_V4: &str = "198.18.4.1";
    pub const ROUTER_LINK2_V6: &str = "2001:db8:4::1";
    pub const UPSTREAM_LINK1_V4: &str = "198.18.3.2";
    pub const UPSTREAM_LINK1_V6: &str = "2001:db8:3::2";
    pub const UPSTREAM_LINK2_V4: &str = "198.18.4.2";
    pub const UPSTREAM_LINK2_V6: &str = "2001:db8:4::2";
    /// The link subnets: the only sources the upstream host accepts on each link (real layout).
    pub const LINK1_NET_V4: &str = "198.18.3.0/24";
    pub const LINK1_NET_V6: &str = "2001:db8:3::/64";
    pub const LINK2_NET_V4: &str = "198.18.4.0/24";
    pub const LINK2_NET_V6: &str = "2001:db8:4::/64";
    /// Stands in for a public resolver some clients hard-code (8.8.8.8); the router may DNAT it.
    pub const PUBLIC_RESOLVER_V4: &str = "198.18.200.53";
    pub const PUBLIC_RESOLVER_V6: &str = "2001:db8:200::53";
}

/// The links and their subnets, as (link, IPv4 subnet, IPv6 subnet).
pub const LINKS: [(&str, &str, &str); 2] = [
    ("link1", addr::LINK1_NET_V4, addr::LINK1_NET_V6),
    ("link2", addr::LINK2_NET_V4, addr::LINK2_NET_V6),
];

/// The ingress chain on the upstream host (raw table, real layout).
pub const INGRESS_CHAIN: &str = "LAB-INGRESS";
/// The router's counting chain (mangle POSTROUTING, real layout): packets that leave by one
/// link while their connection's NAT binding belongs to the other.
pub const NATCHECK_CHAIN: &str = "LAB-NATCHECK";

/// TCP ports the upstream host's service address accepts connections on.
pub const SERVICE_TCP_PORTS: [u16; 3] = [25, 80, 443];
/// UDP ports the upstream host's service address echoes on.
pub const SERVICE_UDP_PORTS: [u16; 1] = [5000];

/// The programs the lab runs, with the Debian package that has each.
pub const NEEDED: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("iptables", "iptables"),
    ("ip6tables", "iptables"),
    ("dig", "dnsutils"),
    ("dnsmasq", "dnsmasq-base"),
];

/// `Err` naming the first missing program and its package.
pub fn check_programs(extra: &[(&str, &str)]) -> Result<(), String> {
    for (prog, pkg) in NEEDED.iter().chain(extra) {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
            .unwrap_or(false)
            || Path::new("/usr/sbin").join(prog).is_file()
            || Path::new("/sbin").join(prog).is_file();
        if !found {
            return Err(format!("'{prog}' is missing: install the '{pkg}' package"));
        }
    }
    Ok(())
}

/// How to build a world.
#[derive(Debug, Clone)]
pub struct Options {
    /// Short tag for namespace names (e.g. the test name).
    pub tag: String,
    pub resolver: Resolver,
    /// Family of the resolver's upstream server.
    pub upstream: Family,
    /// The nfqmark binary to run on the router, or `None` for no nfqmark.
    pub nfqmark: Option<PathBuf>,
    /// Extra arguments for `nfqmark run` (after `--queue`).
    pub nfqmark_args: Vec<String>,
    /// NFQUEUE number on the router.
    pub queue: u16,
    /// Install the DNS queue rules `nfqmark setup` prints (no rules file, this queue) when
    /// nfqmark starts. Off when a test installs its own (for a rules file with flow rules).
    pub queue_rules: bool,
    /// Extra dnsmasq arguments (e.g. `--query-port=5300`).
    pub dnsmasq_args: Vec<String>,
    /// Install the dnsmasq README's marking rules (client A -> mark 137) on the router. Off
    /// for "no marking at all" baselines.
    pub marking: bool,
    /// The real multi-WAN layout (default) or the idealized one.
    pub network: Network,
    /// Limit the source ports of the resolver's upstream queries to this range, so they are
    /// reused within conntrack's timeout by other clients' queries: dnsmasq
    /// `--min-port`/`--max-port` (`--query-port` for one port), unbound
    /// `outgoing-port-permit`, knot-resolver through the router's `ip_local_port_range`.
    pub upstream_ports: Option<(u16, u16)>,
    /// Serve a real DNS hierarchy on the upstream host ([`hierarchy`]) and run unbound or
    /// kresd as full recursive resolvers from its root, instead of forwarding to the
    /// responder. `None`: forwarding (dnsmasq ignores this in any case).
    pub recursion: Option<hierarchy::Recursion>,
}

impl Options {
    pub fn new(tag: &str, resolver: Resolver, nfqmark: Option<PathBuf>) -> Options {
        Options {
            tag: tag.to_string(),
            resolver,
            upstream: Family::V4,
            nfqmark,
            nfqmark_args: Vec::new(),
            queue: 0,
            queue_rules: true,
            dnsmasq_args: Vec::new(),
            marking: true,
            network: Network::Real,
            upstream_ports: None,
            recursion: None,
        }
    }
}

/// A built lab. Dropping it stops every process and deletes every namespace.
#[derive(Debug)]
pub struct World {
    // Field order is drop order: processes, then threads in namespaces, then the namespaces.
    resolver: Option<Guarded>,
    nfqmark: Option<Guarded>,
    hierarchy: Option<hierarchy::Hierarchy>,
    pub sniffer: Sniffer,
    _responder: Responder,
    _sink: Sink,
    pub a: Netns,
    pub b: Netns,
    pub router: Netns,
    pub upstream: Netns,
    dir: TempDir,
    options: Options,
    queue_rules_installed: bool,
    /// The next local port each client's flows use (the router's NAT keeps it, so the sniffer
    /// tells whose flow arrived): client A from 20000, client B from 26000.
    next_port: [AtomicU16; 2],
}

/// The first local port of each client's flows, and how many there are.
const FLOW_PORTS: [u16; 2] = [20_000, 26_000];
const FLOW_PORTS_EACH: u16 = 6_000;

/// A flow a client opened: the sniffer finds it by protocol, local port and destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    pub client: Client,
    pub proto: Transport,
    pub sport: u16,
    pub to: SocketAddr,
}

/// Packets of the rules (as [`Netns::rule_packets`] lists them) that name link 1 and link 2,
/// summed per link: how the lab and the benches count what crossed each uplink.
pub fn per_link<'a>(rules: impl IntoIterator<Item = &'a (u64, String)>) -> (u64, u64) {
    let (mut link1, mut link2) = (0, 0);
    for (packets, line) in rules {
        let mut words = line.split_whitespace();
        if words.clone().any(|w| w == "link1") {
            link1 += packets;
        } else if words.any(|w| w == "link2") {
            link2 += packets;
        }
    }
    (link1, link2)
}

/// Packets the upstream host's ingress filter dropped on each link (IPv4 and IPv6 together).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IngressDrops {
    pub link1: u64,
    pub link2: u64,
}

impl IngressDrops {
    pub fn total(&self) -> u64 {
        self.link1 + self.link2
    }

    /// What happened since `before`.
    pub fn since(&self, before: &IngressDrops) -> IngressDrops {
        IngressDrops {
            link1: self.link1.saturating_sub(before.link1),
            link2: self.link2.saturating_sub(before.link2),
        }
    }
}

/// Packets the router sent out of a link other than the one their connection's NAT binding
/// belongs to (both links, IPv4 and IPv6 together): the route of a flow changed after its first
/// packet. MASQUERADE drops such a packet and forgets the connection (the kernel's check that
/// the output interface did not change); with a fixed SNAT it would leave with the other link's
/// address and the far side would drop it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteChanges {
    pub udp: u64,
    pub tcp: u64,
}

impl RouteChanges {
    pub fn total(&self) -> u64 {
        self.udp + self.tcp
    }

    /// What happened since `before`.
    pub fn since(&self, before: &RouteChanges) -> RouteChanges {
        RouteChanges {
            udp: self.udp.saturating_sub(before.udp),
            tcp: self.tcp.saturating_sub(before.tcp),
        }
    }
}

impl fmt::Display for RouteChanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "router: {} UDP and {} TCP packet(s) routed out of another link than their flow's NAT \
             binding (MASQUERADE drops them and forgets the flow)",
            self.udp, self.tcp
        )
    }
}

impl fmt::Display for IngressDrops {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "upstream host dropped {} packet(s) with a foreign source on link1, {} on link2",
            self.link1, self.link2
        )
    }
}

/// A directory removed on drop.
#[derive(Debug)]
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The rules `nfqmark setup` prints for DNS pairing only (no rules file) on `queue`, as
/// `iptables-restore --noflush` input for one family: the README's rules, from the `nfqmark`
/// binary under test itself (`nfqmark setup --iptables --queue N [-6]`), run in `netns`
/// (where it probes the kernel for conntrack zones as it would on a router).
pub fn queue_rules(
    netns: &Netns,
    nfqmark: &Path,
    queue: u16,
    family: Family,
    lean: bool,
) -> io::Result<String> {
    let bin = nfqmark.to_string_lossy();
    let queue = queue.to_string();
    let mut args = vec!["setup", "--iptables", "--queue", queue.as_str()];
    if family == Family::V6 {
        args.push("-6");
    }
    if lean {
        args.push("--lean");
    }
    let out = netns.exec(&bin, &args)?;
    String::from_utf8(out.stdout).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{bin} {}: output is not UTF-8: {e}", args.join(" ")),
        )
    })
}

/// The dnsmasq `--conntrack` README's marking rules, for client A's address.
pub fn seed_rules(client_a: &str) -> Vec<Vec<String>> {
    let rules: [&[&str]; 4] = [
        &[
            "-t",
            "mangle",
            "-A",
            "PREROUTING",
            "-j",
            "CONNMARK",
            "--restore-mark",
        ],
        &[
            "-t",
            "mangle",
            "-A",
            "PREROUTING",
            "-m",
            "mark",
            "--mark",
            "0",
            "-s",
            client_a,
            "-j",
            "MARK",
            "--set-mark",
            "137",
        ],
        &[
            "-t",
            "mangle",
            "-A",
            "PREROUTING",
            "-j",
            "CONNMARK",
            "--save-mark",
        ],
        &[
            "-t",
            "mangle",
            "-A",
            "POSTROUTING",
            "-m",
            "mark",
            "!",
            "--mark",
            "0",
            "-j",
            "CONNMARK",
            "--save-mark",
        ],
    ];
    rules
        .iter()
        .map(|r| r.iter().map(|s| s.to_string()).collect())
        .collect()
}

impl World {
    /// Build the namespaces, links, routes, marking rules, the upstream responder and sniffer.
    /// The resolver and nfqmark are started separately ([`World::start_resolver`],
    /// [`World::start_nfqmark`]).
    pub fn build(options: Options) -> io::Result<World> {
        let prefix = netns::unique_prefix(&options.tag);
        let dir = TempDir(std::env::temp_dir().join(&prefix));
        std::fs::create_dir_all(&dir.0)?;
        let a = Netns::new(&format!("{prefix}-a"))?;
        let b = Netns::new(&format!("{prefix}-b"))?;
        let router = Netns::new(&format!("{prefix}-r"))?;
        let upstream = Netns::new(&format!("{prefix}-u"))?;
        wire(&a, "eth0", &router, "ca")?;
        wire(&b, "eth0", &router, "cb")?;
        wire(&router, "link1", &upstream, "link1")?;
        wire(&router, "link2", &upstream, "link2")?;
        let addrs: &[(&Netns, &str, &str, &str)] = &[
            (&a, "eth0", "198.18.1.2/24", "2001:db8:1::2/64"),
            (&b, "eth0", "198.18.2.2/24", "2001:db8:2::2/64"),
            (&router, "ca", "198.18.1.1/24", "2001:db8:1::1/64"),
            (&router, "cb", "198.18.2.1/24", "2001:db8:2::1/64"),
            (&router, "link1", "198.18.3.1/24", "2001:db8:3::1/64"),
            (&router, "link2", "198.18.4.1/24", "2001:db8:4::1/64"),
            (&upstream, "link1", "198.18.3.2/24", "2001:db8:3::2/64"),
            (&upstream, "link2", "198.18.4.2/24", "2001:db8:4::2/64"),
        ];
        for (ns, dev, v4, v6) in addrs {
            ns.ip(&["addr", "add", v4, "dev", dev])?;
            ns.ip(&["addr", "add", v6, "dev", dev, "nodad"])?;
            ns.ip(&["link", "set", dev, "up"])?;
        }
        for a in [
            "198.18.9.53/32",
            "198.18.9.80/32",
            "2001:db8:9::53/128",
            "2001:db8:9::80/128",
        ] {
            upstream.ip(&["addr", "add", a, "dev", "lo"])?;
        }
        // Every address of the service prefixes is this host's (flow tests answer names with
        // addresses of their own choosing there).
        upstream.ip(&["route", "add", "local", "198.18.9.0/24", "dev", "lo"])?;
        upstream.ip(&[
            "-6",
            "route",
            "add",
            "local",
            "2001:db8:9::/64",
            "dev",
            "lo",
        ])?;
        for (ns, v4, v6) in [
            (&a, "198.18.1.1", "2001:db8:1::1"),
            (&b, "198.18.2.1", "2001:db8:2::1"),
        ] {
            ns.ip(&["route", "add", "default", "via", v4])?;
            ns.ip(&["-6", "route", "add", "default", "via", v6])?;
        }
        // The upstream host does no reverse-path check of its own: in the real layout its
        // ingress rules drop foreign sources (counted, and seen by the sniffer), in the ideal one
        // it takes whatever comes.
        for key in ["all", "default", "link1", "link2"] {
            upstream.sysctl(&format!("net.ipv4.conf.{key}.rp_filter"), "0")?;
        }
        match options.network {
            Network::Real => {
                // Each uplink masquerades; the far side accepts only the link's own addresses
                // and has routes to the two links only, so it answers over the link a packet
                // came in on.
                for family in [Family::V4, Family::V6] {
                    iptables_restore(&router, family, &masquerade_rules())?;
                    iptables_restore(&router, family, &natcheck_rules(family))?;
                    iptables_restore(&upstream, family, &ingress_rules(family))?;
                }
            }
            Network::Ideal => {
                upstream.ip(&["route", "add", "198.18.0.0/16", "via", "198.18.3.1"])?;
                upstream.ip(&[
                    "-6",
                    "route",
                    "add",
                    "2001:db8::/32",
                    "via",
                    "2001:db8:3::1",
                ])?;
            }
        }
        router.sysctl("net.ipv4.ip_forward", "1")?;
        router.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        // Policy routing, as in the LARTC fwmark chapter: marked packets use the cheap link.
        let table = CHEAP_TABLE.to_string();
        let mark = MARK_A.to_string();
        // The upstream host's service addresses (DNS and flow sinks) live in 198.18.9.0/24 and
        // 2001:db8:9::/64: over link 1 in the main table, over link 2 in the cheap table.
        for (family, prefix, via, dev, cheap) in [
            ("-4", "198.18.9.0/24", "198.18.3.2", "link1", false),
            ("-4", "198.18.9.0/24", "198.18.4.2", "link2", true),
            ("-6", "2001:db8:9::/64", "2001:db8:3::2", "link1", false),
            ("-6", "2001:db8:9::/64", "2001:db8:4::2", "link2", true),
        ] {
            let mut args = vec![family, "route", "add", prefix, "via", via, "dev", dev];
            if cheap {
                args.extend(["table", table.as_str()]);
            }
            router.ip(&args)?;
        }
        router.ip(&["rule", "add", "fwmark", &mark, "table", &table])?;
        router.ip(&["-6", "rule", "add", "fwmark", &mark, "table", &table])?;
        if options.marking {
            for (tool, client) in [("iptables", addr::A_V4), ("ip6tables", addr::A_V6)] {
                for rule in seed_rules(client) {
                    router.exec(tool, &rule.iter().map(String::as_str).collect::<Vec<_>>())?;
                }
            }
        }
        let responder = Responder::start(
            &upstream,
            &[
                addr::UPSTREAM_V4.parse().map_err(io::Error::other)?,
                addr::UPSTREAM_V6.parse().map_err(io::Error::other)?,
            ],
        )?;
        let sink = Sink::start(
            &upstream,
            // One dual-stack socket per port serves IPv4 (mapped) and IPv6.
            &[ip("::")?],
            &SERVICE_TCP_PORTS,
            &SERVICE_UDP_PORTS,
        )?;
        let sniffer = Sniffer::start(&upstream, &watched(options.network))?;
        let hierarchy = match options.recursion {
            Some(_) => Some(hierarchy::Hierarchy::start(
                &upstream,
                &dir.0.join("hierarchy"),
            )?),
            None => None,
        };
        Ok(World {
            resolver: None,
            nfqmark: None,
            hierarchy,
            sniffer,
            _responder: responder,
            _sink: sink,
            a,
            b,
            router,
            upstream,
            dir,
            options,
            queue_rules_installed: false,
            next_port: [AtomicU16::new(0), AtomicU16::new(0)],
        })
    }

    /// The DNS hierarchy, when the world recurses ([`Options::recursion`]).
    pub fn hierarchy(&self) -> Option<&hierarchy::Hierarchy> {
        self.hierarchy.as_ref()
    }

    pub fn options(&self) -> &Options {
        &self.options
    }

    /// Change options before starting nfqmark or the resolver (e.g. nfqmark's arguments).
    pub fn options_mut(&mut self) -> &mut Options {
        &mut self.options
    }

    /// A file in the world's scratch directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.0.join(name)
    }

    /// Start nfqmark on the router with the README's queue rules, and wait until it has bound
    /// its queue (with `--queue-bypass`, packets would otherwise pass unmarked).
    pub fn start_nfqmark(&mut self) -> io::Result<()> {
        let Some(bin) = self.options.nfqmark.clone() else {
            return Ok(());
        };
        let q = self.options.queue;
        if self.options.queue_rules && !self.queue_rules_installed {
            // `nfqmark run --lean` goes with the lean queue rules.
            let lean = self.options.nfqmark_args.iter().any(|a| a == "--lean");
            for family in [Family::V4, Family::V6] {
                let rules = queue_rules(&self.router, &bin, q, family, lean)?;
                self.router_iptables_restore(family, &rules)?;
            }
            self.queue_rules_installed = true;
        }
        let log = std::fs::File::create(self.path("nfqmark.log"))?;
        let mut cmd = self.router.command(&bin.to_string_lossy());
        cmd.args(["run", "--queue", &q.to_string()])
            .args(&self.options.nfqmark_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        self.nfqmark = Some(Guarded(cmd.spawn()?));
        if wait_for(Duration::from_secs(5), || self.queue_bound(q)) {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "nfqmark did not bind queue {q}: {}",
                self.nfqmark_log()
            )))
        }
    }

    /// Whether some process has bound NFQUEUE `queue` in the router.
    pub fn queue_bound(&self, queue: u16) -> bool {
        self.router.queue_bound(queue)
    }

    /// nfqmark's counters: asks for a fresh report (SIGUSR1) and returns the newest report
    /// line in its log (which may be the previous one if the new one is not written yet).
    pub fn nfqmark_counters(&self) -> String {
        if let Some(child) = self.nfqmark.as_ref() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(child.0.id() as i32, libc::SIGUSR1);
            }
            thread::sleep(Duration::from_millis(30));
        }
        last_counters(&self.nfqmark_log())
    }

    /// Send a signal to nfqmark (SIGHUP reloads rules, SIGUSR1 logs counters).
    pub fn signal_nfqmark(&self, signal: i32) {
        if let Some(child) = self.nfqmark.as_ref() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(child.0.id() as i32, signal);
            }
        }
    }

    /// Wait until nfqmark's log contains `text` `times` times or more.
    pub fn wait_log(&self, text: &str, times: usize, limit: Duration) -> bool {
        wait_for(limit, || self.nfqmark_log().matches(text).count() >= times)
    }

    /// The pid of nfqmark, if running.
    pub fn nfqmark_pid(&self) -> Option<u32> {
        self.nfqmark.as_ref().map(|c| c.0.id())
    }

    /// The pid of the resolver, if running (tests pause it to line up clients' queries).
    pub fn resolver_pid(&self) -> Option<u32> {
        self.resolver.as_ref().map(|c| c.0.id())
    }

    /// Run iptables (or ip6tables) on the router.
    pub fn router_iptables(&self, tool: &str, args: &[&str]) -> io::Result<()> {
        self.router.exec(tool, args).map(drop)
    }

    /// Feed `iptables-restore --noflush` (or `ip6tables-restore`) on the router with `rules`.
    pub fn router_iptables_restore(&self, family: Family, rules: &str) -> io::Result<()> {
        iptables_restore(&self.router, family, rules)
    }

    /// Forget every connection the router's conntrack knows (`conntrack -F`): between a control
    /// round and a measured one, so no NAT binding of the first carries over into the second.
    pub fn flush_conntrack(&self) -> io::Result<()> {
        for family in ["ipv4", "ipv6"] {
            // conntrack -F prints a summary on stderr and exits 0, also with nothing to flush.
            self.router.exec("conntrack", &["-F", "-f", family])?;
        }
        Ok(())
    }

    /// Packets the upstream host's ingress filter dropped so far (zero in the ideal layout).
    pub fn ingress_drops(&self) -> io::Result<IngressDrops> {
        let mut drops = IngressDrops::default();
        if self.options.network == Network::Ideal {
            return Ok(drops);
        }
        for tool in ["iptables", "ip6tables"] {
            let rules = self.upstream.rule_packets(tool, "raw", INGRESS_CHAIN)?;
            // The target is the third column (packets, bytes, target).
            let dropped = rules
                .iter()
                .filter(|(_, line)| line.split_whitespace().nth(2) == Some("DROP"));
            let (link1, link2) = per_link(dropped);
            drops.link1 += link1;
            drops.link2 += link2;
        }
        Ok(drops)
    }

    /// Packets of a flow the router routed out of the other link than its NAT binding's, so far
    /// (zero in the ideal layout, which has no NAT).
    pub fn route_changes(&self) -> io::Result<RouteChanges> {
        let mut changes = RouteChanges::default();
        if self.options.network == Network::Ideal {
            return Ok(changes);
        }
        for tool in ["iptables", "ip6tables"] {
            for (pkts, line) in self.router.rule_packets(tool, "mangle", NATCHECK_CHAIN)? {
                if line.contains("inside a udp flow") {
                    changes.udp += pkts;
                } else if line.contains("inside a tcp flow") {
                    changes.tcp += pkts;
                }
            }
        }
        Ok(changes)
    }

    /// The next local port for a flow of `client`: the two clients' ranges do not overlap, so
    /// the router's NAT never needs to change them and the sniffer tells the flows apart.
    fn flow_port(&self, client: Client) -> u16 {
        let [next_a, next_b] = &self.next_port;
        let [base_a, base_b] = FLOW_PORTS;
        let (next, base) = match client {
            Client::A => (next_a, base_a),
            Client::B => (next_b, base_b),
        };
        base + next.fetch_add(1, Ordering::Relaxed) % FLOW_PORTS_EACH
    }

    /// Open a TCP connection from a client to the upstream host's service address.
    pub fn connect(&self, client: Client, family: Family, port: u16) -> io::Result<Opened> {
        self.connect_to(client, self.service(family, port)?.ip(), port)
    }

    /// Send a UDP datagram from a client to the upstream host's service address and wait for
    /// its echo.
    pub fn udp_flow(&self, client: Client, family: Family, port: u16) -> io::Result<Opened> {
        self.udp_to(client, self.service(family, port)?.ip(), port)
    }

    /// Open a TCP connection from a client to any address and port.
    pub fn connect_to(&self, client: Client, to: IpAddr, port: u16) -> io::Result<Opened> {
        let to = SocketAddr::new(to, port);
        let sport = upstream::tcp_connect_from(
            self.client_ns(client),
            self.flow_port(client),
            to,
            Duration::from_secs(2),
        )?;
        Ok(Opened {
            client,
            proto: Transport::Tcp,
            sport,
            to,
        })
    }

    /// Send a UDP datagram from a client to any address and port, and wait for its echo.
    pub fn udp_to(&self, client: Client, to: IpAddr, port: u16) -> io::Result<Opened> {
        let to = SocketAddr::new(to, port);
        let sport = upstream::udp_exchange_from(
            self.client_ns(client),
            self.flow_port(client),
            to,
            Duration::from_secs(2),
        )?;
        Ok(Opened {
            client,
            proto: Transport::Udp,
            sport,
            to,
        })
    }

    /// The links on which the opening packets of `flow` arrived at the upstream host: `link1` or
    /// `link2` when accepted, with ` (dropped: foreign source ADDR)` after it when the ingress
    /// filter dropped it.
    pub fn flow_links(&self, flow: &Opened) -> Vec<String> {
        self.sniffer
            .flows_from_port(flow.proto, flow.sport, flow.to)
            .into_iter()
            .map(|f| {
                if f.accepted {
                    f.link
                } else {
                    format!("{} (dropped: foreign source {})", f.link, f.src)
                }
            })
            .collect()
    }

    /// GET `path` from an HTTP server on the router's loopback (nfqmark's `--metrics PORT`).
    pub fn router_http_get(&self, port: u16, path: &str) -> io::Result<String> {
        use std::io::{Read, Write};
        let request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
        netns::on_thread(self.router.name(), "lab-http", move || {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            let mut conn = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            conn.set_read_timeout(Some(Duration::from_secs(2)))?;
            conn.write_all(request.as_bytes())?;
            let mut body = String::new();
            conn.read_to_string(&mut body)?;
            Ok(body)
        })
    }

    fn client_ns(&self, client: Client) -> &Netns {
        match client {
            Client::A => &self.a,
            Client::B => &self.b,
        }
    }

    fn service(&self, family: Family, port: u16) -> io::Result<std::net::SocketAddr> {
        let a = match family {
            Family::V4 => addr::SERVICE_V4,
            Family::V6 => addr::SERVICE_V6,
        };
        Ok(std::net::SocketAddr::new(ip(a)?, port))
    }

    /// Stop nfqmark with SIGTERM and return its log (which ends with its counters).
    pub fn stop_nfqmark(&mut self) -> String {
        if let Some(mut child) = self.nfqmark.take() {
            child.terminate(Duration::from_secs(3));
        }
        self.nfqmark_log()
    }

    pub fn nfqmark_log(&self) -> String {
        std::fs::read_to_string(self.path("nfqmark.log")).unwrap_or_default()
    }

    /// Start (or restart) the resolver on the router, forwarding to the upstream of `family`,
    /// and wait until it answers.
    pub fn start_resolver(&mut self, family: Family) -> io::Result<()> {
        self.start_resolver_ready_from(family, Client::B)
    }

    /// [`World::start_resolver`], checking readiness with queries from `client` (whose names
    /// start with its letter, so they count as its queries).
    pub fn start_resolver_ready_from(&mut self, family: Family, client: Client) -> io::Result<()> {
        self.resolver = None;
        self.options.upstream = family;
        let upstream = match family {
            Family::V4 => addr::UPSTREAM_V4,
            Family::V6 => addr::UPSTREAM_V6,
        };
        let log = std::fs::File::create(self.path("resolver.log"))?;
        let mut cmd = match self.options.resolver {
            Resolver::Dnsmasq | Resolver::DnsmasqConntrack => {
                let mut args = vec![
                    "-k".to_string(),
                    "--conf-file=/dev/null".into(),
                    "--no-resolv".into(),
                    "--no-hosts".into(),
                    "--pid-file".into(),
                    "--cache-size=0".into(),
                    "--dns-forward-max=10000".into(),
                    "--bind-interfaces".into(),
                    format!("--server={upstream}"),
                ];
                for a in [
                    addr::ROUTER_A_V4,
                    addr::ROUTER_B_V4,
                    addr::ROUTER_A_V6,
                    addr::ROUTER_B_V6,
                ] {
                    args.push(format!("--listen-address={a}"));
                }
                if self.options.resolver == Resolver::DnsmasqConntrack {
                    args.push("--conntrack".into());
                }
                match self.options.upstream_ports {
                    Some((lo, hi)) if lo == hi => args.push(format!("--query-port={lo}")),
                    Some((lo, hi)) => {
                        args.push(format!("--min-port={lo}"));
                        args.push(format!("--max-port={hi}"));
                    }
                    None => {}
                }
                args.extend(self.options.dnsmasq_args.iter().cloned());
                let mut cmd = self.router.command("dnsmasq");
                cmd.args(&args);
                cmd
            }
            Resolver::Unbound => {
                let conf = self.path("unbound.conf");
                let text = match (&self.hierarchy, self.options.recursion) {
                    (Some(h), Some(r)) => {
                        h.unbound_conf(&self.dir.0, family, r, self.options.upstream_ports)
                    }
                    _ => unbound_conf(upstream, &self.dir.0, self.options.upstream_ports),
                };
                std::fs::write(&conf, text)?;
                let mut cmd = self.router.command("unbound");
                cmd.args(["-d", "-c"]).arg(&conf);
                cmd
            }
            Resolver::Knot => {
                // kresd keeps its cache in its run directory: a fresh one per start.
                let rundir = self.path("kresd");
                let _ = std::fs::remove_dir_all(&rundir);
                std::fs::create_dir_all(&rundir)?;
                let conf = self.path("kresd.conf");
                let text = match (&self.hierarchy, self.options.recursion) {
                    (Some(h), Some(r)) => h.kresd_conf(family, r),
                    _ => kresd_conf(upstream),
                };
                std::fs::write(&conf, text)?;
                if let Some((lo, hi)) = self.options.upstream_ports {
                    // kresd takes its sockets' ports from the kernel's ephemeral range.
                    self.router
                        .sysctl("net.ipv4.ip_local_port_range", &format!("{lo} {hi}"))?;
                }
                let mut cmd = self.router.command("kresd");
                cmd.args(["-n", "-c"]).arg(&conf).arg(&rundir);
                cmd
            }
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.resolver = Some(Guarded(child));
        // Ready when client B gets an answer (counted as B's query, which is fine).
        let mut n = 0u32;
        let ready = wait_for(Duration::from_secs(10), || {
            n += 1;
            let name = match self.hierarchy {
                Some(_) => hierarchy::READY_NAME.to_string(),
                None => format!("{}-ready-{n}.nfqm.example", client.letter()),
            };
            self.query(client, family, &[name], false)
                .map(|r| r.answered == 1)
                .unwrap_or(false)
        });
        if ready {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "{} did not start answering: {}",
                self.options.resolver,
                std::fs::read_to_string(self.path("resolver.log")).unwrap_or_default()
            )))
        }
    }

    /// Send `names` (type A, or AAAA for IPv6) from a client to the router's resolver with dig,
    /// one after the other in one dig run; `tcp` for DNS over TCP.
    pub fn query(
        &self,
        client: Client,
        family: Family,
        names: &[String],
        tcp: bool,
    ) -> io::Result<QueryReport> {
        self.query_with(client, family, names, tcp, 2, 2)
    }

    /// [`World::query`] with dig's per-try timeout (seconds) and number of tries.
    pub fn query_with(
        &self,
        client: Client,
        family: Family,
        names: &[String],
        tcp: bool,
        time: u32,
        tries: u32,
    ) -> io::Result<QueryReport> {
        let server = match (client, family) {
            (Client::A, Family::V4) => addr::ROUTER_A_V4,
            (Client::A, Family::V6) => addr::ROUTER_A_V6,
            (Client::B, Family::V4) => addr::ROUTER_B_V4,
            (Client::B, Family::V6) => addr::ROUTER_B_V6,
        };
        self.query_server(client, family, server, names, tcp, time, tries)
    }

    /// [`World::query_with`] to any server address (routed through the router, e.g. one the
    /// router DNATs to its resolver).
    #[allow(clippy::too_many_arguments)]
    pub fn query_server(
        &self,
        client: Client,
        family: Family,
        server: &str,
        names: &[String],
        tcp: bool,
        time: u32,
        tries: u32,
    ) -> io::Result<QueryReport> {
        let ns = self.client_ns(client);
        let qtype = match family {
            Family::V4 => "A",
            Family::V6 => "AAAA",
        };
        let batch: String = names.iter().map(|n| format!("{n} {qtype}\n")).collect();
        let file = self.path(&format!(
            "batch-{}-{}.txt",
            client.letter(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::write(&file, batch)?;
        let mut cmd = ns.command("dig");
        cmd.arg(format!("@{server}"))
            .arg("+short")
            .arg(format!("+tries={tries}"))
            .arg(format!("+time={time}"))
            .arg("-f")
            .arg(&file)
            .stdin(Stdio::null());
        if tcp {
            cmd.arg("+tcp");
        }
        let out = cmd.output()?;
        let _ = std::fs::remove_file(&file);
        let text = String::from_utf8_lossy(&out.stdout);
        let expected = match family {
            Family::V4 => upstream::ANSWER_V4.to_string(),
            Family::V6 => upstream::ANSWER_V6.to_string(),
        };
        Ok(QueryReport {
            sent: names.len(),
            answered: text.lines().filter(|l| l.trim() == expected).count(),
        })
    }
}

/// The last counter line (`packets=... paired=...`) in an nfqmark log.
pub fn last_counters(log: &str) -> String {
    log.lines()
        .rev()
        .find_map(|l| l.find("packets=").map(|i| l[i..].to_string()))
        .unwrap_or_default()
}

/// A client of the lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    A,
    B,
}

impl Client {
    pub fn letter(self) -> char {
        match self {
            Client::A => 'a',
            Client::B => 'b',
        }
    }
}

/// What a batch of client queries got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryReport {
    pub sent: usize,
    pub answered: usize,
}

/// Connect two namespaces with a veth pair.
fn wire(x: &Netns, x_dev: &str, y: &Netns, y_dev: &str) -> io::Result<()> {
    x.ip(&[
        "link",
        "add",
        x_dev,
        "type",
        "veth",
        "peer",
        "name",
        y_dev,
        "netns",
        y.name(),
    ])
    .map(drop)
}

/// Poll `ready` until it says yes (true) or `limit` passes (false).
pub fn wait_for(limit: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// unbound as a forwarder that caches nothing useful (names are unique anyway), validates
/// nothing, and randomises the case of names it sends upstream (0x20).
fn unbound_conf(upstream: &str, dir: &Path, ports: Option<(u16, u16)>) -> String {
    let dir = dir.display();
    let ports = match ports {
        Some((lo, hi)) => {
            format!("    outgoing-port-avoid: 0-65535\n    outgoing-port-permit: {lo}-{hi}\n")
        }
        None => String::new(),
    };
    format!(
        r#"server:
    do-daemonize: no
    chroot: ""
    username: ""
    directory: "{dir}"
    pidfile: "{dir}/unbound.pid"
    use-syslog: no
    logfile: ""
    verbosity: 1
    num-threads: 1
    interface: {a4}
    interface: {b4}
    interface: {a6}
    interface: {b6}
    port: 53
    do-ip4: yes
    do-ip6: yes
    access-control: 198.18.0.0/15 allow
    access-control: 2001:db8::/32 allow
    module-config: "iterator"
    qname-minimisation: no
    use-caps-for-id: yes
    do-not-query-localhost: no
    msg-cache-size: 0
    rrset-cache-size: 0
    prefetch: no
    so-reuseport: no
    outgoing-range: 512
{ports}remote-control:
    control-enable: no
forward-zone:
    name: "."
    forward-addr: {upstream}
"#,
        a4 = addr::ROUTER_A_V4,
        b4 = addr::ROUTER_B_V4,
        a6 = addr::ROUTER_A_V6,
        b6 = addr::ROUTER_B_V6,
    )
}

/// knot-resolver's configuration (Lua): listen on the router's client-side addresses, send every
/// question to the upstream host as a stub (no DNSSEC validation: the lab's zone is unsigned).
fn kresd_conf(upstream: &str) -> String {
    let mut conf = String::from("-- nfqmark lab\n");
    for a in [
        addr::ROUTER_A_V4,
        addr::ROUTER_B_V4,
        addr::ROUTER_A_V6,
        addr::ROUTER_B_V6,
    ] {
        conf.push_str(&format!("net.listen('{a}', 53, {{ kind = 'dns' }})\n"));
    }
    conf.push_str("trust_anchors.remove('.')\n");
    conf.push_str(&format!(
        "policy.add(policy.all(policy.STUB('{upstream}')))\n"
    ));
    conf
}

/// Which link each client's upstream queries arrived on, whether the upstream host accepted
/// them and answered them over that link, for a round whose names start with `a-` (client A)
/// or `b-` (client B). Each count is of distinct names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkCounts {
    /// Accepted: arrived on the link with one of the link's own addresses as source.
    pub a_link1: usize,
    pub a_link2: usize,
    pub b_link1: usize,
    pub b_link2: usize,
    /// Arrived on the link with a foreign source (another link's NAT address, a client's
    /// address) and dropped by the upstream host's ingress filter.
    pub a_dropped1: usize,
    pub a_dropped2: usize,
    pub b_dropped1: usize,
    pub b_dropped2: usize,
    /// Accepted (name, link) pairs for which no answer left over that link (same transport; in
    /// the ideal layout, over any link).
    pub unanswered: usize,
    /// Queries seen for names that are neither (should be none).
    pub other: usize,
}

impl LinkCounts {
    /// Count from the sniffer's records.
    pub fn from_sniffer(sniffer: &Sniffer, label: &str) -> LinkCounts {
        LinkCounts::from_sniffer_where(sniffer, label, |_| true)
    }

    /// Count the queries `keep` keeps (e.g. only those over TCP).
    pub fn from_sniffer_where(
        sniffer: &Sniffer,
        label: &str,
        keep: impl Fn(&Seen) -> bool,
    ) -> LinkCounts {
        // Without per-link validation the upstream host answers by its routes, not by the link
        // a query came in on: any link counts.
        let any_link = |link: String| {
            if sniffer.validating() {
                link
            } else {
                String::new()
            }
        };
        let answered: BTreeSet<(String, Transport, String)> = sniffer
            .answers()
            .into_iter()
            .map(|a| (any_link(a.link), a.proto, a.name))
            .collect();
        let mut accepted = BTreeSet::new();
        let mut dropped = BTreeSet::new();
        for s in sniffer.seen() {
            if !s.name.contains(label) || !keep(&s) {
                continue;
            }
            let set = if s.accepted {
                &mut accepted
            } else {
                &mut dropped
            };
            set.insert((s.link, s.proto, s.name));
        }
        let mut c = LinkCounts::default();
        let names = |set: &BTreeSet<(String, Transport, String)>| -> BTreeSet<(String, String)> {
            set.iter()
                .map(|(link, _, name)| (link.clone(), name.clone()))
                .collect()
        };
        for (link, name) in names(&accepted) {
            match (
                name.starts_with("a-"),
                name.starts_with("b-"),
                link.as_str(),
            ) {
                (true, _, "link1") => c.a_link1 += 1,
                (true, _, "link2") => c.a_link2 += 1,
                (_, true, "link1") => c.b_link1 += 1,
                (_, true, "link2") => c.b_link2 += 1,
                _ => c.other += 1,
            }
        }
        for (link, name) in names(&dropped) {
            match (
                name.starts_with("a-"),
                name.starts_with("b-"),
                link.as_str(),
            ) {
                (true, _, "link1") => c.a_dropped1 += 1,
                (true, _, "link2") => c.a_dropped2 += 1,
                (_, true, "link1") => c.b_dropped1 += 1,
                (_, true, "link2") => c.b_dropped2 += 1,
                _ => c.other += 1,
            }
        }
        c.unanswered = accepted
            .iter()
            .filter(|(link, proto, name)| {
                !answered.contains(&(any_link(link.clone()), *proto, name.clone()))
            })
            .count();
        c
    }

    /// Every one of client A's `a` names arrived over link 2 and client B's `b` over link 1,
    /// accepted and answered there; nothing else arrived, nothing was dropped.
    pub fn exact(&self, a: usize, b: usize) -> bool {
        *self
            == LinkCounts {
                a_link2: a,
                b_link1: b,
                ..LinkCounts::default()
            }
    }

    /// Names dropped for a foreign source, both clients, both links.
    pub fn dropped(&self) -> usize {
        self.a_dropped1 + self.a_dropped2 + self.b_dropped1 + self.b_dropped2
    }
}

impl fmt::Display for LinkCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "client A: {} via link1, {} via link2 (cheap); client B: {} via link1, {} via link2",
            self.a_link1, self.a_link2, self.b_link1, self.b_link2
        )?;
        if self.dropped() > 0 {
            write!(
                f,
                "; dropped for a foreign source: client A {} on link1, {} on link2, client B {} \
                 on link1, {} on link2",
                self.a_dropped1, self.a_dropped2, self.b_dropped1, self.b_dropped2
            )?;
        }
        if self.unanswered > 0 {
            write!(f, "; {} accepted but not answered", self.unanswered)?;
        }
        if self.other > 0 {
            write!(f, "; {} other names", self.other)?;
        }
        Ok(())
    }
}

/// Feed `iptables-restore --noflush` (or `ip6tables-restore`) in `ns` with `rules`.
fn iptables_restore(ns: &Netns, family: Family, rules: &str) -> io::Result<()> {
    let tool = match family {
        Family::V4 => "iptables-restore",
        Family::V6 => "ip6tables-restore",
    };
    let mut child = ns
        .command(tool)
        .arg("--noflush")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(rules.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{tool} rejected the rules: {}\n{rules}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// The router's NAT in the real layout: each uplink masquerades (the same text for IPv4 and
/// IPv6, NAT66).
pub fn masquerade_rules() -> String {
    let mut r = String::from("*nat\n");
    for (link, _, _) in LINKS {
        r.push_str(&format!(
            "-A POSTROUTING -o {link} -m comment --comment \"lab: uplink NAT\" -j MASQUERADE\n"
        ));
    }
    r.push_str("COMMIT\n");
    r
}

/// The router's counting rules in the real layout: a packet of a confirmed connection (its NAT
/// binding made by its first packet) leaving by a link while the connection's reply goes to the
/// other link's subnet. No target: they only count, and change nothing.
pub fn natcheck_rules(family: Family) -> String {
    let mut r = format!("*mangle\n:{NATCHECK_CHAIN} - [0:0]\n-A POSTROUTING -j {NATCHECK_CHAIN}\n");
    let [(l1, l1v4, l1v6), (l2, l2v4, l2v6)] = LINKS;
    let (net1, net2) = match family {
        Family::V4 => (l1v4, l2v4),
        Family::V6 => (l1v6, l2v6),
    };
    for (out, bound) in [(l1, net2), (l2, net1)] {
        for proto in ["udp", "tcp"] {
            r.push_str(&format!(
                "-A {NATCHECK_CHAIN} -o {out} -p {proto} -m conntrack --ctstatus CONFIRMED \
                 --ctrepldst {bound} -m comment --comment \"lab: route changed inside a {proto} \
                 flow\"\n"
            ));
        }
    }
    r.push_str("COMMIT\n");
    r
}

/// The upstream host's ingress filter in the real layout: on each link, only the link's own
/// subnet (and, for IPv6, link-local addresses, which neighbour discovery uses) gets in.
pub fn ingress_rules(family: Family) -> String {
    let mut r = format!("*raw\n:{INGRESS_CHAIN} - [0:0]\n-A PREROUTING -j {INGRESS_CHAIN}\n");
    if family == Family::V6 {
        r.push_str(&format!("-A {INGRESS_CHAIN} -s fe80::/10 -j RETURN\n"));
    }
    for (link, v4, v6) in LINKS {
        let net = match family {
            Family::V4 => v4,
            Family::V6 => v6,
        };
        r.push_str(&format!(
            "-A {INGRESS_CHAIN} -i {link} -s {net} -j RETURN\n"
        ));
        r.push_str(&format!(
            "-A {INGRESS_CHAIN} -i {link} -m comment --comment \"lab: foreign source\" -j DROP\n"
        ));
    }
    r.push_str("COMMIT\n");
    r
}

/// The links the sniffer watches, with the sources the upstream host accepts on each.
fn watched(network: Network) -> Vec<Watched> {
    LINKS
        .iter()
        .map(|(link, v4, v6)| Watched {
            link: link.to_string(),
            sources: match network {
                Network::Real => Some([v4, v6].iter().filter_map(|p| Prefix::parse(p)).collect()),
                Network::Ideal => None,
            },
        })
        .collect()
}

/// Sanity check used by callers: `iptables` works in a namespace at all.
pub fn iptables_works(ns: &Netns) -> bool {
    Command::new("ip")
        .args(["netns", "exec", ns.name(), "iptables", "-t", "mangle", "-S"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Parse a `IpAddr` constant of this module.
pub fn ip(s: &str) -> io::Result<IpAddr> {
    s.parse().map_err(io::Error::other)
}
