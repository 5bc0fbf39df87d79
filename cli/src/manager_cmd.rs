//! `scifaas manager`: what a pilot job runs on each node.

use anyhow::Context;
use scifaas_manager::ManagerConfig;
use scifaas_protocol::BlockId;
use scifaas_worker::WorkerCommand;
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
        register_timeout: Duration::from_secs(cmd.register_timeout),
    })
}
