//! Kubernetes credentials: kubeconfig files and a pod's service account, loaded from files
//! in a temporary directory, and used over real TLS.
//!
//! No API server can run here; the TLS tests talk to a small Python HTTPS server on
//! 127.0.0.1 (with the test-only certificates of `tests/fixtures/kubernetes/tls/`) that
//! answers a recorded pod list, and checks the bearer token or the client certificate as
//! an API server would.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use scifaas_providers::{
    Credentials, JobId, JobState, KubernetesOptions, KubernetesProvider, PodTemplate, Provider,
    ProviderError,
};

fn tls(name: &str) -> PathBuf {
    super::fixture_path(&format!("tls/{name}"))
}

fn base64(path: &Path) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = std::fs::read(path).unwrap();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, b| (n << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
        out.push_str(&"=".repeat(3 - chunk.len()));
    }
    out
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn kubeconfig_error(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "config", text);
    Credentials::from_kubeconfig(&[path])
        .unwrap_err()
        .to_string()
}

const CLUSTER: &str = "clusters:\n- name: c\n  cluster: {server: 'https://10.0.0.1:6443/'}\n";

#[test]
fn the_current_context_picks_cluster_user_and_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "current-context: ctx\n{CLUSTER}users:\n- name: u\n  user: {{token: abc}}\ncontexts:\n\
         - name: other\n  context: {{cluster: nope, user: nope}}\n\
         - name: ctx\n  context: {{cluster: c, user: u, namespace: science}}\n"
    );
    let path = write(dir.path(), "config", &text);
    let creds = Credentials::from_kubeconfig(std::slice::from_ref(&path)).unwrap();
    assert_eq!(creds.server(), "https://10.0.0.1:6443");
    assert_eq!(creds.namespace(), Some("science"));
    assert_eq!(
        creds.origin(),
        format!("kubeconfig {} (context ctx)", path.display())
    );
    let shown = format!("{creds:?}");
    assert!(!shown.contains("abc"), "the token must not show: {shown}");
}

#[test]
fn several_files_merge_as_kubectl_merges_them() {
    let dir = tempfile::tempdir().unwrap();
    // The first file to name an entry or set current-context wins.
    let first = write(
        dir.path(),
        "a",
        "current-context: ctx\ncontexts:\n- name: ctx\n  context: {cluster: c, user: u}\n\
         users:\n- name: u\n  user: {tokenFile: token}\n",
    );
    let second = write(
        dir.path(),
        "b",
        &format!(
            "current-context: elsewhere\n{CLUSTER}users:\n- name: u\n  user: {{token: loser}}\n"
        ),
    );
    let creds = Credentials::from_kubeconfig(&[first, second]).unwrap();
    assert_eq!(creds.server(), "https://10.0.0.1:6443");
    assert_eq!(creds.namespace(), None);
    // tokenFile, relative to its file's directory.
    assert!(format!("{creds:?}").contains(&dir.path().join("token").display().to_string()));
}

#[test]
fn broken_kubeconfigs_say_what_is_wrong() {
    let cases = [
        (CLUSTER.to_owned(), "no current-context"),
        (format!("current-context: x\n{CLUSTER}"), "current-context `x` is not among the contexts"),
        (
            "current-context: x\ncontexts:\n- name: x\n  context: {cluster: gone}\n".to_owned(),
            "cluster `gone` is not among the clusters",
        ),
        (
            format!("current-context: x\n{CLUSTER}contexts:\n- name: x\n  context: {{cluster: c, user: gone}}\n"),
            "user `gone` is not among the users",
        ),
        (
            format!(
                "current-context: x\n{CLUSTER}contexts:\n- name: x\n  context: {{cluster: c, user: eks}}\n\
                 users:\n- name: eks\n  user:\n    exec: {{command: aws, args: [eks, get-token]}}\n"
            ),
            "exec or auth-provider plugin",
        ),
        (
            format!(
                "current-context: x\n{CLUSTER}contexts:\n- name: x\n  context: {{cluster: c, user: u}}\n\
                 users:\n- name: u\n  user: {{client-certificate-data: QUJD}}\n"
            ),
            "needs both client-certificate and client-key",
        ),
        (
            "current-context: x\nclusters:\n- name: c\n  cluster: {server: 'https://h', certificate-authority-data: 'no!'}\n\
             contexts:\n- name: x\n  context: {cluster: c}\n"
                .to_owned(),
            "certificate-authority-data is not base64",
        ),
        (
            "current-context: x\nclusters:\n- name: c\n  cluster: {server: 'https://h', certificate-authority: missing.crt}\n\
             contexts:\n- name: x\n  context: {cluster: c}\n"
                .to_owned(),
            "missing.crt",
        ),
        (
            "current-context: x\nclusters:\n- name: c\n  cluster: {server: '10.0.0.1:6443'}\n\
             contexts:\n- name: x\n  context: {cluster: c}\n"
                .to_owned(),
            "is not an https:// (or http://) URL",
        ),
        ("clusters: {oops\n".to_owned(), "not a kubeconfig"),
    ];
    for (text, words) in cases {
        let err = kubeconfig_error(&text);
        assert!(err.starts_with("kubeconfig "), "{err}");
        assert!(err.contains(words), "want `{words}` in `{err}`");
    }
}

