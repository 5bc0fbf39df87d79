//! Client commands: tokens, functions, running a function, fetching a result.

use crate::client::Api;
use crate::ServiceArgs;
use anyhow::Context;
use bytes::Bytes;
use serde_json::{json, Value};
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum TokenCmd {
    /// Create a token for a user (creating the user if new). Needs the admin token.
    Create {
        #[arg(long)]
        user: String,
        #[command(flatten)]
        service: ServiceArgs,
    },
}

#[derive(clap::Subcommand)]
pub enum FunctionCmd {
    /// Register a Python function from a source file; prints its id.
    Register {
        /// A Python file that defines the function.
        file: PathBuf,
        /// The function's name in that file.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        service: ServiceArgs,
    },
}

#[derive(clap::Args)]
pub struct RunCmd {
    /// Endpoint name or id.
    #[arg(long)]
    endpoint: String,
    /// Function id.
    #[arg(long)]
    function: String,
    /// The function's one argument, as a JSON document.
    #[arg(default_value = "null")]
    document: String,
    /// Seconds to wait for the result.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    #[command(flatten)]
    service: ServiceArgs,
}

#[derive(clap::Args)]
pub struct ResultCmd {
    task_id: String,
    /// Seconds to wait for the task to finish.
    #[arg(long, default_value_t = 0)]
    wait: u64,
    #[command(flatten)]
    service: ServiceArgs,
}

pub async fn token(cmd: TokenCmd) -> anyhow::Result<()> {
    let TokenCmd::Create { user, service } = cmd;
    let api = Api::from_args(&service)?;
    let answer = api
        .call(
            reqwest::Method::POST,
            "/v1/tokens",
            Some(&json!({"user": user})),
        )
        .await?;
    println!(
        "{}",
        answer
            .get("token")
            .and_then(Value::as_str)
            .unwrap_or_default()
    );
    Ok(())
}

pub async fn function(cmd: FunctionCmd) -> anyhow::Result<()> {
    let FunctionCmd::Register {
        file,
        name,
        service,
    } = cmd;
    let source =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    let api = Api::from_args(&service)?;
    println!("{}", api.register_function(&name, &source).await?);
    Ok(())
}

pub async fn run(cmd: RunCmd) -> anyhow::Result<()> {
    serde_json::from_str::<serde::de::IgnoredAny>(&cmd.document)
        .with_context(|| format!("the argument `{}` is not a JSON document", cmd.document))?;
    let api = Api::from_args(&cmd.service)?;
    let (status, task_id, body) = api
        .invoke(
            &cmd.endpoint,
            &cmd.function,
            Bytes::from(cmd.document),
            cmd.timeout,
        )
        .await?;
    if status.is_success() {
        println!("{}", String::from_utf8_lossy(&body));
        return Ok(());
    }
    let error: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if let Some(traceback) = error.get("traceback").and_then(Value::as_str) {
        eprintln!("{traceback}");
    }
    anyhow::bail!(
        "task {} failed: {} {}",
        task_id.unwrap_or_default(),
        status.as_u16(),
        error
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or_default()
    )
}

pub async fn result(cmd: ResultCmd) -> anyhow::Result<()> {
    let api = Api::from_args(&cmd.service)?;
    let wait = (cmd.wait > 0).then_some(cmd.wait);
    let task = api.task(&cmd.task_id, wait).await?;
    println!("{}", serde_json::to_string_pretty(&task)?);
    Ok(())
}
