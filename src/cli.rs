//! Command-line definitions: raw values and their validation, nothing more. The man pages and
//! the shell completions are generated from these definitions (examples/generate.rs), so they
//! never drift from `--help`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "nfqmark",
    version,
    about = "NFQUEUE packet marker: carries a DNS client's firewall mark onto the resolver's \
             upstream query and answers, for any resolver",
    long_about = "NFQUEUE packet marker: carries a DNS client's firewall mark onto the \
                  resolver's upstream query and answers, for any resolver.\n\n\
                  nfqmark decides the packets iptables or nftables queue to it (NFQUEUE): it \
                  pairs each DNS query a client sends to the local resolver with the upstream \
                  query the resolver sends for it, and gives that query, its answer and the \
                  answer to the client the client's mark, so policy routing by mark covers the \
                  resolver's traffic too. A rules file adds marks, accepts and drops by address, \
                  port, interface, MAC address and DNS name, and flow marks learned per client \
                  from DNS answers. `nfqmark setup` prints the firewall rules a rules file \
                  needs; `nfqmark check` checks one; `nfqmark top` shows a running nfqmark at \
                  work."
)]
pub struct Cli {
    /// More log output (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Bind the queue(s) and mark packets until stopped.
    Run(RunArgs),
    /// Check a rules file: every error as FILE:LINE:COL, exit status 1 if any.
    Check(CheckArgs),
    /// Print the firewall rules a rules file needs, for iptables-restore or nft -f.
    Setup(SetupArgs),
    /// Run a packet capture (pcap or pcapng) through nfqmark's decision path, offline: what
    /// would nfqmark have done with each packet?
    Replay(ReplayArgs),
    /// Show nfqmark at work in a throw-away network of namespaces (needs root and a build with
    /// the cargo feature `demo`, as ./install.sh makes; touches nothing outside its namespaces).
    Demo(DemoArgs),
    /// Live per-second view of a running nfqmark, read from its metrics endpoint (`run
    /// --metrics`): queries, pairing outcomes, marks per rule, bypass, decision time.
    Top(TopArgs),
}

#[derive(Debug, Args)]
pub struct TopArgs {
    /// The metrics endpoint of the running nfqmark, as given to `nfqmark run --metrics` (a bare
    /// PORT is on 127.0.0.1).
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse_listen, default_value = "127.0.0.1:9120")]
    pub metrics: std::net::SocketAddr,
    /// Time between two updates.
    #[arg(long, value_name = "DURATION", value_parser = parse_top_interval, default_value = "1s")]
    pub interval: Duration,
    /// Stop after this many updates (default: until interrupted).
    #[arg(short = 'n', long, value_name = "N")]
    pub count: Option<u64>,
    /// Rules shown, the busiest first.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub rules: usize,
    /// Print each update below the last instead of redrawing the screen (the default when the
    /// output is not a terminal).
    #[arg(long)]
    pub plain: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The rules file to check.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Do not look at this machine's interfaces (checking a file for another machine).
    #[arg(long, conflicts_with = "strict_interfaces")]
    pub any_interface: bool,
    /// A rule naming an interface this machine does not have now is an error, not a warning.
    #[arg(long)]
    pub strict_interfaces: bool,
}

