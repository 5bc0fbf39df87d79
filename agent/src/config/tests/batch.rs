//! The batch providers' configs (slurm, pbs, torque, cobalt) and the named machine configs
//! in `configs/`, each parsed and its job script rendered.

use std::time::Duration;

use scifaas_providers::{BlockRequest, ScriptVars};

use super::*;

fn slurm(config: &EndpointConfig) -> &SlurmProviderConfig {
    match &config.provider {
        ProviderConfig::Slurm(c) => c,
        other => panic!("not slurm: {other:?}"),
    }
}

#[test]
fn a_full_slurm_config_reads_every_key() {
    let config = parse(
        "provider:
  type: slurm
  partition: regular
  account: m1234
  qos: premium
  constraint: gpu&hbm80g
  walltime: \"02:00:00\"
  nodes_per_block: 4
  cores_per_node: 64
  mem_per_node: 256
  exclusive: false
  init_blocks: 1
  min_blocks: 1
  max_blocks: 8
  parallelism: 0.5
  scheduler_options: |
    #SBATCH --gpus-per-node=4
    #SBATCH --mail-type=NONE
  worker_init: module load python
  launcher:
    type: srun
    overrides: --cpu-bind=none
  cmd_timeout: 2m
  status_poll_period: 45s
",
    );
    let c = slurm(&config);
    assert_eq!(c.partition.as_deref(), Some("regular"));
    assert_eq!(c.qos.as_deref(), Some("premium"));
    assert_eq!(c.constraint.as_deref(), Some("gpu&hbm80g"));
    assert_eq!((c.cores_per_node, c.mem_per_node), (Some(64), Some(256)));
    assert!(!c.exclusive);

    let p = &config.provider;
    assert_eq!(p.kind(), "slurm");
    let limits = p.limits();
    assert_eq!(
        (limits.init_blocks, limits.min_blocks, limits.max_blocks),
        (1, 1, 8)
    );
    assert_eq!((limits.nodes_per_block, limits.parallelism), (4, 0.5));
    assert_eq!(p.walltime(), Some(Duration::from_secs(7200)));
    assert_eq!(p.worker_init(), "module load python");
    assert_eq!(
        p.launcher(),
        Launcher::Srun {
            overrides: "--cpu-bind=none".into()
        }
    );
    assert_eq!(p.cmd_timeout(), Duration::from_secs(120));
    assert_eq!(p.status_poll_period(), Duration::from_secs(45));
    assert_eq!(
        p.script_template().unwrap().origin(),
        "built-in slurm.sh.hbs"
    );
    let options = p.batch().unwrap().options();
    assert_eq!(options.queue.as_deref(), Some("regular"));
    assert_eq!(options.account.as_deref(), Some("m1234"));
    assert_eq!(
        options.scheduler_options,
        "#SBATCH --gpus-per-node=4\n#SBATCH --mail-type=NONE\n"
    );
    assert_eq!(options.cmd_timeout, Duration::from_secs(120));
}

