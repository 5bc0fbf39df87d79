//! The engine's container and device keys: accepted forms and refused values.

use super::*;

#[test]
fn container_keys_are_read_and_default_to_none() {
    let config = parse(
        "engine:
  container: {type: apptainer, image: /img/sci.sif, options: \"-B /pscratch\"}
  allowed_containers:
    - {type: apptainer, image: /img/*}
    - {type: charliecloud}
  worker_idle_timeout: 5m
  available_accelerators: 4
",
    );
    let e = &config.engine;
    let container = e.container.as_ref().unwrap();
    assert_eq!(
        container.spec(),
        scifaas_protocol::ContainerSpec {
            runtime: "apptainer".into(),
            image: "/img/sci.sif".into(),
            options: Some("-B /pscratch".into()),
        }
    );
    let allowed = e.allowed_containers.as_ref().unwrap();
    assert_eq!(allowed.len(), 2);
    assert_eq!(allowed[1].image, None);
    assert_eq!(e.worker_idle_timeout, Some(Duration::from_secs(300)));
    assert_eq!(
        e.available_accelerators,
        Some(Accelerators(vec![
            "0".into(),
            "1".into(),
            "2".into(),
            "3".into()
        ]))
    );

    let e = EngineConfig::default();
    assert_eq!(e.container, None);
    assert_eq!(e.allowed_containers, None);
    assert_eq!(e.container_templates, None);
    assert_eq!(e.worker_idle_timeout, None);
    assert_eq!(e.available_accelerators, None);
}

#[test]
fn accelerators_are_a_count_or_ids_and_cap_the_workers() {
    let config =
        parse("engine:\n  max_workers_per_node: 8\n  available_accelerators: [0, \"GPU-7f\"]\n");
    assert_eq!(
        config.engine.available_accelerators,
        Some(Accelerators(vec!["0".into(), "GPU-7f".into()]))
    );
    assert_eq!(config.engine.workers_per_node_with(64), 2);
    let config = parse("engine:\n  max_workers_per_node: 1\n  available_accelerators: 4\n");
    assert_eq!(config.engine.workers_per_node_with(64), 1);
}

#[test]
fn a_template_folder_is_relative_to_the_config_and_checked_when_loaded() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("tpl")).unwrap();
    std::fs::write(
        dir.path().join("tpl/bwrap.hbs"),
        "bwrap --ro-bind {{image}} / {{{options}}}",
    )
    .unwrap();
    let file = dir.path().join("config.yaml");
    let config = EndpointConfig::parse("engine:\n  container_templates: tpl\n", &file).unwrap();
    assert_eq!(
        config.engine.container_templates,
        Some(dir.path().join("tpl"))
    );

    std::fs::write(
        dir.path().join("tpl/docker.hbs"),
        "docker run {{#each env}}",
    )
    .unwrap();
    let err = EndpointConfig::parse("engine:\n  container_templates: tpl\n", &file)
        .unwrap_err()
        .to_string();
    let docker = dir.path().join("tpl/docker.hbs");
    assert!(
        err.contains(":2: engine.container_templates: container template ")
            && err.contains(&docker.display().to_string()),
        "{err}"
    );
}

#[test]
fn wrong_container_values_are_refused_at_their_key() {
    assert_error(
        "engine:\n  container:\n    type: lxc\n    image: /i\n",
        3,
        "engine.container.type",
        "unknown container type `lxc`; known types: apptainer, singularity, charliecloud",
    );
    assert_error(
        "engine:\n  container:\n    type: bwrap\n    image: \"\"\n",
        4,
        "engine.container.image",
        "must name an image",
    );
    assert_error(
        "engine:\n  container:\n    type: bwrap\n    image: /i\n    options: \"-B '/x\"\n",
        5,
        "engine.container.options",
        "single quote",
    );
    assert_error(
        "engine:\n  container: {type: bwrap, image: /i, gpus: 1}\n",
        2,
        "engine.container.gpus",
        "unknown key; valid keys here: type, image, options",
    );
    assert_error(
        "engine:\n  allowed_containers:\n    - {type: lxd}\n",
        2,
        "engine.allowed_containers",
        "unknown container type `lxd`",
    );
    assert_error(
        "engine:\n  container: {type: bwrap, image: /home/me/img}\n  \
         allowed_containers: [{type: bwrap, image: /srv/img/*}]\n",
        2,
        "engine.container",
        "the default container (bwrap /home/me/img) is not among allowed_containers",
    );
}

#[test]
fn wrong_idle_timeouts_and_accelerators_are_refused_at_their_key() {
    assert_error(
        "engine:\n  worker_idle_timeout: 0s\n",
        2,
        "engine.worker_idle_timeout",
        "must be greater than 0",
    );
    assert_error(
        "engine:\n  available_accelerators: 0\n",
        2,
        "engine.available_accelerators",
        "at least 1",
    );
    assert_error(
        "engine:\n  available_accelerators: [0, 1, 0]\n",
        2,
        "engine.available_accelerators",
        "device 0 is listed twice",
    );
    assert_error(
        "engine:\n  available_accelerators: [\"0,1\"]\n",
        2,
        "engine.available_accelerators",
        "no commas",
    );
    let err = error("engine:\n  available_accelerators: many\n");
    assert!(
        err.contains("a number of accelerators or a list of device ids"),
        "{err}"
    );
}
