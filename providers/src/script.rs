//! What a job-script template sees, and writing the rendered script.

use std::collections::BTreeMap;
use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::error::ProviderError;
use crate::launcher::Launcher;
use crate::BlockRequest;

/// The job script's file name inside the block's directory.
pub const SCRIPT_FILE: &str = "submit.sh";

/// The variables every job-script template can use. Templates are rendered in strict mode:
/// every one of these is always present (optional ones as `null`, which `{{#if}}` tests).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ScriptVars {
    /// A job name for the scheduler: `scifaas-ENDPOINT-BLOCK`, only `[A-Za-z0-9_.-]`.
    pub job_name: String,
    /// The block's id.
    pub block_id: String,
    /// The endpoint's name.
    pub endpoint_name: String,
    /// Nodes in the block.
    pub nodes: u32,
    /// The walltime as `HH:MM:SS`, or null.
    pub walltime: Option<String>,
    /// The walltime in whole seconds, or null.
    pub walltime_seconds: Option<u64>,
    /// The walltime in whole minutes, rounded up (Cobalt's `-t`), or null.
    pub walltime_minutes: Option<u64>,
    /// The block's directory.
    pub dir: String,
    /// Where the job's stdout goes (`dir/stdout`), for `#SBATCH --output` and the like.
    pub stdout: String,
    /// Where the job's stderr goes (`dir/stderr`).
    pub stderr: String,
    /// Shell lines to run before the managers, inserted as they are.
    pub worker_init: String,
    /// Variables to export: `export {{name}}={{shell_quote value}}`.
    pub env: Vec<EnvVar>,
    /// The manager's argv, unquoted (use `{{shell_quote manager_command}}`).
    pub manager_command: Vec<String>,
    /// The launcher's name (`single_node`, ...).
    pub launcher: String,
    /// The line that starts one manager per node, already quoted: insert it as it is.
    pub launch_command: String,
    /// Provider-specific variables (`partition`, `account`, `scheduler_options`, ...), at
    /// the top level of the template's context.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// One exported variable. Its `Debug` hides the value (it may be the endpoint secret).
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct EnvVar {
    /// A shell identifier (checked: it is inserted unquoted).
    pub name: String,
    /// Any text (quote it with `shell_quote`).
    pub value: String,
}

impl std::fmt::Debug for EnvVar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvVar")
            .field("name", &self.name)
            .field("value", &format_args!("<{} bytes>", self.value.len()))
            .finish()
    }
}

