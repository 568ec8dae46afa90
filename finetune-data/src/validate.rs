//! Validation and statistics in one streaming pass.

use arrow_array::cast::AsArray;
use arrow_array::{Array, StringArray};

use crate::error::DataError;
use crate::hashing::{ExampleIndex, example_hash};
use crate::read::DataBatch;
use crate::report::{Problem, ProblemKind, ProblemLog, Severity, ValidationReport};
use crate::schema::{COMPLETION, PROMPT, SYSTEM};
use crate::stats::{LengthHistogram, Statistics, TokenCounter, TokenStats};
use finetune_core::DataRules;

/// Which dataset of a job is being validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatasetRole {
    /// The training set.
    Training,
    /// The validation set.
    Validation,
}

/// What counts as a problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationOptions {
    /// Fewer rows than this is a `too_few_rows` error (OpenAI wants 10).
    pub min_rows: u64,
    /// Longer prompts+completions+systems (in characters) are `too_long`.
    pub max_chars: Option<usize>,
    /// Rows with more tokens than this (prompt + completion + system) are
    /// `too_long`; needs a token counter ([`Validator::with_token_counter`]).
    pub max_tokens: Option<usize>,
    /// Whether an empty or whitespace-only prompt/completion is an error
    /// (else a warning).
    pub empty_is_error: bool,
    /// At most this many errors and this many warnings are listed; all are
    /// counted.
    pub max_listed: usize,
    /// Scan every value for likely personal or secret data (warnings).
    pub scan_sensitive: bool,
    /// Warn about repeated examples. Every row's hash (24 bytes) is kept in
    /// a fixed buffer that spills sorted runs to a temporary file, so memory
    /// stays flat however large the dataset; the duplicates are reported when
    /// reading is done.
    pub detect_duplicates: bool,
}

impl Default for ValidationOptions {
    fn default() -> Self {
        Self {
            min_rows: 1,
            max_chars: None,
            max_tokens: None,
            empty_is_error: true,
            max_listed: 100,
            scan_sensitive: false,
            detect_duplicates: true,
        }
    }
}

/// Validates batches as they stream by and gathers statistics.
#[derive(Debug)]
pub struct Validator {
    file: String,
    options: ValidationOptions,
    log: ProblemLog,
    records: u64,
    null_systems: u64,
    prompt: LengthHistogram,
    completion: LengthHistogram,
    system: LengthHistogram,
    /// Every row's example hash, for duplicates (bounded memory: sorted
    /// runs spill to disk).
    dupes: Option<crate::dupes::DuplicateFinder>,
    fatal: bool,
    /// The training set's examples, when validating a validation set.
    training: Option<ExampleIndex>,
    tokens: Option<(Box<dyn TokenCounter>, [LengthHistogram; 4])>,
    truncated_rows: u64,
    cut_tokens: u64,
    /// The provider's rules, and which dataset this is.
    rules: Option<(DataRules, DatasetRole)>,
    /// Bytes of the provider's JSONL so far, when the rules limit them.
    upload_bytes: u64,
}

impl Validator {
    /// A validator for `file`.
    pub fn new(file: impl Into<String>, options: ValidationOptions) -> Self {
        let log = ProblemLog::new(options.max_listed);
        let dupes = options
            .detect_duplicates
            .then(|| crate::dupes::DuplicateFinder::new(crate::dupes::DEFAULT_BUFFER_ENTRIES));
        Self {
            file: file.into(),
            options,
            log,
            records: 0,
            null_systems: 0,
            prompt: LengthHistogram::default(),
            completion: LengthHistogram::default(),
            system: LengthHistogram::default(),
            dupes,
            fatal: false,
            training: None,
            tokens: None,
            truncated_rows: 0,
            cut_tokens: 0,
            rules: None,
            upload_bytes: 0,
        }
    }

    /// Applies a provider's rules to this dataset: its row limits (the
    /// training minimum replaces `min_rows`), the longest example (with the
    /// token counter; give the one the provider bills with), reserved
    /// strings, whether a validation set is taken, and the upload size.
    pub fn with_rules(mut self, rules: DataRules, role: DatasetRole) -> Self {
        if role == DatasetRole::Training {
            self.options.min_rows = self.options.min_rows.max(rules.min_training_rows);
        }
        if let Some(max) = rules.max_example_tokens {
            let max = usize::try_from(max).unwrap_or(usize::MAX);
            self.options.max_tokens = Some(self.options.max_tokens.map_or(max, |m| m.min(max)));
        }
        self.rules = Some((rules, role));
        self
    }

