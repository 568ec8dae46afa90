//! JSON Lines: flat objects, OpenAI chat lines and Bedrock conversation lines.
//!
//! One line is one record. A line that cannot become a record (broken JSON,
//! bytes that are not UTF-8, a missing prompt) is reported as a problem with
//! its record number and physical line, and reading goes on.

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
}

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
                break;
            }
            self.line += 1;
            let raw = trim_line_end(&self.buf);
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
            match self.record(&object) {
                Ok((prompt, completion, system)) => {
                    prompts.append_value(prompt);
                    completions.append_value(completion);
                    systems.append_option(system);
                    rows.push(self.row);
                    lines.push(self.line);
                }
                Err(p) => problems.push(p),
            }
        }
        if records == 0 {
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
    use super::*;
    use arrow_array::Array;
    use arrow_array::cast::AsArray;

    type Row = (String, String, Option<String>);

    fn read(text: &[u8]) -> (Vec<Row>, Vec<Problem>) {
        let reader = JsonlReader::new(text, "t.jsonl", ColumnMapping::default()).with_batch_size(2);
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
