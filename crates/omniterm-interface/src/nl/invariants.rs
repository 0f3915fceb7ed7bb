//! What must hold for every input, whatever it is: the property tests, the fuzz target
//! (`fuzz/`) and the hostile-input tests all check an interpretation with [`check`].

use super::{InputError, Intent, Interpreter, to_json};

/// Payloads at least this long must never show up outside the `payload` entity (shorter
/// ones can coincide with vocabulary: a payload "key" is in `--key`).
const DISTINCTIVE: usize = 12;

/// Interprets `text` and checks every rule that must hold whatever the input was.
///
/// # Errors
/// A description of the first rule broken.
pub fn check(interpreter: &Interpreter, text: &str) -> Result<(), String> {
    let limit = interpreter.limits.max_input_chars;
    let length = text.chars().count();
    let interpretation = match interpreter.interpret(text) {
        Err(InputError::TooLong { length: told, .. }) if length > limit && told == length => {
            return Ok(());
        }
        Err(error) => return Err(format!("refused {length} characters: {error}")),
        Ok(_) if length > limit => return Err(format!("accepted {length} > {limit} characters")),
        Ok(interpretation) => interpretation,
    };
    let fail = |rule: &str| Err(format!("{rule}: {interpretation:?}"));
    if !(0.0..=1.0).contains(&interpretation.confidence) {
        return fail("confidence outside 0..=1");
    }
    if interpretation.mutates && !interpretation.needs_confirmation {
        return fail("a mutating command without confirmation");
    }
    if interpretation.mutates && !interpretation.intent.mutates() {
        return fail("a read-only intent that mutates");
    }
    if interpretation.entities.dry_run == Some(true) && interpretation.mutates {
        return fail("a dry run that mutates");
    }
    if interpretation.intent == Intent::Unknown
        && (interpretation.mutates || interpretation.clarification.is_none())
    {
        return fail("unknown without a suggestion, or mutating");
    }
    if interpretation.dangerous && !interpretation.needs_confirmation {
        return fail("dangerous without confirmation");
    }
    if interpretation.intent.mutates()
        && interpretation.entities.service.is_none()
        && interpretation.clarification.is_none()
        && !(interpretation.intent == Intent::Rollback || interpretation.intent == Intent::Build)
    {
        return fail("a mutating command on a guessed target");
    }
    if let Some(payload) = &interpretation.entities.payload
        && payload.chars().count() >= DISTINCTIVE
    {
        // The canonical command is built from the entities: it must read the same
        // whatever the payload is. (A substring test cannot tell a leak from a payload
        // that spells part of the command, such as `ypt --payload ` in `encrypt
        // --payload <redacted>`.)
        let mut other = interpretation.entities.clone();
        other.payload = Some("\u{1}".repeat(payload.chars().count() + 1));
        if super::canonical(interpretation.intent, &other) != interpretation.canonical {
            return fail("the canonical command depends on the payload");
        }
        // The mask itself may be part of a payload (`'--payload <redacted'`).
        let unmasked = |text: &str| text.replace("<redacted>", "\u{0}");
        // The other entities' values are explained in the open, and a payload may spell
        // one of them (`' production '` beside `prod`): those are not leaks.
        let mut explained = unmasked(&interpretation.explanation.join("\n"));
        let mut others = interpretation.entities.clone();
        others.payload = None;
        if let serde_json::Value::Object(values) = serde_json::json!(others) {
            for value in values.values() {
                let shown = value
                    .as_str()
                    .map_or_else(|| value.to_string(), str::to_owned);
                if !value.is_null() && !shown.is_empty() {
                    explained = explained.replace(&shown, "\u{0}");
                }
            }
        }
        if explained.contains(payload.as_str())
            || unmasked(&interpretation.redacted).contains(payload.as_str())
        {
            return fail("the payload leaked outside its entity");
        }
    }
    let json = to_json(&interpretation, true);
    if json["intent"] != interpretation.intent.as_str() {
        return fail("the JSON intent differs");
    }
    if serde_json::to_string(&json).is_err() {
        return fail("the JSON does not serialise");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::nl::Limits;

    fn interpreter() -> &'static Interpreter {
        static INTERPRETER: std::sync::OnceLock<Interpreter> = std::sync::OnceLock::new();
        INTERPRETER.get_or_init(|| Interpreter::new(Limits::default()))
    }

    /// Words the interpreter knows, mixed with hostile pieces, so generated lines reach
    /// deep into the pipeline rather than stopping at "unknown".
    fn piece() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec![
                "deploy",
                "the",
                "engine",
                "gateway",
                "1.4.2",
                "v2.0.0-rc.1",
                "to",
                "prod",
                "production",
                "staging",
                "canary",
                "10%",
                "ten",
                "percent",
                "a",
                "quarter",
                "scale",
                "replicas",
                "by",
                "two",
                "more",
                "roll",
                "back",
                "rollback",
                "all",
                "everything",
                "logs",
                "errors",
                "last",
                "15",
                "minutes",
                "encrypt",
                "decrypt",
                "with",
                "key",
                "payments",
                ":",
                "'",
                "\"",
                "dry",
                "run",
                "don't",
                "never",
                "mind",
                "help",
                "p99",
                "latency",
                "--canary",
                "--env",
                "--replicas",
                "-1",
                "999999999999999999999",
                "0",
                ";",
                "|",
                "$(",
                "`",
                "&&",
                "rm",
                "-rf",
                "\u{201c}",
                "\u{2019}",
                "\u{0}",
                "\u{202e}",
                "é",
                "🚀",
                "\t",
                "\n",
                "lines",
                "level",
            ])
            .prop_map(str::to_owned),
            "\\PC{0,12}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn every_arbitrary_string_keeps_the_rules(text in "\\PC{0,300}") {
            prop_assert_eq!(check(interpreter(), &text), Ok(()));
        }

        #[test]
        fn every_mix_of_known_and_hostile_words_keeps_the_rules(
            pieces in prop::collection::vec(piece(), 0..40)
        ) {
            let text = pieces.join(" ");
            prop_assert_eq!(check(interpreter(), &text), Ok(()));
        }
    }

    /// Inputs the fuzzer found breaking a rule, kept so they never break it again.
    #[test]
    fn inputs_found_by_the_fuzzer() {
        let found: &[&[u8]] = &[
            // The payload occurred twice; only its first occurrence was redacted.
            b"er\xd2\xffdry runploy gaewtcy 2.4\0\0\0\0o productiono[ncrypt this\0\0ctiono[ncrypt",
            // A payload that spells the mask of the canonical command is not a leak.
            b"decrypt ' --payload <redacted' wity y 100G liast 2\xff\xff0mpaent cosnn",
            // A payload that spells part of the canonical command (`encrypt --payload
            // <redacted>`) is not a leak either.
            b"iencrypsword-123\" usncrypt \"ypt --payload \0\" usves",
        ];
        for bytes in found {
            let text = String::from_utf8_lossy(bytes);
            assert_eq!(check(interpreter(), &text), Ok(()), "{text:?}");
        }
    }

    #[test]
    fn typos_inside_a_payload_are_not_explained() {
        let result = interpreter()
            .interpret("encrypt my secert pasword with key billing")
            .unwrap();
        assert_eq!(result.intent, Intent::Encrypt);
        let explained = result.explanation.join("\n");
        assert!(
            !explained.contains("secert") && !explained.contains("pasword"),
            "{explained}"
        );
        assert!(!result.redacted.contains("pasword"), "{}", result.redacted);
    }

    #[test]
    fn deep_quoting_huge_and_binary_inputs_keep_the_rules() {
        let interpreter = interpreter();
        let limit = Limits::default().max_input_chars;
        let cases = [
            "'".repeat(limit),
            "\"'".repeat(limit / 2),
            format!(
                "encrypt {}hunter2hunter2{} with key k",
                "'\"".repeat(500),
                "\"'".repeat(500)
            ),
            "deploy ".repeat(limit / 7),
            "9".repeat(limit),
            "1.".repeat(limit / 2),
            "x".repeat(limit + 1),
            "é".repeat(limit),
            "é".repeat(limit + 1),
            "\u{0}\u{1}\u{7f}".repeat(100),
            String::from_utf8_lossy(&(0..=255).collect::<Vec<u8>>()).into_owned(),
        ];
        for text in cases {
            assert_eq!(check(interpreter, &text), Ok(()), "{text:.80}");
        }
    }
}
