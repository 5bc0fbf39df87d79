//! The endpoint's YAML config (`$SCIFAAS_HOME/endpoints/NAME/config.yaml`), read strictly.
//!
//! The vocabulary is Parsl's and Globus Compute's, so that a site's config carries over.
//! Every section and key is optional and has the default documented on its field; an
//! unknown key, a value of the wrong type or an impossible value is a [`ConfigError`] that
//! names the file, the line and the key (`config.yaml:7: provider.max_blocks: min_blocks (3)
//! is greater than max_blocks (1)`), and for an unknown key lists the valid ones.

mod batch;
mod check;
mod containers;
mod duration;
mod error;
mod kubernetes;
mod locate;
mod tagged;
#[cfg(test)]
mod tests;

use crate::prefetch::Prefetch;
use std::path::{Path, PathBuf};
use std::time::Duration;

use scifaas_providers::{Launcher, ScriptTemplate};
use serde::Deserialize;
use serde_yaml_ng::Value;

pub use batch::{
    BatchConfig, BatchProvider, CobaltProviderConfig, PbsProviderConfig, SlurmProviderConfig,
    TorqueProviderConfig, DEFAULT_BATCH_WALLTIME, DEFAULT_STATUS_POLL_PERIOD,
};
use check::Document;
pub use containers::{Accelerators, ContainerConfig, ContainerPattern};
pub use duration::{format_duration, parse_duration};
pub use error::ConfigError;
pub use kubernetes::KubernetesProviderConfig;
use tagged::Tagged;

/// Where the service listens when the config does not say.
pub const DEFAULT_SERVICE_URL: &str = "http://127.0.0.1:8470";

/// Provider types this build supports.
pub const SUPPORTED_PROVIDERS: &[&str] =
    &["local", "slurm", "pbs", "torque", "cobalt", "kubernetes"];
/// Provider types of the design that are not built yet: named in a clearer error.
const PLANNED_PROVIDERS: &[&str] = &[];
/// Launcher types this build supports.
pub const SUPPORTED_LAUNCHERS: &[&str] = &Launcher::NAMES;

/// The commented config that `scifaas endpoint configure NAME` writes by default.
pub const ENDPOINT_TEMPLATE: &str = include_str!("../../configs/endpoint-template.yaml");

/// Working configs by name, for `scifaas endpoint configure NAME --from NAME`.
pub const BUILTIN_CONFIGS: &[(&str, &str)] = &[
    ("local", include_str!("../../configs/local.yaml")),
    ("slurm", include_str!("../../configs/slurm.yaml")),
    ("perlmutter", include_str!("../../configs/perlmutter.yaml")),
    ("frontera", include_str!("../../configs/frontera.yaml")),
    ("pbs", include_str!("../../configs/pbs.yaml")),
    ("polaris", include_str!("../../configs/polaris.yaml")),
    ("torque", include_str!("../../configs/torque.yaml")),
    ("theta", include_str!("../../configs/theta.yaml")),
    ("kubernetes", include_str!("../../configs/kubernetes.yaml")),
];

/// An endpoint's config.
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointConfig {
    /// A human name shown by the service (default: none, the endpoint's name is shown).
    pub display_name: Option<String>,
    /// The service the agent connects to (default [`DEFAULT_SERVICE_URL`]).
    pub service_url: String,
    /// For an `https://` service whose certificate no public authority signed: the PEM
    /// file of the authority (or the certificate itself) to trust. Default: the public
    /// web PKI roots built into scifaas.
    pub service_ca: Option<PathBuf>,
    /// How tasks are run: workers, heartbeats, the interchange's address.
    pub engine: EngineConfig,
    /// Where blocks come from.
    pub provider: ProviderConfig,
    /// When to scale.
    pub strategy: StrategyConfig,
}

