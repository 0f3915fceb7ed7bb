//! `omniterm-interface interpret --jsonl`: the SPEC contract, one JSON object per line.

use std::io::Write as _;
use std::process::{Command, Stdio};

fn interpret(input: &str) -> Vec<serde_json::Value> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_omniterm-interface"))
        .args(["interpret", "--jsonl"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[test]
fn one_object_per_line_with_exactly_the_contract_keys() {
    let objects = interpret("deploy core-engine 1.4.2 --canary 10 --env production\nlol\n");
    assert_eq!(objects.len(), 2);
    let keys: Vec<&str> = objects[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "confidence",
            "entities",
            "intent",
            "needs_confirmation",
            "text"
        ]
    );
    assert_eq!(objects[0]["intent"], "deploy");
    assert_eq!(objects[0]["entities"]["service"], "core-engine");
    assert_eq!(objects[0]["entities"]["version"], "1.4.2");
    assert_eq!(objects[0]["entities"]["environment"], "production");
    assert_eq!(objects[0]["needs_confirmation"], true);
    assert_eq!(objects[1]["intent"], "unknown");
    assert_eq!(objects[1]["entities"], serde_json::json!({}));
}

#[test]
fn hostile_lines_get_an_answer_each_and_nothing_is_lost() {
    let huge = "deploy ".repeat(2000);
    let input = format!("{huge}\n'''\"\"\"'''\n\u{0}\u{1b}[31m\nrm -rf / ; deploy engine 1.0.0\n");
    let objects = interpret(&input);
    assert_eq!(objects.len(), 4);
    assert!(
        objects[0]["error"]
            .as_str()
            .unwrap()
            .contains("the limit is 2048")
    );
    for object in &objects[1..] {
        assert_eq!(object["intent"], "unknown", "{object}");
    }
}