    /// Warns (`validation_overlap`) about rows also in `training`.
    pub fn against_training(mut self, training: ExampleIndex) -> Self {
        self.training = Some(training);
        self
    }

    /// Keeps at most `entries` row hashes in memory before spilling a sorted
    /// run to disk (tests use tiny buffers to cross the spill boundary).
    #[doc(hidden)]
    pub fn with_duplicate_buffer(mut self, entries: usize) -> Self {
        if self.dupes.is_some() {
            self.dupes = Some(crate::dupes::DuplicateFinder::new(entries));
        }
        self
    }

    /// Counts tokens with `counter` for the statistics.
    pub fn with_token_counter(mut self, counter: Box<dyn TokenCounter>) -> Self {
        self.tokens = Some((counter, Default::default()));
        self
    }

    /// Takes the examples seen (to check a validation set against); call it
    /// once reading is done. Duplicates are reported at this point (or by
    /// `finish`), after the problems found while reading.
    pub fn take_index(&mut self) -> ExampleIndex {
        self.resolve_duplicates(true)
    }

    /// Merges the hashes of every row: reports each row that repeats an
    /// earlier one (listing those with the lowest record numbers) and, when
    /// asked, builds the index of distinct examples.
    fn resolve_duplicates(&mut self, want_index: bool) -> ExampleIndex {
        let Some(finder) = self.dupes.take() else { return ExampleIndex::default() };
        let mut index = Vec::new();
        let cap = self.options.max_listed;
        // The `cap` duplicates with the lowest record numbers: a max-heap.
        let mut listed: std::collections::BinaryHeap<(u64, u64, u64)> =
            std::collections::BinaryHeap::with_capacity(cap + 1);
        let mut total = 0u64;
        let mut current: Option<(u64, u64)> = None;
        for e in finder.into_sorted() {
            match current {
                Some((hash, first)) if hash == e.hash => {
                    total += 1;
                    listed.push((e.row, e.line, first));
                    if listed.len() > cap {
                        listed.pop();
                    }
                }
                _ => {
                    current = Some((e.hash, e.row));
                    if want_index {
                        index.push((e.hash, e.row));
                    }
                }
            }
        }
        let listed = listed.into_sorted_vec();
        let unlisted = total - listed.len() as u64;
        for (row, line, first) in listed {
            let line = (line != u64::MAX).then_some(line);
            let message = format!("the same example as row {first}");
            self.problem(ProblemKind::Duplicate, Severity::Warning, row, line, None, message);
        }
        self.log.count_unlisted(ProblemKind::Duplicate, unlisted);
        ExampleIndex(index)
    }

    fn problem(
        &mut self,
        kind: ProblemKind,
        severity: Severity,
        row: u64,
        line: Option<u64>,
        column: Option<&str>,
        message: String,
    ) {
        self.log.push(Problem {
            kind,
            severity,
            file: Some(self.file.clone()),
            row: Some(row),
            line,
            column: column.map(str::to_owned),
            message,
        });
    }

    /// The length checks of one example's tokens: the limit (`too_long`,
    /// naming the column with the most tokens) and the counter's cut
    /// (`truncated`, or `too_long` when no completion token is left).
    fn check_example_tokens(
        &mut self,
        example: crate::ExampleTokens,
        columns: [(&str, u64); 3],
        row: u64,
        line: Option<u64>,
    ) {
        if let Some(max) = self.options.max_tokens
            && example.total > max as u64
        {
            let column = columns.iter().max_by_key(|(_, n)| *n).map(|(c, _)| *c);
            let message = format!("{} tokens, more than the limit of {max}", example.total);
            self.problem(ProblemKind::TooLong, Severity::Error, row, line, column, message);
        }
        if example.cut > 0 {
            self.truncated_rows += 1;
            self.cut_tokens += example.cut;
            let kept = example.total - example.cut;
            if example.nothing_left {
                let message = format!(
                    "{} tokens cut to {kept}: no completion token is left to learn from",
                    example.total
                );
                let column = Some(COMPLETION);
                self.problem(ProblemKind::TooLong, Severity::Error, row, line, column, message);
            } else {
                let message = format!("{} tokens, cut to {kept} for the max length", example.total);
                self.problem(ProblemKind::Truncated, Severity::Warning, row, line, None, message);
            }
        }
    }

