//! Command-line definitions: raw values and their validation, nothing more.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "nfqmark",
    version,
    about = "NFQUEUE packet marker: carries a DNS client's firewall mark onto the resolver's \
             upstream query and answers, for any resolver"
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
    /// Show nfqmark at work in a throw-away network of namespaces (needs root; touches nothing
    /// outside its namespaces).
    Demo(DemoArgs),
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The rules file to check.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Accept interface names that do not exist on this machine (checking a file for another).
    #[arg(long)]
    pub any_interface: bool,
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
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "5s")]
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
    /// Flow rules: shortest time a learned address is kept (answers with a smaller TTL are
    /// raised to it).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "30s")]
    pub flow_ttl_min: Duration,
    /// Flow rules: longest time a learned address is kept (larger TTLs are lowered to it).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "1h")]
    pub flow_ttl_max: Duration,
    /// Flow rules: most (client, address) entries remembered; the one closest to expiry goes.
    #[arg(long, value_name = "N", default_value_t = 65_536)]
    pub flow_capacity: usize,
    /// Serve Prometheus metrics over HTTP on ADDR:PORT (a bare PORT binds 127.0.0.1).
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse_listen)]
    pub metrics: Option<std::net::SocketAddr>,
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

/// `5s`, `500ms`, `2m`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let bad = || format!("'{s}' is not a duration (expected e.g. 5s, 500ms, 2m)");
    let (num, unit) = match t.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let value: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(bad()),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
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
    }
}
