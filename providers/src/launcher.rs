//! Launchers: the line in a job script that starts one manager on every node of a block.

use crate::template::shell_quote;

/// How a job script starts its managers.
///
/// Only `single_node` exists yet. The multi-node launchers of Parsl's vocabulary come with
/// the batch providers, each with the admin's `overrides` (extra options inserted before
/// the command), e.g. `Srun { overrides }` rendering
/// `srun --ntasks=NODES --ntasks-per-node=1 OVERRIDES CMD`, and likewise `mpiexec`, `aprun`
/// and `jsrun`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Launcher {
    /// The manager command as it is: one manager, on the node that runs the script. Right
    /// for the local provider and for one-node blocks.
    #[default]
    SingleNode,
}

impl Launcher {
    /// The launcher's name as written in the endpoint config.
    pub fn name(&self) -> &'static str {
        match self {
            Launcher::SingleNode => "single_node",
        }
    }

    /// The shell line that starts `manager_command` once on each of `nodes` nodes, every
    /// word quoted.
    pub fn launch_command(&self, manager_command: &[String], _nodes: u32) -> String {
        let command = manager_command
            .iter()
            .map(|word| shell_quote(word))
            .collect::<Vec<_>>()
            .join(" ");
        match self {
            Launcher::SingleNode => command,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_node_runs_the_command_as_it_is_quoted() {
        let argv = [
            "scifaas",
            "manager",
            "--interchange",
            "tcp://h:1",
            "--x",
            "a b",
        ]
        .map(str::to_owned);
        assert_eq!(
            Launcher::SingleNode.launch_command(&argv, 1),
            "scifaas manager --interchange tcp://h:1 --x 'a b'"
        );
        assert_eq!(Launcher::SingleNode.name(), "single_node");
    }
}