#[derive(Debug, Args)]
pub struct SetupArgs {
    /// The rules file nfqmark will run with (without it: DNS pairing only).
    #[arg(long, value_name = "FILE")]
    pub rules: Option<PathBuf>,
    /// Queue number or range, as given to `nfqmark run`.
    #[arg(short, long = "queue", value_name = "N|A-B", value_parser = parse_queue_range, default_value = "0")]
    pub queue: (u16, u16),
    /// Bits of the mark nfqmark owns (CONNMARK saves and restores only these).
    #[arg(long, value_name = "MASK", value_parser = parse_u32, default_value = "0xffffffff")]
    pub mark_mask: u32,
    /// Port(s) that carry DNS, repeatable.
    #[arg(long = "dns-port", value_name = "PORT", default_value = "53")]
    pub dns_ports: Vec<u16>,
    /// Print iptables-restore input (the default when the kernel lacks the nft queue expression).
    #[arg(long, conflicts_with = "nft")]
    pub iptables: bool,
    /// Print nft -f input.
    #[arg(long)]
    pub nft: bool,
    /// With --iptables: the IPv6 rules (for ip6tables-restore).
    #[arg(short = '6', long = "ipv6")]
    pub ipv6: bool,
    /// Leave out the conntrack zones taken from the mark (raw table), even where the kernel
    /// has them.
    #[arg(long)]
    pub no_zones: bool,
    /// Queue only what pairing must see (client and upstream queries, truncated answers;
    /// answers to clients only for flow rules): half the packets per query. For forwarding
    /// resolvers; run nfqmark with --lean too.
    #[arg(long)]
    pub lean: bool,
    /// Print the policy routing instead, as shell commands for `sh`: for each --route, an
    /// `ip rule` from its mark to its own table, the table's default route, and a kill switch
    /// (marked packets are refused, never routed by the main table, while the link is down);
    /// IPv4 and IPv6.
    #[arg(long)]
    pub routes: bool,
    /// With --routes: MARK=DEV[,via=GW][,via6=GW6][,table=N][,pref=N], one per mark
    /// (repeatable), e.g. 137=wan2,via=198.51.100.1 or 0x20=wg0.
    #[arg(
        long = "route",
        value_name = "MARK=DEV[,via=GW]...",
        requires = "routes"
    )]
    pub route: Vec<String>,
    /// How new flows of flow rules are marked: `nft` from nftables sets nfqmark fills (no flow
    /// packet queued), `queue` by queueing each flow's first packet; `auto` picks nft where
    /// the kernel and nft take its sets.
    #[arg(long, value_enum, default_value = "auto")]
    pub flow_backend: FlowBackend,
    /// Print only the nft table of the kernel backend (its sets and the rules using them), for
    /// `nft -f -`, next to the iptables rules that queue DNS.
    #[arg(long, conflicts_with_all = ["nft", "iptables", "ipv6"])]
    pub flow_table: bool,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Every option of `nfqmark run` is accepted, so the service's command line \
can be pasted: --rules, --mark-mask, --window, --capacity, --dns-port, --conntrack-info, \
--copy-range and the flow options shape the decisions; the others are ignored. Capturing for \
replay, and what replay cannot know: docs/recipes.md."
)]
pub struct ReplayArgs {
    /// The capture: pcap or pcapng, best taken on the router with `tcpdump -i any -w FILE`
    /// (Linux cooked headers say which way each packet went, and on which interface).
    #[arg(value_name = "CAPTURE")]
    pub capture: PathBuf,
    /// Where packets reach nfqmark: `auto` guesses the hook of each packet from its direction
    /// and the router's addresses (see docs); a hook name queues every packet there.
    #[arg(long, value_enum, default_value = "auto")]
    pub hook: ReplayHook,
    /// One JSON object per line instead of a table (the last line holds the counters).
    #[arg(long)]
    pub json: bool,
    /// Also list the packets `nfqmark setup`'s rules would not queue.
    #[arg(long)]
    pub all: bool,
    /// An address of the router (repeatable). Without it they are inferred from the capture:
    /// addresses that packets leave from and never arrive from.
    #[arg(long, value_name = "ADDR")]
    pub router_addr: Vec<std::net::IpAddr>,
    /// The mark your PREROUTING rules give a client's packets (the dnsmasq README's MARK
    /// rules), as ADDR[/LEN]=MARK; repeatable, first match wins. A capture has no marks.
    #[arg(long, value_name = "ADDR[/LEN]=MARK", value_parser = parse_client_mark)]
    pub client_mark: Vec<ClientMark>,
    /// The name of the interface with this index on the capturing router (repeatable), for
    /// rules that name interfaces: `ip -o link` lists them.
    #[arg(long, value_name = "INDEX=NAME", value_parser = parse_iface)]
    pub iface: Vec<(u32, String)>,
    /// Every option of `nfqmark run`, so the service's command line can be pasted: those that
    /// shape decisions (--rules, --mark-mask, --window, --capacity, --dns-port,
    /// --conntrack-info, --copy-range, the flow options) apply; the others are ignored.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Where replayed packets reach nfqmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReplayHook {
    /// Guess each packet's hook from its direction and the router's addresses.
    Auto,
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

/// `--client-mark ADDR[/LEN]=MARK`: the clients of a prefix and the mark they are given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientMark {
    pub addr: std::net::IpAddr,
    /// Prefix length, at most 32 (IPv4) or 128 (IPv6).
    pub len: u8,
    pub mark: u32,
}

