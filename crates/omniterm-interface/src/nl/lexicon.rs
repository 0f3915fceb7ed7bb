//! The vocabulary the interpreter knows: services and their aliases, environments,
//! metrics, and the words that signal each intent ("concepts"), plus typo correction
//! against that vocabulary.
//!
//! Rules elsewhere are written over these concepts, not over example sentences, so a new
//! phrasing that uses known words is understood without a new rule.

use std::collections::HashMap;
use std::sync::OnceLock;

/// Canonical service names.
pub(crate) const SERVICES: [&str; 4] = [
    "core-engine",
    "proxy-gateway",
    "omniterm-interface",
    "mesh-controller",
];

/// Service aliases as word sequences, longest first where they overlap.
pub(crate) const SERVICE_ALIASES: &[(&[&str], &str)] = &[
    (&["core-engine"], "core-engine"),
    (&["core", "engine"], "core-engine"),
    (&["coreengine"], "core-engine"),
    (&["engine"], "core-engine"),
    (&["core"], "core-engine"),
    (&["proxy-gateway"], "proxy-gateway"),
    (&["proxy", "gateway"], "proxy-gateway"),
    (&["gateway"], "proxy-gateway"),
    (&["gw"], "proxy-gateway"),
    (&["proxy"], "proxy-gateway"),
    (&["edge"], "proxy-gateway"),
    (&["omniterm-interface"], "omniterm-interface"),
    (&["omniterm", "interface"], "omniterm-interface"),
    (&["omniterm"], "omniterm-interface"),
    (&["terminal"], "omniterm-interface"),
    (&["term"], "omniterm-interface"),
    (&["repl"], "omniterm-interface"),
    (&["mesh-controller"], "mesh-controller"),
    (&["mesh", "controller"], "mesh-controller"),
    (&["controller"], "mesh-controller"),
    (&["control", "plane"], "mesh-controller"),
    (&["mesh"], "mesh-controller"),
];

/// Words that name the whole system as the target.
pub(crate) const ALL_SERVICES: &[&str] = &[
    "all",
    "every",
    "everything",
    "anything",
    "whole",
    "system",
    "stack",
    "services",
    "platform",
    "entire",
    "everyone",
];

/// Environment words and their canonical value.
pub(crate) const ENVIRONMENTS: &[(&str, &str)] = &[
    ("production", "production"),
    ("prod", "production"),
    ("prd", "production"),
    ("live", "production"),
    ("staging", "staging"),
    ("stage", "staging"),
    ("stg", "staging"),
    ("preprod", "staging"),
    ("dev", "dev"),
    ("development", "dev"),
    ("devel", "dev"),
];

/// Words that make an environment phrase mean every environment.
pub(crate) const ALL_ENVIRONMENT_WORDS: &[&str] = &["environment", "environments", "envs", "env"];

/// Metric words and their canonical value.
pub(crate) const METRICS: &[(&str, &str)] = &[
    ("latency", "latency"),
    ("latencies", "latency"),
    ("slow", "latency"),
    ("response-time", "latency"),
    ("p50", "latency"),
    ("p90", "latency"),
    ("p95", "latency"),
    ("p99", "latency"),
    ("p999", "latency"),
    ("cpu", "cpu"),
    ("processor", "cpu"),
    ("memory", "memory"),
    ("mem", "memory"),
    ("ram", "memory"),
    ("rss", "memory"),
    ("heap", "memory"),
    ("throughput", "throughput"),
    ("rps", "throughput"),
    ("qps", "throughput"),
    ("traffic", "throughput"),
    ("5xx", "error_rate"),
    ("500s", "error_rate"),
    ("errors", "error_rate"),
    ("error", "error_rate"),
    ("failures", "error_rate"),
];

/// What a word signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Concept {
    Health,
    Status,
    Deployed,
    Deploy,
    Promote,
    Abort,
    Rollback,
    Back,
    Roll,
    Scale,
    Replicas,
    Logs,
    Metrics,
    Build,
    Encrypt,
    Decrypt,
    Analyze,
    Help,
    Unsupported,
    Negation,
    Canary,
    Rollout,
    Question,
    Show,
}

