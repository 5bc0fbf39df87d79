//! The kubernetes provider section: what it accepts and what it refuses, located.

use std::path::Path;
use std::time::Duration;

use super::KubernetesProviderConfig;
use crate::config::{EndpointConfig, ProviderConfig, BUILTIN_CONFIGS};
use scifaas_providers::Launcher;

const FILE: &str = "/home/u/.scifaas/endpoints/k8s/config.yaml";
const BASE: &str = "engine: {address: 10.0.0.5}\nprovider:\n  type: kubernetes\n  image: img:1\n";

fn kubernetes(text: &str) -> KubernetesProviderConfig {
    let config = EndpointConfig::parse(text, Path::new(FILE)).unwrap_or_else(|e| panic!("{e}"));
    match config.provider {
        ProviderConfig::Kubernetes(k) => k,
        other => panic!("not kubernetes: {other:?}"),
    }
}

/// Asserts the error is at `line` about `key`, and its message contains `words`.
fn assert_error(text: &str, line: usize, key: &str, words: &str) {
    let err = match EndpointConfig::parse(text, Path::new(FILE)) {
        Ok(config) => panic!("accepted: {config:?}"),
        Err(e) => e.to_string(),
    };
    let prefix = format!("{FILE}:{line}: {key}: ");
    assert!(err.starts_with(&prefix), "want `{prefix}...`, got `{err}`");
    assert!(err.contains(words), "want `{words}` in `{err}`");
}

#[test]
fn an_image_and_a_reachable_address_are_all_it_needs() {
    let k = kubernetes(BASE);
    assert_eq!(
        k,
        KubernetesProviderConfig {
            image: "img:1".to_owned(),
            ..KubernetesProviderConfig::default()
        }
    );
    assert_eq!((k.init_blocks, k.min_blocks, k.max_blocks), (1, 0, 10));
    assert_eq!((k.init_cpu, k.max_cpu), (1.0, 2.0));
    assert_eq!(
        (k.init_mem.as_str(), k.max_mem.as_str()),
        ("250Mi", "750Mi")
    );
    assert_eq!(k.cmd_timeout, Duration::from_secs(30));
    assert_eq!(k.manager_program, "scifaas");
    let options = k.options();
    assert_eq!(
        (options.init_cpu.as_str(), options.max_cpu.as_str()),
        ("1", "2")
    );
    assert_eq!(options.namespace, None);
    assert_eq!(
        k.pod_template().unwrap().origin(),
        "built-in kubernetes-pod.yaml.hbs"
    );
}

#[test]
fn every_key_is_read() {
    let text = format!(
        "{BASE}  namespace: science\n  init_cpu: 0.5\n  max_cpu: 4\n  init_mem: 1Gi\n  max_mem: 2Gi\n\
         \x20 service_account: scifaas-pilot\n  image_pull_secrets: [regcred, other]\n\
         \x20 worker_init: pip install numpy\n  init_blocks: 0\n  min_blocks: 0\n  max_blocks: 3\n\
         \x20 parallelism: 0.5\n  nodes_per_block: 1\n  walltime: 1h\n  cmd_timeout: 10s\n\
         \x20 manager_program: /opt/scifaas/bin/scifaas\n"
    );
    let config = EndpointConfig::parse(&text, Path::new(FILE)).unwrap();
    let provider = &config.provider;
    assert_eq!(provider.kind(), "kubernetes");
    assert_eq!(provider.launcher(), Launcher::SingleNode);
    assert_eq!(provider.walltime(), Some(Duration::from_secs(3600)));
    assert_eq!(provider.worker_init(), "pip install numpy");
    assert_eq!(provider.cmd_timeout(), Duration::from_secs(10));
    let limits = provider.limits();
    assert_eq!(
        (limits.init_blocks, limits.max_blocks, limits.parallelism),
        (0, 3, 0.5)
    );
    let err = provider.script_template().unwrap_err().to_string();
    assert!(err.contains("pods from pod_template"), "{err}");
    let ProviderConfig::Kubernetes(k) = provider else {
        panic!()
    };
    let options = k.options();
    assert_eq!(options.namespace.as_deref(), Some("science"));
    assert_eq!(
        (options.init_cpu.as_str(), options.max_cpu.as_str()),
        ("500m", "4")
    );
    assert_eq!(
        (options.init_mem.as_str(), options.max_mem.as_str()),
        ("1Gi", "2Gi")
    );
    assert_eq!(options.service_account.as_deref(), Some("scifaas-pilot"));
    assert_eq!(options.image_pull_secrets, ["regcred", "other"]);
    assert_eq!(options.manager_program, "/opt/scifaas/bin/scifaas");
    assert_eq!(options.request_timeout, Duration::from_secs(10));
}

