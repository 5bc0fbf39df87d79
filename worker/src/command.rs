//! How a worker process is started: interpreter, container runtime prefix, environment.

use std::time::Duration;

/// How long [`crate::Worker::spawn`] waits for the worker's "ready" by default. A
/// container runtime may have to unpack an image first.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest result body accepted from a worker by default (64 MiB). A larger result
/// fails its task with [`scifaas_protocol::ErrorKind::TooLarge`]; the worker stays usable.
pub const DEFAULT_MAX_RESULT_BYTES: u32 = 64 << 20;

/// The command line that starts one worker.
///
/// The worker script is not a file the command names: it is written to the process's
/// stdin before the first frame, because a manager cannot always place a file inside a
/// container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerCommand {
    /// The Python interpreter (`python3`, or a path), as the prefix's environment finds it.
    pub python: String,
    /// Argv placed before `python`, e.g. `["apptainer", "exec", "img.sif"]`; empty to run
    /// the interpreter directly.
    pub prefix: Vec<String>,
    /// Variables added to the environment the manager passes on.
    pub env: Vec<(String, String)>,
}

impl WorkerCommand {
    /// `python` run directly, with no extra environment.
    pub fn new(python: impl Into<String>) -> Self {
        Self {
            python: python.into(),
            prefix: Vec::new(),
            env: Vec::new(),
        }
    }

    /// The full argv: prefix, interpreter, and the bootstrap that reads the script of
    /// `script_len` bytes from stdin.
    pub fn argv(&self, script_len: usize) -> Vec<String> {
        let mut argv = self.prefix.clone();
        argv.push(self.python.clone());
        argv.push("-u".into());
        argv.push("-c".into());
        argv.push(bootstrap(script_len));
        argv
    }

    /// The argv as one line a person can paste into a shell, for error messages.
    pub fn describe(&self, script_len: usize) -> String {
        self.argv(script_len)
            .iter()
            .map(|arg| shell_quote(arg))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl Default for WorkerCommand {
    fn default() -> Self {
        Self::new("python3")
    }
}

/// Bounds on one worker, for [`crate::Worker::spawn_with`]; [`crate::Worker::spawn`] uses
/// the defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerOptions {
    /// How long to wait for the worker's "ready" before killing it
    /// (default [`DEFAULT_READY_TIMEOUT`]).
    pub ready_timeout: Duration,
    /// The largest result body accepted from the worker
    /// (default [`DEFAULT_MAX_RESULT_BYTES`]).
    pub max_result_bytes: u32,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            ready_timeout: DEFAULT_READY_TIMEOUT,
            max_result_bytes: DEFAULT_MAX_RESULT_BYTES,
        }
    }
}

/// The `-c` program that reads and runs the worker script sent on stdin.
pub fn bootstrap(script_len: usize) -> String {
    format!(
        "import sys;exec(compile(sys.stdin.buffer.read({script_len}),'scifaas_worker.py','exec'))"
    )
}

pub(crate) fn shell_quote(arg: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c);
    if !arg.is_empty() && arg.chars().all(plain) {
        arg.to_owned()
    } else if !arg.contains(['"', '\\', '$', '`']) {
        format!("\"{arg}\"")
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_puts_the_prefix_before_the_interpreter() {
        let mut command = WorkerCommand::new("/usr/bin/python3");
        command.prefix = vec!["apptainer".into(), "exec".into(), "img.sif".into()];
        let argv = command.argv(1234);
        assert_eq!(
            argv[..5],
            ["apptainer", "exec", "img.sif", "/usr/bin/python3", "-u"]
        );
        assert_eq!(argv[5], "-c");
        assert!(argv[6].contains("sys.stdin.buffer.read(1234)"));
    }

    #[test]
    fn describe_quotes_what_a_shell_would_split() {
        let mut command = WorkerCommand::new("python3");
        command.prefix = vec!["docker".into(), "run".into(), "-i".into(), "it's".into()];
        assert_eq!(
            command.describe(7),
            "docker run -i \"it's\" python3 -u -c \"import sys;exec(compile(\
             sys.stdin.buffer.read(7),'scifaas_worker.py','exec'))\""
        );
        assert_eq!(shell_quote("a\"b"), "'a\"b'");
        assert_eq!(shell_quote(""), "\"\"");
    }
}
