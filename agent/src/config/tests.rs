//! Every rule of the endpoint config: what it accepts here, what it refuses (with the
//! exact file:line:key of the error) in `rejected`.

mod batch;
mod containers;
mod rejected;

use super::*;

const FILE: &str = "/home/u/.scifaas/endpoints/ep/config.yaml";

fn parse(text: &str) -> EndpointConfig {
    EndpointConfig::parse(text, Path::new(FILE)).unwrap_or_else(|e| panic!("{e}"))
}

fn error(text: &str) -> String {
    match EndpointConfig::parse(text, Path::new(FILE)) {
        Ok(config) => panic!("accepted: {config:?}"),
        Err(e) => e.to_string(),
    }
}

/// Asserts the error is at `line` about `key`, and its message contains `words`.
fn assert_error(text: &str, line: usize, key: &str, words: &str) {
    let err = error(text);
    let prefix = format!("{FILE}:{line}: {key}: ");
    assert!(err.starts_with(&prefix), "want `{prefix}...`, got `{err}`");
    assert!(err.contains(words), "want `{words}` in `{err}`");
}

fn local(config: &EndpointConfig) -> &LocalProviderConfig {
    match &config.provider {
        ProviderConfig::Local(local) => local,
        other => panic!("not a local provider: {other:?}"),
    }
}

#[test]
fn an_empty_file_is_every_default() {
    for text in ["", "# nothing but a comment\n", "---\n"] {
        let config = parse(text);
        assert_eq!(config.display_name, None);
        assert_eq!(config.service_url, "http://127.0.0.1:8470");
        assert_eq!(config.engine, EngineConfig::default());
        assert_eq!(
            config.provider,
            ProviderConfig::Local(LocalProviderConfig::default())
        );
        assert_eq!(config.strategy, StrategyConfig::default());
    }
    let e = EngineConfig::default();
    assert_eq!(e.max_workers_per_node, None);
    assert_eq!(e.cores_per_worker, 1.0);
    assert_eq!(e.prefetch_capacity, crate::prefetch::Prefetch::Auto);
    assert_eq!(e.heartbeat_period, Duration::from_secs(30));
    assert_eq!(e.heartbeat_threshold, Duration::from_secs(120));
    assert_eq!(e.max_retries_on_system_failure, 0);
    assert_eq!(e.worker_python, "python3");
    assert_eq!(e.task_walltime, None);
    assert_eq!(e.address, "127.0.0.1");
    assert_eq!(e.interface, None);
    assert_eq!(e.port_range, None);
    let p = LocalProviderConfig::default();
    assert_eq!(
        (p.init_blocks, p.min_blocks, p.max_blocks, p.nodes_per_block),
        (1, 0, 1, 1)
    );
    assert_eq!(p.parallelism, 1.0);
    assert_eq!(p.worker_init, "");
    assert_eq!(p.walltime, None);
    assert_eq!(p.cmd_timeout, Duration::from_secs(30));
    assert_eq!(p.launcher.kind, LauncherKind::SingleNode);
    assert_eq!(p.script_template, None);
    let s = StrategyConfig::default();
    assert_eq!(
        (s.period, s.max_idletime),
        (Duration::from_secs(5), Duration::from_secs(120))
    );
}

#[test]
fn empty_sections_are_their_defaults() {
    let config = parse("engine:\nprovider:\nstrategy:\n");
    assert_eq!(config.engine, EngineConfig::default());
    assert_eq!(
        config.provider,
        ProviderConfig::Local(LocalProviderConfig::default())
    );
    assert_eq!(config.strategy, StrategyConfig::default());
}

