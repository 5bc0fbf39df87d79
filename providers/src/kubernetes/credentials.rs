//! Where the Kubernetes API server is and how to prove who we are: a kubeconfig file, as
//! `kubectl` reads it, or the service account of the pod the agent runs in.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::ProviderError;

/// The service account's files inside a pod.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// How to reach and authenticate to one API server. Its `Debug` never shows the token or
/// the client key.
#[derive(Clone)]
pub struct Credentials {
    server: String,
    namespace: Option<String>,
    origin: String,
    ca_pem: Option<Vec<u8>>,
    /// Client certificate followed by its key, PEM.
    identity_pem: Option<Vec<u8>>,
    token: Option<Token>,
    insecure_skip_tls_verify: bool,
}

#[derive(Clone)]
enum Token {
    Static(String),
    /// Read at every request: a projected service-account token is rotated by the kubelet
    /// (hourly by default) and an old one stops working.
    File(PathBuf),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("server", &self.server)
            .field("namespace", &self.namespace)
            .field("origin", &self.origin)
            .field("ca", &self.ca_pem.is_some())
            .field("client_certificate", &self.identity_pem.is_some())
            .field(
                "token",
                &match &self.token {
                    None => "none".to_owned(),
                    Some(Token::Static(_)) => "<hidden>".to_owned(),
                    Some(Token::File(path)) => path.display().to_string(),
                },
            )
            .field("insecure_skip_tls_verify", &self.insecure_skip_tls_verify)
            .finish()
    }
}

impl Credentials {
    /// Finds credentials as `kubectl` does: the files in `KUBECONFIG` (a `:`-separated
    /// list), else `~/.kube/config`, else, inside a pod, its service account
    /// (`KUBERNETES_SERVICE_HOST`/`_PORT` and [`SERVICE_ACCOUNT_DIR`]).
    pub fn discover() -> Result<Self, ProviderError> {
        let mut tried = Vec::new();
        let listed: Vec<PathBuf> = match std::env::var_os("KUBECONFIG") {
            Some(list) => std::env::split_paths(&list)
                .filter(|p| !p.as_os_str().is_empty())
                .collect(),
            None => std::env::var_os("HOME")
                .map(|home| vec![PathBuf::from(home).join(".kube/config")])
                .unwrap_or_default(),
        };
        let existing: Vec<PathBuf> = listed.iter().filter(|p| p.is_file()).cloned().collect();
        if !existing.is_empty() {
            return Self::from_kubeconfig(&existing);
        }
        tried.extend(listed.iter().map(|p| p.display().to_string()));
        if let (Ok(host), Ok(port)) = (
            std::env::var("KUBERNETES_SERVICE_HOST"),
            std::env::var("KUBERNETES_SERVICE_PORT"),
        ) {
            return Self::in_cluster(Path::new(SERVICE_ACCOUNT_DIR), &host, &port);
        }
        tried.push("a pod's service account (KUBERNETES_SERVICE_HOST is not set)".to_owned());
        Err(ProviderError::Credentials {
            origin: "kubernetes credentials".to_owned(),
            message: format!(
                "none found; tried: {}. Set KUBECONFIG, or run the agent in a pod",
                tried.join(", ")
            ),
        })
    }

