//! Intent classification: explicit rules over concepts, combined with a multinomial
//! naive Bayes model over word and character n-grams.
//!
//! The rules decide the safety cases outright (injection, raw commands, negation, bare
//! confirmations, help questions) and score the action intents from the concepts the
//! words signal. The model, trained at start-up from labelled examples, turns those
//! scores into a distribution and resolves what the rules leave open. The product of the
//! two is the confidence; below [`UNKNOWN_THRESHOLD`] the answer is `unknown`.

use std::collections::HashMap;

use super::Intent;
use super::lexicon::{self, Concept};
use super::numbers::{parse_digits, parse_number_words};
use super::tokenize::{Kind, Token};

/// Below this confidence an utterance is `unknown`.
pub(crate) const UNKNOWN_THRESHOLD: f64 = 0.45;
/// Temperature applied to the naive Bayes log-posteriors.
const NB_TEMPERATURE: f64 = 3.0;
/// The score every utterance gives `unknown` before any rule.
const UNKNOWN_PRIOR: f64 = 2.0;

/// The outcome of classification.
#[derive(Debug, Clone)]
pub(crate) struct Classification {
    pub(crate) intent: Intent,
    pub(crate) confidence: f64,
    /// Why, in words, for the explanation.
    pub(crate) reason: String,
}

/// Tools whose name is no English word: a line that mentions one is a shell command.
const SHELL_TOOLS: &[&str] = &[
    "kubectl",
    "git",
    "ssh",
    "docker",
    "helm",
    "rm",
    "sudo",
    "curl",
    "wget",
    "systemctl",
    "chmod",
    "chown",
    "scp",
    "terraform",
    "apt",
    "apt-get",
    "bash",
    "npm",
    "cargo",
    "kubectx",
];
/// Commands that are also English words: raw only at the start of a line or before a flag.
const SHELL_WORDS: &[&str] = &[
    "ls", "cat", "mv", "cp", "echo", "sh", "python", "make", "kill",
];
/// Utterances that are only a reaction, outside any prompt.
const BARE_REPLIES: &[&str] = &[
    "yes",
    "y",
    "yep",
    "yeah",
    "no",
    "n",
    "nope",
    "ok",
    "okay",
    "sure",
    "thanks",
    "thank",
    "thx",
    "ty",
    "lol",
    "cool",
    "nice",
    "confirm",
    "confirmed",
    "hi",
    "hello",
    "hey",
    "k",
    "great",
    "awesome",
    "you",
];

/// A multinomial naive Bayes model over n-gram features.
#[derive(Debug, Clone)]
pub(crate) struct Model {
    intents: Vec<Intent>,
    log_prior: Vec<f64>,
    /// Feature → per-intent log-likelihood.
    log_likelihood: HashMap<String, Vec<f64>>,
    /// Per-intent log-likelihood of a feature never seen in training.
    log_unseen: Vec<f64>,
}

impl Model {
    /// Trains on `(tokens, intent)` examples with Laplace smoothing.
    pub(crate) fn train(examples: &[(Vec<Token>, Intent)]) -> Self {
        let intents = Intent::ALL.to_vec();
        let mut doc_counts = vec![0_f64; intents.len()];
        let mut feature_counts: HashMap<String, Vec<f64>> = HashMap::new();
        let mut totals = vec![0_f64; intents.len()];
        for (tokens, intent) in examples {
            let class = intent.index();
            doc_counts[class] += 1.0;
            for feature in features(tokens) {
                feature_counts
                    .entry(feature)
                    .or_insert_with(|| vec![0.0; intents.len()])[class] += 1.0;
                totals[class] += 1.0;
            }
        }
        let vocabulary = feature_counts.len() as f64;
        let documents: f64 = doc_counts.iter().sum::<f64>().max(1.0);
        let log_prior = doc_counts
            .iter()
            .map(|count| ((count + 1.0) / (documents + intents.len() as f64)).ln())
            .collect();
        let log_unseen: Vec<f64> = totals
            .iter()
            .map(|total| (1.0 / (total + vocabulary + 1.0)).ln())
            .collect();
        let log_likelihood = feature_counts
            .into_iter()
            .map(|(feature, counts)| {
                let logs = counts
                    .iter()
                    .zip(&totals)
                    .map(|(count, total)| ((count + 1.0) / (total + vocabulary + 1.0)).ln())
                    .collect();
                (feature, logs)
            })
            .collect();
        Self {
            intents,
            log_prior,
            log_likelihood,
            log_unseen,
        }
    }

