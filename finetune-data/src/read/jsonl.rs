//! JSON Lines: flat objects, OpenAI chat lines and Bedrock conversation lines.
//!
//! One line is one record. A line that cannot become a record (broken JSON,
//! bytes that are not UTF-8, a missing prompt) is reported as a problem with
//! its record number and physical line, and reading goes on.
//!
//! JSON Lines has no header, so a mapped column that no record has (say
//! `--completion answer` over rows keyed `reply`) shows only at the end: the
//! per-record "absent" problems of a column no record has held yet are kept
//! back, and become one `missing_column` problem naming the keys the records
//! do have when the file ends without it (or are reported as they were, once
//! a record has the column).

use std::collections::BTreeSet;

use std::io::BufRead;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_array::builder::StringBuilder;
use finetune_core::ColumnMapping;
use serde_json::{Map, Value};

use super::DataBatch;
use crate::error::DataError;
use crate::report::{Problem, ProblemKind};
use crate::schema::canonical_schema;

/// Reads JSON Lines in batches of canonical records.
pub struct JsonlReader<R> {
    input: R,
    file: String,
    mapping: ColumnMapping,
    batch_size: usize,
    line: u64,
    row: u64,
    buf: Vec<u8>,
    done: bool,
    /// Per required column (prompt, completion): whether any flat record
    /// had the key, and the problems held back until one does.
    columns: [RequiredColumn; 2],
    /// Keys seen in flat records (the first few), for the message.
    keys: BTreeSet<String>,
}

/// A required column of flat records, tracked across the file.
#[derive(Default)]
struct RequiredColumn {
    seen: bool,
    held: Vec<Problem>,
}

/// How many distinct keys a `missing_column` message lists.
const KEYS_SHOWN: usize = 20;

impl<R: BufRead> JsonlReader<R> {
    /// A reader over `input`, naming `file` in problems.
    pub fn new(input: R, file: impl Into<String>, mapping: ColumnMapping) -> Self {
        Self {
            input,
            file: file.into(),
            mapping,
            batch_size: super::DEFAULT_BATCH_SIZE,
            line: 0,
            row: 0,
            buf: Vec::with_capacity(4096),
            done: false,
            columns: Default::default(),
            keys: BTreeSet::new(),
        }
    }

    /// Sets how many records a batch holds at most.
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    fn problem(&self, kind: ProblemKind, column: Option<&str>, message: String) -> Problem {
        Problem::error(kind, &self.file, message)
            .at_row(self.row)
            .at_line(self.line)
            .in_column(column)
    }

