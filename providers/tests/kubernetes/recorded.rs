//! The kubernetes provider against recorded answers of real API servers.
//!
//! No Kubernetes control plane can run where these tests run, so every recorded answer in
//! `tests/fixtures/kubernetes/` (provenance in its README) is mapped here to the
//! `JobState` or `ProviderError` the provider gives for it, and the rendered pod manifest
//! is compared with the recorded pod and job objects.

use std::collections::HashSet;
use std::time::Duration;

use scifaas_providers::kubernetes::{
    api_error, pod_job_status, pods_of_list, statuses, KubernetesOptions, Pod, PodTemplate, PodVars,
};
use scifaas_providers::{BlockRequest, JobId, JobState, ProviderError};
use serde_json::{json, Value};

use super::fixture;

fn json_fixture(name: &str) -> Value {
    serde_json::from_slice(&fixture(name)).unwrap()
}

fn yaml_pod(name: &str) -> Pod {
    serde_yaml_ng::from_slice(&fixture(name)).unwrap()
}

fn listed(name: &str) -> Vec<Pod> {
    pods_of_list(json_fixture(name)).unwrap()
}

#[test]
fn a_failed_pod_is_failed_with_its_exit_code_and_reason() {
    for file in [
        "k8s-1.34_GET-pods_podlist_failed-job-pod_exit5.json",
        "k8s-1.34_DELETE-pods-labelSelector_podlist_job-pod.json",
    ] {
        let pods = listed(file);
        assert_eq!(pods.len(), 1, "{file}");
        let status = pod_job_status(&pods[0]);
        assert_eq!(status.state, JobState::Failed, "{file}");
        assert_eq!(status.exit_code, Some(5), "{file}");
        assert_eq!(
            status.message.as_deref(),
            Some("container k8s-openapi-tests-create-job: Error: exit code 5"),
            "{file}"
        );
    }
}

#[test]
fn a_pod_creating_its_container_or_not_started_is_pending() {
    let pods = listed("k8s-1.34_DELETE-pods-labelSelector_podlist_deployment-pods.json");
    let states: Vec<_> = pods.iter().map(pod_job_status).collect();
    assert_eq!(states[0].state, JobState::Pending);
    assert_eq!(
        states[0].message.as_deref(),
        Some("container k8s-openapi-tests-patch-deployment: ContainerCreating")
    );
    // Scheduled, no container status yet.
    assert_eq!(states[1].state, JobState::Pending);
    assert_eq!(states[1].message, None);
}

#[test]
fn running_pods_are_running() {
    let pods = listed("k8s-1.34_GET-pods-kube-system_podlist_running.json");
    assert_eq!(pods.len(), 8);
    for pod in &pods {
        let status = pod_job_status(pod);
        assert_eq!(
            (status.state, status.message),
            (JobState::Running, None),
            "{}",
            pod.metadata.name
        );
    }
    let events =
        String::from_utf8(fixture("k8s-1.34_GET-pods-watch_kube-system_events.jsonl")).unwrap();
    let mut seen = 0;
    for line in events.lines().filter(|l| !l.trim().is_empty()) {
        let event: Value = serde_json::from_str(line).unwrap();
        assert_eq!(event["type"], "ADDED");
        let pod: Pod = serde_json::from_value(event["object"].clone()).unwrap();
        assert_eq!(
            pod_job_status(&pod).state,
            JobState::Running,
            "{}",
            pod.metadata.name
        );
        seen += 1;
    }
    assert_eq!(seen, 5);
}