/// `198.18.1.0/24=137`, `2001:db8:1::2=0x89` (a bare address is the whole address).
pub fn parse_client_mark(s: &str) -> Result<ClientMark, String> {
    let bad = || format!("'{s}' is not ADDR[/LEN]=MARK (e.g. 198.18.1.0/24=137)");
    let (prefix, mark) = s.split_once('=').ok_or_else(bad)?;
    let (addr, len) = match prefix.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (prefix, None),
    };
    let addr: std::net::IpAddr = addr.trim().parse().map_err(|_| bad())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len {
        Some(l) => l
            .trim()
            .parse::<u8>()
            .ok()
            .filter(|&l| l <= max)
            .ok_or_else(|| format!("'{s}': the prefix length must be 0 to {max}"))?,
        None => max,
    };
    let mark = parse_u32(mark)?;
    Ok(ClientMark { addr, len, mark })
}

/// `3=lan0`.
pub fn parse_iface(s: &str) -> Result<(u32, String), String> {
    let bad = || format!("'{s}' is not INDEX=NAME (e.g. 3=lan0; `ip -o link` shows the indexes)");
    let (index, name) = s.split_once('=').ok_or_else(bad)?;
    let index: u32 = index.trim().parse().map_err(|_| bad())?;
    let name = name.trim();
    if index == 0 || name.is_empty() || name.len() > 15 {
        return Err(bad());
    }
    Ok((index, name.to_string()))
}

/// Whether nfqmark sets connection marks over ctnetlink (see `nfqmark run --ct-marks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CtMarks {
    /// With flow rules on the queue backend (each new flow's mark rests on the save-mark rule
    /// otherwise).
    Auto,
    /// Always: the resolver's TCP SYNs paired with a client too.
    On,
    /// Never: the firewall's save-mark rule alone.
    Off,
}

