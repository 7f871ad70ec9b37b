//! `tollgate cache list | reset | gc`: the setup snapshots under the state
//! dir (DESIGN.md "Cache snapshots").

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use tollgate_run::cache::{Removal, SnapshotStore};
use tollgate_run::environment::Environment;
use tollgate_run::state::StateDir;

pub fn list(state: &StateDir) -> Result<ExitCode> {
    let store = SnapshotStore::new(state.cache_dir());
    let listed = store.list();
    if listed.is_empty() {
        println!("no snapshots in {}", state.cache_dir().display());
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<24} {:<12} {:>10} {:>10} {:<16} STATE",
        "ENVIRONMENT", "KEY", "AGE", "SIZE", "EXPIRES IN"
    );
    for entry in listed {
        let key = entry.key.get(..12).unwrap_or(&entry.key);
        let Some(meta) = &entry.meta else {
            println!(
                "{:<24} {key:<12} {:>10} {:>10} {:<16} incomplete (gc removes it)",
                entry.env,
                "-",
                size(entry.size),
                "-"
            );
            continue;
        };
        let ttl = Duration::from_secs(meta.ttl);
        let age = meta.age();
        let expires = if age >= ttl {
            "expired".to_owned()
        } else {
            duration(ttl - age)
        };
        println!(
            "{:<24} {key:<12} {:>10} {:>10} {:<16} {}",
            entry.env,
            duration(age),
            size(entry.size),
            expires,
            if entry.in_use { "in use" } else { "ready" }
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn reset(environment: &Path, state: &StateDir) -> Result<ExitCode> {
    let environment = Environment::load(environment)?;
    let removal = SnapshotStore::new(state.cache_dir()).reset(&environment.name)?;
    report("reset", &removal);
    Ok(ExitCode::SUCCESS)
}

/// Expired snapshots, and what tollgate processes killed with SIGKILL
/// left: their run directories (which may hold a phase's files) and their
/// sandboxes' scratch directories and cgroups.
pub fn gc(state: &StateDir) -> Result<ExitCode> {
    let removal = SnapshotStore::new(state.cache_dir()).gc()?;
    report("gc", &removal);
    let runs = state.remove_abandoned_runs();
    let scratch = tollgate_sandbox::remove_stale_run_dirs();
    tollgate_sandbox::cgroup::cleanup_stale();
    if runs + scratch > 0 {
        println!(
            "gc: removed what killed tollgate processes left: {runs} run dir(s), {scratch} scratch dir(s)"
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn report(what: &str, removal: &Removal) {
    for removed in &removal.removed {
        println!("removed {removed}");
    }
    for kept in &removal.kept_in_use {
        println!("kept {kept}: a run is using it (run `tollgate cache {what}` again later)");
    }
    println!(
        "{what}: removed {} snapshot(s), freed {}",
        removal.removed.len(),
        size(removal.freed)
    );
}

/// Whole seconds, the way people read ages.
fn duration(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
