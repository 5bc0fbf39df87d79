//! The pod manifest: a handlebars template (YAML, readable and overridable by an admin),
//! what it sees, and the checks that make any template's pod one this provider can track.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::path::Path;

use handlebars::{
    Context, Handlebars, Helper, HelperResult, Output, RenderContext, RenderErrorReason,
};
use serde::Serialize;
use serde_json::{json, Value};

use crate::error::ProviderError;
use crate::template::{read_template, shell_quote, strict_registry};
use crate::BlockRequest;

use super::KubernetesOptions;

/// The built-in pod template, embedded from `templates/kubernetes-pod.yaml.hbs`.
pub const BUILTIN_POD_TEMPLATE: &str = include_str!("../../../templates/kubernetes-pod.yaml.hbs");

/// The label every scifaas pod carries with its endpoint's name; `status` lists pods by it.
pub const ENDPOINT_LABEL: &str = "scifaas-endpoint";
/// The label every scifaas pod carries with its block's id.
pub const BLOCK_LABEL: &str = "scifaas-block";

/// The name the one template is registered under in its registry.
const NAME: &str = "pod";

/// A compiled pod-manifest template.
pub struct PodTemplate {
    registry: Handlebars<'static>,
    origin: String,
}

impl std::fmt::Debug for PodTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodTemplate")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// What a pod template sees. Rendering is strict: every field is always present (optional
/// ones as `null`, which `{{#if}}` tests). Insert values with `{{json NAME}}`, which writes
/// them as JSON, a form YAML reads back unchanged whatever characters they hold.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PodVars {
    /// The pod's name: `scifaas-ENDPOINT-BLOCK-SUFFIX`, a DNS label (the provider sets it
    /// on the pod whatever the template writes).
    pub pod_name: String,
    /// The namespace the pod is created in.
    pub namespace: String,
    /// The endpoint's name, as the agent knows it.
    pub endpoint_name: String,
    /// The block's id, as the agent knows it.
    pub block_id: String,
    /// The endpoint's name as a label value (the value of `scifaas-endpoint`).
    pub endpoint_label: String,
    /// The block's id as a label value (the value of `scifaas-block`).
    pub block_label: String,
    /// The container image.
    pub image: String,
    /// CPU request and limit, as Kubernetes quantities (`500m`, `2`).
    pub init_cpu: String,
    /// CPU limit.
    pub max_cpu: String,
    /// Memory request, a Kubernetes quantity (`250Mi`).
    pub init_mem: String,
    /// Memory limit.
    pub max_mem: String,
    /// The pod's service account, or null for the namespace's default.
    pub service_account: Option<String>,
    /// `[{"name": SECRET}]`, the shape of a pod's `imagePullSecrets`.
    pub image_pull_secrets: Vec<Value>,
    /// `[{"name": N, "value": V}]`, the shape of a container's `env`; holds the endpoint
    /// secret.
    pub env: Vec<Value>,
    /// The block's walltime in whole seconds (for `activeDeadlineSeconds`), or null.
    pub walltime_seconds: Option<u64>,
    /// Shell lines run before the manager.
    pub worker_init: String,
    /// The manager's argv, its program being `manager_program` from the options.
    pub manager_command: Vec<String>,
    /// The container's command: `["/bin/sh", "-c", worker_init + "exec " + manager]`.
    pub container_command: Vec<String>,
}

impl PodVars {
    /// The variables for `block`, in `namespace`, for the pod named `pod_name`.
    pub fn for_block(
        block: &BlockRequest,
        options: &KubernetesOptions,
        namespace: &str,
        pod_name: &str,
    ) -> Self {
        let mut manager_command = block.manager_command.clone();
        // The agent's own path to `scifaas` means nothing inside the image.
        match manager_command.first_mut() {
            Some(program) => program.clone_from(&options.manager_program),
            None => manager_command.push(options.manager_program.clone()),
        }
        let launch = manager_command
            .iter()
            .map(|word| shell_quote(word))
            .collect::<Vec<_>>()
            .join(" ");
        let mut script = String::new();
        if !block.worker_init.trim().is_empty() {
            script.push_str(block.worker_init.trim_end());
            script.push('\n');
        }
        // exec: the manager becomes the container's main process and gets its SIGTERM.
        script.push_str("exec ");
        script.push_str(&launch);
        Self {
            pod_name: pod_name.to_owned(),
            namespace: namespace.to_owned(),
            endpoint_name: block.endpoint_name.clone(),
            block_id: block.block_id.clone(),
            endpoint_label: label_value(&block.endpoint_name),
            block_label: label_value(&block.block_id),
            image: options.image.clone(),
            init_cpu: options.init_cpu.clone(),
            max_cpu: options.max_cpu.clone(),
            init_mem: options.init_mem.clone(),
            max_mem: options.max_mem.clone(),
            service_account: options.service_account.clone(),
            image_pull_secrets: options
                .image_pull_secrets
                .iter()
                .map(|name| json!({ "name": name }))
                .collect(),
            env: block
                .env
                .iter()
                .map(|(name, value)| json!({ "name": name, "value": value }))
                .collect(),
            walltime_seconds: block
                .walltime
                .map(|w| w.as_secs() + u64::from(w.subsec_nanos() > 0)),
            worker_init: block.worker_init.clone(),
            manager_command,
            container_command: vec!["/bin/sh".to_owned(), "-c".to_owned(), script],
        }
    }

