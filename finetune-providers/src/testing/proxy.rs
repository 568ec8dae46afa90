//! A loopback TCP proxy that can cut a connection in the middle of a
//! request, the way a flaky network does.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A marker and how many bytes past it to let through.
type Cut = (Vec<u8>, usize);

/// Forwards connections to an upstream address. Once armed with
/// [`CutProxy::cut_next`], the first request whose bytes contain the marker
/// is cut off (both directions closed) after that many further bytes.
#[derive(Debug, Clone)]
pub struct CutProxy {
    addr: SocketAddr,
    armed: Arc<std::sync::Mutex<Option<Cut>>>,
    cuts: Arc<AtomicU64>,
}

impl CutProxy {
    /// Starts a proxy to `upstream` on a free loopback port.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding the proxy");
        let proxy = Self {
            addr: listener.local_addr().expect("the proxy's address"),
            armed: Arc::default(),
            cuts: Arc::default(),
        };
        let this = proxy.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let this = this.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        this.pipe(client, server).await;
                    }
                });
            }
        });
        proxy
    }

    /// The proxy's URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Cuts the next request containing `marker` (e.g. `POST /files`)
    /// `after` bytes past the marker.
    pub fn cut_next(&self, marker: &str, after: usize) {
        *self.armed.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((marker.as_bytes().to_vec(), after));
    }

    /// Connections cut so far.
    pub fn cuts(&self) -> u64 {
        self.cuts.load(Ordering::Relaxed)
    }

    async fn pipe(&self, client: TcpStream, server: TcpStream) {
        let (mut client_read, mut client_write) = client.into_split();
        let (mut server_read, mut server_write) = server.into_split();
        let down = tokio::spawn(async move {
            let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
        });
        let mut buf = vec![0u8; 16 * 1024];
        // Bytes still allowed through once this connection is marked.
        let mut budget: Option<usize> = None;
        loop {
            let n = match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut chunk = &buf[..n];
            if budget.is_none() {
                let mut armed = self.armed.lock().unwrap_or_else(|p| p.into_inner());
                if let Some((marker, after)) = armed.as_ref()
                    && let Some(at) =
                        chunk.windows(marker.len()).position(|w| w == marker.as_slice())
                {
                    budget = Some(at + after);
                    *armed = None;
                }
            }
            if let Some(left) = budget.as_mut() {
                if chunk.len() >= *left {
                    chunk = &chunk[..*left];
                    let _ = server_write.write_all(chunk).await;
                    self.cuts.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                *left -= chunk.len();
            }
            if server_write.write_all(chunk).await.is_err() {
                break;
            }
        }
        // Dropping both halves closes the connection on both sides.
        down.abort();
    }
}
