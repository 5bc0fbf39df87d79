//! `scifaas service`: the service in the foreground.

use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct ServiceCmd {
    /// Address and port to listen on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:8470")]
    listen: SocketAddr,
    /// Where the database and the admin token live [default: $SCIFAAS_HOME/service].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Largest accepted request body / task payload, in bytes.
    #[arg(long, default_value_t = 10 << 20)]
    max_payload_bytes: usize,
    /// Largest stored result, in bytes; a bigger one fails its task.
    #[arg(long, default_value_t = 10 << 20)]
    max_result_bytes: usize,
    /// Serve HTTPS with this PEM certificate chain (needs --tls-key); agents then
    /// connect with wss://.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

pub async fn run(cmd: ServiceCmd) -> anyhow::Result<()> {
    let config = scifaas_service::ServiceConfig {
        listen: cmd.listen,
        data_dir: cmd.data_dir.unwrap_or_else(crate::home::service_dir),
        max_payload_bytes: cmd.max_payload_bytes,
        max_result_bytes: cmd.max_result_bytes,
        tls: cmd
            .tls_cert
            .zip(cmd.tls_key)
            .map(|(cert, key)| scifaas_service::tls::TlsFiles { cert, key }),
    };
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let service = scifaas_service::start(config).await?;
    // Tests and scripts read these two lines; keep their form.
    println!("listening on {scheme}://{}", service.addr);
    println!(
        "admin token: {} (mode 0600)",
        service.admin_token_path.display()
    );
    shutdown_signal().await;
    tracing::info!("shutting down");
    service.shutdown().await;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
