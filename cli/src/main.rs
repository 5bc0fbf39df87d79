//! `scifaas`: one binary for the service, the endpoint agent, the manager that pilot
//! jobs run, the client, the demo and the benchmarks.

mod allocator;
mod bench;
mod client;
mod demo;
mod endpoint_cmd;
mod home;
mod local_stack;
mod manager_cmd;
mod service_cmd;
mod stats;
mod task_cmd;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "scifaas", version, about = "Function as a service for science")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where client commands find the service.
#[derive(clap::Args, Clone, Debug)]
pub struct ServiceArgs {
    /// The service's URL.
    #[arg(long, env = "SCIFAAS_URL", default_value = "http://127.0.0.1:8470")]
    pub url: String,
    /// Bearer token; defaults to the local service's admin token file.
    #[arg(long, env = "SCIFAAS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (REST API, registry, task store, agent links) in the foreground.
    Service(service_cmd::ServiceCmd),
    /// Manage API tokens.
    #[command(subcommand)]
    Token(task_cmd::TokenCmd),
    /// Configure, start, stop and inspect endpoints on this machine.
    #[command(subcommand)]
    Endpoint(endpoint_cmd::EndpointCmd),
    /// Run a manager: what a pilot job starts on each node.
    Manager(manager_cmd::ManagerCmd),
    /// Register functions.
    #[command(subcommand)]
    Function(task_cmd::FunctionCmd),
    /// Run a registered function on an endpoint and print its result.
    Run(task_cmd::RunCmd),
    /// Print a task's state and result.
    Result(task_cmd::ResultCmd),
    /// The funcX paper's latency table, on a service and a local endpoint started here.
    Demo(demo::DemoCmd),
    /// Throughput and latency benchmarks.
    Bench(bench::BenchCmd),
}

fn main() -> std::process::ExitCode {
    allocator::tune();
    let cli = Cli::parse();
    init_logging(matches!(cli.command, Command::Demo(_) | Command::Bench(_)));
    let outcome = match cli.command {
        Command::Manager(cmd) => manager_cmd::run(cmd),
        command => runtime().and_then(|rt| {
            rt.block_on(async move {
                match command {
                    Command::Service(cmd) => service_cmd::run(cmd).await,
                    Command::Token(cmd) => task_cmd::token(cmd).await,
                    Command::Endpoint(cmd) => endpoint_cmd::run(cmd).await,
                    Command::Function(cmd) => task_cmd::function(cmd).await,
                    Command::Run(cmd) => task_cmd::run(cmd).await,
                    Command::Result(cmd) => task_cmd::result(cmd).await,
                    Command::Demo(cmd) => demo::run(cmd).await,
                    Command::Bench(cmd) => bench::run(cmd).await,
                    Command::Manager(_) => unreachable!("handled above"),
                }
            })
        }),
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("scifaas: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Logs go to stderr; `RUST_LOG` overrides the level. The demo and benchmarks are quiet
/// by default so their tables stay readable.
fn init_logging(quiet: bool) {
    let default = if quiet { "warn" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
