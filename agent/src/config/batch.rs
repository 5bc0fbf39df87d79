//! `provider: {type: slurm | pbs | torque | cobalt, ...}`: pilot jobs through a batch
//! scheduler. The keys are Parsl's and Globus Compute's. Every batch provider has the same
//! block keys (counts, walltime, worker_init, launcher, ...); each has the scheduler
//! options its scheduler understands, and a key of another scheduler is an unknown key.

use std::path::PathBuf;
use std::time::Duration;

use scifaas_providers::{
    check_scheduler_options, check_word, BatchOptions, BlockRequest, CobaltProvider, PbsFlavor,
    PbsProvider, Provider, ProviderError, ScriptTemplate, ScriptVars, SlurmProvider,
};
use serde::Deserialize;

use super::check::Document;
use super::duration;
use super::error::ConfigError;
use super::{BlockLimits, LauncherConfig, LauncherKind, ProviderConfig};

/// Default time between two status queries of the scheduler: each is one command for
/// every block, and a busy scheduler should not be asked more often than this.
pub const DEFAULT_STATUS_POLL_PERIOD: Duration = Duration::from_secs(30);

/// Default walltime of a batch block: short enough to get through queues, long enough that
/// starting its managers (seconds) is a small share of it.
pub const DEFAULT_BATCH_WALLTIME: Duration = Duration::from_secs(30 * 60);

