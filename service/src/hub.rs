//! The live side of endpoints: which agent connection serves each endpoint now, and what
//! each agent last reported about itself.
//!
//! A connection's socket is written by its own task, fed by a channel; the submit path
//! only sends on that channel. One live connection per endpoint: a newer one replaces
//! (and closes) the older.

use scifaas_protocol::link::{EndpointStatus, ServiceMessage};
use scifaas_protocol::time::{now_micros, Micros};
use scifaas_protocol::{EndpointId, TaskSpec};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use tokio::sync::mpsc;

/// What a connection's writer task is asked to do.
#[derive(Debug)]
pub(crate) enum Outgoing {
    Message(ServiceMessage),
    /// Close the socket, saying why, and stop.
    Close(&'static str),
}

/// The channel into a connection's writer task.
pub(crate) type LinkSender = mpsc::UnboundedSender<Outgoing>;

/// Identifies one connection among those an endpoint had over time.
pub(crate) type LinkId = u64;

#[derive(Default)]
struct Entry {
    link: Option<(LinkId, LinkSender)>,
    last_seen: Option<Micros>,
    status: Option<EndpointStatus>,
}

/// What the endpoint view shows of an endpoint's agent.
#[derive(Clone, Debug, Default)]
pub(crate) struct LiveEndpoint {
    pub connected: bool,
    /// When the agent last sent anything (none since the service started: `None`).
    pub last_seen: Option<Micros>,
    /// The agent's latest status report.
    pub status: Option<EndpointStatus>,
}

/// The live agent connections of all endpoints.
#[derive(Default)]
pub(crate) struct Hub {
    endpoints: Mutex<HashMap<EndpointId, Entry>>,
    next_link: AtomicU64,
}

impl Hub {
    fn lock(&self) -> MutexGuard<'_, HashMap<EndpointId, Entry>> {
        self.endpoints.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes `sender` the endpoint's connection, closing the one it replaces.
    pub(crate) fn on_agent_connected(&self, endpoint: EndpointId, sender: LinkSender) -> LinkId {
        let id = self.next_link.fetch_add(1, Ordering::Relaxed);
        let mut endpoints = self.lock();
        let entry = endpoints.entry(endpoint).or_default();
        entry.last_seen = Some(now_micros());
        if let Some((_, old)) = entry.link.replace((id, sender)) {
            tracing::info!(%endpoint, "a new agent connection replaces the old one");
            let _ = old.send(Outgoing::Close("replaced by a newer connection"));
        }
        id
    }

    /// Forgets connection `link` of the endpoint, unless a newer one already replaced it.
    pub(crate) fn on_agent_disconnected(&self, endpoint: EndpointId, link: LinkId) {
        let mut endpoints = self.lock();
        if let Some(entry) = endpoints.get_mut(&endpoint) {
            if entry.link.as_ref().is_some_and(|(id, _)| *id == link) {
                entry.link = None;
            }
        }
    }

    /// Sends tasks to the endpoint's agent; false when none is connected (the tasks then
    /// wait in the store until one connects).
    pub(crate) fn push_tasks(&self, endpoint: EndpointId, tasks: Vec<TaskSpec>) -> bool {
        let endpoints = self.lock();
        let Some((_, sender)) = endpoints.get(&endpoint).and_then(|e| e.link.as_ref()) else {
            return false;
        };
        sender
            .send(Outgoing::Message(ServiceMessage::Tasks { tasks }))
            .is_ok()
    }

    /// Notes that the endpoint's agent just sent something.
    pub(crate) fn on_agent_seen(&self, endpoint: EndpointId) {
        self.lock().entry(endpoint).or_default().last_seen = Some(now_micros());
    }

    /// Keeps the agent's latest status report.
    pub(crate) fn on_status(&self, endpoint: EndpointId, status: EndpointStatus) {
        let mut endpoints = self.lock();
        let entry = endpoints.entry(endpoint).or_default();
        entry.last_seen = Some(now_micros());
        entry.status = Some(status);
    }

    /// What the endpoint view shows.
    pub(crate) fn live(&self, endpoint: EndpointId) -> LiveEndpoint {
        let endpoints = self.lock();
        match endpoints.get(&endpoint) {
            Some(entry) => LiveEndpoint {
                connected: entry.link.is_some(),
                last_seen: entry.last_seen,
                status: entry.status.clone(),
            },
            None => LiveEndpoint::default(),
        }
    }

    /// Closes every connection (the service is stopping).
    pub(crate) fn close_all(&self) {
        for entry in self.lock().values_mut() {
            if let Some((_, sender)) = entry.link.take() {
                let _ = sender.send(Outgoing::Close("the service is stopping"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_connection_replaces_and_closes_the_old() {
        let hub = Hub::default();
        let endpoint = EndpointId::new();
        let (old_tx, mut old_rx) = mpsc::unbounded_channel();
        let (new_tx, mut new_rx) = mpsc::unbounded_channel();
        let old = hub.on_agent_connected(endpoint, old_tx);
        let new = hub.on_agent_connected(endpoint, new_tx);
        assert!(matches!(old_rx.try_recv(), Ok(Outgoing::Close(_))));
        // The old connection going away must not disconnect the new one.
        hub.on_agent_disconnected(endpoint, old);
        assert!(hub.live(endpoint).connected);
        assert!(hub.push_tasks(endpoint, Vec::new()));
        assert!(matches!(new_rx.try_recv(), Ok(Outgoing::Message(_))));
        hub.on_agent_disconnected(endpoint, new);
        assert!(!hub.live(endpoint).connected);
        assert!(!hub.push_tasks(endpoint, Vec::new()));
    }
}
