//! `scifaas endpoint ...`: configure, start, stop and inspect endpoints on this machine.

use crate::client::Api;
use crate::home::{check_endpoint_name, endpoint_dir};
use crate::ServiceArgs;
use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use scifaas_agent::config::{
    endpoint_config_text, EndpointConfig, BUILTIN_CONFIGS, DEFAULT_SERVICE_URL,
};
use scifaas_agent::endpoint::AgentSettings;
use scifaas_providers::Provider;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(clap::Subcommand)]
pub enum EndpointCmd {
    /// Write a commented config for a new endpoint.
    Configure {
        name: String,
        /// Start from one of the shipped configs (see `configs/`).
        #[arg(long, default_value = "local")]
        from: String,
        /// The service's URL, written into the config.
        #[arg(long)]
        service: Option<String>,
    },
    /// Start the endpoint's agent (registering the endpoint on first start).
    Start {
        name: String,
        /// Run in the background; the pid goes to the endpoint's agent.pid.
        #[arg(long)]
        detach: bool,
        /// Token of the user who owns the endpoint (first start only).
        #[arg(long, env = "SCIFAAS_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Stop the endpoint's agent and everything it started.
    Stop { name: String },
    /// Resume provisioning after repeated submission failures paused it.
    Resume { name: String },
    /// The endpoints configured on this machine.
    List,
    /// The service's view of an endpoint.
    Status {
        name: String,
        #[command(flatten)]
        service: ServiceArgs,
    },
}

pub async fn run(cmd: EndpointCmd) -> anyhow::Result<()> {
    match cmd {
        EndpointCmd::Configure {
            name,
            from,
            service,
        } => configure(&name, &from, service.as_deref()),
        EndpointCmd::Start {
            name,
            detach,
            token,
        } => {
            if detach {
                start_detached(&name)
            } else {
                start(&name, token).await
            }
        }
        EndpointCmd::Stop { name } => stop(&name),
        EndpointCmd::Resume { name } => resume(&name),
        EndpointCmd::List => list(),
        EndpointCmd::Status { name, service } => {
            let view = Api::from_args(&service)?.endpoint(&name).await?;
            println!("{}", serde_json::to_string_pretty(&view)?);
            Ok(())
        }
    }
}

fn configure(name: &str, from: &str, service: Option<&str>) -> anyhow::Result<()> {
    check_endpoint_name(name)?;
    let Some((_, template)) = BUILTIN_CONFIGS.iter().find(|(n, _)| *n == from) else {
        let known: Vec<&str> = BUILTIN_CONFIGS.iter().map(|(n, _)| *n).collect();
        bail!(
            "no shipped config named `{from}`; known: {}",
            known.join(", ")
        );
    };
    let dir = endpoint_dir(name);
    let path = dir.join("config.yaml");
    if path.exists() {
        bail!(
            "{} already exists; edit it, or remove it to start over",
            path.display()
        );
    }
    std::fs::create_dir_all(&dir)?;
    let text = endpoint_config_text(template, name, service.unwrap_or(DEFAULT_SERVICE_URL));
    // The template must stay valid: check what we are about to write.
    EndpointConfig::parse(&text, &path)?;
    std::fs::write(&path, text)?;
    println!("wrote {}", path.display());
    println!("start it with: scifaas endpoint start {name}");
    Ok(())
}

/// Builds the agent's settings and provider from an endpoint config.
pub fn agent_settings(
    name: &str,
    config: &EndpointConfig,
    state_dir: PathBuf,
    agent_token: &str,
) -> anyhow::Result<(AgentSettings, Box<dyn Provider>)> {
    scifaas_agent::settings::from_config(
        name,
        config,
        state_dir,
        agent_token,
        std::env::current_exe().context("locating the scifaas binary")?,
    )
}

async fn start(name: &str, token: Option<String>) -> anyhow::Result<()> {
    check_endpoint_name(name)?;
    let dir = endpoint_dir(name);
    let config_path = dir.join("config.yaml");
    if !config_path.exists() {
        bail!(
            "{} does not exist; create it with `scifaas endpoint configure {name}`",
            config_path.display()
        );
    }
    let config = EndpointConfig::load(&config_path)?;
    let agent_token = agent_token(name, &dir, &config, token).await?;
    let _pid_file = PidFile::create(&dir.join("agent.pid"))?;
    let (settings, provider) = agent_settings(name, &config, dir.clone(), &agent_token)?;
    println!(
        "endpoint {name}: agent running (pid {}), service {}",
        std::process::id(),
        config.service_url
    );
    scifaas_agent::endpoint::run(settings, provider, crate::service_cmd::shutdown_signal()).await
}

/// The endpoint's agent token: kept next to its config after the first start, which
/// registers the endpoint with the service on behalf of the token's user.
async fn agent_token(
    name: &str,
    dir: &Path,
    config: &EndpointConfig,
    token: Option<String>,
) -> anyhow::Result<String> {
    let path = dir.join("agent-token");
    if let Ok(existing) = std::fs::read_to_string(&path) {
        return Ok(existing.trim().to_owned());
    }
    let api = Api::from_args(&ServiceArgs {
        url: config.service_url.clone(),
        token,
    })?;
    let (endpoint_id, agent_token) = api
        .create_endpoint(name)
        .await
        .with_context(|| format!("registering endpoint {name} with {}", config.service_url))?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(agent_token.as_bytes())?;
    tracing::info!(%endpoint_id, "registered endpoint {name}");
    Ok(agent_token)
}

/// `agent.pid`, removed when the agent exits.
struct PidFile(PathBuf);

impl PidFile {
    fn create(path: &Path) -> anyhow::Result<PidFile> {
        if let Some(pid) = read_pid(path) {
            if alive(pid) {
                bail!(
                    "the agent is already running (pid {pid}, {})",
                    path.display()
                );
            }
        }
        std::fs::write(path, format!("{}\n", std::process::id()))?;
        Ok(PidFile(path.to_owned()))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if read_pid(&self.0) == Some(std::process::id() as i32) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn alive(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None).is_ok()
}

/// Re-runs `scifaas endpoint start NAME` in a new session with its output in the
/// endpoint's agent.log, and waits until it has written its pid file.
fn start_detached(name: &str) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    check_endpoint_name(name)?;
    let dir = endpoint_dir(name);
    std::fs::create_dir_all(&dir)?;
    let log_path = dir.join("agent.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)?;
    let child = std::process::Command::new(std::env::current_exe()?)
        .args(["endpoint", "start", name])
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting the agent in the background")?;
    let pid = child.id() as i32;
    let pid_path = dir.join("agent.pid");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if read_pid(&pid_path) == Some(pid) {
            println!(
                "endpoint {name}: agent started (pid {pid}); log {}",
                log_path.display()
            );
            return Ok(());
        }
        if !alive(pid) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("the agent did not start; see {}", log_path.display())
}

fn stop(name: &str) -> anyhow::Result<()> {
    check_endpoint_name(name)?;
    let path = endpoint_dir(name).join("agent.pid");
    let Some(pid) = read_pid(&path) else {
        bail!("endpoint {name} is not running (no {})", path.display());
    };
    if !alive(pid) {
        let _ = std::fs::remove_file(&path);
        println!("endpoint {name} was not running (stale pid {pid})");
        return Ok(());
    }
    kill(Pid::from_raw(pid), Signal::SIGTERM)?;
    // The agent cancels its blocks before it exits; give it time to.
    let deadline = Instant::now() + Duration::from_secs(30);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if alive(pid) {
        kill(Pid::from_raw(pid), Signal::SIGKILL)?;
        bail!("the agent (pid {pid}) did not stop within 30 s and was killed");
    }
    println!("endpoint {name} stopped");
    Ok(())
}

/// The running agent of an endpoint, by its pid file.
fn running_agent(name: &str) -> anyhow::Result<i32> {
    check_endpoint_name(name)?;
    let path = endpoint_dir(name).join("agent.pid");
    match read_pid(&path) {
        Some(pid) if alive(pid) => Ok(pid),
        _ => bail!(
            "endpoint {name} is not running (no live pid in {})",
            path.display()
        ),
    }
}

fn resume(name: &str) -> anyhow::Result<()> {
    let pid = running_agent(name)?;
    // The agent resumes provisioning on SIGUSR1.
    kill(Pid::from_raw(pid), Signal::SIGUSR1)?;
    println!("endpoint {name}: asked the agent (pid {pid}) to resume provisioning");
    Ok(())
}

fn list() -> anyhow::Result<()> {
    let root = crate::home::home().join("endpoints");
    let Ok(entries) = std::fs::read_dir(&root) else {
        println!("no endpoints configured (nothing in {})", root.display());
        return Ok(());
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter(|e| e.path().join("config.yaml").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    println!("{:<24} {:<10} PID", "NAME", "STATE");
    for name in names {
        let pid = read_pid(&endpoint_dir(&name).join("agent.pid")).filter(|p| alive(*p));
        let (state, pid) = match pid {
            Some(pid) => ("running", pid.to_string()),
            None => ("stopped", "-".to_owned()),
        };
        println!("{name:<24} {state:<10} {pid}");
    }
    Ok(())
}
