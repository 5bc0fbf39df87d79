//! Providers (local, slurm, pbs, ...) that submit, poll and cancel pilot-job blocks; launchers.
