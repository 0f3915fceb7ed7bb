//! Tab completion of commands, services, environments, flags and versions.

use std::sync::PoisonError;

use reedline::{Completer, Span, Suggestion};

use super::session::SeenVersions;
use crate::nl::lexicon;

/// Verbs that start a command, one per intent.
const VERBS: &[&str] = &[
    "analyze", "abort", "build", "decrypt", "deploy", "encrypt", "health", "help", "logs",
    "metrics", "promote", "rollback", "scale", "status",
];
/// The flags of canonical commands.
const FLAGS: &[&str] = &[
    "--canary",
    "--delta",
    "--dry-run",
    "--env",
    "--grep",
    "--key",
    "--level",
    "--lines",
    "--metric",
    "--percent",
    "--percentile",
    "--replicas",
    "--since",
];
/// Verbs after whose service a version is expected.
const VERSIONED: &[&str] = &["deploy", "rollback", "build"];

/// Completes the word under the cursor from what fits where it stands.
#[derive(Debug)]
pub(super) struct OmniCompleter {
    versions: SeenVersions,
}

impl OmniCompleter {
    /// A completer that also offers the versions in `versions`.
    pub(super) fn new(versions: SeenVersions) -> Self {
        Self { versions }
    }

    /// The candidates for the word before `pos`, best first.
    fn candidates(&self, before: &[&str], prefix: &str) -> Vec<String> {
        let environments = || {
            lexicon::ENVIRONMENTS
                .iter()
                .filter(|(word, canonical)| word == canonical)
                .map(|(word, _)| (*word).to_owned())
                .collect::<Vec<_>>()
        };
        let services = || lexicon::SERVICES.map(str::to_owned).to_vec();
        let versions = || {
            let seen = self.versions.lock().unwrap_or_else(PoisonError::into_inner);
            let mut versions: Vec<String> = seen.iter().rev().cloned().collect();
            versions.push("latest".to_owned());
            versions
        };
        let previous = before.last().map(|word| word.to_lowercase());
        let words: Vec<String> = if prefix.starts_with('-') {
            FLAGS.iter().map(|flag| (*flag).to_owned()).collect()
        } else if before.is_empty() {
            VERBS.iter().map(|verb| (*verb).to_owned()).collect()
        } else if matches!(previous.as_deref(), Some("--env" | "to" | "in" | "on")) {
            environments()
        } else if previous
            .as_deref()
            .is_some_and(|word| lexicon::SERVICES.contains(&word))
            && VERSIONED.contains(&before[0].to_lowercase().as_str())
        {
            versions()
        } else {
            let mut all = services();
            all.extend(environments());
            all.extend(versions());
            all
        };
        let prefix = prefix.to_lowercase();
        words
            .into_iter()
            .filter(|word| word.starts_with(&prefix) && *word != prefix)
            .collect()
    }
}

impl Completer for OmniCompleter {
    fn complete(&mut self, line: &str, pos: usize) -> Vec<Suggestion> {
        let pos = pos.min(line.len());
        let Some(head) = line.get(..pos) else {
            return Vec::new();
        };
        let start = head.rfind(char::is_whitespace).map_or(0, |index| index + 1);
        let before: Vec<&str> = head[..start].split_whitespace().collect();
        self.candidates(&before, &head[start..])
            .into_iter()
            .map(|value| Suggestion {
                value,
                span: Span::new(start, pos),
                append_whitespace: true,
                ..Suggestion::default()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(line: &str) -> Vec<String> {
        let versions = SeenVersions::default();
        versions.lock().unwrap().insert("1.4.2".to_owned());
        OmniCompleter::new(versions)
            .complete(line, line.len())
            .into_iter()
            .map(|suggestion| suggestion.value)
            .collect()
    }

    #[test]
    fn completes_by_position() {
        assert_eq!(complete("dep"), ["deploy"]);
        assert_eq!(complete("deploy co"), ["core-engine"]);
        assert_eq!(complete("deploy core-engine "), ["1.4.2", "latest"]);
        assert_eq!(complete("deploy core-engine 1.4.2 --env p"), ["production"]);
        assert_eq!(complete("scale proxy-gateway --rep"), ["--replicas"]);
        assert_eq!(complete("logs m"), ["mesh-controller"]);
        assert_eq!(complete("zzz"), Vec::<String>::new());
    }

    #[test]
    fn the_span_covers_only_the_word_under_the_cursor() {
        let suggestions = OmniCompleter::new(SeenVersions::default()).complete("status pro x", 10);
        assert_eq!(suggestions[0].value, "proxy-gateway");
        assert_eq!(suggestions[0].span, Span::new(7, 10));
        // A cursor beyond the line or inside a character is harmless.
        let mut completer = OmniCompleter::new(SeenVersions::default());
        assert!(completer.complete("dé", 2).is_empty());
        assert_eq!(completer.complete("he", 99)[0].value, "health");
    }
}
