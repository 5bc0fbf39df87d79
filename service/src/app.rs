//! What every request handler and agent link shares.

use crate::hub::Hub;
use crate::registry::Registry;
use crate::store::Store;
use crate::waiters::Waiters;
use crate::ServiceConfig;
use std::time::Duration;
use tokio::sync::watch;

/// The longest any request waits (invoke timeout, task `wait`, results `timeout`), so
/// that every wait is bounded whatever a client asks.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(300);

/// The service's shared state.
pub(crate) struct App {
    pub config: ServiceConfig,
    pub store: Store,
    pub registry: Registry,
    pub hub: Hub,
    pub waiters: Waiters,
    /// Becomes true when the service is stopping.
    pub stopping: watch::Receiver<bool>,
}

impl App {
    /// Resolves once the service is stopping; long waits select on it.
    pub(crate) async fn stopping(&self) {
        let mut stopping = self.stopping.clone();
        let _ = stopping.wait_for(|stop| *stop).await;
    }
}
