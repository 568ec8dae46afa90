//! The local model cache, in the HuggingFace hub layout, for air-gapped sites.
//!
//! A cache holds `models--{org}--{name}/refs/{revision}` (a file holding a
//! commit hash), `snapshots/{commit}/…` (the model's files, usually
//! symlinks) and `blobs/{hash}` (the file contents). This is the layout
//! `huggingface_hub` writes, so a cache filled by `huggingface-cli download`
//! on a connected machine and copied over works as is, and a cache
//! [preloaded](ModelCache::preload) here is read by transformers too.
//!
//! Nothing here touches the network.

use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{LocalError, Result};

/// A model id on the hub, `org/name`, with an optional revision (a branch,
/// a tag or a commit hash; `main` when absent).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModelId {
    /// `org/name` (or a bare `name`).
    pub repo: String,
    /// The revision, when one was asked for.
    pub revision: Option<String>,
}

impl ModelId {
    /// Parses `org/name` or `org/name@revision`.
    pub fn parse(spec: &str) -> Result<Self> {
        let (repo, revision) = match spec.split_once('@') {
            Some((repo, rev)) => (repo, Some(rev.to_owned())),
            None => (spec, None),
        };
        let valid_part = |p: &str| {
            !p.is_empty()
                && p != "."
                && p != ".."
                && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        let parts: Vec<&str> = repo.split('/').collect();
        if parts.len() > 2 || !parts.iter().all(|p| valid_part(p)) {
            return Err(LocalError::InvalidArgument(format!(
                "`{spec}` is neither a model directory nor a model id like `org/name[@revision]`"
            )));
        }
        if revision.as_deref().is_some_and(|r| r.is_empty() || r.contains("..")) {
            return Err(LocalError::InvalidArgument(format!("`{spec}` has an invalid revision")));
        }
        Ok(Self { repo: repo.to_owned(), revision })
    }

    /// The revision to resolve: the one asked for, else `main`.
    pub fn revision(&self) -> &str {
        self.revision.as_deref().unwrap_or("main")
    }

    /// The cache folder name, `models--org--name`.
    pub fn folder_name(&self) -> String {
        format!("models--{}", self.repo.replace('/', "--"))
    }
}

impl std::fmt::Display for ModelId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.revision {
            Some(rev) => write!(f, "{}@{rev}", self.repo),
            None => f.write_str(&self.repo),
        }
    }
}

/// A hub-layout model cache on local disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelCache {
    root: PathBuf,
}

impl ModelCache {
    /// The cache at `root` (the folder holding `models--…` folders).
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The cache HF's own tools use: `HF_HUB_CACHE`, else `HF_HOME/hub`,
    /// else `XDG_CACHE_HOME/huggingface/hub`, else
    /// `~/.cache/huggingface/hub`.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        let root = var("HF_HUB_CACHE")
            .or_else(|| var("HF_HOME").map(|h| h.join("hub")))
            .or_else(|| var("XDG_CACHE_HOME").map(|c| c.join("huggingface").join("hub")))
            .or_else(|| var("HOME").map(|h| h.join(".cache").join("huggingface").join("hub")))
            .unwrap_or_else(|| PathBuf::from(".cache/huggingface/hub"));
        Self { root }
    }

    /// The cache's root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The snapshot folder of `id`, offline. A revision that is a commit
    /// hash with a snapshot is used directly; otherwise `refs/{revision}`
    /// names the commit.
    pub fn resolve(&self, id: &ModelId) -> Result<PathBuf> {
        let repo_dir = self.root.join(id.folder_name());
        let snapshots = repo_dir.join("snapshots");
        let rev = id.revision();
        let mut searched = Vec::new();
        if is_commit_hash(rev) {
            let dir = snapshots.join(rev);
            if dir.is_dir() {
                return Ok(dir);
            }
            searched.push(dir);
        }
        let ref_file = repo_dir.join("refs").join(rev);
        match fs::read_to_string(&ref_file) {
            Ok(commit) => {
                let commit = commit.trim();
                let dir = snapshots.join(commit);
                if is_commit_hash(commit) && dir.is_dir() {
                    return Ok(dir);
                }
                searched.push(ref_file);
                searched.push(dir);
            }
            Err(_) => searched.push(ref_file),
        }
        Err(LocalError::ModelNotFound { id: id.to_string(), searched })
    }

    /// Copies the model in `source` (a directory of model files, e.g. what
    /// `save_pretrained` wrote, or a snapshot on a USB stick) into the cache
    /// as `id`, and points `refs/{revision}` at it. Returns the snapshot
    /// folder. Files become content-addressed blobs with relative symlinks
    /// from the snapshot (copies where symlinks are unavailable), as
    /// `huggingface_hub` lays them out; the commit name is derived from the
    /// content, so preloading the same files twice is a no-op. A crash
    /// midway leaves no half-written snapshot behind.
    pub fn preload(&self, source: &Path, id: &ModelId) -> Result<PathBuf> {
        if !source.join("config.json").is_file() {
            return Err(LocalError::invalid(
                source,
                None,
                "is not a model directory (no config.json)",
            ));
        }
        let repo_dir = self.root.join(id.folder_name());
        let blobs = repo_dir.join("blobs");
        fs::create_dir_all(&blobs).map_err(|e| LocalError::io(&blobs, e))?;

        let mut files = Vec::new();
        collect_files(source, Path::new(""), &mut files)?;
        files.sort();
        let mut manifest = Sha256::new();
        let mut entries = Vec::with_capacity(files.len());
        for rel in files {
            let path = source.join(&rel);
            let hash = hash_file(&path)?;
            let blob = blobs.join(&hash);
            if !blob.is_file() {
                let partial = blobs.join(format!("{hash}.incomplete.{}", std::process::id()));
                fs::copy(&path, &partial).map_err(|e| LocalError::io(&path, e))?;
                fs::rename(&partial, &blob).map_err(|e| LocalError::io(&blob, e))?;
            }
            manifest.update(rel.to_string_lossy().as_bytes());
            manifest.update([0]);
            manifest.update(hash.as_bytes());
            entries.push((rel, hash));
        }
        let commit = hex(&manifest.finalize())[..40].to_owned();

        let snapshots = repo_dir.join("snapshots");
        let snapshot = snapshots.join(&commit);
        if !snapshot.is_dir() {
            let partial = snapshots.join(format!(".{commit}.incomplete.{}", std::process::id()));
            let _ = fs::remove_dir_all(&partial);
            for (rel, hash) in &entries {
                let link = partial.join(rel);
                let parent = link.parent().unwrap_or(&partial);
                fs::create_dir_all(parent).map_err(|e| LocalError::io(parent, e))?;
                link_blob(&blobs.join(hash), &link, rel.components().count())?;
            }
            fs::rename(&partial, &snapshot).map_err(|e| LocalError::io(&snapshot, e))?;
        }

        let refs = repo_dir.join("refs");
        let ref_file = refs.join(id.revision());
        let parent = ref_file.parent().unwrap_or(&refs);
        fs::create_dir_all(parent).map_err(|e| LocalError::io(parent, e))?;
        let partial = parent.join(format!(".ref.incomplete.{}", std::process::id()));
        fs::write(&partial, &commit).map_err(|e| LocalError::io(&partial, e))?;
        fs::rename(&partial, &ref_file).map_err(|e| LocalError::io(&ref_file, e))?;
        Ok(snapshot)
    }
}

