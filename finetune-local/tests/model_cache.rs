//! Models preloaded into a hub-layout cache load offline, by id.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use finetune_local::tch::{self, Tensor};
use finetune_local::{
    CausalLm, ForwardInput, LoadOptions, LocalError, ModelCache, ModelId, locate,
};

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models").join(name)
}

#[test]
fn preloaded_model_resolves_and_loads_by_id() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = ModelCache::at(tmp.path());
    let id = ModelId::parse("tiny-org/tiny-mistral").unwrap();
    let snapshot = cache.preload(&fixture("mistral"), &id).unwrap();

    // The hub layout: refs/main → snapshots/<commit>, files linked to blobs.
    let repo = tmp.path().join("models--tiny-org--tiny-mistral");
    let commit = std::fs::read_to_string(repo.join("refs/main")).unwrap();
    assert_eq!(snapshot, repo.join("snapshots").join(&commit));
    assert_eq!(commit.len(), 40);
    let shard = snapshot.join("model-00003-of-00007.safetensors");
    assert_eq!(
        std::fs::read(&shard).unwrap(),
        std::fs::read(fixture("mistral").join("model-00003-of-00007.safetensors")).unwrap()
    );
    #[cfg(unix)]
    assert!(std::fs::symlink_metadata(&shard).unwrap().file_type().is_symlink());

    // Preloading the same files again changes nothing.
    assert_eq!(cache.preload(&fixture("mistral"), &id).unwrap(), snapshot);
    let blobs = std::fs::read_dir(repo.join("blobs")).unwrap().count();
    assert_eq!(blobs, std::fs::read_dir(fixture("mistral")).unwrap().count());

    // By id, by id@commit, and the same logits as from the source directory.
    let dir = locate("tiny-org/tiny-mistral", &cache).unwrap();
    assert_eq!(dir, snapshot);
    assert_eq!(locate(&format!("tiny-org/tiny-mistral@{commit}"), &cache).unwrap(), snapshot);
    let ids = Tensor::from_slice(&[0i64, 40, 41, 42]).view([1, -1]);
    let from_cache = CausalLm::load(&dir, &LoadOptions::default()).unwrap();
    let from_source = CausalLm::load(&fixture("mistral"), &LoadOptions::default()).unwrap();
    let a = tch::no_grad(|| from_cache.forward(&ForwardInput::new(&ids), None)).unwrap();
    let b = tch::no_grad(|| from_source.forward(&ForwardInput::new(&ids), None)).unwrap();
    assert!(a.equal(&b));

    // A named revision.
    let v2 = ModelId::parse("tiny-org/tiny-mistral@v2").unwrap();
    cache.preload(&fixture("qwen2"), &v2).unwrap();
    let dir = locate("tiny-org/tiny-mistral@v2", &cache).unwrap();
    assert!(std::fs::read_to_string(dir.join("config.json")).unwrap().contains("qwen2"));
    assert_eq!(locate("tiny-org/tiny-mistral", &cache).unwrap(), snapshot);
}

#[test]
fn misses_say_where_they_looked() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = ModelCache::at(tmp.path());
    let err = locate("meta-llama/Llama-3.2-1B", &cache).unwrap_err();
    let LocalError::ModelNotFound { id, searched } = &err else { panic!("{err}") };
    assert_eq!(id, "meta-llama/Llama-3.2-1B");
    assert!(
        searched.iter().any(|p| p.ends_with("models--meta-llama--Llama-3.2-1B/refs/main")),
        "{searched:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("preload") && message.contains(tmp.path().to_str().unwrap()),
        "{message}"
    );

    let err = locate("not a model", &cache).unwrap_err();
    assert!(matches!(err, LocalError::ModelNotFound { .. }), "{err}");
    assert!(cache.preload(tmp.path(), &ModelId::parse("a/b").unwrap()).is_err());
}

#[test]
fn cache_root_follows_hf_environment_variables() {
    // Edition 2024 makes `set_var` unsafe (and the workspace forbids unsafe
    // code), so the variables are set on a child process that runs the
    // helper test below.
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args(["--exact", "print_cache_root", "--nocapture", "--include-ignored"])
        .env("HF_HUB_CACHE", "")
        .env("HF_HOME", "/srv/hf")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("cache root: /srv/hf/hub"), "{stdout}");
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "print_cache_root", "--nocapture", "--include-ignored"])
        .env("HF_HUB_CACHE", "/mnt/models")
        .env("HF_HOME", "/srv/hf")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("cache root: /mnt/models"));
}

#[test]
#[ignore = "helper run by cache_root_follows_hf_environment_variables in a child process"]
fn print_cache_root() {
    println!("cache root: {}", ModelCache::from_env().root().display());
}
