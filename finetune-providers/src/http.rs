//! The HTTP behaviour OpenAI and Azure OpenAI share: timeouts, retries with
//! exponential backoff and jitter that honour `Retry-After`, error mapping
//! onto [`finetune_core::Error`], and authentication that never prints a
//! secret.

use std::fmt;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use backon::BackoffBuilder;
use finetune_core::{Error, Result, Secret};
pub use reqwest::Method;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{RequestBuilder, Response, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// How failed requests are retried.
///
/// Connection errors, timeouts, and HTTP 408, 409, 429 and 5xx answers are
/// retried with exponential backoff and full jitter; a `Retry-After` (or
/// `retry-after-ms`) header lengthens the wait to what the server asked, up
/// to [`RetryPolicy::max_retry_after`].
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt; 0 disables retrying.
    pub max_retries: u32,
    /// The first backoff.
    pub initial_delay: Duration,
    /// The longest backoff.
    pub max_delay: Duration,
    /// Randomize each backoff, so that many clients do not retry in step.
    pub jitter: bool,
    /// The longest `Retry-After` honoured; a server asking for more gets this.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    /// Six retries from 0.5 s up to 30 s, with jitter; `Retry-After` honoured
    /// up to two minutes.
    fn default() -> Self {
        Self {
            max_retries: 6,
            initial_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            jitter: true,
            max_retry_after: Duration::from_secs(120),
        }
    }
}

impl RetryPolicy {
    /// No retries at all.
    pub fn none() -> Self {
        Self { max_retries: 0, ..Self::default() }
    }

    fn backoff(&self) -> backon::ExponentialBackoff {
        let builder = backon::ExponentialBuilder::default()
            .with_min_delay(self.initial_delay)
            .with_max_delay(self.max_delay)
            .with_factor(2.0)
            .with_max_times(self.max_retries as usize);
        if self.jitter { builder.with_jitter().build() } else { builder.build() }
    }
}

/// Timeouts and retries of the HTTP client.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpSettings {
    /// How long one request may take, start to end (uploads excepted).
    pub timeout: Duration,
    /// How long connecting may take.
    pub connect_timeout: Duration,
    /// How long one file upload may take.
    pub upload_timeout: Duration,
    /// How failures are retried.
    pub retry: RetryPolicy,
}

impl Default for HttpSettings {
    /// 2 minutes per request, 10 s to connect, 1 hour per upload.
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(10),
            upload_timeout: Duration::from_secs(3600),
            retry: RetryPolicy::default(),
        }
    }
}

/// How requests are authenticated. `Debug` shows no secret.
#[derive(Clone)]
#[non_exhaustive]
pub enum Auth {
    /// `Authorization: Bearer <key>` (OpenAI).
    Bearer(Secret),
    /// `api-key: <key>` (Azure OpenAI).
    ApiKey(Secret),
    /// An Entra ID token for `scope`, fetched (and cached) by the credential.
    #[cfg(feature = "azure")]
    Entra {
        /// The credential.
        credential: Arc<dyn azure_core::credentials::TokenCredential>,
        /// The token's scope, e.g. `https://management.azure.com/.default`.
        scope: &'static str,
    },
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bearer(_) => f.write_str("Bearer([REDACTED])"),
            Self::ApiKey(_) => f.write_str("ApiKey([REDACTED])"),
            #[cfg(feature = "azure")]
            Self::Entra { scope, .. } => write!(f, "Entra {{ scope: {scope:?} }}"),
        }
    }
}

/// What a failed attempt carries besides the error: the server's
/// `Retry-After`, when it sent one.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) error: Error,
    retry_after: Option<Duration>,
}

impl Failure {
    fn retryable(&self) -> bool {
        self.error.is_retryable()
    }
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        let retry_after = error.retry_after();
        Self { error, retry_after }
    }
}

