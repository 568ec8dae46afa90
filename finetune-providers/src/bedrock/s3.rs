//! S3 through `object_store`, signed with credentials from the aws-config
//! chain: uploads (multipart above a part size), reuse by content hash, and
//! reading Bedrock's metrics back.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use finetune_core::{Error, Result};

use super::models::BedrockDataFormat;
use futures_util::StreamExt;
use object_store::aws::{AmazonS3Builder, AwsCredential};
use object_store::path::Path as StorePath;
use object_store::{CredentialProvider, ObjectStore, ObjectStoreExt, PutPayload};
use tokio::io::AsyncReadExt;

/// `s3://bucket/prefix`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Uri {
    /// The bucket.
    pub bucket: String,
    /// The key prefix, without leading or trailing `/` (may be empty).
    pub prefix: String,
}

impl S3Uri {
    /// Parses `s3://bucket[/prefix]`.
    pub fn parse(uri: &str) -> Result<Self> {
        let bad = || {
            Error::invalid_at(
                finetune_core::Location::column("s3_prefix"),
                format!("`{uri}` is not an s3://bucket/prefix URI"),
            )
        };
        let rest = uri.strip_prefix("s3://").ok_or_else(bad)?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let valid_bucket = (3..=63).contains(&bucket.len())
            && bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
        if !valid_bucket {
            return Err(bad());
        }
        Ok(Self { bucket: bucket.to_owned(), prefix: prefix.trim_matches('/').to_owned() })
    }

    /// The key `prefix/name`.
    pub fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() { name.to_owned() } else { format!("{}/{name}", self.prefix) }
    }

    /// `s3://bucket/prefix/name`.
    pub fn join(&self, name: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.key(name))
    }
}

impl std::fmt::Display for S3Uri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)
    }
}

/// Hands object_store the aws-config chain's credentials, cached until five
/// minutes before they expire.
#[derive(Debug)]
struct ChainCredentials {
    provider: SharedCredentialsProvider,
    cached: tokio::sync::Mutex<Option<(Arc<AwsCredential>, Option<SystemTime>)>>,
}

#[async_trait::async_trait]
impl CredentialProvider for ChainCredentials {
    type Credential = AwsCredential;

    async fn get_credential(&self) -> object_store::Result<Arc<AwsCredential>> {
        let mut cached = self.cached.lock().await;
        if let Some((cred, expiry)) = cached.as_ref() {
            let fresh = expiry.is_none_or(|e| {
                e.duration_since(SystemTime::now()).unwrap_or_default() > Duration::from_secs(300)
            });
            if fresh {
                return Ok(cred.clone());
            }
        }
        let creds = self
            .provider
            .provide_credentials()
            .await
            .map_err(|e| object_store::Error::Generic { store: "S3", source: Box::new(e) })?;
        let cred = Arc::new(AwsCredential {
            key_id: creds.access_key_id().to_owned(),
            secret_key: creds.secret_access_key().to_owned(),
            token: creds.session_token().map(str::to_owned),
        });
        *cached = Some((cred.clone(), creds.expiry()));
        Ok(cred)
    }
}

/// The S3 bucket a provider writes to and reads from.
#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) uri: S3Uri,
}

pub(crate) fn store_error(what: &str, e: object_store::Error) -> Error {
    match e {
        object_store::Error::NotFound { path, .. } => {
            Error::NotFound { what: format!("s3 object {path}") }
        }
        other => Error::Transient { message: format!("{what}: {other}") },
    }
}