/// Finds a model: `spec` is a directory holding `config.json`, or a model id
/// (`org/name[@revision]`) resolved offline in `cache`.
pub fn locate(spec: &str, cache: &ModelCache) -> Result<PathBuf> {
    let as_path = Path::new(spec);
    if as_path.join("config.json").is_file() {
        return Ok(as_path.to_path_buf());
    }
    let id = ModelId::parse(spec).map_err(|_| LocalError::ModelNotFound {
        id: spec.to_owned(),
        searched: vec![as_path.join("config.json")],
    })?;
    cache.resolve(&id).map_err(|e| match e {
        LocalError::ModelNotFound { id, mut searched } => {
            searched.insert(0, as_path.join("config.json"));
            LocalError::ModelNotFound { id, searched }
        }
        other => other,
    })
}

fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn collect_files(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let dir = root.join(rel);
    let entries = fs::read_dir(&dir).map_err(|e| LocalError::io(&dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| LocalError::io(&dir, e))?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        let rel = rel.join(&name);
        // `metadata` follows symlinks, so a snapshot of symlinks copies the
        // blobs they point at.
        let meta = fs::metadata(&path).map_err(|e| LocalError::io(&path, e))?;
        if meta.is_dir() {
            collect_files(root, &rel, out)?;
        } else if meta.is_file() {
            out.push(rel);
        }
    }
    Ok(())
}

fn hash_file(path: &Path) -> Result<String> {
    finetune_data::sha256_file(path).map(|(hex, _)| hex).map_err(|e| LocalError::io(path, e))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(unix)]
fn link_blob(blob: &Path, link: &Path, depth: usize) -> Result<()> {
    // snapshots/<commit>/<rel> → ../../blobs/<hash>, one more `..` per
    // folder level inside the snapshot.
    let mut target = PathBuf::new();
    for _ in 0..depth + 1 {
        target.push("..");
    }
    target.push("blobs");
    target.push(blob.file_name().unwrap_or_default());
    std::os::unix::fs::symlink(&target, link).map_err(|e| LocalError::io(link, e))
}

#[cfg(not(unix))]
fn link_blob(blob: &Path, link: &Path, _depth: usize) -> Result<()> {
    fs::copy(blob, link).map(|_| ()).map_err(|e| LocalError::io(link, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_with_and_without_revision() {
        let id = ModelId::parse("Qwen/Qwen2.5-0.5B-Instruct@v1.0").unwrap();
        assert_eq!(id.repo, "Qwen/Qwen2.5-0.5B-Instruct");
        assert_eq!(id.revision(), "v1.0");
        assert_eq!(id.folder_name(), "models--Qwen--Qwen2.5-0.5B-Instruct");
        assert_eq!(ModelId::parse("gpt2").unwrap().revision(), "main");
        for bad in ["a/b/c", "../x", "a/..", "", "a b", "org/name@"] {
            assert!(ModelId::parse(bad).is_err(), "{bad}");
        }
    }
}
