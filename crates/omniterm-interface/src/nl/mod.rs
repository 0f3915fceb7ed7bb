//! The plain-English interpreter: text in, a typed, validated, explained command out.
//!
//! The pipeline, one module per stage: [`normalize`] (quotes, dashes, white space) →
//! [`tokenize`] (quoted payloads kept verbatim) → typo correction against our own
//! vocabulary ([`lexicon::correct`]) → intent classification ([`classify`]: safety rules,
//! concept rules and a naive Bayes model trained at start-up) → entity extraction
//! ([`entities`]) → the safety rules that decide confirmation and clarification. Nothing
//! here performs IO or mutates anything; it only says what would run.

mod classify;
mod entities;
pub mod eval;
pub mod invariants;
pub(crate) mod lexicon;
mod normalize;
mod numbers;
mod tokenize;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use entities::Entities;

use classify::Model;
use tokenize::{Kind, Token};

/// The labelled examples the model learns from: the shared development set, and our own.
const TRAINING_SETS: [&str; 2] = [
    include_str!("../../data/utterances-dev.jsonl"),
    include_str!("../../data/examples.jsonl"),
];

/// What the operator wants done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs)] // The README's table documents each intent.
pub enum Intent {
    Health,
    Status,
    Deploy,
    Promote,
    Abort,
    Rollback,
    Scale,
    Logs,
    Metrics,
    Build,
    Encrypt,
    Decrypt,
    Analyze,
    Help,
    Unknown,
}

impl Intent {
    /// Every intent, in a fixed order.
    pub const ALL: [Intent; 15] = [
        Intent::Health,
        Intent::Status,
        Intent::Deploy,
        Intent::Promote,
        Intent::Abort,
        Intent::Rollback,
        Intent::Scale,
        Intent::Logs,
        Intent::Metrics,
        Intent::Build,
        Intent::Encrypt,
        Intent::Decrypt,
        Intent::Analyze,
        Intent::Help,
        Intent::Unknown,
    ];

    /// The label of `shared/nl/README.md`.
    pub fn as_str(self) -> &'static str {
        match self {
            Intent::Health => "health",
            Intent::Status => "status",
            Intent::Deploy => "deploy",
            Intent::Promote => "promote",
            Intent::Abort => "abort",
            Intent::Rollback => "rollback",
            Intent::Scale => "scale",
            Intent::Logs => "logs",
            Intent::Metrics => "metrics",
            Intent::Build => "build",
            Intent::Encrypt => "encrypt",
            Intent::Decrypt => "decrypt",
            Intent::Analyze => "analyze",
            Intent::Help => "help",
            Intent::Unknown => "unknown",
        }
    }

    /// Whether carrying it out changes the platform.
    pub fn mutates(self) -> bool {
        matches!(
            self,
            Intent::Deploy
                | Intent::Promote
                | Intent::Abort
                | Intent::Rollback
                | Intent::Scale
                | Intent::Build
        )
    }

    fn index(self) -> usize {
        Intent::ALL
            .iter()
            .position(|intent| *intent == self)
            .expect("ALL lists every intent")
    }

    fn from_label(label: &str) -> Option<Self> {
        Intent::ALL
            .into_iter()
            .find(|intent| intent.as_str() == label)
    }
}

impl fmt::Display for Intent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an utterance means, and what running it would take.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Interpretation {
    /// The utterance as received.
    pub text: String,
    /// The intent.
    pub intent: Intent,
    /// The entities the text actually gives.
    pub entities: Entities,
    /// How sure the interpreter is, 0–1.
    pub confidence: f64,
    /// Whether it must be confirmed before it runs.
    pub needs_confirmation: bool,
    /// Whether running it changes the platform (false for dry runs).
    pub mutates: bool,
    /// Whether the confirmation must be typed out (production at 100%, everything,
    /// scale to 0 or beyond the maximum, roll back everything).
    pub dangerous: bool,
    /// The canonical command line it maps to.
    pub canonical: String,
    /// A clarifying question (a mutating command with a missing target) or a suggestion
    /// (an utterance that was not understood). Nothing runs while this is set.
    pub clarification: Option<String>,
    /// What was recognised, word by word.
    pub explanation: Vec<String>,
    /// The utterance with every payload and quoted text replaced by `<redacted>`: the
    /// only form that may be stored (history) or logged.
    #[serde(skip)]
    pub redacted: String,
}

