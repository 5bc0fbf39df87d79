//! The kubernetes provider, without a Kubernetes control plane (none can run where these
//! tests run): recorded answers of real API servers mapped to states and errors
//! (`recorded`), the provider end to end against a replay of them (`replay`), and
//! credentials loaded from files and used over real TLS (`credentials`). The recordings
//! and their provenance are in `tests/fixtures/kubernetes/`.
//!
//! One test target, its tests under `kubernetes::`, so that
//! `cargo test -p scifaas-providers kubernetes` runs them all.

mod kubernetes {
    mod credentials;
    mod recorded;
    mod replay;

    use std::path::PathBuf;

    /// The path of a file in `tests/fixtures/kubernetes/`.
    pub(crate) fn fixture_path(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/kubernetes")
            .join(name)
    }

    /// The bytes of a file in `tests/fixtures/kubernetes/`.
    pub(crate) fn fixture(name: &str) -> Vec<u8> {
        let path = fixture_path(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }
}