    /// Plausible values for every variable, to check a template before it is needed.
    pub fn example() -> Self {
        let block = BlockRequest {
            block_id: "block-0".to_owned(),
            dir: "/home/user/.scifaas/endpoints/example/blocks/block-0".into(),
            endpoint_name: "example".to_owned(),
            nodes: 1,
            walltime: Some(std::time::Duration::from_secs(3600)),
            worker_init: "pip install --user numpy".to_owned(),
            manager_command: ["scifaas", "manager", "--block-id", "block-0"]
                .map(str::to_owned)
                .to_vec(),
            env: vec![("SCIFAAS_ENDPOINT_SECRET".to_owned(), "secret".to_owned())],
        };
        let options = KubernetesOptions {
            image: "python:3.12-slim".to_owned(),
            service_account: Some("scifaas".to_owned()),
            image_pull_secrets: vec!["regcred".to_owned()],
            ..KubernetesOptions::default()
        };
        Self::for_block(
            &block,
            &options,
            "default",
            "scifaas-example-block-0-abc123",
        )
    }
}

impl PodTemplate {
    /// The built-in template (`templates/kubernetes-pod.yaml.hbs`).
    pub fn builtin() -> Self {
        Self::compile("built-in kubernetes-pod.yaml.hbs", BUILTIN_POD_TEMPLATE)
            .expect("the built-in pod template compiles (tested)")
    }

    /// Reads and compiles the template at `path` (an endpoint's `pod_template`).
    pub fn from_file(path: &Path) -> Result<Self, ProviderError> {
        Self::compile(path.display().to_string(), &read_template(path)?)
    }

    /// Compiles `source`; `origin` names it in errors (a path, or `built-in NAME`).
    pub fn compile(origin: impl Into<String>, source: &str) -> Result<Self, ProviderError> {
        let origin = origin.into();
        let registry = strict_registry(&origin, NAME, source, "json", Box::new(json_helper))?;
        Ok(Self { registry, origin })
    }

    /// Where the template came from: its path, or `built-in NAME`.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Renders the text of the manifest for `vars` (YAML, as the template wrote it).
    pub fn render_text(&self, vars: &PodVars) -> Result<String, ProviderError> {
        self.registry.render(NAME, vars).map_err(|e| {
            self.error(match (e.line_no, e.column_no) {
                (Some(line), Some(column)) => {
                    format!("line {line}, column {column}: {}", e.reason())
                }
                _ => e.reason().to_string(),
            })
        })
    }

    /// Renders the pod for `vars` as the JSON object sent to the API server, with what the
    /// provider relies on made sure of, whatever the template wrote: `kind: Pod`, its name,
    /// namespace and labels from `vars`, and `restartPolicy: Never` (a restarted manager
    /// would hide a failed block).
    pub fn render(&self, vars: &PodVars) -> Result<Value, ProviderError> {
        let text = self.render_text(vars)?;
        let mut pod: Value = serde_yaml_ng::from_str(&text).map_err(|e| {
            // The text holds the endpoint secret: name the place, never show the text.
            self.error(format!("the rendered manifest is not valid YAML: {e}"))
        })?;
        let Some(object) = pod.as_object_mut() else {
            return Err(self.error("the rendered manifest is not a mapping"));
        };
        match object.get("kind") {
            Some(Value::String(kind)) if kind == "Pod" => {}
            other => return Err(self.error(format!("kind must be Pod, not {}", shown(other)))),
        }
        match object.get("apiVersion") {
            Some(Value::String(v)) if v == "v1" => {}
            other => return Err(self.error(format!("apiVersion must be v1, not {}", shown(other)))),
        }
        let metadata = object
            .entry("metadata")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .ok_or_else(|| self.error("metadata must be a mapping"))?;
        metadata.insert("name".to_owned(), json!(vars.pod_name));
        metadata.insert("namespace".to_owned(), json!(vars.namespace));
        metadata.remove("generateName");
        let labels = metadata
            .entry("labels")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .ok_or_else(|| self.error("metadata.labels must be a mapping"))?;
        labels.insert(ENDPOINT_LABEL.to_owned(), json!(vars.endpoint_label));
        labels.insert(BLOCK_LABEL.to_owned(), json!(vars.block_label));
        let spec = object
            .get_mut("spec")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| self.error("spec must be a mapping with the pod's containers"))?;
        match spec.get("restartPolicy") {
            None | Some(Value::Null) => {
                spec.insert("restartPolicy".to_owned(), json!("Never"));
            }
            Some(Value::String(policy)) if policy == "Never" => {}
            Some(other) => {
                return Err(self.error(format!(
                    "spec.restartPolicy must be Never (a block ends when its manager does), not {other}"
                )))
            }
        }
        let containers = spec.get("containers").and_then(Value::as_array);
        if containers.is_none_or(|c| c.is_empty()) {
            return Err(self.error("spec.containers must list at least one container"));
        }
        Ok(pod)
    }

    /// Renders the template once with example values, so that a broken template fails
    /// when the config is loaded rather than at the first block.
    pub fn validate(&self) -> Result<(), ProviderError> {
        self.render(&PodVars::example()).map(drop)
    }

    fn error(&self, message: impl Into<String>) -> ProviderError {
        ProviderError::Template {
            template: self.origin.clone(),
            message: message.into(),
        }
    }
}

