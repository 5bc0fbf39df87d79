//! Each batch provider end to end against fake scheduler commands: small bash scripts in a
//! temporary directory (the providers' `with_bin_dir`) that log how they were called and
//! answer with recorded outputs, errors, or not at all.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use scifaas_providers::{
    BatchOptions, BlockRequest, CobaltProvider, JobId, JobState, Launcher, PbsFlavor, PbsProvider,
    Provider, ProviderError, SlurmProvider, SCRIPT_FILE,
};

use super::fixture_path;

/// A directory of fake commands and what they were asked.
struct Fakes {
    dir: tempfile::TempDir,
}

impl Fakes {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn bin(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    /// Installs `program`: it logs `program args...` and its working directory, then runs
    /// `body` (bash; `$FIXTURES` is `tests/fixtures`).
    fn add(&self, program: &str, body: &str) {
        std::fs::create_dir_all(self.bin()).unwrap();
        let log = self.dir.path().join("calls.log");
        let script = format!(
            "#!/bin/bash\nFIXTURES={fixtures}\necho \"{program} $* | $(pwd)\" >> {log}\n{body}\n",
            fixtures = fixture_path("").display(),
            log = log.display(),
        );
        install_executable(&self.bin().join(program), &script);
    }

    /// Every call so far: `program args | cwd`.
    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("calls.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn calls_of(&self, program: &str) -> Vec<String> {
        let prefix = format!("{program} ");
        self.calls()
            .into_iter()
            .filter(|c| c.starts_with(&prefix))
            .collect()
    }

    fn block(&self, nodes: u32) -> BlockRequest {
        BlockRequest {
            block_id: "block-1".to_owned(),
            dir: self.dir.path().join("blocks/block-1"),
            endpoint_name: "ep".to_owned(),
            nodes,
            walltime: Some(Duration::from_secs(30 * 60)),
            worker_init: "module load python".to_owned(),
            manager_command: vec!["scifaas".into(), "manager".into()],
            env: vec![("SCIFAAS_ENDPOINT_SECRET".into(), "s3cret".into())],
        }
    }
}

/// Writes an executable at `path` without this process ever holding it open for writing.
/// Tests run on threads of one process: a thread that forks while another holds a fresh
/// script open hands that descriptor to its child until the child execs, and running the
/// script in that window fails with "Text file busy" (ETXTBSY). So the text goes to a
/// plain file and `install` (its own process) writes the executable.
fn install_executable(path: &Path, text: &str) {
    let source = path.with_extension("src");
    std::fs::write(&source, text).unwrap();
    let status = std::process::Command::new("install")
        .args(["-m", "0755"])
        .arg(&source)
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success(), "install {} failed", path.display());
}

fn options() -> BatchOptions {
    BatchOptions {
        queue: Some("debug".into()),
        account: Some("proj".into()),
        cmd_timeout: Duration::from_secs(10),
        ..BatchOptions::default()
    }
}

fn ids(list: &[&str]) -> Vec<JobId> {
    list.iter().map(|id| JobId::from(*id)).collect()
}

fn slurm(fakes: &Fakes) -> SlurmProvider {
    SlurmProvider::with_builtin_template(Launcher::from_name("srun", "").unwrap(), options())
        .with_bin_dir(fakes.bin())
}

#[test]
fn slurm_submit_writes_the_script_and_runs_sbatch_parsable_from_the_block_dir() {
    let fakes = Fakes::new();
    fakes.add(
        "sbatch",
        "env | grep -c '^SLURM_NTASKS=' >&2; echo 'sbatch: warning: x' >&2; echo '4242;cluster'",
    );
    let provider = slurm(&fakes);
    let block = fakes.block(2);
    let id = provider.submit(&block).unwrap();
    assert_eq!(id, JobId::from("4242"));
    let script_path = block.dir.join(SCRIPT_FILE);
    let calls = fakes.calls_of("sbatch");
    assert_eq!(
        calls,
        [format!(
            "sbatch --parsable {} | {}",
            script_path.display(),
            block.dir.display()
        )]
    );
    let script = std::fs::read_to_string(&script_path).unwrap();
    for line in [
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --time=00:30:00",
        "#SBATCH --partition=debug",
        "#SBATCH --account=proj",
        "srun --ntasks=2 --ntasks-per-node=1 scifaas manager",
        "export SCIFAAS_ENDPOINT_SECRET=s3cret",
        "module load python",
    ] {
        assert!(
            script.contains(&format!("{line}\n")),
            "no `{line}` in\n{script}"
        );
    }
    assert_eq!(provider.render_script(&block).unwrap(), script);
}

