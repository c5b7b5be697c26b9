//! Starting and stopping the server: a tokio runtime on its own thread for HTTP, the engine
//! worker on another, graceful shutdown on request or on SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use crate::error::ServeError;
use crate::models::Models;
use crate::routes::{App, router};
use crate::worker::Worker;

/// Where to listen and the limits on requests.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub host: String,
    /// 0 picks a free port ([`Server::local_addr`] tells which).
    pub port: u16,
    /// When set, every request but `GET /health` needs `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// Largest request body; larger ones get 413.
    pub max_body_bytes: usize,
    /// Largest `max_tokens` (and CoRD budget) a request may ask for.
    pub max_tokens: usize,
    /// `max_tokens` when a request gives none (less when the context is shorter).
    pub default_max_tokens: usize,
    /// Most sequences one request may ask for (`n` × prompts; CoRD's `beam_width`).
    pub max_n: usize,
    /// Most continuations of one `/v1/score` request.
    pub max_continuations: usize,
    /// Stop on SIGINT / SIGTERM (the CLI); tests stop with [`Server::shutdown`].
    pub handle_signals: bool,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            host: "127.0.0.1".into(),
            port: 8000,
            api_key: None,
            max_body_bytes: 4 << 20,
            max_tokens: 4096,
            default_max_tokens: 512,
            max_n: 16,
            max_continuations: 256,
            handle_signals: false,
        }
    }
}

/// A running server.
pub struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<Result<(), ServeError>>>,
}

impl Server {
    /// Binds the address, starts the engine worker over `models` and serves in the background.
    pub fn start(models: Models, config: ServeConfig) -> Result<Server, ServeError> {
        if config.max_tokens == 0 || config.max_n == 0 || config.max_body_bytes == 0 {
            return Err(ServeError::Config(
                "max tokens, max n and the body limit must be at least 1".into(),
            ));
        }
        let bind = format!("{}:{}", config.host, config.port);
        let listener = std::net::TcpListener::bind(&bind).map_err(|source| ServeError::Bind {
            addr: bind.clone(),
            source,
        })?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stopping = Arc::new(AtomicBool::new(false));
        let infos = models.infos();
        let pool = models.pool();
        let worker = Worker::start(models, stopping.clone())?;
        let app = Arc::new(App {
            jobs: worker.sender(),
            models: infos,
            pool,
            config: config.clone(),
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            next_id: AtomicU64::new(1),
            stopping: stopping.clone(),
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("cord-http")
            .enable_all()
            .build()?;
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let signals = config.handle_signals;
        let thread = std::thread::Builder::new()
            .name("cord-serve".into())
            .spawn(move || -> Result<(), ServeError> {
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    let shutdown = {
                        let stopping = stopping.clone();
                        async move {
                            if signals {
                                tokio::select! {
                                    _ = stop_rx => {}
                                    _ = signal() => {}
                                }
                            } else {
                                let _ = stop_rx.await;
                            }
                            tracing::info!("shutting down: no new connections; finishing the requests in flight");
                            stopping.store(true, Ordering::SeqCst);
                        }
                    };
                    axum::serve(listener, router(app))
                        .with_graceful_shutdown(shutdown)
                        .await?;
                    Ok::<(), ServeError>(())
                })?;
                // Every handler (and so every job sender but the worker's own) is gone: the
                // worker finishes what it has and stops.
                worker.join();
                Ok(())
            })?;
        Ok(Server {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting connections, lets the requests in flight finish (a CoRD search stops
    /// after its current round) and waits for the engine worker.
    pub fn shutdown(mut self) -> Result<(), ServeError> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.join()
    }

    /// Waits until the server stops (on SIGINT/SIGTERM with `handle_signals`).
    pub fn wait(mut self) -> Result<(), ServeError> {
        self.join()
    }

    fn join(&mut self) -> Result<(), ServeError> {
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| ServeError::Worker("the server thread panicked".into()))?,
            None => Ok(()),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = self.join();
    }
}

/// SIGINT or SIGTERM.
async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return ctrl_c.await,
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await;
}
