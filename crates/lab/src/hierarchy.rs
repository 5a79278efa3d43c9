//! A real DNS hierarchy behind the lab's uplinks, for full recursive resolvers (issue 12).
//!
//! ```text
//!   router: unbound or kresd,  ══ link1 / link2 ══  upstream host, one knotd per level:
//!   recursing from the lab's                         root  198.18.9.1 2001:db8:9::1  .
//!   root with its trust anchor                       tld   198.18.9.2 2001:db8:9::2  lab. hosting.
//!                                                    auth  198.18.9.3 2001:db8:9::3  c-zone.lab c-oob.lab
//!                                                                                    c-sec.lab deep.c-sec.lab
//!                                                    cdn   198.18.9.4 2001:db8:9::4  c-dns.hosting
//!                                                                                    c-cdn.hosting
//!   (c: a for client A, b for client B; signed: ., lab., hosting., c-sec.lab, deep.c-sec.lab)
//! ```
//!
//! One knotd process per level, each on addresses of its own on the upstream host, so the root
//! really refers the resolver to the TLD server, which refers it to the second-level servers.
//! The addresses lie in the upstream host's 198.18.9.0/24 and 2001:db8:9::/64, which the router
//! already routes over link 1 (main table) and link 2 (client A's table): every server is
//! reachable over both uplinks, and the lab's sniffer sees every query the resolver sends.
//!
//! Every zone under a TLD belongs to one client (its name starts with `a-` or `b-`), so every
//! upstream query below the TLDs is attributable to the client whose resolution caused it; the
//! root and the TLDs are ancestors both clients share. Per client `c`:
//!
//! - `c-zone.lab`: `wwwK` (plain names), `wwwK.subK` (deeper names: qname minimisation asks
//!   `subK.c-zone.lab` on the way), `aliasK` CNAME `wwwK.c-cdn.hosting` (a target in a zone
//!   served by another server); name server `ns.c-zone.lab`, glue in `lab.`;
//! - `c-oob.lab`: `wwwK`, served by `ns1.c-dns.hosting` with no glue anywhere: the resolver
//!   looks up that name server's address first (in `c-dns.hosting`, on the cdn server);
//! - `c-sec.lab`: `wwwK`, signed, its DS in `lab.`; `bogus` has a broken signature (a
//!   validating resolver answers SERVFAIL: the check that validation really happens);
//! - `deep.c-sec.lab`: `wwwK`, a signed child of `c-sec.lab` on the same server (as when one
//!   provider hosts both): that server answers for the child without a referral, so the
//!   resolver must ask the child's DS itself;
//! - `c-dns.hosting`, `c-cdn.hosting` on the cdn server.
//!
//! The root, `lab.` and `hosting.` are signed too, so validation runs from the lab's own
//! trust anchor (the root key's DS, given to the resolvers) down to `c-sec.lab`, and every
//! other delegation is provably insecure (NSEC, no DS). Zones are generated here and signed at
//! start with fresh keys (`ldns-keygen`, `ldns-signzone`, signatures valid from an hour ago for
//! 30 days), so nothing signed is kept in the repository to expire.
//!
//! [`classify`] sorts every query name the servers see by the client it belongs to and the kind
//! of name it is (the client's own question, a qname-minimised ancestor, a name server address
//! lookup, a CNAME target, a DNSSEC DS/DNSKEY query); [`Tally`] counts each kind per link.
//!
//! This module owns the zones, the authoritative servers and the resolvers' recursive
//! configuration. It never touches anything outside the lab's namespaces and its own scratch
//! directory, and never runs on the packet path (it is test equipment).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hickory_proto::op::{Message, MessageType, OpCode, Query as Question};
use hickory_proto::rr::{Name, RecordType};

use super::netns::{self, Guarded, Netns};
use super::{Client, Family, addr, wait_for};

/// Names each client asks of each kind of name ([`questions`]).
pub const PER_KIND: usize = 8;

/// The name the lab's readiness check asks: data of the root zone itself, so that starting the
/// resolver primes the root (and, validating, fetches its DNSKEY) and leaves the TLDs cold.
/// It answers with the addresses `World::query` expects.
pub const READY_NAME: &str = "ready.";

/// The programs the hierarchy runs, with the Debian package that has each.
pub const NEEDED: &[(&str, &str)] = &[
    ("knotd", "knot"),
    ("ldns-keygen", "ldnsutils"),
    ("ldns-signzone", "ldnsutils"),
];

/// Record types the tables name.
const DS: u16 = 43;
const DNSKEY: u16 = 48;

/// How the router's resolver recurses through the hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recursion {
    /// qname minimisation (RFC 9156): on by default in both unbound and kresd.
    pub minimise: bool,
}

impl Default for Recursion {
    fn default() -> Recursion {
        Recursion { minimise: true }
    }
}

/// One authoritative server process of the hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Server {
    Root,
    Tld,
    Auth,
    Cdn,
}

impl Server {
    pub const ALL: [Server; 4] = [Server::Root, Server::Tld, Server::Auth, Server::Cdn];

    pub fn label(self) -> &'static str {
        match self {
            Server::Root => "root",
            Server::Tld => "tld",
            Server::Auth => "auth",
            Server::Cdn => "cdn",
        }
    }

    fn host(self) -> u8 {
        match self {
            Server::Root => 1,
            Server::Tld => 2,
            Server::Auth => 3,
            Server::Cdn => 4,
        }
    }

    pub fn v4(self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 9, self.host())
    }

    pub fn v6(self) -> Ipv6Addr {
        Ipv6Addr::new(0x2001, 0xdb8, 9, 0, 0, 0, 0, u16::from(self.host()))
    }

    pub fn addr(self, family: Family) -> IpAddr {
        match family {
            Family::V4 => IpAddr::V4(self.v4()),
            Family::V6 => IpAddr::V6(self.v6()),
        }
    }
}

/// Whose a name is: client A's, client B's, or an ancestor both share (the root, the TLDs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Owner {
    A,
    B,
    Shared,
}

impl Owner {
    pub fn of(client: Client) -> Owner {
        match client {
            Client::A => Owner::A,
            Client::B => Owner::B,
        }
    }
}

