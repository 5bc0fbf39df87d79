//! From an endpoint config to what the agent runs with: its settings and its provider.

use crate::blocks::ScalingPolicy;
use crate::config::{Accelerators, BatchProvider, EndpointConfig, EngineConfig, ProviderConfig};
use crate::endpoint::AgentSettings;
use crate::interchange::InterchangeConfig;
use anyhow::{bail, Context};
use scifaas_providers::{Credentials, KubernetesProvider, LocalProvider, Provider};
use std::path::PathBuf;

/// The Unix socket in the state directory that managers on this host connect to.
const INTERCHANGE_SOCKET: &str = "interchange.sock";

/// Whether every manager of a block runs on this host: the local provider starting one
/// manager itself (with a launcher such as `srun` or `mpiexec` inside an allocation,
/// they may run on other nodes).
fn managers_on_this_host(provider: &ProviderConfig) -> bool {
    matches!(provider, ProviderConfig::Local(_))
        && provider.launcher() == scifaas_providers::Launcher::SingleNode
}

/// Builds the agent's settings and provider. `scifaas_exe` is the binary pilots run as
/// `scifaas manager`. A fresh endpoint secret is drawn for every agent start, so only
/// the pilots of this agent can register.
pub fn from_config(
    name: &str,
    config: &EndpointConfig,
    state_dir: PathBuf,
    agent_token: &str,
    scifaas_exe: PathBuf,
) -> anyhow::Result<(AgentSettings, Box<dyn Provider>)> {
    let engine = &config.engine;
    let address = match &engine.interface {
        Some(interface) => interface_address(interface)?,
        None => engine.address.clone(),
    };
    let workers = engine.workers_per_node();
    let limits = config.provider.limits();
    let provider: Box<dyn Provider> = match &config.provider {
        ProviderConfig::Local(_) => Box::new(LocalProvider::new(
            config
                .provider
                .script_template()
                .context("loading the provider's script template")?,
            config.provider.launcher(),
        )),
        ProviderConfig::Kubernetes(k) => Box::new(KubernetesProvider::new(
            name,
            k.options(),
            k.pod_template()
                .context("loading the provider's pod template")?,
            Credentials::discover().context("finding Kubernetes credentials")?,
        )),
        ProviderConfig::Slurm(_)
        | ProviderConfig::Pbs(_)
        | ProviderConfig::Torque(_)
        | ProviderConfig::Cobalt(_) => BatchProvider::from_config(&config.provider)
            .context("loading the provider's script template")?
            .expect("slurm, pbs, torque and cobalt are batch providers")
            .into_provider(),
    };
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let exe = scifaas_exe.to_string_lossy().into_owned();
    let local_socket =
        managers_on_this_host(&config.provider).then(|| state_dir.join(INTERCHANGE_SOCKET));
    let settings = AgentSettings {
        name: name.to_owned(),
        state_dir,
        service_url: config.service_url.clone(),
        service_ca: config.service_ca.clone(),
        agent_token: agent_token.to_owned(),
        interchange: InterchangeConfig {
            bind_address: address,
            port_range: engine.port_range,
            secret: hex::encode(secret),
            heartbeat_period: engine.heartbeat_period,
            heartbeat_threshold: engine.heartbeat_threshold,
            prefetch: engine.prefetch_capacity,
            max_retries_on_system_failure: engine.max_retries_on_system_failure,
            local_socket,
        },
        scaling: ScalingPolicy {
            init_blocks: limits.init_blocks,
            min_blocks: limits.min_blocks,
            max_blocks: limits.max_blocks,
            nodes_per_block: limits.nodes_per_block,
            workers_per_node: workers,
            parallelism: limits.parallelism,
            max_idletime: config.strategy.max_idletime,
            status_poll_period: config.provider.status_poll_period(),
        },
        strategy_period: config.strategy.period,
        manager_command: vec![exe, "manager".to_owned()],
        manager_args: {
            let mut args = manager_args(engine, workers);
            if let Some(walltime) = config.provider.walltime() {
                args.extend(["--walltime".to_owned(), walltime.as_secs().to_string()]);
            }
            args
        },
        walltime: config.provider.walltime(),
        worker_init: config.provider.worker_init().to_owned(),
        task_walltime: engine.task_walltime,
        allowed_containers: engine.allowed_containers.clone(),
        // The service keeps every task until its result is stored and sends unfinished
        // ones again when the agent reconnects, so the journal needs to survive a crash
        // of the agent (write(2) does), not a power loss (which fdatasync would).
        journal_sync: false,
    };
    Ok((settings, provider))
}

