//! Runnable examples of the finetune workspace, and the small built-in data
//! they share. Run one with `cargo run -p finetune-examples --example NAME`.

/// The built-in sample dataset: reversing words letter by letter, a task a
/// small model visibly learns. JSON Lines with `prompt`, `completion` and, on
/// two rows out of three, `system`.
pub const SAMPLE_DATASET: &str = include_str!("../data/reverse-words.jsonl");

/// The name the sample dataset goes by in reports.
pub const SAMPLE_DATASET_NAME: &str = "builtin:reverse-words.jsonl";

pub mod args;
pub mod remote;
pub mod tickets;

use finetune_core::{ColumnMapping, DatasetFormat, DatasetSource};

/// Builds a dataset source from a path or URL and the shared mapping flags
/// (`--format`, `--prompt`, `--completion`, `--system`).
pub fn dataset_source(usage: &str, location: &str, args: &args::Args) -> DatasetSource {
    let mut source =
        DatasetSource::new(location).unwrap_or_else(|e| args::usage_error(usage, &e.to_string()));
    if let Some(format) = args.parsed::<DatasetFormat>(usage, "format") {
        source = source.with_format(format);
    }
    let defaults = ColumnMapping::default();
    source.with_columns(ColumnMapping {
        prompt: args.value("prompt").map_or(defaults.prompt, str::to_owned),
        completion: args.value("completion").map_or(defaults.completion, str::to_owned),
        system: args.value("system").map(str::to_owned).or(defaults.system),
    })
}

/// The flags that take a value in every dataset tool.
pub const MAPPING_FLAGS: [&str; 4] = ["format", "prompt", "completion", "system"];

/// Runs a future to completion on a fresh multi-threaded runtime (the
/// examples are synchronous programs; object stores are async).
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt.block_on(future),
        Err(e) => {
            eprintln!("error: starting a runtime: {e}");
            std::process::exit(1)
        }
    }
}

/// Makes a dataset readable locally, fetching it when it is behind an
/// object-store URL (credentials and endpoints from the usual `AWS_*`,
/// `AZURE_*` and `GOOGLE_*` variables). Exits with status 1 on failure.
pub fn localize_or_exit(source: &DatasetSource) -> finetune_data::LocalDataset {
    block_on(finetune_data::localize(source, &finetune_data::ObjectStores::new())).unwrap_or_else(
        |e| {
            eprintln!("error: {e}");
            std::process::exit(1)
        },
    )
}

/// A number from 0 to 999 in English words (`342` → `three hundred
/// forty-two`): the quickstart's task, rule-based so that a small model
/// learns it from examples and the held-out numbers show whether it
/// generalises.
pub fn number_in_words(n: u32) -> String {
    const ONES: [&str; 20] = [
        "zero",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        "eleven",
        "twelve",
        "thirteen",
        "fourteen",
        "fifteen",
        "sixteen",
        "seventeen",
        "eighteen",
        "nineteen",
    ];
    const TENS: [&str; 10] =
        ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"];
    let below_hundred = |n: u32| -> String {
        match n {
            0..20 => ONES[n as usize].to_owned(),
            _ if n.is_multiple_of(10) => TENS[(n / 10) as usize].to_owned(),
            _ => format!("{}-{}", TENS[(n / 10) as usize], ONES[(n % 10) as usize]),
        }
    };
    match n {
        0..100 => below_hundred(n),
        _ if n.is_multiple_of(100) => format!("{} hundred", ONES[(n / 100) as usize % 20]),
        _ => format!("{} hundred {}", ONES[(n / 100) as usize % 20], below_hundred(n % 100)),
    }
}

/// The cargo features this build of the examples has (`kubernetes`,
/// `distributed`): they decide what `finetune_local` can run.
pub fn features() -> Vec<&'static str> {
    let mut features = Vec::new();
    if cfg!(feature = "kubernetes") {
        features.push("kubernetes");
    }
    if cfg!(feature = "distributed") {
        features.push("distributed");
    }
    features
}

/// What `--version` prints: the program, the package version and the
/// features, e.g. `finetune_local 0.1.0 (features: distributed)`.
pub fn version_line() -> String {
    let program = std::env::args()
        .next()
        .and_then(|p| {
            std::path::Path::new(&p).file_stem().map(|s| s.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "finetune-examples".to_owned());
    let features = features();
    let features = if features.is_empty() { "none".to_owned() } else { features.join(", ") };
    format!("{program} {} (features: {features})", env!("CARGO_PKG_VERSION"))
}