/// Lemma → concept. Inflections are listed rather than stemmed: a wrong stem would make
/// "deployed" (a state) look like "deploy" (an order).
const CONCEPTS: &[(&str, Concept)] = &[
    ("health", Concept::Health),
    ("healthy", Concept::Health),
    ("healthcheck", Concept::Health),
    ("health-check", Concept::Health),
    ("alive", Concept::Health),
    ("up", Concept::Health),
    ("ping", Concept::Health),
    ("responding", Concept::Health),
    ("responsive", Concept::Health),
    ("reachable", Concept::Health),
    ("green", Concept::Health),
    ("ok", Concept::Health),
    ("okay", Concept::Health),
    ("down", Concept::Health),
    ("working", Concept::Health),
    ("healthz", Concept::Health),
    ("status", Concept::Status),
    ("state", Concept::Status),
    ("version", Concept::Status),
    ("versions", Concept::Status),
    ("progress", Concept::Status),
    ("list", Concept::Status),
    ("where", Concept::Status),
    ("deployed", Concept::Deployed),
    ("running", Concept::Deployed),
    ("deploy", Concept::Deploy),
    ("ship", Concept::Deploy),
    ("push", Concept::Deploy),
    ("release", Concept::Deploy),
    ("upgrade", Concept::Deploy),
    ("install", Concept::Deploy),
    ("launch", Concept::Deploy),
    ("put", Concept::Deploy),
    ("promote", Concept::Promote),
    ("bump", Concept::Promote),
    ("advance", Concept::Promote),
    ("increase", Concept::Promote),
    ("raise", Concept::Promote),
    ("proceed", Concept::Promote),
    ("next", Concept::Promote),
    ("continue", Concept::Promote),
    ("abort", Concept::Abort),
    ("stop", Concept::Abort),
    ("kill", Concept::Abort),
    ("cancel", Concept::Abort),
    ("halt", Concept::Abort),
    ("terminate", Concept::Abort),
    ("rollback", Concept::Rollback),
    ("revert", Concept::Rollback),
    ("undo", Concept::Rollback),
    ("downgrade", Concept::Rollback),
    ("back", Concept::Back),
    ("roll", Concept::Roll),
    ("rolled", Concept::Roll),
    ("scale", Concept::Scale),
    ("scaling", Concept::Scale),
    ("resize", Concept::Scale),
    ("replicas", Concept::Replicas),
    ("replica", Concept::Replicas),
    ("instances", Concept::Replicas),
    ("instance", Concept::Replicas),
    ("pods", Concept::Replicas),
    ("copies", Concept::Replicas),
    ("log", Concept::Logs),
    ("logs", Concept::Logs),
    ("logged", Concept::Logs),
    ("logging", Concept::Logs),
    ("tail", Concept::Logs),
    ("grep", Concept::Logs),
    ("journal", Concept::Logs),
    ("metrics", Concept::Metrics),
    ("metric", Concept::Metrics),
    ("graph", Concept::Metrics),
    ("chart", Concept::Metrics),
    ("plot", Concept::Metrics),
    ("dashboard", Concept::Metrics),
    ("stats", Concept::Metrics),
    ("usage", Concept::Metrics),
    ("build", Concept::Build),
    ("compile", Concept::Build),
    ("rebuild", Concept::Build),
    ("recompile", Concept::Build),
    ("encrypt", Concept::Encrypt),
    ("encipher", Concept::Encrypt),
    ("seal", Concept::Encrypt),
    ("decrypt", Concept::Decrypt),
    ("decipher", Concept::Decrypt),
    ("unseal", Concept::Decrypt),
    ("analyze", Concept::Analyze),
    ("analyse", Concept::Analyze),
    ("analysis", Concept::Analyze),
    ("why", Concept::Analyze),
    ("wrong", Concept::Analyze),
    ("diagnose", Concept::Analyze),
    ("investigate", Concept::Analyze),
    ("troubleshoot", Concept::Analyze),
    ("compare", Concept::Analyze),
    ("worse", Concept::Analyze),
    ("better", Concept::Analyze),
    ("cause", Concept::Analyze),
    ("regression", Concept::Analyze),
    ("help", Concept::Help),
    ("commands", Concept::Help),
    ("explain", Concept::Help),
    ("manual", Concept::Help),
    ("restart", Concept::Unsupported),
    ("reboot", Concept::Unsupported),
    ("delete", Concept::Unsupported),
    ("remove", Concept::Unsupported),
    ("drain", Concept::Unsupported),
    ("ssh", Concept::Unsupported),
    ("rotate", Concept::Unsupported),
    ("cordon", Concept::Unsupported),
    ("exec", Concept::Unsupported),
    ("order", Concept::Unsupported),
    ("ticket", Concept::Unsupported),
    ("destroy", Concept::Unsupported),
    ("wipe", Concept::Unsupported),
    ("format", Concept::Unsupported),
    ("shutdown", Concept::Unsupported),
    ("nevermind", Concept::Negation),
    ("don't", Concept::Negation),
    ("dont", Concept::Negation),
    ("never", Concept::Negation),
    ("canary", Concept::Canary),
    ("canaries", Concept::Canary),
    ("rollout", Concept::Rollout),
    ("deployment", Concept::Rollout),
    ("deploys", Concept::Rollout),
    ("deploying", Concept::Rollout),
    ("rolling", Concept::Rollout),
    ("what", Concept::Question),
    ("what's", Concept::Question),
    ("whats", Concept::Question),
    ("how", Concept::Question),
    ("is", Concept::Question),
    ("are", Concept::Question),
    ("which", Concept::Question),
    ("show", Concept::Show),
    ("display", Concept::Show),
    ("see", Concept::Show),
    ("view", Concept::Show),
    ("get", Concept::Show),
    ("stream", Concept::Show),
    ("follow", Concept::Show),
];