/// A Python HTTPS server on 127.0.0.1 with the test server certificate. It answers every
/// GET with `body` (a recorded pod list), or a 401 Status when the bearer token is not the
/// one in `expected_token_file`; with `require_client_cert`, the TLS handshake needs a
/// client certificate from the test CA. Stopped (killed) when dropped.
struct HttpsServer {
    child: Child,
    port: u16,
}

const SERVER: &str = r#"
import http.server, json, ssl, sys
cert, key, ca, require, token_file, body_file = sys.argv[1:7]
body = open(body_file, 'rb').read()
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        code, out = 200, body
        if token_file != '-':
            want = 'Bearer ' + open(token_file).read().strip()
            if self.headers.get('Authorization') != want:
                code = 401
                out = json.dumps({'kind': 'Status', 'apiVersion': 'v1', 'status': 'Failure',
                                  'message': 'Unauthorized', 'reason': 'Unauthorized', 'code': 401}).encode()
        self.send_response(code)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(out)))
        self.end_headers()
        self.wfile.write(out)
    def log_message(self, *args):
        pass
class Server(http.server.HTTPServer):
    def handle_error(self, request, address):
        pass  # refused handshakes are part of the tests
server = Server(('127.0.0.1', 0), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
context.load_verify_locations(ca)
context.verify_mode = ssl.CERT_REQUIRED if require == '1' else ssl.CERT_NONE
server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

impl HttpsServer {
    fn start(require_client_cert: bool, expected_token_file: Option<&Path>) -> Self {
        let body = super::fixture_path("k8s-1.34_GET-pods-kube-system_podlist_running.json");
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(SERVER)
            .arg(tls("server.crt"))
            .arg(tls("server.key"))
            .arg(tls("ca.crt"))
            .arg(if require_client_cert { "1" } else { "0" })
            .arg(expected_token_file.map_or(PathBuf::from("-"), Path::to_owned))
            .arg(body)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 (needed by scifaas workers anyway) runs the test HTTPS server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("server said {line:?}"));
        Self { child, port }
    }
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status of one pod of the recorded list, through a provider with `creds`.
fn status_through(creds: Credentials) -> Result<JobState, ProviderError> {
    let options = KubernetesOptions {
        image: "img".to_owned(),
        request_timeout: Duration::from_secs(10),
        ..KubernetesOptions::default()
    };
    let provider = KubernetesProvider::new("lab", options, PodTemplate::builtin(), creds);
    let id = JobId::from("coredns-66bc5c9577-2g8hl");
    Ok(provider.status(std::slice::from_ref(&id))?[&id].state)
}

fn tls_kubeconfig(dir: &Path, port: u16, ca: &str, user: &str) -> Credentials {
    let text = format!(
        "current-context: kind\nclusters:\n- name: kind\n  cluster:\n    server: https://127.0.0.1:{port}\n    {ca}\n\
         users:\n- name: admin\n  user:\n{user}\ncontexts:\n- name: kind\n  context: {{cluster: kind, user: admin}}\n"
    );
    Credentials::from_kubeconfig(&[write(dir, "config", &text)]).unwrap()
}

#[test]
fn a_client_certificate_and_the_cluster_ca_work_over_tls() {
    let server = HttpsServer::start(true, None);
    let dir = tempfile::tempdir().unwrap();
    // Inline data, as kind and kubeadm write it.
    let ca = format!("certificate-authority-data: {}", base64(&tls("ca.crt")));
    let user = format!(
        "    client-certificate-data: {}\n    client-key-data: {}",
        base64(&tls("client.crt")),
        base64(&tls("client.key"))
    );
    let creds = tls_kubeconfig(dir.path(), server.port, &ca, &user);
    assert_eq!(status_through(creds).unwrap(), JobState::Running);

    // Files, relative to the kubeconfig's directory.
    for name in ["ca.crt", "client.crt", "client.key"] {
        std::fs::copy(tls(name), dir.path().join(name)).unwrap();
    }
    let user = "    client-certificate: client.crt\n    client-key: client.key";
    let creds = tls_kubeconfig(
        dir.path(),
        server.port,
        "certificate-authority: ca.crt",
        user,
    );
    assert_eq!(status_through(creds).unwrap(), JobState::Running);

    // Without the client certificate the server refuses the handshake.
    let creds = tls_kubeconfig(
        dir.path(),
        server.port,
        "certificate-authority: ca.crt",
        "    token: t",
    );
    let err = status_through(creds).unwrap_err();
    assert!(
        matches!(err, ProviderError::Api { code: None, .. }),
        "{err}"
    );

    // Only the cluster's CA is trusted: another one (here a leaf certificate) is refused.
    let creds = tls_kubeconfig(
        dir.path(),
        server.port,
        "certificate-authority: client.crt",
        user,
    );
    let err = status_through(creds).unwrap_err();
    assert!(
        matches!(err, ProviderError::Api { code: None, .. }),
        "{err}"
    );
}

#[test]
fn a_service_account_token_is_read_again_at_each_request() {
    let dir = tempfile::tempdir().unwrap();
    let account = dir.path().join("serviceaccount");
    std::fs::create_dir(&account).unwrap();
    std::fs::copy(tls("ca.crt"), account.join("ca.crt")).unwrap();
    write(&account, "namespace", "science\n");
    write(&account, "token", "first\n");
    let expected = write(dir.path(), "expected", "first");
    let server = HttpsServer::start(false, Some(&expected));

    let creds = Credentials::in_cluster(&account, "127.0.0.1", &server.port.to_string()).unwrap();
    assert_eq!(creds.server(), format!("https://127.0.0.1:{}", server.port));
    assert_eq!(creds.namespace(), Some("science"));
    let options = KubernetesOptions {
        image: "img".to_owned(),
        ..KubernetesOptions::default()
    };
    let provider = KubernetesProvider::new("lab", options, PodTemplate::builtin(), creds);
    assert_eq!(provider.namespace(), "science");
    let id = JobId::from("coredns-66bc5c9577-2g8hl");
    assert_eq!(
        provider.status(std::slice::from_ref(&id)).unwrap()[&id].state,
        JobState::Running
    );

    // The kubelet rotates the token: the next request sends the new one.
    write(&account, "token", "second\n");
    write(dir.path(), "expected", "second");
    assert_eq!(
        provider.status(std::slice::from_ref(&id)).unwrap()[&id].state,
        JobState::Running
    );

    // A token the server does not accept is its 401, with its message.
    write(&account, "token", "stale\n");
    let err = provider.status(std::slice::from_ref(&id)).unwrap_err();
    assert!(
        err.to_string()
            .ends_with(": 401 Unauthorized: Unauthorized"),
        "{err}"
    );
}

#[test]
fn a_pod_without_a_mounted_token_is_told_so() {
    let dir = tempfile::tempdir().unwrap();
    let err = Credentials::in_cluster(dir.path(), "10.96.0.1", "443")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("token is missing; is a service account token mounted?"),
        "{err}"
    );
    write(dir.path(), "token", "t");
    let err = Credentials::in_cluster(dir.path(), "10.96.0.1", "443")
        .unwrap_err()
        .to_string();
    assert!(err.contains("ca.crt"), "{err}");
    std::fs::copy(tls("ca.crt"), dir.path().join("ca.crt")).unwrap();
    let creds = Credentials::in_cluster(dir.path(), "fd00::1", "443").unwrap();
    assert_eq!(creds.server(), "https://[fd00::1]:443");
    assert_eq!(creds.namespace(), None);
}
