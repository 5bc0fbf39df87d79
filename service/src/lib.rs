//! The scifaas service: REST API, auth, registry, task store, the link to agents.