/// What a query name is to the client's resolution that caused it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// The client's own question (same name and type).
    Own,
    /// The name of a question with another type: unbound, minimising, asks the full name with
    /// type A before an AAAA question (and then needs no AAAA query when A reveals a CNAME).
    OwnOtherType,
    /// A proper ancestor of one of the client's questions (qname minimisation).
    Ancestor,
    /// A name server's name, or an ancestor of one (the resolver looks up its address).
    NsAddress,
    /// A CNAME target of one of the client's questions, or an ancestor of one.
    CnameTarget,
    /// A DS or DNSKEY query (validation).
    Dnssec,
    /// Anything else under the client's zones (none expected).
    Other,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Own,
        Kind::OwnOtherType,
        Kind::Ancestor,
        Kind::NsAddress,
        Kind::CnameTarget,
        Kind::Dnssec,
        Kind::Other,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Kind::Own => "the client's own question",
            Kind::OwnOtherType => "its name with another type",
            Kind::Ancestor => "qname-minimised ancestors",
            Kind::NsAddress => "name-server address lookups",
            Kind::CnameTarget => "CNAME targets",
            Kind::Dnssec => "DNSSEC DS/DNSKEY",
            Kind::Other => "other",
        }
    }
}

/// How many kinds of names [`questions`] has: plain, deeper, out of bailiwick, alias, signed,
/// signed child on its parent's server.
pub const KINDS_OF_NAMES: usize = 6;

/// The questions a client asks: [`PER_KIND`] names of each kind, lower case, no trailing dot.
pub fn questions(client: Client) -> Vec<String> {
    let c = client.letter();
    let mut names = Vec::with_capacity(KINDS_OF_NAMES * PER_KIND);
    for k in 1..=PER_KIND {
        names.push(format!("www{k}.{c}-zone.lab"));
        names.push(format!("www{k}.sub{k}.{c}-zone.lab"));
        names.push(format!("www{k}.{c}-oob.lab"));
        names.push(format!("alias{k}.{c}-zone.lab"));
        names.push(format!("www{k}.{c}-sec.lab"));
        names.push(format!("www{k}.deep.{c}-sec.lab"));
    }
    names
}

/// The name with a broken signature in a client's signed zone.
pub fn bogus_name(client: Client) -> String {
    format!("bogus.{}-sec.lab", client.letter())
}

/// The CNAME target of `aliasK.c-zone.lab`.
fn cname_target(c: char, k: usize) -> String {
    format!("www{k}.{c}-cdn.hosting")
}

/// Every name server name of a client's zones.
fn ns_names(c: char) -> [String; 5] {
    [
        format!("ns.{c}-zone.lab"),
        format!("ns.{c}-sec.lab"),
        format!("ns1.{c}-dns.hosting"),
        format!("ns.{c}-dns.hosting"),
        format!("ns.{c}-cdn.hosting"),
    ]
}

/// `name` without its first label ("" for a TLD; `None` for the root).
fn parent(name: &str) -> Option<&str> {
    if name.is_empty() {
        return None;
    }
    Some(name.split_once('.').map_or("", |(_, rest)| rest))
}

/// Whether `ancestor` is a proper ancestor of `name` (the root, "", is everyone's).
fn is_proper_ancestor(ancestor: &str, name: &str) -> bool {
    let mut n = parent(name);
    while let Some(p) = n {
        if p == ancestor {
            return true;
        }
        n = parent(p);
    }
    false
}

fn is_or_ancestor(candidate: &str, of: &str) -> bool {
    candidate == of || is_proper_ancestor(candidate, of)
}

/// The owner of a query name (lower case, no trailing dot): the client whose zone it is in, by
/// the second-level label (`a-...`, `b-...`), or [`Owner::Shared`] for the root and the TLDs.
pub fn owner(name: &str) -> Owner {
    let labels: Vec<&str> = name.split('.').filter(|l| !l.is_empty()).collect();
    let Some(sld) = labels.len().checked_sub(2).and_then(|i| labels.get(i)) else {
        return Owner::Shared;
    };
    if sld.starts_with("a-") {
        Owner::A
    } else if sld.starts_with("b-") {
        Owner::B
    } else {
        Owner::Shared
    }
}

/// Sort one upstream query: whose it is and what kind of name, for clients that asked
/// [`questions`] with type `asked` (1 for A, 28 for AAAA).
pub fn classify(name: &str, qtype: u16, asked: u16) -> (Owner, Kind) {
    let who = owner(name);
    let client = match who {
        Owner::A => Client::A,
        Owner::B => Client::B,
        Owner::Shared => return (who, Kind::Other),
    };
    let c = client.letter();
    if qtype == DS || qtype == DNSKEY {
        return (who, Kind::Dnssec);
    }
    let own = questions(client);
    if own.iter().any(|q| q == name) {
        return (
            who,
            if qtype == asked {
                Kind::Own
            } else {
                Kind::OwnOtherType
            },
        );
    }
    if own.iter().any(|q| is_proper_ancestor(name, q)) {
        return (who, Kind::Ancestor);
    }
    let servers = ns_names(c);
    if servers.iter().any(|n| n == name) {
        return (who, Kind::NsAddress);
    }
    if (1..=PER_KIND).any(|k| is_or_ancestor(name, &cname_target(c, k))) {
        return (who, Kind::CnameTarget);
    }
    if servers.iter().any(|n| is_proper_ancestor(name, n)) {
        return (who, Kind::NsAddress);
    }
    (who, Kind::Other)
}

/// A zone of the hierarchy, before delegations are added.
#[derive(Debug, Clone)]
struct Zone {
    /// Lower case, no trailing dot; "" for the root.
    apex: String,
    server: Server,
    signed: bool,
    /// Name server names (lower case, no trailing dot); each has the address of `server`.
    ns: Vec<String>,
    /// Data records, owner names absolute with the trailing dot.
    records: Vec<String>,
}

/// How many labels a name has (0 for the root).
fn labels(name: &str) -> usize {
    name.split('.').filter(|l| !l.is_empty()).count()
}

fn fqdn(name: &str) -> String {
    format!("{name}.")
}

/// Address records for `name`: IPv4 and IPv6 of the same host number.
fn address_records(name: &str, v4: Ipv4Addr, v6: Ipv6Addr) -> [String; 2] {
    let n = fqdn(name);
    [format!("{n} A {v4}"), format!("{n} AAAA {v6}")]
}

/// The address records of data name number `k` of zone number `zone`: distinct per name, so a
/// wrong answer shows.
fn data_records(name: &str, zone: u8, k: usize) -> [String; 2] {
    let k = u8::try_from(k).unwrap_or(u8::MAX);
    address_records(
        name,
        Ipv4Addr::new(198, 19, zone, k),
        Ipv6Addr::new(0x2001, 0xdb8, 0x19, u16::from(zone), 0, 0, 0, u16::from(k)),
    )
}