/// A JSON client for one API root: the base URL, fixed query parameters
/// (Azure's `api-version`), fixed headers (OpenAI's organization and
/// project) and the authentication, with the timeouts, retries and error
/// mapping of [`HttpSettings`]. The providers use it, and so can other crates
/// of the workspace (the Azure deployer of `finetune-deploy`).
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    query: Vec<(&'static str, String)>,
    headers: HeaderMap,
    auth: Auth,
    settings: HttpSettings,
    retries: Arc<AtomicU64>,
}

impl fmt::Debug for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Api")
            .field("base", &self.base)
            .field("query", &self.query)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("auth", &self.auth)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Api {
    /// A client for `base`, adding `query` to every request and `headers`
    /// (lowercase names) to every request.
    pub fn new(
        base: &str,
        query: Vec<(&'static str, String)>,
        headers: Vec<(&'static str, String)>,
        auth: Auth,
        settings: HttpSettings,
    ) -> Result<Self> {
        let base = base.trim_end_matches('/').to_owned();
        let parsed = url::Url::parse(&base).map_err(|e| {
            Error::invalid_at(
                finetune_core::Location::column("base_url"),
                format!("`{base}` is not a URL: {e}"),
            )
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(Error::invalid_at(
                finetune_core::Location::column("base_url"),
                format!("`{base}` is not an http(s) URL"),
            ));
        }
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            let value = HeaderValue::from_str(&value).map_err(|_| {
                Error::invalid_at(
                    finetune_core::Location::column(name),
                    "not a valid HTTP header value",
                )
            })?;
            map.insert(HeaderName::from_static(name), value);
        }
        let http = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .user_agent(concat!("finetune-rs/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::other("building the HTTP client", e))?;
        Ok(Self {
            http,
            base,
            query,
            headers: map,
            auth,
            settings,
            retries: Arc::new(AtomicU64::new(0)),
        })
    }

    /// How many retries this client has made since it was built.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// The API root.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn request(&self, method: Method, path: &str, timeout: Duration) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .query(&self.query)
            .headers(self.headers.clone())
            .timeout(timeout)
    }

    async fn authorize(&self, request: RequestBuilder) -> Result<RequestBuilder, Failure> {
        Ok(match &self.auth {
            Auth::Bearer(key) => request.bearer_auth(key.expose()),
            Auth::ApiKey(key) => request.header("api-key", key.expose()),
            #[cfg(feature = "azure")]
            Auth::Entra { credential, scope } => {
                let token = credential.get_token(&[scope], None).await.map_err(|e| {
                    Failure::from(Error::Authentication {
                        message: format!("getting an Entra ID token for {scope} failed: {e}"),
                    })
                })?;
                request.bearer_auth(token.token.secret())
            }
        })
    }

    /// Sends one attempt and maps every failure, the HTTP status included.
    async fn send(&self, request: RequestBuilder, what: &str) -> Result<Response, Failure> {
        let request = self.authorize(request).await?;
        let response = request.send().await.map_err(|e| transport_error(what, &e))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.text().await.unwrap_or_default();
        Err(status_error(what, status, &headers, &body))
    }

    /// Runs `attempt` until it succeeds, fails for good, or the retries run
    /// out. `attempt` gets the attempt number (0 for the first).
    pub(crate) async fn retrying<T, F, Fut>(&self, what: &str, mut attempt: F) -> Result<T>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let policy = &self.settings.retry;
        let mut backoff = policy.backoff();
        let mut n = 0u32;
        loop {
            match attempt(n).await {
                Ok(v) => return Ok(v),
                Err(failure) if failure.retryable() => {
                    let Some(mut delay) = backoff.next() else {
                        return Err(failure.error);
                    };
                    if let Some(after) = failure.retry_after {
                        delay = delay.max(after.min(policy.max_retry_after));
                    }
                    n += 1;
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        request = what,
                        retry = n,
                        delay_ms = delay.as_millis() as u64,
                        error = %failure.error,
                        "request failed, retrying"
                    );
                    tokio::time::sleep(delay).await;
                }
                Err(failure) => return Err(failure.error),
            }
        }
    }

    /// One attempt of a JSON request.
    pub(crate) async fn try_json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&dyn ErasedBody>,
    ) -> Result<T, Failure> {
        let what = format!("{method} {path}");
        let mut request = self.request(method, path, self.settings.timeout).query(query);
        if let Some(body) = body {
            request = request.json(&body.to_json());
        }
        let response = self.send(request, &what).await?;
        let bytes = response.bytes().await.map_err(|e| transport_error(&what, &e))?;
        // An empty answer (204) reads as JSON null.
        let bytes: &[u8] = if bytes.trim_ascii().is_empty() { b"null" } else { &bytes };
        serde_json::from_slice(bytes).map_err(|e| {
            Failure::from(Error::Provider {
                status: None,
                code: Some("unparsable_response".into()),
                message: format!("{what}: the answer is not what the API describes: {e}"),
                param: None,
            })
        })
    }

    /// A JSON request with an optional JSON body, retried as the settings
    /// say; the answer is parsed as `T`.
    pub async fn send_json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&serde_json::Value>,
    ) -> Result<T> {
        self.json(method, path, query, body.map(|b| b as &dyn ErasedBody)).await
    }

    /// A JSON request, retried.
    pub(crate) async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&dyn ErasedBody>,
    ) -> Result<T> {
        let what = format!("{method} {path}");
        self.retrying(&what, |_| self.try_json(method.clone(), path, query, body)).await
    }

    /// A GET of raw bytes (file contents), retried.
    pub(crate) async fn bytes(&self, path: &str) -> Result<Vec<u8>> {
        let what = format!("GET {path}");
        self.retrying(&what, |_| async {
            let request = self.request(Method::GET, path, self.settings.timeout);
            let response = self.send(request, &what).await?;
            let bytes = response.bytes().await.map_err(|e| transport_error(&what, &e))?;
            Ok(bytes.to_vec())
        })
        .await
    }

    /// Uploads a local file as `multipart/form-data` (field `file`, plus the
    /// given text fields), streamed from disk; every retry reopens the file.
    pub(crate) async fn upload<T: DeserializeOwned>(
        &self,
        path: &str,
        file: &Path,
        file_name: &str,
        fields: &[(&'static str, String)],
    ) -> Result<T> {
        let what = format!("POST {path} ({file_name})");
        self.retrying(&what, |_| async {
            let handle = tokio::fs::File::open(file).await.map_err(|source| {
                Failure::from(Error::Io { path: Some(file.to_path_buf()), source })
            })?;
            let len = handle
                .metadata()
                .await
                .map_err(|source| {
                    Failure::from(Error::Io { path: Some(file.to_path_buf()), source })
                })?
                .len();
            let stream = tokio_util::io::ReaderStream::with_capacity(handle, 1 << 16);
            let part = reqwest::multipart::Part::stream_with_length(
                reqwest::Body::wrap_stream(stream),
                len,
            )
            .file_name(file_name.to_owned())
            .mime_str("application/jsonl")
            .map_err(|e| Failure::from(Error::other("building the upload", e)))?;
            let mut form = reqwest::multipart::Form::new();
            for (name, value) in fields {
                form = form.text(*name, value.clone());
            }
            let form = form.part("file", part);
            let request =
                self.request(Method::POST, path, self.settings.upload_timeout).multipart(form);
            let response = self.send(request, &what).await?;
            let bytes = response.bytes().await.map_err(|e| transport_error(&what, &e))?;
            serde_json::from_slice(&bytes).map_err(|e| {
                Failure::from(Error::Provider {
                    status: None,
                    code: Some("unparsable_response".into()),
                    message: format!("{what}: the answer is not what the API describes: {e}"),
                    param: None,
                })
            })
        })
        .await
    }
}

/// A request body, type-erased so [`Api::json`] stays one function.
pub(crate) trait ErasedBody: Sync {
    fn to_json(&self) -> serde_json::Value;
}

impl<T: Serialize + Sync> ErasedBody for T {
    fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

fn transport_error(what: &str, e: &reqwest::Error) -> Failure {
    // reqwest's messages hold the URL, never headers, so no secret leaks.
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "the connection failed"
    };
    let mut message = format!("{what}: {kind}: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message.push_str(&format!(": {s}"));
        source = s.source();
    }
    Failure::from(Error::Transient { message })
}

/// The `Retry-After` a server sent: `retry-after-ms` (OpenAI, Azure), or
/// `Retry-After` in seconds or as an HTTP date.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(ms) = text("retry-after-ms").and_then(|v| v.parse::<f64>().ok())
        && ms.is_finite()
        && ms >= 0.0
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    let value = text("retry-after")?;
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = when.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

/// Maps an error answer onto the core error, keeping the status, the
/// provider's code, message and param.
fn status_error(what: &str, status: StatusCode, headers: &HeaderMap, body: &str) -> Failure {
    let (code, mut message, param) = parse_error_body(body);
    if message.is_empty() {
        message = match status.canonical_reason() {
            Some(reason) => format!("{what}: {reason}"),
            None => format!("{what}: HTTP {}", status.as_u16()),
        };
    }
    let after = retry_after(headers);
    let error = match status.as_u16() {
        401 => Error::Authentication { message },
        403 => Error::PermissionDenied { message },
        404 => Error::NotFound { what: format!("{what}: {message}") },
        429 => Error::RateLimited { retry_after: after, message },
        status => Error::Provider { status: Some(status), code, message, param },
    };
    Failure { error, retry_after: after }
}

/// `{"error": {"message", "code", "param", "type"}}` as OpenAI and Azure send
/// it; Azure's inner error code is kept when there is no outer one.
pub(crate) fn parse_error_body(body: &str) -> (Option<String>, String, Option<String>) {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(body) else {
        let text: String = body.chars().take(500).collect();
        return (None, text.trim().to_owned(), None);
    };
    let error = value.get("error").unwrap_or(&value);
    let string = |v: Option<&serde_json::Value>| match v {
        Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let code = string(error.get("code"))
        .or_else(|| string(error.get("innererror").and_then(|i| i.get("code"))))
        .or_else(|| string(error.get("type")));
    let message = string(error.get("message")).unwrap_or_default();
    let param = string(error.get("param")).or_else(|| string(error.get("target")));
    (code, message, param)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", HeaderValue::from_static("3"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert("retry-after-ms", HeaderValue::from_static("250"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(250)));
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"));
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
        h.insert("retry-after", HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn error_bodies_keep_code_message_and_param() {
        let body = r#"{"error":{"message":"bad suffix","type":"invalid_request_error","param":"suffix","code":"invalid_value"}}"#;
        let f = status_error(
            "POST /fine_tuning/jobs",
            StatusCode::BAD_REQUEST,
            &HeaderMap::new(),
            body,
        );
        match f.error {
            Error::Provider { status, code, message, param } => {
                assert_eq!(status, Some(400));
                assert_eq!(code.as_deref(), Some("invalid_value"));
                assert_eq!(message, "bad suffix");
                assert_eq!(param.as_deref(), Some("suffix"));
            }
            e => panic!("{e:?}"),
        }
        let azure = r#"{"error":{"code":"tooManyRequests","message":"slow down"}}"#;
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("2"));
        let f = status_error("GET /x", StatusCode::TOO_MANY_REQUESTS, &h, azure);
        assert!(f.retryable());
        assert_eq!(f.retry_after, Some(Duration::from_secs(2)));
        assert!(matches!(f.error, Error::RateLimited { .. }));
        let f = status_error("GET /x", StatusCode::BAD_GATEWAY, &HeaderMap::new(), "<html>");
        assert!(f.retryable());
        let f = status_error("GET /x", StatusCode::UNAUTHORIZED, &HeaderMap::new(), "");
        assert!(matches!(f.error, Error::Authentication { .. }) && !f.retryable());
    }

    #[test]
    fn debug_shows_no_secret() {
        let auth = Auth::Bearer(Secret::new("sk-top-secret"));
        let api =
            Api::new("http://127.0.0.1:1", vec![], vec![], auth, HttpSettings::default()).unwrap();
        let shown = format!("{api:?}");
        assert!(!shown.contains("sk-top-secret") && shown.contains("REDACTED"), "{shown}");
    }
}