/// The `engine` section: the interchange and the managers' worker pools.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Workers per manager (per node). Default: the node's CPUs / `cores_per_worker`, at
    /// least 1 (see [`EngineConfig::workers_per_node`]).
    pub max_workers_per_node: Option<u32>,
    /// Cores each worker counts as, for the default worker count (default 1; 0.5 gives two
    /// workers per core).
    pub cores_per_worker: f64,
    /// Tasks a manager may hold beyond its workers, to hide the dispatch round trip:
    /// a number, or `auto` (the default), sized from how long tasks run
    /// ([`crate::prefetch`]).
    pub prefetch_capacity: Prefetch,
    /// How often managers and interchange prove they are alive (default 30s).
    #[serde(deserialize_with = "duration::required")]
    pub heartbeat_period: Duration,
    /// Silence after which a manager is declared lost; more than `heartbeat_period`
    /// (default 120s).
    #[serde(deserialize_with = "duration::required")]
    pub heartbeat_threshold: Duration,
    /// Times a task lost with its manager or worker is run again (default 0).
    pub max_retries_on_system_failure: u32,
    /// The Python interpreter that runs workers (default `python3`).
    pub worker_python: String,
    /// A task running longer is killed and fails (default: no limit).
    #[serde(deserialize_with = "duration::optional")]
    pub task_walltime: Option<Duration>,
    /// The address managers connect to; the interchange binds it (default `127.0.0.1`).
    pub address: String,
    /// Use this network interface's address instead of `address` (default: none; setting
    /// both is an error).
    pub interface: Option<String>,
    /// Ports `[lo, hi]` the interchange may bind (default: one the kernel picks).
    pub port_range: Option<(u16, u16)>,
    /// The container every worker runs in unless a function names its own, e.g.
    /// `{type: apptainer, image: /img/sci.sif, options: "-B /scratch"}` (default: none).
    pub container: Option<ContainerConfig>,
    /// The containers a function may name: a list of `{type, image?}` (an image pattern
    /// may hold `*`; no image: any image of that type). A task whose container is not
    /// listed fails before it is queued. Default: any container.
    pub allowed_containers: Option<Vec<ContainerPattern>>,
    /// A folder of handlebars files (`bwrap.hbs`, `apptainer.hbs`, ...) replacing the
    /// built-in container command lines of `templates/containers/`; relative to the
    /// config's directory, and read by the managers, so on a file system the compute
    /// nodes share (default: the built-in ones).
    pub container_templates: Option<PathBuf>,
    /// Workers idle this long are stopped, and started again when work comes (default:
    /// never).
    #[serde(deserialize_with = "duration::optional")]
    pub worker_idle_timeout: Option<Duration>,
    /// Accelerators per node: a count (`4`) or a list of device ids (`[0, 2]`). Each
    /// worker gets one (`CUDA_VISIBLE_DEVICES`, `ROCR_VISIBLE_DEVICES`, `ZE_AFFINITY_MASK`)
    /// and there are no more workers than accelerators (default: none).
    pub available_accelerators: Option<Accelerators>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_workers_per_node: None,
            cores_per_worker: 1.0,
            prefetch_capacity: Prefetch::Auto,
            heartbeat_period: Duration::from_secs(30),
            heartbeat_threshold: Duration::from_secs(120),
            max_retries_on_system_failure: 0,
            worker_python: "python3".to_owned(),
            task_walltime: None,
            address: "127.0.0.1".to_owned(),
            interface: None,
            port_range: None,
            container: None,
            allowed_containers: None,
            container_templates: None,
            worker_idle_timeout: None,
            available_accelerators: None,
        }
    }
}

impl EngineConfig {
    /// Workers per manager on this machine: `max_workers_per_node`, or this machine's CPUs
    /// / `cores_per_worker` (at least 1). Right for the local provider; on a cluster the
    /// login node's CPU count says little about a compute node's.
    pub fn workers_per_node(&self) -> u32 {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        self.workers_per_node_with(cpus)
    }

    /// Workers per manager on a node with `cpus` CPUs, at most one per accelerator when
    /// `available_accelerators` is set.
    pub fn workers_per_node_with(&self, cpus: usize) -> u32 {
        let workers = match self.max_workers_per_node {
            Some(workers) => workers,
            None => ((cpus as f64 / self.cores_per_worker).floor() as u32).max(1),
        };
        match &self.available_accelerators {
            Some(Accelerators(ids)) => workers.min(ids.len() as u32),
            None => workers,
        }
    }
}

