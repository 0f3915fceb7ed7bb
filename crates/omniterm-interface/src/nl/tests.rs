use super::*;

fn interpreter() -> Interpreter {
    Interpreter::new(Limits::default())
}

fn check(text: &str, intent: Intent, entities: serde_json::Value) {
    let result = interpreter().interpret(text).unwrap();
    assert_eq!(result.intent, intent, "{text}: {:?}", result.explanation);
    assert_eq!(
        serde_json::to_value(&result.entities).unwrap(),
        entities,
        "{text}: {:?}",
        result.explanation
    );
}

#[test]
fn built_in_training_sets_parse() {
    for set in TRAINING_SETS {
        assert!(!parse_examples(set).unwrap().is_empty());
    }
}

#[test]
fn deploy_with_every_entity() {
    check(
        "roll out mesh-controller 0.9.7 to prod, canary ten percent",
        Intent::Deploy,
        serde_json::json!({"service": "mesh-controller", "version": "0.9.7", "environment": "production", "strategy": "canary", "percent": 10}),
    );
}

#[test]
fn unseen_phrasings_of_known_concepts() {
    check(
        "could you ship v5.0.0 of the terminal to stage",
        Intent::Deploy,
        serde_json::json!({"service": "omniterm-interface", "version": "5.0.0", "environment": "staging"}),
    );
    check(
        "bring the gw down by two",
        Intent::Scale,
        serde_json::json!({"service": "proxy-gateway", "replicas_delta": -2}),
    );
    check(
        "tail controller logs, last 20 lines",
        Intent::Logs,
        serde_json::json!({"service": "mesh-controller", "lines": 20}),
    );
    check(
        "what if I rolled back the engine",
        Intent::Rollback,
        serde_json::json!({"service": "core-engine", "dry_run": true}),
    );
}

#[test]
fn questions_about_the_past_ask_for_status_and_change_nothing() {
    for text in [
        "was the engine rolled back?",
        "did the gateway deploy go out to production?",
        "has the controller been scaled",
    ] {
        let result = interpreter().interpret(text).unwrap();
        assert_eq!(
            result.intent,
            Intent::Status,
            "{text}: {:?}",
            result.explanation
        );
        assert!(!result.needs_confirmation && !result.mutates, "{text}");
    }
}

#[test]
fn negations_injections_and_raw_commands_are_unknown() {
    for text in [
        "don't deploy the engine",
        "do not scale gw",
        "never mind, skip it",
        "deploy engine 1.2.3 && reboot",
        "scale gw to 3 | tee x",
        "kubectl delete ns prod",
        "rm -rf /",
        "please rm -rf / now",
        "could you git push -f",
    ] {
        let result = interpreter().interpret(text).unwrap();
        assert_eq!(result.intent, Intent::Unknown, "{text}");
        assert!(!result.mutates, "{text}");
    }
}

#[test]
fn canonical_flags_are_not_mistaken_for_shell_flags() {
    let result = interpreter()
        .interpret("deploy core-engine 1.4.2 --canary 10 --env production")
        .unwrap();
    assert_eq!(result.intent, Intent::Deploy);
    assert_eq!(result.entities.environment.as_deref(), Some("production"));
    assert_eq!(result.entities.percent, Some(10));
}

#[test]
fn mutating_commands_need_confirmation_and_missing_targets_a_question() {
    let result = interpreter().interpret("promote the canary").unwrap();
    assert_eq!(result.intent, Intent::Promote);
    assert!(result.needs_confirmation);
    assert!(
        result
            .clarification
            .as_deref()
            .unwrap()
            .contains("which service")
    );
}

#[test]
fn dangerous_commands_are_flagged_and_dry_runs_do_not_mutate() {
    let result = interpreter()
        .interpret("deploy core-engine 1.4.2 straight to prod at 100%")
        .unwrap();
    assert!(result.dangerous && result.needs_confirmation);
    let result = interpreter().interpret("scale gw to 0").unwrap();
    assert!(result.dangerous);
    let result = interpreter()
        .interpret("dry run: deploy gateway 2.4.0 to production")
        .unwrap();
    assert_eq!(result.intent, Intent::Deploy);
    assert!(!result.mutates && !result.needs_confirmation);
}

