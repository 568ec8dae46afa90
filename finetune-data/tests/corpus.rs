//! A corpus of malformed inputs under `tests/corpus/`: each must yield its
//! specific problem kind at the right row, line and column, and none may
//! panic.
//!
//! The corpus files are committed. The binary ones (Parquet, Arrow) are made
//! by `regenerate_corpus` below:
//! `cargo test -p finetune-data --test corpus -- --ignored regenerate_corpus`.

#![allow(clippy::unwrap_used)] // Test helpers fail loudly.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::types::Int32Type;
use arrow_array::{
    ArrayRef, BinaryArray, BooleanArray, DictionaryArray, Int64Array, LargeStringArray,
    RecordBatch, StringArray,
};
use arrow_schema::{Field, Schema};
use finetune_core::{ColumnMapping, DatasetSource};
use finetune_data::{ProblemKind, ValidationOptions, validate};

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

struct Case {
    file: &'static str,
    kind: Option<ProblemKind>,
    row: Option<u64>,
    line: Option<u64>,
    column: Option<&'static str>,
}

const fn case(
    file: &'static str,
    kind: ProblemKind,
    row: Option<u64>,
    line: Option<u64>,
    column: Option<&'static str>,
) -> Case {
    Case { file, kind: Some(kind), row, line, column }
}

use ProblemKind::*;

const CASES: &[Case] = &[
    // JSON Lines
    case("jsonl_broken_json.jsonl", Unreadable, Some(3), Some(3), None),
    case("jsonl_invalid_utf8.jsonl", InvalidUtf8, Some(2), Some(2), None),
    case("jsonl_numeric_prompt.jsonl", WrongType, Some(1), Some(1), Some("prompt")),
    case("jsonl_missing_completion.jsonl", MissingValue, Some(2), Some(2), Some("completion")),
    case("jsonl_null_prompt.jsonl", MissingValue, Some(1), Some(1), Some("prompt")),
    // Keyed `reply` throughout: one finding for the file, not one per row.
    case("jsonl_completion_column_absent.jsonl", MissingColumn, None, None, Some("completion")),
    case("jsonl_whitespace_prompt.jsonl", EmptyValue, Some(1), Some(1), Some("prompt")),
    case("jsonl_blank_lines.jsonl", EmptyValue, Some(2), Some(5), Some("prompt")),
    case("jsonl_array_line.jsonl", Unreadable, Some(1), Some(1), None),
    case("jsonl_empty.jsonl", TooFewRows, None, None, None),
    case("jsonl_only_whitespace.jsonl", TooFewRows, None, None, None),
    case("jsonl_chat_multi_turn.jsonl", WrongType, Some(1), Some(1), Some("messages[2]")),
    case("jsonl_chat_no_assistant.jsonl", MissingValue, Some(1), Some(1), Some("messages")),
    case("jsonl_chat_bad_role.jsonl", WrongType, Some(2), Some(2), Some("messages[1]")),
    case("jsonl_system_number.jsonl", WrongType, Some(1), Some(1), Some("system")),
    case("jsonl_crlf_broken.jsonl", Unreadable, Some(2), Some(2), None),
    case("jsonl_messages_not_array.jsonl", WrongType, Some(1), Some(1), Some("messages")),
    // CSV
    case("csv_ragged.csv", Unreadable, Some(2), Some(3), None),
    case("csv_header_only.csv", TooFewRows, None, None, None),
    case("csv_empty.csv", TooFewRows, None, Some(1), None),
    case("csv_missing_completion_column.csv", MissingColumn, None, Some(1), Some("completion")),
    case("csv_invalid_utf8.csv", InvalidUtf8, Some(2), Some(3), Some("prompt")),
    case("csv_unclosed_quote.csv", Unreadable, Some(2), Some(3), None),
    case("csv_empty_completion.csv", EmptyValue, Some(1), Some(2), Some("completion")),
    case("csv_multiline_then_ragged.csv", Unreadable, Some(2), Some(4), None),
    // Parquet
    case("parquet_truncated.parquet", Unreadable, None, None, None),
    case("parquet_numeric_prompt.parquet", WrongType, None, None, Some("prompt")),
    case("parquet_missing_completion.parquet", MissingColumn, None, None, Some("completion")),
    case("parquet_null_completion.parquet", MissingValue, Some(3), None, Some("completion")),
    case("parquet_zero_rows.parquet", TooFewRows, None, None, None),
    case("parquet_not_parquet.parquet", Unreadable, None, None, None),
    case("parquet_binary_prompt.parquet", WrongType, None, None, Some("prompt")),
    // Arrow IPC
    case("arrow_truncated.arrow", Unreadable, None, None, None),
    case("arrow_stream_null_prompt.arrows", MissingValue, Some(2), None, Some("prompt")),
    case("arrow_bool_completion.arrow", WrongType, None, None, Some("completion")),
    Case {
        file: "arrow_large_and_dictionary.arrow",
        kind: None,
        row: None,
        line: None,
        column: None,
    },
];

