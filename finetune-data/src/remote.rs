//! Datasets behind object-store URLs (`s3://`, `az://`, `abfs://`, `gs://`,
//! `https://`, `memory://`, `file://`).
//!
//! A remote dataset is streamed chunk by chunk into a local temporary file
//! and then read by the same readers as a local one: memory stays flat
//! whatever the file's size, every format works the same way from every
//! store, and problems still name the original URL.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use finetune_core::{DatasetLocation, DatasetSource};
use futures_util::StreamExt;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::error::DataError;
use crate::read::BatchIter;

/// Where object-store URLs lead: stores registered by URL prefix (always
/// for `memory://`, which is process-local), else a store built from the
/// URL with the standard environment variables (`AWS_*`, `AZURE_*`,
/// `GOOGLE_*`) and any options given here (object_store's config keys, e.g.
/// `aws_endpoint`, `aws_allow_http`).
#[derive(Debug, Default, Clone)]
pub struct ObjectStores {
    registered: Vec<(String, Arc<dyn ObjectStore>)>,
    options: Vec<(String, String)>,
}

impl ObjectStores {
    /// No registered stores, no extra options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves URLs starting with `prefix` (e.g. `memory://` or
    /// `s3://my-bucket`) from `store`; the rest of the URL is the key.
    pub fn register(mut self, prefix: impl Into<String>, store: Arc<dyn ObjectStore>) -> Self {
        self.registered.push((prefix.into().trim_end_matches('/').to_owned(), store));
        self
    }

    /// Adds a configuration option for stores built from URLs.
    pub fn with_option(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.options.push((key.into(), value.into()));
        self
    }

    /// The store and the key a URL addresses.
    pub fn resolve(&self, url: &str) -> Result<(Arc<dyn ObjectStore>, StorePath), DataError> {
        let bad = |message: String| DataError::Unsupported(format!("{url}: {message}"));
        for (prefix, store) in &self.registered {
            if let Some(rest) = url.strip_prefix(prefix.as_str()) {
                let key = StorePath::parse(rest.trim_start_matches('/'))
                    .map_err(|e| bad(e.to_string()))?;
                return Ok((store.clone(), key));
            }
        }
        let parsed = url::Url::parse(url).map_err(|e| bad(format!("not a valid URL: {e}")))?;
        if parsed.scheme() == "memory" {
            return Err(bad("no in-memory store is registered for this URL".into()));
        }
        let env = std::env::vars()
            .filter(|(k, _)| ["AWS_", "AZURE_", "GOOGLE_"].iter().any(|p| k.starts_with(p)));
        let options =
            env.map(|(k, v)| (k.to_ascii_lowercase(), v)).chain(self.options.iter().cloned());
        let (store, key) =
            object_store::parse_url_opts(&parsed, options).map_err(|e| bad(e.to_string()))?;
        Ok((Arc::from(store), key))
    }

    /// Uploads the local file at `path` to `url` in parts of 8 MiB (a
    /// multipart upload where the store has one), reading it a piece at a
    /// time. Returns the bytes sent. A failed upload is aborted, leaving no
    /// partial object behind.
    pub async fn upload(&self, path: &std::path::Path, url: &str) -> Result<u64, DataError> {
        use std::io::Read;
        let (store, key) = self.resolve(url)?;
        let remote = |e: object_store::Error| DataError::Io {
            file: url.to_owned(),
            source: std::io::Error::other(e.to_string()),
        };
        let local = |source| DataError::Io { file: path.display().to_string(), source };
        let mut file = std::fs::File::open(path).map_err(local)?;
        let upload = store.put_multipart(&key).await.map_err(remote)?;
        let mut writer = object_store::WriteMultipart::new_with_chunk_size(upload, 8 << 20);
        let mut buf = vec![0u8; 1 << 20];
        let mut sent = 0u64;
        loop {
            let n = match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(local(e));
                }
            };
            if let Err(e) = writer.wait_for_capacity(4).await {
                let _ = writer.abort().await;
                return Err(remote(e));
            }
            writer.write(&buf[..n]);
            sent += n as u64;
        }
        writer.finish().await.map_err(remote)?;
        Ok(sent)
    }

    /// Streams the object at `url` into a temporary file.
    pub async fn fetch(&self, url: &str) -> Result<tempfile::NamedTempFile, DataError> {
        let (store, key) = self.resolve(url)?;
        let io = |source| DataError::Io { file: url.to_owned(), source };
        let result = store.get(&key).await.map_err(|e| match e {
            object_store::Error::NotFound { .. } => {
                io(std::io::Error::new(std::io::ErrorKind::NotFound, format!("no object at {url}")))
            }
            other => io(std::io::Error::other(other.to_string())),
        })?;
        let mut temp = tempfile::NamedTempFile::new().map_err(io)?;
        let mut stream = result.into_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| io(std::io::Error::other(e.to_string())))?;
            temp.write_all(&chunk).map_err(io)?;
        }
        temp.flush().map_err(io)?;
        Ok(temp)
    }
}

/// A dataset available as a local file: the user's own, or a temporary copy
/// of a remote one (deleted when this is dropped).
#[derive(Debug)]
pub struct LocalDataset {
    source: DatasetSource,
    name: String,
    path: PathBuf,
    _temp: Option<tempfile::NamedTempFile>,
}

impl LocalDataset {
    /// A dataset that is local already: a path or a `file://` URL.
    pub fn local(source: &DatasetSource) -> Result<Self, DataError> {
        let name = source.location.to_string();
        let path = match &source.location {
            DatasetLocation::Path(p) => p.clone(),
            DatasetLocation::Url(u) => url::Url::parse(u)
                .ok()
                .filter(|url| url.scheme() == "file")
                .and_then(|url| url.to_file_path().ok())
                .ok_or_else(|| {
                    DataError::Unsupported(format!(
                        "{u}: a remote dataset; make it local with `localize` first"
                    ))
                })?,
        };
        Ok(Self { source: source.clone(), name, path, _temp: None })
    }

    /// The name problems carry: the user's path or URL.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The local file (the user's, or the temporary copy).
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Streams the dataset's batches.
    pub fn open(&self) -> Result<BatchIter, DataError> {
        crate::read::open_path(&self.source, &self.path, &self.name)
    }
}

/// Makes a dataset readable locally: a local path as it is, a URL by
/// streaming it into a temporary file first.
pub async fn localize(
    source: &DatasetSource,
    stores: &ObjectStores,
) -> Result<LocalDataset, DataError> {
    let registered = |u: &str| stores.registered.iter().any(|(p, _)| u.starts_with(p.as_str()));
    match &source.location {
        DatasetLocation::Url(u) if !u.starts_with("file://") || registered(u) => {
            // Resolve the format before spending a download on it.
            source.resolved_format().map_err(|e| DataError::Unsupported(e.to_string()))?;
            let temp = stores.fetch(u).await?;
            let path = temp.path().to_path_buf();
            Ok(LocalDataset { source: source.clone(), name: u.clone(), path, _temp: Some(temp) })
        }
        _ => LocalDataset::local(source),
    }
}