    /// The provider's per-row rules: reserved strings, the upload's bytes.
    fn check_rules(
        &mut self,
        prompt: &str,
        completion: &str,
        system: Option<&str>,
        row: u64,
        line: Option<u64>,
    ) {
        let Some((rules, _)) = &self.rules else { return };
        let mut found = Vec::new();
        for (column, value) in
            [(PROMPT, Some(prompt)), (COMPLETION, Some(completion)), (SYSTEM, system)]
        {
            if let Some(reserved) = value.and_then(|v| rules.reserved_in(v)) {
                let message = format!(
                    "`{reserved}` is reserved by {} and refused in training data",
                    rules.family
                );
                found.push((column, message));
            }
        }
        if rules.max_upload_bytes.is_some() {
            let line = crate::write::jsonl_line(
                crate::OutputFormat::OpenAiChat,
                prompt,
                completion,
                system,
            );
            self.upload_bytes += line.to_string().len() as u64 + 1;
        }
        for (column, message) in found {
            self.problem(
                ProblemKind::ReservedText,
                Severity::Error,
                row,
                line,
                Some(column),
                message,
            );
        }
    }

    /// A `too_long` error when the row's total exceeds `max`, naming the
    /// column that contributes most.
    fn check_length(
        &mut self,
        counts: [(&str, u64); 3],
        max: Option<usize>,
        unit: &str,
        row: u64,
        line: Option<u64>,
    ) {
        let Some(max) = max else { return };
        let total: u64 = counts.iter().map(|(_, n)| n).sum();
        if total > max as u64 {
            let column = counts.iter().max_by_key(|(_, n)| *n).map(|(c, _)| *c);
            let message = format!("{total} {unit}, more than the limit of {max}");
            self.problem(ProblemKind::TooLong, Severity::Error, row, line, column, message);
        }
    }

    /// Checks one batch.
    pub fn add(&mut self, batch: &DataBatch) {
        self.records += batch.records;
        for p in &batch.problems {
            self.log.push(p.clone());
        }
        let columns = (
            batch.batch.column(0).as_string::<i32>(),
            batch.batch.column(1).as_string::<i32>(),
            batch.batch.column(2).as_string::<i32>(),
        );
        let (prompts, completions, systems): (&StringArray, &StringArray, &StringArray) = columns;
        let empty_severity =
            if self.options.empty_is_error { Severity::Error } else { Severity::Warning };
        for i in 0..batch.batch.num_rows() {
            let row = batch.rows.get(i).copied().unwrap_or(0);
            let line = batch.lines.as_ref().and_then(|l| l.get(i).copied());
            let prompt = prompts.value(i);
            let completion = completions.value(i);
            let system = systems.is_valid(i).then(|| systems.value(i));
            let (pc, cc) = (prompt.chars().count() as u64, completion.chars().count() as u64);
            self.prompt.add(pc);
            self.completion.add(cc);
            let sc = match system {
                Some(s) => {
                    let n = s.chars().count() as u64;
                    self.system.add(n);
                    n
                }
                None => {
                    self.null_systems += 1;
                    0
                }
            };
            for (column, value) in [(PROMPT, prompt), (COMPLETION, completion)] {
                if value.trim().is_empty() {
                    let what = if value.is_empty() { "empty" } else { "whitespace only" };
                    self.problem(
                        ProblemKind::EmptyValue,
                        empty_severity,
                        row,
                        line,
                        Some(column),
                        format!("`{column}` is {what}"),
                    );
                }
            }
            let chars = [(PROMPT, pc), (COMPLETION, cc), (SYSTEM, sc)];
            self.check_length(chars, self.options.max_chars, "characters", row, line);
            let mut row_tokens = None;
            if let Some((counter, [tp, tc, ts, tr])) = &mut self.tokens {
                let (a, b) = (counter.count(prompt) as u64, counter.count(completion) as u64);
                let c = system.map(|s| counter.count(s) as u64);
                tp.add(a);
                tc.add(b);
                if let Some(c) = c {
                    ts.add(c);
                }
                let example = counter.example(system, prompt, completion);
                tr.add(example.total);
                row_tokens =
                    Some((example, [(PROMPT, a), (COMPLETION, b), (SYSTEM, c.unwrap_or(0))]));
            }
            if let Some((example, columns)) = row_tokens {
                self.check_example_tokens(example, columns, row, line);
            }
            self.check_rules(prompt, completion, system, row, line);
            if self.options.scan_sensitive {
                for (column, value) in
                    [(PROMPT, Some(prompt)), (COMPLETION, Some(completion)), (SYSTEM, system)]
                {
                    let Some(value) = value else { continue };
                    for finding in crate::sensitive::scan(value) {
                        self.problem(
                            ProblemKind::SensitiveData,
                            Severity::Warning,
                            row,
                            line,
                            Some(column),
                            format!(
                                "looks like a {}: {}",
                                finding.kind,
                                crate::sensitive::masked(value, &finding)
                            ),
                        );
                    }
                }
            }
            let hash = example_hash(0, prompt, completion, system);
            if let Some(training_row) = self.training.as_ref().and_then(|t| t.get(hash)) {
                self.problem(
                    ProblemKind::ValidationOverlap,
                    Severity::Warning,
                    row,
                    line,
                    None,
                    format!("the same example is training row {training_row}"),
                );
            }
            if let Some(dupes) = &mut self.dupes {
                dupes.push(crate::dupes::Entry { hash, row, line: line.unwrap_or(u64::MAX) });
            }
        }
    }