#[test]
fn kubectl_style_pods_map_to_every_documented_state() {
    let pull = pod_job_status(&yaml_pod("ishealthy-fixture_pod_pod-imagepullbackoff.yaml"));
    assert_eq!(pull.state, JobState::Held, "{pull:?}");
    let message = pull.message.unwrap();
    assert!(
        message.starts_with(
            "container errimagepullbackoff: ImagePullBackOff: Back-off pulling image \
             \"gcr.io/heptio-images/ks-guestbook-demo:0.3\""
        ),
        "{message}"
    );
    assert!(message.contains("image_pull_secrets"), "{message}");

    let done = pod_job_status(&yaml_pod("ishealthy-fixture_pod_pod-succeeded.yaml"));
    assert_eq!((done.state, done.exit_code), (JobState::Completed, Some(0)));

    let failed = pod_job_status(&yaml_pod("ishealthy-fixture_pod_failed.yaml"));
    assert_eq!(
        (failed.state, failed.exit_code),
        (JobState::Failed, Some(1))
    );
    assert_eq!(
        failed.message.as_deref(),
        Some("container main: Error: exit code 1")
    );

    let evicted = pod_job_status(&yaml_pod("ishealthy-fixture_pod_evicted.yaml"));
    assert_eq!((evicted.state, evicted.exit_code), (JobState::Failed, None));
    assert_eq!(
        evicted.message.as_deref(),
        Some("Evicted: The node was low on resource: memory. Threshold quantity: 750Mi, available: 179968Ki.")
    );

    // Recorded with restartPolicy Always: running again after OOM kills. Ours use Never,
    // but a site template's sidecar could restart; the last kill is shown.
    let oom = pod_job_status(&yaml_pod("ishealthy-fixture_pod_oomkilled-unhealthy.yaml"));
    assert_eq!(oom.state, JobState::Running);
    assert_eq!(
        oom.message.as_deref(),
        Some("container oomkilled restarted 9 times; last ended: OOMKilled: exit code 1: system has run out of memory")
    );
}

/// States no recording shows, made from a recorded pod by changing what the kubelet
/// changes in those cases (each change named).
#[test]
fn variants_of_recorded_pods_cover_timeout_oom_unschedulable_and_deletion() {
    let recorded =
        || json_fixture("k8s-1.34_GET-pods_podlist_failed-job-pod_exit5.json")["items"][0].clone();
    let status_of = |pod: Value| pod_job_status(&serde_json::from_value(pod).unwrap());

    // activeDeadlineSeconds (our walltime) passed: the pod fails with this reason.
    let mut pod = recorded();
    pod["status"]["reason"] = json!("DeadlineExceeded");
    pod["status"]["message"] =
        json!("Pod was active on the node longer than the specified deadline");
    let timeout = status_of(pod);
    assert_eq!(timeout.state, JobState::Timeout, "{timeout:?}");

    let mut pod = recorded();
    pod["status"]["containerStatuses"][0]["state"]["terminated"]["reason"] = json!("OOMKilled");
    pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] = json!(137);
    let oom = status_of(pod);
    assert_eq!((oom.state, oom.exit_code), (JobState::Failed, Some(137)));
    assert!(
        oom.message.as_deref().unwrap().contains(
            "OOMKilled: exit code 137 (the manager used more memory than max_mem allows)"
        ),
        "{oom:?}"
    );

    let mut pod = json_fixture("k8s-1.34_DELETE-pods-labelSelector_podlist_deployment-pods.json")
        ["items"][1]
        .clone();
    pod["status"]["conditions"][0] = json!({"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": "0/1 nodes are available: 1 Insufficient cpu."});
    let queued = status_of(pod);
    assert_eq!(queued.state, JobState::Pending);
    assert_eq!(
        queued.message.as_deref(),
        Some("Unschedulable: 0/1 nodes are available: 1 Insufficient cpu.")
    );

    let mut pod = listed("k8s-1.34_GET-pods-kube-system_podlist_running.json")[0].clone();
    pod.metadata.deletion_timestamp = Some("2026-06-15T04:20:00Z".to_owned());
    assert_eq!(pod_job_status(&pod).state, JobState::Cancelled);

    let mut pod = recorded();
    pod["status"]["phase"] = json!("Unknown");
    assert_eq!(status_of(pod).state, JobState::Unknown);
}

