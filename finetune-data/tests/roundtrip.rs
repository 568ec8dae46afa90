//! Every writer → reader round trip gives back identical rows, for arbitrary
//! Unicode (newlines, quotes, commas, tabs, emoji, control characters, empty
//! strings, missing systems).

#![allow(clippy::unwrap_used)] // Test helpers fail loudly.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{Array, RecordBatch, StringArray};
use finetune_core::{DatasetFormat, DatasetSource};
use finetune_data::{CsvReader, DatasetWriter, OutputFormat, canonical_schema, open};
use proptest::prelude::*;

type Row = (String, String, Option<String>);

fn to_batch(rows: &[Row]) -> RecordBatch {
    let p: StringArray = rows.iter().map(|r| Some(r.0.as_str())).collect();
    let c: StringArray = rows.iter().map(|r| Some(r.1.as_str())).collect();
    let s: StringArray = rows.iter().map(|r| r.2.as_deref()).collect();
    RecordBatch::try_new(canonical_schema(), vec![Arc::new(p), Arc::new(c), Arc::new(s)]).unwrap()
}

fn rows_of(batch: &RecordBatch) -> Vec<Row> {
    let (p, c, s) = (
        batch.column(0).as_string::<i32>(),
        batch.column(1).as_string::<i32>(),
        batch.column(2).as_string::<i32>(),
    );
    (0..batch.num_rows())
        .map(|i| {
            (
                p.value(i).to_owned(),
                c.value(i).to_owned(),
                s.is_valid(i).then(|| s.value(i).to_owned()),
            )
        })
        .collect()
}

fn read_back(path: &std::path::Path, format: DatasetFormat) -> Vec<Row> {
    let source = DatasetSource::new(&path.display().to_string()).unwrap().with_format(format);
    let mut out = Vec::new();
    for b in open(&source).unwrap() {
        let b = b.unwrap();
        assert!(b.problems.is_empty(), "{:?}", b.problems);
        out.extend(rows_of(&b.batch));
    }
    out
}

fn write(rows: &[Row], format: OutputFormat) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out");
    let mut w = DatasetWriter::create(&path, format).unwrap();
    // Several batches, to cover appending.
    for chunk in rows.chunks(3) {
        w.write(&to_batch(chunk)).unwrap();
    }
    assert_eq!(w.finish().unwrap(), rows.len() as u64);
    (dir, path)
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-z ,\"\\n\\r\\t'{}\\[\\]:😀é\\u{0}\\u{1b}\\u{2028}]{0,40}",
        Just(String::new()),
    ]
}

fn row() -> impl Strategy<Value = Row> {
    (text(), text(), proptest::option::of(text()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn openai_chat_round_trips(rows in proptest::collection::vec(row(), 1..12)) {
        let (_dir, path) = write(&rows, OutputFormat::OpenAiChat);
        prop_assert_eq!(read_back(&path, DatasetFormat::Jsonl), rows);
    }

    #[test]
    fn bedrock_conversation_round_trips(rows in proptest::collection::vec(row(), 1..12)) {
        let (_dir, path) = write(&rows, OutputFormat::BedrockConversation);
        prop_assert_eq!(read_back(&path, DatasetFormat::Jsonl), rows);
    }

    #[test]
    fn parquet_round_trips(rows in proptest::collection::vec(row(), 1..12)) {
        let (_dir, path) = write(&rows, OutputFormat::Parquet);
        prop_assert_eq!(read_back(&path, DatasetFormat::Parquet), rows);
    }

    /// The prompt/completion formats have no system field: the system
    /// message comes back in front of the prompt, separated by a blank line.
    #[test]
    fn prompt_completion_formats_round_trip(rows in proptest::collection::vec(row(), 1..12)) {
        let expected: Vec<Row> = rows
            .iter()
            .map(|(p, c, s)| (s.as_ref().map_or_else(|| p.clone(), |s| format!("{s}\n\n{p}")), c.clone(), None))
            .collect();
        for format in [OutputFormat::OpenAiLegacy, OutputFormat::Bedrock] {
            let (_dir, path) = write(&rows, format);
            prop_assert_eq!(&read_back(&path, DatasetFormat::Jsonl), &expected);
        }
    }

    /// CSV written by the csv crate reads back identically (an empty system
    /// cell is a missing system message, so systems here are non-empty).
    #[test]
    fn csv_reads_what_csv_writes(rows in proptest::collection::vec(
        (text(), text(), proptest::option::of(text().prop_filter("non-empty", |s| !s.is_empty()))), 1..12)) {
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record(["system", "prompt", "completion"]).unwrap();
        for (p, c, s) in &rows {
            w.write_record([s.as_deref().unwrap_or(""), p, c]).unwrap();
        }
        let bytes = w.into_inner().unwrap();
        let mut got = Vec::new();
        for b in CsvReader::new(bytes.as_slice(), "mem.csv", &Default::default()).unwrap().with_batch_size(4) {
            let b = b.unwrap();
            prop_assert!(b.problems.is_empty(), "{:?}", b.problems);
            got.extend(rows_of(&b.batch));
        }
        prop_assert_eq!(got, rows);
    }
}

#[test]
fn a_failed_conversion_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bad.jsonl");
    std::fs::write(&input, "{\"prompt\":\"p\",\"completion\":\"c\"}\n{\"prompt\":\"p\"}\n")
        .unwrap();
    let out = dir.path().join("out.jsonl");
    let source = DatasetSource::new(&input.display().to_string()).unwrap();
    let (report, rows) = finetune_data::convert(
        &finetune_data::LocalDataset::local(&source).unwrap(),
        &out,
        OutputFormat::OpenAiChat,
        &Default::default(),
    )
    .unwrap();
    assert!(!report.valid);
    assert_eq!(rows, 0);
    let names: Vec<_> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["bad.jsonl"], "neither the output nor a partial file is left");
}

#[test]
fn chat_lines_omit_a_null_system() {
    let (_dir, path) = write(&[("p".into(), "c".into(), None)], OutputFormat::OpenAiChat);
    let text = std::fs::read_to_string(path).unwrap();
    assert_eq!(
        text,
        "{\"messages\":[{\"content\":\"p\",\"role\":\"user\"},{\"content\":\"c\",\"role\":\"assistant\"}]}\n"
    );
}
