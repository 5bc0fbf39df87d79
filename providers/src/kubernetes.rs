//! The kubernetes provider: one pod per block, through the Kubernetes REST API.
//!
//! - submit: renders the pod from its template ([`PodTemplate`], built-in
//!   `templates/kubernetes-pod.yaml.hbs`, overridable by `pod_template`), writes what it
//!   sends to the block's directory as `pod.json` (mode 0600: it holds the endpoint
//!   secret), and `POST /api/v1/namespaces/NS/pods`. The job id is the pod's name.
//! - status: **one** `GET /api/v1/namespaces/NS/pods?labelSelector=scifaas-endpoint=NAME`
//!   for all blocks; each pod's phase and container states map to a [`JobState`] as the
//!   table in [`pod_state`] says. A pod missing from the list is `Unknown` (or `Cancelled`
//!   when this provider deleted it).
//! - cancel: `DELETE /api/v1/namespaces/NS/pods/NAME` per pod (the default grace period
//!   lets the manager stop; a pod already gone is not an error).
//!
//! The agent needs, in its namespace, RBAC `create`, `list` and `delete` on `pods`.
//! Credentials come from a kubeconfig or the pod's service account ([`Credentials`]).
//!
//! The endpoint secret reaches the manager as an environment variable in the pod spec, as
//! Parsl does, not as a Secret object. A Secret would keep it out of `kubectl get pod -o
//! yaml` for those who may read pods but not secrets, and out of etcd's plain pod records;
//! it would also need `create`/`delete` on secrets, a second object to create and clean up
//! per block, and a pod that cannot start until both exist. The secret is drawn anew at each
//! agent start, so what leaks stops working when the agent restarts; and the built-in
//! template's comment tells admins to give the endpoint a namespace of its own. A Secret
//! object is the better next step.
//!
//! No Kubernetes control plane can run where scifaas is built and tested; the tests replay
//! recorded answers of real API servers (`providers/tests/fixtures/kubernetes/`).

mod api;
mod credentials;
mod manifest;
pub mod pod_state;

use std::collections::{HashMap, HashSet};
use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use reqwest::Method;
use serde::Deserialize;
use serde_json::Value;

use crate::error::ProviderError;
use crate::{BlockRequest, JobId, JobState, JobStatus, Provider};

pub use api::api_error;
pub use credentials::{Credentials, SERVICE_ACCOUNT_DIR};
pub use manifest::{
    cpu_quantity, label_value, parse_quantity, pod_name, PodTemplate, PodVars, BLOCK_LABEL,
    BUILTIN_POD_TEMPLATE, ENDPOINT_LABEL,
};
pub use pod_state::{pod_job_status, Pod};

/// The file, in the block's directory, that holds the pod exactly as it was sent.
pub const POD_FILE: &str = "pod.json";

/// What every pod of an endpoint gets. The defaults are Parsl's `KubernetesProvider`'s.
#[derive(Clone, Debug, PartialEq)]
pub struct KubernetesOptions {
    /// The namespace of the pods; `None`: the kubeconfig context's or the service
    /// account's namespace, else `default`.
    pub namespace: Option<String>,
    /// The container image; it must hold `python3` and `manager_program`.
    pub image: String,
    /// CPU request, a Kubernetes quantity (default `1`).
    pub init_cpu: String,
    /// CPU limit (default `2`).
    pub max_cpu: String,
    /// Memory request (default `250Mi`).
    pub init_mem: String,
    /// Memory limit (default `750Mi`); a manager above it is OOM-killed.
    pub max_mem: String,
    /// The pods' service account (default: the namespace's `default`).
    pub service_account: Option<String>,
    /// Secrets with registry credentials for the image (default none).
    pub image_pull_secrets: Vec<String>,
    /// The `scifaas` program inside the image; it replaces the first word of the manager
    /// command, which is the agent's own path (default `scifaas`, found on the image's
    /// `PATH`).
    pub manager_program: String,
    /// Limit on each API request (default 30 s).
    pub request_timeout: Duration,
}

impl Default for KubernetesOptions {
    fn default() -> Self {
        Self {
            namespace: None,
            image: String::new(),
            init_cpu: "1".to_owned(),
            max_cpu: "2".to_owned(),
            init_mem: "250Mi".to_owned(),
            max_mem: "750Mi".to_owned(),
            service_account: None,
            image_pull_secrets: Vec::new(),
            manager_program: "scifaas".to_owned(),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// Runs each block as one pod; see the module's documentation.
pub struct KubernetesProvider {
    endpoint_label: String,
    namespace: String,
    options: KubernetesOptions,
    template: PodTemplate,
    api: api::Api,
    /// Pods this provider deleted, so that their absence reads as Cancelled, not Unknown.
    cancelled: Mutex<HashSet<JobId>>,
}

impl std::fmt::Debug for KubernetesProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesProvider")
            .field("endpoint_label", &self.endpoint_label)
            .field("namespace", &self.namespace)
            .field("template", &self.template)
            .field("credentials", self.api.credentials())
            .finish_non_exhaustive()
    }
}

impl KubernetesProvider {
    /// A provider for the pods of endpoint `endpoint_name`, reaching the API server with
    /// `credentials`. Makes no request yet.
    pub fn new(
        endpoint_name: &str,
        options: KubernetesOptions,
        template: PodTemplate,
        credentials: Credentials,
    ) -> Self {
        let namespace = options
            .namespace
            .clone()
            .or_else(|| credentials.namespace().map(str::to_owned))
            .unwrap_or_else(|| "default".to_owned());
        Self {
            endpoint_label: label_value(endpoint_name),
            namespace,
            api: api::Api::new(credentials, options.request_timeout),
            options,
            template,
            cancelled: Mutex::new(HashSet::new()),
        }
    }