/// Where flow rules' learned addresses live (see `nfqmark setup --flow-backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FlowBackend {
    /// nft where available (setup: the kernel takes the sets; run: the sets are loaded), else
    /// queue.
    Auto,
    /// nftables sets with per-element timeouts, written by nfqmark; the kernel marks the flows.
    Nft,
    /// Each new flow's first packet is queued to nfqmark, which marks it.
    Queue,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Resolver on the demo router.
    #[arg(long, value_enum, default_value = "dnsmasq")]
    pub resolver: DemoResolver,
    /// How long to send queries.
    #[arg(long, value_name = "N", default_value_t = 15)]
    pub seconds: u64,
    /// Queries per client per second.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub rate: usize,
    /// Keep the network up after the run (until Ctrl-C) and print commands to explore it.
    #[arg(long)]
    pub keep: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DemoResolver {
    /// dnsmasq without --conntrack
    Dnsmasq,
    /// unbound with a forward-zone
    Unbound,
    /// knot-resolver (kresd) as a stub towards the upstream
    Knot,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Queue number(s) to serve, repeatable, or a range like 0-3 (for --queue-balance).
    #[arg(short, long = "queue", value_name = "N|A-B", value_parser = parse_queue_range, default_value = "0")]
    pub queues: Vec<(u16, u16)>,
    /// Rules file (see README); without it nfqmark only carries marks through DNS pairing.
    #[arg(long, value_name = "FILE")]
    pub rules: Option<PathBuf>,
    /// Bits of the mark nfqmark may change; the others keep their value (e.g. 0xff00).
    #[arg(long, value_name = "MASK", value_parser = parse_u32, default_value = "0xffffffff")]
    pub mark_mask: u32,
    /// How long a client query waits for the resolver's upstream query (and that for its answer).
    #[arg(long, value_name = "DURATION", value_parser = parse_window, default_value = "5s")]
    pub window: Duration,
    /// Most client queries (and, separately, upstream queries) remembered at once.
    #[arg(long, value_name = "N", default_value_t = 65_536)]
    pub capacity: usize,
    /// Port(s) that carry DNS, repeatable.
    #[arg(long = "dns-port", value_name = "PORT", default_value = "53")]
    pub dns_ports: Vec<u16>,
    /// Most packets the kernel holds in each queue.
    #[arg(long, value_name = "N", default_value_t = 4096)]
    pub queue_maxlen: u32,
    /// Bytes of each packet copied from the kernel (DNS needs the whole packet).
    #[arg(long, value_name = "BYTES", default_value_t = u16::MAX)]
    pub copy_range: u16,
    /// Socket receive buffer per queue in bytes (forced past net.core.rmem_max when permitted;
    /// 0 keeps the kernel default).
    #[arg(long, value_name = "BYTES", default_value_t = 8 << 20)]
    pub rcvbuf: usize,
    /// Drop packets, instead of accepting them unmarked, when a queue is full.
    #[arg(long)]
    pub fail_closed: bool,
    /// Ask the kernel for each queued packet's conntrack entry (connection mark, first packet).
    /// Kernels without CONFIG_NETFILTER_NETLINK_GLUE_CT refuse; nfqmark then warns and goes on.
    #[arg(long)]
    pub conntrack_info: bool,
    /// Flow rules: shortest time a learned address is kept (answers with a smaller TTL are
    /// raised to it).
    #[arg(long, value_name = "DURATION", value_parser = parse_flow_ttl, default_value = "30s")]
    pub flow_ttl_min: Duration,
    /// Flow rules: longest time a learned address is kept (larger TTLs are lowered to it).
    #[arg(long, value_name = "DURATION", value_parser = parse_flow_ttl, default_value = "1h")]
    pub flow_ttl_max: Duration,
    /// Flow rules: most (client, address) entries remembered; the one closest to expiry goes.
    #[arg(long, value_name = "N", default_value_t = 65_536)]
    pub flow_capacity: usize,
    /// Flow rules: `nft` writes learned addresses into the nftables sets `nfqmark setup`
    /// made (the kernel marks new flows, none is queued); `queue` keeps them in nfqmark for
    /// queued first packets; `auto` uses nft when the sets are loaded.
    #[arg(long, value_enum, default_value = "auto")]
    pub flow_backend: FlowBackend,
    /// Set the conntrack mark (under --mark-mask) of connections whose first packet nfqmark
    /// marks (new flows of flow rules, the resolver's TCP SYNs), over ctnetlink, besides the
    /// save-mark rule: `auto` with flow rules on the queue backend, `on` always, `off` never
    /// (any of them only where the kernel answers ctnetlink).
    #[arg(long, value_enum, default_value = "auto")]
    pub ct_marks: CtMarks,
    /// Flow rules, nft backend: how often the sets are read back (elements the kernel
    /// expired are counted, elements lost before their TTL put back).
    #[arg(long, value_name = "DURATION", value_parser = parse_readback, default_value = "10s")]
    pub flow_readback: Duration,
    /// Refuse a rules file (at start and at SIGHUP) that names an interface that does not exist
    /// then; without it such a rule loads, with a warning, and matches once the interface
    /// appears.
    #[arg(long)]
    pub strict_interfaces: bool,
    /// Serve Prometheus metrics over HTTP on ADDR:PORT (a bare PORT binds 127.0.0.1).
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse_listen)]
    pub metrics: Option<std::net::SocketAddr>,
    /// The firewall queues only what pairing must see (`nfqmark setup --lean`): client queries
    /// are retired 1 s after an upstream query took them, since their answers are not queued.
    #[arg(long)]
    pub lean: bool,
}

