//! Configs that must be refused, and exactly how.

use super::*;

#[test]
fn unknown_keys_name_their_line_and_the_valid_keys() {
    assert_error(
        "display_name: x\nworkers: 3\n",
        2,
        "workers",
        "unknown key; valid keys here: display_name, service_url, service_ca, engine, provider, strategy",
    );
    assert_error(
        "engine:\n  cores_per_worker: 1\n  max_workers: 4\n",
        3,
        "engine.max_workers",
        "unknown key; valid keys here: max_workers_per_node, cores_per_worker,",
    );
    assert_error(
        "provider:\n  type: local\n  max_blocks: 2\n\n  partition: debug\n",
        5,
        "provider.partition",
        "unknown key; valid keys here: type, init_blocks, min_blocks, max_blocks,",
    );
    assert_error(
        "strategy: {period: 5s, idle: 1m}\n",
        1,
        "strategy.idle",
        "valid keys here: period, max_idletime",
    );
    assert_error(
        "provider:\n  type: slurm\n  queue: debug\n",
        3,
        "provider.queue",
        "unknown key; valid keys here: type, init_blocks, min_blocks, max_blocks,",
    );
    assert_error(
        "provider:\n  type: pbs\n  partition: debug\n",
        3,
        "provider.partition",
        "unknown key; valid keys here: type, init_blocks,",
    );
}

#[test]
fn wrong_types_name_their_line_and_key() {
    assert_error(
        "provider:\n  type: local\n  max_blocks: lots\n",
        3,
        "provider.max_blocks",
        "invalid type: string \"lots\", expected a whole number (0 or more)",
    );
    assert_error(
        "engine:\n  prefetch_capacity: -1\n",
        2,
        "engine.prefetch_capacity",
        "-1 is not a number of tasks",
    );
    assert_error(
        "engine:\n  prefetch_capacity: lots\n",
        2,
        "engine.prefetch_capacity",
        "`lots` is neither `auto` nor a number of tasks",
    );
    assert_error(
        "engine:\n  port_range: [1, 2, 3]\n",
        2,
        "engine.port_range",
        "invalid length 3",
    );
    assert_error(
        "engine:\n  port_range: 5\n",
        2,
        "engine.port_range",
        "expected a list of two ports, [first, last]",
    );
    assert_eq!(
        error("hello\n"),
        format!("{FILE}:1: invalid type: string \"hello\", expected a mapping (key: value lines)")
    );
    assert_error(
        "engine: [1, 2]\n",
        1,
        "engine",
        "invalid type: sequence, expected a mapping (key: value lines)",
    );
    assert_error(
        "provider: local\n",
        1,
        "provider",
        "invalid type: string \"local\"",
    );
    assert_error(
        "display_name: [a]\n",
        1,
        "display_name",
        "invalid type: sequence",
    );
}

#[test]
fn an_unknown_provider_type_is_a_clear_error() {
    let supported = "local, slurm, pbs, torque, cobalt, kubernetes";
    assert_eq!(SUPPORTED_PROVIDERS.join(", "), supported);
    assert_eq!(
        error("engine:\n  prefetch_capacity: 1\nprovider:\n  type: condor\n  pool: x\n"),
        format!("{FILE}:4: provider.type: unknown provider type `condor`; supported: {supported}")
    );
    assert_error(
        "provider:\n  max_blocks: 2\n",
        1,
        "provider.type",
        &format!("missing; supported: {supported}"),
    );
    assert_error(
        "provider:\n  type: 3\n",
        2,
        "provider.type",
        "must be a provider type name",
    );
}

#[test]
fn launchers_are_checked_against_the_provider_and_the_block() {
    assert_error(
        "provider:\n  type: local\n  launcher: {type: srun, overrides: -c 4}\n",
        3,
        "provider.launcher.type",
        "the local provider runs one manager on this machine; the launcher must be single_node",
    );
    assert_error(
        "provider:\n  type: slurm\n  launcher:\n    type: ssh\n",
        4,
        "provider.launcher.type",
        "unknown value `ssh`; valid values: single_node, srun, mpiexec, aprun, jsrun",
    );
    assert_error(
        "provider:\n  type: local\n  launcher: {}\n",
        3,
        "provider.launcher.type",
        "missing key",
    );
    assert_error(
        "provider:\n  type: slurm\n  launcher:\n    type: srun\n    bind: x\n",
        5,
        "provider.launcher.bind",
        "unknown key; valid keys here: type, overrides",
    );
    assert_error(
        "provider:\n  type: local\n  launcher:\n    type: single_node\n    overrides: -c 4\n",
        5,
        "provider.launcher.overrides",
        "the single_node launcher runs the manager command as it is and takes no overrides",
    );
    // One manager for several nodes would leave all but the first idle.
    assert_error(
        "provider:\n  type: slurm\n  nodes_per_block: 4\n  launcher: {type: single_node}\n",
        4,
        "provider.launcher.type",
        "single_node starts one manager, on the first of the block's 4 nodes; use srun",
    );
    assert_error(
        "provider:\n  type: torque\n  nodes_per_block: 2\n",
        3,
        "provider.nodes_per_block",
        "single_node starts one manager",
    );
}