#[test]
fn a_pod_missing_from_the_list_is_unknown_unless_we_deleted_it() {
    let pods = listed("k8s-1.34_GET-pods-kube-system_podlist_running.json");
    let listed_id = JobId::from(pods[0].metadata.name.as_str());
    let gone = JobId::from("scifaas-ep-block-0-0badf00d");
    let deleted = JobId::from("scifaas-ep-block-1-0badf00d");
    let cancelled: HashSet<JobId> = [deleted.clone()].into();
    let answer = statuses(
        &pods,
        &[listed_id.clone(), gone.clone(), deleted.clone()],
        &cancelled,
        "ns",
    );
    assert_eq!(answer.len(), 3);
    assert_eq!(answer[&listed_id].state, JobState::Running);
    assert_eq!(answer[&gone].state, JobState::Unknown);
    assert!(answer[&gone]
        .message
        .as_deref()
        .unwrap()
        .contains("no pod scifaas-ep-block-0-0badf00d in namespace ns"));
    assert_eq!(answer[&deleted].state, JobState::Cancelled);
}

#[test]
fn api_refusals_carry_the_status_message_and_reason() {
    let cases = [
        ("k8s-issue_POST-pod_403_status-forbidden-admission.json", 403, "Forbidden",
         "pods \"jupyter-brent\" is forbidden: pod.Spec.SecurityContext.RunAsUser is forbidden"),
        ("k8s-issue_LIST-pods_403_status-forbidden-rbac.json", 403, "Forbidden",
         "pods is forbidden: User \"system:serviceaccount:bluezero:default\" cannot list resource \"pods\" in API group \"\" in the namespace \"bluezero\""),
        ("k8s-docs_GET-pod_404_status-notfound.json", 404, "NotFound", "pods \"grafana\" not found"),
        ("k8s-issue_POST-configmap_409_status-alreadyexists.json", 409, "AlreadyExists",
         "configmaps \"nifi-apache-configmap-opnfv06\" already exists"),
        ("k8s-1.34_POST-customresource_422_status-invalid.json", 422, "Invalid",
         "FooBar.k8s-openapi-tests-custom-resource-definition.com \"fb3\" is invalid: spec.prop2: Required value"),
    ];
    for (file, http, want_reason, want_message) in cases {
        let err = api_error(
            "POST https://k8s:6443/api/v1/namespaces/ns/pods",
            http,
            &fixture(file),
        );
        let shown = err.to_string();
        let ProviderError::Api {
            code,
            reason,
            message,
            ..
        } = err
        else {
            panic!("{file}: {shown}");
        };
        assert_eq!(code, Some(http), "{file}");
        assert_eq!(reason.as_deref(), Some(want_reason), "{file}");
        assert_eq!(message, want_message, "{file}");
        assert_eq!(
            shown,
            format!("POST https://k8s:6443/api/v1/namespaces/ns/pods: {http} {want_reason}: {want_message}")
        );
    }
    // Not a Status (a proxy's page): its text, shortened.
    let err = api_error("GET u", 502, b"<html>Bad Gateway</html>");
    assert_eq!(err.to_string(), "GET u: HTTP 502: <html>Bad Gateway</html>");
}

#[test]
fn answers_that_are_not_pod_lists_are_refused() {
    let err = pods_of_list(json_fixture("k8s-1.34_POST-job_201_created.json")).unwrap_err();
    assert_eq!(err, "expected a PodList, got a Job");
    let err = pods_of_list(json_fixture(
        "k8s-1.34_DELETE-deployment_status-success.json",
    ))
    .unwrap_err();
    assert_eq!(err, "expected a PodList, got a Status");
}

fn example_block() -> BlockRequest {
    BlockRequest {
        block_id: "block-3".to_owned(),
        dir: "/tmp/b".into(),
        endpoint_name: "Lab K8s".to_owned(),
        nodes: 1,
        walltime: Some(Duration::from_millis(3_600_500)),
        worker_init: "export A='x: y' # \"quoted\"\npip install numpy".to_owned(),
        manager_command: [
            "/home/u/.cargo/bin/scifaas",
            "manager",
            "--interchange",
            "tcp://10.0.0.5:55000",
            "--block-id",
            "block-3",
        ]
        .map(str::to_owned)
        .to_vec(),
        env: vec![(
            "SCIFAAS_ENDPOINT_SECRET".to_owned(),
            "s3cr3t\"'\n".to_owned(),
        )],
    }
}

