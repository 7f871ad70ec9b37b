//! `tollgate ca init`.

use std::process::ExitCode;

use anyhow::Result;
use tollgate_certs::create_ca;
use tollgate_run::state::StateDir;

use crate::cli::CaInitArgs;

pub fn init(args: CaInitArgs, state: &StateDir) -> Result<ExitCode> {
    let dir = args.dir.unwrap_or_else(|| state.ca_dir());
    let files = create_ca(&dir)?;
    println!(
        "created {} and {}",
        files.cert.display(),
        files.key.display()
    );
    println!(
        "clients must trust {} for intercepted HTTPS; see README, \"TLS interception\"",
        files.cert.display()
    );
    Ok(ExitCode::SUCCESS)
}
