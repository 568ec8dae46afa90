//! Datasets in the workspace's canonical schema (see `finetune-data`) as
//! training [`Example`]s.

use arrow_array::{Array, StringArray};
use finetune_core::{DatasetSource, Error, Location};
use finetune_data::{BatchIter, COMPLETION, PROMPT, SYSTEM, Severity};

use crate::error::Result;
use crate::sft::Example;

/// Reads a local dataset (a path or `file://` URL; fetch remote ones with
/// `finetune_data::localize` first) into examples. A row the reader could
/// not read is an error naming the file, row, line and column.
pub fn read_examples(source: &DatasetSource) -> Result<Vec<Example>> {
    let batches = finetune_data::open(source).map_err(Error::from)?;
    examples_from(batches)
}

/// Collects examples from a stream of canonical batches.
pub fn examples_from(batches: BatchIter) -> Result<Vec<Example>> {
    let mut out = Vec::new();
    for batch in batches {
        let batch = batch.map_err(Error::from)?;
        if let Some(p) = batch.problems.iter().find(|p| p.severity == Severity::Error) {
            let location = Location {
                file: p.file.clone(),
                row: p.row,
                line: p.line,
                column: p.column.clone(),
            };
            return Err(Error::invalid_at(location, p.message.clone()).into());
        }
        let column = |name: &str| -> Result<&StringArray> {
            batch
                .batch
                .column_by_name(name)
                .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                .ok_or_else(|| {
                    Error::invalid_at(
                        Location::column(name),
                        "not a text column of the canonical schema",
                    )
                    .into()
                })
        };
        let (prompt, completion) = (column(PROMPT)?, column(COMPLETION)?);
        let system = batch
            .batch
            .column_by_name(SYSTEM)
            .and_then(|c| c.as_any().downcast_ref::<StringArray>());
        for i in 0..batch.batch.num_rows() {
            out.push(Example {
                system: system.filter(|s| s.is_valid(i)).map(|s| s.value(i).to_owned()),
                prompt: prompt.value(i).to_owned(),
                completion: completion.value(i).to_owned(),
            });
        }
    }
    Ok(out)
}
