//! Provider-specific bad datasets: each yields its problem kind at the right
//! row, line and column under the provider's rules (with the tokenizer the
//! provider bills with), offline, and none panics.
//!
//! The small files are committed under `tests/corpus/rules/`; the large ones
//! (an example of 70,000 tokens, 1,001 validation rows, …) are written by
//! [`generated`] into a temporary folder, the same bytes every run.

#![allow(clippy::unwrap_used)] // Test helpers fail loudly.

use std::path::{Path, PathBuf};

use finetune_core::{DataRules, DatasetSource, ProviderKind};
use finetune_data::{
    DatasetRole, ProblemKind, Severity, ValidationOptions, Validator, counter_for, validate_with,
};

use DatasetRole::{Training, Validation};
use ProblemKind::*;
use ProviderKind::{AzureOpenAi, Bedrock, OpenAi};

struct Case {
    file: &'static str,
    provider: ProviderKind,
    model: &'static str,
    role: DatasetRole,
    kind: ProblemKind,
    row: Option<u64>,
    column: Option<&'static str>,
    /// Changes to the built-in rules (a smaller limit, to test the rule
    /// without a 512 MB file).
    tweak: fn(&mut DataRules),
}

fn keep(_: &mut DataRules) {}

const fn case(
    file: &'static str,
    provider: ProviderKind,
    model: &'static str,
    role: DatasetRole,
    kind: ProblemKind,
    row: Option<u64>,
    column: Option<&'static str>,
) -> Case {
    Case { file, provider, model, role, kind, row, column, tweak: keep }
}

const MINI: &str = "gpt-4o-mini-2024-07-18";
const NOVA: &str = "amazon.nova-micro-v1:0:128k";
const NOVA2: &str = "amazon.nova-2-lite-v1:0:256k";
const TITAN: &str = "amazon.titan-text-express-v1";

fn cases() -> Vec<Case> {
    vec![
        // OpenAI
        case("openai_nine_examples.jsonl", OpenAi, MINI, Training, TooFewRows, None, None),
        case(
            "gen/gpt4o_mini_too_long.jsonl",
            OpenAi,
            MINI,
            Training,
            TooLong,
            Some(4),
            Some("completion"),
        ),
        case(
            "gen/gpt35_0613_too_long.jsonl",
            OpenAi,
            "gpt-3.5-turbo-0613",
            Training,
            TooLong,
            Some(2),
            Some("prompt"),
        ),
        case(
            "openai_chat_no_assistant.jsonl",
            OpenAi,
            MINI,
            Training,
            MissingValue,
            Some(3),
            Some("messages"),
        ),
        case(
            "openai_chat_unknown_role.jsonl",
            OpenAi,
            MINI,
            Training,
            WrongType,
            Some(5),
            Some("messages[1]"),
        ),
        case(
            "gen/gpt4o_mini_long_validation.jsonl",
            OpenAi,
            MINI,
            Validation,
            TooLong,
            Some(1),
            Some("prompt"),
        ),
        // Azure OpenAI
        case(
            "azure_nine_examples.jsonl",
            AzureOpenAi,
            "gpt-35-turbo-0125",
            Training,
            TooFewRows,
            None,
            None,
        ),
        Case {
            tweak: |r| r.max_upload_bytes = Some(1_000),
            ..case(
                "gen/twenty_rows.jsonl",
                AzureOpenAi,
                "gpt-4o-mini-2024-07-18",
                Training,
                TooLarge,
                None,
                None,
            )
        },
        // Bedrock
        case(
            "nova_reserved_in_completion.jsonl",
            Bedrock,
            NOVA,
            Training,
            ReservedText,
            Some(6),
            Some("completion"),
        ),
        case(
            "nova_reserved_in_system.jsonl",
            Bedrock,
            NOVA,
            Training,
            ReservedText,
            Some(3),
            Some("system"),
        ),
        case(
            "nova_reserved_any_case.jsonl",
            Bedrock,
            NOVA,
            Training,
            ReservedText,
            Some(8),
            Some("prompt"),
        ),
        case(
            "nova_conversation_reserved.jsonl",
            Bedrock,
            NOVA,
            Training,
            ReservedText,
            Some(9),
            Some("prompt"),
        ),
        case("nova_seven_records.jsonl", Bedrock, NOVA, Training, TooFewRows, None, None),
        case(
            "nova2_validation.jsonl",
            Bedrock,
            NOVA2,
            Validation,
            ValidationNotAccepted,
            None,
            None,
        ),
        case("nova2_150_records.jsonl", Bedrock, NOVA2, Training, TooFewRows, None, None),
        case(
            "gen/titan_too_long.jsonl",
            Bedrock,
            TITAN,
            Training,
            TooLong,
            Some(3),
            Some("prompt"),
        ),
        case(
            "gen/titan_1001_validation_rows.jsonl",
            Bedrock,
            TITAN,
            Validation,
            TooManyRows,
            None,
            None,
        ),
        case("gen/nova_20001_records.jsonl", Bedrock, NOVA, Training, TooManyRows, None, None),
    ]
}