impl Bucket {
    /// A bucket signed with the chain's credentials.
    pub(crate) fn new(
        uri: S3Uri,
        region: &str,
        endpoint: Option<&str>,
        credentials: Option<SharedCredentialsProvider>,
    ) -> Result<Self> {
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&uri.bucket)
            .with_region(region)
            .with_retry(object_store::RetryConfig {
                backoff: object_store::BackoffConfig::default(),
                max_retries: 8,
                retry_timeout: Duration::from_secs(300),
            });
        if let Some(endpoint) = endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"))
                .with_virtual_hosted_style_request(false);
        }
        if let Some(provider) = credentials {
            builder = builder.with_credentials(Arc::new(ChainCredentials {
                provider,
                cached: tokio::sync::Mutex::new(None),
            }));
        }
        let store = builder.build().map_err(|e| Error::other("configuring S3", e))?;
        Ok(Self { store: Arc::new(store), uri })
    }

    /// Uploads `file` to `key` unless an object of the same size is there
    /// (keys carry the content hash). Files above `part_size` go up in
    /// parts; a failed multipart upload is aborted. Returns the parts sent
    /// (0 when reused).
    pub(crate) async fn upload(
        &self,
        file: &std::path::Path,
        key: &str,
        bytes: u64,
        part_size: usize,
    ) -> Result<usize> {
        let path = StorePath::from(key);
        match self.store.head(&path).await {
            Ok(meta) if meta.size == bytes => return Ok(0),
            Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(store_error("looking for an earlier upload", e)),
        }
        let mut reader =
            tokio::fs::File::open(file).await.map_err(|e| Error::io(file.to_path_buf(), e))?;
        let first = read_part(&mut reader, part_size)
            .await
            .map_err(|e| Error::io(file.to_path_buf(), e))?;
        if (first.len() as u64) == bytes && first.len() < part_size {
            self.store
                .put(&path, PutPayload::from(first))
                .await
                .map_err(|e| store_error("uploading", e))?;
            return Ok(1);
        }
        let mut upload = self
            .store
            .put_multipart(&path)
            .await
            .map_err(|e| store_error("starting a multipart upload", e))?;
        let mut parts = 0usize;
        let mut next = Some(first);
        let result: Result<()> = async {
            while let Some(chunk) = next.take() {
                if chunk.is_empty() {
                    break;
                }
                parts += 1;
                upload
                    .put_part(PutPayload::from(chunk))
                    .await
                    .map_err(|e| store_error("uploading a part", e))?;
                let following = read_part(&mut reader, part_size)
                    .await
                    .map_err(|e| Error::io(file.to_path_buf(), e))?;
                next = Some(following);
            }
            upload.complete().await.map_err(|e| store_error("completing a multipart upload", e))?;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            let _ = upload.abort().await;
            return Err(e);
        }
        Ok(parts)
    }

    /// The object at `key`.
    pub(crate) async fn get(&self, key: &str) -> Result<Vec<u8>> {
        let got =
            self.store.get(&StorePath::from(key)).await.map_err(|e| store_error("reading", e))?;
        let bytes = got.bytes().await.map_err(|e| store_error("reading", e))?;
        Ok(bytes.to_vec())
    }

    /// Every key under `prefix`.
    pub(crate) async fn keys(&self, prefix: &str) -> Result<Vec<String>> {
        let prefix = StorePath::from(prefix);
        let mut listing = self.store.list(Some(&prefix));
        let mut keys = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| store_error("listing", e))?;
            keys.push(meta.location.to_string());
        }
        Ok(keys)
    }
}

/// Up to `size` bytes from `reader`.
async fn read_part(reader: &mut tokio::fs::File, size: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(size);
    reader.take(size as u64).read_to_end(&mut buf).await?;
    Ok(buf)
}

/// What [`super::BedrockProvider::upload`] did with one dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadedObject {
    /// `s3://bucket/key`.
    pub uri: String,
    /// Its size.
    pub bytes: u64,
    /// Rows written.
    pub rows: u64,
    /// Parts sent: 0 when an identical object was already there, 1 for a
    /// single PUT, more for a multipart upload.
    pub parts: usize,
}

impl super::BedrockProvider {
    /// Converts a dataset to the base model's format and uploads it under
    /// `data/<sha256>.jsonl`, unless the same object is there already.
    pub async fn upload(
        &self,
        source: &finetune_core::DatasetSource,
        role: &str,
        format: BedrockDataFormat,
    ) -> Result<UploadedObject> {
        let rules = finetune_core::DataRules::builtin(&finetune_core::ProviderKind::Bedrock, "");
        self.upload_under(source, role, format, rules).await
    }

    /// [`Self::upload`] under a base model's data rules.
    pub(crate) async fn upload_under(
        &self,
        source: &finetune_core::DatasetSource,
        role: &str,
        format: BedrockDataFormat,
        rules: finetune_core::DataRules,
    ) -> Result<UploadedObject> {
        let bucket = self.bucket()?;
        let prepared = crate::prepare::convert_for_upload(
            &self.stores,
            source,
            role,
            format.output_format(),
            rules,
        )
        .await?;
        let key = bucket.uri.key(&format!("data/{}.jsonl", &prepared.sha256[..32]));
        let parts =
            bucket.upload(&prepared.path, &key, prepared.bytes, self.config.part_size).await?;
        if parts > 0 {
            self.uploads.fetch_add(1, Ordering::Relaxed);
            self.parts.fetch_add(parts as u64, Ordering::Relaxed);
        }
        tracing::debug!(role, key, parts, "dataset on S3");
        Ok(UploadedObject {
            uri: format!("s3://{}/{key}", bucket.uri.bucket),
            bytes: prepared.bytes,
            rows: prepared.rows,
            parts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_uris_parse_and_join() {
        let u = S3Uri::parse("s3://my-bucket/a/b/").expect("valid");
        assert_eq!(u.bucket, "my-bucket");
        assert_eq!(u.prefix, "a/b");
        assert_eq!(u.join("data/x.jsonl"), "s3://my-bucket/a/b/data/x.jsonl");
        assert_eq!(S3Uri::parse("s3://bkt").expect("no prefix").key("k"), "k");
        for bad in ["https://x/y", "s3://", "s3://UPPER/x", "s3://ab"] {
            assert!(S3Uri::parse(bad).is_err(), "{bad}");
        }
    }
}
