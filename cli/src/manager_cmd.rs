//! `scifaas manager`: what a pilot job runs on each node.

use anyhow::Context;
use scifaas_manager::{ManagerConfig, DEFAULT_START_RETRY_AFTER};
use scifaas_protocol::{BlockId, ContainerSpec};
use scifaas_worker::{ContainerRuntimes, Runtime, WorkerCommand};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args)]
pub struct ManagerCmd {
    /// The interchange to connect to, e.g. tcp://10.1.2.3:54001.
    #[arg(long)]
    interchange: String,
    /// The block (pilot job) this manager belongs to.
    #[arg(long)]
    block_id: String,
    /// Warm Python workers to keep.
    #[arg(long, default_value_t = 1)]
    workers: u32,
    /// The Python interpreter that runs workers.
    #[arg(long, default_value = "python3")]
    python: String,
    /// Seconds to wait for the interchange to accept the registration.
    #[arg(long, default_value_t = 60)]
    register_timeout: u64,
    /// The pilot job's walltime in seconds: stop taking work shortly before it ends.
    #[arg(long)]
    walltime: Option<u64>,
    /// The container workers run in when a function names none (`engine.container`):
    /// its runtime, one of apptainer, singularity, charliecloud, docker, podman, shifter,
    /// bwrap.
    #[arg(long, requires = "container_image")]
    container_type: Option<String>,
    /// The default container's image (a path or a registry reference).
    #[arg(long, requires = "container_type")]
    container_image: Option<String>,
    /// The default container's runtime options, one shell-like string (`-B /scratch`).
    #[arg(long, allow_hyphen_values = true, requires = "container_type")]
    container_options: Option<String>,
    /// A folder whose RUNTIME.hbs files replace the built-in container command lines.
    #[arg(long)]
    container_templates: Option<PathBuf>,
    /// Stop workers idle for this many seconds (fractions allowed); default: never.
    #[arg(long)]
    worker_idle_timeout: Option<f64>,
    /// Accelerator ids, comma-separated: each worker sees one (CUDA_VISIBLE_DEVICES,
    /// ROCR_VISIBLE_DEVICES, ZE_AFFINITY_MASK), and there are no more workers than ids.
    #[arg(long, value_delimiter = ',')]
    accelerators: Vec<String>,
}

/// The batch job a manager runs in, from the scheduler's environment.
fn batch_job_id() -> Option<String> {
    [
        "SLURM_JOB_ID",
        "PBS_JOBID",
        "COBALT_JOBID",
        "LSB_JOBID",
        "SCIFAAS_JOB_ID",
    ]
    .iter()
    .find_map(|var| std::env::var(var).ok().filter(|v| !v.is_empty()))
}

pub fn run(cmd: ManagerCmd) -> anyhow::Result<()> {
    let secret = std::env::var("SCIFAAS_ENDPOINT_SECRET")
        .context("SCIFAAS_ENDPOINT_SECRET is not set (the pilot's job script exports it)")?;
    // Workers run user code: they must not inherit the endpoint's secret. No other
    // thread exists yet, so changing the environment is safe here.
    std::env::remove_var("SCIFAAS_ENDPOINT_SECRET");
    anyhow::ensure!(cmd.workers > 0, "--workers must be at least 1");
    // Checked before registering, so that a wrong flag ends the pilot with its reason
    // rather than failing every task.
    let containers = match &cmd.container_templates {
        Some(dir) => ContainerRuntimes::with_template_dir(dir)?,
        None => ContainerRuntimes::builtin(),
    };
    let default_container = match (cmd.container_type, cmd.container_image) {
        (Some(runtime), Some(image)) => {
            Runtime::parse(&runtime).context("--container-type")?;
            Some(ContainerSpec {
                runtime,
                image,
                options: cmd.container_options,
            })
        }
        _ => None,
    };
    let worker_idle_timeout = cmd
        .worker_idle_timeout
        .map(|secs| {
            Duration::try_from_secs_f64(secs)
                .ok()
                .filter(|d| !d.is_zero())
                .with_context(|| {
                    format!("--worker-idle-timeout {secs}: must be a positive number of seconds")
                })
        })
        .transpose()?;
    anyhow::ensure!(
        cmd.accelerators.iter().all(|id| !id.trim().is_empty()),
        "--accelerators: an empty id in {:?}",
        cmd.accelerators.join(",")
    );
    scifaas_manager::run(ManagerConfig {
        interchange: cmd.interchange,
        block_id: BlockId(cmd.block_id),
        job_id: batch_job_id(),
        workers: cmd.workers,
        secret,
        worker: WorkerCommand {
            python: cmd.python,
            prefix: Vec::new(),
            env: Vec::new(),
        },
        containers: Arc::new(containers),
        default_container,
        worker_idle_timeout,
        accelerators: cmd.accelerators,
        start_retry_after: DEFAULT_START_RETRY_AFTER,
        register_timeout: Duration::from_secs(cmd.register_timeout),
        walltime: cmd.walltime.map(Duration::from_secs),
    })
}