/// Why an utterance was refused before interpretation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    /// Longer than the configured limit.
    #[error("input is {length} characters long; the limit is {limit}")]
    TooLong {
        /// Characters received.
        length: usize,
        /// The configured limit.
        limit: usize,
    },
}

/// Limits of the interpreter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest utterance accepted, in characters.
    pub max_input_chars: usize,
    /// Scaling beyond this many replicas is dangerous.
    pub max_replicas: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_input_chars: 2048,
            max_replicas: 50,
        }
    }
}

/// The interpreter: a trained model and the limits; cheap to share.
#[derive(Debug, Clone)]
pub struct Interpreter {
    model: Model,
    limits: Limits,
}

/// One labelled example.
#[derive(Debug, Clone, Deserialize)]
pub struct Example {
    /// The utterance.
    pub text: String,
    /// The expected intent label.
    pub intent: String,
    /// The expected entities.
    #[serde(default)]
    pub entities: serde_json::Map<String, serde_json::Value>,
}

/// Parses JSON lines of labelled examples, skipping blank lines.
///
/// # Errors
/// The line number and the parse error of the first bad line.
pub fn parse_examples(jsonl: &str) -> Result<Vec<Example>, String> {
    jsonl
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(number, line)| {
            serde_json::from_str(line).map_err(|error| format!("line {}: {error}", number + 1))
        })
        .collect()
}

impl Interpreter {
    /// An interpreter trained on the built-in examples.
    ///
    /// # Panics
    /// Never for the built-in sets: a test parses them.
    pub fn new(limits: Limits) -> Self {
        let examples: Vec<Example> = TRAINING_SETS
            .iter()
            .flat_map(|set| parse_examples(set).expect("the built-in training sets parse"))
            .collect();
        Self::train(&examples, limits)
    }

    /// An interpreter trained on `examples` (cross-validation trains on folds).
    pub fn train(examples: &[Example], limits: Limits) -> Self {
        let labelled: Vec<(Vec<Token>, Intent)> = examples
            .iter()
            .filter_map(|example| {
                Some((
                    prepare(&normalize::normalize(&example.text)),
                    Intent::from_label(&example.intent)?,
                ))
            })
            .collect();
        Self {
            model: Model::train(&labelled),
            limits,
        }
    }

    /// Interprets one utterance.
    ///
    /// # Errors
    /// When the utterance is longer than [`Limits::max_input_chars`].
    pub fn interpret(&self, text: &str) -> Result<Interpretation, InputError> {
        let length = text.chars().count();
        if length > self.limits.max_input_chars {
            return Err(InputError::TooLong {
                length,
                limit: self.limits.max_input_chars,
            });
        }
        let normalized = normalize::normalize(text);
        let tokens = prepare(&normalized);
        let mut explanation = Vec::new();
        let classification = classify::classify(&normalized, &tokens, &self.model);
        let intent = classification.intent;
        explanation.push(format!("intent = {intent} ({})", classification.reason));
        let words = entities::Words {
            tokens: &tokens,
            text: &normalized,
        };
        let entities = if intent == Intent::Unknown {
            Entities::default()
        } else {
            entities::extract(&words, intent, &mut explanation)
        };
        let hidden = hidden_ranges(&normalized, &tokens, entities.payload.as_deref());
        // Typo corrections are explained, except inside a payload: its words are secret.
        let corrected = tokens
            .iter()
            .filter(|token| token.is_word() && token.raw.to_lowercase() != token.norm)
            .filter(|token| !hidden.iter().any(|range| range.contains(&token.start)))
            .map(|token| format!("read \"{}\" as \"{}\"", token.raw, token.norm));
        explanation.splice(0..0, corrected);
        let redacted = redact(&normalized, hidden);
        Ok(self.decide(
            text,
            redacted,
            intent,
            entities,
            classification.confidence,
            explanation,
        ))
    }

