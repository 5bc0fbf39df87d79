//! Container runtimes: the command line that starts a worker's `python3` inside an image.
//!
//! Each runtime is a handlebars template (`templates/containers/RUNTIME.hbs`, embedded at
//! build time) that renders the argv placed before the interpreter, e.g.
//! `ch-run IMAGE --` or `bwrap --ro-bind IMAGE / ...`. An admin replaces one by putting a
//! file of that name in a folder named by the endpoint's `engine.container_templates`.
//!
//! A template renders a shell-like line, which is split into words without a shell
//! ([`words::split_words`]): `{{image}}` is quoted so that it stays one word whatever it
//! holds, and `{{{options}}}` (three braces) is left as written, so that options such as
//! `-B "/scratch space"` split as the user meant. Nothing is expanded.
//!
//! Before a start, [`ContainerRuntimes::command`] checks what it can cheaply: that the
//! runtime's executable is installed and that an image given as a path exists, so that
//! those failures read as such rather than as a runtime's exit status.

mod words;

use crate::command::WorkerCommand;
use handlebars::Handlebars;
use scifaas_protocol::ContainerSpec;
use serde::Serialize;
use std::collections::HashMap;
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub use words::split_words;

/// The container runtimes a function or an endpoint may name, by their `type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Runtime {
    Apptainer,
    Singularity,
    Charliecloud,
    Docker,
    Podman,
    Shifter,
    Bwrap,
}

/// Every runtime, in the order error messages list them.
pub const RUNTIMES: &[Runtime] = &[
    Runtime::Apptainer,
    Runtime::Singularity,
    Runtime::Charliecloud,
    Runtime::Docker,
    Runtime::Podman,
    Runtime::Shifter,
    Runtime::Bwrap,
];

/// The built-in templates, by runtime, embedded from `templates/containers/`.
const BUILTIN_TEMPLATES: &[(Runtime, &str)] = &[
    (
        Runtime::Apptainer,
        include_str!("../../templates/containers/apptainer.hbs"),
    ),
    (
        Runtime::Singularity,
        include_str!("../../templates/containers/singularity.hbs"),
    ),
    (
        Runtime::Charliecloud,
        include_str!("../../templates/containers/charliecloud.hbs"),
    ),
    (
        Runtime::Docker,
        include_str!("../../templates/containers/docker.hbs"),
    ),
    (
        Runtime::Podman,
        include_str!("../../templates/containers/podman.hbs"),
    ),
    (
        Runtime::Shifter,
        include_str!("../../templates/containers/shifter.hbs"),
    ),
    (
        Runtime::Bwrap,
        include_str!("../../templates/containers/bwrap.hbs"),
    ),
];

impl Runtime {
    /// The `type` a config or a function names it by.
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Apptainer => "apptainer",
            Runtime::Singularity => "singularity",
            Runtime::Charliecloud => "charliecloud",
            Runtime::Docker => "docker",
            Runtime::Podman => "podman",
            Runtime::Shifter => "shifter",
            Runtime::Bwrap => "bwrap",
        }
    }

    /// The runtime of this `type`, or an error listing the known ones.
    pub fn parse(name: &str) -> Result<Runtime, ContainerError> {
        RUNTIMES
            .iter()
            .copied()
            .find(|r| r.name() == name)
            .ok_or_else(|| ContainerError::UnknownRuntime(name.to_owned()))
    }

    /// The executable the template names as `exe` unless told otherwise.
    pub fn default_executable(self) -> &'static str {
        match self {
            Runtime::Charliecloud => "ch-run",
            other => other.name(),
        }
    }

    /// Whether the image is always a local path (so a missing one can be told before
    /// the runtime runs), may be one (checked when it looks like a path), or never is.
    fn image_is_path(self, image: &str) -> bool {
        let looks_like_path = image.starts_with('/') || image.starts_with("./");
        match self {
            Runtime::Bwrap => true,
            Runtime::Charliecloud => looks_like_path,
            Runtime::Apptainer | Runtime::Singularity => looks_like_path && !image.contains("://"),
            Runtime::Docker | Runtime::Podman | Runtime::Shifter => false,
        }
    }

    /// The template file an admin writes to replace this runtime's command line.
    pub fn template_file(self) -> String {
        format!("{}.hbs", self.name())
    }
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a container command could not be made or a worker not started in it.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("unknown container type `{0}`; known types: {known}", known = known_runtimes())]
    UnknownRuntime(String),
    /// A template that does not compile or render (an admin's override, usually).
    #[error("container template {origin}: {message}")]
    Template { origin: String, message: String },
    /// The options of a container do not split into words.
    #[error("{runtime} container {image}: options {options:?}: {message}")]
    Options {
        runtime: Runtime,
        image: String,
        options: String,
        message: String,
    },
    #[error("the {runtime} container runtime is not installed on {host}: {why}")]
    RuntimeNotInstalled {
        runtime: Runtime,
        host: String,
        why: String,
    },
    #[error("the {runtime} image {image} does not exist on {host}: {why}")]
    ImageMissing {
        runtime: Runtime,
        image: String,
        host: String,
        why: String,
    },
}

