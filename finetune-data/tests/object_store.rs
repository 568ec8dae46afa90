//! Datasets behind `memory://`, `file://`, `s3://` and `az://` URLs. The S3
//! test runs against moto's server and the Azure test against Azurite (both
//! installed by `scripts/setup --test`), started here on loopback.

#![allow(clippy::unwrap_used)] // Test helpers fail loudly.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use finetune_core::DatasetSource;
use finetune_core::testing::{PeerProcess, free_loopback_port, wait_for_port};
use finetune_data::{
    DataError, ObjectStores, ProblemKind, ValidationOptions, Validator, localize, validate_with,
};
use object_store::memory::InMemory;
use object_store::{ObjectStoreExt, PutPayload};

const GOOD: &str = "{\"prompt\":\"p1\",\"completion\":\"c1\"}\n{\"prompt\":\"p2\",\"completion\":\"c2\",\"system\":\"s\"}\n";
const BROKEN: &str = "{\"prompt\":\"p1\",\"completion\":\"c1\"}\n{\"prompt\":\n";

async fn validate_url(
    url: &str,
    stores: &ObjectStores,
) -> Result<finetune_data::ValidationReport, DataError> {
    let source = DatasetSource::new(url).unwrap();
    let local = localize(&source, stores).await?;
    let validator = Validator::new(local.name(), ValidationOptions::default());
    Ok(validate_with(&local, validator)?.finish().0)
}

#[tokio::test]
async fn memory_urls_read_from_a_registered_store() {
    let store = Arc::new(InMemory::new());
    store.put(&"data/train.jsonl".into(), PutPayload::from_static(GOOD.as_bytes())).await.unwrap();
    store
        .put(&"data/broken.jsonl".into(), PutPayload::from_static(BROKEN.as_bytes()))
        .await
        .unwrap();
    let stores = ObjectStores::new().register("memory://", store);

    let report = validate_url("memory://data/train.jsonl", &stores).await.unwrap();
    assert!(report.valid, "{report}");
    assert_eq!(report.rows, 2);

    let report = validate_url("memory://data/broken.jsonl", &stores).await.unwrap();
    let p = report.problems(ProblemKind::Unreadable).next().unwrap();
    assert_eq!((p.row, p.line), (Some(2), Some(2)));
    assert_eq!(
        p.file.as_deref(),
        Some("memory://data/broken.jsonl"),
        "problems name the URL, not a temp file"
    );

    let err = validate_url("memory://data/missing.jsonl", &stores).await.unwrap_err();
    assert!(err.to_string().contains("no object"), "{err}");
    // And back up: what is uploaded reads the same.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("up.jsonl");
    std::fs::write(&path, GOOD).unwrap();
    assert_eq!(stores.upload(&path, "memory://data/up.jsonl").await.unwrap(), GOOD.len() as u64);
    assert_eq!(validate_url("memory://data/up.jsonl", &stores).await.unwrap().rows, 2);

    let err = validate_url("memory://x/train.jsonl", &ObjectStores::new()).await.unwrap_err();
    assert!(err.to_string().contains("no in-memory store"), "{err}");
}

#[tokio::test]
async fn file_urls_read_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("train.jsonl");
    std::fs::write(&path, GOOD).unwrap();
    let url = format!("file://{}", path.display());
    let report = validate_url(&url, &ObjectStores::new()).await.unwrap();
    assert!(report.valid);
    assert_eq!(report.rows, 2);
    // The sync entry point reads file:// URLs too.
    let (report, _) =
        finetune_data::validate(&DatasetSource::new(&url).unwrap(), Default::default()).unwrap();
    assert_eq!(report.rows, 2);
}

/// A moto server; it ends with the handle or the test process.
struct Moto {
    _process: PeerProcess,
    endpoint: String,
}

fn tools_python() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/python")
}

fn start_moto() -> Moto {
    let site = tools_python();
    assert!(
        site.join("moto").exists(),
        "moto is not installed in {}: run `scripts/setup --test`",
        site.display()
    );
    let port = free_loopback_port().unwrap();
    let mut command = Command::new("python3");
    command
        .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
        .env("PYTHONPATH", &site);
    let process = PeerProcess::start(&command, None).expect("starting moto");
    assert!(wait_for_port(port, Duration::from_secs(60)), "moto did not start within 60 s");
    Moto { _process: process, endpoint: format!("http://127.0.0.1:{port}") }
}

