//! Entity extraction: each key of `shared/nl/README.md` from the (corrected) tokens.
//!
//! Every extractor records the words it used, so the interpretation can explain itself.

use serde::Serialize;

use super::Intent;
use super::lexicon::{
    self, ALL_ENVIRONMENT_WORDS, ALL_SERVICES, ENVIRONMENTS, METRICS, SERVICE_ALIASES,
};
use super::numbers::{fraction_percent, parse_digits, parse_number_words};
use super::tokenize::{Kind, Token};

/// The entities of an utterance, with the README's names and canonical values.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Entities {
    /// `core-engine`, `proxy-gateway`, `omniterm-interface`, `mesh-controller` or `all`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// A version without a leading `v`, or `latest`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// `production`, `staging`, `dev` or `all`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// `canary` (deploy only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    /// 0–100.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percent: Option<i64>,
    /// An absolute replica count.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i64>,
    /// A signed change in replicas.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas_delta: Option<i64>,
    /// A time window in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_s: Option<i64>,
    /// `error_rate`, `latency`, `throughput`, `cpu` or `memory`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    /// 99 for p99.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percentile: Option<i64>,
    /// `error`, `warn`, `info` or `debug`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    /// How many log lines.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lines: Option<i64>,
    /// Text to search logs for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// A key name as typed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The exact text to encrypt or decrypt; a secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// An intent name (help only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Set when the operator asked for a dry run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<bool>,
}

/// The tokens of one utterance, with helpers to look around a position.
pub(crate) struct Words<'a> {
    pub(crate) tokens: &'a [Token],
    pub(crate) text: &'a str,
}

impl Words<'_> {
    fn norm(&self, index: usize) -> &str {
        self.tokens
            .get(index)
            .map_or("", |token| token.norm.as_str())
    }

    fn is(&self, index: usize, word: &str) -> bool {
        self.tokens.get(index).is_some_and(|token| token.is(word))
    }

    fn any(&self, words: &[&str]) -> Option<usize> {
        self.tokens
            .iter()
            .position(|token| token.is_word() && words.contains(&token.norm.as_str()))
    }

    /// A number (digits or words) starting at `index`: its value and the tokens it used.
    fn number_at(&self, index: usize) -> Option<(i64, usize)> {
        let token = self.tokens.get(index)?;
        if !token.is_word() {
            return None;
        }
        if let Some(value) = parse_digits(&token.norm) {
            return Some((value, 1));
        }
        let words: Vec<&str> = self.tokens[index..]
            .iter()
            .take_while(|token| token.is_word())
            .map(|token| token.norm.as_str())
            .collect();
        parse_number_words(&words)
    }
}

