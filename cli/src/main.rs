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
        command => runtime(runtime_threads(&command)).and_then(|rt| {
            // On a worker thread of the runtime, not this one: the futures a command
            // awaits are woken by tasks on those threads, and each wake-up that crosses
            // to another thread costs a context switch (`bench`: a synchronous call's
            // answer reached the client after three).
            let command = rt.spawn(async move {
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
            });
            match rt.block_on(command) {
                Ok(outcome) => outcome,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => Err(anyhow::anyhow!("the command was cancelled: {e}")),
            }
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

/// The async runtime, with `threads` worker threads unless `TOKIO_WORKER_THREADS` names
/// a number (tokio's own setting, which then wins).
fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        builder.worker_threads(threads);
    }
    Ok(builder.enable_all().build()?)
}

/// How many threads the async runtime gets, by what this process runs. The busy parts
/// have threads of their own (the store's writer, the interchange), so the runtime
/// mostly moves messages, and each thread more is another one to wake: its workers
/// wake each other to share work, which on a busy machine costs more than it gains.
/// - The service alone: one per core (tokio's default), for many clients at once.
/// - The whole stack in one process (`demo`, `bench`): it shares the machine with the
///   managers and workers it starts, so half the cores, at least one (on 2 cores,
///   one thread: warm round trip p50 0.71 -> 0.65 ms, p99 1.10 -> 0.99 ms, medians of six
///   alternating `scifaas bench` runs).
/// - An endpoint agent: at most two; login nodes are shared, and an agent has little
///   to do besides its interchange thread.
/// - A command-line client: one.
fn runtime_threads(command: &Command) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    match command {
        Command::Service(_) => cores,
        Command::Demo(_) | Command::Bench(_) => (cores / 2).max(1),
        Command::Endpoint(_) => cores.min(2),
        _ => 1,
    }
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