/// Every zone of the hierarchy, without delegations (added by [`zone_text`]).
fn zones() -> Vec<Zone> {
    let mut zones = vec![
        Zone {
            apex: String::new(),
            server: Server::Root,
            signed: true,
            ns: vec!["rootns".into()],
            records: address_records(
                READY_NAME.trim_end_matches('.'),
                super::upstream::ANSWER_V4,
                super::upstream::ANSWER_V6,
            )
            .to_vec(),
        },
        Zone {
            apex: "lab".into(),
            server: Server::Tld,
            signed: true,
            ns: vec!["ns.nic.lab".into()],
            records: Vec::new(),
        },
        Zone {
            apex: "hosting".into(),
            server: Server::Tld,
            signed: true,
            ns: vec!["ns.nic.hosting".into()],
            records: Vec::new(),
        },
    ];
    for (i, client) in [Client::A, Client::B].into_iter().enumerate() {
        let c = client.letter();
        // Zone numbers for the data addresses: 10.. for A, 20.. for B.
        let base = 10 * (i as u8 + 1);
        let mut plain = Vec::new();
        let mut oob = Vec::new();
        let mut sec = Vec::new();
        let mut deep = Vec::new();
        let mut cdn = Vec::new();
        for k in 1..=PER_KIND {
            plain.extend(data_records(&format!("www{k}.{c}-zone.lab"), base, k));
            plain.extend(data_records(
                &format!("www{k}.sub{k}.{c}-zone.lab"),
                base + 1,
                k,
            ));
            plain.push(format!(
                "alias{k}.{c}-zone.lab. CNAME {}",
                fqdn(&cname_target(c, k))
            ));
            oob.extend(data_records(&format!("www{k}.{c}-oob.lab"), base + 2, k));
            sec.extend(data_records(&format!("www{k}.{c}-sec.lab"), base + 3, k));
            deep.extend(data_records(
                &format!("www{k}.deep.{c}-sec.lab"),
                base + 5,
                k,
            ));
            cdn.extend(data_records(&cname_target(c, k), base + 4, k));
        }
        sec.extend(data_records(&bogus_name(client), base + 3, 0));
        zones.extend([
            Zone {
                apex: format!("{c}-zone.lab"),
                server: Server::Auth,
                signed: false,
                ns: vec![format!("ns.{c}-zone.lab")],
                records: plain,
            },
            Zone {
                apex: format!("{c}-oob.lab"),
                server: Server::Auth,
                signed: false,
                ns: vec![format!("ns1.{c}-dns.hosting")],
                records: oob,
            },
            Zone {
                apex: format!("{c}-sec.lab"),
                server: Server::Auth,
                signed: true,
                ns: vec![format!("ns.{c}-sec.lab")],
                records: sec,
            },
            Zone {
                apex: format!("deep.{c}-sec.lab"),
                server: Server::Auth,
                signed: true,
                ns: vec![format!("ns.{c}-sec.lab")],
                records: deep,
            },
            Zone {
                apex: format!("{c}-dns.hosting"),
                server: Server::Cdn,
                signed: false,
                ns: vec![format!("ns.{c}-dns.hosting")],
                records: Vec::new(),
            },
            Zone {
                apex: format!("{c}-cdn.hosting"),
                server: Server::Cdn,
                signed: false,
                ns: vec![format!("ns.{c}-cdn.hosting")],
                records: cdn,
            },
        ]);
    }
    zones
}

/// Whether `name` is at or below `apex`.
fn under(name: &str, apex: &str) -> bool {
    apex.is_empty() || name == apex || name.ends_with(&format!(".{apex}"))
}

/// The zone that holds `name` authoritatively: the deepest apex at or above it.
fn zone_of<'z>(zones: &'z [Zone], name: &str) -> Option<&'z Zone> {
    zones
        .iter()
        .filter(|z| under(name, &z.apex))
        .max_by_key(|z| z.apex.len())
}

/// The text of `zone`'s file: SOA, NS, its data, the addresses of name servers whose names it
/// holds, and for each child zone a delegation (NS, glue for names under the child, and the
/// child's DS from `ds` when it is signed).
fn zone_text(zones: &[Zone], zone: &Zone, ds: &BTreeMap<String, Vec<String>>) -> String {
    let apex = fqdn(&zone.apex);
    let apex = if zone.apex.is_empty() {
        ".".into()
    } else {
        apex
    };
    let primary = zone.ns.first().map(|n| fqdn(n)).unwrap_or_default();
    // Lines in order, each once (a name server may serve several zones).
    let mut t = String::new();
    let mut lines = BTreeSet::new();
    let mut line = |t: &mut String, l: String| {
        if lines.insert(l.clone()) {
            t.push_str(&l);
            t.push('\n');
        }
    };
    let _ = writeln!(t, "$TTL 3600");
    let rname = if zone.apex.is_empty() {
        "hostmaster.".to_string()
    } else {
        format!("hostmaster.{apex}")
    };
    let _ = writeln!(t, "{apex} SOA {primary} {rname} 1 3600 600 86400 60");
    for ns in &zone.ns {
        line(&mut t, format!("{apex} NS {}", fqdn(ns)));
    }
    for r in &zone.records {
        line(&mut t, r.clone());
    }
    // Addresses of name servers whose names this zone holds.
    for z in zones {
        for ns in &z.ns {
            if zone_of(zones, ns).is_some_and(|h| h.apex == zone.apex) {
                for r in address_records(ns, z.server.v4(), z.server.v6()) {
                    line(&mut t, r);
                }
            }
        }
    }
    // Delegations to the children.
    for child in zones {
        let is_child = !child.apex.is_empty()
            && child.apex != zone.apex
            && parent(&child.apex)
                .and_then(|p| zone_of(zones, p))
                .is_some_and(|p| p.apex == zone.apex);
        if !is_child {
            continue;
        }
        for ns in &child.ns {
            line(&mut t, format!("{} NS {}", fqdn(&child.apex), fqdn(ns)));
            if under(ns, &child.apex) {
                for r in address_records(ns, child.server.v4(), child.server.v6()) {
                    line(&mut t, r);
                }
            }
        }
        for r in ds.get(&child.apex).into_iter().flatten() {
            line(&mut t, r.clone());
        }
    }
    t
}

fn file_stem(apex: &str) -> &str {
    if apex.is_empty() { "root" } else { apex }
}

