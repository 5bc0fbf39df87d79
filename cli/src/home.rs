//! Where scifaas keeps its files: `$SCIFAAS_HOME` (default `~/.scifaas`).

use std::path::PathBuf;

pub fn home() -> PathBuf {
    if let Some(dir) = std::env::var_os("SCIFAAS_HOME") {
        return PathBuf::from(dir);
    }
    let user_home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    user_home.join(".scifaas")
}

/// The local service's data directory (database, admin token).
pub fn service_dir() -> PathBuf {
    home().join("service")
}

/// One endpoint's directory: its config, agent token, pid file, journal, blocks.
pub fn endpoint_dir(name: &str) -> PathBuf {
    home().join("endpoints").join(name)
}

/// Endpoint names become directory names and appear in job names: keep them plain.
pub fn check_endpoint_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        anyhow::bail!(
            "endpoint name `{name}` is not valid: use 1-64 letters, digits, `-`, `_` or `.`, not starting with `.`"
        )
    }
}
