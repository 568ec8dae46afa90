//! The CPU tensors' memory cache (`train::HostCache`): a released block
//! serves the next request of a like size, blocks idle for a whole step go
//! back, the last guard puts libtorch's allocator back, and training
//! through the cache gives the adapters it gives without. One process of
//! its own: the cache is process-wide, so its counters are read here with
//! no other test allocating beside them.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use finetune_local::lora::LoraConfig;
use finetune_local::sft::{Example, PromptFormat, TokenizeOptions, Truncation, tokenize_all};
use finetune_local::tch::{self, Device, Kind, Tensor};
use finetune_local::train::{HostCache, Method, Schedule, TrainConfig, Trainer};
use finetune_local::{CausalLm, LoadOptions, Tokenizer};

/// The two tests take turns: both read the process's counters.
static TURN: Mutex<()> = Mutex::new(());

fn turn() -> std::sync::MutexGuard<'static, ()> {
    TURN.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn floats(n: i64) -> Tensor {
    Tensor::ones([n], (Kind::Float, Device::Cpu))
}

#[test]
fn a_released_block_serves_the_next_like_request_until_a_step_passes_without_it() {
    let _turn = turn();
    assert!(!HostCache::stats().installed);
    let cache = HostCache::install().unwrap();
    let start = HostCache::stats();
    assert!(start.installed);

    // 4 MB, released: kept, not freed.
    let a = floats(1_000_000);
    let block = a.data_ptr();
    drop(a);
    let kept = HostCache::stats();
    assert!(kept.idle_bytes >= 4_000_000, "{kept:?}");

    // A request a few rows smaller gets the same block, filled anew.
    let b = floats(990_000);
    assert_eq!(b.data_ptr(), block);
    let reused = HostCache::stats();
    assert_eq!(f64::try_from(b.sum(Kind::Float)).unwrap(), 990_000.0);
    assert_eq!(reused.hits, kept.hits + 1);
    // 4 MB and 3.96 MB both round to 4 MiB (eight sizes a power of two).
    assert_eq!(reused.idle_bytes, kept.idle_bytes - 4_194_304);
    assert_eq!(reused.live_bytes, kept.live_bytes + 4_194_304);

    // One twice the size does not: a new block.
    let c = floats(2_000_000);
    assert_ne!(c.data_ptr(), block);
    assert_eq!(HostCache::stats().misses, reused.misses + 1);
    drop((b, c));

    // Released during this step: kept over its tick; idle through the
    // next step: freed at its tick.
    cache.tick();
    assert!(HostCache::stats().idle_bytes >= 12_000_000);
    cache.tick();
    assert_eq!(HostCache::stats().idle_bytes, 0);

    // Small tensors go to malloc as before.
    let small = floats(1000);
    drop(small);
    assert_eq!(HostCache::stats().idle_bytes, 0);

    // A block still held when the last guard goes is freed on release.
    let second = HostCache::install().unwrap();
    let held = floats(1_000_000);
    drop(cache);
    assert!(HostCache::stats().installed, "one guard is still alive");
    drop(second);
    let after = HostCache::stats();
    assert!(!after.installed);
    assert_eq!(after.idle_bytes, 0);
    assert!(after.live_bytes >= 4_000_000);
    drop(held);
    let end = HostCache::stats();
    assert_eq!(end.idle_bytes, 0);
    assert_eq!(end.live_bytes, after.live_bytes - 4_194_304);

    // Tensors made now come from libtorch's own allocator.
    let d = floats(1_000_000);
    drop(d);
    assert_eq!(HostCache::stats().idle_bytes, 0);
}

fn dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models").join(name)
}

fn train(cache_host_memory: bool) -> Vec<(String, Tensor)> {
    let tok = Tokenizer::from_dir(&dir("llama")).unwrap();
    let examples: Vec<Example> = (0..16)
        .map(|i| Example {
            system: None,
            prompt: format!("Item {i}:"),
            completion: " the cat sat on a mat".repeat(1 + i % 4),
        })
        .collect();
    let options = TokenizeOptions {
        format: PromptFormat::Base,
        max_length: 64,
        truncation: Truncation::KeepStart,
    };
    let data = tokenize_all(&tok, &examples, &options).unwrap().0;
    let mut model = CausalLm::load(&dir("llama"), &LoadOptions::default()).unwrap();
    let config = TrainConfig {
        method: Method::Lora(LoraConfig {
            r: 4,
            alpha: 8.0,
            dropout: 0.1,
            target_modules: vec!["q_proj".into(), "v_proj".into(), "down_proj".into()],
            use_rslora: false,
        }),
        epochs: 2,
        batch_size: 4,
        micro_batch_size: 2,
        learning_rate: 1e-2,
        schedule: Schedule::Constant,
        max_length: 64,
        cache_host_memory,
        ..TrainConfig::default()
    };
    tch::manual_seed(0);
    Trainer::new(&mut model, config).unwrap().fit(&data, &[]).unwrap();
    model.peft_state()
}

#[test]
fn training_through_the_cache_gives_the_adapters_training_without_it_gives() {
    let _turn = turn();
    let before = HostCache::stats();
    let without = train(false);
    assert_eq!(HostCache::stats().hits, before.hits, "the cache was not used");
    let with = train(true);
    let after = HostCache::stats();
    assert!(after.hits > before.hits, "{after:?}");
    assert!(!after.installed, "the trainer's guard is gone with its run");
    assert_eq!(with.len(), without.len());
    for ((name, a), (_, b)) in with.iter().zip(&without) {
        assert!(a.equal(b), "{name} differs");
    }
}