#[test]
fn each_batch_provider_has_its_defaults() {
    let cases = [
        (
            "slurm",
            Launcher::Srun {
                overrides: String::new(),
            },
            true,
        ),
        (
            "pbs",
            Launcher::Mpiexec {
                overrides: String::new(),
            },
            false,
        ),
        ("torque", Launcher::SingleNode, false),
        (
            "cobalt",
            Launcher::Aprun {
                overrides: String::new(),
            },
            false,
        ),
    ];
    for (kind, launcher, exclusive) in cases {
        let config = parse(&format!("provider:\n  type: {kind}\n"));
        let p = &config.provider;
        assert_eq!(p.kind(), kind);
        let limits = p.limits();
        assert_eq!(
            (limits.init_blocks, limits.min_blocks, limits.max_blocks),
            (0, 0, 1),
            "{kind}: no pilot until work arrives"
        );
        assert_eq!((limits.nodes_per_block, limits.parallelism), (1, 1.0));
        assert_eq!(p.walltime(), Some(DEFAULT_BATCH_WALLTIME), "{kind}");
        assert_eq!(p.launcher(), launcher, "{kind}");
        assert_eq!(p.cmd_timeout(), Duration::from_secs(30));
        assert_eq!(p.status_poll_period(), Duration::from_secs(30));
        assert_eq!(p.worker_init(), "");
        let options = p.batch().unwrap().options();
        assert_eq!(options.exclusive, exclusive, "{kind}");
        assert_eq!(options.queue, None);
        assert_eq!(
            p.script_template().unwrap().origin(),
            format!("built-in {kind}.sh.hbs")
        );
    }
    let local = parse("");
    assert_eq!(local.provider.status_poll_period(), Duration::from_secs(5));
    assert!(local.provider.batch().is_none());
    // `null` leaves the walltime to the scheduler (not for Cobalt, below).
    let config = parse("provider:\n  type: slurm\n  walltime: null\n");
    assert_eq!(config.provider.walltime(), None);
}

#[test]
fn pbs_reads_parsl_names_and_its_own_options() {
    let config = parse(
        "provider:\n  type: pbs\n  queue: prod\n  cpus_per_node: 64\n  select_options: ngpus=4\n  mem_per_node: 128\n  exclusive: true\n",
    );
    let options = config.provider.batch().unwrap().options();
    assert_eq!(options.queue.as_deref(), Some("prod"));
    assert_eq!(options.cores_per_node, Some(64));
    assert_eq!(options.select_options.as_deref(), Some("ngpus=4"));
    assert_eq!(options.mem_per_node, Some(128));
    assert!(options.exclusive);
    let torque = parse("provider:\n  type: torque\n  queue: batch\n  cores_per_node: 8\n");
    let options = torque.provider.batch().unwrap().options();
    assert_eq!(
        (options.queue.as_deref(), options.cores_per_node),
        (Some("batch"), Some(8))
    );
    let cobalt = parse("provider:\n  type: cobalt\n  queue: debug-cache-quad\n  account: P\n");
    let options = cobalt.provider.batch().unwrap().options();
    assert_eq!(options.queue.as_deref(), Some("debug-cache-quad"));
    assert_eq!(options.account.as_deref(), Some("P"));
}

