//! The scifaas service: REST API, auth, registry, task store, the link to agents.
//!
//! [`start`] opens (or creates) the store in the data directory, makes the admin user
//! and token on the first start, binds the listener and serves until
//! [`RunningService::shutdown`].

mod api;
mod app;
mod auth;
mod error;
mod extract;
mod hub;
mod link;
mod registry;
mod store;
mod submit;
pub mod tls;
mod views;
mod waiters;

pub use auth::ADMIN_TOKEN_FILE;

use anyhow::Context;
use app::App;
use axum::serve::ListenerExt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use store::{Store, WriterThread};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How the service runs. The `scifaas service` command fills it from its flags.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// Where to listen; port 0 picks a free port. Default `127.0.0.1:8470`.
    pub listen: SocketAddr,
    /// Holds `scifaas.db` and `admin-token`. Default `$SCIFAAS_HOME/service`
    /// (`SCIFAAS_HOME` defaults to `~/.scifaas`).
    pub data_dir: PathBuf,
    /// The largest request body, hence task payload, accepted; over it: 413. Default
    /// 10 MiB.
    pub max_payload_bytes: usize,
    /// The largest result stored; a larger one is stored as a failure of kind
    /// `too-large`. Default 10 MiB.
    pub max_result_bytes: usize,
    /// Serve HTTPS (and `wss://` to agents) with this certificate and key; `None`:
    /// plain HTTP, for loopback or behind a TLS-terminating proxy.
    pub tls: Option<tls::TlsFiles>,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8470)),
            data_dir: default_data_dir(),
            max_payload_bytes: 10 << 20,
            max_result_bytes: 10 << 20,
            tls: None,
        }
    }
}

/// `$SCIFAAS_HOME/service`, `SCIFAAS_HOME` defaulting to `~/.scifaas`.
fn default_data_dir() -> PathBuf {
    let home = std::env::var_os("SCIFAAS_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".scifaas")))
        .unwrap_or_else(|| PathBuf::from(".scifaas"));
    home.join("service")
}

/// A service that is serving.
pub struct RunningService {
    /// The address it listens on (the real port when 0 was asked).
    pub addr: SocketAddr,
    /// The admin user's token.
    pub admin_token: String,
    /// The file that holds the admin token (mode 0600).
    pub admin_token_path: PathBuf,
    app: Arc<App>,
    stop: watch::Sender<bool>,
    server: JoinHandle<()>,
    writer: WriterThread,
}

/// How long shutdown waits for requests in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

impl RunningService {
    /// Stops taking connections, ends long waits and agent links, lets requests in
    /// flight finish (up to a few seconds), commits the last writes and closes the
    /// database.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.app.hub.close_all();
        let mut server = self.server;
        if tokio::time::timeout(SHUTDOWN_GRACE, &mut server)
            .await
            .is_err()
        {
            tracing::warn!("requests still running after {SHUTDOWN_GRACE:?}; stopping anyway");
            server.abort();
        }
        self.app.store.stop_writer();
        let writer = self.writer;
        let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        tracing::info!("service stopped");
    }
}

/// Starts the service: opens or creates the store in `config.data_dir`, creates the
/// admin user and token on first start (reusing `data_dir/admin-token` later), binds
/// `config.listen`, and serves in a background task.
pub async fn start(config: ServiceConfig) -> anyhow::Result<RunningService> {
    create_private_dir(&config.data_dir)?;
    let data_dir = config.data_dir.clone();
    let (store, writer) = tokio::task::spawn_blocking(move || Store::open(&data_dir))
        .await
        .context("opening the store")?
        .with_context(|| format!("opening the store in {}", config.data_dir.display()))?;
    match serve(config, store.clone(), writer).await {
        Ok(running) => Ok(running),
        Err((e, writer)) => {
            store.stop_writer();
            let _ = tokio::task::spawn_blocking(move || writer.join()).await;
            Err(e)
        }
    }
}

async fn serve(
    config: ServiceConfig,
    store: Store,
    writer: WriterThread,
) -> Result<RunningService, (anyhow::Error, WriterThread)> {
    let prepared = async {
        let registry = registry::Registry::load(store.load_registry().await?);
        let last_done_seq = store.last_done_seq().await?;
        let (admin_token, admin_token_path) =
            auth::bootstrap_admin(&config.data_dir, &store, &registry).await?;
        // Read the certificate before anything listens: a bad one fails the start.
        let tls = config.tls.as_ref().map(tls::server_config).transpose()?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listening on {}", config.listen))?;
        let listener = (listener, tls);
        anyhow::Ok((
            registry,
            last_done_seq,
            admin_token,
            admin_token_path,
            listener,
        ))
    };
    let (registry, last_done_seq, admin_token, admin_token_path, listener) = match prepared.await {
        Ok(prepared) => prepared,
        Err(e) => return Err((e, writer)),
    };
    let (listener, tls) = listener;
    let addr = match listener.local_addr() {
        Ok(addr) => addr,
        Err(e) => return Err((e.into(), writer)),
    };
    let (stop, stopping) = watch::channel(false);
    let app = Arc::new(App {
        config,
        store,
        registry,
        hub: hub::Hub::default(),
        waiters: waiters::Waiters::new(last_done_seq),
        stopping: stopping.clone(),
    });
    let router = api::router(app.clone());
    let server = match tls {
        None => {
            // Small request/answer exchanges: Nagle's delay would dominate their latency.
            let listener = listener.tap_io(|tcp| {
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!("cannot set TCP_NODELAY: {e}");
                }
            });
            tokio::spawn(serve_until_stopped(listener, router, stopping))
        }
        Some(tls) => match tls::TlsListener::new(listener, tls) {
            Ok(listener) => tokio::spawn(serve_until_stopped(listener, router, stopping)),
            Err(e) => return Err((e.into(), writer)),
        },
    };
    tracing::info!(%addr, "scifaas service listening");
    Ok(RunningService {
        addr,
        admin_token,
        admin_token_path,
        app,
        stop,
        server,
        writer,
    })
}

async fn serve_until_stopped<L>(
    listener: L,
    router: axum::Router,
    mut stopping: watch::Receiver<bool>,
) where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let serving = axum::serve(listener, router).with_graceful_shutdown(async move {
        let _ = stopping.wait_for(|stop| *stop).await;
    });
    if let Err(e) = serving.await {
        tracing::error!("the HTTP server failed: {e}");
    }
}

/// Creates the data directory (owner-only when new: it holds the admin token).
fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restricting {}", dir.display()))?;
    Ok(())
}