/// What every batch provider's config answers, for the accessors of `ProviderConfig`.
pub trait BatchConfig {
    /// The provider type: `slurm`, `pbs`, `torque` or `cobalt`.
    fn kind(&self) -> &'static str;
    /// Block counts and shape.
    fn limits(&self) -> BlockLimits;
    /// Shell lines run before the managers.
    fn worker_init(&self) -> &str;
    /// Each block's walltime; `None` leaves it to the scheduler.
    fn walltime(&self) -> Option<Duration>;
    /// How a block starts its managers.
    fn launcher(&self) -> &LauncherConfig;
    /// The endpoint's own job-script template, if any.
    fn script_template(&self) -> Option<&PathBuf>;
    /// Limit on each scheduler command.
    fn cmd_timeout(&self) -> Duration;
    /// How often the agent asks the scheduler for the state of its blocks.
    fn status_poll_period(&self) -> Duration;
    /// The scheduler options, for the provider.
    fn options(&self) -> BatchOptions;
    /// The one-word options as (key, value): checked to be one word.
    fn word_options(&self) -> Vec<(&'static str, Option<&str>)>;
    /// Where `script_template` is, to resolve it against the config's directory.
    fn script_template_mut(&mut self) -> &mut Option<PathBuf>;
}

/// One batch provider's config struct: the keys every batch provider has, then `$field`s,
/// the options of its scheduler; `$words` are its one-word options besides `account`.
macro_rules! batch_provider_config {
    (
        $(#[$doc:meta])*
        $name:ident {
            kind: $kind:literal,
            launcher: $launcher:expr,
            queue: $queue:ident,
            words: [$($word:ident),*],
            $( $(#[$field_doc:meta])* $field:ident: $ty:ty = $default:expr, )*
        }
    ) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct $name {
            /// Blocks submitted when the endpoint starts (default 0: no pilot job until
            /// work arrives; every pilot costs allocation).
            pub init_blocks: u32,
            /// Blocks kept even when idle (default 0).
            pub min_blocks: u32,
            /// The most blocks at once (default 1).
            pub max_blocks: u32,
            /// Nodes per block, each running one manager (default 1).
            pub nodes_per_block: u32,
            /// Share of outstanding tasks that get a worker slot, in [0, 1] (default 1).
            pub parallelism: f64,
            /// Each block's walltime (default 00:30:00; `null` leaves it to the scheduler's
            /// default). A block that reaches it ends as `timeout`, which is normal.
            #[serde(deserialize_with = "duration::optional")]
            pub walltime: Option<Duration>,
            /// Shell lines run before the managers, e.g. `module load python` (default
            /// empty).
            pub worker_init: String,
            /// The account (project, allocation) charged (default: the user's default).
            pub account: Option<String>,
            /// Directive lines added to the job script's header as they are, e.g.
            /// `#SBATCH --gpus-per-node=4` (default none).
            pub scheduler_options: String,
            /// Limit on each scheduler command (default 30s).
            #[serde(deserialize_with = "duration::required")]
            pub cmd_timeout: Duration,
            /// How often the agent asks the scheduler for the state of all its blocks, in
            /// one command (default 30s). Blocks mostly report through their managers.
            #[serde(deserialize_with = "duration::required")]
            pub status_poll_period: Duration,
            /// How a block starts one manager per node, with `overrides` (see the default
            /// in each provider's doc).
            pub launcher: LauncherConfig,
            /// A handlebars file replacing the built-in job-script template; relative to
            /// the config's directory (default: the built-in one).
            pub script_template: Option<PathBuf>,
            $( $(#[$field_doc])* pub $field: $ty, )*
        }

        impl Default for $name {
            fn default() -> Self {
                Self {
                    init_blocks: 0,
                    min_blocks: 0,
                    max_blocks: 1,
                    nodes_per_block: 1,
                    parallelism: 1.0,
                    walltime: Some(DEFAULT_BATCH_WALLTIME),
                    worker_init: String::new(),
                    account: None,
                    scheduler_options: String::new(),
                    cmd_timeout: scifaas_providers::DEFAULT_CMD_TIMEOUT,
                    status_poll_period: DEFAULT_STATUS_POLL_PERIOD,
                    launcher: LauncherConfig {
                        kind: $launcher,
                        overrides: String::new(),
                    },
                    script_template: None,
                    $( $field: $default, )*
                }
            }
        }

        impl BatchConfig for $name {
            fn kind(&self) -> &'static str {
                $kind
            }
            fn limits(&self) -> BlockLimits {
                BlockLimits {
                    init_blocks: self.init_blocks,
                    min_blocks: self.min_blocks,
                    max_blocks: self.max_blocks,
                    nodes_per_block: self.nodes_per_block,
                    parallelism: self.parallelism,
                }
            }
            fn worker_init(&self) -> &str {
                &self.worker_init
            }
            fn walltime(&self) -> Option<Duration> {
                self.walltime
            }
            fn launcher(&self) -> &LauncherConfig {
                &self.launcher
            }
            fn script_template(&self) -> Option<&PathBuf> {
                self.script_template.as_ref()
            }
            fn cmd_timeout(&self) -> Duration {
                self.cmd_timeout
            }
            fn status_poll_period(&self) -> Duration {
                self.status_poll_period
            }
            fn options(&self) -> BatchOptions {
                BatchOptions {
                    queue: self.$queue.clone(),
                    account: self.account.clone(),
                    scheduler_options: self.scheduler_options.clone(),
                    cmd_timeout: self.cmd_timeout,
                    ..self.scheduler_specific()
                }
            }
            fn word_options(&self) -> Vec<(&'static str, Option<&str>)> {
                vec![
                    ("account", self.account.as_deref()),
                    $( (stringify!($word), self.$word.as_deref()), )*
                ]
            }
            fn script_template_mut(&mut self) -> &mut Option<PathBuf> {
                &mut self.script_template
            }
        }
    };
}

batch_provider_config! {
    /// `provider: {type: slurm, ...}`: `sbatch`, `squeue`/`sacct`, `scancel`. Default
    /// launcher `{type: srun}`.
    SlurmProviderConfig {
        kind: "slurm",
        launcher: LauncherKind::Srun,
        queue: partition,
        words: [partition, qos, constraint],
        /// The partition (default: the cluster's default partition).
        partition: Option<String> = None,
        /// The quality of service (default: none).
        qos: Option<String> = None,
        /// Node features, `--constraint` (e.g. `cpu`, `gpu&hbm80g`; default none).
        constraint: Option<String> = None,
        /// Cores per node for the block's one task per node, `--cpus-per-task` (default:
        /// Slurm's, one).
        cores_per_node: Option<u32> = None,
        /// Memory per node in GB, `--mem` (default: Slurm's).
        mem_per_node: Option<u32> = None,
        /// Whole nodes, shared with no other job, `--exclusive` (default true, as Parsl).
        exclusive: bool = true,
    }
}

batch_provider_config! {
    /// `provider: {type: pbs, ...}`: PBS Pro / OpenPBS, `qsub -l select=...`, `qstat -x -f
    /// -F json`, `qdel`. Default launcher `{type: mpiexec}`.
    PbsProviderConfig {
        kind: "pbs",
        launcher: LauncherKind::Mpiexec,
        queue: queue,
        words: [queue, select_options],
        /// The queue (default: the server's default queue).
        queue: Option<String> = None,
        /// `ncpus` of each node's select chunk (default: PBS's). Parsl's name,
        /// `cpus_per_node`, is accepted too.
        #[serde(alias = "cpus_per_node")]
        cores_per_node: Option<u32> = None,
        /// `mem` of each node's select chunk, in GB (default: PBS's).
        mem_per_node: Option<u32> = None,
        /// More resources of each chunk, e.g. `ngpus=4` or `system=polaris` (default
        /// none).
        select_options: Option<String> = None,
        /// Whole nodes only, `place=scatter:excl` (default false).
        exclusive: bool = false,
    }
}

batch_provider_config! {
    /// `provider: {type: torque, ...}`: `qsub -l nodes=N:ppn=C`, `qstat -f`, `qdel`.
    /// Default launcher `{type: single_node}` (one-node blocks; set a multi-node one for
    /// more).
    TorqueProviderConfig {
        kind: "torque",
        launcher: LauncherKind::SingleNode,
        queue: queue,
        words: [queue],
        /// The queue (default: the server's default queue).
        queue: Option<String> = None,
        /// Processors per node, `ppn` (default 1).
        cores_per_node: Option<u32> = None,
    }
}

batch_provider_config! {
    /// `provider: {type: cobalt, ...}`: ALCF Cobalt, `qsub -n N -t MIN -q Q -A A --mode
    /// script`, `qstat`, `qdel`. Default launcher `{type: aprun}`. A walltime is required.
    CobaltProviderConfig {
        kind: "cobalt",
        launcher: LauncherKind::Aprun,
        queue: queue,
        words: [queue],
        /// The queue (default: Cobalt's default queue).
        queue: Option<String> = None,
    }
}

impl SlurmProviderConfig {
    fn scheduler_specific(&self) -> BatchOptions {
        BatchOptions {
            qos: self.qos.clone(),
            constraint: self.constraint.clone(),
            cores_per_node: self.cores_per_node,
            mem_per_node: self.mem_per_node,
            exclusive: self.exclusive,
            ..BatchOptions::default()
        }
    }
}

impl PbsProviderConfig {
    fn scheduler_specific(&self) -> BatchOptions {
        BatchOptions {
            cores_per_node: self.cores_per_node,
            mem_per_node: self.mem_per_node,
            select_options: self.select_options.clone(),
            exclusive: self.exclusive,
            ..BatchOptions::default()
        }
    }
}

impl TorqueProviderConfig {
    fn scheduler_specific(&self) -> BatchOptions {
        BatchOptions {
            cores_per_node: self.cores_per_node,
            ..BatchOptions::default()
        }
    }
}

impl CobaltProviderConfig {
    fn scheduler_specific(&self) -> BatchOptions {
        BatchOptions::default()
    }
}

/// The provider a batch config describes, before it is handed to the agent.
pub enum BatchProvider {
    /// `type: slurm`.
    Slurm(SlurmProvider),
    /// `type: pbs` or `type: torque`.
    Pbs(PbsProvider),
    /// `type: cobalt`.
    Cobalt(CobaltProvider),
}

impl BatchProvider {
    /// The provider of `config`, with its template (the endpoint's or the built-in one),
    /// launcher and options; `None` for a provider that is not a batch scheduler.
    pub fn from_config(config: &ProviderConfig) -> Result<Option<Self>, ProviderError> {
        let Some(batch) = config.batch() else {
            return Ok(None);
        };
        let (template, launcher, options) = (
            config.script_template()?,
            config.launcher(),
            batch.options(),
        );
        Ok(Some(match config {
            ProviderConfig::Slurm(_) => {
                Self::Slurm(SlurmProvider::new(template, launcher, options))
            }
            ProviderConfig::Pbs(_) => Self::Pbs(PbsProvider::new(
                PbsFlavor::Pro,
                template,
                launcher,
                options,
            )),
            ProviderConfig::Torque(_) => Self::Pbs(PbsProvider::new(
                PbsFlavor::Torque,
                template,
                launcher,
                options,
            )),
            ProviderConfig::Cobalt(_) => {
                Self::Cobalt(CobaltProvider::new(template, launcher, options))
            }
            ProviderConfig::Local(_) | ProviderConfig::Kubernetes(_) => return Ok(None),
        }))
    }

    /// The job script the provider would submit for `block`.
    pub fn render_script(&self, block: &BlockRequest) -> Result<String, ProviderError> {
        match self {
            Self::Slurm(p) => p.render_script(block),
            Self::Pbs(p) => p.render_script(block),
            Self::Cobalt(p) => p.render_script(block),
        }
    }

    /// The provider, for the agent.
    pub fn into_provider(self) -> Box<dyn Provider> {
        match self {
            Self::Slurm(p) => Box::new(p),
            Self::Pbs(p) => Box::new(p),
            Self::Cobalt(p) => Box::new(p),
        }
    }
}

impl Document<'_> {
    /// The checks of a batch provider's config that serde cannot make.
    pub(super) fn check_batch(&self, config: &mut dyn BatchConfig) -> Result<(), ConfigError> {
        let limits = config.limits();
        if limits.nodes_per_block == 0 {
            return Err(self.invalid(
                &["provider.nodes_per_block"],
                "must be at least 1 (a block is at least one node)",
            ));
        }
        self.check_block_counts(limits.init_blocks, limits.min_blocks, limits.max_blocks)?;
        self.check_parallelism(limits.parallelism)?;
        match config.walltime() {
            Some(w) if w < Duration::from_secs(1) => {
                return Err(self.invalid(
                    &["provider.walltime"],
                    "must be at least 1s (null leaves it to the scheduler)",
                ))
            }
            None if config.kind() == "cobalt" => {
                return Err(self.invalid(
                    &["provider.walltime"],
                    "Cobalt's qsub needs a walltime (-t): set one, e.g. \"00:30:00\"",
                ))
            }
            _ => {}
        }
        if config.cmd_timeout().is_zero() {
            return Err(self.invalid(&["provider.cmd_timeout"], "must be greater than 0"));
        }
        if config.status_poll_period().is_zero() {
            return Err(self.invalid(&["provider.status_poll_period"], "must be greater than 0"));
        }
        for (key, value) in config.word_options() {
            if let Some(value) = value {
                check_word(value).map_err(|e| self.invalid(&[&format!("provider.{key}")], e))?;
            }
        }
        let options = config.options();
        check_scheduler_options(&options.scheduler_options)
            .map_err(|e| self.invalid(&["provider.scheduler_options"], e))?;
        if options.cores_per_node == Some(0) {
            return Err(self.invalid(
                &["provider.cores_per_node", "provider.cpus_per_node"],
                "must be at least 1 (leave it out for the scheduler's default)",
            ));
        }
        if options.mem_per_node == Some(0) {
            return Err(self.invalid(
                &["provider.mem_per_node"],
                "must be at least 1 GB (leave it out for the scheduler's default)",
            ));
        }
        self.check_launcher(config.launcher(), limits.nodes_per_block)?;
        if let Some(path) = config.script_template_mut() {
            *path = self.resolve(path);
            let example = ScriptVars::example().with_extra(options.script_vars());
            // Compiled and rendered once now, so that a broken template fails here with
            // its line rather than at the first block.
            ScriptTemplate::from_file(path)
                .and_then(|t| t.validate(&example))
                .map_err(|e| self.invalid(&["provider.script_template"], e.to_string()))?;
        }
        Ok(())
    }
}