/// Other words worth knowing for typo correction (but signalling nothing by themselves).
const PLAIN_WORDS: &[&str] = &[
    "the",
    "show",
    "me",
    "to",
    "in",
    "on",
    "of",
    "for",
    "with",
    "using",
    "key",
    "and",
    "lines",
    "minutes",
    "minute",
    "hours",
    "hour",
    "days",
    "day",
    "seconds",
    "weeks",
    "last",
    "past",
    "percent",
    "canary",
    "traffic",
    "replicas",
    "please",
    "thanks",
    "environment",
    "latest",
    "previous",
    "rate",
    "request",
    "requests",
    "warnings",
    "warning",
    "errors",
    "debug",
    "info",
    "service",
    "services",
    "everything",
    "system",
    "fully",
    "dry",
    "run",
    "step",
    "stable",
    "pods",
    "instances",
    "check",
    "whether",
    "staging",
    "production",
    "gateway",
    "controller",
    "terminal",
    "engine",
    "proxy",
    "omniterm",
    "latency",
    "memory",
    "throughput",
    "percentile",
];

/// Common English words and number words: never "corrected" into a command word
/// ("more" is not "core", "five" is not "live").
const COMMON_WORDS: &[&str] = &[
    "a",
    "about",
    "after",
    "again",
    "all",
    "am",
    "an",
    "any",
    "as",
    "at",
    "be",
    "been",
    "before",
    "but",
    "by",
    "can",
    "could",
    "did",
    "do",
    "does",
    "doing",
    "done",
    "each",
    "few",
    "from",
    "give",
    "go",
    "going",
    "good",
    "had",
    "has",
    "have",
    "he",
    "her",
    "here",
    "him",
    "his",
    "i",
    "if",
    "into",
    "it",
    "its",
    "it's",
    "just",
    "keep",
    "know",
    "let",
    "like",
    "look",
    "looking",
    "looks",
    "make",
    "many",
    "may",
    "maybe",
    "might",
    "mind",
    "more",
    "most",
    "much",
    "must",
    "my",
    "need",
    "new",
    "no",
    "node",
    "nodes",
    "not",
    "now",
    "off",
    "old",
    "once",
    "one",
    "only",
    "or",
    "other",
    "our",
    "out",
    "over",
    "own",
    "same",
    "she",
    "should",
    "so",
    "some",
    "such",
    "take",
    "than",
    "that",
    "their",
    "them",
    "then",
    "there",
    "these",
    "they",
    "thing",
    "this",
    "those",
    "through",
    "time",
    "too",
    "under",
    "until",
    "very",
    "was",
    "we",
    "were",
    "when",
    "while",
    "who",
    "whom",
    "will",
    "would",
    "yet",
    "you",
    "your",
    "yours",
    "also",
    "am",
    "asap",
    "box",
    "call",
    "tonight",
    "today",
    "tomorrow",
    "yesterday",
    "right",
    "left",
    "still",
    "again",
    "fine",
    "broken",
    "climbing",
    "spike",
    "failing",
    "keep",
    "start",
    "fresh",
    "kick",
    "thanks",
    "please",
    "pls",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "twenty",
    "thirty",
    "forty",
    "fifty",
    "sixty",
    "seventy",
    "eighty",
    "ninety",
    "hundred",
    "half",
    "quarter",
    "third",
    "zero",
    "none",
    "couple",
    "dozen",
    "time",
    "times",
    "name",
    "names",
    "code",
    "open",
    "close",
    "set",
    "use",
    "using",
    "used",
    "want",
    "wants",
    "try",
    "way",
    "certs",
    "cert",
    "ticket",
    "outage",
    "namespace",
    "weather",
    "pizza",
    "sandwich",
    "joke",
];