/// The `provider` section, by its `type`. Each resource manager has its own variant and
/// struct; the strategy uses the accessors, which every provider answers.
#[derive(Clone, Debug, PartialEq)]
pub enum ProviderConfig {
    /// `type: local`: blocks are processes on this machine.
    Local(LocalProviderConfig),
    /// `type: slurm`: blocks are Slurm batch jobs.
    Slurm(SlurmProviderConfig),
    /// `type: pbs`: blocks are PBS Pro / OpenPBS jobs.
    Pbs(PbsProviderConfig),
    /// `type: torque`: blocks are Torque jobs.
    Torque(TorqueProviderConfig),
    /// `type: cobalt`: blocks are Cobalt jobs (ALCF Theta).
    Cobalt(CobaltProviderConfig),
    /// `type: kubernetes`: each block is a pod.
    Kubernetes(KubernetesProviderConfig),
}

/// The block counts and shape, common to every provider.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockLimits {
    /// Blocks submitted at start.
    pub init_blocks: u32,
    /// Blocks kept even when idle.
    pub min_blocks: u32,
    /// Blocks never exceeded.
    pub max_blocks: u32,
    /// Nodes per block.
    pub nodes_per_block: u32,
    /// Share of outstanding tasks that get a slot (0: as few blocks as possible, 1: one
    /// slot per task).
    pub parallelism: f64,
}

impl ProviderConfig {
    /// The `type` as written in the config.
    pub fn kind(&self) -> &'static str {
        match self {
            ProviderConfig::Local(_) => "local",
            ProviderConfig::Kubernetes(_) => "kubernetes",
            other => other.batch().expect("the other providers are batch").kind(),
        }
    }

    /// The batch scheduler's part of the config, for `slurm`, `pbs`, `torque`, `cobalt`.
    pub fn batch(&self) -> Option<&dyn BatchConfig> {
        match self {
            ProviderConfig::Slurm(c) => Some(c),
            ProviderConfig::Pbs(c) => Some(c),
            ProviderConfig::Torque(c) => Some(c),
            ProviderConfig::Cobalt(c) => Some(c),
            ProviderConfig::Local(_) | ProviderConfig::Kubernetes(_) => None,
        }
    }

    /// How often the agent asks the resource manager for the state of all its blocks.
    pub fn status_poll_period(&self) -> Duration {
        match self {
            ProviderConfig::Local(c) => c.status_poll_period,
            // Pods are listed in one API call, as cheap as a scheduler's poll.
            ProviderConfig::Kubernetes(_) => DEFAULT_STATUS_POLL_PERIOD,
            other => other
                .batch()
                .expect("the other providers are batch")
                .status_poll_period(),
        }
    }

    /// Block counts and shape.
    pub fn limits(&self) -> BlockLimits {
        match self {
            ProviderConfig::Local(c) => BlockLimits {
                init_blocks: c.init_blocks,
                min_blocks: c.min_blocks,
                max_blocks: c.max_blocks,
                nodes_per_block: c.nodes_per_block,
                parallelism: c.parallelism,
            },
            ProviderConfig::Kubernetes(c) => BlockLimits {
                init_blocks: c.init_blocks,
                min_blocks: c.min_blocks,
                max_blocks: c.max_blocks,
                nodes_per_block: c.nodes_per_block,
                parallelism: c.parallelism,
            },
            other => other
                .batch()
                .expect("the other providers are batch")
                .limits(),
        }
    }

    /// Shell lines run in each block before the managers.
    pub fn worker_init(&self) -> &str {
        match self {
            ProviderConfig::Local(c) => &c.worker_init,
            ProviderConfig::Kubernetes(c) => &c.worker_init,
            other => other
                .batch()
                .expect("the other providers are batch")
                .worker_init(),
        }
    }

    /// Each block's walltime, if limited.
    pub fn walltime(&self) -> Option<Duration> {
        match self {
            ProviderConfig::Local(c) => c.walltime,
            ProviderConfig::Kubernetes(c) => c.walltime,
            other => other
                .batch()
                .expect("the other providers are batch")
                .walltime(),
        }
    }

    /// The launcher that starts managers in a block.
    pub fn launcher(&self) -> Launcher {
        match self {
            ProviderConfig::Local(c) => c.launcher.launcher(),
            // One manager per pod, started as the container's command.
            ProviderConfig::Kubernetes(_) => Launcher::SingleNode,
            other => other
                .batch()
                .expect("the other providers are batch")
                .launcher()
                .launcher(),
        }
    }

    /// The job-script template: the endpoint's override (an absolute path once loaded),
    /// else the provider's built-in one.
    pub fn script_template(&self) -> Result<ScriptTemplate, scifaas_providers::ProviderError> {
        let (kind, path) = match self {
            ProviderConfig::Local(c) => ("local", c.script_template.as_ref()),
            ProviderConfig::Kubernetes(_) => {
                return Err(scifaas_providers::ProviderError::Unsupported {
                    provider: "kubernetes",
                    message: "blocks are pods from pod_template, not job scripts".to_owned(),
                })
            }
            other => {
                let batch = other.batch().expect("the other providers are batch");
                (batch.kind(), batch.script_template())
            }
        };
        match path {
            Some(path) => ScriptTemplate::from_file(path),
            None => Ok(ScriptTemplate::builtin(kind)
                .expect("every supported provider has a built-in template")),
        }
    }

    /// The limit on each scheduler command (`sbatch`, `squeue`, ...).
    pub fn cmd_timeout(&self) -> Duration {
        match self {
            ProviderConfig::Local(c) => c.cmd_timeout,
            ProviderConfig::Kubernetes(c) => c.cmd_timeout,
            other => other
                .batch()
                .expect("the other providers are batch")
                .cmd_timeout(),
        }
    }
}

