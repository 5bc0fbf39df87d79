//! Reading a config text in two passes and checking what serde cannot: every error
//! located in the text.

use std::path::{Path, PathBuf};
use std::time::Duration;

use scifaas_providers::{ScriptTemplate, ScriptVars};
use serde::Deserialize;
use serde_yaml_ng::Value;

use super::duration::format_duration;
use super::error::{self, ConfigError};
use super::locate;
use super::{
    EndpointConfig, EngineConfig, LauncherConfig, LauncherKind, LocalProviderConfig,
    ProviderConfig, RawConfig, PLANNED_PROVIDERS, SUPPORTED_PROVIDERS,
};

/// The text being read, for locating errors in it.
pub(super) struct Document<'a> {
    pub(super) text: &'a str,
    pub(super) file: &'a Path,
}

impl Document<'_> {
    pub(super) fn yaml_error(&self, error: &serde_yaml_ng::Error, syntax: bool) -> ConfigError {
        error::from_yaml(error, self.text, self.file, syntax)
    }

    /// An error about the first of `keys` written in the file (or about `keys[0]`, at the
    /// line of its nearest written parent, when none is).
    pub(super) fn invalid(&self, keys: &[&str], message: impl Into<String>) -> ConfigError {
        let written = keys
            .iter()
            .find_map(|key| locate::key_line(self.text, key).map(|line| (*key, line)));
        let (key, line) = match written {
            Some((key, line)) => (key, Some(line)),
            None => {
                let mut parent = keys[0];
                let mut line = None;
                while let Some((up, _)) = parent.rsplit_once('.') {
                    parent = up;
                    line = locate::key_line(self.text, parent);
                    if line.is_some() {
                        break;
                    }
                }
                (keys[0], line)
            }
        };
        ConfigError::Invalid {
            file: self.file.to_owned(),
            line,
            key: Some(key.to_owned()),
            message: message.into(),
        }
    }

    fn is_written(&self, key: &str) -> bool {
        locate::key_line(self.text, key).is_some()
    }

    pub(super) fn typed<P: for<'de> Deserialize<'de> + Default>(
        &self,
    ) -> Result<RawConfig<P>, ConfigError> {
        serde_yaml_ng::from_str(self.text).map_err(|e| self.yaml_error(&e, false))
    }

    /// The provider's `type` (`local` when there is no provider section), checked against
    /// the supported ones; also refuses launchers that are not built yet.
    pub(super) fn provider_type(&self, doc: &Value) -> Result<&'static str, ConfigError> {
        let supported = SUPPORTED_PROVIDERS.join(", ");
        // A provider section that is not a mapping is left to the typed pass to report.
        let Some(Value::Mapping(section)) = doc.get("provider") else {
            return Ok("local");
        };
        let kind = match section.get("type") {
            None => {
                return Err(self.invalid(
                    &["provider.type"],
                    format!("missing; supported: {supported}"),
                ))
            }
            Some(Value::String(kind)) => kind.as_str(),
            Some(_) => {
                return Err(self.invalid(
                    &["provider.type"],
                    format!("must be a provider type name; supported: {supported}"),
                ))
            }
        };
        let Some(kind) = SUPPORTED_PROVIDERS.iter().find(|k| **k == kind) else {
            let message = if PLANNED_PROVIDERS.contains(&kind) {
                format!("provider type `{kind}` is not supported yet; supported: {supported}")
            } else {
                format!("unknown provider type `{kind}`; supported: {supported}")
            };
            return Err(self.invalid(&["provider.type"], message));
        };
        Ok(kind)
    }

    /// The checks serde cannot make: values that are each valid but impossible together.
    pub(super) fn check(&self, mut config: EndpointConfig) -> Result<EndpointConfig, ConfigError> {
        let url = &config.service_url;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(self.invalid(
                &["service_url"],
                format!("`{url}` is not an http:// or https:// URL"),
            ));
        }
        self.check_engine(&config.engine)?;
        self.check_containers(&mut config.engine)?;
        match &mut config.provider {
            ProviderConfig::Local(local) => self.check_local(local)?,
            ProviderConfig::Slurm(c) => self.check_batch(c)?,
            ProviderConfig::Pbs(c) => self.check_batch(c)?,
            ProviderConfig::Torque(c) => self.check_batch(c)?,
            ProviderConfig::Cobalt(c) => self.check_batch(c)?,
            ProviderConfig::Kubernetes(k) => self.check_kubernetes(k, &config.engine)?,
        }
        if config.strategy.period.is_zero() {
            return Err(self.invalid(&["strategy.period"], "must be greater than 0"));
        }
        Ok(config)
    }

    fn check_engine(&self, engine: &EngineConfig) -> Result<(), ConfigError> {
        if engine.max_workers_per_node == Some(0) {
            return Err(self.invalid(
                &["engine.max_workers_per_node"],
                "must be at least 1 (a manager without workers runs nothing)",
            ));
        }
        let cores = engine.cores_per_worker;
        if !(cores.is_finite() && cores > 0.0) {
            return Err(self.invalid(
                &["engine.cores_per_worker"],
                format!("must be a positive number of cores, not {cores}"),
            ));
        }
        if engine.heartbeat_period.is_zero() {
            return Err(self.invalid(&["engine.heartbeat_period"], "must be greater than 0"));
        }
        if engine.heartbeat_threshold <= engine.heartbeat_period {
            return Err(self.invalid(
                &["engine.heartbeat_threshold", "engine.heartbeat_period"],
                format!(
                    "heartbeat_threshold ({}) must be greater than heartbeat_period ({})",
                    format_duration(engine.heartbeat_threshold),
                    format_duration(engine.heartbeat_period)
                ),
            ));
        }
        if engine.worker_python.trim().is_empty() {
            return Err(self.invalid(&["engine.worker_python"], "must name a Python interpreter"));
        }
        if engine.task_walltime.is_some_and(|w| w.is_zero()) {
            return Err(self.invalid(
                &["engine.task_walltime"],
                "must be greater than 0 (leave it out for no limit)",
            ));
        }
        if engine.address.trim().is_empty() {
            return Err(self.invalid(&["engine.address"], "must be a host name or IP address"));
        }
        if let Some(interface) = &engine.interface {
            if interface.trim().is_empty() {
                return Err(self.invalid(&["engine.interface"], "must name a network interface"));
            }
            if self.is_written("engine.address") {
                return Err(self.invalid(
                    &["engine.interface"],
                    "address and interface are mutually exclusive; set one of them",
                ));
            }
        }
        if let Some((lo, hi)) = engine.port_range {
            if lo == 0 {
                return Err(self.invalid(&["engine.port_range"], "ports start at 1, not 0"));
            }
            if lo > hi {
                return Err(self.invalid(
                    &["engine.port_range"],
                    format!("[{lo}, {hi}] is empty: the first port must not exceed the last"),
                ));
            }
        }
        Ok(())
    }

    fn check_local(&self, local: &mut LocalProviderConfig) -> Result<(), ConfigError> {
        if local.nodes_per_block != 1 {
            return Err(self.invalid(
                &["provider.nodes_per_block"],
                format!(
                    "the local provider runs each block on this machine; must be 1, not {}",
                    local.nodes_per_block
                ),
            ));
        }
        self.check_block_counts(local.init_blocks, local.min_blocks, local.max_blocks)?;
        self.check_parallelism(local.parallelism)?;
        if local.launcher.kind != LauncherKind::SingleNode {
            return Err(self.invalid(
                &["provider.launcher.type"],
                "the local provider runs one manager on this machine; the launcher must be \
                 single_node",
            ));
        }
        self.check_launcher(&local.launcher, local.nodes_per_block)?;
        if local.walltime.is_some_and(|w| w < Duration::from_secs(1)) {
            return Err(self.invalid(
                &["provider.walltime"],
                "must be at least 1s (leave it out for no limit)",
            ));
        }
        if local.cmd_timeout.is_zero() {
            return Err(self.invalid(&["provider.cmd_timeout"], "must be greater than 0"));
        }
        if local.status_poll_period.is_zero() {
            return Err(self.invalid(&["provider.status_poll_period"], "must be greater than 0"));
        }
        if let Some(path) = &mut local.script_template {
            *path = self.resolve(path);
            // Compiled and rendered once now, so that a broken template fails here with its
            // line rather than at the first block.
            ScriptTemplate::from_file(path)
                .and_then(|t| t.validate(&ScriptVars::example()))
                .map_err(|e| self.invalid(&["provider.script_template"], e.to_string()))?;
        }
        Ok(())
    }

    pub(super) fn check_parallelism(&self, p: f64) -> Result<(), ConfigError> {
        if (0.0..=1.0).contains(&p) {
            Ok(())
        } else {
            Err(self.invalid(
                &["provider.parallelism"],
                format!("must be between 0 and 1, not {p}"),
            ))
        }
    }

    /// A launcher that can start what a block needs: `single_node` starts one manager and
    /// takes no overrides, so a block of several nodes needs another.
    pub(super) fn check_launcher(
        &self,
        launcher: &LauncherConfig,
        nodes_per_block: u32,
    ) -> Result<(), ConfigError> {
        if launcher.kind != LauncherKind::SingleNode {
            return Ok(());
        }
        if !launcher.overrides.trim().is_empty() {
            return Err(self.invalid(
                &["provider.launcher.overrides"],
                "the single_node launcher runs the manager command as it is and takes no \
                 overrides",
            ));
        }
        if nodes_per_block > 1 {
            return Err(self.invalid(
                &["provider.launcher.type", "provider.nodes_per_block"],
                format!(
                    "single_node starts one manager, on the first of the block's \
                     {nodes_per_block} nodes; use srun, mpiexec, aprun or jsrun to start one \
                     per node"
                ),
            ));
        }
        Ok(())
    }

    pub(super) fn check_block_counts(
        &self,
        init: u32,
        min: u32,
        max: u32,
    ) -> Result<(), ConfigError> {
        if max == 0 {
            return Err(self.invalid(
                &["provider.max_blocks"],
                "must be at least 1 (an endpoint without blocks runs nothing)",
            ));
        }
        if min > max {
            return Err(self.invalid(
                &["provider.max_blocks", "provider.min_blocks"],
                format!("min_blocks ({min}) is greater than max_blocks ({max})"),
            ));
        }
        if !(min..=max).contains(&init) {
            return Err(self.invalid(
                &[
                    "provider.init_blocks",
                    "provider.min_blocks",
                    "provider.max_blocks",
                ],
                format!(
                    "init_blocks ({init}) must be within min_blocks..max_blocks ({min}..{max})"
                ),
            ));
        }
        Ok(())
    }

    /// `path` with `~/` expanded and made absolute against the config's directory.
    pub(super) fn resolve(&self, path: &Path) -> PathBuf {
        if let (Ok(rest), Some(home)) = (path.strip_prefix("~"), std::env::var_os("HOME")) {
            return PathBuf::from(home).join(rest);
        }
        match self.file.parent() {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path.to_owned(),
        }
    }
}