impl ContainerError {
    /// The error type name a task that met this failure reports.
    pub fn type_name(&self) -> &'static str {
        match self {
            ContainerError::RuntimeNotInstalled { .. } => "ContainerRuntimeNotFound",
            ContainerError::ImageMissing { .. } => "ContainerImageNotFound",
            _ => "ContainerConfigError",
        }
    }
}

fn known_runtimes() -> String {
    RUNTIMES
        .iter()
        .map(|r| r.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a template may name.
#[derive(Serialize)]
struct TemplateVars<'a> {
    runtime: &'static str,
    exe: &'a str,
    image: &'a str,
    options: &'a str,
    /// Names of the variables the manager sets for the worker (accelerator pinning),
    /// for runtimes that do not pass the environment on by themselves.
    env: Vec<&'a str>,
    /// Whether the runtime runs without root (bwrap then needs its own user namespace).
    unprivileged: bool,
}

/// The runtimes' templates and executables: how to start a worker in any container.
pub struct ContainerRuntimes {
    registry: Handlebars<'static>,
    /// Where each runtime's template came from, for errors.
    origins: HashMap<Runtime, String>,
    executables: HashMap<Runtime, String>,
    python: String,
    unprivileged: bool,
}

impl fmt::Debug for ContainerRuntimes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContainerRuntimes")
            .field("origins", &self.origins)
            .field("executables", &self.executables)
            .field("python", &self.python)
            .field("unprivileged", &self.unprivileged)
            .finish()
    }
}

impl Default for ContainerRuntimes {
    fn default() -> Self {
        Self::builtin()
    }
}

impl ContainerRuntimes {
    /// The built-in templates, each runtime's default executable from PATH, `python3`
    /// inside the image, and `unprivileged` when this process is not root.
    pub fn builtin() -> Self {
        let mut runtimes = Self {
            registry: Handlebars::new(),
            origins: HashMap::new(),
            executables: HashMap::new(),
            python: "python3".to_owned(),
            unprivileged: !nix::unistd::geteuid().is_root(),
        };
        runtimes.registry.set_strict_mode(true);
        // `{{x}}` makes x one word of the line that is split later; `{{{x}}}` leaves it.
        runtimes
            .registry
            .register_escape_fn(crate::command::shell_quote);
        for (runtime, source) in BUILTIN_TEMPLATES {
            let origin = format!("built-in templates/containers/{}", runtime.template_file());
            runtimes
                .set_template(*runtime, origin, source)
                .expect("built-in container templates compile (tested)");
        }
        runtimes
    }

