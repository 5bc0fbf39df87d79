//! Test harness: the real `scifaas` binary as a service and as endpoint agents, in a
//! temporary SCIFAAS_HOME, on loopback. Every process is stopped by its pid.

#![allow(dead_code)]

use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_scifaas");

/// A child process that is stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGTERM, then SIGKILL after `grace`; reaps the process.
    pub fn stop(&mut self, grace: Duration) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        signal(self.pid(), libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill9();
    }

    pub fn kill9(&mut self) {
        signal(self.pid(), libc::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(20));
    }
}

pub fn signal(pid: i32, sig: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::try_from(sig).expect("a valid signal"),
    );
}

pub struct Stack {
    pub home: tempfile::TempDir,
    pub url: String,
    pub port: u16,
    pub admin_token: String,
    pub service: Option<Proc>,
    pub http: reqwest::blocking::Client,
}

impl Stack {
    /// Starts a service on a free port.
    pub fn start() -> Stack {
        let home = tempfile::Builder::new()
            .prefix("scifaas-test-")
            .tempdir()
            .unwrap();
        let (service, url) = start_service(home.path(), "127.0.0.1:0");
        let port = url.rsplit(':').next().unwrap().parse().unwrap();
        let admin_token = std::fs::read_to_string(home.path().join("service/admin-token"))
            .unwrap()
            .trim()
            .to_owned();
        Stack {
            home,
            url,
            port,
            admin_token,
            service: Some(service),
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .unwrap(),
        }
    }

    /// Stops the service (SIGKILL when `crash`) and starts it again on the same port
    /// and data directory.
    pub fn restart_service(&mut self, crash: bool) {
        let mut old = self.service.take().unwrap();
        if crash {
            old.kill9();
        } else {
            old.stop(Duration::from_secs(20));
        }
        drop(old);
        let (service, url) = start_service(self.home.path(), &format!("127.0.0.1:{}", self.port));
        assert_eq!(url, self.url);
        self.service = Some(service);
    }

    pub fn command(&self) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.env("SCIFAAS_HOME", self.home.path())
            .env("SCIFAAS_URL", &self.url)
            .env("SCIFAAS_TOKEN", &self.admin_token)
            .env_remove("RUST_LOG");
        cmd
    }

    pub fn endpoint_dir(&self, name: &str) -> PathBuf {
        self.home.path().join("endpoints").join(name)
    }

    /// Writes an endpoint config: a local provider with `workers` workers and short
    /// heartbeats, plus `extra_engine` lines under `engine:`.
    pub fn write_endpoint_config(&self, name: &str, workers: u32, extra_engine: &str) {
        let dir = self.endpoint_dir(name);
        std::fs::create_dir_all(&dir).unwrap();
        let text = format!(
            "service_url: {}\nengine:\n  max_workers_per_node: {workers}\n  heartbeat_period: 1s\n  heartbeat_threshold: 4s\n{extra_engine}provider:\n  type: local\n  init_blocks: 1\n  min_blocks: 1\n  max_blocks: 1\nstrategy:\n  period: 1s\n",
            self.url
        );
        std::fs::write(dir.join("config.yaml"), text).unwrap();
    }

    /// Starts `scifaas endpoint start NAME` in the foreground, as a child.
    pub fn start_endpoint(&self, name: &str) -> Proc {
        let log =
            std::fs::File::create(self.home.path().join(format!("{name}-agent.log"))).unwrap();
        let child = self
            .command()
            .args(["endpoint", "start", name])
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Proc {
            child,
            name: format!("agent {name}"),
        }
    }

    /// Waits until the endpoint is connected with at least one manager.
    pub fn wait_endpoint_ready(&self, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(view) = self.get(&format!("/v1/endpoints/{name}")) {
                let managers = view["managers"]
                    .as_array()
                    .map(|m| !m.is_empty())
                    .unwrap_or(false);
                if view["connected"] == json!(true) && managers {
                    return;
                }
            }
            if Instant::now() > deadline {
                let log =
                    std::fs::read_to_string(self.home.path().join(format!("{name}-agent.log")))
                        .unwrap_or_default();
                panic!("endpoint {name} not ready within 60 s; agent log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
        token: &str,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(token);
        if let Some(body) = body {
            req = req.header("content-type", "application/json").body(body);
        }
        let resp = req.send().expect("the service answers");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().unwrap();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, value, headers)
    }

    pub fn get(&self, path: &str) -> Result<Value, (u16, Value)> {
        let (status, value, _) = self.request(reqwest::Method::GET, path, None, &self.admin_token);
        if status < 300 {
            Ok(value)
        } else {
            Err((status, value))
        }
    }

    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let (status, value, _) = self.request(
            reqwest::Method::POST,
            path,
            Some(serde_json::to_vec(body).unwrap()),
            &self.admin_token,
        );
        (status, value)
    }

    pub fn register(&self, name: &str, source: &str) -> String {
        let (status, answer) = self.post("/v1/functions", &json!({"name": name, "source": source}));
        assert_eq!(status, 201, "{answer}");
        answer["function_id"].as_str().unwrap().to_owned()
    }

    /// The HTTP trigger: (status, body, task id).
    pub fn invoke(
        &self,
        endpoint: &str,
        function_id: &str,
        document: &str,
    ) -> (u16, Value, String) {
        let (status, value, headers) = self.request(
            reqwest::Method::POST,
            &format!("/v1/endpoints/{endpoint}/functions/{function_id}/invoke?timeout=60"),
            Some(document.as_bytes().to_vec()),
            &self.admin_token,
        );
        let task_id = headers
            .get("x-scifaas-task-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        (status, value, task_id)
    }

    /// Submits a batch; answers the task ids.
    pub fn submit(&self, endpoint: &str, function_id: &str, args: &[Value]) -> Vec<String> {
        let tasks: Vec<Value> = args
            .iter()
            .map(|a| json!({"function_id": function_id, "args": a}))
            .collect();
        let (status, answer) =
            self.post("/v1/tasks", &json!({"endpoint": endpoint, "tasks": tasks}));
        assert!(status == 202 || status == 200, "{status} {answer}");
        answer["task_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    }

    /// Waits (bounded) for a task to be terminal; answers its view.
    pub fn wait_task(&self, task_id: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let view = self
                .get(&format!("/v1/tasks/{task_id}?wait=5"))
                .expect("task view");
            let state = view["state"].as_str().unwrap_or_default();
            if ["success", "failed", "cancelled"].contains(&state) {
                return view;
            }
            assert!(
                Instant::now() < deadline,
                "task {task_id} still {state} after {timeout:?}"
            );
        }
    }
}

fn start_service(home: &Path, listen: &str) -> (Proc, String) {
    let mut child = Command::new(BIN)
        .args(["service", "--listen", listen])
        .env("SCIFAAS_HOME", home)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(home.join("service.log")).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("listening on ") {
                let _ = tx.send(url.to_owned());
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| {
            let log = std::fs::read_to_string(home.join("service.log")).unwrap_or_default();
            panic!("the service did not start within 30 s:\n{log}")
        });
    (
        Proc {
            child,
            name: "service".into(),
        },
        url,
    )
}
