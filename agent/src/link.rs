//! The agent's one outbound connection to the service: a WebSocket on the service's
//! HTTP port, authenticated by the endpoint's agent token. Nothing connects in to the
//! login node.

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use scifaas_protocol::link::{AgentMessage, ServiceMessage};
use scifaas_protocol::{decode, decode_shared, encode, EndpointId, PROTOCOL_VERSION};
use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// An open, greeted link.
pub struct Link {
    socket: Socket,
    pub endpoint_id: EndpointId,
    pub endpoint_name: String,
}

/// `http://host:port` -> `ws://host:port/v1/agent/ws` (and https -> wss).
pub fn agent_url(service_url: &str) -> anyhow::Result<String> {
    let base = service_url.trim_end_matches('/');
    let ws = if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else {
        bail!("service_url `{service_url}` must start with http:// or https://")
    };
    Ok(format!("{ws}/v1/agent/ws"))
}

impl Link {
    /// Connects, says hello and waits for the welcome. An `https://` service is reached
    /// over TLS, trusting `ca` (a PEM file) when given, else the public web PKI roots.
    pub async fn connect(
        service_url: &str,
        agent_token: &str,
        ca: Option<&Path>,
    ) -> anyhow::Result<Link> {
        let url = agent_url(service_url)?;
        let mut request = url
            .as_str()
            .into_client_request()
            .with_context(|| format!("bad service url {url}"))?;
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {agent_token}")
                .parse()
                .context("agent token is not a valid header value")?,
        );
        let connector = if url.starts_with("wss://") {
            Some(Connector::Rustls(tls_client_config(ca)?))
        } else {
            None
        };
        // Small frames both ways: Nagle's algorithm would add ~40 ms to each.
        let (mut socket, _) =
            tokio_tungstenite::connect_async_tls_with_config(request, None, true, connector)
                .await
                .with_context(|| format!("connecting to {url}"))?;
        socket
            .send(Message::Binary(
                encode(&AgentMessage::Hello {
                    protocol_version: PROTOCOL_VERSION,
                    agent_version: env!("CARGO_PKG_VERSION").to_owned(),
                })
                .into(),
            ))
            .await?;
        let welcome = tokio::time::timeout(std::time::Duration::from_secs(30), socket.next())
            .await
            .context("the service did not answer our hello within 30 s")?;
        match welcome {
            Some(Ok(Message::Binary(frame))) => match decode::<ServiceMessage>(&frame)? {
                ServiceMessage::Welcome {
                    endpoint_id,
                    endpoint_name,
                    ..
                } => Ok(Link {
                    socket,
                    endpoint_id,
                    endpoint_name,
                }),
                ServiceMessage::Refused { reason } => bail!("the service refused us: {reason}"),
                other => bail!("expected a welcome, got {other:?}"),
            },
            Some(Ok(other)) => bail!("expected a welcome, got {other:?}"),
            Some(Err(err)) => Err(err).context("reading the welcome"),
            None => bail!("the service closed the connection (is the agent token valid?)"),
        }
    }

    pub async fn send(&mut self, message: &AgentMessage) -> anyhow::Result<()> {
        self.socket
            .send(Message::Binary(encode(message).into()))
            .await
            .context("sending to the service")
    }

    /// The next message from the service; `None` when the link closed. Malformed
    /// frames are logged and skipped.
    pub async fn recv(&mut self) -> Option<ServiceMessage> {
        loop {
            match self.socket.next().await? {
                Ok(Message::Binary(frame)) => match decode_shared::<ServiceMessage>(&frame) {
                    Ok(message) => return Some(message),
                    Err(err) => {
                        tracing::warn!("dropping a malformed frame from the service: {err}")
                    }
                },
                Ok(Message::Close(_)) => return None,
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!("link to the service failed: {err}");
                    return None;
                }
            }
        }
    }
}

/// The TLS client settings for the link: trust `ca` if given, else the web PKI roots.
fn tls_client_config(ca: Option<&Path>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .with_context(|| format!("reading service_ca {}", path.display()))?
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("service_ca {} is not PEM", path.display()))?;
            anyhow::ensure!(
                !certs.is_empty(),
                "no certificate in service_ca {}",
                path.display()
            );
            for cert in certs {
                roots.add(cert).with_context(|| {
                    format!("a certificate in {} is not usable", path.display())
                })?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("choosing TLS versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_urls_map_to_the_agent_socket() {
        assert_eq!(
            agent_url("http://127.0.0.1:8470/").unwrap(),
            "ws://127.0.0.1:8470/v1/agent/ws"
        );
        assert_eq!(
            agent_url("https://faas.example.org").unwrap(),
            "wss://faas.example.org/v1/agent/ws"
        );
        assert!(agent_url("ftp://x").is_err());
    }
}