#[test]
fn slurm_status_is_one_squeue_and_sacct_only_while_accounting_is_on() {
    let fakes = Fakes::new();
    fakes.add("squeue", "cat $FIXTURES/slurm/here_squeue-O_6-states.txt");
    fakes.add(
        "sacct",
        "cat $FIXTURES/slurm/here_sacct_accounting-disabled.stderr >&2; exit 1",
    );
    let provider = slurm(&fakes);
    let asked = ids(&["16", "17", "18", "19", "20", "21", "99"]);
    for _ in 0..2 {
        let answer = provider.status(&asked).unwrap();
        assert_eq!(answer.len(), 7);
        assert_eq!(answer[&asked[0]].state, JobState::Running);
        assert_eq!(answer[&asked[1]].state, JobState::Completed);
        assert_eq!(answer[&asked[2]].state, JobState::Failed);
        assert_eq!(answer[&asked[2]].exit_code, Some(3));
        assert_eq!(answer[&asked[3]].state, JobState::Cancelled);
        assert_eq!(answer[&asked[4]].state, JobState::Held);
        let missing = &answer[&asked[6]];
        assert_eq!(missing.state, JobState::Unknown, "never taken as completed");
        let message = missing.message.as_deref().unwrap();
        assert!(message.contains("not in squeue's output"), "{message}");
        assert!(message.contains("accounting is disabled"), "{message}");
    }
    let squeues = fakes.calls_of("squeue");
    assert_eq!(squeues.len(), 2, "one squeue per status call");
    assert!(
        squeues[0].starts_with(
            "squeue -h -t all -j 16,17,18,19,20,21,99 -O JobID:|,State:|,exit_code:|,Reason:| |"
        ),
        "{squeues:?}"
    );
    assert_eq!(
        fakes.calls_of("sacct").len(),
        1,
        "asked once, then remembered"
    );
}

#[test]
fn slurm_sacct_resolves_the_jobs_squeue_forgot() {
    let fakes = Fakes::new();
    fakes.add("squeue", "echo '21|RUNNING|0|None|'");
    fakes.add("sacct", "cat $FIXTURES/slurm/here_sacct-XnP.txt");
    let provider = slurm(&fakes);
    let asked = ids(&["16", "18", "21", "99"]);
    let answer = provider.status(&asked).unwrap();
    assert_eq!(answer[&asked[0]].state, JobState::Timeout);
    assert_eq!(answer[&asked[1]].state, JobState::Failed);
    assert_eq!(answer[&asked[1]].exit_code, Some(3));
    assert_eq!(answer[&asked[2]].state, JobState::Running);
    assert_eq!(answer[&asked[3]].state, JobState::Unknown);
    let sacct = fakes.calls_of("sacct");
    assert_eq!(sacct.len(), 1);
    assert!(
        sacct[0].starts_with("sacct -X -n -P -o JobID,State,ExitCode -j 16,18,99 |"),
        "only the jobs squeue did not show: {sacct:?}"
    );
}

#[test]
fn slurm_a_lone_unknown_id_is_unknown_not_an_error() {
    let fakes = Fakes::new();
    fakes.add(
        "squeue",
        "cat $FIXTURES/slurm/here_squeue_unknown-id.stderr >&2; exit 1",
    );
    fakes.add("sacct", "exit 0");
    let answer = slurm(&fakes).status(&ids(&["99999"])).unwrap();
    assert_eq!(answer[&JobId::from("99999")].state, JobState::Unknown);
}

#[test]
fn slurm_command_failures_carry_command_exit_code_and_stderr() {
    let fakes = Fakes::new();
    fakes.add(
        "sbatch",
        "cat $FIXTURES/slurm/here_sbatch_bad-partition.stderr >&2; exit 1",
    );
    fakes.add(
        "squeue",
        "echo 'squeue: error: Unable to contact slurm controller (connect failure)' >&2; exit 1",
    );
    let provider = slurm(&fakes);
    let err = provider.submit(&fakes.block(1)).unwrap_err();
    match &err {
        ProviderError::CommandFailed {
            command,
            exit_code,
            stderr,
        } => {
            assert!(command.contains("/bin/sbatch --parsable "), "{command}");
            assert_eq!(*exit_code, Some(1));
            assert_eq!(
                stderr,
                "sbatch: error: invalid partition specified: nosuch\n\
                 sbatch: error: Batch job submission failed: Invalid partition name specified"
            );
        }
        other => panic!("{other}"),
    }
    let err = provider.status(&ids(&["1"])).unwrap_err().to_string();
    assert!(err.contains("Unable to contact slurm controller"), "{err}");
    assert!(err.contains("exit code 1"), "{err}");
}

