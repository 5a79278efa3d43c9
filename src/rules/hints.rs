//! Did-you-mean: the tables of words people type from other tools, and the messages for a word
//! the rule language does not know.
//!
//! This module owns every guess at what a user meant: the edit-distance match, the iptables and
//! nftables aliases, service names for ports, and the diagnosis of an unknown word in a packet
//! rule or a flow rule (its message, its hint, and whether it was taken for an action). It
//! returns text and never reports anything itself (the statement machine in `syntax.rs` places
//! the message), never sees tokens and never panics.

use super::keywords::{ACTIONS, FIELDS, FLOW_WORDS, HOOKS, PROTOS, flow_only};

/// How a flow rule reads, for hints.
pub(super) const FLOW_USAGE: &str =
    "flow [src CIDR, ...] [mark VALUE[/MASK]] names NAME, ... set-mark VALUE[/MASK] [per-mark]";

/// Words from iptables and nftables that people will type, and what they are called here.
pub(super) const ALIASES: &[(&str, &str)] = &[
    ("-p", "proto"),
    ("--protocol", "proto"),
    ("protocol", "proto"),
    ("-s", "src"),
    ("--source", "src"),
    ("source", "src"),
    ("saddr", "src"),
    ("-d", "dst"),
    ("--destination", "dst"),
    ("destination", "dst"),
    ("daddr", "dst"),
    ("-i", "iif"),
    ("--in-interface", "iif"),
    ("iifname", "iif"),
    ("-o", "oif"),
    ("--out-interface", "oif"),
    ("oifname", "oif"),
    ("--mac-source", "src-mac"),
    ("mac-source", "src-mac"),
    ("ether", "src-mac"),
    ("mac", "src-mac"),
    ("--set-mark", "set-mark"),
    ("--set-xmark", "set-mark"),
    ("qname", "dns-name"),
    ("name", "dns-name"),
    ("qtype", "dns-type"),
    ("type", "dns-type"),
    ("chain", "hook"),
    ("direction", "dir"),
    ("port", "dport' or 'sport"),
    ("-j", "accept', 'drop', 'repeat' or 'set-mark"),
    ("-m", "a field name (dport, mark, ...)"),
];

/// The closest candidate to `word`, if it is close enough to be a likely typo.
pub(crate) fn did_you_mean<'c>(word: &str, candidates: &[&'c str]) -> Option<&'c str> {
    let w = word.to_ascii_lowercase();
    let limit = if w.chars().count() <= 3 { 1 } else { 2 };
    candidates
        .iter()
        .map(|c| (strsim::damerau_levenshtein(&w, &c.to_ascii_lowercase()), *c))
        .filter(|(d, c)| *d <= limit && *d < c.len().min(w.len()))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

pub(super) fn dym_hint(word: &str, candidates: &[&str]) -> Option<String> {
    did_you_mean(word, candidates).map(|c| format!("did you mean '{c}'?"))
}

/// "one of a, b, c" for a list of words.
pub(super) fn one_of(words: &[&str]) -> String {
    format!("one of {}", words.join(", "))
}

// ------------------------------------------------------------------------------------------------
/// Well-known service names, for a hint when someone writes `dport http`.
const SERVICES: &[(&str, u16)] = &[
    ("ssh", 22),
    ("smtp", 25),
    ("domain", 53),
    ("dns", 53),
    ("http", 80),
    ("ntp", 123),
    ("https", 443),
    ("smtps", 465),
    ("submission", 587),
    ("imaps", 993),
    ("dot", 853),
];

/// The hint for a word that is not a port: its number when it is a service name.
pub(super) fn not_a_port(word: &str) -> String {
    match SERVICES.iter().find(|(n, _)| n.eq_ignore_ascii_case(word)) {
        Some((n, p)) => format!("service names are not looked up; {n} is {p}"),
        None => "write a number from 0 to 65535, or a range like 1024-65535".to_string(),
    }
}

/// What to say about a word that is neither a field nor an action word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Unknown {
    pub(super) message: String,
    pub(super) hint: Option<String>,
    /// The word was taken for a misspelt action (so "missing action" would only repeat it).
    pub(super) action: bool,
    /// The word it was taken for, if any.
    pub(super) suggestion: Option<&'static str>,
}