fn example_options() -> KubernetesOptions {
    KubernetesOptions {
        image: "ghcr.io/lab/scifaas:1.0".to_owned(),
        init_cpu: "500m".to_owned(),
        max_cpu: "2".to_owned(),
        init_mem: "1Gi".to_owned(),
        max_mem: "2Gi".to_owned(),
        service_account: Some("scifaas-pilot".to_owned()),
        image_pull_secrets: vec!["regcred".to_owned()],
        ..KubernetesOptions::default()
    }
}

#[test]
fn the_builtin_manifest_has_labels_restart_policy_resources_secret_and_account() {
    let vars = PodVars::for_block(
        &example_block(),
        &example_options(),
        "science",
        "scifaas-lab-k8s-block-3-00c0ffee",
    );
    let pod = PodTemplate::builtin().render(&vars).unwrap();
    assert_eq!(pod["apiVersion"], "v1");
    assert_eq!(pod["kind"], "Pod");
    assert_eq!(pod["metadata"]["name"], "scifaas-lab-k8s-block-3-00c0ffee");
    assert_eq!(pod["metadata"]["namespace"], "science");
    assert_eq!(pod["metadata"]["labels"]["scifaas-endpoint"], "Lab_K8s");
    assert_eq!(pod["metadata"]["labels"]["scifaas-block"], "block-3");
    let spec = &pod["spec"];
    assert_eq!(spec["restartPolicy"], "Never");
    assert_eq!(spec["serviceAccountName"], "scifaas-pilot");
    assert_eq!(spec["imagePullSecrets"], json!([{"name": "regcred"}]));
    assert_eq!(spec["activeDeadlineSeconds"], 3601);
    let containers = spec["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert_eq!(c["image"], "ghcr.io/lab/scifaas:1.0");
    assert_eq!(
        c["env"],
        json!([{"name": "SCIFAAS_ENDPOINT_SECRET", "value": "s3cr3t\"'\n"}])
    );
    assert_eq!(
        c["resources"],
        json!({"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "2Gi"}})
    );
    // worker_init survives YAML whatever it holds; the manager is the image's scifaas.
    assert_eq!(
        c["command"],
        json!(["/bin/sh", "-c", "export A='x: y' # \"quoted\"\npip install numpy\nexec scifaas manager --interchange tcp://10.0.0.5:55000 --block-id block-3"])
    );
}

/// Every field both have is of the same JSON shape, recursively; answers the paths we
/// set that the recording lacks.
fn compare_shapes(ours: &Value, recorded: &Value, path: &str, missing: &mut Vec<String>) {
    match (ours, recorded) {
        // Label keys are the user's: only their values have a shape.
        (Value::Object(a), Value::Object(_)) if path.ends_with(".labels") => {
            assert!(a.values().all(Value::is_string), "{path}: {ours}");
        }
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                match b.get(key) {
                    Some(other) => compare_shapes(value, other, &format!("{path}.{key}"), missing),
                    None => missing.push(format!("{path}.{key}")),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            if let (Some(x), Some(y)) = (a.first(), b.first()) {
                compare_shapes(x, y, &format!("{path}[]"), missing);
            }
        }
        (a, b) => assert_eq!(
            std::mem::discriminant(a),
            std::mem::discriminant(b),
            "{path}: ours {a}, recorded {b}"
        ),
    }
}

#[test]
fn the_manifest_has_the_shape_of_recorded_pods_and_job_pod_templates() {
    let vars = PodVars::for_block(
        &example_block(),
        &example_options(),
        "science",
        "scifaas-x-00000000",
    );
    let pod = PodTemplate::builtin().render(&vars).unwrap();
    // The pod a real kube-apiserver returned, created from a Job like ours: restartPolicy
    // Never, a command, an env list.
    let recorded_pod =
        &json_fixture("k8s-1.34_GET-pods_podlist_failed-job-pod_exit5.json")["items"][0];
    let mut missing = Vec::new();
    compare_shapes(&pod, recorded_pod, "pod", &mut missing);
    missing.sort();
    // What we set that this recording happens not to use: a list's items leave kind and
    // apiVersion to the list (the watch recording's objects have them, checked below); it
    // has no limits, pull secrets or deadline (the OOM recording shows resources).
    assert_eq!(
        missing,
        [
            "pod.apiVersion",
            "pod.kind",
            "pod.spec.activeDeadlineSeconds",
            "pod.spec.containers[].resources.limits",
            "pod.spec.containers[].resources.requests",
            "pod.spec.imagePullSecrets",
        ]
    );
    let events = fixture("k8s-1.34_GET-pods-watch_kube-system_events.jsonl");
    let first_line = events.split(|b| *b == b'\n').next().unwrap();
    let watched: Value = serde_json::from_slice(first_line).unwrap();
    assert_eq!(watched["object"]["kind"], pod["kind"]);
    assert_eq!(watched["object"]["apiVersion"], pod["apiVersion"]);
    let job = json_fixture("k8s-1.34_POST-job_201_created.json");
    let template = &job["spec"]["template"];
    assert_eq!(
        template["spec"]["restartPolicy"],
        pod["spec"]["restartPolicy"]
    );
    let mut missing = Vec::new();
    compare_shapes(
        &pod["spec"]["containers"][0],
        &template["spec"]["containers"][0],
        "container",
        &mut missing,
    );
    assert_eq!(
        missing,
        ["container.resources.limits", "container.resources.requests"]
    );
    // The OOM-killed recording has requests and limits: same shape as ours.
    let oom: Value =
        serde_yaml_ng::from_slice(&fixture("ishealthy-fixture_pod_oomkilled-unhealthy.yaml"))
            .unwrap();
    let mut missing = Vec::new();
    compare_shapes(
        &pod["spec"]["containers"][0]["resources"],
        &oom["spec"]["containers"][0]["resources"],
        "resources",
        &mut missing,
    );
    assert_eq!(missing, ["resources.limits.cpu", "resources.requests.cpu"]);
}

#[test]
fn a_site_template_cannot_lose_the_pod_s_labels_or_restart_it() {
    let vars = PodVars::example();
    let bare = "apiVersion: v1\nkind: Pod\nmetadata: {name: mine}\nspec:\n  containers:\n    - {name: m, image: {{json image}}}\n";
    let pod = PodTemplate::compile("site.yaml.hbs", bare)
        .unwrap()
        .render(&vars)
        .unwrap();
    assert_eq!(pod["metadata"]["name"], vars.pod_name);
    assert_eq!(pod["metadata"]["labels"]["scifaas-endpoint"], "example");
    assert_eq!(pod["metadata"]["labels"]["scifaas-block"], "block-0");
    assert_eq!(pod["spec"]["restartPolicy"], "Never");

    let always = bare.replace("spec:\n", "spec:\n  restartPolicy: Always\n");
    let err = PodTemplate::compile("site.yaml.hbs", &always)
        .unwrap()
        .validate()
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("job script template site.yaml.hbs: spec.restartPolicy must be Never"),
        "{err}"
    );

    for (source, words) in [
        (
            "kind: Job\napiVersion: v1\n",
            "kind must be Pod, not \"Job\"",
        ),
        (
            "apiVersion: v1\nkind: Pod\nspec: {containers: []}\n",
            "at least one container",
        ),
        (
            "apiVersion: v1\nkind: Pod\nspec: {containers: [{image: {{imagee}}}]}\n",
            "imagee",
        ),
        ("apiVersion: v1\nkind: Pod\nspec: [\n", "not valid YAML"),
    ] {
        let err = PodTemplate::compile("t", source)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains(words), "{source}: {err}");
        assert!(!err.contains("secret"), "{err}");
    }
}