#[test]
fn impossible_batch_values_name_their_key() {
    assert_error(
        "provider:\n  type: slurm\n  partition: \"a b\"\n",
        3,
        "provider.partition",
        "`a b` must be one word: it holds a space",
    );
    assert_error(
        "provider:\n  type: pbs\n  account: \"x\\n#PBS -q other\"\n",
        3,
        "provider.account",
        "a line break",
    );
    assert_error(
        "provider:\n  type: slurm\n  qos: ''\n",
        3,
        "provider.qos",
        "must not be empty",
    );
    assert_error(
        "provider:\n  type: slurm\n  scheduler_options: |\n    #SBATCH -x\n    module load py\n",
        3,
        "provider.scheduler_options",
        "line `module load py` is not a directive",
    );
    assert_error(
        "provider:\n  type: slurm\n  cores_per_node: 0\n",
        3,
        "provider.cores_per_node",
        "at least 1",
    );
    assert_error(
        "provider:\n  type: pbs\n  cpus_per_node: 0\n",
        3,
        "provider.cpus_per_node",
        "at least 1",
    );
    assert_error(
        "provider:\n  type: pbs\n  mem_per_node: 0\n",
        3,
        "provider.mem_per_node",
        "at least 1 GB",
    );
    assert_error(
        "provider:\n  type: slurm\n  nodes_per_block: 0\n",
        3,
        "provider.nodes_per_block",
        "at least 1",
    );
    assert_error(
        "provider:\n  type: cobalt\n  walltime: null\n",
        3,
        "provider.walltime",
        "Cobalt's qsub needs a walltime",
    );
    assert_error(
        "provider:\n  type: torque\n  walltime: 100ms\n",
        3,
        "provider.walltime",
        "at least 1s",
    );
    assert_error(
        "provider:\n  type: slurm\n  status_poll_period: 0s\n",
        3,
        "provider.status_poll_period",
        "greater than 0",
    );
    assert_error(
        "provider:\n  type: local\n  status_poll_period: 0\n",
        3,
        "provider.status_poll_period",
        "greater than 0",
    );
    assert_error(
        "provider:\n  type: cobalt\n  cmd_timeout: 0\n",
        3,
        "provider.cmd_timeout",
        "greater than 0",
    );
    assert_error(
        "provider:\n  type: slurm\n  max_blocks: 2\n  init_blocks: 3\n",
        4,
        "provider.init_blocks",
        "init_blocks (3) must be within min_blocks..max_blocks (0..2)",
    );
    assert_error(
        "provider:\n  type: pbs\n  parallelism: 2\n",
        3,
        "provider.parallelism",
        "between 0 and 1, not 2",
    );
    assert_error(
        "provider:\n  type: slurm\n  select_options: ngpus=4\n",
        3,
        "provider.select_options",
        "unknown key; valid keys here: type, init_blocks,",
    );
    assert_error(
        "provider:\n  type: cobalt\n  exclusive: true\n",
        3,
        "provider.exclusive",
        "unknown key",
    );
    assert_error(
        "provider:\n  type: slurm\n  mem_per_node: 1.5\n",
        3,
        "provider.mem_per_node",
        "expected a whole number",
    );
}

#[test]
fn a_batch_script_template_is_checked_with_the_batch_variables() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("config.yaml");
    std::fs::write(
        dir.path().join("job.sh.hbs"),
        "#!/bin/bash\n#SBATCH -p {{partition}}\n{{#if exclusive}}#SBATCH --exclusive{{/if}}\n{{launch_command}}\n",
    )
    .unwrap();
    std::fs::write(
        &config_path,
        "provider:\n  type: slurm\n  script_template: job.sh.hbs\n",
    )
    .unwrap();
    let config = EndpointConfig::load(&config_path).unwrap();
    assert_eq!(
        config.provider.script_template().unwrap().origin(),
        dir.path().join("job.sh.hbs").display().to_string()
    );
    std::fs::write(dir.path().join("job.sh.hbs"), "#!/bin/bash\n\n{{gpus}}\n").unwrap();
    let err = EndpointConfig::load(&config_path).unwrap_err().to_string();
    let prefix = format!(
        "{}:3: provider.script_template: job script template ",
        config_path.display()
    );
    assert!(err.starts_with(&prefix), "{err}");
    assert!(err.contains("line 3") && err.contains("gpus"), "{err}");
}

/// A block as the agent would ask for it under `config`.
fn example_block(config: &EndpointConfig) -> BlockRequest {
    BlockRequest {
        block_id: "block-7".to_owned(),
        dir: "/scratch/u/.scifaas/endpoints/ep/blocks/block-7".into(),
        endpoint_name: "ep".to_owned(),
        nodes: config.provider.limits().nodes_per_block,
        walltime: config.provider.walltime(),
        worker_init: config.provider.worker_init().to_owned(),
        manager_command: ["/opt/scifaas/bin/scifaas", "manager", "--workers", "4"]
            .map(str::to_owned)
            .to_vec(),
        env: vec![("SCIFAAS_ENDPOINT_SECRET".to_owned(), "s3cret".to_owned())],
    }
}

