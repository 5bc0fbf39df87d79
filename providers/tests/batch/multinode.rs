//! Multi-node blocks through PBS: the `select=N` form and the `mpiexec` launcher in the
//! rendered job script, checked against what PBS records of a job's resources (OpenPBS
//! `qstat -f` text and JSON) and against what Slurm's PBS wrappers made of a `select=2`
//! script of ours on the 3-node test cluster (`here_wrapper_*select-2*`).

use super::fixture;
use scifaas_providers::{BatchOptions, BlockRequest, Launcher, PbsFlavor, PbsProvider};
use std::collections::BTreeMap;
use std::time::Duration;

fn block(nodes: u32, manager_command: &[&str], dir: &str) -> BlockRequest {
    BlockRequest {
        block_id: "block-0".into(),
        dir: dir.into(),
        endpoint_name: "ep".into(),
        nodes,
        walltime: Some(Duration::from_secs(120)),
        worker_init: String::new(),
        manager_command: manager_command.iter().map(|w| (*w).to_owned()).collect(),
        env: vec![("SCIFAAS_ENDPOINT_SECRET".into(), "s3cret".into())],
    }
}

/// The `key = value` attributes of a `qstat -f` text record (PBS indents with a tab or
/// four spaces).
fn attributes(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| line.trim().split_once(" = "))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// A select statement `N:res=value:...` as PBS writes it: the chunk count and each
/// chunk's resources. `None` when it is not of that form.
fn select(value: &str) -> Option<(u32, BTreeMap<String, String>)> {
    let mut parts = value.split(':');
    let count = parts.next()?.parse().ok()?;
    let resources = parts
        .map(|p| p.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect::<Option<_>>()?;
    Some((count, resources))
}

/// The values of the script's `#PBS -l NAME=...` lines.
fn resource_lines(script: &str, name: &str) -> Vec<String> {
    let prefix = format!("#PBS -l {name}=");
    script
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix).map(str::to_owned))
        .collect()
}

#[test]
fn select_asks_one_chunk_per_node_in_the_form_pbs_records() {
    // What PBS records for `select=1:ncpus=1`: the statement as given, a node count and
    // a CPU total, and the `scatter` placement (a chunk per host). Text and JSON alike.
    let text = attributes(&fixture("pbs/openpbs_qstat-f_running_qtoolkit.txt"));
    let json: serde_json::Value = serde_json::from_str(&fixture(
        "pbs/openpbs-19.0.0_qstat-x-f-F-json_finished-F-exit0_buildtest.json",
    ))
    .unwrap();
    let json = &json["Jobs"]["40.pbs"]["Resource_List"];
    let recorded = [
        (
            text["Resource_List.select"].clone(),
            text["Resource_List.place"].clone(),
            text["Resource_List.nodect"].parse::<u32>().unwrap(),
        ),
        (
            json["select"].as_str().unwrap().to_owned(),
            json["place"].as_str().unwrap().to_owned(),
            json["nodect"].as_u64().unwrap() as u32,
        ),
    ];
    for (statement, place, nodect) in &recorded {
        let (chunks, resources) = select(statement).expect("PBS's own select form");
        assert_eq!(chunks, *nodect, "one chunk per node under {place}");
        assert_eq!(resources["ncpus"], "1");
        assert_eq!(place, "scatter");
    }
    assert_eq!(text["Resource_List.ncpus"], "1");

    // A Polaris-style two-node block: the same form, two chunks, each a whole node's
    // CPUs and GPUs, scattered one per host.
    let options = BatchOptions {
        queue: Some("prod".into()),
        cores_per_node: Some(64),
        mem_per_node: Some(512),
        select_options: Some("ngpus=4".into()),
        exclusive: true,
        ..BatchOptions::default()
    };
    let launcher = Launcher::from_name("mpiexec", "--depth=64 --cpu-bind depth").unwrap();
    let provider = PbsProvider::with_builtin_template(PbsFlavor::Pro, launcher, options);
    let script = provider
        .render_script(&block(
            2,
            &["scifaas", "manager", "--block-id", "block-0"],
            "/b",
        ))
        .unwrap();
    let [statement] = &resource_lines(&script, "select")[..] else {
        panic!("one select line in\n{script}");
    };
    let (chunks, resources) = select(statement).expect("PBS's select form");
    assert_eq!(chunks, 2, "{statement}");
    assert_eq!(resources["ncpus"], "64");
    assert_eq!(resources["ngpus"], "4");
    assert_eq!(resources["mem"], "512gb");
    let places = resource_lines(&script, "place");
    assert_eq!(places, vec!["scatter:excl"], "{script}");
    assert_eq!(places[0].split(':').next(), Some(recorded[0].1.as_str()));

    // The mpiexec line starts one manager per chunk: as many ranks as nodes, one per node.
    let launch =
        "\nmpiexec -n 2 --ppn 1 --depth=64 --cpu-bind depth scifaas manager --block-id block-0\n";
    assert!(script.contains(launch), "{script}");
}