    /// The posterior distribution over intents, and how many features were known.
    pub(crate) fn predict(&self, tokens: &[Token]) -> (Vec<f64>, usize) {
        let mut scores = self.log_prior.clone();
        let mut known = 0;
        for feature in features(tokens) {
            match self.log_likelihood.get(&feature) {
                Some(logs) => {
                    known += 1;
                    for (score, log) in scores.iter_mut().zip(logs) {
                        *score += log;
                    }
                }
                None => {
                    for (score, log) in scores.iter_mut().zip(&self.log_unseen) {
                        *score += log;
                    }
                }
            }
        }
        // Naive Bayes is overconfident (its features are not independent): temper it.
        (softmax(&scores, NB_TEMPERATURE), known)
    }

    pub(crate) fn intents(&self) -> &[Intent] {
        &self.intents
    }
}

/// Word unigrams and bigrams (services, environments, numbers and versions replaced by
/// placeholders so the model learns the shape, not the target) and character trigrams.
fn features(tokens: &[Token]) -> Vec<String> {
    let words: Vec<String> = tokens
        .iter()
        .filter(|token| token.kind != Kind::Punct)
        .map(|token| {
            if token.kind == Kind::Quoted {
                return "<payload>".to_owned();
            }
            let norm = token.norm.as_str();
            if lexicon::SERVICE_ALIASES
                .iter()
                .any(|(alias, _)| alias.len() == 1 && alias[0] == norm)
            {
                "<svc>".to_owned()
            } else if lexicon::ENVIRONMENTS.iter().any(|(word, _)| *word == norm) {
                "<env>".to_owned()
            } else if parse_digits(norm).is_some() || parse_number_words(&[norm]).is_some() {
                "<num>".to_owned()
            } else if norm
                .chars()
                .next()
                .is_some_and(|ch| ch.is_ascii_digit() || ch == 'v')
                && norm.contains('.')
            {
                "<ver>".to_owned()
            } else {
                norm.to_owned()
            }
        })
        .collect();
    let mut out = Vec::with_capacity(words.len() * 6);
    for (index, word) in words.iter().enumerate() {
        out.push(format!("w:{word}"));
        let previous = if index == 0 {
            "^"
        } else {
            words[index - 1].as_str()
        };
        out.push(format!("b:{previous}_{word}"));
        if !word.starts_with('<') {
            let padded: Vec<char> = format!("#{word}#").chars().collect();
            for window in padded.windows(3) {
                out.push(format!("c:{}", window.iter().collect::<String>()));
            }
        }
    }
    out
}

fn softmax(scores: &[f64], temperature: f64) -> Vec<f64> {
    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = scores
        .iter()
        .map(|score| ((score - max) / temperature).exp())
        .collect();
    let sum: f64 = exps.iter().sum();
    exps.into_iter().map(|value| value / sum).collect()
}

/// Words that open a question about the past ("was it rolled back?").
const PAST_QUESTION: &[&str] = &["was", "were", "did", "has", "have", "had"];