    /// The namespace the pods go to.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn pods_path(&self) -> String {
        format!("/api/v1/namespaces/{}/pods", self.namespace)
    }

    fn cancelled(&self) -> std::sync::MutexGuard<'_, HashSet<JobId>> {
        // The set is only ever extended or pruned whole-entry: still consistent.
        self.cancelled.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Provider for KubernetesProvider {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    fn submit(&self, block: &BlockRequest) -> Result<JobId, ProviderError> {
        if block.nodes != 1 {
            return Err(ProviderError::Unsupported {
                provider: "kubernetes",
                message: format!(
                    "a block is one pod; nodes_per_block must be 1, not {}",
                    block.nodes
                ),
            });
        }
        let name = pod_name(&block.endpoint_name, &block.block_id);
        let mut vars = PodVars::for_block(block, &self.options, &self.namespace, &name);
        // The label `status` selects by is this provider's, whatever the request says.
        vars.endpoint_label.clone_from(&self.endpoint_label);
        let pod = self.template.render(&vars)?;
        write_private(
            &block.dir,
            POD_FILE,
            &serde_json::to_vec_pretty(&pod).unwrap_or_default(),
        )?;
        let url = self.api.url(&self.pods_path(), &[])?;
        let created = self.api.call(Method::POST, url, Some(&pod))?;
        // The server's name is the truth (a site template could not change it, but an
        // admission webhook could).
        let name = created
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or(&name)
            .to_owned();
        tracing::info!(block = %block.block_id, pod = %name, namespace = %self.namespace, "created pod");
        Ok(JobId(name))
    }

    fn status(&self, jobs: &[JobId]) -> Result<HashMap<JobId, JobStatus>, ProviderError> {
        if jobs.is_empty() {
            return Ok(HashMap::new());
        }
        let selector = format!("{ENDPOINT_LABEL}={}", self.endpoint_label);
        let url = self
            .api
            .url(&self.pods_path(), &[("labelSelector", &selector)])?;
        let request = format!("GET {url}");
        let list = self.api.call(Method::GET, url, None)?;
        let pods = pods_of_list(list).map_err(|message| ProviderError::Api {
            request,
            code: Some(200),
            reason: None,
            message,
        })?;
        let mut cancelled = self.cancelled();
        let answer = statuses(&pods, jobs, &cancelled, &self.namespace);
        // A deleted pod reported gone once is forgotten: the agent drops ended blocks.
        let listed: HashSet<&str> = pods.iter().map(|p| p.metadata.name.as_str()).collect();
        cancelled.retain(|id| listed.contains(id.0.as_str()) || !jobs.contains(id));
        Ok(answer)
    }

    fn cancel(&self, jobs: &[JobId]) -> Result<(), ProviderError> {
        let mut first_error = None;
        for job in jobs {
            let url = self
                .api
                .url(&format!("{}/{}", self.pods_path(), job.0), &[])?;
            match self.api.call(Method::DELETE, url, None) {
                Ok(_)
                | Err(ProviderError::Api {
                    code: Some(404), ..
                }) => {
                    self.cancelled().insert(job.clone());
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// The pods of a `PodList` answer.
pub fn pods_of_list(list: Value) -> Result<Vec<Pod>, String> {
    #[derive(Deserialize)]
    struct PodList {
        kind: Option<String>,
        items: Option<Vec<Pod>>,
    }
    let list: PodList = serde_json::from_value(list).map_err(|e| format!("not a pod list: {e}"))?;
    if let Some(kind) = list.kind.filter(|k| k != "PodList") {
        return Err(format!("expected a PodList, got a {kind}"));
    }
    Ok(list.items.unwrap_or_default())
}

/// The status of each of `jobs` (pod names) given the `pods` listed in `namespace`, those
/// in `cancelled` having been deleted by us. Every job asked for is in the answer.
pub fn statuses(
    pods: &[Pod],
    jobs: &[JobId],
    cancelled: &HashSet<JobId>,
    namespace: &str,
) -> HashMap<JobId, JobStatus> {
    let by_name: HashMap<&str, &Pod> = pods.iter().map(|p| (p.metadata.name.as_str(), p)).collect();
    jobs.iter()
        .map(|job| {
            let deleted = cancelled.contains(job);
            let status = match (by_name.get(job.0.as_str()), deleted) {
                (Some(pod), false) => pod_job_status(pod),
                (Some(pod), true) => {
                    let was = pod_job_status(pod);
                    JobStatus {
                        state: JobState::Cancelled,
                        exit_code: was.exit_code,
                        message: Some(format!("deleted by scifaas (the pod was {})", was.state)),
                    }
                }
                (None, true) => JobStatus {
                    state: JobState::Cancelled,
                    exit_code: None,
                    message: Some("deleted by scifaas".to_owned()),
                },
                (None, false) => JobStatus {
                    state: JobState::Unknown,
                    exit_code: None,
                    message: Some(format!(
                        "no pod {job} in namespace {namespace} (deleted outside scifaas, or never created)"
                    )),
                },
            };
            (job.clone(), status)
        })
        .collect()
}

/// Writes `contents` to `dir/name`, readable by the owner only (it holds the endpoint
/// secret), creating `dir` (mode 0700) if needed.
fn write_private(dir: &Path, name: &str, contents: &[u8]) -> Result<PathBuf, ProviderError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| ProviderError::Io { path, source }
    };
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))?;
    let path = dir.join(name);
    // Removed first: `mode` applies only to a new file, and an old one may be readable.
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&path)(e)),
        _ => {}
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(io(&path))?;
    file.write_all(contents).map_err(io(&path))?;
    Ok(path)
}
