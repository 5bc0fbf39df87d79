//! Launchers: the line in a job script that starts one manager on every node of a block.
//!
//! A pilot job's script runs on the first node of its allocation; the launcher is what
//! spreads the manager command over all of them, one copy per node. Each multi-node
//! launcher takes the admin's `overrides`, extra options inserted as they are (they are
//! shell words the admin wrote, not quoted) before the command, e.g. `-c 128
//! --cpu-bind=none` for srun. The manager command itself is quoted word by word.

use crate::template::shell_quote;

/// How a job script starts its managers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Launcher {
    /// The manager command as it is: one manager, on the node that runs the script. Right
    /// for the local provider and for one-node blocks.
    #[default]
    SingleNode,
    /// Slurm: `srun --ntasks=NODES --ntasks-per-node=1 OVERRIDES CMD`.
    Srun {
        /// Extra srun options (e.g. `--cpus-per-task=128 --cpu-bind=none`).
        overrides: String,
    },
    /// MPICH/Hydra and Cray PALS (ALCF Polaris) style: `mpiexec -n NODES --ppn 1 OVERRIDES
    /// CMD`.
    Mpiexec {
        /// Extra mpiexec options (e.g. `--depth=64 --cpu-bind depth`).
        overrides: String,
    },
    /// Cray ALPS (ALCF Theta): `aprun -n NODES -N 1 OVERRIDES CMD`.
    Aprun {
        /// Extra aprun options (e.g. `-d 64 -j 1 -cc depth`).
        overrides: String,
    },
    /// IBM LSF/CSM (OLCF Summit): `jsrun -n NODES -r 1 -a 1 OVERRIDES CMD`: NODES resource
    /// sets, one per host, one task each.
    Jsrun {
        /// Extra jsrun options (e.g. `-c 42 -g 6` to give the manager the node's CPUs and
        /// GPUs).
        overrides: String,
    },
}

impl Launcher {
    /// Every launcher name, as written in the endpoint config.
    pub const NAMES: [&'static str; 5] = ["single_node", "srun", "mpiexec", "aprun", "jsrun"];

    /// The launcher's name as written in the endpoint config.
    pub fn name(&self) -> &'static str {
        match self {
            Launcher::SingleNode => "single_node",
            Launcher::Srun { .. } => "srun",
            Launcher::Mpiexec { .. } => "mpiexec",
            Launcher::Aprun { .. } => "aprun",
            Launcher::Jsrun { .. } => "jsrun",
        }
    }

    /// The launcher called `name` with `overrides`, or `None` for an unknown name. The
    /// single-node launcher has no overrides; any given are ignored.
    pub fn from_name(name: &str, overrides: &str) -> Option<Self> {
        let overrides = overrides.trim().to_owned();
        Some(match name {
            "single_node" => Launcher::SingleNode,
            "srun" => Launcher::Srun { overrides },
            "mpiexec" => Launcher::Mpiexec { overrides },
            "aprun" => Launcher::Aprun { overrides },
            "jsrun" => Launcher::Jsrun { overrides },
            _ => return None,
        })
    }

    /// Whether this launcher starts a manager on every node of a block (all but
    /// `single_node`, which starts one).
    pub fn is_multi_node(&self) -> bool {
        !matches!(self, Launcher::SingleNode)
    }

    /// The admin's extra options (empty for `single_node`).
    pub fn overrides(&self) -> &str {
        match self {
            Launcher::SingleNode => "",
            Launcher::Srun { overrides }
            | Launcher::Mpiexec { overrides }
            | Launcher::Aprun { overrides }
            | Launcher::Jsrun { overrides } => overrides,
        }
    }

    /// The shell line that starts `manager_command` once on each of `nodes` nodes, every
    /// word of the command quoted.
    pub fn launch_command(&self, manager_command: &[String], nodes: u32) -> String {
        let command = manager_command
            .iter()
            .map(|word| shell_quote(word))
            .collect::<Vec<_>>()
            .join(" ");
        let prefix = match self {
            Launcher::SingleNode => return command,
            Launcher::Srun { .. } => format!("srun --ntasks={nodes} --ntasks-per-node=1"),
            Launcher::Mpiexec { .. } => format!("mpiexec -n {nodes} --ppn 1"),
            Launcher::Aprun { .. } => format!("aprun -n {nodes} -N 1"),
            Launcher::Jsrun { .. } => format!("jsrun -n {nodes} -r 1 -a 1"),
        };
        match self.overrides() {
            "" => format!("{prefix} {command}"),
            overrides => format!("{prefix} {overrides} {command}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv() -> Vec<String> {
        [
            "scifaas",
            "manager",
            "--interchange",
            "tcp://h:1",
            "--x",
            "a b",
        ]
        .map(str::to_owned)
        .to_vec()
    }

    #[test]
    fn single_node_runs_the_command_as_it_is_quoted() {
        assert_eq!(
            Launcher::SingleNode.launch_command(&argv(), 1),
            "scifaas manager --interchange tcp://h:1 --x 'a b'"
        );
        assert_eq!(Launcher::SingleNode.name(), "single_node");
        assert!(!Launcher::SingleNode.is_multi_node());
    }

    #[test]
    fn multi_node_launchers_start_one_manager_per_node() {
        let cmd = "scifaas manager --interchange tcp://h:1 --x 'a b'";
        let cases = [
            ("srun", "srun --ntasks=4 --ntasks-per-node=1"),
            ("mpiexec", "mpiexec -n 4 --ppn 1"),
            ("aprun", "aprun -n 4 -N 1"),
            ("jsrun", "jsrun -n 4 -r 1 -a 1"),
        ];
        for (name, prefix) in cases {
            let plain = Launcher::from_name(name, "").unwrap();
            assert_eq!(plain.name(), name);
            assert!(plain.is_multi_node());
            assert_eq!(plain.launch_command(&argv(), 4), format!("{prefix} {cmd}"));
            let tuned = Launcher::from_name(name, "  -x 1 --y=$Z ").unwrap();
            assert_eq!(
                tuned.launch_command(&argv(), 4),
                format!("{prefix} -x 1 --y=$Z {cmd}"),
                "overrides go in as written, before the command"
            );
        }
        assert_eq!(Launcher::from_name("ssh", ""), None);
        assert_eq!(
            Launcher::NAMES.map(|n| Launcher::from_name(n, "").unwrap().name()),
            Launcher::NAMES
        );
    }
}