fn shown(value: Option<&Value>) -> String {
    value.map_or_else(|| "missing".to_owned(), Value::to_string)
}

/// `{{json x}}`: `x` as compact JSON. A JSON string, number, list or object is also YAML
/// (a double-quoted scalar or a flow collection), so any value survives the YAML reading.
fn json_helper(
    h: &Helper<'_>,
    _: &Handlebars<'_>,
    _: &Context,
    _: &mut RenderContext<'_, '_>,
    out: &mut dyn Output,
) -> HelperResult {
    let param = h
        .param(0)
        .ok_or(RenderErrorReason::ParamNotFoundForIndex("json", 0))?;
    if param.is_value_missing() {
        let path = param.relative_path().cloned();
        return Err(RenderErrorReason::MissingVariable(path).into());
    }
    out.write(&param.value().to_string())?;
    Ok(())
}

/// A new pod name for a block: `scifaas-ENDPOINT-BLOCK-XXXXXXXX`, a DNS label (at most 63
/// lowercase letters, digits and `-`). The random suffix keeps names unique across agent
/// restarts, which start block ids at `block-0` again while old pods may still exist.
pub fn pod_name(endpoint: &str, block: &str) -> String {
    // RandomState is seeded from the OS per process and varies per instance: enough to
    // tell apart the pods of one endpoint, with no random-number crate.
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    let suffix = format!("{:08x}", hasher.finish() as u32);
    let mut stem = dns_label(&format!("scifaas-{endpoint}-{block}"));
    stem.truncate(63 - 1 - suffix.len());
    let stem = stem.trim_end_matches('-');
    format!("{stem}-{suffix}")
}

/// `text` made a DNS label: lowercase, other characters `-` (never two in a row), no `-` at
/// either end.
fn dns_label(text: &str) -> String {
    let mapped: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let mut label = String::with_capacity(mapped.len());
    for c in mapped.trim_matches('-').chars() {
        if !(c == '-' && label.ends_with('-')) {
            label.push(c);
        }
    }
    label
}

/// `text` made a label value: at most 63 of `[A-Za-z0-9._-]`, starting and ending with a
/// letter or digit; other characters become `_` (an empty value is valid too).
pub fn label_value(text: &str) -> String {
    let mapped: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(63)
        .collect();
    mapped
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_owned()
}

/// A CPU count as a Kubernetes quantity: whole cores as `2`, others in millicores (`500m`).
/// `None` for a count that is not positive or finite, or below one millicore.
pub fn cpu_quantity(cores: f64) -> Option<String> {
    if !(cores.is_finite() && cores > 0.0) {
        return None;
    }
    let millis = (cores * 1000.0).round() as u64;
    match millis {
        0 => None,
        m if m % 1000 == 0 => Some((m / 1000).to_string()),
        m => Some(format!("{m}m")),
    }
}

