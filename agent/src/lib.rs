//! The endpoint agent: YAML config, interchange, scaling, the link to the service, the journal.
