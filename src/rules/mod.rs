//! The rule language: what to mark, what to drop, and where DNS pairing applies.
//!
//! This module owns the text -> rules step and the per-packet match. With no rules file, the rule
//! set is empty: every packet is accepted, DNS pairing applies to all DNS packets, and no static
//! mark is set; that is the zero-configuration dnsmasq `--conntrack` replacement.

use crate::dns::Dns;
use crate::engine::{Meta, Verdict};
use crate::packet::Packet;

/// What a rule sees of a packet.
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'a> {
    pub meta: &'a Meta,
    pub packet: &'a Packet<'a>,
    /// The DNS message, when the packet is to or from a DNS port and could be read.
    pub dns: Option<&'a Dns>,
}

/// The outcome of evaluating the rules for one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub verdict: Verdict,
    /// Mark to set: (value, mask); bits outside the mask keep their value.
    pub set_mark: Option<(u32, u32)>,
    /// Whether DNS pairing applies to this packet.
    pub pairing: bool,
    /// Index of the matching rule, `None` for the default.
    pub rule: Option<usize>,
}

impl Outcome {
    /// What happens with no rules at all: accept, pair DNS, leave the mark.
    pub const DEFAULT: Outcome = Outcome {
        verdict: Verdict::Accept,
        set_mark: None,
        pairing: true,
        rule: None,
    };
}

/// A checked, ready-to-match set of rules.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {}

impl RuleSet {
    /// No rules: everything gets [`Outcome::DEFAULT`].
    pub fn empty() -> RuleSet {
        RuleSet {}
    }

    /// The outcome for a packet no rule can look at (it could not be parsed).
    pub fn default_outcome(&self) -> Outcome {
        Outcome::DEFAULT
    }

    /// First matching rule wins; the default applies when none matches.
    pub fn evaluate(&self, _ctx: &Ctx<'_>) -> Outcome {
        Outcome::DEFAULT
    }
}
