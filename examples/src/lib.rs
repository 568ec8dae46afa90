//! Runnable examples of the finetune workspace, and the small built-in data
//! they share. Run one with `cargo run -p finetune-examples --example NAME`.

/// The built-in sample dataset: reversing words letter by letter, a task a
/// small model visibly learns. JSON Lines with `prompt`, `completion` and, on
/// two rows out of three, `system`.
pub const SAMPLE_DATASET: &str = include_str!("../data/reverse-words.jsonl");

/// The name the sample dataset goes by in reports.
pub const SAMPLE_DATASET_NAME: &str = "builtin:reverse-words.jsonl";