#[test]
fn min_blocks_above_max_blocks_points_at_max_blocks() {
    let text = "display_name: ep\nengine:\n  cores_per_worker: 1\nprovider:\n  type: local\n  min_blocks: 3\n  max_blocks: 1\n";
    assert_eq!(
        error(text),
        format!("{FILE}:7: provider.max_blocks: min_blocks (3) is greater than max_blocks (1)")
    );
    // With max_blocks left to its default, the key written is the one shown.
    assert_error(
        "provider:\n  type: local\n  min_blocks: 2\n",
        3,
        "provider.min_blocks",
        "min_blocks (2) is greater than max_blocks (1)",
    );
    assert_error(
        "provider:\n  type: local\n  init_blocks: 0\n  max_blocks: 0\n",
        4,
        "provider.max_blocks",
        "must be at least 1",
    );
}

#[test]
fn init_blocks_must_be_within_min_and_max() {
    assert_error(
        "provider:\n  type: local\n  max_blocks: 2\n  init_blocks: 3\n",
        4,
        "provider.init_blocks",
        "init_blocks (3) must be within min_blocks..max_blocks (0..2)",
    );
    // init_blocks defaults to 1: the key that made it impossible is shown.
    assert_error(
        "provider:\n  type: local\n  min_blocks: 2\n  max_blocks: 4\n",
        3,
        "provider.min_blocks",
        "init_blocks (1) must be within min_blocks..max_blocks (2..4)",
    );
    parse("provider:\n  type: local\n  min_blocks: 2\n  init_blocks: 2\n  max_blocks: 4\n");
}

#[test]
fn parallelism_must_be_between_0_and_1() {
    assert_error(
        "provider:\n  type: local\n  parallelism: 1.5\n",
        3,
        "provider.parallelism",
        "between 0 and 1, not 1.5",
    );
    assert_error(
        "provider:\n  type: local\n  parallelism: -0.1\n",
        3,
        "provider.parallelism",
        "not -0.1",
    );
    assert_error(
        "provider:\n  type: local\n  parallelism: .nan\n",
        3,
        "provider.parallelism",
        "not NaN",
    );
    for ok in ["0", "0.0", "1", "0.25"] {
        parse(&format!("provider:\n  type: local\n  parallelism: {ok}\n"));
    }
}

#[test]
fn the_local_provider_has_one_node_per_block() {
    assert_error(
        "provider:\n  type: local\n  nodes_per_block: 2\n",
        3,
        "provider.nodes_per_block",
        "must be 1, not 2",
    );
}

#[test]
fn heartbeat_threshold_must_exceed_heartbeat_period() {
    assert_error(
        "engine:\n  heartbeat_period: 1m\n  heartbeat_threshold: 60s\n",
        3,
        "engine.heartbeat_threshold",
        "heartbeat_threshold (1m) must be greater than heartbeat_period (1m)",
    );
    assert_error(
        "engine:\n  heartbeat_period: 5m\n",
        2,
        "engine.heartbeat_period",
        "heartbeat_threshold (2m) must be greater than heartbeat_period (5m)",
    );
    assert_error(
        "engine:\n  heartbeat_period: 0s\n",
        2,
        "engine.heartbeat_period",
        "must be greater than 0",
    );
}

#[test]
fn workers_cannot_be_zero() {
    assert_error(
        "engine:\n  max_workers_per_node: 0\n",
        2,
        "engine.max_workers_per_node",
        "must be at least 1",
    );
    assert_error(
        "engine:\n  cores_per_worker: 0\n",
        2,
        "engine.cores_per_worker",
        "positive number of cores, not 0",
    );
    assert_error(
        "engine:\n  cores_per_worker: -2\n",
        2,
        "engine.cores_per_worker",
        "not -2",
    );
}

#[test]
fn bad_durations_name_the_value_and_the_forms_that_work() {
    assert_error(
        "engine:\n  heartbeat_period: 30 sec\n",
        2,
        "engine.heartbeat_period",
        "invalid duration `30 sec`: expected a number with a unit (500ms, 30s, 5m, 1h), plain seconds (90) or HH:MM:SS",
    );
    assert_error(
        "provider:\n  type: local\n  walltime: \"1:00\"\n",
        3,
        "provider.walltime",
        "invalid duration `1:00`",
    );
    assert_error(
        "strategy:\n  period: -1\n",
        2,
        "strategy.period",
        "negative",
    );
    assert_error(
        "strategy:\n  period: [1]\n",
        2,
        "strategy.period",
        "expected a duration",
    );
    assert_error(
        "strategy: {period: 0s}\n",
        1,
        "strategy.period",
        "must be greater than 0",
    );
    assert_error(
        "engine:\n  task_walltime: 0\n",
        2,
        "engine.task_walltime",
        "must be greater than 0",
    );
    assert_error(
        "provider:\n  type: local\n  walltime: 500ms\n",
        3,
        "provider.walltime",
        "at least 1s",
    );
    assert_error(
        "provider:\n  type: local\n  cmd_timeout: 0\n",
        3,
        "provider.cmd_timeout",
        "greater than 0",
    );
    let config =
        parse("engine:\n  task_walltime: null\nprovider:\n  type: local\n  walltime: 00:00:01\n");
    assert_eq!(config.engine.task_walltime, None);
    assert_eq!(local(&config).walltime, Some(Duration::from_secs(1)));
}

