//! `tollgate audit verify`: the hash chain of audit logs.

use std::io::BufReader;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use tollgate_proxy::chain::{verify as verify_chain, Verified};

pub fn verify(files: &[PathBuf]) -> Result<ExitCode> {
    let mut whole = true;
    for path in files {
        let file =
            std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        let verdict = verify_chain(BufReader::new(file))
            .with_context(|| format!("cannot read {}", path.display()))?;
        match verdict {
            Verified::Whole { records } => {
                println!("ok  {}: {records} records, chain whole", path.display())
            }
            Verified::Broken { line, why } => {
                println!("bad {}:{line}: {why}", path.display());
                whole = false;
            }
        }
    }
    Ok(if whole {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