    /// Applies the safety rules: confirmation, danger, clarification.
    fn decide(
        &self,
        text: &str,
        redacted: String,
        intent: Intent,
        entities: Entities,
        confidence: f64,
        explanation: Vec<String>,
    ) -> Interpretation {
        let dry_run = entities.dry_run == Some(true);
        let mutates = intent.mutates() && !dry_run;
        let everything = entities.service.as_deref() == Some("all")
            || entities.environment.as_deref() == Some("all");
        let dangerous = mutates
            && (everything
                || (entities.environment.as_deref() == Some("production")
                    && entities.percent == Some(100)
                    && intent == Intent::Deploy)
                || entities
                    .replicas
                    .is_some_and(|replicas| replicas <= 0 || replicas > self.limits.max_replicas)
                || entities
                    .replicas_delta
                    .is_some_and(|delta| delta.abs() > self.limits.max_replicas)
                || (intent == Intent::Rollback && entities.service.is_none()));
        let clarification = clarification(intent, &entities);
        Interpretation {
            text: text.to_owned(),
            canonical: canonical(intent, &entities),
            intent,
            entities,
            confidence: (confidence * 1000.0).round() / 1000.0,
            needs_confirmation: mutates,
            mutates,
            dangerous,
            clarification,
            explanation,
            redacted,
        }
    }
}

/// The byte ranges of the normalised text that are secret: quoted spans, the text after
/// the last `:`, and every occurrence of the payload. Quoted text is hidden whatever the
/// intent: an utterance that was not understood may still carry a secret.
fn hidden_ranges(
    normalized: &str,
    tokens: &[Token],
    payload: Option<&str>,
) -> Vec<std::ops::Range<usize>> {
    let mut hidden: Vec<std::ops::Range<usize>> = tokens
        .iter()
        .filter(|token| token.kind == Kind::Quoted)
        .map(|token| token.start..token.start + token.raw.len())
        .collect();
    if let Some(colon) = tokens.iter().rposition(|token| token.raw == ":")
        && let Some(next) = tokens.get(colon + 1)
    {
        hidden.push(next.start..normalized.len());
    }
    if let Some(payload) = payload.filter(|payload| !payload.is_empty()) {
        hidden.extend(
            normalized
                .match_indices(payload)
                .map(|(start, _)| start..start + payload.len()),
        );
    }
    hidden.sort_by_key(|range| range.start);
    hidden
}

/// The normalised text with the `hidden` ranges (sorted by start) replaced by
/// `<redacted>`; overlapping ranges become one mask.
fn redact(normalized: &str, hidden: Vec<std::ops::Range<usize>>) -> String {
    const MASK: &str = "<redacted>";
    let mut out = String::with_capacity(normalized.len());
    let mut at = 0;
    for range in hidden {
        if range.start < at {
            at = at.max(range.end);
            continue;
        }
        out.push_str(&normalized[at..range.start]);
        out.push_str(MASK);
        at = range.end;
    }
    out.push_str(&normalized[at..]);
    out
}

/// Normalised text → tokens with typo-corrected lowercase forms.
fn prepare(normalized: &str) -> Vec<Token> {
    let mut tokens = tokenize::tokenize(normalized);
    // Canonical flags read as their word: `--canary 10` is "canary 10".
    for token in &mut tokens {
        if token.kind == Kind::Word && token.norm.len() > 2 && token.norm.starts_with("--") {
            token.norm = token.norm.trim_start_matches('-').to_owned();
        }
    }
    // Key names after "key" keep their spelling; so does everything quoted.
    for index in 0..tokens.len() {
        let after_key = index > 0 && (tokens[index - 1].is("key") || tokens[index - 1].raw == "=");
        if tokens[index].kind == Kind::Word
            && !after_key
            && let Some(corrected) = lexicon::correct(&tokens[index].norm)
        {
            tokens[index].norm = corrected.to_owned();
        }
    }
    tokens
}