#[tokio::test]
async fn s3_urls_read_through_moto() {
    let moto = start_moto();
    let s3 = |bucket: &str| {
        object_store::aws::AmazonS3Builder::new()
            .with_endpoint(&moto.endpoint)
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_bucket_name(bucket)
            .with_access_key_id("testing")
            .with_secret_access_key("testing")
            .build()
            .unwrap()
    };
    // moto creates buckets through the plain S3 API.
    assert!(create_bucket(&moto.endpoint, "datasets").await, "bucket created");
    let store = s3("datasets");
    // A Parquet file, written by our own converter.
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("in.jsonl");
    std::fs::write(&jsonl, GOOD).unwrap();
    let parquet = dir.path().join("train.parquet");
    let local = finetune_data::LocalDataset::local(
        &DatasetSource::new(&jsonl.display().to_string()).unwrap(),
    )
    .unwrap();
    finetune_data::convert(
        &local,
        &parquet,
        finetune_data::OutputFormat::Parquet,
        &Default::default(),
    )
    .unwrap();
    store
        .put(&"sets/train.parquet".into(), PutPayload::from(std::fs::read(&parquet).unwrap()))
        .await
        .unwrap();

    let stores = ObjectStores::new()
        .with_option("aws_endpoint", &moto.endpoint)
        .with_option("aws_allow_http", "true")
        .with_option("aws_region", "us-east-1")
        .with_option("aws_access_key_id", "testing")
        .with_option("aws_secret_access_key", "testing");
    let report = validate_url("s3://datasets/sets/train.parquet", &stores).await.unwrap();
    assert!(report.valid, "{report}");
    assert_eq!(report.rows, 2);
    assert_eq!(report.file, "s3://datasets/sets/train.parquet");

    let err = validate_url("s3://datasets/sets/nope.parquet", &stores).await.unwrap_err();
    assert!(matches!(err, DataError::Io { .. }), "{err}");

    // Upload in parts: 20 MB of JSONL makes three 8 MiB parts.
    let big = dir.path().join("big.jsonl");
    let line = format!("{{\"prompt\":\"{}\",\"completion\":\"c\"}}\n", "x".repeat(1000));
    std::fs::write(&big, line.repeat(20_000)).unwrap();
    let sent = stores.upload(&big, "s3://datasets/sets/big.jsonl").await.unwrap();
    assert_eq!(sent, std::fs::metadata(&big).unwrap().len());
    let report = validate_url("s3://datasets/sets/big.jsonl", &stores).await.unwrap();
    assert_eq!(report.rows, 20_000);
    assert!(report.has(ProblemKind::Duplicate), "identical rows are flagged");
}

/// Creates a bucket with a raw HTTP PUT (moto accepts unsigned requests),
/// so the test needs no S3 client beyond object_store.
async fn create_bucket(endpoint: &str, bucket: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = endpoint.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "PUT /{bucket} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200")
}

/// Azurite; it ends with the handle or the test process.
struct Azurite {
    _process: PeerProcess,
    _data: tempfile::TempDir,
}

/// object_store's emulator mode talks to Azurite's default port, 10000.
fn start_azurite() -> Azurite {
    let bin =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/node/node_modules/.bin/azurite-blob");
    assert!(
        bin.exists(),
        "Azurite is not installed at {}: run `scripts/setup --test`",
        bin.display()
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", 10000)).is_err(),
        "port 10000 is taken; Azurite needs it for object_store's emulator mode"
    );
    let data = tempfile::tempdir().unwrap();
    let mut command = Command::new(bin);
    command
        .args(["--blobHost", "127.0.0.1", "--blobPort", "10000", "--silent", "--disableTelemetry"])
        .args(["--skipApiVersionCheck", "--location"])
        .arg(data.path());
    let process = PeerProcess::start(&command, None).expect("starting Azurite");
    assert!(wait_for_port(10000, Duration::from_secs(60)), "Azurite did not start within 60 s");
    Azurite { _process: process, _data: data }
}

/// Azurite's well-known development account and key.
const AZ_ACCOUNT: &str = "devstoreaccount1";
const AZ_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Creates a container with a SharedKey-signed REST call (object_store has
/// no container API).
async fn create_container(name: &str) -> String {
    use base64::Engine;
    use hmac::Mac;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let date = httpdate::fmt_http_date(std::time::SystemTime::now());
    let version = "2021-08-06";
    let string_to_sign = format!(
        "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n/{AZ_ACCOUNT}/{AZ_ACCOUNT}/{name}\nrestype:container"
    );
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&b64.decode(AZ_KEY).unwrap()).unwrap();
    mac.update(string_to_sign.as_bytes());
    let signature = b64.encode(mac.finalize().into_bytes());
    let request = format!(
        "PUT /{AZ_ACCOUNT}/{name}?restype=container HTTP/1.1\r\nHost: 127.0.0.1:10000\r\nx-ms-date: {date}\r\n\
         x-ms-version: {version}\r\nAuthorization: SharedKey {AZ_ACCOUNT}:{signature}\r\nContent-Length: 0\r\n\
         Connection: close\r\n\r\n"
    );
    let mut stream = tokio::net::TcpStream::connect("127.0.0.1:10000").await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn az_urls_read_through_azurite() {
    let _azurite = start_azurite();
    let status = create_container("datasets").await;
    assert!(status.contains("201"), "container created: {status}");
    let stores = ObjectStores::new().with_option("azure_storage_use_emulator", "true");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("train.jsonl");
    std::fs::write(&path, BROKEN).unwrap();
    stores.upload(&path, "az://datasets/sets/train.jsonl").await.unwrap();
    let report = validate_url("az://datasets/sets/train.jsonl", &stores).await.unwrap();
    assert_eq!(report.rows, 2);
    let p = report.problems(ProblemKind::Unreadable).next().unwrap();
    assert_eq!(
        (p.row, p.line, p.file.as_deref()),
        (Some(2), Some(2), Some("az://datasets/sets/train.jsonl"))
    );
}