    /// The current context of the kubeconfig made of `files` merged as `kubectl` merges
    /// them: the first file that names a cluster, user or context, or sets
    /// `current-context`, wins. Relative paths are relative to the file that holds them.
    pub fn from_kubeconfig(files: &[PathBuf]) -> Result<Self, ProviderError> {
        let origin_of = |extra: &str| {
            let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
            format!("kubeconfig {}{extra}", names.join(":"))
        };
        let mut merged = Merged::default();
        for file in files {
            let text = std::fs::read_to_string(file).map_err(|source| ProviderError::Io {
                path: file.clone(),
                source,
            })?;
            let config: KubeConfig =
                serde_yaml_ng::from_str(&text).map_err(|e| ProviderError::Credentials {
                    origin: format!("kubeconfig {}", file.display()),
                    message: format!("not a kubeconfig: {e}"),
                })?;
            let dir = file.parent().unwrap_or(Path::new(".")).to_owned();
            merged.add(config, &dir);
        }
        let fail = |message: String| ProviderError::Credentials {
            origin: origin_of(""),
            message,
        };
        let context_name = merged
            .current_context
            .clone()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| {
                fail("no current-context; choose one with `kubectl config use-context`".to_owned())
            })?;
        let origin = origin_of(&format!(" (context {context_name})"));
        let fail = |message: String| ProviderError::Credentials {
            origin: origin.clone(),
            message,
        };
        let context = merged
            .contexts
            .iter()
            .find(|(name, _, _)| *name == context_name)
            .map(|(_, c, _)| c.clone())
            .ok_or_else(|| {
                fail(format!(
                    "current-context `{context_name}` is not among the contexts"
                ))
            })?;
        let (cluster, cluster_dir) = merged
            .clusters
            .iter()
            .find(|(name, _, _)| *name == context.cluster)
            .map(|(_, c, dir)| (c.clone(), dir.clone()))
            .ok_or_else(|| {
                fail(format!(
                    "cluster `{}` is not among the clusters",
                    context.cluster
                ))
            })?;
        let (user, user_dir) = match &context.user {
            None => (User::default(), PathBuf::new()),
            Some(name) => merged
                .users
                .iter()
                .find(|(n, _, _)| n == name)
                .map(|(_, u, dir)| (u.clone(), dir.clone()))
                .ok_or_else(|| fail(format!("user `{name}` is not among the users")))?,
        };
        if !(cluster.server.starts_with("https://") || cluster.server.starts_with("http://")) {
            return Err(fail(format!(
                "cluster `{}`: server `{}` is not an https:// (or http://) URL",
                context.cluster, cluster.server
            )));
        }
        if user.exec.is_some() || user.auth_provider.is_some() {
            return Err(fail(format!(
                "user `{}` gets its token from an exec or auth-provider plugin (as EKS, GKE and \
                 AKS configs do), which scifaas does not run; use a service-account token \
                 (`token:` or `tokenFile:`) or a client certificate",
                context.user.as_deref().unwrap_or_default()
            )));
        }
        let pem = |data: &Option<String>, path: &Option<String>, dir: &Path, key: &str| {
            read_pem(data, path, dir, key).map_err(&fail)
        };
        let ca_pem = pem(
            &cluster.ca_data,
            &cluster.ca_file,
            &cluster_dir,
            "certificate-authority",
        )?;
        let cert = pem(
            &user.cert_data,
            &user.cert_file,
            &user_dir,
            "client-certificate",
        )?;
        let key = pem(&user.key_data, &user.key_file, &user_dir, "client-key")?;
        let identity_pem = match (cert, key) {
            (Some(mut cert), Some(key)) => {
                cert.push(b'\n');
                cert.extend(key);
                Some(cert)
            }
            (None, None) => None,
            _ => {
                return Err(fail(
                    "a client certificate needs both client-certificate and client-key".to_owned(),
                ))
            }
        };
        let token = match (&user.token, &user.token_file) {
            (Some(token), _) => Some(Token::Static(token.trim().to_owned())),
            (None, Some(file)) => Some(Token::File(user_dir.join(file))),
            (None, None) => None,
        };
        Ok(Self {
            server: cluster.server.trim_end_matches('/').to_owned(),
            namespace: context.namespace.filter(|n| !n.is_empty()),
            origin,
            ca_pem,
            identity_pem,
            token,
            insecure_skip_tls_verify: cluster.insecure_skip_tls_verify,
        })
    }

    /// The service account of the pod the agent runs in: the token, CA and namespace in
    /// `dir` (normally [`SERVICE_ACCOUNT_DIR`]) and the API server at `host`:`port` (from
    /// `KUBERNETES_SERVICE_HOST` and `KUBERNETES_SERVICE_PORT`).
    pub fn in_cluster(dir: &Path, host: &str, port: &str) -> Result<Self, ProviderError> {
        let origin = format!("service account {}", dir.display());
        let token = dir.join("token");
        if !token.is_file() {
            return Err(ProviderError::Credentials {
                origin,
                message: format!(
                    "{} is missing; is a service account token mounted?",
                    token.display()
                ),
            });
        }
        let ca_path = dir.join("ca.crt");
        let ca = std::fs::read(&ca_path).map_err(|source| ProviderError::Io {
            path: ca_path,
            source,
        })?;
        let namespace = std::fs::read_to_string(dir.join("namespace"))
            .ok()
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty());
        // An IPv6 address needs brackets in a URL.
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        Ok(Self {
            server: format!("https://{host}:{port}"),
            namespace,
            origin,
            ca_pem: Some(ca),
            identity_pem: None,
            token: Some(Token::File(token)),
            insecure_skip_tls_verify: false,
        })
    }

    /// The API server's URL, without a trailing `/`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The namespace the context or the service account names, if any.
    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    /// Where these credentials came from, for messages.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The bearer token to send, read now if it lives in a file.
    pub(crate) fn bearer_token(&self) -> Result<Option<String>, ProviderError> {
        match &self.token {
            None => Ok(None),
            Some(Token::Static(token)) => Ok(Some(token.clone())),
            Some(Token::File(path)) => std::fs::read_to_string(path)
                .map(|t| Some(t.trim().to_owned()))
                .map_err(|source| ProviderError::Io {
                    path: path.clone(),
                    source,
                }),
        }
    }

    /// An HTTP client that trusts only the cluster's CA (when one is given; the public
    /// roots otherwise) and presents the client certificate, if any. Must be called from a
    /// blocking context: reqwest's blocking client refuses to be built inside a runtime.
    pub(crate) fn http_client(
        &self,
        timeout: Duration,
    ) -> Result<reqwest::blocking::Client, ProviderError> {
        let fail = |what: &str, e: reqwest::Error| ProviderError::Credentials {
            origin: self.origin.clone(),
            message: format!("{what}: {}", error_chain(&e)),
        };
        let mut builder = reqwest::blocking::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("scifaas/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &self.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(ca)
                .map_err(|e| fail("certificate-authority", e))?;
            if certs.is_empty() {
                return Err(ProviderError::Credentials {
                    origin: self.origin.clone(),
                    message: "certificate-authority holds no PEM certificate".to_owned(),
                });
            }
            // Like kubectl: a cluster with its own CA is trusted through that CA only.
            builder = builder.tls_built_in_root_certs(false);
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let Some(identity) = &self.identity_pem {
            let identity = reqwest::Identity::from_pem(identity)
                .map_err(|e| fail("client-certificate/client-key", e))?;
            builder = builder.identity(identity);
        }
        if self.insecure_skip_tls_verify {
            tracing::warn!(origin = %self.origin, "insecure-skip-tls-verify: the API server's certificate is not checked");
            builder = builder.danger_accept_invalid_certs(true);
        }
        builder
            .build()
            .map_err(|e| fail("building the HTTP client", e))
    }
}

