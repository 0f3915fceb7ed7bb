//! Evaluation against labelled examples: intent accuracy and macro-F1, `unknown`
//! precision and recall, per-entity exact match and the safety count, plainly and
//! cross-validated (k folds; the model never scores a line it trained on).

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

use super::{Example, Intent, Interpretation, Interpreter, Limits};

/// The scores of one evaluation.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Lines scored.
    pub lines: usize,
    /// Share of lines whose intent is right.
    pub intent_accuracy: f64,
    /// Mean F1 over the intents present.
    pub macro_f1: f64,
    /// Of the lines called `unknown`, the share that are.
    pub unknown_precision: f64,
    /// Of the `unknown` lines, the share called so.
    pub unknown_recall: f64,
    /// Share of (line, key) pairs, over keys in the label or the prediction, that match.
    pub entity_exact_match: f64,
    /// The same per key: (matches, pairs).
    pub per_entity: BTreeMap<String, (usize, usize)>,
    /// Mutating actions for `unknown` lines or negations, without confirmation, or
    /// dangerous ones without typed confirmation. Must be 0.
    pub safety_count: usize,
    /// The lines that went wrong, for error analysis.
    pub errors: Vec<String>,
}

/// Scores `interpreter` on `examples`.
pub fn evaluate(interpreter: &Interpreter, examples: &[Example]) -> Report {
    let predictions: Vec<Interpretation> = examples
        .iter()
        .map(|example| {
            interpreter
                .interpret(&example.text)
                .expect("examples are short")
        })
        .collect();
    score(examples, &predictions)
}

/// Scores `examples` with `k`-fold cross-validation: each fold is interpreted by a model
/// trained on the other folds plus `extra` (our own examples).
pub fn cross_validate(examples: &[Example], extra: &[Example], k: usize) -> Report {
    let mut predictions: Vec<Option<Interpretation>> = vec![None; examples.len()];
    for fold in 0..k {
        let training: Vec<Example> = examples
            .iter()
            .enumerate()
            .filter(|(index, _)| index % k != fold)
            .map(|(_, example)| example.clone())
            .chain(extra.iter().cloned())
            .collect();
        let interpreter = Interpreter::train(&training, Limits::default());
        for (index, example) in examples
            .iter()
            .enumerate()
            .filter(|(index, _)| index % k == fold)
        {
            predictions[index] = Some(
                interpreter
                    .interpret(&example.text)
                    .expect("examples are short"),
            );
        }
    }
    let predictions: Vec<Interpretation> = predictions
        .into_iter()
        .map(|p| p.expect("every line is in a fold"))
        .collect();
    score(examples, &predictions)
}

fn score(examples: &[Example], predictions: &[Interpretation]) -> Report {
    let mut report = Report {
        lines: examples.len(),
        ..Report::default()
    };
    let mut correct = 0;
    let mut per_intent: BTreeMap<&str, (usize, usize, usize)> = BTreeMap::new(); // tp, fp, fn
    let (mut entity_matches, mut entity_pairs) = (0, 0);
    for (example, prediction) in examples.iter().zip(predictions) {
        let gold = example.intent.as_str();
        let predicted = prediction.intent.as_str();
        if gold == predicted {
            correct += 1;
            per_intent.entry(gold).or_default().0 += 1;
        } else {
            per_intent.entry(predicted).or_default().1 += 1;
            per_intent.entry(gold).or_default().2 += 1;
            report.errors.push(format!(
                "intent {predicted} (want {gold}): {} [{}]",
                example.text,
                prediction.explanation.join("; ")
            ));
        }
        let predicted_entities = match serde_json::to_value(&prediction.entities) {
            Ok(Value::Object(map)) => map,
            _ => serde_json::Map::new(),
        };
        let mut keys: Vec<&String> = example
            .entities
            .keys()
            .chain(predicted_entities.keys())
            .collect();
        keys.sort();
        keys.dedup();
        for key in keys {
            let want = example.entities.get(key);
            let got = predicted_entities.get(key);
            let equivalent_all = key == "service"
                && matches!(gold, "health" | "status")
                && [want, got]
                    .iter()
                    .all(|value| value.is_none_or(|value| value == "all"));
            let matched = want == got || equivalent_all;
            let entry = report.per_entity.entry(key.clone()).or_default();
            entry.1 += 1;
            entity_pairs += 1;
            if matched {
                entry.0 += 1;
                entity_matches += 1;
            } else if gold == predicted {
                report
                    .errors
                    .push(format!("{key} {got:?} (want {want:?}): {}", example.text));
            }
        }
        let unsafe_action =
            prediction.mutates && (gold == "unknown" || !prediction.needs_confirmation);
        let dangerous_unflagged =
            prediction.mutates && is_dangerous_label(example) && !prediction.dangerous;
        if unsafe_action || dangerous_unflagged {
            report.safety_count += 1;
            report.errors.push(format!("SAFETY: {}", example.text));
        }
    }
    report.intent_accuracy = ratio(correct, examples.len());
    let f1s: Vec<f64> = per_intent
        .values()
        .map(|&(tp, fp, fn_)| {
            let precision = ratio(tp, tp + fp);
            let recall = ratio(tp, tp + fn_);
            if precision + recall == 0.0 {
                0.0
            } else {
                2.0 * precision * recall / (precision + recall)
            }
        })
        .collect();
    report.macro_f1 = f1s.iter().sum::<f64>() / f1s.len().max(1) as f64;
    let unknown = per_intent
        .get(Intent::Unknown.as_str())
        .copied()
        .unwrap_or_default();
    report.unknown_precision = ratio(unknown.0, unknown.0 + unknown.1);
    report.unknown_recall = ratio(unknown.0, unknown.0 + unknown.2);
    report.entity_exact_match = ratio(entity_matches, entity_pairs);
    report
}

/// Whether the label describes a dangerous command (the README's rules).
fn is_dangerous_label(example: &Example) -> bool {
    let entity = |key: &str| example.entities.get(key);
    entity("service").is_some_and(|value| value == "all")
        && matches!(example.intent.as_str(), "deploy" | "rollback" | "scale")
        || entity("environment").is_some_and(|value| value == "all") && example.intent == "deploy"
        || entity("replicas").is_some_and(|value| value.as_i64().is_some_and(|n| n == 0 || n > 50))
        || (example.intent == "deploy"
            && entity("environment").is_some_and(|value| value == "production")
            && entity("percent").is_some_and(|value| value == 100))
}

fn ratio(numerator: usize, denominator: usize) -> f64 {
    if denominator == 0 {
        1.0
    } else {
        numerator as f64 / denominator as f64
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "lines                 {}", self.lines)?;
        writeln!(
            f,
            "intent accuracy       {:.1}%",
            100.0 * self.intent_accuracy
        )?;
        writeln!(f, "macro-F1              {:.3}", self.macro_f1)?;
        writeln!(
            f,
            "unknown precision     {:.1}%",
            100.0 * self.unknown_precision
        )?;
        writeln!(
            f,
            "unknown recall        {:.1}%",
            100.0 * self.unknown_recall
        )?;
        writeln!(
            f,
            "entity exact match    {:.1}%",
            100.0 * self.entity_exact_match
        )?;
        for (key, (matches, pairs)) in &self.per_entity {
            writeln!(f, "  {key:<18}  {matches}/{pairs}")?;
        }
        write!(f, "safety count          {}", self.safety_count)
    }
}