#[test]
fn every_config_in_configs_parses_and_renders_its_job_script() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let name = path.file_stem().unwrap().to_str().unwrap().to_owned();
        let config = EndpointConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
        if name != "endpoint-template" {
            let builtin = BUILTIN_CONFIGS.iter().find(|(n, _)| *n == name);
            let (_, text) = builtin.unwrap_or_else(|| panic!("{name} is not in BUILTIN_CONFIGS"));
            assert_eq!(*text, std::fs::read_to_string(&path).unwrap());
        }
        let block = example_block(&config);
        let launch = config
            .provider
            .launcher()
            .launch_command(&block.manager_command, block.nodes);
        let script = match &config.provider {
            ProviderConfig::Kubernetes(_) => {
                // A pod manifest, not a job script: its own tests render it.
                seen.push(name);
                continue;
            }
            ProviderConfig::Local(_) => {
                let vars = ScriptVars::for_block(&block, &config.provider.launcher()).unwrap();
                config.provider.script_template().unwrap().render(&vars)
            }
            batch => BatchProvider::from_config(batch)
                .unwrap()
                .expect("a batch provider")
                .render_script(&block),
        }
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(script.starts_with("#!/bin/bash\n"), "{name}:\n{script}");
        // The local script execs its manager (the provider then reaps it itself).
        let line = match &config.provider {
            ProviderConfig::Local(_) => format!("\nexec {launch}\n"),
            _ => format!("\n{launch}\n"),
        };
        assert!(script.contains(&line), "{name}: no `{line}` in\n{script}");
        assert!(
            script.contains("\nexport SCIFAAS_ENDPOINT_SECRET=s3cret\n"),
            "{name}"
        );
        if !block.worker_init.is_empty() {
            assert!(script.contains(&block.worker_init), "{name}");
        }
        let directive = match config.provider.kind() {
            "slurm" => format!("\n#SBATCH --nodes={}\n", block.nodes),
            "pbs" => format!("\n#PBS -l select={}", block.nodes),
            "torque" => format!("\n#PBS -l nodes={}:ppn=", block.nodes),
            "cobalt" => format!("\ncd {}", block.dir.display()),
            _ => "\n".to_owned(),
        };
        assert!(
            script.contains(&directive),
            "{name}: no {directive} in\n{script}"
        );
        seen.push(name);
    }
    seen.sort();
    for named in [
        "frontera",
        "local",
        "pbs",
        "perlmutter",
        "polaris",
        "slurm",
        "theta",
        "torque",
    ] {
        assert!(
            seen.iter().any(|n| n == named),
            "configs/{named}.yaml missing"
        );
    }
}

#[test]
fn named_machines_say_what_their_site_needs() {
    let named = |name: &str| {
        let (_, text) = BUILTIN_CONFIGS.iter().find(|(n, _)| *n == name).unwrap();
        EndpointConfig::parse(text, Path::new(name)).unwrap()
    };
    let perlmutter = named("perlmutter");
    assert_eq!(perlmutter.provider.kind(), "slurm");
    assert_eq!(perlmutter.engine.interface.as_deref(), Some("hsn0"));
    let options = perlmutter.provider.batch().unwrap().options();
    assert_eq!(options.constraint.as_deref(), Some("cpu"));
    assert!(matches!(
        perlmutter.provider.launcher(),
        Launcher::Srun { .. }
    ));
    let polaris = named("polaris");
    assert_eq!(polaris.provider.kind(), "pbs");
    assert_eq!(polaris.engine.interface.as_deref(), Some("bond0"));
    let options = polaris.provider.batch().unwrap().options();
    assert!(options.scheduler_options.contains("filesystems="));
    assert!(matches!(
        polaris.provider.launcher(),
        Launcher::Mpiexec { .. }
    ));
    let theta = named("theta");
    assert_eq!(theta.provider.kind(), "cobalt");
    assert!(matches!(theta.provider.launcher(), Launcher::Aprun { .. }));
    assert_eq!(named("frontera").provider.kind(), "slurm");
    assert_eq!(named("torque").provider.kind(), "torque");
    assert_eq!(named("pbs").provider.kind(), "pbs");
    assert_eq!(named("slurm").provider.kind(), "slurm");
}