    fn read_batch(&mut self) -> Result<Option<DataBatch>, DataError> {
        let mut prompts = StringBuilder::new();
        let mut completions = StringBuilder::new();
        let mut systems = StringBuilder::new();
        let mut rows = Vec::new();
        let mut lines = Vec::new();
        let mut problems = Vec::new();
        let mut records = 0usize;
        while records < self.batch_size {
            self.buf.clear();
            let n = self
                .input
                .read_until(b'\n', &mut self.buf)
                .map_err(|source| DataError::Io { file: self.file.clone(), source })?;
            if n == 0 {
                self.done = true;
                problems.extend(self.never_seen());
                break;
            }
            self.line += 1;
            let mut raw = trim_line_end(&self.buf);
            // A UTF-8 byte-order mark (Windows tools write one; Azure
            // OpenAI's docs ask for one) starts the file, not the record.
            if self.line == 1 {
                raw = raw.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(raw);
            }
            if raw.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            self.row += 1;
            records += 1;
            let text = match std::str::from_utf8(raw) {
                Ok(t) => t,
                Err(e) => {
                    problems.push(self.problem(
                        ProblemKind::InvalidUtf8,
                        None,
                        format!(
                            "bytes that are not UTF-8 at byte {} of the line",
                            e.valid_up_to() + 1
                        ),
                    ));
                    continue;
                }
            };
            let object = match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(o)) => o,
                Ok(other) => {
                    problems.push(self.problem(
                        ProblemKind::Unreadable,
                        None,
                        format!("expected a JSON object, found {}", json_type(&other)),
                    ));
                    continue;
                }
                Err(e) => {
                    problems.push(self.problem(
                        ProblemKind::Unreadable,
                        None,
                        format!("malformed JSON at column {}: {e}", e.column()),
                    ));
                    continue;
                }
            };
            if !object.contains_key("messages") {
                self.note_keys(&object, &mut problems);
            }
            match self.record(&object) {
                Ok((prompt, completion, system)) => {
                    prompts.append_value(prompt);
                    completions.append_value(completion);
                    systems.append_option(system);
                    rows.push(self.row);
                    lines.push(self.line);
                }
                Err(p) => match self.unseen_column(&p) {
                    Some(i) => self.columns[i].held.push(p),
                    None => problems.push(p),
                },
            }
        }
        if records == 0 && problems.is_empty() {
            return Ok(None);
        }
        let batch = RecordBatch::try_new(
            canonical_schema(),
            vec![
                Arc::new(prompts.finish()),
                Arc::new(completions.finish()),
                Arc::new(systems.finish()),
            ],
        )
        .map_err(|e| DataError::Internal(format!("building a batch: {e}")))?;
        Ok(Some(DataBatch { batch, rows, lines: Some(lines), problems, records: records as u64 }))
    }

    /// The required columns, in the order of `columns`.
    fn required_names(&self) -> [&str; 2] {
        [&self.mapping.prompt, &self.mapping.completion]
    }

    /// Records the keys of a flat record; a required column seen for the
    /// first time releases the problems held back for it.
    fn note_keys(&mut self, object: &Map<String, Value>, problems: &mut Vec<Problem>) {
        for key in object.keys() {
            if self.keys.len() < KEYS_SHOWN && !self.keys.contains(key) {
                self.keys.insert(key.clone());
            }
        }
        let names = self.required_names().map(str::to_owned);
        for (column, name) in self.columns.iter_mut().zip(names) {
            if !column.seen && object.contains_key(&name) {
                column.seen = true;
                problems.append(&mut column.held);
            }
        }
    }

    /// Which required column a problem is an "absent" finding for, when no
    /// record has had that column yet.
    fn unseen_column(&self, p: &Problem) -> Option<usize> {
        if p.kind != ProblemKind::MissingValue || !p.message.ends_with("is absent") {
            return None;
        }
        let column = p.column.as_deref()?;
        let i = self.required_names().iter().position(|n| *n == column)?;
        (!self.columns[i].seen).then_some(i)
    }

    /// At the end of the file: one `missing_column` problem for each
    /// required column no record had (in place of its held-back problems).
    fn never_seen(&mut self) -> Vec<Problem> {
        let names = self.required_names().map(str::to_owned);
        let keys = if self.keys.is_empty() {
            "no flat record".to_owned()
        } else {
            let mut list =
                self.keys.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ");
            if self.keys.len() == KEYS_SHOWN {
                list.push_str(", …");
            }
            format!("the records have {list}")
        };
        let mut out = Vec::new();
        for (column, name) in self.columns.iter_mut().zip(names) {
            let held = std::mem::take(&mut column.held);
            if column.seen || held.is_empty() {
                continue;
            }
            let message = format!(
                "no record has the column `{name}` ({} record(s) lack it); {keys}",
                held.len()
            );
            out.push(
                Problem::error(ProblemKind::MissingColumn, &self.file, message)
                    .in_column(name.as_str()),
            );
        }
        out
    }

    /// Turns one JSON object into (prompt, completion, system).
    fn record<'a>(
        &self,
        o: &'a Map<String, Value>,
    ) -> Result<(&'a str, &'a str, Option<&'a str>), Problem> {
        if let Some(messages) = o.get("messages") {
            return self.conversation(o, messages);
        }
        let required = |name: &str| -> Result<&'a str, Problem> {
            match o.get(name) {
                None | Some(Value::Null) => Err(self.problem(
                    ProblemKind::MissingValue,
                    Some(name),
                    format!("`{name}` is {}", if o.contains_key(name) { "null" } else { "absent" }),
                )),
                Some(Value::String(s)) => Ok(s),
                Some(other) => Err(self.problem(
                    ProblemKind::WrongType,
                    Some(name),
                    format!("`{name}` must be a string, found {}", json_type(other)),
                )),
            }
        };
        let prompt = required(&self.mapping.prompt)?;
        let completion = required(&self.mapping.completion)?;
        let system = match self.mapping.system.as_deref() {
            None => None,
            Some(name) => match o.get(name) {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.as_str()),
                Some(other) => {
                    return Err(self.problem(
                        ProblemKind::WrongType,
                        Some(name),
                        format!("`{name}` must be a string or null, found {}", json_type(other)),
                    ));
                }
            },
        };
        Ok((prompt, completion, system))
    }

    /// OpenAI chat lines (`{"messages":[system?, user, assistant]}`) and
    /// Bedrock conversation lines (`{"schemaVersion":"bedrock-conversation-2024",
    /// "system":[{"text"}], "messages":[{"role","content":[{"text"}]}]}`).
    fn conversation<'a>(
        &self,
        o: &'a Map<String, Value>,
        messages: &'a Value,
    ) -> Result<(&'a str, &'a str, Option<&'a str>), Problem> {
        let wrong = |column: &str, message: String| {
            self.problem(ProblemKind::WrongType, Some(column), message)
        };
        let Value::Array(messages) = messages else {
            return Err(wrong(
                "messages",
                format!("`messages` must be an array, found {}", json_type(messages)),
            ));
        };
        let mut system = match o.get("system") {
            None | Some(Value::Null) => None,
            Some(v) => Some(content_text(v).ok_or_else(|| {
                wrong(
                    "system",
                    "`system` must be a string or a list of {\"text\": …} blocks".into(),
                )
            })?),
        };
        let (mut user, mut assistant) = (None, None);
        for (i, m) in messages.iter().enumerate() {
            let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
            let column = format!("messages[{i}]");
            // OpenAI's data-preparation guide refuses other keys in a
            // message (`message_unrecognized_key`); converting would drop
            // them silently.
            if let Some(key) =
                m.as_object().and_then(|m| m.keys().find(|k| !MESSAGE_KEYS.contains(&k.as_str())))
            {
                let column = format!("{column}.{key}");
                return Err(self.problem(
                    ProblemKind::UnknownKey,
                    Some(&column),
                    format!(
                        "unknown key `{key}` in a message (known: {})",
                        MESSAGE_KEYS.join(", ")
                    ),
                ));
            }
            let content = m
                .get("content")
                .and_then(content_text)
                .ok_or_else(|| wrong(&column, format!("`{column}.content` must be text")))?;
            let slot = match role {
                "system" if system.is_none() && user.is_none() => &mut system,
                "user" if user.is_none() => &mut user,
                "assistant" if user.is_some() && assistant.is_none() => &mut assistant,
                "system" | "user" | "assistant" => {
                    return Err(wrong(
                        &column,
                        "only single-turn conversations are supported: an optional system message, \
                         one user message, then one assistant message"
                            .into(),
                    ));
                }
                other => return Err(wrong(&column, format!("unknown role `{other}`"))),
            };
            *slot = Some(content);
        }
        let missing = |what: &str| {
            self.problem(
                ProblemKind::MissingValue,
                Some("messages"),
                format!("the conversation has no {what} message"),
            )
        };
        Ok((
            user.ok_or_else(|| missing("user"))?,
            assistant.ok_or_else(|| missing("assistant"))?,
            system,
        ))
    }
}

