//! The README's main command: validates the built-in sample dataset, prints
//! its statistics, and reports the libtorch runtime the local trainer will
//! use.

use finetune_core::ColumnMapping;
use finetune_data::{JsonlReader, ValidationOptions, Validator};
use finetune_examples::{SAMPLE_DATASET, SAMPLE_DATASET_NAME};
use finetune_local::RuntimeInfo;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let reader =
        JsonlReader::new(SAMPLE_DATASET.as_bytes(), SAMPLE_DATASET_NAME, ColumnMapping::default());
    let mut validator = Validator::new(
        SAMPLE_DATASET_NAME,
        ValidationOptions { min_rows: 10, ..Default::default() },
    );
    for batch in reader {
        validator.add(&batch?);
    }
    let (report, stats) = validator.finish();
    println!("== validation\n{report}");
    println!("== statistics\n{stats}");
    println!("== runtime\n{}", RuntimeInfo::detect());
    if !report.valid {
        return Err("the built-in dataset is invalid".into());
    }
    Ok(())
}