/// An error with its causes, which reqwest keeps in `source()`.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// PEM bytes from a `*-data` key (base64) or a file key (relative to `dir`).
fn read_pem(
    data: &Option<String>,
    path: &Option<String>,
    dir: &Path,
    key: &str,
) -> Result<Option<Vec<u8>>, String> {
    match (data, path) {
        (Some(data), _) => base64_decode(data)
            .map(Some)
            .map_err(|e| format!("{key}-data is not base64: {e}")),
        (None, Some(path)) => {
            let path = dir.join(path);
            std::fs::read(&path)
                .map(Some)
                .map_err(|e| format!("{key} {}: {e}", path.display()))
        }
        (None, None) => Ok(None),
    }
}

/// Standard base64 (with or without padding; whitespace ignored), as kubeconfig's `*-data`
/// keys hold it.
pub(crate) fn base64_decode(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut buffer, mut bits) = (0u32, 0u32);
    let body = text.trim_end_matches(|c: char| c == '=' || c.is_ascii_whitespace());
    for c in body.chars().filter(|c| !c.is_ascii_whitespace()) {
        let value = match c {
            'A'..='Z' => c as u32 - 'A' as u32,
            'a'..='z' => c as u32 - 'a' as u32 + 26,
            '0'..='9' => c as u32 - '0' as u32 + 52,
            '+' => 62,
            '/' => 63,
            other => return Err(format!("unexpected character `{other}`")),
        };
        buffer = (buffer << 6) | value;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    // Leftover bits must be padding zeros; 6 leftover bits means a lone character.
    if bits >= 6 || buffer != 0 {
        return Err("truncated".to_owned());
    }
    Ok(out)
}

