//! The batch providers (slurm, pbs, torque, cobalt) without a scheduler: recorded outputs of
//! real schedulers parsed and mapped to states (`recorded`), and each provider end to end
//! against fake `sbatch`/`squeue`/`qsub`/`qstat`/... scripts that replay those recordings,
//! fail, or hang (`fake`). The recordings and their provenance are in `tests/fixtures/`
//! (`README.md` there). The same providers against a real Slurm: `tests/real_slurm.rs`.
//!
//! One test target, its tests under `batch::`, so that `cargo test -p scifaas-providers
//! batch` runs them all.

mod batch {
    mod fake;
    mod multinode;
    mod recorded;

    use std::path::PathBuf;

    /// The path of `tests/fixtures/NAME` (`NAME` is `slurm/...`, `pbs/...`, ...).
    pub(crate) fn fixture_path(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    /// The text of `tests/fixtures/NAME`.
    pub(crate) fn fixture(name: &str) -> String {
        let path = fixture_path(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }
}