/// A word that looks like a value (a number, an address, a name, a set) rather than a keyword:
/// most likely a second value written without a comma.
fn looks_like_value(word: &str) -> bool {
    word.chars()
        .next()
        .is_some_and(|c| c.is_ascii_digit() || c == '@' || c == '*')
        || word.contains(['.', ':', '/'])
}

/// An unknown word in a packet rule or the default; `in_action` when an action word came
/// before it.
pub(super) fn unknown_word(word: &str, in_action: bool) -> Unknown {
    if flow_only(word) || word.eq_ignore_ascii_case("flow") {
        return flow_word_outside_flow(word);
    }
    let alias = ALIASES
        .iter()
        .find(|(a, _)| a.eq_ignore_ascii_case(word))
        .map(|(_, to)| *to);
    let fields: Vec<&str> = FIELDS.iter().map(|(n, _)| *n).collect();
    let actions: Vec<&str> = ACTIONS.iter().map(|(n, _)| *n).collect();
    let all: Vec<&str> = fields.iter().chain(actions.iter()).copied().collect();
    let bare = word.trim_start_matches('-');
    let suggestion = alias.or_else(|| did_you_mean(bare, &all));
    let is_action = in_action || suggestion.is_some_and(|s| actions.contains(&s));
    let message = if is_action {
        format!("unknown action '{word}'")
    } else {
        format!("unknown field '{word}'")
    };
    let lower = word.to_ascii_lowercase();
    let value_of = |table: &[&str], field: &str| {
        table
            .contains(&lower.as_str())
            .then(|| format!("did you mean '{field} {lower}'?"))
    };
    let hooks: Vec<&str> = HOOKS.iter().map(|(n, _)| *n).collect();
    let protos: Vec<&str> = PROTOS.iter().map(|(n, _)| *n).collect();
    let as_value = value_of(&protos, "proto").or_else(|| value_of(&hooks, "hook"));
    let hint = match suggestion {
        Some(s) => Some(format!("did you mean '{s}'?")),
        None if as_value.is_some() && !in_action => as_value,
        None if looks_like_value(word) => Some(
            "to give a field several values, separate them with commas, as in 'dport 80, 443'"
                .to_string(),
        ),
        None if is_action => Some(
            "actions are accept, drop, repeat, set-mark VALUE[/MASK], pair and nopair".to_string(),
        ),
        None => Some(format!("fields are {}", fields.join(", "))),
    };
    Unknown {
        message,
        hint,
        action: is_action,
        suggestion,
    }
}

/// `flow`, `names` or `per-mark` outside a flow rule.
fn flow_word_outside_flow(word: &str) -> Unknown {
    let lower = word.to_ascii_lowercase();
    let hint = if lower == "flow" {
        "'flow' starts a flow rule: put it first on the line".to_string()
    } else {
        format!(
            "'{lower}' belongs in a flow rule: start the line with 'flow', as in 'flow \
             names *.video.example set-mark 0x20/0xff'"
        )
    };
    let is_action = lower == "per-mark";
    let kind = if is_action { "action" } else { "field" };
    Unknown {
        message: format!("unknown {kind} '{word}'"),
        hint: Some(hint),
        action: is_action,
        suggestion: None,
    }
}

/// An unknown word in a flow rule; `in_action` when `set-mark` or `per-mark` came before it.
/// The suggestion, if any, is one of the flow rule's own words.
pub(super) fn unknown_flow_word(word: &str, in_action: bool) -> Unknown {
    let alias = ALIASES
        .iter()
        .find(|(a, _)| a.eq_ignore_ascii_case(word))
        .map(|(_, to)| if *to == "dns-name" { "names" } else { *to })
        .filter(|to| FLOW_WORDS.contains(to));
    let suggestion = alias.or_else(|| did_you_mean(word.trim_start_matches('-'), FLOW_WORDS));
    let is_action = in_action || matches!(suggestion, Some("set-mark" | "per-mark"));
    let message = if is_action {
        format!("unknown action '{word}' in a flow rule")
    } else {
        format!("unknown field '{word}' in a flow rule")
    };
    let hint = match suggestion {
        Some(s) => format!("did you mean '{s}'?"),
        None if looks_like_value(word) => "to give a field several values, separate them with \
                                           commas, as in 'names a.example, b.example'"
            .to_string(),
        None => format!("a flow rule reads: {FLOW_USAGE}"),
    };
    Unknown {
        message,
        hint: Some(hint),
        action: is_action,
        suggestion,
    }
}