/// `9100` -> 127.0.0.1:9100; `ADDR:PORT` as given.
pub fn parse_listen(s: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(port) = s.trim().parse::<u16>() {
        return Ok(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.trim().parse().map_err(|_| {
        format!("'{s}' is not ADDR:PORT or PORT (e.g. 127.0.0.1:9120, [::1]:9120, 9120)")
    })
}

/// `7` or `0-3` -> inclusive range.
pub fn parse_queue_range(s: &str) -> Result<(u16, u16), String> {
    let bad = || {
        format!("'{s}' is not a queue number or range (expected e.g. 0 or 0-3, numbers 0-65535)")
    };
    match s.split_once('-') {
        Some((a, b)) => {
            let a: u16 = a.trim().parse().map_err(|_| bad())?;
            let b: u16 = b.trim().parse().map_err(|_| bad())?;
            if a > b {
                return Err(format!("queue range '{s}' runs backwards: write {b}-{a}"));
            }
            Ok((a, b))
        }
        None => {
            let n: u16 = s.trim().parse().map_err(|_| bad())?;
            Ok((n, n))
        }
    }
}

/// Decimal or 0x-prefixed hexadecimal.
pub fn parse_u32(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let parsed = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => t.parse(),
    };
    parsed.map_err(|_| format!("'{s}' is not a 32-bit number (decimal, or hex like 0xff00)"))
}

/// Longest `--window`: a client query waits this long for the resolver's upstream query.
/// Resolvers give up on an upstream server within seconds; an entry older than ten minutes can
/// only pair a stranger's query.
pub const MAX_WINDOW: Duration = Duration::from_secs(600);
/// Longest `--flow-ttl-min`/`--flow-ttl-max`: a week, the cap RFC 8767 suggests for any TTL a
/// resolver keeps.
pub const MAX_FLOW_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// `5s`, `500ms`, `2m`, `1h`, `1.5s`, or a bare number of seconds, of any size: computed in
/// whole nanoseconds with checked arithmetic (never through a float), so no input panics.
/// Range checks belong to each option ([`parse_window`], [`parse_flow_ttl`]).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let too_long = || format!("'{s}' is too long to be a duration");
    let nanos = match duration_nanos(s) {
        Ok(Some(n)) => n,
        Ok(None) => return Err(too_long()),
        Err(e) => return Err(e),
    };
    let secs = u64::try_from(nanos / NANOS_PER_SEC).map_err(|_| too_long())?;
    // The remainder is below 10^9, so it fits.
    let sub = u32::try_from(nanos % NANOS_PER_SEC).unwrap_or(0);
    Ok(Duration::new(secs, sub))
}

/// The value of a duration in nanoseconds; `None` when it overflows even 128 bits, an error
/// for text that is not a duration.
fn duration_nanos(s: &str) -> Result<Option<u128>, String> {
    let t = s.trim();
    let bad = || format!("'{s}' is not a duration (expected e.g. 5s, 500ms, 2m, 1h)");
    let (num, unit) = match t.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let unit_nanos: u128 = match unit {
        "ms" => 1_000_000,
        "s" => NANOS_PER_SEC,
        "m" => 60 * NANOS_PER_SEC,
        "h" => 3600 * NANOS_PER_SEC,
        _ => return Err(bad()),
    };
    let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
    if (whole.is_empty() && frac.is_empty()) || frac.contains('.') {
        return Err(bad());
    }
    let mut nanos: u128 = 0;
    for d in whole.bytes() {
        let next = nanos
            .checked_mul(10)
            .and_then(|n| n.checked_add(u128::from(d - b'0')));
        let Some(next) = next else { return Ok(None) };
        nanos = next;
    }
    let Some(mut nanos) = nanos.checked_mul(unit_nanos) else {
        return Ok(None);
    };
    // Fraction digits past the 18th cannot change a nanosecond of any unit here.
    let mut scale = unit_nanos;
    for d in frac.bytes().take(18) {
        scale /= 10;
        let Some(next) = nanos.checked_add(u128::from(d - b'0') * scale) else {
            return Ok(None);
        };
        nanos = next;
    }
    Ok(Some(nanos))
}