    /// The built-in templates, with those that `dir` holds (`RUNTIME.hbs`) instead.
    /// Other files in `dir` are ignored; a template that does not compile, or does not
    /// render with example values, is an error naming its file.
    pub fn with_template_dir(dir: &Path) -> Result<Self, ContainerError> {
        let mut runtimes = Self::builtin();
        // A folder that is not there is a mistake, not "no overrides".
        std::fs::read_dir(dir).map_err(|e| ContainerError::Template {
            origin: dir.display().to_string(),
            message: format!("cannot read the folder: {e}"),
        })?;
        for runtime in RUNTIMES {
            let path: PathBuf = dir.join(runtime.template_file());
            match std::fs::read_to_string(&path) {
                Ok(text) => runtimes.set_template(*runtime, path.display().to_string(), &text)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(ContainerError::Template {
                        origin: path.display().to_string(),
                        message: e.to_string(),
                    })
                }
            }
        }
        Ok(runtimes)
    }

    /// Replaces `runtime`'s template with `source`; `origin` names it in errors. The
    /// template is rendered once with example values, so that a variable it names but
    /// the manager does not supply is found now rather than at the first start.
    pub fn set_template(
        &mut self,
        runtime: Runtime,
        origin: String,
        source: &str,
    ) -> Result<(), ContainerError> {
        self.registry
            .register_template_string(runtime.name(), source)
            .map_err(|e| ContainerError::Template {
                origin: origin.clone(),
                message: match e.pos() {
                    Some((line, column)) => format!("line {line}, column {column}: {}", e.reason()),
                    None => e.reason().to_string(),
                },
            })?;
        self.origins.insert(runtime, origin);
        let example = ContainerSpec {
            runtime: runtime.name().to_owned(),
            image: "/images/example image".to_owned(),
            options: Some("--example-option 'two words'".to_owned()),
        };
        self.prefix(runtime, &example, &["CUDA_VISIBLE_DEVICES"])
            .map(drop)
    }

    /// Runs `runtime` as `exe` (a name found on PATH, or a path) instead of its default.
    pub fn set_executable(&mut self, runtime: Runtime, exe: impl Into<String>) {
        self.executables.insert(runtime, exe.into());
    }

    /// The interpreter started inside images (default `python3`, found on the image's
    /// PATH).
    pub fn set_python(&mut self, python: impl Into<String>) {
        self.python = python.into();
    }

    /// Says whether runtimes run without root (default: whether this process is not
    /// root). A manager that starts runtimes through a wrapper dropping privileges sets
    /// it.
    pub fn set_unprivileged(&mut self, unprivileged: bool) {
        self.unprivileged = unprivileged;
    }

    /// The executable `runtime` runs as.
    pub fn executable(&self, runtime: Runtime) -> &str {
        self.executables
            .get(&runtime)
            .map(String::as_str)
            .unwrap_or_else(|| runtime.default_executable())
    }

    /// The command that starts a worker like `base` inside `spec`'s image: `base`'s own
    /// prefix (host-side wrappers) first, then the runtime's rendered argv, then the
    /// image's interpreter. `base`'s environment stays and is named to the template
    /// (`env`); Charliecloud also gets `USER` when this process has none, which
    /// `ch-run` requires.
    ///
    /// Fails, before anything runs, when the type is unknown, the options do not split,
    /// the runtime's executable is not installed, or an image given as a path does not
    /// exist.
    pub fn command(
        &self,
        spec: &ContainerSpec,
        base: &WorkerCommand,
    ) -> Result<WorkerCommand, ContainerError> {
        let runtime = Runtime::parse(&spec.runtime)?;
        let mut env = base.env.clone();
        if runtime == Runtime::Charliecloud
            && std::env::var_os("USER").is_none()
            && !env.iter().any(|(k, _)| k == "USER")
        {
            env.push(("USER".to_owned(), current_user_name()));
        }
        let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        let rendered = self.prefix(runtime, spec, &names)?;
        self.check_installed(runtime)?;
        check_image(runtime, &spec.image)?;
        let mut prefix = base.prefix.clone();
        prefix.extend(rendered);
        Ok(WorkerCommand {
            python: self.python.clone(),
            prefix,
            env,
        })
    }

    /// `runtime`'s template rendered and split into words.
    fn prefix(
        &self,
        runtime: Runtime,
        spec: &ContainerSpec,
        env: &[&str],
    ) -> Result<Vec<String>, ContainerError> {
        let options = spec.options.as_deref().unwrap_or("");
        // Split apart first, so that bad quoting is blamed on the options, not the template.
        split_words(options).map_err(|message| ContainerError::Options {
            runtime,
            image: spec.image.clone(),
            options: options.to_owned(),
            message,
        })?;
        let origin = || {
            self.origins
                .get(&runtime)
                .cloned()
                .unwrap_or_else(|| runtime.template_file())
        };
        let vars = TemplateVars {
            runtime: runtime.name(),
            exe: self.executable(runtime),
            image: &spec.image,
            options,
            env: env.to_vec(),
            unprivileged: self.unprivileged,
        };
        let line =
            self.registry
                .render(runtime.name(), &vars)
                .map_err(|e| ContainerError::Template {
                    origin: origin(),
                    message: match (e.line_no, e.column_no) {
                        (Some(line), Some(column)) => {
                            format!("line {line}, column {column}: {}", e.reason())
                        }
                        _ => e.reason().to_string(),
                    },
                })?;
        let words = split_words(&line).map_err(|message| ContainerError::Template {
            origin: origin(),
            message: format!("the rendered line does not split into words ({message}): {line}"),
        })?;
        if words.is_empty() {
            return Err(ContainerError::Template {
                origin: origin(),
                message: "renders an empty command line".into(),
            });
        }
        Ok(words)
    }

    fn check_installed(&self, runtime: Runtime) -> Result<(), ContainerError> {
        let exe = self.executable(runtime);
        let missing = |why: String| ContainerError::RuntimeNotInstalled {
            runtime,
            host: hostname(),
            why,
        };
        if exe.contains('/') {
            return match std::fs::metadata(exe) {
                Ok(meta) if meta.is_file() && meta.permissions().mode() & 0o111 != 0 => Ok(()),
                Ok(_) => Err(missing(format!("`{exe}` is not an executable file"))),
                Err(e) => Err(missing(format!("`{exe}`: {e}"))),
            };
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        let found = std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(exe))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        });
        if found {
            Ok(())
        } else {
            Err(missing(format!(
                "`{exe}` is not on PATH ({})",
                path.to_string_lossy()
            )))
        }
    }
}

/// Fails when an image given as a path does not exist (or, for bwrap, is not the
/// directory tree it must be).
fn check_image(runtime: Runtime, image: &str) -> Result<(), ContainerError> {
    if !runtime.image_is_path(image) {
        return Ok(());
    }
    let missing = |why: String| ContainerError::ImageMissing {
        runtime,
        image: image.to_owned(),
        host: hostname(),
        why,
    };
    match std::fs::metadata(image) {
        Ok(meta) if runtime == Runtime::Bwrap && !meta.is_dir() => Err(missing(
            "bwrap needs an unpacked image: a directory holding the root file system".into(),
        )),
        Ok(_) => Ok(()),
        Err(e) => Err(missing(e.to_string())),
    }
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "this host".into())
}

fn current_user_name() -> String {
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| nix::unistd::geteuid().to_string())
}

#[cfg(test)]
mod tests;