/// Classifies tokens of the normalised `text`.
pub(crate) fn classify(text: &str, tokens: &[Token], model: &Model) -> Classification {
    if let Some(reason) = refusal(text, tokens) {
        return Classification {
            intent: Intent::Unknown,
            confidence: 1.0,
            reason,
        };
    }
    if let Some(classification) = help(tokens) {
        return classification;
    }

    let scores = rule_scores(tokens);
    let rule_fired = scores.iter().any(|score| *score > 0.0);
    let mut rule_scores = scores;
    rule_scores[Intent::Unknown.index()] += UNKNOWN_PRIOR;
    let rules = softmax(&rule_scores, 1.5);
    let (bayes, known) = model.predict(tokens);
    let mut reason = "recognised from its words";
    let combined: Vec<f64> = if rule_fired {
        // The rules lead; the model sharpens or softens them.
        normalise(
            rules
                .iter()
                .zip(&bayes)
                .map(|(rule, bayes)| rule * bayes.powf(0.5))
                .collect(),
        )
    } else if known >= 3
        && names_a_service(tokens)
        && bayes.iter().copied().fold(0.0, f64::max) >= 0.9
    {
        // No rule recognised anything, but the utterance is about one of our services
        // and the model is sure.
        reason = "by similarity to known commands";
        bayes
    } else {
        reason = "no command words recognised";
        let mut unknown = vec![0.0; bayes.len()];
        unknown[Intent::Unknown.index()] = 1.0;
        unknown
    };
    let (best, confidence) = combined
        .iter()
        .copied()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or((Intent::Unknown.index(), 1.0));
    let intent = model.intents()[best];
    if intent != Intent::Unknown && confidence < UNKNOWN_THRESHOLD {
        return Classification {
            intent: Intent::Unknown,
            confidence: 1.0 - confidence,
            reason: format!("not sure enough ({intent} at {confidence:.2})"),
        };
    }
    // "was the engine rolled back?", "did the gateway deploy?": a question about what
    // happened asks for the state; it never changes it.
    let first = tokens.iter().find(|token| token.is_word());
    if intent.mutates() && first.is_some_and(|token| PAST_QUESTION.contains(&token.norm.as_str())) {
        return Classification {
            intent: Intent::Status,
            confidence,
            reason: format!("a question about what happened, not a {intent}"),
        };
    }
    Classification {
        intent,
        confidence,
        reason: reason.to_owned(),
    }
}

fn names_a_service(tokens: &[Token]) -> bool {
    tokens.iter().any(|token| {
        lexicon::SERVICE_ALIASES
            .iter()
            .any(|(alias, _)| alias.len() == 1 && alias[0] == token.norm)
    })
}

fn normalise(values: Vec<f64>) -> Vec<f64> {
    let sum: f64 = values.iter().sum();
    if sum > 0.0 {
        values.into_iter().map(|value| value / sum).collect()
    } else {
        values
    }
}

/// The safety rules: why this utterance must be `unknown`, if it must.
fn refusal(text: &str, tokens: &[Token]) -> Option<String> {
    // Shell metacharacters outside quotes: an injection attempt or a pasted command.
    let outside_quotes = tokens.iter().filter(|token| token.kind != Kind::Quoted);
    for token in outside_quotes {
        if matches!(token.raw.as_str(), ";" | "|" | "&" | ">" | "<" | "{" | "}")
            || token.raw.contains('$')
        {
            return Some(format!("shell metacharacter {:?}", token.raw));
        }
    }
    let words: Vec<&Token> = tokens.iter().filter(|token| token.is_word()).collect();
    let first = words.first().map(|token| token.norm.as_str()).unwrap_or("");
    if SHELL_WORDS.contains(&first) && first != "kill" {
        return Some(format!("raw `{first}` command"));
    }
    for (index, word) in words.iter().enumerate() {
        let flag_follows = words
            .get(index + 1)
            .is_some_and(|next| next.raw.starts_with('-'));
        if SHELL_TOOLS.contains(&word.norm.as_str())
            || (SHELL_WORDS.contains(&word.norm.as_str()) && flag_follows)
        {
            return Some(format!("raw `{}` command", word.norm));
        }
    }
    // Negations: "don't roll back", "do not deploy", "never mind", "nevermind".
    for (index, token) in words.iter().enumerate() {
        let next = words
            .get(index + 1)
            .map(|token| token.norm.as_str())
            .unwrap_or("");
        let negated = lexicon::concept(&token.norm) == Some(Concept::Negation)
            || (token.norm == "do" && next == "not")
            || (token.norm == "never" && next == "mind")
            || (token.norm == "hold" && next == "off")
            || (token.norm == "forget" && matches!(next, "it" | "that"));
        if negated {
            return Some(format!("negation \"{}\"", token.raw));
        }
    }
    if !words.is_empty()
        && words.len() <= 2
        && words
            .iter()
            .all(|token| BARE_REPLIES.contains(&token.norm.as_str()))
    {
        return Some("a bare reply outside a prompt".to_owned());
    }
    if words.is_empty() && !text.contains('?') {
        return Some("no words".to_owned());
    }
    None
}

