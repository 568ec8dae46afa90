//! The dataset tools as a user runs them: exit codes, the JSON report's
//! shape, and conversion.

#![allow(clippy::unwrap_used)] // Test helpers fail loudly.

use std::path::Path;
use std::process::{Command, Output};

/// Runs an example: the binary `cargo test` built beside this test when it
/// is there, else through `cargo run` (e.g. under `cargo test --test cli`).
fn example(name: &str, args: &[&str]) -> Output {
    let built = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("examples").join(name));
    match built.filter(|p| p.exists()) {
        Some(binary) => Command::new(binary).args(args).output().unwrap(),
        None => {
            let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
            Command::new(env!("CARGO"))
                .args(["run", "-q", "--manifest-path"])
                .arg(&manifest)
                .args(["--example", name, "--"])
                .args(args)
                .output()
                .unwrap()
        }
    }
}

fn sample() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/reverse-words.jsonl").display().to_string()
}

#[test]
fn validate_dataset_exit_codes_and_json() {
    let ok = example("validate_dataset", &[&sample(), "--min-rows", "10", "--json"]);
    assert_eq!(ok.status.code(), Some(0), "{}", String::from_utf8_lossy(&ok.stderr));
    let v: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(v["valid"], true);
    assert_eq!(v["rows"], 30);
    assert!(v["errors"].as_array().unwrap().is_empty());

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "question,answer\nq1,a1\nq2\n").unwrap();
    let out = example(
        "validate_dataset",
        &[bad.to_str().unwrap(), "--prompt", "question", "--completion", "answer", "--json"],
    );
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], false);
    let e = &v["errors"][0];
    assert_eq!(
        (e["kind"].as_str(), e["row"].as_u64(), e["line"].as_u64()),
        (Some("unreadable"), Some(2), Some(3))
    );
    for key in ["kind", "row", "line", "column", "message"] {
        assert!(e.get(key).is_some(), "error items carry `{key}`");
    }
    assert!(v["warnings"].is_array());

    assert_eq!(example("validate_dataset", &[]).status.code(), Some(2));
    assert_eq!(
        example("validate_dataset", &[&sample(), "--min-rows", "many"]).status.code(),
        Some(2)
    );
}

#[test]
fn convert_dataset_writes_provider_formats() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("train.jsonl");
    let run = example(
        "convert_dataset",
        &[&sample(), "--to", "bedrock-conversation", "--out", out.to_str().unwrap()],
    );
    assert_eq!(run.status.code(), Some(0), "{}", String::from_utf8_lossy(&run.stderr));
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(text.lines().count(), 30);
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(first["schemaVersion"], "bedrock-conversation-2024");
    assert_eq!(first["messages"][1]["content"][0]["text"], "elppa");
    assert_eq!(
        example("convert_dataset", &[&sample(), "--to", "xml", "--out", "x"]).status.code(),
        Some(2)
    );
}