/// Format a limit the way the user writes it (`10m`, `168h`, `1ms`).
fn show(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(3_600_000) && ms > 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// A duration between `min` and `max`; `what` says why the bound is there.
pub fn parse_duration_in(
    s: &str,
    min: Duration,
    max: Duration,
    what: &str,
) -> Result<Duration, String> {
    let too_long = || {
        format!(
            "'{s}' is too long: the longest allowed is {} ({what})",
            show(max)
        )
    };
    let d = match duration_nanos(s)? {
        Some(n) if n <= max.as_nanos() => parse_duration(s)?,
        _ => return Err(too_long()),
    };
    if d < min {
        return Err(format!(
            "'{s}' is too short: the shortest allowed is {} ({what})",
            show(min)
        ));
    }
    Ok(d)
}

/// `--window`: 1ms to [`MAX_WINDOW`].
pub fn parse_window(s: &str) -> Result<Duration, String> {
    parse_duration_in(
        s,
        Duration::from_millis(1),
        MAX_WINDOW,
        "how long a client query waits for the resolver's upstream query; resolvers retry \
         within seconds",
    )
}

/// `nfqmark top --interval`: 100ms to an hour.
pub fn parse_top_interval(s: &str) -> Result<Duration, String> {
    parse_duration_in(
        s,
        Duration::from_millis(100),
        Duration::from_secs(3600),
        "the time between two updates of the view",
    )
}

/// `--flow-readback`: 100ms to 1h.
pub fn parse_readback(s: &str) -> Result<Duration, String> {
    parse_duration_in(
        s,
        Duration::from_millis(100),
        Duration::from_secs(3600),
        "how often nfqmark reads its nft sets back; each read dumps every element",
    )
}

/// `--flow-ttl-min` and `--flow-ttl-max`: 0 to [`MAX_FLOW_TTL`].
pub fn parse_flow_ttl(s: &str) -> Result<Duration, String> {
    parse_duration_in(
        s,
        Duration::ZERO,
        MAX_FLOW_TTL,
        "a learned address is kept at most a week, the TTL cap RFC 8767 suggests",
    )
}

impl RunArgs {
    /// Every queue number named, ranges expanded, duplicates removed, in order.
    pub fn queue_numbers(&self) -> Vec<u16> {
        let mut nums: Vec<u16> = self.queues.iter().flat_map(|&(a, b)| a..=b).collect();
        nums.sort_unstable();
        nums.dedup();
        nums
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_ranges() {
        assert_eq!(parse_queue_range("3"), Ok((3, 3)));
        assert_eq!(parse_queue_range("0-3"), Ok((0, 3)));
        assert!(parse_queue_range("3-0").unwrap_err().contains("backwards"));
        assert!(parse_queue_range("x").is_err());
        assert!(parse_queue_range("70000").is_err());
    }

    #[test]
    fn listen_addresses_default_to_loopback() {
        assert_eq!(
            parse_listen("9120"),
            Ok(std::net::SocketAddr::from(([127, 0, 0, 1], 9120)))
        );
        assert_eq!(parse_listen("[::1]:9120").map(|a| a.port()), Ok(9120));
        assert!(parse_listen("localhost").is_err());
    }

    #[test]
    fn numbers_and_durations() {
        assert_eq!(parse_u32("0xff00"), Ok(0xff00));
        assert_eq!(parse_u32("137"), Ok(137));
        assert!(parse_u32("0x1_0000_0000").is_err());
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("5 parsecs").is_err());
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0.25m"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in [
            "", ".", "s", "1..2s", "1.2.3s", "-1s", "1e3s", "5 s", "5S", "nan", "inf",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn huge_durations_are_errors_not_panics() {
        for huge in [
            "99999999999999999999h",
            "99999999999999999999999999999999999999999999999999s",
            "18446744073709551616s",
            "340282366920938463463374607431768211455ms",
        ] {
            let e = parse_duration(huge).expect_err(huge);
            assert!(e.contains("too long"), "{huge}: {e}");
            let e = parse_window(huge).expect_err(huge);
            assert!(e.contains("the longest allowed is 10m"), "{huge}: {e}");
        }
        // Representable but absurd: past each option's maximum.
        let e = parse_window("11m").expect_err("11m");
        assert!(e.contains("too long") && e.contains("10m"), "{e}");
        assert_eq!(parse_window("10m"), Ok(MAX_WINDOW));
        assert!(
            parse_window("0s")
                .expect_err("0s")
                .contains("shortest allowed is 1ms")
        );
        assert_eq!(parse_flow_ttl("168h"), Ok(MAX_FLOW_TTL));
        assert_eq!(parse_flow_ttl("0"), Ok(Duration::ZERO));
        let e = parse_flow_ttl("169h").expect_err("169h");
        assert!(e.contains("the longest allowed is 168h"), "{e}");
        // The largest u64 of seconds still parses as a plain duration, one more does not.
        assert_eq!(
            parse_duration("18446744073709551615s"),
            Ok(Duration::from_secs(u64::MAX))
        );
    }

    #[test]
    fn duration_errors_name_the_option_on_the_command_line() {
        let e = Cli::try_parse_from(["nfqmark", "run", "--window", "99999999999999999999h"])
            .expect_err("a huge window");
        let text = e.to_string();
        assert!(text.contains("--window"), "{text}");
        assert!(text.contains("longest allowed is 10m"), "{text}");
        assert_eq!(e.exit_code(), 2);
        let e = Cli::try_parse_from(["nfqmark", "run", "--flow-ttl-max", "1000000h"])
            .expect_err("a huge TTL");
        assert!(e.to_string().contains("--flow-ttl-max"), "{e}");
    }
}