#[test]
fn address_and_interface_are_exclusive() {
    assert_error(
        "engine:\n  address: 10.0.0.1\n  interface: ib0\n",
        3,
        "engine.interface",
        "address and interface are mutually exclusive",
    );
    assert_error(
        "engine:\n  interface: ''\n",
        2,
        "engine.interface",
        "must name a network interface",
    );
    assert_error(
        "engine:\n  address: ''\n",
        2,
        "engine.address",
        "host name or IP address",
    );
    assert_eq!(
        parse("engine:\n  address: 10.0.0.1\n").engine.address,
        "10.0.0.1"
    );
}

#[test]
fn port_ranges_must_be_real_ranges() {
    assert_error(
        "engine:\n  port_range: [6000, 5000]\n",
        2,
        "engine.port_range",
        "[6000, 5000] is empty",
    );
    assert_error(
        "engine:\n  port_range: [0, 10]\n",
        2,
        "engine.port_range",
        "ports start at 1",
    );
    assert_error(
        "engine:\n  port_range: [1, 70000]\n",
        2,
        "engine.port_range[1]",
        "invalid value: integer `70000`, expected a port number (1 to 65535)",
    );
    assert_eq!(
        parse("engine:\n  port_range: [5000, 5000]\n")
            .engine
            .port_range,
        Some((5000, 5000))
    );
}

#[test]
fn other_impossible_values() {
    assert_error(
        "service_url: 127.0.0.1:8470\n",
        1,
        "service_url",
        "is not an http:// or https:// URL",
    );
    assert_error(
        "engine:\n  worker_python: ' '\n",
        2,
        "engine.worker_python",
        "Python interpreter",
    );
}

#[test]
fn duplicate_keys_point_at_the_second_one() {
    assert_error(
        "engine:\n  prefetch_capacity: 1\n  prefetch_capacity: 2\n",
        3,
        "engine.prefetch_capacity",
        "duplicate",
    );
    assert_error(
        "provider:\n  type: local\n  max_blocks: 1\n  max_blocks: 2\n",
        4,
        "provider.max_blocks",
        "duplicate",
    );
}

#[test]
fn yaml_syntax_errors_have_their_line() {
    let err = error("engine:\n  prefetch_capacity: 1\n bad: 2\n");
    assert!(
        err.starts_with(&format!("{FILE}:3: invalid YAML: ")),
        "{err}"
    );
    let err = error("engine: {a: 1\n");
    assert!(
        err.starts_with(&format!("{FILE}:2: invalid YAML: ")),
        "{err}"
    );
}

#[test]
fn a_script_template_is_resolved_and_checked_when_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("config.yaml");
    std::fs::write(
        dir.path().join("job.sh.hbs"),
        "#!/bin/bash\n{{launch_command}}\n",
    )
    .unwrap();
    std::fs::write(
        &config_path,
        "provider:\n  type: local\n  script_template: job.sh.hbs\n",
    )
    .unwrap();
    let config = EndpointConfig::load(&config_path).unwrap();
    assert_eq!(
        local(&config).script_template,
        Some(dir.path().join("job.sh.hbs"))
    );
    assert_eq!(
        config.provider.script_template().unwrap().origin(),
        dir.path().join("job.sh.hbs").display().to_string()
    );

    std::fs::write(
        dir.path().join("job.sh.hbs"),
        "#!/bin/bash\n{{partition}}\n",
    )
    .unwrap();
    let err = EndpointConfig::load(&config_path).unwrap_err().to_string();
    let prefix = format!(
        "{}:3: provider.script_template: job script template ",
        config_path.display()
    );
    assert!(err.starts_with(&prefix), "{err}");
    assert!(err.contains("line 2") && err.contains("partition"), "{err}");

    std::fs::write(
        &config_path,
        "provider:\n  type: local\n  script_template: /nonexistent/t.hbs\n",
    )
    .unwrap();
    let err = EndpointConfig::load(&config_path).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!(
            "{}:3: provider.script_template: /nonexistent/t.hbs: ",
            config_path.display()
        )),
        "{err}"
    );
}

#[test]
fn an_unreadable_file_is_named() {
    let err = EndpointConfig::load(Path::new("/nonexistent/config.yaml")).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(
        err.to_string()
            .starts_with("/nonexistent/config.yaml: cannot read the endpoint config: "),
        "{err}"
    );
}