/// Extracts every entity the words give for `intent`, and explains each one.
pub(crate) fn extract(
    words: &Words<'_>,
    intent: Intent,
    explanation: &mut Vec<String>,
) -> Entities {
    let mut entities = Entities::default();
    let mut note = |key: &str, value: &dyn std::fmt::Display, from: &str| {
        explanation.push(format!("{key} = {value} (from \"{from}\")"));
    };
    if let Some((service, from)) = service(words, intent) {
        note("service", &service, &from);
        entities.service = Some(service);
    }
    if let Some((environment, from)) = environment(words) {
        note("environment", &environment, &from);
        entities.environment = Some(environment);
    }
    if let Some((version, from)) = version(words) {
        note("version", &version, &from);
        entities.version = Some(version);
    }
    if let Some(from) = dry_run(words) {
        note("dry_run", &true, &from);
        entities.dry_run = Some(true);
    }
    match intent {
        Intent::Deploy | Intent::Promote | Intent::Status => {
            if let Some((percent, from)) = percent(words, intent) {
                note("percent", &percent, &from);
                entities.percent = Some(percent);
            }
            if intent == Intent::Deploy && words.any(&["canary", "canaries"]).is_some() {
                note("strategy", &"canary", "canary");
                entities.strategy = Some("canary".into());
            }
        }
        Intent::Scale => match replicas(words) {
            Some(Replicas::Absolute(count, from)) => {
                note("replicas", &count, &from);
                entities.replicas = Some(count);
            }
            Some(Replicas::Delta(delta, from)) => {
                note("replicas_delta", &delta, &from);
                entities.replicas_delta = Some(delta);
            }
            None => {}
        },
        Intent::Logs => {
            if let Some((level, from)) = log_level(words) {
                note("log_level", &level, &from);
                entities.log_level = Some(level.into());
            }
            if let Some((lines, from)) = lines(words) {
                note("lines", &lines, &from);
                entities.lines = Some(lines);
            }
            if let Some(query) = query(words) {
                note("query", &query, &query);
                entities.query = Some(query);
            }
        }
        Intent::Metrics => {
            if let Some((metric, from)) = metric(words) {
                note("metric", &metric, &from);
                entities.metric = Some(metric.into());
            }
            if let Some((percentile, from)) = percentile(words) {
                note("percentile", &percentile, &from);
                entities.percentile = Some(percentile);
            }
        }
        Intent::Encrypt | Intent::Decrypt => {
            let key = key(words);
            if let Some((key, from)) = &key {
                note("key", key, from);
                entities.key = Some(key.clone());
            }
            if let Some(payload) = payload(words, intent, key.as_ref().map(|(key, _)| key.as_str()))
            {
                // The value is a secret: the explanation says only that there is one.
                let size = format!("<{} characters, hidden>", payload.chars().count());
                note("payload", &size, "the quoted or trailing text");
                entities.payload = Some(payload);
            }
        }
        Intent::Help => {
            if let Some(topic) = topic(words) {
                note("topic", &topic.as_str(), topic.as_str());
                entities.topic = Some(topic.as_str().into());
            }
        }
        _ => {}
    }
    if matches!(intent, Intent::Logs | Intent::Metrics | Intent::Analyze)
        && let Some((seconds, from)) = duration(words)
    {
        note("duration_s", &seconds, &from);
        entities.duration_s = Some(seconds);
    }
    entities
}

