//! The core every fake server here shares (the OpenAI and Azure OpenAI
//! fake, the Bedrock fake, the ARM fake): a loopback listener, the log of
//! requests, and faults injected into coming requests — an error status, a
//! slow answer, or a request carried out whose answer is then lost
//! (commit-then-fail). Each fake keeps only its routes and error bodies.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use axum::http::Method;
use axum::response::Response;

/// A failure injected into the next matching request of a fake.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    /// The HTTP method it applies to; any when absent.
    pub method: Option<Method>,
    /// The path it applies to (for the Azure fake without `/openai`, and
    /// without the query); a trailing `*` matches any path with that prefix.
    pub path: String,
    /// The status answered.
    pub status: u16,
    /// The error code sent (the OpenAI error's `code`, AWS's
    /// `x-amzn-ErrorType`); the fake's own when absent.
    pub code: Option<String>,
    /// `retry-after` seconds sent with it (fractions are sent as
    /// `retry-after-ms`).
    pub retry_after: Option<f64>,
    /// Carry out the request before answering the error: the answer is
    /// lost but the effect is real (a job created, a file stored).
    pub commit: bool,
    /// Wait this long before answering (a slow server; with status 200 the
    /// request is then carried out normally).
    pub delay: Option<Duration>,
}

impl Fault {
    /// `status` for the next `method path`.
    pub fn status(method: Method, path: &str, status: u16) -> Self {
        Self {
            method: Some(method),
            path: path.to_owned(),
            status,
            code: None,
            retry_after: None,
            commit: false,
            delay: None,
        }
    }

    /// `status` for the next request, whatever its method and path.
    pub fn any(status: u16) -> Self {
        Self { method: None, path: "*".to_owned(), ..Self::status(Method::GET, "", status) }
    }

    /// Answers normally, but only after `delay`.
    pub fn slow(method: Method, path: &str, delay: Duration) -> Self {
        Self { delay: Some(delay), ..Self::status(method, path, 200) }
    }

    /// AWS's `ThrottlingException` (429) for the next `method path`.
    pub fn throttle(method: Method, path: &str) -> Self {
        Self::status(method, path, 429).with_code("ThrottlingException")
    }

    /// AWS's `InternalServerException` (500) for the next `method path`.
    pub fn internal(method: Method, path: &str) -> Self {
        Self::status(method, path, 500).with_code("InternalServerException")
    }

    /// Sends `code` as the error code.
    pub fn with_code(mut self, code: &str) -> Self {
        self.code = Some(code.to_owned());
        self
    }

    /// Sends a `Retry-After` of `secs`.
    pub fn retry_after(mut self, secs: f64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// Carries the request out before failing.
    pub fn committed(mut self) -> Self {
        self.commit = true;
        self
    }

    fn matches(&self, method: &Method, path: &str) -> bool {
        self.method.as_ref().is_none_or(|m| m == method)
            && match self.path.strip_suffix('*') {
                Some(prefix) => path.starts_with(prefix),
                None => self.path == path,
            }
    }

    /// Adds the `retry-after` (or `retry-after-ms`) header, if any.
    pub(crate) fn add_retry_after(&self, response: &mut Response) {
        if let Some(secs) = self.retry_after {
            let h = response.headers_mut();
            if secs.fract() == 0.0 {
                h.insert("retry-after", (secs as u64).into());
            } else {
                h.insert("retry-after-ms", ((secs * 1000.0) as u64).into());
            }
        }
    }
}

#[derive(Debug, Default)]
struct Log {
    requests: Vec<String>,
    faults: VecDeque<Fault>,
    injected: u64,
}

/// The request log and fault queue of one fake.
#[derive(Debug, Default)]
pub(crate) struct FakeCore {
    log: Mutex<Log>,
}

impl FakeCore {
    fn lock(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a fault for the next matching request.
    pub(crate) fn inject(&self, fault: Fault) {
        self.lock().faults.push_back(fault);
    }

    /// Faults answered so far.
    pub(crate) fn injected(&self) -> u64 {
        self.lock().injected
    }

    /// Every request seen, as `METHOD /path`.
    pub(crate) fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    /// Logs a request.
    pub(crate) fn record(&self, method: &Method, path: &str) {
        self.lock().requests.push(format!("{method} {path}"));
    }

    /// Answers `method path` under the queued faults: the first matching
    /// fault is taken; its delay is waited; an error status is answered
    /// before `route` runs, or after it when the fault is committed; with
    /// no fault (or a slow 200) the route's answer is returned.
    pub(crate) async fn answer(
        &self,
        method: &Method,
        path: &str,
        route: impl Future<Output = Response>,
        error: impl Fn(&Fault) -> Response,
    ) -> Response {
        let fault = {
            let mut log = self.lock();
            let at = log.faults.iter().position(|f| f.matches(method, path));
            let fault = at.and_then(|i| log.faults.remove(i));
            if fault.is_some() {
                log.injected += 1;
            }
            fault
        };
        if let Some(delay) = fault.as_ref().and_then(|f| f.delay) {
            tokio::time::sleep(delay).await;
        }
        match fault.filter(|f| f.status != 200) {
            Some(fault) if !fault.commit => error(&fault),
            Some(fault) => {
                route.await;
                error(&fault)
            }
            None => route.await,
        }
    }
}

/// A listener on a free loopback port, and its address.
///
/// # Panics
/// When no loopback port can be bound: this is test support.
pub(crate) async fn loopback() -> (tokio::net::TcpListener, SocketAddr) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding a loopback port for a fake");
    let addr = listener.local_addr().expect("the fake's address");
    (listener, addr)
}

/// Serves `app` on `listener` in the background of the current runtime.
pub(crate) fn serve(listener: tokio::net::TcpListener, app: axum::Router) {
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
}