#[test]
fn slurms_pbs_wrappers_made_our_select_2_script_a_two_node_job() {
    // Recorded on the 3-node test cluster: our rendered `select=2` script, submitted with
    // Slurm's `qsub`, and `qstat -f` of the job while it ran.
    let recorded_script = fixture("pbs/here_wrapper_select-2_submit.sh");
    let options = BatchOptions {
        queue: Some("debug".into()),
        cores_per_node: Some(1),
        ..BatchOptions::default()
    };
    let launcher = Launcher::from_name("srun", "").unwrap();
    let provider = PbsProvider::with_builtin_template(PbsFlavor::Pro, launcher, options);
    let command = [
        "bash",
        "-c",
        "echo node=$SLURMD_NODENAME job=$PBS_JOBID; sleep 15",
    ];
    let script = provider
        .render_script(&block(2, &command, "/tmp/mnexp/pbsblock"))
        .unwrap();
    let directives = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| l.starts_with("#PBS") || l.starts_with("srun "))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(
        directives(&script),
        directives(&recorded_script),
        "the rendering recorded is still ours"
    );

    let qstat = fixture("pbs/here_wrapper_qstat-f_select-2.stdout");
    assert_eq!(fixture("pbs/here_wrapper_qstat-f_select-2.rc").trim(), "0");
    let attrs = attributes(&qstat);
    assert_eq!(attrs["job_state"], "R");
    assert_eq!(attrs["Resource_List.nodect"], "2", "{qstat}");
    assert_eq!(attrs["Resource_List.ncpus"], "2", "one CPU on each");
    let hosts: Vec<&str> = attrs["exec_host"]
        .split('+')
        .map(|h| h.split('/').next().unwrap())
        .collect();
    assert_eq!(hosts, vec!["n1", "n2"], "two distinct nodes");
    let job_id = qstat.lines().next().unwrap().split('\t').nth(1).unwrap();
    // srun, one task per node, ran on each of them.
    let mut ran: Vec<String> = fixture("pbs/here_wrapper_select-2_job-stdout.txt")
        .lines()
        .map(str::to_owned)
        .collect();
    ran.sort();
    assert_eq!(
        ran,
        vec![
            format!("node=n1 job={job_id}"),
            format!("node=n2 job={job_id}")
        ]
    );
}

#[test]
fn the_mpiexec_launcher_speaks_pals_and_hydra_not_slurms_mpiexec_wrapper() {
    // The same script with the mpiexec launcher, under Slurm's `mpiexec` (a Perl wrapper
    // around srun, from slurm-wlm-torque): `--ppn` is refused, so Slurm sites use srun.
    let launch = Launcher::from_name("mpiexec", "")
        .unwrap()
        .launch_command(&["true".into()], 2);
    assert_eq!(launch, "mpiexec -n 2 --ppn 1 true");
    let stderr = fixture("pbs/here_wrapper_mpiexec-ppn_job-stderr.txt");
    assert!(stderr.starts_with("Unknown option: ppn\n"), "{stderr}");
    assert!(stderr.contains("[-pernode]"), "{stderr}");
}