/// Help questions: "help", "?", "commands", "how do I …", "what does X do", "explain X".
fn help(tokens: &[Token]) -> Option<Classification> {
    let words: Vec<&str> = tokens
        .iter()
        .filter(|token| token.is_word())
        .map(|token| token.norm.as_str())
        .collect();
    let classification = |reason: &str| Classification {
        intent: Intent::Help,
        confidence: 0.95,
        reason: reason.to_owned(),
    };
    if words.is_empty() {
        return tokens
            .iter()
            .any(|token| token.raw == "?")
            .then(|| classification("a lone question mark"));
    }
    let joined = words.join(" ");
    let asks_how = [
        "how do i",
        "how can i",
        "how to",
        "how would i",
        "how should i",
        "what can you do",
        "what do you do",
        "what does",
        "what is a",
        "show me how",
        "teach me",
    ]
    .iter()
    .any(|phrase| joined.starts_with(phrase) || joined.contains(&format!(" {phrase}")));
    let has_help_word = words
        .iter()
        .any(|word| lexicon::concept(word) == Some(Concept::Help));
    let has_action = words.iter().any(|word| {
        matches!(
            lexicon::concept(word),
            Some(
                Concept::Deploy
                    | Concept::Promote
                    | Concept::Abort
                    | Concept::Rollback
                    | Concept::Scale
                    | Concept::Build
                    | Concept::Encrypt
                    | Concept::Decrypt
            )
        )
    });
    if asks_how || (has_help_word && (!has_action || words.contains(&"explain"))) {
        return Some(classification("a question about how to use the terminal"));
    }
    None
}

