//! The kubernetes provider end to end against a *replay* of a real API server.
//!
//! No Kubernetes control plane can run where these tests run. Instead a small HTTP server
//! on 127.0.0.1 answers the provider's requests, in order, with answers recorded from real
//! API servers (`tests/fixtures/kubernetes/`, provenance in its README), and records what
//! the provider sent. The one change it makes: the recorded pod's name becomes the name of
//! the pod the provider created. Plain HTTP: the kubeconfig points at `http://127.0.0.1`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use scifaas_providers::kubernetes::POD_FILE;
use scifaas_providers::{
    BlockRequest, Credentials, JobId, JobState, KubernetesOptions, KubernetesProvider, PodTemplate,
    Provider, ProviderError,
};
use serde_json::Value;

use super::fixture;

/// One request the replay expects, and the recorded answer it gives.
struct Exchange {
    method: &'static str,
    /// The path and query the request must have; `{pod}` is the created pod's name.
    target: &'static str,
    status: u16,
    body: Vec<u8>,
    /// The recorded pod name that becomes the created pod's name in `body`.
    recorded_pod: Option<&'static str>,
}

fn answer(method: &'static str, target: &'static str, status: u16, file: &str) -> Exchange {
    Exchange {
        method,
        target,
        status,
        body: fixture(file),
        recorded_pod: None,
    }
}

/// A request as the replay received it.
#[derive(Debug, Clone)]
struct Received {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The replay server: serves its exchanges in order, one connection each, then stops (or
/// after 30 s, so that a test that fails early never leaves it waiting).
struct Replay {
    port: u16,
    received: Arc<Mutex<Vec<Received>>>,
    thread: Option<JoinHandle<Result<(), String>>>,
}

impl Replay {
    fn start(script: Vec<Exchange>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&received);
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut pod_name = String::new();
            for exchange in script {
                let stream = loop {
                    match listener.accept() {
                        Ok((stream, _)) => break stream,
                        Err(_) if Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(5))
                        }
                        Err(e) => return Err(format!("no request came: {e}")),
                    }
                };
                let request = serve(stream, &exchange, &mut pod_name)?;
                log.lock().unwrap().push(request);
            }
            Ok(())
        });
        Self {
            port,
            received,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits for the server to have answered its whole script.
    fn finish(mut self) -> Vec<Received> {
        let result = self.thread.take().unwrap().join().unwrap();
        result.unwrap();
        self.received()
    }
}

fn serve(
    stream: TcpStream,
    exchange: &Exchange,
    pod_name: &mut String,
) -> Result<Received, String> {
    stream.set_nonblocking(false).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
    let mut line = String::new();
    reader.read_line(&mut line).map_err(|e| e.to_string())?;
    let mut words = line.split_whitespace();
    let method = words.next().unwrap_or_default().to_owned();
    let target = words.next().unwrap_or_default().to_owned();
    let mut headers = Vec::new();
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).map_err(|e| e.to_string())?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
    }
    let length: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map_or(0, |(_, v)| v.parse().unwrap_or(0));
    let mut body = vec![0; length];
    reader.read_exact(&mut body).map_err(|e| e.to_string())?;
    if method == "POST" {
        let pod: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        pod["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .clone_into(pod_name);
    }
    let want = exchange.target.replace("{pod}", pod_name);
    let (status, mut answer) = if method == exchange.method && target == want {
        (exchange.status, exchange.body.clone())
    } else {
        let text = format!(
            "replay expected {} {want}, got {method} {target}",
            exchange.method
        );
        (500, text.into_bytes())
    };
    if let Some(recorded) = exchange.recorded_pod {
        let text = String::from_utf8(answer).map_err(|e| e.to_string())?;
        answer = text
            .replace(&format!("\"{recorded}\""), &format!("\"{pod_name}\""))
            .into_bytes();
    }
    let mut stream = stream;
    let head = format!(
        "HTTP/1.1 {status} Replayed\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        answer.len()
    );
    stream
        .write_all(head.as_bytes())
        .map_err(|e| e.to_string())?;
    stream.write_all(&answer).map_err(|e| e.to_string())?;
    Ok(Received {
        method,
        target,
        headers,
        body,
    })
}

