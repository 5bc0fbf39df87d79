//! `provider: {type: kubernetes, ...}`: one pod per block. The keys are Parsl's
//! `KubernetesProvider`'s, plus `pod_template`, `walltime` and `manager_program`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use scifaas_providers::kubernetes::{cpu_quantity, parse_quantity};
use scifaas_providers::{KubernetesOptions, PodTemplate, ProviderError};
use serde::Deserialize;

use super::check::Document;
use super::duration;
use super::error::ConfigError;
use super::EngineConfig;

/// `provider: {type: kubernetes, ...}`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KubernetesProviderConfig {
    /// The namespace of the pods (default: the kubeconfig context's, or the service
    /// account's when the agent runs in a pod, else `default`).
    pub namespace: Option<String>,
    /// The container image (required): it must hold `python3` and `scifaas`.
    pub image: String,
    /// CPU cores requested per pod (default 1).
    pub init_cpu: f64,
    /// CPU cores a pod may use (default 2).
    pub max_cpu: f64,
    /// Memory requested per pod, a Kubernetes quantity (default `250Mi`).
    pub init_mem: String,
    /// Memory a pod may use before it is OOM-killed (default `750Mi`).
    pub max_mem: String,
    /// The pods' service account (default: the namespace's `default`).
    pub service_account: Option<String>,
    /// Names of Secrets with registry credentials for `image` (default none).
    pub image_pull_secrets: Vec<String>,
    /// Shell lines run in the container before the manager (default empty).
    pub worker_init: String,
    /// Blocks started with the endpoint (default 1).
    pub init_blocks: u32,
    /// Blocks kept even when idle (default 0).
    pub min_blocks: u32,
    /// The most blocks at once (default 10).
    pub max_blocks: u32,
    /// Share of outstanding tasks that get a slot, in [0, 1] (default 1).
    pub parallelism: f64,
    /// Nodes per block; a block is one pod (default and only value 1).
    pub nodes_per_block: u32,
    /// A pod is stopped after this long (`activeDeadlineSeconds`; state `timeout`)
    /// (default: never).
    #[serde(deserialize_with = "duration::optional")]
    pub walltime: Option<Duration>,
    /// Limit on each Kubernetes API request (default 30s).
    #[serde(deserialize_with = "duration::required")]
    pub cmd_timeout: Duration,
    /// A handlebars file replacing the built-in `kubernetes-pod.yaml.hbs`; relative to
    /// the config's directory (default: the built-in one).
    pub pod_template: Option<PathBuf>,
    /// The `scifaas` program inside the image (default `scifaas`, on the image's PATH).
    pub manager_program: String,
}

impl Default for KubernetesProviderConfig {
    fn default() -> Self {
        let options = KubernetesOptions::default();
        Self {
            namespace: None,
            image: String::new(),
            init_cpu: 1.0,
            max_cpu: 2.0,
            init_mem: options.init_mem,
            max_mem: options.max_mem,
            service_account: None,
            image_pull_secrets: Vec::new(),
            worker_init: String::new(),
            init_blocks: 1,
            min_blocks: 0,
            max_blocks: 10,
            parallelism: 1.0,
            nodes_per_block: 1,
            walltime: None,
            cmd_timeout: options.request_timeout,
            pod_template: None,
            manager_program: options.manager_program,
        }
    }
}

impl KubernetesProviderConfig {
    /// The provider's options. Call on a checked config (CPU counts are valid then).
    pub fn options(&self) -> KubernetesOptions {
        let cpu = |cores: f64| cpu_quantity(cores).unwrap_or_else(|| "1".to_owned());
        KubernetesOptions {
            namespace: self.namespace.clone(),
            image: self.image.clone(),
            init_cpu: cpu(self.init_cpu),
            max_cpu: cpu(self.max_cpu),
            init_mem: self.init_mem.clone(),
            max_mem: self.max_mem.clone(),
            service_account: self.service_account.clone(),
            image_pull_secrets: self.image_pull_secrets.clone(),
            manager_program: self.manager_program.clone(),
            request_timeout: self.cmd_timeout,
        }
    }

    /// The pod template: the endpoint's `pod_template` (an absolute path once loaded), else
    /// the built-in one.
    pub fn pod_template(&self) -> Result<PodTemplate, ProviderError> {
        match &self.pod_template {
            Some(path) => PodTemplate::from_file(path),
            None => Ok(PodTemplate::builtin()),
        }
    }
}