/// A kubeconfig file, the parts read here; other keys (`preferences`, `extensions`) are
/// ignored as kubectl ignores what it does not know.
#[derive(Deserialize, Default)]
#[serde(default)]
struct KubeConfig {
    clusters: Option<Vec<Named<Cluster>>>,
    users: Option<Vec<Named<User>>>,
    contexts: Option<Vec<Named<Context>>>,
    #[serde(rename = "current-context")]
    current_context: Option<String>,
}

/// `{name, cluster|user|context}`: the entry's value under whichever key it has.
#[derive(Deserialize)]
struct Named<T> {
    name: String,
    #[serde(alias = "cluster", alias = "user", alias = "context")]
    value: Option<T>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(default)]
struct Cluster {
    server: String,
    #[serde(rename = "certificate-authority")]
    ca_file: Option<String>,
    #[serde(rename = "certificate-authority-data")]
    ca_data: Option<String>,
    #[serde(rename = "insecure-skip-tls-verify")]
    insecure_skip_tls_verify: bool,
}

#[derive(Deserialize, Default, Clone)]
#[serde(default)]
struct User {
    token: Option<String>,
    #[serde(rename = "tokenFile")]
    token_file: Option<String>,
    #[serde(rename = "client-certificate")]
    cert_file: Option<String>,
    #[serde(rename = "client-certificate-data")]
    cert_data: Option<String>,
    #[serde(rename = "client-key")]
    key_file: Option<String>,
    #[serde(rename = "client-key-data")]
    key_data: Option<String>,
    exec: Option<serde::de::IgnoredAny>,
    #[serde(rename = "auth-provider")]
    auth_provider: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(default)]
struct Context {
    cluster: String,
    user: Option<String>,
    namespace: Option<String>,
}

/// Several kubeconfig files as one: entries with the directory of their file.
#[derive(Default)]
struct Merged {
    clusters: Vec<(String, Cluster, PathBuf)>,
    users: Vec<(String, User, PathBuf)>,
    contexts: Vec<(String, Context, PathBuf)>,
    current_context: Option<String>,
}

impl Merged {
    fn add(&mut self, config: KubeConfig, dir: &Path) {
        fn merge<T: Default>(
            into: &mut Vec<(String, T, PathBuf)>,
            from: Option<Vec<Named<T>>>,
            dir: &Path,
        ) {
            for entry in from.unwrap_or_default() {
                if !into.iter().any(|(name, _, _)| *name == entry.name) {
                    into.push((entry.name, entry.value.unwrap_or_default(), dir.to_owned()));
                }
            }
        }
        merge(&mut self.clusters, config.clusters, dir);
        merge(&mut self.users, config.users, dir);
        merge(&mut self.contexts, config.contexts, dir);
        if self.current_context.as_deref().is_none_or(str::is_empty) {
            self.current_context = config.current_context;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes_what_kubeconfigs_hold() {
        assert_eq!(base64_decode("").unwrap(), b"");
        assert_eq!(base64_decode("Zg==").unwrap(), b"f");
        assert_eq!(base64_decode("Zm8=").unwrap(), b"fo");
        assert_eq!(base64_decode("Zm9v").unwrap(), b"foo");
        assert_eq!(base64_decode("Zm9vYg").unwrap(), b"foob");
        assert_eq!(base64_decode("LS0t\n LS1C\n").unwrap(), b"-----B");
        assert_eq!(base64_decode("+/+/").unwrap(), [0xfb, 0xff, 0xbf]);
        assert!(base64_decode("Zm9v!").unwrap_err().contains("`!`"));
        assert_eq!(base64_decode("Z").unwrap_err(), "truncated");
    }
}
