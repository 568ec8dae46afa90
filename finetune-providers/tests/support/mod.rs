//! What the provider tests share.
#![allow(clippy::unwrap_used, dead_code, unreachable_pub)]

use std::path::Path;

use finetune_core::DatasetSource;

/// A JSONL dataset of `rows` "What is i plus one?" examples, every third
/// with a system message.
pub fn write_dataset(dir: &Path, name: &str, rows: usize) -> DatasetSource {
    let path = dir.join(name);
    let mut text = String::new();
    for i in 0..rows {
        let system = if i % 3 == 0 { r#","system":"Answer in words.""# } else { "" };
        text.push_str(&format!(
            "{{\"prompt\":\"What is {i} plus one?\",\"completion\":\"{}\"{system}}}\n",
            i + 1
        ));
    }
    std::fs::write(&path, text).unwrap();
    DatasetSource::new(path.to_str().unwrap()).unwrap()
}