/// Run a program in `dir`; its stdout, or an error with its stderr.
fn run_in(dir: &Path, program: &str, args: &[&str]) -> io::Result<String> {
    let out = std::process::Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("{program}: {e}")))?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{program} {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Break the signature of the RRSIGs over `name`'s address records in a signed zone file.
fn break_signatures(signed: &str, name: &str) -> String {
    let owner = fqdn(name);
    let mut out = String::with_capacity(signed.len());
    for line in signed.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let over_address = fields.first() == Some(&owner.as_str())
            && fields.get(3) == Some(&"RRSIG")
            && matches!(fields.get(4), Some(&"A") | Some(&"AAAA"));
        match (over_address, line.rfind(|c: char| c.is_whitespace())) {
            (true, Some(at)) => {
                // Change one character of the base64 signature: still well-formed, now wrong.
                let (head, sig) = line.split_at(at + 1);
                let mut sig: Vec<char> = sig.chars().collect();
                if let Some(ch) = sig.get_mut(4) {
                    *ch = if *ch == 'A' { 'B' } else { 'A' };
                }
                out.push_str(head);
                out.extend(sig);
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Zone files per server, as (origin, file name in the server's directory).
type ZoneFiles = BTreeMap<Server, Vec<(String, String)>>;

/// Write every zone's file into its server's directory under `dir`, signing the signed ones
/// children first (a parent's file carries its signed children's DS); the files per server and
/// the root's DS record (the trust anchor).
fn write_zones(dir: &Path, zones: &[Zone]) -> io::Result<(ZoneFiles, String)> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(io::Error::other)?
        .as_secs();
    let validity = (
        now.saturating_sub(3600).to_string(),
        (now + 30 * 86_400).to_string(),
    );
    let mut order: Vec<&Zone> = zones.iter().collect();
    order.sort_by_key(|z| std::cmp::Reverse(labels(&z.apex)));
    let mut ds: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut files = ZoneFiles::new();
    for zone in order {
        let sdir = dir.join(zone.server.label());
        std::fs::create_dir_all(&sdir)?;
        let plain = format!("{}.zone", file_stem(&zone.apex));
        std::fs::write(sdir.join(&plain), zone_text(zones, zone, &ds))?;
        let file = if zone.signed {
            let (signed, zone_ds) = sign(&sdir, zones, zone, &plain, &validity)?;
            ds.insert(zone.apex.clone(), zone_ds);
            signed
        } else {
            plain
        };
        files
            .entry(zone.server)
            .or_default()
            .push((origin(&zone.apex), file));
    }
    let trust_anchor = ds
        .get("")
        .and_then(|l| l.first())
        .cloned()
        .ok_or_else(|| io::Error::other("the root zone has no DS"))?;
    Ok((files, trust_anchor))
}

/// The zone's origin as zone files and servers write it ("." for the root).
fn origin(apex: &str) -> String {
    if apex.is_empty() {
        ".".to_string()
    } else {
        fqdn(apex)
    }
}

/// Sign `plain` (a zone file in `sdir`) with a fresh KSK and ZSK (ECDSA P-256), valid over
/// `validity` (inception, expiration as Unix times), breaking the signatures of the zone's
/// bogus name if it has one; the signed file's name and the KSK's DS records.
fn sign(
    sdir: &Path,
    zones: &[Zone],
    zone: &Zone,
    plain: &str,
    validity: &(String, String),
) -> io::Result<(String, Vec<String>)> {
    let origin = origin(&zone.apex);
    let alg = "ECDSAP256SHA256";
    let ksk = run_in(sdir, "ldns-keygen", &["-a", alg, "-k", &origin])?;
    let zsk = run_in(sdir, "ldns-keygen", &["-a", alg, &origin])?;
    let (ksk, zsk) = (ksk.trim(), zsk.trim());
    let signed = format!("{}.signed", file_stem(&zone.apex));
    let (inception, expiration) = validity;
    run_in(
        sdir,
        "ldns-signzone",
        &[
            "-i", inception, "-e", expiration, "-o", &origin, "-f", &signed, plain, ksk, zsk,
        ],
    )?;
    let mut text = std::fs::read_to_string(sdir.join(&signed))?;
    for client in [Client::A, Client::B] {
        let bogus = bogus_name(client);
        if zone_of(zones, &bogus).is_some_and(|z| z.apex == zone.apex) {
            text = break_signatures(&text, &bogus);
        }
    }
    std::fs::write(sdir.join(&signed), text)?;
    // ldns-keygen -k writes the KSK's DS (SHA-256) next to the key.
    let ds = std::fs::read_to_string(sdir.join(format!("{ksk}.ds")))?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    Ok((signed, ds))
}

/// The root hints file both resolvers read: the root's name server and its addresses.
fn root_hints() -> String {
    let mut hints = String::from(". 3600000 NS rootns.\n");
    for r in address_records("rootns", Server::Root.v4(), Server::Root.v6()) {
        if let Some((owner, rest)) = r.split_once(' ') {
            let _ = writeln!(hints, "{owner} 3600000 {rest}");
        }
    }
    hints
}

/// Start knotd for `server` in the upstream namespace, serving `zones` from `sdir`, and wait
/// until it answers authoritatively for each of them.
fn start_server(
    upstream: &Netns,
    server: Server,
    sdir: &Path,
    zones: &[(String, String)],
) -> io::Result<Guarded> {
    let conf = sdir.join("knot.conf");
    std::fs::write(&conf, knot_conf(server, sdir, zones))?;
    let log = std::fs::File::create(sdir.join("knotd.log"))?;
    let child = upstream
        .command("knotd")
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let guard = Guarded(child);
    let to = SocketAddr::new(IpAddr::V4(server.v4()), 53);
    for (origin, _) in zones {
        let ok = wait_for(Duration::from_secs(10), || {
            exchange(upstream.name(), to, origin, RecordType::SOA, false)
                .ok()
                .flatten()
                .is_some_and(|m| m.metadata.authoritative)
        });
        if !ok {
            return Err(io::Error::other(format!(
                "knotd '{}' does not answer for '{origin}': {}",
                server.label(),
                std::fs::read_to_string(sdir.join("knotd.log")).unwrap_or_default()
            )));
        }
    }
    Ok(guard)
}

/// The running hierarchy: one knotd per [`Server`]. Dropping it stops them.
#[derive(Debug)]
pub struct Hierarchy {
    _servers: Vec<Guarded>,
    dir: PathBuf,
    /// The root key's DS record (". IN DS ..."): the lab's trust anchor.
    trust_anchor: String,
    hints: PathBuf,
}

impl Hierarchy {
    /// Write and sign the zones under `dir`, give the upstream host the servers' addresses and
    /// start one knotd per server in it; return when every server answers for its zones.
    pub fn start(upstream: &Netns, dir: &Path) -> io::Result<Hierarchy> {
        super::check_programs(NEEDED).map_err(io::Error::other)?;
        std::fs::create_dir_all(dir)?;
        let (mut files, trust_anchor) = write_zones(dir, &zones())?;
        let hints = dir.join("root.hints");
        std::fs::write(&hints, root_hints())?;
        for server in Server::ALL {
            upstream.ip(&["addr", "add", &format!("{}/32", server.v4()), "dev", "lo"])?;
            let v6 = format!("{}/128", server.v6());
            upstream.ip(&["-6", "addr", "add", &v6, "dev", "lo"])?;
        }
        let mut servers = Vec::new();
        for server in Server::ALL {
            let zones = files.remove(&server).unwrap_or_default();
            servers.push(start_server(
                upstream,
                server,
                &dir.join(server.label()),
                &zones,
            )?);
        }
        Ok(Hierarchy {
            _servers: servers,
            dir: dir.to_path_buf(),
            trust_anchor,
            hints,
        })
    }

    /// The root key's DS record, the resolvers' trust anchor.
    pub fn trust_anchor(&self) -> &str {
        &self.trust_anchor
    }

    /// Where the zones, keys and server logs are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// unbound as a full recursive resolver from the lab's root: validating with the lab's
    /// trust anchor, 0x20 on, qname minimisation as asked, upstream over `family` only
    /// (listening on the router's client-side addresses of that family), from `ports` if given
    /// (as `Options::upstream_ports`).
    pub fn unbound_conf(
        &self,
        dir: &Path,
        family: Family,
        recursion: Recursion,
        ports: Option<(u16, u16)>,
    ) -> String {
        let d = dir.display();
        let ports = match ports {
            Some((lo, hi)) => {
                format!("    outgoing-port-avoid: 0-65535\n    outgoing-port-permit: {lo}-{hi}\n")
            }
            None => String::new(),
        };
        let yes = |b: bool| if b { "yes" } else { "no" };
        let interfaces: String = match family {
            Family::V4 => [addr::ROUTER_A_V4, addr::ROUTER_B_V4],
            Family::V6 => [addr::ROUTER_A_V6, addr::ROUTER_B_V6],
        }
        .iter()
        .map(|a| format!("    interface: {a}\n"))
        .collect();
        format!(
            r#"server:
    do-daemonize: no
    chroot: ""
    username: ""
    directory: "{d}"
    pidfile: "{d}/unbound.pid"
    use-syslog: no
    logfile: ""
    verbosity: 1
    val-log-level: 2
    num-threads: 1
{interfaces}    port: 53
    do-ip4: {v4}
    do-ip6: {v6}
    access-control: 198.18.0.0/15 allow
    access-control: 2001:db8::/32 allow
    root-hints: "{hints}"
    trust-anchor: "{ta}"
    module-config: "validator iterator"
    qname-minimisation: {min}
    use-caps-for-id: yes
    prefetch: no
    so-reuseport: no
    outgoing-range: 512
{ports}remote-control:
    control-enable: no
"#,
            v4 = yes(family == Family::V4),
            v6 = yes(family == Family::V6),
            hints = self.hints.display(),
            ta = self.trust_anchor,
            min = yes(recursion.minimise),
        )
    }

    /// knot-resolver as a full recursive resolver from the lab's root (root hints), validating
    /// with the lab's trust anchor, qname minimisation as asked, upstream over `family` only.
    pub fn kresd_conf(&self, family: Family, recursion: Recursion) -> String {
        let mut conf = String::from("-- nfqmark lab: recursive from the lab's root\n");
        for a in [
            addr::ROUTER_A_V4,
            addr::ROUTER_B_V4,
            addr::ROUTER_A_V6,
            addr::ROUTER_B_V6,
        ] {
            let _ = writeln!(conf, "net.listen('{a}', 53, {{ kind = 'dns' }})");
        }
        let _ = writeln!(conf, "net.ipv4 = {}", family == Family::V4);
        let _ = writeln!(conf, "net.ipv6 = {}", family == Family::V6);
        let _ = writeln!(conf, "cache.size = 10 * MB");
        let _ = writeln!(conf, "modules.load('hints > iterate')");
        let _ = writeln!(
            conf,
            "hints.root({{ ['rootns.'] = {{ '{}', '{}' }} }})",
            Server::Root.v4(),
            Server::Root.v6()
        );
        let _ = writeln!(conf, "trust_anchors.remove('.')");
        let _ = writeln!(conf, "trust_anchors.add('{}')", self.trust_anchor);
        if !recursion.minimise {
            let _ = writeln!(
                conf,
                "policy.add(policy.all(policy.FLAGS({{'NO_MINIMIZE'}})))"
            );
        }
        conf
    }
}

/// A knotd configuration serving `zones` (origin, file in `dir`) on `server`'s addresses.
fn knot_conf(server: Server, dir: &Path, zones: &[(String, String)]) -> String {
    let d = dir.display();
    let mut c = format!(
        r#"server:
    rundir: "{d}"
    listen: [ "{v4}@53", "{v6}@53" ]
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
log:
  - target: stderr
    any: notice
database:
    storage: "{d}/db"
template:
  - id: default
    storage: "{d}"
    semantic-checks: off
    journal-content: none
    zonefile-sync: -1
    zonefile-load: whole
zone:
"#,
        v4 = server.v4(),
        v6 = server.v6(),
    );
    for (origin, file) in zones {
        let _ = writeln!(c, "  - domain: \"{origin}\"\n    file: \"{file}\"");
    }
    c
}

/// One answer a client got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// NOERROR, SERVFAIL...
    pub rcode: String,
    /// The resolver vouched for the data (validated).
    pub ad: bool,
    /// Answer records as "owner TYPE data" (lower case, no TTL), sorted.
    pub records: Vec<String>,
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}{} [{}]",
            self.rcode,
            if self.ad { " AD" } else { "" },
            self.records.join("; ")
        )
    }
}