impl Document<'_> {
    /// What serde cannot check in a kubernetes provider section; `engine` is checked
    /// already, but its address must be one that pods can reach.
    pub(super) fn check_kubernetes(
        &self,
        k: &mut KubernetesProviderConfig,
        engine: &EngineConfig,
    ) -> Result<(), ConfigError> {
        if k.nodes_per_block != 1 {
            return Err(self.invalid(
                &["provider.nodes_per_block"],
                format!("a block is one pod; must be 1, not {}", k.nodes_per_block),
            ));
        }
        self.check_block_counts(k.init_blocks, k.min_blocks, k.max_blocks)?;
        let p = k.parallelism;
        if !(0.0..=1.0).contains(&p) {
            return Err(self.invalid(
                &["provider.parallelism"],
                format!("must be between 0 and 1, not {p}"),
            ));
        }
        if k.image.trim().is_empty() || k.image.contains(char::is_whitespace) {
            return Err(self.invalid(
                &["provider.image"],
                "must name the container image of the pods (one with python3 and scifaas), \
                 e.g. ghcr.io/lab/scifaas:1.0",
            ));
        }
        if let Some(namespace) = &k.namespace {
            if !is_dns_label(namespace) {
                return Err(self.invalid(
                    &["provider.namespace"],
                    format!(
                        "`{namespace}` is not a namespace name (at most 63 lowercase letters, \
                         digits and `-`, starting and ending with a letter or digit)"
                    ),
                ));
            }
        }
        for (key, cores) in [("init_cpu", k.init_cpu), ("max_cpu", k.max_cpu)] {
            if cpu_quantity(cores).is_none() {
                return Err(self.invalid(
                    &[&format!("provider.{key}")],
                    format!("must be a number of cores of at least 0.001, not {cores}"),
                ));
            }
        }
        if k.max_cpu < k.init_cpu {
            return Err(self.invalid(
                &["provider.max_cpu", "provider.init_cpu"],
                format!(
                    "max_cpu ({}) is less than init_cpu ({})",
                    k.max_cpu, k.init_cpu
                ),
            ));
        }
        let init_mem =
            parse_quantity(&k.init_mem).map_err(|e| self.invalid(&["provider.init_mem"], e))?;
        let max_mem =
            parse_quantity(&k.max_mem).map_err(|e| self.invalid(&["provider.max_mem"], e))?;
        if max_mem < init_mem {
            return Err(self.invalid(
                &["provider.max_mem", "provider.init_mem"],
                format!(
                    "max_mem ({}) is less than init_mem ({})",
                    k.max_mem, k.init_mem
                ),
            ));
        }
        if k.service_account
            .as_deref()
            .is_some_and(|s| !is_dns_subdomain(s))
        {
            return Err(self.invalid(
                &["provider.service_account"],
                "must name a service account (lowercase letters, digits, `-` and `.`)",
            ));
        }
        if let Some(bad) = k.image_pull_secrets.iter().find(|s| !is_dns_subdomain(s)) {
            return Err(self.invalid(
                &["provider.image_pull_secrets"],
                format!("`{bad}` is not a Secret name (lowercase letters, digits, `-` and `.`)"),
            ));
        }
        if k.walltime.is_some_and(|w| w < Duration::from_secs(1)) {
            return Err(self.invalid(
                &["provider.walltime"],
                "must be at least 1s (leave it out for no limit)",
            ));
        }
        if k.cmd_timeout.is_zero() {
            return Err(self.invalid(&["provider.cmd_timeout"], "must be greater than 0"));
        }
        if k.manager_program.trim().is_empty() {
            return Err(self.invalid(
                &["provider.manager_program"],
                "must name the scifaas program inside the image",
            ));
        }
        if engine.interface.is_none() && is_loopback(&engine.address) {
            return Err(self.invalid(
                &["engine.address", "provider.type"],
                format!(
                    "{} is this machine's loopback address, which pods cannot reach; set \
                     engine.address to an address of the agent that the cluster's pods can \
                     connect to (or engine.interface)",
                    engine.address
                ),
            ));
        }
        if let Some(path) = &mut k.pod_template {
            *path = self.resolve(path);
            // Compiled and rendered once now, so that a broken template fails here with its
            // line rather than at the first block.
            PodTemplate::from_file(path)
                .and_then(|t| t.validate())
                .map_err(|e| self.invalid(&["provider.pod_template"], e.to_string()))?;
        }
        Ok(())
    }
}

fn is_dns_label(name: &str) -> bool {
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    (1..=63).contains(&name.len())
        && name.chars().all(|c| ok(c) || c == '-')
        && name.starts_with(ok)
        && name.ends_with(ok)
}

fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_dns_label)
}

fn is_loopback(address: &str) -> bool {
    address.eq_ignore_ascii_case("localhost")
        || address.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
#[path = "kubernetes_tests.rs"]
mod tests;