#[test]
fn slurm_a_hung_command_is_killed_at_cmd_timeout() {
    let fakes = Fakes::new();
    fakes.add("sbatch", "sleep 30");
    fakes.add("scancel", "echo partial >&2; sleep 30");
    let provider = SlurmProvider::with_builtin_template(
        Launcher::SingleNode,
        BatchOptions {
            cmd_timeout: Duration::from_millis(300),
            ..BatchOptions::default()
        },
    )
    .with_bin_dir(fakes.bin());
    let started = Instant::now();
    let err = provider.submit(&fakes.block(1)).unwrap_err();
    assert!(
        matches!(err, ProviderError::CommandTimedOut { .. }),
        "{err}"
    );
    let err = provider.cancel(&ids(&["5"])).unwrap_err();
    assert!(err.to_string().contains("partial"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn slurm_output_without_a_job_id_is_an_error() {
    let fakes = Fakes::new();
    fakes.add("sbatch", "echo 'all good'");
    let err = slurm(&fakes).submit(&fakes.block(1)).unwrap_err();
    assert!(
        matches!(err, ProviderError::UnexpectedOutput { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("stdout: all good"), "{err}");
}

#[test]
fn a_job_we_cancelled_that_ended_is_cancelled() {
    let fakes = Fakes::new();
    fakes.add("scancel", "exit 0");
    fakes.add("squeue", "echo '7|COMPLETED|0|None|'");
    fakes.add("sacct", "exit 0");
    let provider = slurm(&fakes);
    provider.cancel(&ids(&["7", "8"])).unwrap();
    assert_eq!(fakes.calls_of("scancel").len(), 1, "one scancel for all");
    assert!(fakes.calls_of("scancel")[0].starts_with("scancel 7 8 |"));
    let answer = provider.status(&ids(&["7", "8"])).unwrap();
    assert_eq!(answer[&JobId::from("7")].state, JobState::Cancelled);
    assert_eq!(answer[&JobId::from("8")].state, JobState::Cancelled);
    provider.cancel(&[]).unwrap();
    assert_eq!(
        fakes.calls_of("scancel").len(),
        1,
        "nothing to cancel: no command"
    );
}

fn pbs(fakes: &Fakes, flavor: PbsFlavor) -> PbsProvider {
    PbsProvider::with_builtin_template(flavor, Launcher::SingleNode, options())
        .with_bin_dir(fakes.bin())
}

/// A fake `qstat` that behaves as Slurm's wrapper: refuses `-x` and `-F` with its usage
/// message, prints the recorded `qstat -f` otherwise.
fn wrapper_qstat(fakes: &Fakes) {
    fakes.add(
        "qstat",
        "for a in \"$@\"; do case $a in -x|-F) cat $FIXTURES/pbs/here_wrapper_qstat-x-f-F-json.stderr >&2; exit 2;; esac; done\n\
         cat $FIXTURES/pbs/here_wrapper_qstat-f_6-jobs.stdout",
    );
}

#[test]
fn pbs_falls_back_from_json_to_text_once_and_remembers() {
    let fakes = Fakes::new();
    wrapper_qstat(&fakes);
    let provider = pbs(&fakes, PbsFlavor::Pro);
    let asked = ids(&["16", "17", "20", "99"]);
    let answer = provider.status(&asked).unwrap();
    assert_eq!(answer[&asked[0]].state, JobState::Running);
    assert_eq!(answer[&asked[1]].state, JobState::Completed);
    assert_eq!(answer[&asked[2]].state, JobState::Pending);
    assert_eq!(answer[&asked[3]].state, JobState::Unknown);
    let forms: Vec<String> = fakes
        .calls_of("qstat")
        .iter()
        .map(|c| c.split(" 16 ").next().unwrap().to_owned())
        .collect();
    assert_eq!(
        forms,
        [
            "qstat -x -f -F json",
            "qstat -f -F json",
            "qstat -x -f",
            "qstat -f"
        ]
    );
    provider.status(&asked).unwrap();
    let calls = fakes.calls_of("qstat");
    assert_eq!(calls.len(), 5);
    assert!(calls[4].starts_with("qstat -f 16 17 20 99 |"), "{calls:?}");
    // Torque asks the text form only.
    let fakes = Fakes::new();
    wrapper_qstat(&fakes);
    pbs(&fakes, PbsFlavor::Torque).status(&asked).unwrap();
    assert_eq!(fakes.calls_of("qstat").len(), 1);
}

#[test]
fn pbs_pro_json_history_gives_the_outcome() {
    let fakes = Fakes::new();
    fakes.add(
        "qstat",
        "cat $FIXTURES/pbs/openpbs-19.0.0_qstat-x-f-F-json_finished-F-exit0_buildtest.json\n\
         echo 'qstat: Unknown Job Id 41.pbs' >&2; exit 153",
    );
    let provider = pbs(&fakes, PbsFlavor::Pro);
    let asked = ids(&["40.pbs", "41.pbs"]);
    let answer = provider.status(&asked).unwrap();
    assert_eq!(answer[&asked[0]].state, JobState::Completed);
    assert_eq!(answer[&asked[0]].exit_code, Some(0));
    assert_eq!(answer[&asked[1]].state, JobState::Unknown);
    assert_eq!(
        answer[&asked[1]].message.as_deref(),
        Some("not in qstat's output: qstat: Unknown Job Id 41.pbs")
    );
    assert_eq!(fakes.calls_of("qstat").len(), 1);
}

#[test]
fn pbs_pro_without_history_says_the_job_finished() {
    let fakes = Fakes::new();
    let id = "5487654.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov";
    fakes.add(
        "qstat",
        &format!(
            "if [ \"$1\" = -x ]; then echo 'qstat: PBS is not configured to maintain job history {id}' >&2; exit 1; fi\n\
             cat $FIXTURES/pbs/pbspro-2024.1_qstat-f-F-json_finished-job_rc35_stdout.json\n\
             cat $FIXTURES/pbs/pbspro-2024.1_qstat-f-F-json_finished-job_rc35_stderr.txt >&2; exit 35"
        ),
    );
    let provider = pbs(&fakes, PbsFlavor::Pro);
    let status = provider
        .status(&ids(&[id]))
        .unwrap()
        .remove(&JobId::from(id))
        .unwrap();
    assert_eq!(status.state, JobState::Unknown);
    let message = status.message.unwrap();
    assert!(
        message.contains("Job has finished, use -x or -H"),
        "{message}"
    );
}

#[test]
fn pbs_submit_and_its_failures() {
    let fakes = Fakes::new();
    fakes.add("qsub", "echo 1234.pbs01");
    let provider = pbs(&fakes, PbsFlavor::Pro);
    let block = fakes.block(1);
    assert_eq!(provider.submit(&block).unwrap(), JobId::from("1234.pbs01"));
    let call = &fakes.calls_of("qsub")[0];
    let dir = block.dir.display();
    assert_eq!(
        call,
        &format!("qsub -o {dir}/stdout -e {dir}/stderr {dir}/{SCRIPT_FILE} | {dir}")
    );
    let script = std::fs::read_to_string(block.dir.join(SCRIPT_FILE)).unwrap();
    assert!(script.contains("\n#PBS -l select=1\n"), "{script}");
    assert!(
        script.contains("\n#PBS -q debug\n#PBS -A proj\n"),
        "{script}"
    );

    // Slurm's qsub prints sbatch's error on stdout: it is what the error shows.
    fakes.add(
        "qsub",
        "cat $FIXTURES/pbs/here_wrapper_qsub_bad-queue.stdout; exit 1",
    );
    let err = provider.submit(&block).unwrap_err().to_string();
    assert!(err.contains("invalid partition specified: nosuch"), "{err}");

    fakes.add("qdel", "exit 1");
    provider.cancel(&ids(&["1234.pbs01"])).unwrap();
    fakes.add(
        "qdel",
        "echo 'qdel: Unauthorized Request  1234.pbs01' >&2; exit 159",
    );
    let err = provider
        .cancel(&ids(&["1234.pbs01"]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("Unauthorized Request"), "{err}");
}

#[test]
fn torque_reads_its_own_walltime_exit_status() {
    let fakes = Fakes::new();
    fakes.add(
        "qstat",
        "printf 'Job Id: 77.torque\\n    job_state = C\\n    exit_status = -11\\n'",
    );
    let provider = pbs(&fakes, PbsFlavor::Torque);
    let answer = provider.status(&ids(&["77.torque"])).unwrap();
    assert_eq!(answer[&JobId::from("77.torque")].state, JobState::Timeout);
    let script = provider.render_script(&fakes.block(3)).unwrap();
    assert!(script.contains("\n#PBS -l nodes=3:ppn=1\n"), "{script}");
}

fn cobalt(fakes: &Fakes) -> CobaltProvider {
    CobaltProvider::with_builtin_template(Launcher::from_name("aprun", "-d 64").unwrap(), options())
        .with_bin_dir(fakes.bin())
}

/// The cobaltlog path the provider gave Cobalt for `block`.
fn cobaltlog(block: &BlockRequest) -> PathBuf {
    block.dir.join("scifaas-ep-block-1.cobaltlog")
}

#[test]
fn cobalt_submits_with_its_command_line_and_reads_the_cobaltlog() {
    let fakes = Fakes::new();
    fakes.add("qsub", "echo 4242");
    let provider = cobalt(&fakes);
    let block = fakes.block(2);
    assert_eq!(provider.submit(&block).unwrap(), JobId::from("4242"));
    let dir = block.dir.display();
    assert_eq!(
        fakes.calls_of("qsub")[0],
        format!(
            "qsub -n 2 -t 30 -q debug -A proj --mode script -O {dir}/scifaas-ep-block-1 {dir}/{SCRIPT_FILE} | {dir}"
        )
    );
    let script = std::fs::read_to_string(block.dir.join(SCRIPT_FILE)).unwrap();
    assert!(
        script.contains("\naprun -n 2 -N 1 -d 64 scifaas manager\n"),
        "{script}"
    );

    let id = JobId::from("4242");
    fakes.add(
        "qstat",
        "echo 'JobID  User  WallTime  Nodes  State    Location'\necho '4242   u     00:30:00  2      running  x'",
    );
    assert_eq!(
        provider.status(std::slice::from_ref(&id)).unwrap()[&id].state,
        JobState::Running
    );
    // Gone from qstat (which then prints nothing and exits 1): the cobaltlog tells.
    fakes.add("qstat", "exit 1");
    assert_eq!(
        provider.status(std::slice::from_ref(&id)).unwrap()[&id].state,
        JobState::Unknown
    );
    std::fs::copy(
        fixture_path("cobalt/cobaltlog_task-completed-line_exit126.txt"),
        cobaltlog(&block),
    )
    .unwrap();
    let status = provider
        .status(std::slice::from_ref(&id))
        .unwrap()
        .remove(&id)
        .unwrap();
    assert_eq!(
        (status.state, status.exit_code),
        (JobState::Failed, Some(126))
    );
    std::fs::copy(
        fixture_path("cobalt/cobaltlog_task-completed-line_exit0.txt"),
        cobaltlog(&block),
    )
    .unwrap();
    let status = provider
        .status(std::slice::from_ref(&id))
        .unwrap()
        .remove(&id)
        .unwrap();
    assert_eq!(
        (status.state, status.exit_code),
        (JobState::Completed, Some(0))
    );
}

#[test]
fn cobalt_needs_a_walltime_and_cancels_with_qdel() {
    let fakes = Fakes::new();
    fakes.add("qsub", "echo 1");
    fakes.add("qdel", "exit 0");
    fakes.add("qstat", "exit 1");
    let provider = cobalt(&fakes);
    let mut block = fakes.block(1);
    block.walltime = None;
    let err = provider.submit(&block).unwrap_err().to_string();
    assert!(err.contains("needs a walltime"), "{err}");
    assert!(fakes.calls_of("qsub").is_empty());
    provider.cancel(&ids(&["5"])).unwrap();
    let answer = provider.status(&ids(&["5"])).unwrap();
    assert_eq!(answer[&JobId::from("5")].state, JobState::Cancelled);
    fakes.add("qstat", "echo 'cannot connect to cqm' >&2; exit 1");
    assert!(provider.status(&ids(&["5"])).is_err());
}

#[test]
fn a_missing_command_is_a_spawn_error_naming_it() {
    let provider = SlurmProvider::with_builtin_template(Launcher::SingleNode, options())
        .with_bin_dir(Path::new("/nonexistent/slurm/bin"));
    let err = provider.status(&ids(&["1"])).unwrap_err().to_string();
    assert!(
        err.starts_with("could not run `/nonexistent/slurm/bin/squeue -h -t all -j 1"),
        "{err}"
    );
}