/// Send one query (RD and AD set: the resolver says whether it validated) over UDP from inside
/// the namespace named `ns` to `to`; `Ok(None)` when no answer came within the tries.
fn exchange(
    ns: &str,
    to: SocketAddr,
    name: &str,
    qtype: RecordType,
    rd: bool,
) -> io::Result<Option<Message>> {
    let name = name.to_string();
    netns::on_thread(ns, "lab-dns-ask", move || {
        let socket = client_socket(to)?;
        ask_on(&socket, to, &name, qtype, rd, 1, Duration::from_millis(500))
    })
}

fn client_socket(to: SocketAddr) -> io::Result<UdpSocket> {
    let any: SocketAddr = if to.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    UdpSocket::bind(any)
}

/// Ask `name` on `socket`, `tries` times waiting `wait` each; the answer with the query's id.
fn ask_on(
    socket: &UdpSocket,
    to: SocketAddr,
    name: &str,
    qtype: RecordType,
    rd: bool,
    tries: u32,
    wait: Duration,
) -> io::Result<Option<Message>> {
    let id = next_id();
    let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = rd;
    msg.metadata.authentic_data = rd;
    let qname = Name::from_ascii(name).map_err(io::Error::other)?;
    msg.add_query(Question::query(qname, qtype));
    let bytes = msg.to_vec().map_err(io::Error::other)?;
    socket.set_read_timeout(Some(wait))?;
    let mut buf = [0u8; 4096];
    for _ in 0..tries {
        socket.send_to(&bytes, to)?;
        let deadline = std::time::Instant::now() + wait;
        while std::time::Instant::now() < deadline {
            let Ok((n, _)) = socket.recv_from(&mut buf) else {
                break;
            };
            if let Ok(reply) = Message::from_vec(buf.get(..n).unwrap_or_default())
                && reply.metadata.id == id
                && reply.metadata.message_type == MessageType::Response
            {
                return Ok(Some(reply));
            }
        }
    }
    Ok(None)
}

