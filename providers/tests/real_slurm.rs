//! The Slurm provider, and the PBS and Torque providers through Slurm's PBS-compatible
//! `qsub`/`qstat`/`qdel` (Debian package `slurm-wlm-torque`), against a real Slurm running
//! on this machine: submit, status, cancel, failures.
//!
//! Slurm is started by `scripts/slurm-up.sh` (as root; `scripts/test.sh` does it when it
//! runs as root) and stopped by `scripts/slurm-down.sh`. A test finds it by running `sinfo`:
//! when no Slurm answers, the tests pass after saying so on stderr, unless
//! `SCIFAAS_REQUIRE_SLURM=1` is set, which makes that a failure (CI sets it). The walltime
//! test takes over a minute (Slurm's shortest walltime is one minute).
//!
//! One test target, its tests under `real_slurm::`.

mod real_slurm {
    mod pbs_wrappers;
    mod slurm;

    use std::collections::HashSet;
    use std::io::Write;
    use std::path::Path;
    use std::process::Command;
    use std::sync::OnceLock;
    use std::thread;
    use std::time::{Duration, Instant};

    use scifaas_providers::{
        run_with_timeout, BatchOptions, BlockRequest, JobId, JobStatus, Provider,
    };

    /// The variable that turns "no Slurm here" from a skip into a failure.
    pub(crate) const REQUIRE_SLURM: &str = "SCIFAAS_REQUIRE_SLURM";

    /// What `sinfo` says when Slurm answers: the nodes of the default partition.
    struct Cluster {
        nodes: Vec<String>,
    }

    /// Runs `sinfo` once per test run.
    fn cluster() -> &'static Result<Cluster, String> {
        static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();
        CLUSTER.get_or_init(|| {
            let mut sinfo = Command::new("sinfo");
            sinfo.args(["-h", "-N", "-o", "%N %T"]);
            let output =
                run_with_timeout(sinfo, Duration::from_secs(20)).map_err(|e| e.to_string())?;
            if !output.status.success() {
                return Err(format!(
                    "sinfo failed ({}): {}",
                    output.status,
                    output.stderr.trim()
                ));
            }
            let nodes: HashSet<String> = output
                .stdout
                .lines()
                .filter(|l| !l.contains("down") && !l.contains("drain"))
                .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
                .collect();
            if nodes.is_empty() {
                return Err(format!(
                    "sinfo shows no usable node: {}",
                    output.stdout.trim()
                ));
            }
            let mut nodes: Vec<String> = nodes.into_iter().collect();
            nodes.sort();
            Ok(Cluster { nodes })
        })
    }

    /// Whether a Slurm answers here. When none does: a failure under
    /// `SCIFAAS_REQUIRE_SLURM=1`, else `false` after saying (once) how to enable the tests.
    pub(crate) fn slurm_is_up() -> bool {
        match cluster() {
            Ok(_) => true,
            Err(why) if std::env::var(REQUIRE_SLURM).as_deref() == Ok("1") => {
                panic!("{REQUIRE_SLURM}=1 but no Slurm answers here: {why}")
            }
            Err(why) => {
                static SAID: OnceLock<()> = OnceLock::new();
                SAID.get_or_init(|| {
                    // Straight to stderr: the test harness captures only print! and eprint!.
                    let _ = writeln!(
                        std::io::stderr(),
                        "\nreal_slurm: SKIPPING the real-Slurm tests: no Slurm answers here \
                         ({why}). Start one with `sudo scripts/slurm-up.sh` (scripts/test.sh \
                         does so when run as root); set {REQUIRE_SLURM}=1 to make this a \
                         failure.\n"
                    );
                });
                false
            }
        }
    }

    /// Whether the cluster has at least `count` usable nodes; says so on stderr when not
    /// (a test needing them then passes without running).
    pub(crate) fn has_nodes(count: usize, test: &str) -> bool {
        let nodes = match cluster() {
            Ok(cluster) => cluster.nodes.len(),
            Err(_) => 0,
        };
        if nodes < count {
            let _ = writeln!(
                std::io::stderr(),
                "real_slurm: SKIPPING {test}: it needs {count} Slurm nodes, this one has \
                 {nodes} (start it with SCIFAAS_SLURM_NODES={count} scripts/slurm-up.sh)"
            );
        }
        nodes >= count
    }

    /// Options for a test pilot: the default partition, shared nodes.
    pub(crate) fn options() -> BatchOptions {
        BatchOptions {
            exclusive: false,
            ..BatchOptions::default()
        }
    }

    /// A block of `nodes` nodes in `dir` whose "manager" is `command`.
    pub(crate) fn block(dir: &Path, nodes: u32, command: &[&str]) -> BlockRequest {
        BlockRequest {
            block_id: "block-1".to_owned(),
            dir: dir.join("block-1"),
            endpoint_name: "test-ep".to_owned(),
            nodes,
            walltime: Some(Duration::from_secs(5 * 60)),
            worker_init: "export FROM_INIT=yes".to_owned(),
            manager_command: command.iter().map(|s| s.to_string()).collect(),
            env: vec![("SCIFAAS_ENDPOINT_SECRET".into(), "s3cr3t value".into())],
        }
    }

    pub(crate) fn status_of(provider: &dyn Provider, id: &JobId) -> JobStatus {
        let mut answer = provider.status(std::slice::from_ref(id)).unwrap();
        answer.remove(id).expect("every id asked is answered")
    }

    /// Polls until `done` holds for the job's status, or fails the test after `limit`.
    pub(crate) fn wait_for(
        provider: &dyn Provider,
        id: &JobId,
        limit: Duration,
        what: &str,
        done: impl Fn(&JobStatus) -> bool,
    ) -> JobStatus {
        let deadline = Instant::now() + limit;
        loop {
            let status = status_of(provider, id);
            if done(&status) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} not {what} after {limit:?}: {status:?}"
            );
            thread::sleep(Duration::from_millis(250));
        }
    }

    /// Waits until the job ended (a terminal state).
    pub(crate) fn wait_until_ended(provider: &dyn Provider, id: &JobId) -> JobStatus {
        wait_for(provider, id, Duration::from_secs(90), "ended", |s| {
            s.state.is_terminal()
        })
    }

    /// The text of a file the job writes, once it is complete (ends with a newline).
    pub(crate) fn read_output(path: &Path) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match std::fs::read_to_string(path) {
                Ok(text) if text.ends_with('\n') => return text,
                _ if Instant::now() > deadline => panic!("{} never written", path.display()),
                _ => thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}
