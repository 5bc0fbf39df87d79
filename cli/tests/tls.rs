//! A service given a certificate serves HTTPS, and the agent reaches it over `wss://`,
//! trusting the certificate named by `service_ca`. The certificate is made for the test
//! by the `openssl` command.

mod common;

use common::{Proc, BIN};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A test authority (`ca.pem`) and a server certificate it signed for 127.0.0.1
/// (`cert.pem`, `key.pem`).
fn make_certificate(dir: &Path) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=scifaas test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "key.pem",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "server.ext",
        "-out",
        "cert.pem",
    ]);
}

#[test]
fn the_service_serves_https_and_the_agent_connects_over_wss() {
    let home = tempfile::tempdir().unwrap();
    make_certificate(home.path());
    let mut child = Command::new(BIN)
        .args(["service", "--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(home.path().join("cert.pem"))
        .arg("--tls-key")
        .arg(home.path().join("key.pem"))
        .env("SCIFAAS_HOME", home.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _service = Proc {
        child,
        name: "service".into(),
    };
    // Keep reading the service's output to its end, so it never writes to a closed pipe.
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
        .expect("the service says where it listens");
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let token = std::fs::read_to_string(home.path().join("service/admin-token"))
        .unwrap()
        .trim()
        .to_owned();

    let dir = home.path().join("endpoints/secure");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("config.yaml"),
        format!(
            "service_url: {url}\nservice_ca: {}\nengine:\n  max_workers_per_node: 1\nprovider:\n  type: local\n",
            home.path().join("ca.pem").display()
        ),
    )
    .unwrap();
    let agent = Command::new(BIN)
        .args(["endpoint", "start", "secure"])
        .env("SCIFAAS_HOME", home.path())
        .env("SCIFAAS_TOKEN", &token)
        .env("SCIFAAS_CA_FILE", home.path().join("ca.pem"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(home.path().join("agent.log")).unwrap())
        .spawn()
        .unwrap();
    let _agent = Proc {
        child: agent,
        name: "agent".into(),
    };

    let cert = std::fs::read(home.path().join("ca.pem")).unwrap();
    let http = reqwest::blocking::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&cert).unwrap())
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let get = |path: &str| -> Value {
        http.get(format!("{url}{path}"))
            .bearer_auth(&token)
            .send()
            .and_then(|r| r.json())
            .unwrap_or(Value::Null)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while get("/v1/endpoints/secure")["connected"] != json!(true) {
        assert!(
            Instant::now() < deadline,
            "the agent did not connect over wss:\n{}",
            std::fs::read_to_string(home.path().join("agent.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let function: Value = http
        .post(format!("{url}/v1/functions"))
        .bearer_auth(&token)
        .json(&json!({"name": "echo", "source": "def echo(x):\n    return x\n"}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let answer: Value = http
        .post(format!(
            "{url}/v1/endpoints/secure/functions/{}/invoke",
            function["function_id"].as_str().unwrap()
        ))
        .bearer_auth(&token)
        .body("{\"over\": \"tls\"}")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(answer, json!({"over": "tls"}));

    // Plain HTTP to the TLS port gets no answer, and a client that does not trust the
    // certificate is refused.
    let plain = reqwest::blocking::Client::new()
        .get(format!("{}/v1/health", url.replacen("https", "http", 1)))
        .timeout(Duration::from_secs(5))
        .send();
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
    let untrusting = reqwest::blocking::Client::new()
        .get(format!("{url}/v1/health"))
        .timeout(Duration::from_secs(5))
        .send();
    assert!(untrusting.is_err(), "an unknown certificate is refused");
}