fn next_id() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0x1000);
    NEXT.fetch_add(7919, Ordering::Relaxed)
}

fn answer_of(msg: &Message) -> Answer {
    let mut records: Vec<String> = msg
        .answers
        .iter()
        .map(|r| {
            format!(
                "{} {} {}",
                r.name.to_ascii().to_ascii_lowercase(),
                r.record_type(),
                r.data
            )
            .to_ascii_lowercase()
        })
        .collect();
    records.sort();
    Answer {
        rcode: msg.metadata.response_code.to_string(),
        ad: msg.metadata.authentic_data,
        records,
    }
}

/// The type clients ask for `family` (A or AAAA), as the lab's `World::query` does.
pub fn asked_type(family: Family) -> RecordType {
    match family {
        Family::V4 => RecordType::A,
        Family::V6 => RecordType::AAAA,
    }
}

/// Ask `names` one after the other from `client`'s namespace to the router's resolver over
/// `family` (2 s per try, 3 tries); one entry per name, `None` when nothing came back.
pub fn ask(
    client_ns: &Netns,
    client: Client,
    family: Family,
    names: &[String],
) -> io::Result<Vec<Option<Answer>>> {
    let server = match (client, family) {
        (Client::A, Family::V4) => addr::ROUTER_A_V4,
        (Client::A, Family::V6) => addr::ROUTER_A_V6,
        (Client::B, Family::V4) => addr::ROUTER_B_V4,
        (Client::B, Family::V6) => addr::ROUTER_B_V6,
    };
    let to = SocketAddr::new(super::ip(server)?, 53);
    let names = names.to_vec();
    let qtype = asked_type(family);
    netns::on_thread(client_ns.name(), "lab-dns-client", move || {
        let socket = client_socket(to)?;
        let mut out = Vec::with_capacity(names.len());
        for name in &names {
            let reply = ask_on(&socket, to, name, qtype, true, 3, Duration::from_secs(2))?;
            out.push(reply.as_ref().map(answer_of));
        }
        Ok(out)
    })
}

/// One upstream query as the upstream host saw it (from the lab's sniffer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamQuery {
    /// Lower case, no trailing dot.
    pub name: String,
    pub qtype: u16,
    /// `link1` or `link2`.
    pub link: String,
    /// Sent with upper-case letters in the name (0x20).
    pub cased: bool,
    /// The upstream host took it (its source belongs to the link it came over).
    pub accepted: bool,
}

/// Distinct (name, type) pairs of one cell of the table, by the link they came over.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cell {
    /// Every distinct (name, type).
    pub all: BTreeSet<(String, u16)>,
    pub link1: BTreeSet<(String, u16)>,
    pub link2: BTreeSet<(String, u16)>,
    /// Of `all`, those sent at least once with upper-case letters (0x20).
    pub cased: BTreeSet<(String, u16)>,
    /// Of `all`, those the upstream host dropped at least once for a foreign source.
    pub dropped: BTreeSet<(String, u16)>,
    /// Query packets (retries included).
    pub packets: usize,
}

impl Cell {
    /// Pairs that came over `link` only (never over the other link, never dropped).
    pub fn only(&self, link: u8) -> usize {
        let (this, other) = if link == 2 {
            (&self.link2, &self.link1)
        } else {
            (&self.link1, &self.link2)
        };
        this.iter()
            .filter(|k| !other.contains(*k) && !self.dropped.contains(*k))
            .count()
    }