#[test]
fn a_full_config_reads_every_key() {
    let config = parse(
        "display_name: Laptop
service_url: https://faas.example.org
engine:
  max_workers_per_node: 6
  cores_per_worker: 0.5
  prefetch_capacity: 2
  heartbeat_period: 10
  heartbeat_threshold: 1m
  max_retries_on_system_failure: 1
  worker_python: /opt/py/bin/python3
  task_walltime: 500ms
  interface: lo
  port_range: [55000, 55010]
provider:
  type: local
  init_blocks: 0
  min_blocks: 0
  max_blocks: 3
  nodes_per_block: 1
  parallelism: 0.5
  worker_init: |
    module load python
    conda activate sci
  walltime: \"01:30:00\"
  cmd_timeout: 1h
  launcher: {type: single_node}
strategy: {period: 2s, max_idletime: 0}
",
    );
    assert_eq!(config.display_name.as_deref(), Some("Laptop"));
    assert_eq!(config.service_url, "https://faas.example.org");
    let e = &config.engine;
    assert_eq!(e.max_workers_per_node, Some(6));
    assert_eq!(e.cores_per_worker, 0.5);
    assert_eq!(e.prefetch_capacity, crate::prefetch::Prefetch::Fixed(2));
    assert_eq!(e.heartbeat_period, Duration::from_secs(10));
    assert_eq!(e.heartbeat_threshold, Duration::from_secs(60));
    assert_eq!(e.max_retries_on_system_failure, 1);
    assert_eq!(e.worker_python, "/opt/py/bin/python3");
    assert_eq!(e.task_walltime, Some(Duration::from_millis(500)));
    assert_eq!(e.address, "127.0.0.1");
    assert_eq!(e.interface.as_deref(), Some("lo"));
    assert_eq!(e.port_range, Some((55000, 55010)));
    let p = local(&config);
    assert_eq!((p.init_blocks, p.min_blocks, p.max_blocks), (0, 0, 3));
    assert_eq!(p.parallelism, 0.5);
    assert_eq!(p.worker_init, "module load python\nconda activate sci\n");
    assert_eq!(p.walltime, Some(Duration::from_secs(5400)));
    assert_eq!(p.cmd_timeout, Duration::from_secs(3600));
    assert_eq!(config.strategy.period, Duration::from_secs(2));
    assert_eq!(config.strategy.max_idletime, Duration::ZERO);

    let provider = &config.provider;
    assert_eq!(provider.kind(), "local");
    assert_eq!(provider.launcher(), Launcher::SingleNode);
    assert_eq!(provider.walltime(), Some(Duration::from_secs(5400)));
    assert_eq!(provider.worker_init(), p.worker_init);
    assert_eq!(provider.cmd_timeout(), Duration::from_secs(3600));
    let limits = provider.limits();
    assert_eq!(
        (limits.init_blocks, limits.min_blocks, limits.max_blocks),
        (0, 0, 3)
    );
    assert_eq!((limits.nodes_per_block, limits.parallelism), (1, 0.5));
    assert_eq!(
        provider.script_template().unwrap().origin(),
        "built-in local.sh.hbs"
    );
}

#[test]
fn the_shipped_configs_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    for name in ["local.yaml", "endpoint-template.yaml"] {
        let config = EndpointConfig::load(&dir.join(name)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.provider.kind(), "local");
    }
    for (name, text) in BUILTIN_CONFIGS {
        EndpointConfig::parse(text, Path::new(name)).unwrap_or_else(|e| panic!("{e}"));
        // A service line put in front (as `endpoint configure --service` may) is no duplicate.
        let text = format!("service_url: https://faas.example.org\n{text}");
        assert_eq!(parse(&text).service_url, "https://faas.example.org");
    }
    let template = parse(ENDPOINT_TEMPLATE);
    assert_eq!(template.display_name, None);
    assert_eq!(template.service_url, DEFAULT_SERVICE_URL);
    assert_eq!(template.engine, EngineConfig::default());
    assert_eq!(
        template.provider,
        ProviderConfig::Local(LocalProviderConfig::default())
    );
    assert_eq!(template.strategy, StrategyConfig::default());
}

#[test]
fn configure_writes_the_name_and_service_into_the_template() {
    let text = endpoint_config_text(
        ENDPOINT_TEMPLATE,
        "Lab: GPU box",
        "https://faas.example.org:8470",
    );
    let config = parse(&text);
    assert_eq!(config.display_name.as_deref(), Some("Lab: GPU box"));
    assert_eq!(config.service_url, "https://faas.example.org:8470");
    // They replace the commented-out lines, and the comments stay.
    assert!(text.starts_with("# scifaas endpoint config"));
    assert!(!text.contains("# display_name:") && !text.contains("# service_url:"));
    assert_eq!(text.lines().count(), ENDPOINT_TEMPLATE.lines().count());
    let config = parse(&endpoint_config_text("engine: {}\n", "x", "http://h:1"));
    assert_eq!(
        (config.display_name.as_deref(), config.service_url.as_str()),
        (Some("x"), "http://h:1")
    );
}

#[test]
fn workers_per_node_defaults_to_cpus_over_cores_per_worker() {
    let mut e = EngineConfig::default();
    assert_eq!(e.workers_per_node_with(8), 8);
    e.cores_per_worker = 0.5;
    assert_eq!(e.workers_per_node_with(8), 16);
    e.cores_per_worker = 3.0;
    assert_eq!(e.workers_per_node_with(8), 2);
    e.cores_per_worker = 16.0;
    assert_eq!(e.workers_per_node_with(8), 1, "at least one worker");
    e.max_workers_per_node = Some(5);
    assert_eq!(e.workers_per_node_with(8), 5);
    assert!(EngineConfig::default().workers_per_node() >= 1);
}