/// The keys a chat message may have: OpenAI's (`role`, `content`, `name`,
/// `weight`), which Bedrock's conversation lines use a subset of.
const MESSAGE_KEYS: [&str; 4] = ["role", "content", "name", "weight"];

/// A message's text: a string, or a list holding one `{"text": …}` block.
fn content_text(v: &Value) -> Option<&str> {
    match v {
        Value::String(s) => Some(s),
        Value::Array(parts) if parts.len() == 1 => parts[0].get("text")?.as_str(),
        _ => None,
    }
}

fn trim_line_end(buf: &[u8]) -> &[u8] {
    let buf = buf.strip_suffix(b"\n").unwrap_or(buf);
    buf.strip_suffix(b"\r").unwrap_or(buf)
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl<R: BufRead> Iterator for JsonlReader<R> {
    type Item = Result<DataBatch, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        self.read_batch().transpose()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_byte_order_mark_starts_the_file_not_the_record() {
        let text = "\u{feff}{\"prompt\":\"a\",\"completion\":\"b\"}\n{\"prompt\":\"c\",\"completion\":\"d\"}\n";
        let batches: Vec<_> =
            JsonlReader::new(text.as_bytes(), "bom.jsonl", ColumnMapping::default()).collect();
        let batch = batches.into_iter().next().unwrap().unwrap();
        assert!(batch.problems.is_empty(), "{:?}", batch.problems);
        assert_eq!(batch.batch.num_rows(), 2);
    }

    use super::*;
    use arrow_array::Array;
    use arrow_array::cast::AsArray;

    type Row = (String, String, Option<String>);

    fn read(text: &[u8]) -> (Vec<Row>, Vec<Problem>) {
        read_mapped(text, ColumnMapping::default())
    }

    fn read_mapped(text: &[u8], mapping: ColumnMapping) -> (Vec<Row>, Vec<Problem>) {
        let reader = JsonlReader::new(text, "t.jsonl", mapping).with_batch_size(2);
        let mut out = Vec::new();
        let mut problems = Vec::new();
        for b in reader {
            let b = b.unwrap();
            let (p, c, s) = (
                b.batch.column(0).as_string::<i32>(),
                b.batch.column(1).as_string::<i32>(),
                b.batch.column(2).as_string::<i32>(),
            );
            for i in 0..b.batch.num_rows() {
                out.push((
                    p.value(i).to_owned(),
                    c.value(i).to_owned(),
                    s.is_valid(i).then(|| s.value(i).to_owned()),
                ));
            }
            problems.extend(b.problems);
        }
        (out, problems)
    }

    #[test]
    fn a_mapped_column_no_record_has_is_one_missing_column_finding() {
        let text = br#"{"prompt":"p1","reply":"c1"}
{"prompt":"p2","reply":"c2"}
{"prompt":"p3","reply":"c3","system":"s"}
{"prompt":"p4","reply":"c4"}
{"prompt":"p5","reply":"c5"}
"#;
        let mapping = ColumnMapping { completion: "answer".into(), ..ColumnMapping::default() };
        let (rows, problems) = read_mapped(text, mapping);
        assert!(rows.is_empty());
        assert_eq!(problems.len(), 1, "{problems:?}");
        let p = &problems[0];
        assert_eq!(
            (p.kind, p.row, p.column.as_deref()),
            (ProblemKind::MissingColumn, None, Some("answer"))
        );
        assert!(
            p.message.contains("5 record(s)") && p.message.contains("`reply`"),
            "{}",
            p.message
        );
        assert!(p.message.contains("`prompt`") && p.message.contains("`system`"), "{}", p.message);
    }

    #[test]
    fn absent_values_before_the_column_first_appears_are_still_reported_by_row() {
        let text = br#"{"prompt":"p1"}
{"prompt":"p2"}
{"prompt":"p3"}
{"prompt":"p4","completion":"c4"}
{"prompt":"p5"}
"#;
        let (rows, problems) = read(text);
        assert_eq!(rows.len(), 1);
        let got: Vec<_> = problems.iter().map(|p| (p.kind, p.row, p.line)).collect();
        assert_eq!(
            got,
            [1, 2, 3, 5].map(|r| (ProblemKind::MissingValue, Some(r), Some(r))).to_vec()
        );
        assert!(problems.iter().all(|p| p.column.as_deref() == Some("completion")));
    }

    #[test]
    fn flat_chat_and_bedrock_lines() {
        let text = br#"{"prompt":"p1","completion":"c1"}
{"prompt":"p2","completion":"c2","system":"s2"}

{"messages":[{"role":"system","content":"s3"},{"role":"user","content":"p3"},{"role":"assistant","content":"c3"}]}
{"schemaVersion":"bedrock-conversation-2024","system":[{"text":"s4"}],"messages":[{"role":"user","content":[{"text":"p4"}]},{"role":"assistant","content":[{"text":"c4"}]}]}
"#;
        let (rows, problems) = read(text);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(rows[0], ("p1".into(), "c1".into(), None));
        assert_eq!(rows[1].2.as_deref(), Some("s2"));
        assert_eq!(rows[2], ("p3".into(), "c3".into(), Some("s3".into())));
        assert_eq!(rows[3], ("p4".into(), "c4".into(), Some("s4".into())));
    }

    #[test]
    fn problems_carry_row_line_and_column() {
        let text = b"{\"prompt\":\"a\",\"completion\":\"b\"}\n\n{\"prompt\":\"a\",\n{\"prompt\":1,\"completion\":\"b\"}\n{\"completion\":\"b\"}\n\xff\xfe\n[1]\n";
        let (rows, problems) = read(text);
        assert_eq!(rows.len(), 1);
        let got: Vec<_> =
            problems.iter().map(|p| (p.kind, p.row, p.line, p.column.clone())).collect();
        assert_eq!(
            got,
            vec![
                (ProblemKind::Unreadable, Some(2), Some(3), None),
                (ProblemKind::WrongType, Some(3), Some(4), Some("prompt".into())),
                (ProblemKind::MissingValue, Some(4), Some(5), Some("prompt".into())),
                (ProblemKind::InvalidUtf8, Some(5), Some(6), None),
                (ProblemKind::Unreadable, Some(6), Some(7), None),
            ]
        );
    }

    #[test]
    fn mapping_renames_columns() {
        let mapping = ColumnMapping {
            prompt: "q".into(),
            completion: "a".into(),
            system: Some("sys".into()),
        };
        let text: &[u8] = br#"{"q":"Q","a":"A","sys":null}"#;
        let b = JsonlReader::new(text, "x", mapping).next().unwrap().unwrap();
        assert_eq!(b.batch.num_rows(), 1);
        assert_eq!(b.batch.column(0).as_string::<i32>().value(0), "Q");
        assert!(b.batch.column(2).is_null(0));
    }
}