/// The value of a Kubernetes quantity (`250Mi`, `1G`, `500m`, `1.5Gi`, `2e3`), for checking
/// and comparing config values; the error says what a quantity looks like.
pub fn parse_quantity(text: &str) -> Result<f64, String> {
    const SUFFIXES: [(&str, f64); 15] = [
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("Ti", 1099511627776.0),
        ("Pi", 1125899906842624.0),
        ("Ei", 1152921504606846976.0),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    let invalid = || {
        format!(
            "`{text}` is not a Kubernetes quantity: a number with an optional suffix \
             (Ki Mi Gi Ti Pi Ei, k M G T P E, m), e.g. 250Mi or 2Gi"
        )
    };
    let (number, scale) = SUFFIXES
        .iter()
        .find_map(|(suffix, scale)| text.strip_suffix(suffix).map(|n| (n, *scale)))
        .unwrap_or((text, 1.0));
    // What is left must be a plain decimal, or (without a suffix) one with an exponent:
    // `1.5`, `.5`, `2e3`; Rust's float syntax would also take `inf` and `1_0`-free forms
    // Kubernetes refuses, so the characters are checked first.
    let (mantissa, exponent) = match number.split_once(['e', 'E']) {
        Some((m, e)) if scale == 1.0 => (m, Some(e)),
        Some(_) => return Err(invalid()),
        None => (number, None),
    };
    let digits = mantissa.strip_prefix('+').unwrap_or(mantissa);
    let decimal = digits.chars().any(|c| c.is_ascii_digit())
        && digits.chars().all(|c| c.is_ascii_digit() || c == '.')
        && digits.matches('.').count() <= 1;
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['+', '-']).unwrap_or(e);
        !e.is_empty() && e.chars().all(|c| c.is_ascii_digit())
    });
    if !decimal || !exponent_ok {
        return Err(invalid());
    }
    let value: f64 = number.parse().map_err(|_| invalid())?;
    Ok(value * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_are_checked_as_kubernetes_reads_them() {
        for (text, value) in [
            ("250Mi", 250.0 * 1048576.0),
            ("1Gi", 1073741824.0),
            ("1.5Gi", 1.5 * 1073741824.0),
            ("2G", 2e9),
            ("500m", 0.5),
            ("2", 2.0),
            ("2e3", 2000.0),
            (".5", 0.5),
            ("+1k", 1000.0),
        ] {
            assert_eq!(parse_quantity(text), Ok(value), "{text}");
        }
        for bad in [
            "", "Mi", "250MB", "-1", "1.2.3", "1e3Mi", "inf", "NaN", "1 Gi", "e3",
        ] {
            let err = parse_quantity(bad).unwrap_err();
            assert!(err.contains("is not a Kubernetes quantity"), "{bad}: {err}");
        }
    }

    #[test]
    fn cpu_counts_become_cores_or_millicores() {
        assert_eq!(cpu_quantity(1.0).as_deref(), Some("1"));
        assert_eq!(cpu_quantity(0.5).as_deref(), Some("500m"));
        assert_eq!(cpu_quantity(2.25).as_deref(), Some("2250m"));
        assert_eq!(cpu_quantity(0.0001), None);
        assert_eq!(cpu_quantity(0.0), None);
        assert_eq!(cpu_quantity(-1.0), None);
        assert_eq!(cpu_quantity(f64::NAN), None);
    }

    #[test]
    fn pod_names_are_unique_dns_labels() {
        let a = pod_name("Lab K8s", "block-0");
        let b = pod_name("Lab K8s", "block-0");
        assert_ne!(a, b);
        assert!(a.starts_with("scifaas-lab-k8s-block-0-"), "{a}");
        let long = pod_name(&"x".repeat(100), "block-12");
        assert_eq!(long.len(), 63);
        for name in [a, long, pod_name("--", "__")] {
            assert!(name.len() <= 63, "{name}");
            assert!(name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
            assert!(!name.starts_with('-') && !name.ends_with('-'), "{name}");
            assert!(!name.contains("--"), "{name}");
        }
    }

    #[test]
    fn label_values_keep_only_what_kubernetes_allows() {
        assert_eq!(label_value("lab-k8s"), "lab-k8s");
        assert_eq!(label_value("Lab K8s/é"), "Lab_K8s");
        assert_eq!(label_value("_x_"), "x");
        assert_eq!(label_value(&"a".repeat(80)).len(), 63);
    }

    #[test]
    fn any_value_survives_the_json_helper_and_yaml() {
        let t = PodTemplate::compile(
            "t",
            "apiVersion: v1\nkind: Pod\nspec:\n  containers: [{name: m}]\n  x: {{json worker_init}}\n  y: {{json env}}\n",
        )
        .unwrap();
        let mut vars = PodVars::example();
        vars.worker_init = "a: b # c\n'd' \"e\" \\ \t{{x}} \u{1} é".to_owned();
        let pod = t.render(&vars).unwrap();
        assert_eq!(pod["spec"]["x"], vars.worker_init.as_str());
        assert_eq!(pod["spec"]["y"], json!(vars.env));
    }

    #[test]
    fn the_manager_runs_as_the_image_s_program_after_worker_init() {
        let vars = PodVars::example();
        assert_eq!(vars.manager_command[0], "scifaas");
        assert_eq!(
            vars.container_command,
            [
                "/bin/sh",
                "-c",
                "pip install --user numpy\nexec scifaas manager --block-id block-0"
            ]
        );
        assert_eq!(vars.walltime_seconds, Some(3600));
        PodTemplate::builtin().validate().unwrap();
    }
}