fn clarification(intent: Intent, entities: &Entities) -> Option<String> {
    let services = lexicon::SERVICES.join(", ");
    match intent {
        Intent::Unknown => {
            Some("I did not understand that; try `help` for what I can do".to_owned())
        }
        Intent::Deploy | Intent::Promote | Intent::Abort | Intent::Rollback | Intent::Scale
            if entities.service.is_none() =>
        {
            Some(format!("which service? ({services})"))
        }
        Intent::Deploy if entities.version.is_none() => {
            Some("which version? (a release such as 1.4.2, or `latest`)".to_owned())
        }
        Intent::Scale if entities.replicas.is_none() && entities.replicas_delta.is_none() => {
            Some("how many replicas?".to_owned())
        }
        Intent::Encrypt | Intent::Decrypt if entities.key.is_none() => {
            Some("with which key?".to_owned())
        }
        Intent::Encrypt | Intent::Decrypt if entities.payload.is_none() => {
            Some(format!("what should I {intent}?"))
        }
        _ => None,
    }
}

/// The command line an interpretation maps to, with payloads redacted.
fn canonical(intent: Intent, entities: &Entities) -> String {
    let mut parts: Vec<String> = vec![intent.as_str().to_owned()];
    if let Some(service) = &entities.service {
        parts.push(service.clone());
    }
    if let Some(version) = &entities.version {
        parts.push(version.clone());
    }
    let mut flag = |name: &str, value: Option<String>| {
        if let Some(value) = value {
            parts.push(format!("--{name} {value}"));
        }
    };
    flag("env", entities.environment.clone());
    flag(
        "canary",
        entities.strategy.as_ref().map(|_| {
            entities
                .percent
                .map_or_else(|| "on".to_owned(), |p| p.to_string())
        }),
    );
    if entities.strategy.is_none() {
        flag("percent", entities.percent.map(|p| p.to_string()));
    }
    flag("replicas", entities.replicas.map(|r| r.to_string()));
    flag("delta", entities.replicas_delta.map(|d| format!("{d:+}")));
    flag("metric", entities.metric.clone());
    flag("percentile", entities.percentile.map(|p| p.to_string()));
    flag("since", entities.duration_s.map(|s| format!("{s}s")));
    flag("level", entities.log_level.clone());
    flag("lines", entities.lines.map(|l| l.to_string()));
    flag("grep", entities.query.as_ref().map(|q| format!("{q:?}")));
    flag("key", entities.key.clone());
    flag(
        "payload",
        entities.payload.as_ref().map(|_| "<redacted>".to_owned()),
    );
    flag("topic", entities.topic.clone());
    if entities.dry_run == Some(true) {
        parts.push("--dry-run".to_owned());
    }
    parts.join(" ")
}

/// Our own labelled examples (beyond the shared development set).
///
/// # Panics
/// Never: a test parses the built-in set.
pub fn own_examples() -> Vec<Example> {
    parse_examples(TRAINING_SETS[1]).expect("the built-in examples parse")
}

/// The JSON object of the `interpret --jsonl` contract: `text`, `intent`, `entities`,
/// `confidence`, `needs_confirmation`; with `explain`, also `mutates`, `dangerous`,
/// `canonical`, `clarification` and `explanation`.
pub fn to_json(interpretation: &Interpretation, explain: bool) -> serde_json::Value {
    let mut object = serde_json::json!({
        "text": interpretation.text,
        "intent": interpretation.intent,
        "entities": interpretation.entities,
        "confidence": interpretation.confidence,
        "needs_confirmation": interpretation.needs_confirmation,
    });
    if explain && let Some(map) = object.as_object_mut() {
        map.insert("mutates".into(), interpretation.mutates.into());
        map.insert("dangerous".into(), interpretation.dangerous.into());
        map.insert("canonical".into(), interpretation.canonical.clone().into());
        map.insert(
            "clarification".into(),
            interpretation.clarification.clone().into(),
        );
        map.insert(
            "explanation".into(),
            interpretation.explanation.clone().into(),
        );
    }
    object
}

#[cfg(test)]
mod tests;
