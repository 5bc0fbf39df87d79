//! The engine's container and device keys: `engine.container` (every worker's default
//! container), `engine.allowed_containers` (which containers tasks may name),
//! `engine.container_templates` (an admin's runtime command lines),
//! `engine.worker_idle_timeout` and `engine.available_accelerators`.

use std::collections::HashSet;
use std::fmt;

use scifaas_protocol::ContainerSpec;
use scifaas_worker::containers::split_words;
use scifaas_worker::ContainerRuntimes;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

use super::check::Document;
use super::error::ConfigError;
use super::EngineConfig;

/// A container: `{type: apptainer, image: /img/sci.sif, options: "-B /scratch"}`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerConfig {
    /// The runtime: apptainer, singularity, charliecloud, docker, podman, shifter or bwrap.
    #[serde(rename = "type")]
    pub runtime: String,
    /// A path (a `.sif` file, an unpacked tree) or a registry reference, as the runtime
    /// takes it.
    pub image: String,
    /// Runtime options, one shell-like string (default none).
    #[serde(default)]
    pub options: Option<String>,
}

impl ContainerConfig {
    /// The container as the protocol carries it.
    pub fn spec(&self) -> ContainerSpec {
        ContainerSpec {
            runtime: self.runtime.clone(),
            image: self.image.clone(),
            options: self.options.clone(),
        }
    }
}

/// One entry of `engine.allowed_containers`: a runtime, and the images of it allowed.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerPattern {
    /// The runtime allowed.
    #[serde(rename = "type")]
    pub runtime: String,
    /// The image allowed; `*` matches any run of characters (`/global/common/img/*`).
    /// Absent: any image of this runtime.
    #[serde(default)]
    pub image: Option<String>,
}

impl ContainerPattern {
    /// Whether `spec` is a container this entry allows (its options play no part).
    pub fn matches(&self, spec: &ContainerSpec) -> bool {
        self.runtime == spec.runtime
            && self
                .image
                .as_deref()
                .is_none_or(|pattern| glob_matches(pattern, &spec.image))
    }
}

/// Whether `text` matches `pattern`, where `*` stands for any run of characters and
/// every other character for itself.
fn glob_matches(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// `engine.available_accelerators`: a count (`4`: devices 0..3) or a list of device ids
/// (`[0, 2]`, `["GPU-3f2a...", "GPU-77c1..."]`), as the vendors' `*_VISIBLE_DEVICES`
/// variables take them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accelerators(pub Vec<String>);

impl<'de> Deserialize<'de> for Accelerators {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CountOrIds;

        impl<'de> Visitor<'de> for CountOrIds {
            type Value = Accelerators;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of accelerators or a list of device ids")
            }

            fn visit_u64<E: de::Error>(self, count: u64) -> Result<Accelerators, E> {
                Ok(Accelerators((0..count).map(|i| i.to_string()).collect()))
            }

            fn visit_i64<E: de::Error>(self, count: i64) -> Result<Accelerators, E> {
                u64::try_from(count)
                    .map_err(|_| E::custom(format!("{count} is not a number of accelerators")))
                    .and_then(|count| self.visit_u64(count))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Accelerators, A::Error> {
                #[derive(Deserialize)]
                #[serde(untagged)]
                enum Id {
                    Number(u64),
                    Name(String),
                }
                let mut ids = Vec::new();
                while let Some(id) = seq.next_element::<Id>()? {
                    ids.push(match id {
                        Id::Number(n) => n.to_string(),
                        Id::Name(name) => name,
                    });
                }
                Ok(Accelerators(ids))
            }
        }

        deserializer.deserialize_any(CountOrIds)
    }
}