/// `provider: {type: local, ...}`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LocalProviderConfig {
    /// Blocks started with the endpoint (default 1).
    pub init_blocks: u32,
    /// Blocks kept even when idle (default 0).
    pub min_blocks: u32,
    /// The most blocks at once (default 1).
    pub max_blocks: u32,
    /// Nodes per block; the local provider has one (default and only value 1).
    pub nodes_per_block: u32,
    /// Share of outstanding tasks that get a slot, in [0, 1] (default 1).
    pub parallelism: f64,
    /// Shell lines run before the manager (default empty).
    pub worker_init: String,
    /// A block is stopped (state `timeout`) after this long (default: never).
    #[serde(deserialize_with = "duration::optional")]
    pub walltime: Option<Duration>,
    /// Limit on each provider command (default 30s; the local provider runs none).
    #[serde(deserialize_with = "duration::required")]
    pub cmd_timeout: Duration,
    /// How the block starts its manager (default `{type: single_node}`, the only valid
    /// one here).
    pub launcher: LauncherConfig,
    /// A handlebars file replacing the built-in `local.sh.hbs`; relative to the config's
    /// directory (default: the built-in one).
    pub script_template: Option<PathBuf>,
    /// How often the agent checks its blocks (default 5s: it costs nothing here, and a
    /// block's walltime is enforced when it is checked).
    #[serde(deserialize_with = "duration::required")]
    pub status_poll_period: Duration,
}

impl Default for LocalProviderConfig {
    fn default() -> Self {
        Self {
            init_blocks: 1,
            min_blocks: 0,
            max_blocks: 1,
            nodes_per_block: 1,
            parallelism: 1.0,
            worker_init: String::new(),
            walltime: None,
            cmd_timeout: Duration::from_secs(30),
            launcher: LauncherConfig::default(),
            script_template: None,
            status_poll_period: Duration::from_secs(5),
        }
    }
}

/// `launcher: {type: ..., overrides: ...}`: how a block starts one manager per node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LauncherConfig {
    /// The launcher's type.
    #[serde(rename = "type")]
    pub kind: LauncherKind,
    /// Extra options of the launch command, inserted as written before the manager
    /// command, e.g. `-c 128 --cpu-bind=none` for srun (default none; `single_node` takes
    /// none).
    #[serde(default)]
    pub overrides: String,
}

/// The launcher types.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LauncherKind {
    /// The manager command as it is, once per block.
    #[default]
    SingleNode,
    /// `srun --ntasks=NODES --ntasks-per-node=1 OVERRIDES CMD` (Slurm).
    Srun,
    /// `mpiexec -n NODES --ppn 1 OVERRIDES CMD` (MPICH/Hydra, Cray PALS on Polaris).
    Mpiexec,
    /// `aprun -n NODES -N 1 OVERRIDES CMD` (Cray ALPS on Theta).
    Aprun,
    /// `jsrun -n NODES -r 1 -a 1 OVERRIDES CMD` (IBM LSF on Summit).
    Jsrun,
}

impl LauncherConfig {
    /// The providers crate's launcher for this config.
    pub fn launcher(&self) -> Launcher {
        let overrides = self.overrides.trim().to_owned();
        match self.kind {
            LauncherKind::SingleNode => Launcher::SingleNode,
            LauncherKind::Srun => Launcher::Srun { overrides },
            LauncherKind::Mpiexec => Launcher::Mpiexec { overrides },
            LauncherKind::Aprun => Launcher::Aprun { overrides },
            LauncherKind::Jsrun => Launcher::Jsrun { overrides },
        }
    }
}