#[test]
fn the_shipped_kubernetes_config_parses() {
    let (_, text) = BUILTIN_CONFIGS
        .iter()
        .find(|(name, _)| *name == "kubernetes")
        .unwrap();
    let k = kubernetes(text);
    assert_eq!(k.image, "ghcr.io/lab/scifaas:1.0");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/kubernetes.yaml");
    let config = EndpointConfig::load(&dir).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.provider.kind(), "kubernetes");
}

#[test]
fn impossible_values_are_refused_where_they_are_written() {
    let cases: [(&str, usize, &str, &str); 11] = [
        (
            "  nodes_per_block: 2\n",
            5,
            "provider.nodes_per_block",
            "a block is one pod; must be 1, not 2",
        ),
        (
            "  namespace: Science\n",
            5,
            "provider.namespace",
            "`Science` is not a namespace name",
        ),
        (
            "  init_cpu: 0\n",
            5,
            "provider.init_cpu",
            "at least 0.001, not 0",
        ),
        (
            "  init_cpu: 3\n",
            5,
            "provider.init_cpu",
            "max_cpu (2) is less than init_cpu (3)",
        ),
        (
            "  init_mem: 250MB\n",
            5,
            "provider.init_mem",
            "`250MB` is not a Kubernetes quantity",
        ),
        (
            "  max_mem: 100Mi\n",
            5,
            "provider.max_mem",
            "max_mem (100Mi) is less than init_mem (250Mi)",
        ),
        (
            "  service_account: ''\n",
            5,
            "provider.service_account",
            "must name a service account",
        ),
        (
            "  image_pull_secrets: [Reg Cred]\n",
            5,
            "provider.image_pull_secrets",
            "`Reg Cred` is not a Secret name",
        ),
        ("  walltime: 0s\n", 5, "provider.walltime", "at least 1s"),
        (
            "  max_blocks: 0\n",
            5,
            "provider.max_blocks",
            "must be at least 1",
        ),
        (
            "  script_template: x.hbs\n",
            5,
            "provider.script_template",
            "unknown key; valid keys here: type, namespace, image,",
        ),
    ];
    for (line, at, key, words) in cases {
        assert_error(&format!("{BASE}{line}"), at, key, words);
    }
    assert_error(
        "engine: {address: 10.0.0.5}\nprovider:\n  type: kubernetes\n",
        2,
        "provider.image",
        "must name the container image",
    );
    assert_error(
        "provider:\n  type: kubernetes\n  image: img\n",
        2,
        "provider.type",
        "127.0.0.1 is this machine's loopback address, which pods cannot reach",
    );
    assert_error(
        "engine:\n  address: localhost\nprovider: {type: kubernetes, image: img}\n",
        2,
        "engine.address",
        "pods cannot reach",
    );
}

#[test]
fn a_site_pod_template_is_found_next_to_the_config_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    let template = "apiVersion: v1\nkind: Pod\nspec:\n  containers:\n    - {name: m, image: {{json image}}, command: {{json container_command}}}\n";
    std::fs::write(dir.path().join("pod.yaml.hbs"), template).unwrap();
    let text = format!("{BASE}  pod_template: pod.yaml.hbs\n");
    std::fs::write(&config, &text).unwrap();
    let loaded = EndpointConfig::load(&config).unwrap();
    let ProviderConfig::Kubernetes(k) = &loaded.provider else {
        panic!()
    };
    assert_eq!(
        k.pod_template.as_deref(),
        Some(dir.path().join("pod.yaml.hbs").as_path())
    );
    assert_eq!(
        k.pod_template().unwrap().origin(),
        dir.path().join("pod.yaml.hbs").display().to_string()
    );

    std::fs::write(
        dir.path().join("pod.yaml.hbs"),
        "kind: Pod\napiVersion: v1\nspec:\n  restartPolicy: OnFailure\n  containers: [{}]\n",
    )
    .unwrap();
    let err = EndpointConfig::load(&config).unwrap_err().to_string();
    assert!(err.contains(":5: provider.pod_template: "), "{err}");
    assert!(err.contains("spec.restartPolicy must be Never"), "{err}");
}