fn phrase(tokens: &[Token]) -> String {
    tokens
        .iter()
        .map(|token| token.raw.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The service named, by alias (longest match first); `all` only when the words name
/// the whole system and no single service.
fn service(words: &Words<'_>, intent: Intent) -> Option<(String, String)> {
    let tokens = words.tokens;
    for index in 0..tokens.len() {
        // "key" names and payloads are not services ("with key gateway").
        if index > 0 && words.is(index - 1, "key") {
            continue;
        }
        for (alias, canonical) in SERVICE_ALIASES {
            let end = index + alias.len();
            if end <= tokens.len()
                && tokens[index..end]
                    .iter()
                    .zip(alias.iter())
                    .all(|(token, word)| token.is_word() && token.norm == *word)
            {
                return Some(((*canonical).to_owned(), phrase(&tokens[index..end])));
            }
        }
    }
    if matches!(intent, Intent::Encrypt | Intent::Decrypt | Intent::Help) {
        return None;
    }
    for (index, token) in tokens.iter().enumerate() {
        if !token.is_word() || !ALL_SERVICES.contains(&token.norm.as_str()) {
            continue;
        }
        // "every environment" is about environments; "all 5 replicas" about replicas.
        let next = words.norm(index + 1);
        if ALL_ENVIRONMENT_WORDS.contains(&next)
            || lexicon::concept(next) == Some(lexicon::Concept::Replicas)
            || parse_digits(next).is_some()
        {
            continue;
        }
        if token.norm == "whole"
            && !matches!(next, "thing" | "system" | "stack" | "platform" | "lot")
        {
            continue;
        }
        return Some(("all".to_owned(), token.raw.clone()));
    }
    None
}

fn environment(words: &Words<'_>) -> Option<(String, String)> {
    for (index, token) in words.tokens.iter().enumerate() {
        if !token.is_word() {
            continue;
        }
        if let Some((_, canonical)) = ENVIRONMENTS.iter().find(|(word, _)| *word == token.norm) {
            return Some(((*canonical).to_owned(), token.raw.clone()));
        }
        if matches!(token.norm.as_str(), "every" | "all" | "each")
            && ALL_ENVIRONMENT_WORDS.contains(&words.norm(index + 1))
        {
            return Some(("all".to_owned(), phrase(&words.tokens[index..index + 2])));
        }
        if token.norm == "everywhere" {
            return Some(("all".to_owned(), token.raw.clone()));
        }
    }
    None
}

fn version(words: &Words<'_>) -> Option<(String, String)> {
    for (index, token) in words.tokens.iter().enumerate() {
        if !token.is_word() {
            continue;
        }
        let bare = token.norm.strip_prefix('v').unwrap_or(&token.norm);
        if is_version(bare) {
            // Keep the case of a pre-release as typed, without the `v`.
            let raw = &token.raw[token.raw.len() - bare.len()..];
            return Some((raw.to_owned(), token.raw.clone()));
        }
        if matches!(token.norm.as_str(), "latest" | "newest")
            || (token.norm == "most" && words.is(index + 1, "recent"))
        {
            return Some(("latest".to_owned(), token.raw.clone()));
        }
    }
    None
}

/// `1.4`, `1.4.2`, `1.5.0-rc1`: digits and dots, at least one dot, then an optional
/// pre-release of letters, digits, dots and dashes.
fn is_version(word: &str) -> bool {
    let (core, pre) = match word.split_once('-') {
        Some((core, pre)) => (core, Some(pre)),
        None => (word, None),
    };
    let parts: Vec<&str> = core.split('.').collect();
    (2..=4).contains(&parts.len())
        && parts.iter().all(|part| {
            !part.is_empty() && part.len() <= 6 && part.bytes().all(|b| b.is_ascii_digit())
        })
        && pre.is_none_or(|pre| {
            !pre.is_empty()
                && pre
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        })
}

fn dry_run(words: &Words<'_>) -> Option<String> {
    for (index, token) in words.tokens.iter().enumerate() {
        match token.norm.as_str() {
            "dry" if words.is(index + 1, "run") || words.is(index + 1, "running") => {
                return Some(phrase(&words.tokens[index..index + 2]));
            }
            "dry-run" | "--dry-run" | "dryrun" | "simulate" | "simulation" | "preview" => {
                return Some(token.raw.clone());
            }
            "what" if words.is(index + 1, "if") => return Some("what if".into()),
            _ => {}
        }
    }
    None
}

fn percent(words: &Words<'_>, intent: Intent) -> Option<(i64, String)> {
    let tokens = words.tokens;
    for index in 0..tokens.len() {
        let token = &tokens[index];
        if !token.is_word() {
            continue;
        }
        if token.norm.ends_with('%')
            && let Some(value) = parse_digits(&token.norm)
        {
            return in_range(value, &token.raw);
        }
        if let Some((value, used)) = words.number_at(index) {
            // "canary 10", "--canary 10", "weight 20": the number is the percentage.
            if index > 0 && matches!(words.norm(index - 1), "canary" | "percent" | "weight") {
                return in_range(value, &phrase(&tokens[index - 1..index + used]));
            }
            let after = index + used;
            let unit = words.norm(after);
            if unit == "%" || unit.starts_with('%') || matches!(unit, "percent" | "pct" | "per") {
                return in_range(value, &phrase(&tokens[index..=after.min(tokens.len() - 1)]));
            }
            if token.norm.ends_with('%') {
                return in_range(value, &phrase(&tokens[index..after]));
            }
        }
        let rest: Vec<&str> = tokens[index..]
            .iter()
            .take(3)
            .map(|token| token.norm.as_str())
            .collect();
        if let Some((value, used)) = fraction_percent(&rest)
            && matches!(words.norm(index + used), "of" | "traffic" | "percent" | "")
        {
            return Some((value, phrase(&tokens[index..index + used])));
        }
        if intent == Intent::Promote
            && matches!(
                token.norm.as_str(),
                "fully" | "full" | "all-in" | "completely"
            )
        {
            return Some((100, token.raw.clone()));
        }
    }
    None
}

fn in_range(value: i64, from: &str) -> Option<(i64, String)> {
    (0..=100).contains(&value).then(|| (value, from.to_owned()))
}

enum Replicas {
    Absolute(i64, String),
    Delta(i64, String),
}

fn replicas(words: &Words<'_>) -> Option<Replicas> {
    let tokens = words.tokens;
    let down = [
        "down", "remove", "fewer", "less", "decrease", "reduce", "minus", "drop",
    ];
    for index in 0..tokens.len() {
        let Some((value, used)) = words.number_at(index) else {
            continue;
        };
        if value < 0 || tokens[index].norm.starts_with('-') || tokens[index].norm.starts_with('+') {
            return Some(Replicas::Delta(value, tokens[index].raw.clone()));
        }
        let before = if index > 0 { words.norm(index - 1) } else { "" };
        let after = words.norm(index + used);
        let from = phrase(&tokens[index..index + used]);
        // "by one", "add 2 more", "2 more replicas", "remove 3".
        let is_delta = before == "by"
            || after == "more"
            || after == "fewer"
            || before == "add"
            || before == "remove";
        if is_delta {
            let window = &tokens[index.saturating_sub(4)..(index + used + 2).min(tokens.len())];
            // Up unless the words around say down ("by one" alone means up).
            let sign = if window
                .iter()
                .any(|token| down.contains(&token.norm.as_str()))
            {
                -1
            } else {
                1
            };
            return Some(Replicas::Delta(sign * value, from));
        }
        return Some(Replicas::Absolute(value, from));
    }
    None
}

fn log_level(words: &Words<'_>) -> Option<(&'static str, String)> {
    let mut found: Option<(&'static str, String, u8)> = None;
    for token in words.tokens.iter().filter(|token| token.is_word()) {
        let level = match token.norm.as_str() {
            "error" | "errors" | "err" | "failures" | "exceptions" => ("error", 0),
            "warn" | "warning" | "warnings" => ("warn", 1),
            "info" => ("info", 2),
            "debug" | "trace" => ("debug", 3),
            _ => continue,
        };
        // The lowest (most verbose) level asked for wins.
        if found.as_ref().is_none_or(|(_, _, rank)| level.1 > *rank) {
            found = Some((level.0, token.raw.clone(), level.1));
        }
    }
    found.map(|(level, from, _)| (level, from))
}

fn lines(words: &Words<'_>) -> Option<(i64, String)> {
    for index in 0..words.tokens.len() {
        if let Some((value, used)) = words.number_at(index)
            && matches!(
                words.norm(index + used),
                "lines" | "line" | "entries" | "messages"
            )
        {
            return Some((value, phrase(&words.tokens[index..=index + used])));
        }
    }
    None
}

/// The search text of a logs request: a quoted string, or the words after `for`,
/// `containing` or `matching` that are not a time window.
fn query(words: &Words<'_>) -> Option<String> {
    if let Some(quoted) = words.tokens.iter().find(|token| token.kind == Kind::Quoted) {
        return Some(quoted.raw.clone());
    }
    for (index, token) in words.tokens.iter().enumerate() {
        if !matches!(
            token.norm.as_str(),
            "for" | "containing" | "matching" | "mentioning" | "with"
        ) {
            continue;
        }
        let rest: Vec<&Token> = words.tokens[index + 1..]
            .iter()
            .take_while(|token| token.is_word())
            .collect();
        let Some(first) = rest.first() else { continue };
        let is_window = matches!(first.norm.as_str(), "the" | "last" | "past" | "a" | "an")
            || words.number_at(index + 1).is_some();
        let is_target = lexicon::SERVICE_ALIASES
            .iter()
            .any(|(alias, _)| alias[0] == first.norm);
        if is_window || is_target {
            continue;
        }
        return Some(
            rest.iter()
                .map(|token| token.raw.as_str())
                .collect::<Vec<_>>()
                .join(" "),
        );
    }
    None
}

fn metric(words: &Words<'_>) -> Option<(&'static str, String)> {
    for (index, token) in words.tokens.iter().enumerate() {
        let next = words.norm(index + 1);
        match token.norm.as_str() {
            "error" | "errors" | "5xx" | "500s" | "failure"
                if matches!(next, "rate" | "rates" | "ratio" | "%") =>
            {
                return Some(("error_rate", phrase(&words.tokens[index..index + 2])));
            }
            "request" | "requests" if matches!(next, "rate" | "per" | "/s") => {
                return Some(("throughput", phrase(&words.tokens[index..index + 2])));
            }
            "response" if matches!(next, "time" | "times") => {
                return Some(("latency", phrase(&words.tokens[index..index + 2])));
            }
            word => {
                if let Some((_, canonical)) = METRICS.iter().find(|(metric, _)| *metric == word) {
                    return Some((canonical, token.raw.clone()));
                }
            }
        }
    }
    None
}

fn percentile(words: &Words<'_>) -> Option<(i64, String)> {
    for (index, token) in words.tokens.iter().enumerate() {
        let norm = token.norm.as_str();
        if let Some(digits) = norm.strip_prefix('p')
            && let Ok(value) = digits.parse::<i64>()
            && (1..=999).contains(&value)
        {
            // p999 is the 99.9th; report it as 999 would be wrong: use 99 for it.
            return Some((if value > 100 { 99 } else { value }, token.raw.clone()));
        }
        if norm == "median" {
            return Some((50, token.raw.clone()));
        }
        if let Some(number) = norm.strip_suffix("th").or_else(|| norm.strip_suffix("st"))
            && let Ok(value) = number.parse::<i64>()
            && words.is(index + 1, "percentile")
        {
            return Some((value, phrase(&words.tokens[index..index + 2])));
        }
    }
    None
}

/// A time window: "last 15 minutes", "past hour", "15m", "30 minutes", "past day".
fn duration(words: &Words<'_>) -> Option<(i64, String)> {
    let tokens = words.tokens;
    for index in 0..tokens.len() {
        let token = &tokens[index];
        if !token.is_word() {
            continue;
        }
        // "15m", "2h", "30s", "1d".
        if let Some(seconds) = compact_duration(&token.norm) {
            return Some((seconds, token.raw.clone()));
        }
        if let Some((value, used)) = words.number_at(index)
            && let Some(unit) = unit_seconds(words.norm(index + used))
        {
            return Some((
                value.saturating_mul(unit),
                phrase(&tokens[index..=index + used]),
            ));
        }
        // "past hour", "last day", "the last minute", "an hour".
        if matches!(token.norm.as_str(), "last" | "past" | "an" | "previous")
            && let Some(unit) = unit_seconds(words.norm(index + 1))
        {
            return Some((unit, phrase(&tokens[index..=index + 1])));
        }
    }
    None
}

fn compact_duration(word: &str) -> Option<i64> {
    let split = word.find(|ch: char| !ch.is_ascii_digit())?;
    let (digits, unit) = word.split_at(split);
    if digits.is_empty() || digits.len() > 6 {
        return None;
    }
    let value: i64 = digits.parse().ok()?;
    // "500s" and "404s" are HTTP status codes, not durations.
    if unit == "s" && (400..600).contains(&value) {
        return None;
    }
    let unit = match unit {
        "s" | "sec" | "secs" => 1,
        "m" | "min" | "mins" => 60,
        "h" | "hr" | "hrs" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return None,
    };
    Some(value * unit)
}

fn unit_seconds(word: &str) -> Option<i64> {
    Some(match word {
        "s" | "sec" | "secs" | "second" | "seconds" => 1,
        "m" | "min" | "mins" | "minute" | "minutes" => 60,
        "h" | "hr" | "hrs" | "hour" | "hours" => 3600,
        "d" | "day" | "days" => 86_400,
        "w" | "week" | "weeks" => 604_800,
        _ => return None,
    })
}

/// A key name: "key X", "key=X", "the X key", "using X:", "with X" (X not a filler).
fn key(words: &Words<'_>) -> Option<(String, String)> {
    let tokens = words.tokens;
    let is_name = |token: &Token| {
        token.is_word()
            && !matches!(
                token.norm.as_str(),
                "the" | "a" | "my" | "our" | "this" | "that" | "key" | "it"
            )
    };
    for index in 0..tokens.len() {
        if tokens[index].is("key") {
            // "key X" / "key=X" / "key: X"
            let mut next = index + 1;
            if tokens
                .get(next)
                .is_some_and(|token| token.raw == "=" || token.raw == ":")
            {
                next += 1;
            }
            if let Some(token) = tokens.get(next).filter(|token| is_name(token)) {
                return Some((token.raw.clone(), phrase(&tokens[index..=next])));
            }
            // "the X key"
            if index > 0
                && is_name(&tokens[index - 1])
                && !matches!(tokens[index - 1].norm.as_str(), "with" | "using")
            {
                return Some((
                    tokens[index - 1].raw.clone(),
                    phrase(&tokens[index - 1..=index]),
                ));
            }
        }
    }
    for index in 0..tokens.len() {
        if matches!(
            tokens[index].norm.as_str(),
            "with" | "using" | "via" | "under"
        ) {
            let mut next = index + 1;
            while tokens
                .get(next)
                .is_some_and(|token| matches!(token.norm.as_str(), "the" | "a"))
            {
                next += 1;
            }
            if let Some(token) = tokens.get(next).filter(|token| is_name(token))
                && !matches!(token.norm.as_str(), "me" | "for")
            {
                return Some((token.raw.clone(), phrase(&tokens[index..=next])));
            }
        }
    }
    None
}

/// The payload: a quoted string; else the text after the last `:`; else (encrypt) the
/// words after the verb that are not the key phrase.
fn payload(words: &Words<'_>, intent: Intent, key: Option<&str>) -> Option<String> {
    if let Some(quoted) = words.tokens.iter().find(|token| token.kind == Kind::Quoted) {
        return Some(quoted.raw.clone());
    }
    if let Some(colon) = words.tokens.iter().rposition(|token| token.raw == ":") {
        let start = words.tokens.get(colon + 1)?.start;
        let rest = words.text[start..].trim();
        return (!rest.is_empty()).then(|| rest.to_owned());
    }
    if intent != Intent::Encrypt {
        return None;
    }
    let verb = words
        .tokens
        .iter()
        .position(|token| lexicon::concept(&token.norm) == Some(lexicon::Concept::Encrypt))?;
    let mut rest: Vec<&Token> = Vec::new();
    for token in &words.tokens[verb + 1..] {
        if matches!(token.norm.as_str(), "with" | "using" | "key")
            || Some(token.raw.as_str()) == key
        {
            break;
        }
        rest.push(token);
    }
    while rest
        .first()
        .is_some_and(|token| matches!(token.norm.as_str(), "the" | "this" | "string" | "text"))
    {
        rest.remove(0);
    }
    let (first, last) = (rest.first()?, rest.last()?);
    let end = last.start + last.raw.len();
    Some(words.text[first.start..end].to_owned())
}

/// The intent a help request is about: the first intent word mentioned.
fn topic(words: &Words<'_>) -> Option<Intent> {
    let tokens: Vec<&Token> = words
        .tokens
        .iter()
        .filter(|token| token.is_word())
        .collect();
    tokens.iter().enumerate().find_map(|(index, token)| {
        Some(match lexicon::concept(&token.norm)? {
            lexicon::Concept::Roll => {
                let rest = &tokens[index + 1..(index + 4).min(tokens.len())];
                if rest.iter().any(|token| token.norm == "back") {
                    Intent::Rollback
                } else if rest.first().is_some_and(|token| token.norm == "out") {
                    Intent::Deploy
                } else {
                    return None;
                }
            }
            lexicon::Concept::Deploy => Intent::Deploy,
            lexicon::Concept::Promote => Intent::Promote,
            lexicon::Concept::Abort => Intent::Abort,
            lexicon::Concept::Rollback => Intent::Rollback,
            lexicon::Concept::Scale => Intent::Scale,
            lexicon::Concept::Logs => Intent::Logs,
            lexicon::Concept::Metrics => Intent::Metrics,
            lexicon::Concept::Build => Intent::Build,
            lexicon::Concept::Encrypt => Intent::Encrypt,
            lexicon::Concept::Decrypt => Intent::Decrypt,
            lexicon::Concept::Analyze => Intent::Analyze,
            lexicon::Concept::Health => Intent::Health,
            lexicon::Concept::Status => Intent::Status,
            _ => return None,
        })
    })
}