/// The IPv4 address of a network interface (`hsn0`, `ib0`, `eth0`): what compute nodes
/// use to reach the login node's interchange.
pub fn interface_address(interface: &str) -> anyhow::Result<String> {
    let mut names = Vec::new();
    for ifaddr in nix::ifaddrs::getifaddrs().context("listing network interfaces")? {
        if ifaddr.interface_name != interface {
            names.push(ifaddr.interface_name);
            continue;
        }
        if let Some(ip) = ifaddr
            .address
            .as_ref()
            .and_then(|a| a.as_sockaddr_in())
            .map(|sin| sin.ip())
        {
            return Ok(ip.to_string());
        }
    }
    names.sort();
    names.dedup();
    bail!(
        "engine.interface: no IPv4 address on interface `{interface}`; interfaces here: {}",
        names.join(", ")
    )
}

/// The `scifaas manager` arguments that carry the engine's worker settings to every
/// manager: worker count and interpreter, the default container, the container
/// templates, the idle timeout and the accelerator ids.
fn manager_args(engine: &EngineConfig, workers: u32) -> Vec<String> {
    let mut args = vec![
        "--workers".to_owned(),
        workers.to_string(),
        "--python".to_owned(),
        engine.worker_python.clone(),
    ];
    let mut arg = |name: &str, value: String| {
        args.push(name.to_owned());
        args.push(value);
    };
    if let Some(container) = &engine.container {
        arg("--container-type", container.runtime.clone());
        arg("--container-image", container.image.clone());
        if let Some(options) = &container.options {
            arg("--container-options", options.clone());
        }
    }
    if let Some(dir) = &engine.container_templates {
        arg("--container-templates", dir.to_string_lossy().into_owned());
    }
    if let Some(timeout) = engine.worker_idle_timeout {
        arg("--worker-idle-timeout", timeout.as_secs_f64().to_string());
    }
    if let Some(Accelerators(ids)) = &engine.available_accelerators {
        arg("--accelerators", ids.join(","));
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_engines_worker_settings_reach_the_manager_command_line() {
        let text = "engine:\n  worker_python: /opt/py/bin/python3\n  container: {type: apptainer, \
                    image: /img/sci.sif, options: \"-B /scratch\"}\n  worker_idle_timeout: 90s\n  \
                    available_accelerators: [0, 2]\n";
        let config = EndpointConfig::parse(text, std::path::Path::new("/e/config.yaml")).unwrap();
        assert_eq!(
            manager_args(&config.engine, 2),
            [
                "--workers",
                "2",
                "--python",
                "/opt/py/bin/python3",
                "--container-type",
                "apptainer",
                "--container-image",
                "/img/sci.sif",
                "--container-options",
                "-B /scratch",
                "--worker-idle-timeout",
                "90",
                "--accelerators",
                "0,2"
            ]
        );
        let plain = EndpointConfig::parse("", std::path::Path::new("/e/config.yaml")).unwrap();
        assert_eq!(
            manager_args(&plain.engine, 1),
            ["--workers", "1", "--python", "python3"]
        );
    }

    #[test]
    fn the_loopback_interface_resolves_and_a_missing_one_is_named() {
        assert_eq!(interface_address("lo").unwrap(), "127.0.0.1");
        let err = interface_address("no-such-if0").unwrap_err().to_string();
        assert!(err.contains("no-such-if0") && err.contains("lo"), "{err}");
    }
}