    /// Records a problem that stopped the file from being read further.
    pub fn fatal(&mut self, problem: Problem) {
        self.fatal = true;
        self.log.push(problem);
    }

    /// The report and the statistics.
    pub fn finish(mut self) -> (ValidationReport, Statistics) {
        self.resolve_duplicates(false);
        let rows = self.prompt.count();
        // A file that could not be read says so already; "too few rows" on
        // top of it would only be noise.
        if !self.fatal && (self.records < self.options.min_rows || rows == 0) {
            let message = if self.records == 0 {
                "the dataset has no rows".to_owned()
            } else {
                format!(
                    "{rows} readable row(s); at least {} required",
                    self.options.min_rows.max(1)
                )
            };
            self.log.push(Problem::error(ProblemKind::TooFewRows, &self.file, message));
        }
        self.finish_rules(rows);
        let stats = Statistics {
            rows,
            null_systems: self.null_systems,
            prompt_chars: self.prompt.stats(),
            completion_chars: self.completion.stats(),
            system_chars: self.system.stats(),
            tokens: self.tokens.as_ref().map(|(_, [p, c, s, r])| TokenStats {
                prompt: p.stats(),
                completion: c.stats(),
                system: s.stats(),
                per_row: r.stats(),
                truncated_rows: self.truncated_rows,
                cut_tokens: self.cut_tokens,
            }),
        };
        (self.log.into_report(self.file, self.records), stats)
    }

    /// The provider's whole-file rules.
    fn finish_rules(&mut self, rows: u64) {
        let Some((rules, role)) = &self.rules else { return };
        let mut found = Vec::new();
        let max_rows = match role {
            DatasetRole::Training => rules.max_training_rows,
            DatasetRole::Validation => rules.max_validation_rows,
        };
        if let Some(max) = max_rows
            && rows > max
        {
            let which = if *role == DatasetRole::Training { "training" } else { "validation" };
            found.push((
                ProblemKind::TooManyRows,
                format!("{rows} rows; {} takes at most {max} {which} rows", rules.family),
            ));
        }
        if *role == DatasetRole::Validation && !rules.validation {
            found.push((
                ProblemKind::ValidationNotAccepted,
                format!("{} ({}) takes no validation set", rules.family, rules.base_model),
            ));
        }
        if let Some(max) = rules.max_upload_bytes
            && self.upload_bytes > max
        {
            found.push((
                ProblemKind::TooLarge,
                format!(
                    "the JSONL to upload would be {} bytes; {} takes at most {max}",
                    self.upload_bytes, rules.family
                ),
            ));
        }
        for (kind, message) in found {
            self.log.push(Problem::error(kind, &self.file, message));
        }
    }

    /// Whether an error was found so far.
    pub fn has_errors(&self) -> bool {
        self.log.has_errors()
    }
}

/// Reads and validates a whole local dataset (see [`crate::localize`] for
/// remote ones).
pub fn validate(
    source: &finetune_core::DatasetSource,
    options: ValidationOptions,
) -> Result<(ValidationReport, Statistics), DataError> {
    let dataset = crate::LocalDataset::local(source)?;
    validate_with(&dataset, Validator::new(source.location.to_string(), options))
        .map(Validator::finish)
}