/// The `strategy` section: when the agent reconsiders its blocks.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StrategyConfig {
    /// How often the agent compares work and blocks (default 5s).
    #[serde(deserialize_with = "duration::required")]
    pub period: Duration,
    /// How long a block may idle before it is scaled in (default 120s).
    #[serde(deserialize_with = "duration::required")]
    pub max_idletime: Duration,
}

impl Default for StrategyConfig {
    fn default() -> Self {
        Self {
            period: Duration::from_secs(5),
            max_idletime: Duration::from_secs(120),
        }
    }
}

/// The document as serde reads it, for provider type `P`.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields, bound = "P: Deserialize<'de> + Default")]
struct RawConfig<P> {
    display_name: Option<String>,
    service_url: String,
    service_ca: Option<PathBuf>,
    engine: EngineConfig,
    provider: Tagged<P>,
    strategy: StrategyConfig,
}

impl<P: Default> Default for RawConfig<P> {
    fn default() -> Self {
        Self {
            display_name: None,
            service_url: DEFAULT_SERVICE_URL.to_owned(),
            service_ca: None,
            engine: EngineConfig::default(),
            provider: Tagged(P::default()),
            strategy: StrategyConfig::default(),
        }
    }
}

impl<P> RawConfig<P> {
    fn into_config(self, provider: impl FnOnce(P) -> ProviderConfig) -> EndpointConfig {
        EndpointConfig {
            display_name: self.display_name,
            service_url: self.service_url,
            service_ca: self.service_ca,
            engine: self.engine,
            provider: provider(self.provider.0),
            strategy: self.strategy,
        }
    }
}

impl EndpointConfig {
    /// Reads and checks the config at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and checks `text`, read from `origin` (named in errors; a relative
    /// `script_template` is relative to its directory).
    pub fn parse(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        let doc = Document { text, file: origin };
        let value: Value = serde_yaml_ng::from_str(text).map_err(|e| doc.yaml_error(&e, true))?;
        let config = match doc.provider_type(&value)? {
            "local" => doc
                .typed::<LocalProviderConfig>()?
                .into_config(ProviderConfig::Local),
            "kubernetes" => doc
                .typed::<KubernetesProviderConfig>()?
                .into_config(ProviderConfig::Kubernetes),
            "slurm" => doc
                .typed::<SlurmProviderConfig>()?
                .into_config(ProviderConfig::Slurm),
            "pbs" => doc
                .typed::<PbsProviderConfig>()?
                .into_config(ProviderConfig::Pbs),
            "torque" => doc
                .typed::<TorqueProviderConfig>()?
                .into_config(ProviderConfig::Torque),
            "cobalt" => doc
                .typed::<CobaltProviderConfig>()?
                .into_config(ProviderConfig::Cobalt),
            other => unreachable!("provider_type answers only supported types, not {other}"),
        };
        doc.check(config)
    }
}

/// `template` (a config text such as [`ENDPOINT_TEMPLATE`]) with its top-level
/// `display_name` and `service_url` set: what `scifaas endpoint configure` writes. Each
/// replaces the key's line, or its commented-out `# key:` line, or goes first; the
/// comments stay.
pub fn endpoint_config_text(template: &str, display_name: &str, service_url: &str) -> String {
    let scalar = |value: &str| {
        serde_yaml_ng::to_string(value)
            .map(|s| s.trim_end().to_owned())
            .unwrap_or_else(|_| format!("{value:?}"))
    };
    let mut lines: Vec<String> = template.lines().map(str::to_owned).collect();
    for (key, value) in [("display_name", display_name), ("service_url", service_url)] {
        let line = format!("{key}: {}", scalar(value));
        let set = format!("{key}:");
        let commented = format!("# {key}:");
        let at = lines
            .iter()
            .position(|l| l.starts_with(&set))
            .or_else(|| lines.iter().position(|l| l.starts_with(&commented)));
        match at {
            Some(at) => lines[at] = line,
            None => lines.insert(0, line),
        }
    }
    let mut text = lines.join("\n");
    text.push('\n');
    text
}