impl ScriptVars {
    /// The variables for `block`, started with `launcher`. Fails when an env name is not a
    /// shell identifier, since the template writes it unquoted.
    pub fn for_block(block: &BlockRequest, launcher: &Launcher) -> Result<Self, ProviderError> {
        let env = block
            .env
            .iter()
            .map(|(name, value)| {
                if is_shell_identifier(name) {
                    Ok(EnvVar {
                        name: name.clone(),
                        value: value.clone(),
                    })
                } else {
                    Err(ProviderError::Template {
                        template: "variables".to_owned(),
                        message: format!(
                            "environment variable name `{name}` is not a shell identifier \
                             ([A-Za-z_][A-Za-z0-9_]*)"
                        ),
                    })
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let dir = block.dir.display().to_string();
        Ok(Self {
            job_name: job_name(&block.endpoint_name, &block.block_id),
            block_id: block.block_id.clone(),
            endpoint_name: block.endpoint_name.clone(),
            nodes: block.nodes,
            walltime: block.walltime.map(format_walltime),
            walltime_seconds: block.walltime.map(walltime_seconds),
            walltime_minutes: block.walltime.map(walltime_minutes),
            stdout: block.dir.join("stdout").display().to_string(),
            stderr: block.dir.join("stderr").display().to_string(),
            dir,
            worker_init: block.worker_init.clone(),
            env,
            launcher: launcher.name().to_owned(),
            launch_command: launcher.launch_command(&block.manager_command, block.nodes),
            manager_command: block.manager_command.clone(),
            extra: BTreeMap::new(),
        })
    }

    /// These variables with the provider-specific ones of `extra` added (replacing any of
    /// the same name).
    pub fn with_extra(mut self, extra: BTreeMap<String, serde_json::Value>) -> Self {
        self.extra.extend(extra);
        self
    }

    /// Plausible values for every variable, to check a template before it is needed.
    pub fn example() -> Self {
        let block = BlockRequest {
            block_id: "block-0".to_owned(),
            dir: PathBuf::from("/home/user/.scifaas/endpoints/example/blocks/block-0"),
            endpoint_name: "example".to_owned(),
            nodes: 1,
            walltime: Some(Duration::from_secs(30 * 60)),
            worker_init: "module load python".to_owned(),
            manager_command: ["scifaas", "manager", "--block-id", "block-0"]
                .map(str::to_owned)
                .to_vec(),
            env: vec![("SCIFAAS_ENDPOINT_SECRET".to_owned(), "secret".to_owned())],
        };
        Self::for_block(&block, &Launcher::SingleNode).expect("the example is valid")
    }
}

/// `HH:MM:SS` (hours may exceed 99), rounded up to a whole second so that a job never gets
/// less time than asked.
pub fn format_walltime(walltime: Duration) -> String {
    let secs = walltime_seconds(walltime);
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

fn walltime_seconds(walltime: Duration) -> u64 {
    walltime.as_secs() + u64::from(walltime.subsec_nanos() > 0)
}

/// Whole minutes, rounded up, at least 1: schedulers that count in minutes must never cut
/// a block short.
pub fn walltime_minutes(walltime: Duration) -> u64 {
    walltime_seconds(walltime).div_ceil(60).max(1)
}

fn is_shell_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn job_name(endpoint: &str, block: &str) -> String {
    format!("scifaas-{endpoint}-{block}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Writes `contents` to `dir/submit.sh` with mode 0700, creating `dir` (mode 0700) if
/// needed, and answers the script's path. The file is never readable by others, not even
/// for a moment: it holds the endpoint secret.
pub fn write_job_script(dir: &Path, contents: &str) -> Result<PathBuf, ProviderError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| ProviderError::Io { path, source }
    };
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))?;
    let path = dir.join(SCRIPT_FILE);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o700)
        .open(&path)
        .map_err(io(&path))?;
    // `mode` applies only to a new file; an old script may have other permissions.
    file.set_permissions(Permissions::from_mode(0o700))
        .map_err(io(&path))?;
    file.write_all(contents.as_bytes()).map_err(io(&path))?;
    file.sync_all().map_err(io(&path))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walltime_is_hh_mm_ss_rounded_up() {
        assert_eq!(format_walltime(Duration::from_secs(30 * 60)), "00:30:00");
        assert_eq!(format_walltime(Duration::from_secs(3723)), "01:02:03");
        assert_eq!(format_walltime(Duration::from_millis(1500)), "00:00:02");
        assert_eq!(
            format_walltime(Duration::from_secs(100 * 3600)),
            "100:00:00"
        );
    }

    #[test]
    fn walltime_minutes_round_up() {
        assert_eq!(walltime_minutes(Duration::from_secs(30 * 60)), 30);
        assert_eq!(walltime_minutes(Duration::from_secs(30 * 60 + 1)), 31);
        assert_eq!(walltime_minutes(Duration::from_secs(1)), 1);
        let vars = ScriptVars::example();
        assert_eq!(vars.walltime_minutes, Some(30));
        assert_eq!(vars.walltime_seconds, Some(1800));
    }

    #[test]
    fn env_names_must_be_shell_identifiers() {
        for good in ["A", "_x", "SCIFAAS_ENDPOINT_SECRET", "a1"] {
            assert!(is_shell_identifier(good), "{good}");
        }
        for bad in ["", "1A", "A-B", "A B", "A;rm", "$A"] {
            assert!(!is_shell_identifier(bad), "{bad}");
        }
        let mut block = example_block();
        block.env.push(("BAD NAME".into(), "x".into()));
        let err = ScriptVars::for_block(&block, &Launcher::SingleNode).unwrap_err();
        assert!(err.to_string().contains("`BAD NAME`"), "{err}");
    }

    #[test]
    fn job_names_keep_only_safe_characters() {
        assert_eq!(job_name("my ep", "b/1"), "scifaas-my_ep-b_1");
    }

    #[test]
    fn the_script_is_written_private_even_over_an_open_one() {
        let dir = tempfile::tempdir().unwrap();
        let block_dir = dir.path().join("blocks/b1");
        let old = block_dir.join(SCRIPT_FILE);
        std::fs::create_dir_all(&block_dir).unwrap();
        std::fs::write(&old, "old").unwrap();
        std::fs::set_permissions(&old, Permissions::from_mode(0o644)).unwrap();
        let path = write_job_script(&block_dir, "#!/bin/bash\n").unwrap();
        assert_eq!(path, old);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "#!/bin/bash\n");

        let fresh = dir.path().join("new/dir");
        write_job_script(&fresh, "x").unwrap();
        let meta = std::fs::metadata(&fresh).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    }

    fn example_block() -> BlockRequest {
        BlockRequest {
            block_id: "b".into(),
            dir: "/tmp/b".into(),
            endpoint_name: "ep".into(),
            nodes: 1,
            walltime: None,
            worker_init: String::new(),
            manager_command: vec!["true".into()],
            env: vec![],
        }
    }
}