#[test]
fn payloads_are_verbatim_and_never_explained() {
    let result = interpreter()
        .interpret("encrypt 'Top Secret' with key payments")
        .unwrap();
    assert_eq!(result.entities.payload.as_deref(), Some("Top Secret"));
    assert!(!result.explanation.join(" ").contains("Top Secret"));
    assert!(!result.canonical.contains("Top Secret"));
}

#[test]
fn the_redacted_text_hides_every_payload_form() {
    let interpreter = interpreter();
    for (text, secret, expected) in [
        (
            "encrypt 'Top Secret' with key payments",
            "Top Secret",
            "encrypt '<redacted>' with key payments",
        ),
        (
            "encrypt this: hunter2 hunter3",
            "hunter2",
            "encrypt this: <redacted>",
        ),
        (
            "please encrypt hunter2 with key billing",
            "hunter2",
            "please encrypt <redacted> with key billing",
        ),
        (
            "decrypt \"omnimesh:v1:c2VjcmV0\" using key billing",
            "c2VjcmV0",
            "decrypt \"<redacted>\" using key billing",
        ),
        // Not understood, but quoted: hidden all the same.
        ("blorp 'my password'", "my password", "blorp '<redacted>'"),
    ] {
        let result = interpreter.interpret(text).unwrap();
        assert!(
            !result.redacted.contains(secret),
            "{text} → {}",
            result.redacted
        );
        assert_eq!(result.redacted, expected, "{text}");
    }
    let plain = interpreter.interpret("deploy core-engine 1.4.2").unwrap();
    assert_eq!(plain.redacted, "deploy core-engine 1.4.2");
}

#[test]
fn oversized_input_is_refused_with_the_limit() {
    let error = interpreter().interpret(&"a".repeat(5000)).unwrap_err();
    assert_eq!(
        error,
        InputError::TooLong {
            length: 5000,
            limit: 2048
        }
    );
}

#[test]
fn cross_validated_scores_meet_the_floors() {
    let dev = parse_examples(TRAINING_SETS[0]).unwrap();
    let own = parse_examples(TRAINING_SETS[1]).unwrap();
    let report = eval::cross_validate(&dev, &own, 5);
    println!("{report}\n{}", report.errors.join("\n"));
    assert_eq!(report.safety_count, 0, "{:#?}", report.errors);
    assert!(report.intent_accuracy >= FLOOR_INTENT, "{report}");
    assert!(report.entity_exact_match >= FLOOR_ENTITIES, "{report}");
}

/// Floors for the cross-validated dev-set scores; raise them as the interpreter improves.
const FLOOR_INTENT: f64 = 0.95;
const FLOOR_ENTITIES: f64 = 0.93;

/// Phrasings written separately from the training data and never trained on: a check
/// that the rules generalise beyond the development set.
#[test]
fn held_out_phrasings_meet_the_floors() {
    let holdout = parse_examples(include_str!("../../data/holdout.jsonl")).unwrap();
    let report = eval::evaluate(&interpreter(), &holdout);
    println!("{report}\n{}", report.errors.join("\n"));
    assert_eq!(report.safety_count, 0, "{:#?}", report.errors);
    assert!(
        report.intent_accuracy >= FLOOR_HELD_OUT_INTENT,
        "{report}\n{:#?}",
        report.errors
    );
    assert!(
        report.entity_exact_match >= FLOOR_HELD_OUT_ENTITIES,
        "{report}\n{:#?}",
        report.errors
    );
}

const FLOOR_HELD_OUT_INTENT: f64 = 0.95;
const FLOOR_HELD_OUT_ENTITIES: f64 = 0.95;