#[test]
fn every_malformed_input_is_reported_precisely() {
    assert!(CASES.len() >= 25);
    let mut failures = Vec::new();
    for c in CASES {
        let path = corpus().join(c.file);
        let source = DatasetSource::new(&path.display().to_string()).unwrap();
        let outcome = std::panic::catch_unwind(|| validate(&source, ValidationOptions::default()));
        let (report, _) = match outcome {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                failures.push(format!("{}: error instead of a report: {e}", c.file));
                continue;
            }
            Err(_) => {
                failures.push(format!("{}: PANICKED", c.file));
                continue;
            }
        };
        let Some(kind) = c.kind else {
            if !report.valid {
                failures.push(format!("{}: expected valid, got\n{report}", c.file));
            }
            continue;
        };
        let found = report
            .problems(kind)
            .find(|p| p.row == c.row && p.line == c.line && p.column.as_deref() == c.column);
        if report.valid || found.is_none() {
            failures.push(format!(
                "{}: expected {kind} at row {:?} line {:?} column {:?}, got\n{report}",
                c.file, c.row, c.line, c.column
            ));
        }
        assert!(report.file.ends_with(c.file), "the report names the file");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn mapped_names_are_reported_as_the_user_wrote_them() {
    let source = DatasetSource::new(
        &corpus().join("csv_missing_completion_column.csv").display().to_string(),
    )
    .unwrap()
    .with_columns(ColumnMapping {
        prompt: "prompt".into(),
        completion: "reply".into(),
        system: None,
    });
    let (report, _) = validate(&source, ValidationOptions::default()).unwrap();
    let p = report.problems(MissingColumn).next().expect("missing column reported");
    assert_eq!(p.column.as_deref(), Some("reply"));
    assert!(p.message.contains("prompt, answer"), "lists the columns there are: {}", p.message);
}

fn write_parquet(name: &str, batch: &RecordBatch) {
    let file = std::fs::File::create(corpus().join(name)).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}

fn batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
    let fields: Vec<Field> =
        columns.iter().map(|(n, a)| Field::new(*n, a.data_type().clone(), true)).collect();
    RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns.into_iter().map(|(_, a)| a).collect(),
    )
    .unwrap()
}

fn strings(v: &[Option<&str>]) -> ArrayRef {
    Arc::new(StringArray::from(v.to_vec()))
}

/// Writes the binary corpus files.
#[test]
#[ignore = "regenerates committed fixtures"]
fn regenerate_corpus() {
    let good = batch(vec![
        ("prompt", strings(&[Some("p1"), Some("p2"), Some("p3"), Some("p4")])),
        ("completion", strings(&[Some("c1"), Some("c2"), Some("c3"), Some("c4")])),
    ]);
    write_parquet("parquet_good.tmp", &good);
    let bytes = std::fs::read(corpus().join("parquet_good.tmp")).unwrap();
    std::fs::write(corpus().join("parquet_truncated.parquet"), &bytes[..bytes.len() - 20]).unwrap();
    std::fs::remove_file(corpus().join("parquet_good.tmp")).unwrap();

    write_parquet(
        "parquet_numeric_prompt.parquet",
        &batch(vec![
            ("prompt", Arc::new(Int64Array::from(vec![1, 2]))),
            ("completion", strings(&[Some("a"), Some("b")])),
        ]),
    );
    write_parquet(
        "parquet_missing_completion.parquet",
        &batch(vec![("prompt", strings(&[Some("q")])), ("answer", strings(&[Some("a")]))]),
    );
    write_parquet(
        "parquet_null_completion.parquet",
        &batch(vec![
            ("prompt", strings(&[Some("p1"), Some("p2"), Some("p3")])),
            ("completion", strings(&[Some("c1"), Some("c2"), None])),
            ("system", strings(&[None, Some("s"), None])),
        ]),
    );
    write_parquet(
        "parquet_zero_rows.parquet",
        &batch(vec![("prompt", strings(&[])), ("completion", strings(&[]))]),
    );
    std::fs::write(corpus().join("parquet_not_parquet.parquet"), "prompt,completion\na,b\n")
        .unwrap();
    write_parquet(
        "parquet_binary_prompt.parquet",
        &batch(vec![
            ("prompt", Arc::new(BinaryArray::from(vec![&b"p"[..]]))),
            ("completion", strings(&[Some("c")])),
        ]),
    );

    let ipc_file = |name: &str, b: &RecordBatch| {
        let file = std::fs::File::create(corpus().join(name)).unwrap();
        let mut w = arrow_ipc::writer::FileWriter::try_new(file, &b.schema()).unwrap();
        w.write(b).unwrap();
        w.finish().unwrap();
    };
    ipc_file("arrow_good.tmp", &good);
    let bytes = std::fs::read(corpus().join("arrow_good.tmp")).unwrap();
    std::fs::write(corpus().join("arrow_truncated.arrow"), &bytes[..bytes.len() / 2]).unwrap();
    std::fs::remove_file(corpus().join("arrow_good.tmp")).unwrap();
    ipc_file(
        "arrow_bool_completion.arrow",
        &batch(vec![
            ("prompt", strings(&[Some("p")])),
            ("completion", Arc::new(BooleanArray::from(vec![true]))),
        ]),
    );
    let dict: DictionaryArray<Int32Type> = vec!["c1", "c2", "c1"].into_iter().collect();
    ipc_file(
        "arrow_large_and_dictionary.arrow",
        &batch(vec![
            ("prompt", Arc::new(LargeStringArray::from(vec!["p1", "p2", "p3"]))),
            ("completion", Arc::new(dict)),
        ]),
    );
    let stream = batch(vec![
        ("prompt", strings(&[Some("p1"), None, Some("p3")])),
        ("completion", strings(&[Some("c1"), Some("c2"), Some("c3")])),
    ]);
    let file = std::fs::File::create(corpus().join("arrow_stream_null_prompt.arrows")).unwrap();
    let mut w = arrow_ipc::writer::StreamWriter::try_new(file, &stream.schema()).unwrap();
    w.write(&stream).unwrap();
    w.finish().unwrap();
}