fn line(prompt: &str, completion: &str) -> String {
    serde_json::json!({"prompt": prompt, "completion": completion}).to_string() + "\n"
}

/// Writes the large cases into `dir/gen`.
fn generated(dir: &Path) {
    let out = dir.join("gen");
    std::fs::create_dir_all(&out).unwrap();
    let rows = |n: usize, special: &[(usize, String, String)]| -> String {
        (1..=n)
            .map(|i| match special.iter().find(|(at, _, _)| *at == i) {
                Some((_, p, c)) => line(p, c),
                None => line(&format!("Question {i}?"), &format!("Answer {i}.")),
            })
            .collect()
    };
    let write = |name: &str, text: String| std::fs::write(out.join(name), text).unwrap();
    // " hello" is one token in o200k_base: 70,000 of them exceed 65,536.
    write(
        "gpt4o_mini_too_long.jsonl",
        rows(12, &[(4, "Say hello.".into(), " hello".repeat(70_000))]),
    );
    write("gpt35_0613_too_long.jsonl", rows(12, &[(2, " hello".repeat(5_000), "Hi.".into())]));
    write(
        "gpt4o_mini_long_validation.jsonl",
        rows(3, &[(1, " hello".repeat(66_000), "Hi.".into())]),
    );
    write("twenty_rows.jsonl", rows(20, &[]));
    // 4 characters per token (Bedrock's tokenizers are not published).
    write("titan_too_long.jsonl", rows(10, &[(3, "abcd".repeat(4_200), "x".into())]));
    write("titan_1001_validation_rows.jsonl", rows(1_001, &[]));
    write("nova_20001_records.jsonl", rows(20_001, &[]));
}

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/rules")
}

#[test]
fn provider_rules_find_each_problem_where_it_is() {
    let dir = tempfile::tempdir().unwrap();
    generated(dir.path());
    let cases = cases();
    assert!(cases.len() >= 15);
    for case in &cases {
        let path = if case.file.starts_with("gen/") {
            dir.path().join(case.file)
        } else {
            corpus().join(case.file)
        };
        let mut rules = DataRules::builtin(&case.provider, case.model);
        (case.tweak)(&mut rules);
        let source = DatasetSource::new(path.to_str().unwrap()).unwrap();
        let dataset = finetune_data::LocalDataset::local(&source).unwrap();
        let mut validator = Validator::new(case.file, ValidationOptions::default());
        if let Some(counter) = counter_for(&rules) {
            validator = validator.with_token_counter(Box::new(counter));
        }
        let validator = validator.with_rules(rules, case.role);
        let (report, _) = validate_with(&dataset, validator).unwrap().finish();
        let found = report.problems(case.kind).find(|p| {
            p.row == case.row && p.column.as_deref() == case.column && p.severity == Severity::Error
        });
        assert!(
            found.is_some(),
            "{}: expected {} at row {:?} column {:?}:\n{report}",
            case.file,
            case.kind,
            case.row,
            case.column
        );
        assert!(!report.valid, "{}", case.file);
        // JSON Lines: the line is the row here (no blank lines).
        if let Some(p) = found {
            assert_eq!(p.line, case.row, "{}", case.file);
        }
    }
}

#[test]
fn the_same_files_pass_where_the_rule_does_not_apply() {
    // Nova's reserved words and row minimum are Nova's: OpenAI takes them
    // (10 rows), and Nova 1 takes a validation set.
    let check = |file: &str, provider: ProviderKind, model: &str, role: DatasetRole| {
        let rules = DataRules::builtin(&provider, model);
        let source = DatasetSource::new(corpus().join(file).to_str().unwrap()).unwrap();
        let dataset = finetune_data::LocalDataset::local(&source).unwrap();
        let mut validator = Validator::new(file, ValidationOptions::default());
        if let Some(counter) = counter_for(&rules) {
            validator = validator.with_token_counter(Box::new(counter));
        }
        let validator = validator.with_rules(rules, role);
        validate_with(&dataset, validator).unwrap().finish().0
    };
    let report = check("nova_reserved_in_completion.jsonl", OpenAi, MINI, Training);
    assert!(report.valid, "{report}");
    let report = check("nova2_validation.jsonl", Bedrock, NOVA, Validation);
    assert!(report.valid, "{report}");
    let report = check("nova2_150_records.jsonl", Bedrock, NOVA, Training);
    assert!(report.valid, "{report}");
}