/// Reads `dataset` through `validator` and hands the validator back, so
/// callers can take its [`Validator::take_index`] before finishing it.
pub fn validate_with(
    dataset: &crate::LocalDataset,
    mut validator: Validator,
) -> Result<Validator, DataError> {
    let batches = match dataset.open() {
        Ok(batches) => batches,
        Err(DataError::Invalid(problem)) => {
            validator.fatal(*problem);
            return Ok(validator);
        }
        Err(e) => return Err(e),
    };
    for batch in batches {
        match batch {
            Ok(batch) => validator.add(&batch),
            // What was read before the damage stays in the report.
            Err(DataError::Invalid(problem)) => {
                validator.fatal(*problem);
                break;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(validator)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{CharsPerToken, LengthStats};

    fn validate_text(text: &str, options: ValidationOptions) -> (ValidationReport, Statistics) {
        let reader = crate::JsonlReader::new(text.as_bytes(), "t.jsonl", Default::default());
        let mut v =
            Validator::new("t.jsonl", options).with_token_counter(Box::new(CharsPerToken(4.0)));
        for b in reader {
            v.add(&b.unwrap());
        }
        v.finish()
    }

    #[test]
    fn too_long_by_tokens_names_the_longest_column() {
        let text = "{\"prompt\":\"short\",\"completion\":\"a much longer completion text here\"}\n\
                    {\"prompt\":\"ok\",\"completion\":\"ok\"}\n";
        let options = ValidationOptions { max_tokens: Some(8), ..ValidationOptions::default() };
        let (report, stats) = validate_text(text, options);
        let p: Vec<_> = report.problems(ProblemKind::TooLong).collect();
        assert_eq!(p.len(), 1, "{report}");
        assert_eq!(
            (p[0].row, p[0].line, p[0].column.as_deref()),
            (Some(1), Some(1), Some(COMPLETION))
        );
        assert!(p[0].message.contains("11 tokens"), "{}", p[0].message);
        let tokens = stats.tokens.unwrap();
        assert_eq!(tokens.per_row.total, 11 + 2);
        assert_eq!(tokens.billed_tokens(3), 39);
    }

    #[test]
    fn duplicates_across_spilled_runs_match_the_in_memory_answer() {
        // 300 rows over 37 distinct examples, so most rows repeat one.
        let text: String = (0..300)
            .map(|i| format!("{{\"prompt\":\"p{}\",\"completion\":\"c\"}}\n", (i * 7) % 37))
            .collect();
        let run = |buffer: usize, max_listed: usize| {
            let options = ValidationOptions { max_listed, ..ValidationOptions::default() };
            let reader = crate::JsonlReader::new(text.as_bytes(), "t.jsonl", Default::default());
            let mut v = Validator::new("t.jsonl", options).with_duplicate_buffer(buffer);
            for b in reader {
                v.add(&b.unwrap());
            }
            let index = v.take_index();
            (v.finish().0, index)
        };
        let (big, index) = run(1 << 20, 1000);
        let (small, small_index) = run(5, 1000);
        assert_eq!(big, small);
        assert_eq!(index.len(), 37);
        assert_eq!(small_index.len(), 37);
        assert_eq!(big.counts[&ProblemKind::Duplicate], 300 - 37);
        // Each duplicate names the first row of its example, and the line.
        let first = big.problems(ProblemKind::Duplicate).next().unwrap();
        assert_eq!((first.row, first.line), (Some(38), Some(38)));
        assert!(first.message.ends_with("row 1"), "{}", first.message);
        // With a cap, the lowest rows are listed and all are counted.
        let (capped, _) = run(5, 3);
        let rows: Vec<_> = capped.problems(ProblemKind::Duplicate).map(|p| p.row).collect();
        assert_eq!(rows, [Some(38), Some(39), Some(40)]);
        assert_eq!(capped.counts[&ProblemKind::Duplicate], 263);
        assert!(capped.truncated);
    }

    #[test]
    fn duplicates_are_optional() {
        let line = "{\"prompt\":\"p\",\"completion\":\"c\"}\n";
        let text = line.repeat(3);
        let (report, _) = validate_text(&text, ValidationOptions::default());
        let rows: Vec<_> = report.problems(ProblemKind::Duplicate).map(|p| p.row).collect();
        assert_eq!(rows, [Some(2), Some(3)]);
        assert!(report.problems(ProblemKind::Duplicate).all(|p| p.message.contains("row 1")));
        let options =
            ValidationOptions { detect_duplicates: false, ..ValidationOptions::default() };
        assert!(!validate_text(&text, options).0.has(ProblemKind::Duplicate));
    }

    #[test]
    fn percentiles_are_exact() {
        let mut h = LengthHistogram::default();
        for len in 1..=100 {
            h.add(len);
        }
        h.add(1_000_000);
        let s = h.stats();
        assert_eq!((s.count, s.min, s.median, s.p95, s.max), (101, 1, 51, 96, 1_000_000));
        assert_eq!(LengthHistogram::default().stats(), LengthStats::default());
    }
}