/// Scores each intent from the concepts its words signal.
fn rule_scores(tokens: &[Token]) -> Vec<f64> {
    let mut scores = vec![0.0; Intent::ALL.len()];
    let words: Vec<&Token> = tokens.iter().filter(|token| token.is_word()).collect();
    let norms: Vec<&str> = words.iter().map(|token| token.norm.as_str()).collect();
    let concepts: Vec<Option<Concept>> = norms.iter().map(|word| lexicon::concept(word)).collect();
    let has = |concept: Concept| concepts.contains(&Some(concept));
    let has_number = words.iter().any(|token| {
        parse_digits(&token.norm).is_some() || parse_number_words(&[token.norm.as_str()]).is_some()
    });
    let has_version = norms.iter().any(|word| {
        let bare = word.strip_prefix('v').unwrap_or(word);
        bare.contains('.') && bare.chars().next().is_some_and(|ch| ch.is_ascii_digit())
    });
    let has_environment = norms
        .iter()
        .any(|word| lexicon::ENVIRONMENTS.iter().any(|(env, _)| env == word));
    let has_metric_word = norms
        .iter()
        .any(|word| lexicon::METRICS.iter().any(|(metric, _)| metric == word));
    let adjacent = |a: &str, b: &str| norms.windows(2).any(|pair| pair[0] == a && pair[1] == b);
    let near = |a: Concept, b: Concept, span: usize| {
        concepts.iter().enumerate().any(|(i, concept)| {
            *concept == Some(a)
                && concepts[i + 1..(i + 1 + span).min(concepts.len())].contains(&Some(b))
        })
    };
    let mut add = |intent: Intent, score: f64| scores[intent.index()] += score;

    if has(Concept::Encrypt) {
        add(Intent::Encrypt, 10.0);
    }
    if has(Concept::Decrypt) {
        add(Intent::Decrypt, 10.0);
    }
    if has(Concept::Analyze) || adjacent("root", "cause") || (adjacent("what's", "wrong")) {
        add(Intent::Analyze, 6.0);
    }
    if has(Concept::Logs) {
        add(Intent::Logs, 5.0);
    }
    let roll_back = near(Concept::Roll, Concept::Back, 4);
    if has(Concept::Rollback) || roll_back {
        add(Intent::Rollback, 6.0);
    } else if has(Concept::Back)
        && (norms.contains(&"go")
            || norms.contains(&"take")
            || norms.contains(&"bring")
            || norms.contains(&"move"))
    {
        add(Intent::Rollback, 4.5);
    }
    if has(Concept::Abort) {
        add(Intent::Abort, 5.0);
    }
    if has(Concept::Promote) {
        add(Intent::Promote, 4.0);
        if has(Concept::Canary) || adjacent("next", "step") {
            add(Intent::Promote, 2.0);
        }
    }
    if has(Concept::Deploy) || adjacent("roll", "out") {
        add(Intent::Deploy, 4.0);
    } else if has_version && has_environment && !has(Concept::Rollback) {
        add(Intent::Deploy, 3.0);
    }
    if has(Concept::Scale) {
        add(Intent::Scale, 5.0);
    }
    let how_many = adjacent("how", "many");
    if has(Concept::Replicas) && has_number && !how_many {
        add(Intent::Scale, 4.0);
    }
    if (norms.contains(&"add") || norms.contains(&"remove")) && norms.contains(&"more") {
        add(Intent::Scale, 3.0);
    }
    if has(Concept::Metrics) {
        add(Intent::Metrics, 4.0);
    }
    if has_metric_word {
        add(Intent::Metrics, 3.0);
        // "how much memory", "what's the latency", "show cpu".
        if has(Concept::Question) || has(Concept::Show) {
            add(Intent::Metrics, 2.0);
        }
    }
    if has(Concept::Build) {
        add(Intent::Build, 5.0);
    }
    if has(Concept::Status) {
        add(Intent::Status, 3.0);
    }
    if has(Concept::Deployed) {
        add(Intent::Status, 3.0);
    }
    if how_many {
        add(Intent::Status, 4.0);
    }
    if (has(Concept::Rollout) || has(Concept::Canary))
        && (has(Concept::Question) || has(Concept::Show) || norms.contains(&"still"))
    {
        add(Intent::Status, 2.0);
    }
    // "down by one", "up to ten": a change of size, not a health question.
    let resizes = norms.windows(3).any(|w| {
        matches!(w[0], "up" | "down")
            && matches!(w[1], "by" | "to")
            && (parse_digits(w[2]).is_some() || parse_number_words(&[w[2]]).is_some())
    });
    if resizes {
        add(Intent::Scale, 5.0);
    }
    if has(Concept::Health) && !has(Concept::Replicas) && !has(Concept::Scale) && !resizes {
        add(Intent::Health, 3.0);
    }
    if has(Concept::Unsupported) {
        add(Intent::Unknown, 5.0);
    }
    // The first action word usually carries the order ("push the new build" deploys).
    let first_action = concepts.iter().flatten().find_map(|concept| {
        Some(match concept {
            Concept::Deploy => Intent::Deploy,
            Concept::Promote => Intent::Promote,
            Concept::Abort => Intent::Abort,
            Concept::Rollback => Intent::Rollback,
            Concept::Roll if roll_back => Intent::Rollback,
            Concept::Scale => Intent::Scale,
            Concept::Build => Intent::Build,
            Concept::Logs => Intent::Logs,
            Concept::Analyze => Intent::Analyze,
            _ => return None,
        })
    });
    if let Some(intent) = first_action {
        add(intent, 2.0);
    }
    scores
}