    /// Query types and how many distinct names each, e.g. "A 9, NS 2".
    pub fn types(&self) -> String {
        let mut by: BTreeMap<u16, usize> = BTreeMap::new();
        for (_, t) in &self.all {
            *by.entry(*t).or_default() += 1;
        }
        by.iter()
            .map(|(t, n)| format!("{} {n}", RecordType::from(*t)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Upstream queries sorted by owner and kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    pub cells: BTreeMap<(Owner, Kind), Cell>,
}

impl Tally {
    /// Sort what the upstream host saw, for clients that asked with type `asked`.
    pub fn from_queries(seen: &[UpstreamQuery], asked: u16) -> Tally {
        let mut t = Tally::default();
        for s in seen {
            let (who, kind) = classify(&s.name, s.qtype, asked);
            let cell = t.cells.entry((who, kind)).or_default();
            let key = (s.name.clone(), s.qtype);
            cell.packets += 1;
            match s.link.as_str() {
                "link1" => {
                    cell.link1.insert(key.clone());
                }
                "link2" => {
                    cell.link2.insert(key.clone());
                }
                _ => {}
            }
            if s.cased {
                cell.cased.insert(key.clone());
            }
            if !s.accepted {
                cell.dropped.insert(key.clone());
            }
            cell.all.insert(key);
        }
        t
    }

    pub fn cell(&self, owner: Owner, kind: Kind) -> Cell {
        self.cells.get(&(owner, kind)).cloned().unwrap_or_default()
    }

    /// Every query of `owner` (all kinds).
    pub fn total(&self, owner: Owner) -> Cell {
        let mut all = Cell::default();
        for ((o, _), c) in &self.cells {
            if *o == owner {
                all.all.extend(c.all.iter().cloned());
                all.link1.extend(c.link1.iter().cloned());
                all.link2.extend(c.link2.iter().cloned());
                all.cased.extend(c.cased.iter().cloned());
                all.dropped.extend(c.dropped.iter().cloned());
                all.packets += c.packets;
            }
        }
        all
    }

    /// Client A's names of `kind` that did not leave over link 2 only, and client B's that
    /// came over link 2: what the issue wants to be empty.
    pub fn misrouted(&self, kind: Kind) -> Vec<String> {
        let a = self.cell(Owner::A, kind);
        let b = self.cell(Owner::B, kind);
        let mut bad: Vec<String> = a
            .all
            .iter()
            .filter(|k| !a.link2.contains(*k) || a.link1.contains(*k) || a.dropped.contains(*k))
            .map(|(n, t)| format!("A {n} {}", RecordType::from(*t)))
            .collect();
        bad.extend(
            b.all
                .iter()
                .filter(|k| b.link2.contains(*k) || b.dropped.contains(*k))
                .map(|(n, t)| format!("B {n} {} over link2 or dropped", RecordType::from(*t))),
        );
        bad
    }

    /// The table the issue shows: per kind, client A's names that left over link 2 only, out
    /// of all of A's, and the same for client B over link 1; then the shared ancestors.
    pub fn table(&self, title: &str) -> String {
        let mut t = format!(
            "{title}\n{:<30} {:>14} {:>14} {:>9}  {}\n",
            "kind (distinct name+type)", "A link2 / all", "B link1 / all", "0x20", "types (A; B)"
        );
        let row = |t: &mut String, label: &str, a: &Cell, b: &Cell| {
            if a.all.is_empty() && b.all.is_empty() {
                return;
            }
            let _ = writeln!(
                t,
                "{label:<30} {:>14} {:>14} {:>9}  {}; {}",
                format!("{} / {}", a.only(2), a.all.len()),
                format!("{} / {}", b.only(1), b.all.len()),
                format!(
                    "{} / {}",
                    a.cased.len() + b.cased.len(),
                    a.all.len() + b.all.len()
                ),
                if a.all.is_empty() {
                    "-".into()
                } else {
                    a.types()
                },
                if b.all.is_empty() {
                    "-".into()
                } else {
                    b.types()
                },
            );
        };
        for kind in Kind::ALL {
            row(
                &mut t,
                kind.title(),
                &self.cell(Owner::A, kind),
                &self.cell(Owner::B, kind),
            );
        }
        row(&mut t, "all", &self.total(Owner::A), &self.total(Owner::B));
        let shared = self.total(Owner::Shared);
        let _ = writeln!(
            t,
            "shared ancestors (root, TLDs): {} distinct, {} over link1, {} over link2, 0x20 on {}; \
             types {}",
            shared.all.len(),
            shared.link1.len(),
            shared.link2.len(),
            shared.cased.len(),
            shared.types()
        );
        let dropped: usize = self.cells.values().map(|c| c.dropped.len()).sum();
        if dropped > 0 {
            let _ = writeln!(t, "dropped for a foreign source: {dropped} distinct");
        }
        t
    }

    /// One line per kind: "kind: A a2/aN, B b1/bN" (for `#[ignore]` reasons and logs).
    pub fn summary(&self) -> String {
        Kind::ALL
            .iter()
            .filter_map(|&k| {
                let (a, b) = (self.cell(Owner::A, k), self.cell(Owner::B, k));
                (!a.all.is_empty() || !b.all.is_empty()).then(|| {
                    format!(
                        "{}: A {}/{} link2, B {}/{} link1",
                        k.title(),
                        a.only(2),
                        a.all.len(),
                        b.only(1),
                        b.all.len()
                    )
                })
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_is_the_second_level_label() {
        assert_eq!(owner("www1.a-zone.lab"), Owner::A);
        assert_eq!(owner("ns1.b-dns.hosting"), Owner::B);
        assert_eq!(owner("a-zone.lab"), Owner::A);
        assert_eq!(owner("lab"), Owner::Shared);
        assert_eq!(owner(""), Owner::Shared);
        assert_eq!(owner("ready"), Owner::Shared);
        assert_eq!(owner("ns.nic.lab"), Owner::Shared);
    }

    #[test]
    fn kinds_of_names() {
        let a = 1;
        assert_eq!(classify("www3.a-zone.lab", 1, a), (Owner::A, Kind::Own));
        assert_eq!(
            classify("www3.a-zone.lab", 28, a),
            (Owner::A, Kind::OwnOtherType)
        );
        assert_eq!(classify("a-zone.lab", 1, a), (Owner::A, Kind::Ancestor));
        assert_eq!(
            classify("sub3.b-zone.lab", 2, a),
            (Owner::B, Kind::Ancestor)
        );
        assert_eq!(classify("a-oob.lab", 2, a), (Owner::A, Kind::Ancestor));
        assert_eq!(
            classify("ns1.a-dns.hosting", 1, a),
            (Owner::A, Kind::NsAddress)
        );
        assert_eq!(classify("a-dns.hosting", 1, a), (Owner::A, Kind::NsAddress));
        assert_eq!(
            classify("ns.a-zone.lab", 28, a),
            (Owner::A, Kind::NsAddress)
        );
        assert_eq!(
            classify("www2.a-cdn.hosting", 1, a),
            (Owner::A, Kind::CnameTarget)
        );
        assert_eq!(
            classify("a-cdn.hosting", 2, a),
            (Owner::A, Kind::CnameTarget)
        );
        assert_eq!(
            classify("ns.a-cdn.hosting", 1, a),
            (Owner::A, Kind::NsAddress)
        );
        assert_eq!(classify("a-sec.lab", DS, a), (Owner::A, Kind::Dnssec));
        assert_eq!(classify("a-sec.lab", DNSKEY, a), (Owner::A, Kind::Dnssec));
        assert_eq!(classify("www1.a-sec.lab", 1, a), (Owner::A, Kind::Own));
        assert_eq!(classify("deep.a-sec.lab", DS, a), (Owner::A, Kind::Dnssec));
        assert_eq!(classify("deep.a-sec.lab", 1, a), (Owner::A, Kind::Ancestor));
        assert_eq!(classify("www8.deep.a-sec.lab", 1, a), (Owner::A, Kind::Own));
        assert_eq!(
            classify("nothing.a-zone.lab", 1, a),
            (Owner::A, Kind::Other)
        );
        assert_eq!(classify("lab", DNSKEY, a).0, Owner::Shared);
        assert_eq!(classify("", 2, a).0, Owner::Shared);
    }

    #[test]
    fn questions_are_disjoint_and_each_kind_has_per_kind_names() {
        let a = questions(Client::A);
        let b = questions(Client::B);
        assert_eq!(a.len(), KINDS_OF_NAMES * PER_KIND);
        assert!(a.iter().all(|n| owner(n) == Owner::A));
        assert!(b.iter().all(|n| owner(n) == Owner::B));
        let all: BTreeSet<&String> = a.iter().chain(&b).collect();
        assert_eq!(all.len(), 2 * KINDS_OF_NAMES * PER_KIND);
    }

    #[test]
    fn ancestors() {
        assert!(is_proper_ancestor("a-zone.lab", "www1.sub1.a-zone.lab"));
        assert!(is_proper_ancestor("lab", "www1.a-zone.lab"));
        assert!(is_proper_ancestor("", "lab"));
        assert!(!is_proper_ancestor("www1.a-zone.lab", "www1.a-zone.lab"));
        assert!(!is_proper_ancestor("zone.lab", "www1.a-zone.lab"));
        assert_eq!(parent("lab"), Some(""));
        assert_eq!(parent(""), None);
    }

    fn zone_file(apex: &str) -> String {
        let zones = zones();
        let z = zones.iter().find(|z| z.apex == apex).expect("zone");
        let mut ds = BTreeMap::new();
        ds.insert(
            "a-sec.lab".to_string(),
            vec!["a-sec.lab. IN DS 1 13 2 00".to_string()],
        );
        zone_text(&zones, z, &ds)
    }

    #[test]
    fn root_delegates_the_tlds_with_glue() {
        let root = zone_file("");
        assert!(root.contains(". SOA rootns. hostmaster. 1"), "{root}");
        assert!(root.contains("rootns. A 198.18.9.1"), "{root}");
        assert!(root.contains("lab. NS ns.nic.lab."), "{root}");
        assert!(root.contains("ns.nic.lab. A 198.18.9.2"), "{root}");
        assert!(root.contains("hosting. NS ns.nic.hosting."), "{root}");
        assert!(root.contains("ready. A 198.18.9.99"), "{root}");
        assert!(!root.contains("a-zone"), "{root}");
    }

    #[test]
    fn out_of_bailiwick_delegation_has_no_glue_and_signed_child_has_ds() {
        let lab = zone_file("lab");
        assert!(lab.contains("a-oob.lab. NS ns1.a-dns.hosting."), "{lab}");
        assert!(!lab.contains("ns1.a-dns.hosting. A"), "{lab}");
        assert!(lab.contains("a-zone.lab. NS ns.a-zone.lab."), "{lab}");
        assert!(lab.contains("ns.a-zone.lab. A 198.18.9.3"), "{lab}");
        assert!(lab.contains("a-sec.lab. IN DS 1 13 2 00"), "{lab}");
        assert!(!lab.contains("www1"), "{lab}");
        let dns = zone_file("a-dns.hosting");
        assert!(dns.contains("ns1.a-dns.hosting. A 198.18.9.3"), "{dns}");
        assert!(dns.contains("ns.a-dns.hosting. A 198.18.9.4"), "{dns}");
        let hosting = zone_file("hosting");
        assert!(
            hosting.contains("ns.a-dns.hosting. A 198.18.9.4"),
            "{hosting}"
        );
    }

    #[test]
    fn zones_hold_their_data_and_aliases_point_elsewhere() {
        let z = zone_file("a-zone.lab");
        assert!(
            z.contains("alias3.a-zone.lab. CNAME www3.a-cdn.hosting."),
            "{z}"
        );
        assert!(z.contains("www3.sub3.a-zone.lab. A 198.19.11.3"), "{z}");
        assert!(z.contains("ns.a-zone.lab. A 198.18.9.3"), "{z}");
        let sec = zone_file("b-sec.lab");
        assert!(sec.contains("bogus.b-sec.lab. A"), "{sec}");
        // The signed child on the same server: delegated, no glue needed, one address record.
        assert!(sec.contains("deep.b-sec.lab. NS ns.b-sec.lab."), "{sec}");
        assert_eq!(sec.matches("ns.b-sec.lab. A ").count(), 1, "{sec}");
        assert!(!sec.contains("www1.deep"), "{sec}");
        let deep = zone_file("deep.b-sec.lab");
        assert!(
            deep.contains("www1.deep.b-sec.lab. A 198.19.25.1"),
            "{deep}"
        );
    }

    #[test]
    fn broken_signature_changes_only_the_address_rrsigs_of_the_name() {
        let signed = "bogus.a-sec.lab.\t3600\tIN\tA\t198.19.13.0\n\
             bogus.a-sec.lab.\t3600\tIN\tRRSIG\tA 13 3 3600 2 1 7 a-sec.lab. AAAAxyz=\n\
             bogus.a-sec.lab.\t60\tIN\tRRSIG\tNSEC 13 3 60 2 1 7 a-sec.lab. AAAAxyz=\n\
             www1.a-sec.lab.\t3600\tIN\tRRSIG\tA 13 3 3600 2 1 7 a-sec.lab. AAAAxyz=\n";
        let broken = break_signatures(signed, "bogus.a-sec.lab");
        let lines: Vec<&str> = broken.lines().collect();
        assert_eq!(lines[0], signed.lines().next().unwrap_or_default());
        assert!(lines[1].ends_with("AAAAAyz="), "{}", lines[1]);
        assert!(lines[2].ends_with("AAAAxyz="));
        assert!(lines[3].ends_with("AAAAxyz="));
    }

    #[test]
    fn tally_counts_distinct_names_per_link() {
        let seen = |name: &str, qtype: u16, link: &str| UpstreamQuery {
            name: name.into(),
            qtype,
            link: link.into(),
            cased: true,
            accepted: true,
        };
        let t = Tally::from_queries(
            &[
                seen("www1.a-zone.lab", 1, "link2"),
                seen("www1.a-zone.lab", 1, "link2"),
                seen("a-zone.lab", 1, "link1"),
                seen("a-zone.lab", 1, "link2"),
                seen("www1.b-zone.lab", 1, "link1"),
                seen("b-zone.lab", 2, "link2"),
                seen("lab", 1, "link1"),
                UpstreamQuery {
                    accepted: false,
                    ..seen("www1.a-sec.lab", 1, "link2")
                },
            ],
            1,
        );
        let own = t.cell(Owner::A, Kind::Own);
        // www1.a-zone.lab twice over link 2; www1.a-sec.lab once, dropped: not counted there.
        assert_eq!((own.all.len(), own.only(2), own.packets), (2, 1, 3));
        assert_eq!(own.dropped.len(), 1);
        let anc = t.cell(Owner::A, Kind::Ancestor);
        assert_eq!((anc.all.len(), anc.only(2), anc.only(1)), (1, 0, 0));
        assert_eq!(
            t.misrouted(Kind::Ancestor),
            vec![
                "A a-zone.lab A".to_string(),
                "B b-zone.lab NS over link2 or dropped".into()
            ]
        );
        assert_eq!(
            t.misrouted(Kind::Own),
            vec!["A www1.a-sec.lab A".to_string()]
        );
        assert_eq!(t.total(Owner::Shared).all.len(), 1);
        let table = t.table("x");
        assert!(table.contains("the client's own question"), "{table}");
        assert!(
            t.summary()
                .contains("qname-minimised ancestors: A 0/1 link2, B 0/1 link1")
        );
    }
}
