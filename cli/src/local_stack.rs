//! A service and a local endpoint in this process, on loopback, in a temporary
//! directory: what `scifaas demo` and `scifaas bench` measure.

use crate::client::Api;
use crate::endpoint_cmd::agent_settings;
use anyhow::Context;
use scifaas_agent::config::EndpointConfig;
use std::time::Instant;

pub struct LocalStack {
    pub api: Api,
    pub endpoint: String,
    /// When the agent was started (for the cold-start figure).
    pub endpoint_started: Instant,
    service: scifaas_service::RunningService,
    stop_agent: tokio::sync::oneshot::Sender<()>,
    agent: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

impl LocalStack {
    /// Starts the service (SQLite in a temporary directory) and a local endpoint with
    /// `workers` workers on one manager. Returns as soon as the agent is started; the
    /// first task waits for its manager and workers (the cold start).
    pub async fn start(workers: u32) -> anyhow::Result<LocalStack> {
        let dir = tempfile::Builder::new().prefix("scifaas-").tempdir()?;
        let service = scifaas_service::start(scifaas_service::ServiceConfig {
            listen: "127.0.0.1:0".parse().expect("a valid address"),
            data_dir: dir.path().join("service"),
            ..Default::default()
        })
        .await
        .context("starting the service")?;
        let url = format!("http://{}", service.addr);
        let api = Api::new(&url, &service.admin_token);
        let endpoint = "local".to_owned();
        let (_, agent_token) = api.create_endpoint(&endpoint).await?;

        let config_path = dir.path().join("config.yaml");
        let text = format!(
            "service_url: {url}\n\
             engine:\n  max_workers_per_node: {workers}\n  heartbeat_period: 2s\n  heartbeat_threshold: 10s\n\
             provider:\n  type: local\n  init_blocks: 1\n  min_blocks: 1\n  max_blocks: 1\n\
             strategy:\n  period: 1s\n"
        );
        std::fs::write(&config_path, &text)?;
        let config = EndpointConfig::parse(&text, &config_path)?;
        let (settings, provider) = agent_settings(
            &endpoint,
            &config,
            dir.path().join("endpoint"),
            &agent_token,
        )?;
        let (stop_agent, stopped) = tokio::sync::oneshot::channel::<()>();
        let endpoint_started = Instant::now();
        let agent = tokio::spawn(scifaas_agent::endpoint::run(settings, provider, async {
            let _ = stopped.await;
        }));
        Ok(LocalStack {
            api,
            endpoint,
            endpoint_started,
            service,
            stop_agent,
            agent,
            _dir: dir,
        })
    }

    /// Stops the agent (its blocks are cancelled) and then the service.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop_agent.send(());
        let agent = tokio::time::timeout(std::time::Duration::from_secs(30), self.agent)
            .await
            .context("the agent did not stop within 30 s")?;
        self.service.shutdown().await;
        agent??;
        Ok(())
    }
}