/// A kubeconfig for the replay, with a bearer token and the context's namespace.
fn kubeconfig(dir: &Path, server: &str) -> PathBuf {
    let path = dir.join("kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: replay\nclusters:\n- name: replay\n  cluster:\n    server: {server}\nusers:\n- name: agent\n  user:\n    token: replay-token\ncontexts:\n- name: replay\n  context: {{cluster: replay, user: agent, namespace: science}}\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn provider(replay: &Replay, dir: &Path) -> KubernetesProvider {
    let credentials = Credentials::from_kubeconfig(&[kubeconfig(dir, &replay.url())]).unwrap();
    let options = KubernetesOptions {
        image: "ghcr.io/lab/scifaas:1.0".to_owned(),
        request_timeout: Duration::from_secs(10),
        ..KubernetesOptions::default()
    };
    KubernetesProvider::new("lab", options, PodTemplate::builtin(), credentials)
}

fn block(dir: &Path, id: &str) -> BlockRequest {
    BlockRequest {
        block_id: id.to_owned(),
        dir: dir.join("blocks").join(id),
        endpoint_name: "lab".to_owned(),
        nodes: 1,
        walltime: None,
        worker_init: String::new(),
        manager_command: ["/opt/bin/scifaas", "manager", "--block-id", id]
            .map(str::to_owned)
            .to_vec(),
        env: vec![("SCIFAAS_ENDPOINT_SECRET".to_owned(), "s3cr3t".to_owned())],
    }
}

const PODS: &str = "/api/v1/namespaces/science/pods";
const LIST: &str = "/api/v1/namespaces/science/pods?labelSelector=scifaas-endpoint%3Dlab";
const DEPLOYMENT_PODS: &str = "k8s-1.34_DELETE-pods-labelSelector_podlist_deployment-pods.json";

#[test]
fn submit_status_and_cancel_replay_a_pod_s_life() {
    let dir = tempfile::tempdir().unwrap();
    // A create answers the new pod: the recorded deployment pod that had not started yet.
    let deployment: Value = serde_json::from_slice(&fixture(DEPLOYMENT_PODS)).unwrap();
    let created = serde_json::to_vec(&deployment["items"][1]).unwrap();
    let replay = Replay::start(vec![
        Exchange {
            method: "POST",
            target: PODS,
            status: 201,
            body: created,
            recorded_pod: Some("k8s-openapi-tests-patch-deployment-857999c558-kcptc"),
        },
        Exchange {
            recorded_pod: Some("k8s-openapi-tests-patch-deployment-65b86c7dbc-t48t6"),
            ..answer("GET", LIST, 200, DEPLOYMENT_PODS)
        },
        answer(
            "GET",
            LIST,
            200,
            "k8s-1.34_GET-pods-kube-system_podlist_running.json",
        ),
        Exchange {
            recorded_pod: Some("k8s-openapi-tests-create-job-98gs2"),
            ..answer(
                "GET",
                LIST,
                200,
                "k8s-1.34_GET-pods_podlist_failed-job-pod_exit5.json",
            )
        },
        answer(
            "DELETE",
            "/api/v1/namespaces/science/pods/{pod}",
            200,
            "k8s-1.34_DELETE-deployment_status-success.json",
        ),
        answer(
            "DELETE",
            "/api/v1/namespaces/science/pods/gone-pod",
            404,
            "k8s-docs_GET-pod_404_status-notfound.json",
        ),
        answer(
            "GET",
            LIST,
            200,
            "k8s-1.34_GET-pods-kube-system_podlist_running.json",
        ),
        answer(
            "GET",
            LIST,
            200,
            "k8s-1.34_GET-pods-kube-system_podlist_running.json",
        ),
    ]);
    let provider = provider(&replay, dir.path());
    assert_eq!(provider.namespace(), "science");
    let block = block(dir.path(), "block-0");

    let id = provider.submit(&block).unwrap();
    assert!(id.0.starts_with("scifaas-lab-block-0-"), "{id}");
    let never_made = JobId::from("scifaas-lab-block-9-00000000");

    let answer = provider.status(&[id.clone(), never_made.clone()]).unwrap();
    assert_eq!(answer[&id].state, JobState::Pending);
    assert_eq!(answer[&never_made].state, JobState::Unknown);
    // The pod is not in this list (say, still on its way to the cache the server lists).
    assert_eq!(
        provider.status(std::slice::from_ref(&id)).unwrap()[&id].state,
        JobState::Unknown
    );
    let failed = provider
        .status(std::slice::from_ref(&id))
        .unwrap()
        .remove(&id)
        .unwrap();
    assert_eq!(
        (failed.state, failed.exit_code),
        (JobState::Failed, Some(5))
    );

    provider
        .cancel(&[id.clone(), JobId::from("gone-pod")])
        .unwrap();
    let cancelled = provider
        .status(std::slice::from_ref(&id))
        .unwrap()
        .remove(&id)
        .unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled, "{cancelled:?}");
    // Reported once, then forgotten: the agent has dropped the block by now.
    assert_eq!(
        provider.status(std::slice::from_ref(&id)).unwrap()[&id].state,
        JobState::Unknown
    );
    assert!(
        provider.status(&[]).unwrap().is_empty(),
        "no request for no jobs"
    );

    let received = replay.finish();
    let calls: Vec<String> = received
        .iter()
        .map(|r| format!("{} {}", r.method, r.target))
        .collect();
    let list = format!("GET {LIST}");
    // One list per status call, whatever the number of jobs asked about.
    let want = [
        format!("POST {PODS}"),
        list.clone(),
        list.clone(),
        list.clone(),
        format!("DELETE {PODS}/{id}"),
        format!("DELETE {PODS}/gone-pod"),
        list.clone(),
        list,
    ];
    assert_eq!(calls, want);
    for request in &received {
        assert_eq!(
            request.header("authorization"),
            Some("Bearer replay-token"),
            "{request:?}"
        );
        assert_eq!(request.header("accept"), Some("application/json"));
    }
    let post = &received[0];
    assert_eq!(post.header("content-type"), Some("application/json"));
    let sent: Value = serde_json::from_slice(&post.body).unwrap();
    assert_eq!(sent["metadata"]["name"], id.0.as_str());
    assert_eq!(sent["metadata"]["labels"]["scifaas-endpoint"], "lab");
    assert_eq!(sent["metadata"]["labels"]["scifaas-block"], "block-0");
    assert_eq!(sent["spec"]["restartPolicy"], "Never");
    assert_eq!(sent["spec"]["containers"][0]["env"][0]["value"], "s3cr3t");
    // What was sent is in the block's directory, for the owner's eyes only.
    let written = block.dir.join(POD_FILE);
    let on_disk: Value = serde_json::from_slice(&std::fs::read(&written).unwrap()).unwrap();
    assert_eq!(on_disk, sent);
    let mode = std::fs::metadata(&written).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn api_refusals_reach_the_caller_with_the_server_s_message() {
    let dir = tempfile::tempdir().unwrap();
    let replay = Replay::start(vec![
        answer(
            "POST",
            PODS,
            403,
            "k8s-issue_POST-pod_403_status-forbidden-admission.json",
        ),
        answer(
            "POST",
            PODS,
            409,
            "k8s-issue_POST-configmap_409_status-alreadyexists.json",
        ),
        answer(
            "POST",
            PODS,
            422,
            "k8s-1.34_POST-customresource_422_status-invalid.json",
        ),
        answer(
            "GET",
            LIST,
            403,
            "k8s-issue_LIST-pods_403_status-forbidden-rbac.json",
        ),
        answer(
            "DELETE",
            "/api/v1/namespaces/science/pods/p1",
            403,
            "k8s-issue_LIST-pods_403_status-forbidden-rbac.json",
        ),
        answer(
            "DELETE",
            "/api/v1/namespaces/science/pods/p2",
            200,
            "k8s-1.34_DELETE-deployment_status-success.json",
        ),
    ]);
    let provider = provider(&replay, dir.path());
    let url = replay.url();
    let expect =
        |err: ProviderError, method: &str, path: &str, code: u16, reason: &str, words: &str| {
            let text = err.to_string();
            assert!(
                text.starts_with(&format!("{method} {url}{path}: {code} {reason}: ")),
                "{text}"
            );
            assert!(text.contains(words), "{text}");
        };
    let err = provider.submit(&block(dir.path(), "block-0")).unwrap_err();
    expect(
        err,
        "POST",
        PODS,
        403,
        "Forbidden",
        "RunAsUser is forbidden",
    );
    let err = provider.submit(&block(dir.path(), "block-1")).unwrap_err();
    expect(err, "POST", PODS, 409, "AlreadyExists", "already exists");
    let err = provider.submit(&block(dir.path(), "block-2")).unwrap_err();
    expect(
        err,
        "POST",
        PODS,
        422,
        "Invalid",
        "spec.prop2: Required value",
    );
    let err = provider.status(&[JobId::from("p1")]).unwrap_err();
    expect(
        err,
        "GET",
        LIST,
        403,
        "Forbidden",
        "cannot list resource \"pods\"",
    );
    // One refusal does not stop the other deletions; the first error is answered.
    let err = provider
        .cancel(&[JobId::from("p1"), JobId::from("p2")])
        .unwrap_err();
    expect(
        err,
        "DELETE",
        "/api/v1/namespaces/science/pods/p1",
        403,
        "Forbidden",
        "forbidden",
    );
    assert_eq!(replay.finish().len(), 6);
}

#[test]
fn a_server_that_does_not_answer_is_an_error_naming_the_request() {
    let dir = tempfile::tempdir().unwrap();
    // A port nobody listens on: bound, then closed.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = format!("http://127.0.0.1:{port}");
    let credentials = Credentials::from_kubeconfig(&[kubeconfig(dir.path(), &server)]).unwrap();
    let options = KubernetesOptions {
        image: "img".to_owned(),
        request_timeout: Duration::from_secs(5),
        ..KubernetesOptions::default()
    };
    let provider = KubernetesProvider::new("lab", options, PodTemplate::builtin(), credentials);
    let err = provider.status(&[JobId::from("p")]).unwrap_err();
    let ProviderError::Api { request, code, .. } = &err else {
        panic!("{err}");
    };
    assert_eq!(request, &format!("GET {server}{LIST}"));
    assert_eq!(*code, None);
    assert!(err.to_string().to_lowercase().contains("connect"), "{err}");
    let err = provider
        .submit(&BlockRequest {
            nodes: 2,
            ..block(dir.path(), "b")
        })
        .unwrap_err();
    assert!(
        err.to_string().contains("nodes_per_block must be 1, not 2"),
        "{err}"
    );
}

#[test]
fn the_provider_works_when_called_from_an_async_runtime_thread() {
    // The agent calls providers from its tokio runtime's threads, where reqwest's blocking
    // client would panic if the provider used it on the caller's thread.
    let dir = tempfile::tempdir().unwrap();
    let replay = Replay::start(vec![answer(
        "GET",
        LIST,
        200,
        "k8s-1.34_GET-pods-kube-system_podlist_running.json",
    )]);
    let provider = provider(&replay, dir.path());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let id = JobId::from("coredns-66bc5c9577-2g8hl");
    let answer = runtime.block_on(async { provider.status(std::slice::from_ref(&id)) });
    assert_eq!(answer.unwrap()[&id].state, JobState::Running);
    // Dropped inside the runtime too, as the agent drops it.
    runtime.block_on(async move { drop(provider) });
    replay.finish();
}