impl Document<'_> {
    /// The container and device keys' checks.
    pub(super) fn check_containers(&self, engine: &mut EngineConfig) -> Result<(), ConfigError> {
        let known = ContainerSpec::RUNTIMES.join(", ");
        let check_runtime = |key: &str, runtime: &str| {
            if ContainerSpec::RUNTIMES.contains(&runtime) {
                Ok(())
            } else {
                Err(self.invalid(
                    &[key],
                    format!("unknown container type `{runtime}`; known types: {known}"),
                ))
            }
        };
        if let Some(container) = &engine.container {
            check_runtime("engine.container.type", &container.runtime)?;
            if container.image.trim().is_empty() {
                return Err(self.invalid(&["engine.container.image"], "must name an image"));
            }
            if let Some(options) = &container.options {
                split_words(options).map_err(|e| {
                    self.invalid(&["engine.container.options"], format!("{options:?}: {e}"))
                })?;
            }
        }
        if let Some(allowed) = &engine.allowed_containers {
            for pattern in allowed {
                check_runtime("engine.allowed_containers", &pattern.runtime)?;
            }
            if let Some(container) = &engine.container {
                if !allowed.iter().any(|p| p.matches(&container.spec())) {
                    return Err(self.invalid(
                        &["engine.container", "engine.allowed_containers"],
                        format!(
                            "the default container ({} {}) is not among allowed_containers",
                            container.runtime, container.image
                        ),
                    ));
                }
            }
        }
        if let Some(dir) = &mut engine.container_templates {
            *dir = self.resolve(dir);
            // Compiled and rendered once now, so that a broken template fails here rather
            // than at every worker start of every pilot.
            ContainerRuntimes::with_template_dir(dir)
                .map_err(|e| self.invalid(&["engine.container_templates"], e.to_string()))?;
        }
        if engine.worker_idle_timeout.is_some_and(|t| t.is_zero()) {
            return Err(self.invalid(
                &["engine.worker_idle_timeout"],
                "must be greater than 0 (leave it out to keep idle workers)",
            ));
        }
        if let Some(Accelerators(ids)) = &engine.available_accelerators {
            let key = &["engine.available_accelerators"];
            if ids.is_empty() {
                return Err(self.invalid(
                    key,
                    "must be at least 1 accelerator (leave it out for none)",
                ));
            }
            let mut seen = HashSet::new();
            for id in ids {
                if id.trim().is_empty() || id.contains(',') {
                    return Err(self.invalid(
                        key,
                        format!("{id:?} is not a device id (not empty, no commas)"),
                    ));
                }
                if !seen.insert(id) {
                    return Err(self.invalid(key, format!("device {id} is listed twice")));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(runtime: &str, image: &str) -> ContainerSpec {
        ContainerSpec {
            runtime: runtime.into(),
            image: image.into(),
            options: Some("-B /x".into()),
        }
    }

    #[test]
    fn patterns_match_the_runtime_and_the_image_with_stars() {
        let any_bwrap = ContainerPattern {
            runtime: "bwrap".into(),
            image: None,
        };
        assert!(any_bwrap.matches(&spec("bwrap", "/anything")));
        assert!(!any_bwrap.matches(&spec("charliecloud", "/anything")));
        let site = ContainerPattern {
            runtime: "apptainer".into(),
            image: Some("/global/common/img/*.sif".into()),
        };
        assert!(site.matches(&spec("apptainer", "/global/common/img/sci.sif")));
        assert!(site.matches(&spec("apptainer", "/global/common/img/a/b.sif")));
        assert!(!site.matches(&spec("apptainer", "/home/me/img/sci.sif")));
        assert!(!site.matches(&spec("apptainer", "/global/common/img/sci.sif.bak")));
    }

    #[test]
    fn globs() {
        for (pattern, text, matches) in [
            ("abc", "abc", true),
            ("abc", "abcd", false),
            ("*", "", true),
            ("a*", "a", true),
            ("*c", "abc", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "acb", false),
            ("a*a", "a", false),
            ("docker.io/*:*", "docker.io/python:3.11", true),
        ] {
            assert_eq!(glob_matches(pattern, text), matches, "{pattern} {text}");
        }
    }
}
