//! The name a manager gives its node when it registers.
//!
//! On a real cluster each node is its own host, so the host name names the node. Inside a
//! Slurm job step `SLURMD_NODENAME` is the node's name in the scheduler's own terms, which
//! is what an admin finds in `squeue`/`sinfo`, and the only name that tells nodes apart
//! where several emulated nodes share one machine (`slurmd -N n1`, `-N n2`: one host
//! name for all). PBS, Cobalt and LSF set no per-node variable for a launched process; their
//! nodes are real hosts, so the host name is right there.

/// Variables that name the node, most specific first: an explicit override (for
/// launchers that know better), then Slurm's.
pub const NODE_NAME_VARIABLES: &[&str] = &["SCIFAAS_NODE_NAME", "SLURMD_NODENAME"];

/// This node's name: the first of [`NODE_NAME_VARIABLES`] that is set and not empty,
/// else the host name.
pub fn node_name() -> String {
    node_name_from(|var| std::env::var(var).ok(), hostname)
}

fn node_name_from(env: impl Fn(&str) -> Option<String>, hostname: impl Fn() -> String) -> String {
    NODE_NAME_VARIABLES
        .iter()
        .find_map(|var| {
            env(var)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        })
        .unwrap_or_else(hostname)
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown-host".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn name(vars: &[(&str, &str)]) -> String {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        node_name_from(|var| vars.get(var).cloned(), || "login1".to_owned())
    }

    #[test]
    fn slurm_names_the_node_where_it_can() {
        assert_eq!(name(&[]), "login1", "no scheduler: the host name");
        assert_eq!(name(&[("SLURMD_NODENAME", "n2")]), "n2");
        assert_eq!(
            name(&[("SLURMD_NODENAME", "  ")]),
            "login1",
            "empty is unset"
        );
        assert_eq!(
            name(&[("SLURMD_NODENAME", "n2"), ("SCIFAAS_NODE_NAME", "gpu7")]),
            "gpu7",
            "the explicit override wins"
        );
    }
}