static CONCEPT_MAP: OnceLock<HashMap<&'static str, Concept>> = OnceLock::new();
static VOCABULARY: OnceLock<Vec<&'static str>> = OnceLock::new();

/// The concept a (corrected, lowercase) word signals.
pub(crate) fn concept(word: &str) -> Option<Concept> {
    CONCEPT_MAP
        .get_or_init(|| CONCEPTS.iter().copied().collect())
        .get(word)
        .copied()
}

fn vocabulary() -> &'static [&'static str] {
    VOCABULARY.get_or_init(|| {
        let mut words: Vec<&'static str> = CONCEPTS.iter().map(|(word, _)| *word).collect();
        words.extend(PLAIN_WORDS);
        words.extend(COMMON_WORDS);
        words.extend(
            SERVICE_ALIASES
                .iter()
                .flat_map(|(alias, _)| alias.iter().copied()),
        );
        words.extend(ENVIRONMENTS.iter().map(|(word, _)| *word));
        words.extend(METRICS.iter().map(|(word, _)| *word));
        words.extend(SERVICES);
        words.sort_unstable();
        words.dedup();
        words
    })
}

/// Whether `word` is in the vocabulary as typed.
pub(crate) fn is_known(word: &str) -> bool {
    vocabulary().binary_search(&word).is_ok()
}

/// The vocabulary word `word` was most likely meant to be, for a word the vocabulary does
/// not know: Damerau–Levenshtein distance 1 for words of 4–6 letters (2 from 7), and
/// only a swap of two letters for 3-letter words. Ties and numbers are left alone.
pub(crate) fn correct(word: &str) -> Option<&'static str> {
    let length = word.chars().count();
    if !(3..=20).contains(&length)
        || is_known(word)
        || !word.chars().all(|ch| ch.is_ascii_alphabetic() || ch == '-')
    {
        return None;
    }
    let limit = match length {
        3..=6 => 1,
        _ => 2,
    };
    let mut best: Option<(&'static str, usize)> = None;
    let mut tie = false;
    for candidate in vocabulary() {
        if candidate.len().abs_diff(word.len()) > limit {
            continue;
        }
        let distance = strsim::damerau_levenshtein(word, candidate);
        if distance > limit {
            continue;
        }
        // Short command words are too easy to reach by accident ("five" → "live"):
        // into a word of four letters or fewer, only a swap of two letters counts.
        if candidate.len() <= 4 && (candidate.len() != length || !is_swap(word, candidate)) {
            continue;
        }
        // Never into a plain English word: only into words that mean something here.
        if COMMON_WORDS.contains(candidate) {
            continue;
        }
        match best {
            Some((_, best_distance)) if distance > best_distance => {}
            Some((_, best_distance)) if distance == best_distance => tie = true,
            _ => {
                best = Some((candidate, distance));
                tie = false;
            }
        }
    }
    if tie {
        None
    } else {
        best.map(|(word, _)| word)
    }
}

/// Whether `a` and `b` differ by swapping two adjacent letters.
fn is_swap(a: &str, b: &str) -> bool {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let diffs: Vec<usize> = (0..a.len().min(b.len()))
        .filter(|&i| a[i] != b[i])
        .collect();
    diffs.len() == 2
        && diffs[1] == diffs[0] + 1
        && a[diffs[0]] == b[diffs[1]]
        && a[diffs[1]] == b[diffs[0]]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(typo: &str, expected: Option<&str>) {
        assert_eq!(correct(typo), expected, "{typo:?}");
    }

    #[test]
    fn common_typos_are_corrected() {
        check("helth", Some("health"));
        check("dpeloy", Some("deploy"));
        check("promot", Some("promote"));
        check("abrot", Some("abort"));
        check("rollbakc", Some("rollback"));
        check("gatway", Some("gateway"));
        check("sclae", Some("scale"));
        check("biuld", Some("build"));
        check("encrpyt", Some("encrypt"));
        check("dcrypt", Some("decrypt"));
        check("hlep", Some("help"));
        check("teh", Some("the"));
    }

    #[test]
    fn known_words_numbers_and_strangers_are_left_alone() {
        check("deploy", None);
        check("lol", None);
        check("1.4.2", None);
        check("payments", None);
        check("berlin", None);
        check("qwertyuiop", None);
        check("five", None);
        check("more", None);
        check("like", None);
    }
}
