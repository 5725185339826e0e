//! graphile-worker (a PostgreSQL job queue, npm) installed with the machine's npm into the cache
//! (`cache/node`), driven by `graphile_driver.js` with the machine's node through the protocol of
//! `driver.rs`.

use super::{driver, install};
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::{Command, Stdio};

/// The release this benchmark installs: the newest that runs on Node 20 (0.18 wants Node ≥ 22.18).
pub const VERSION: &str = "0.17.3";
/// Its PostgreSQL client, pinned too.
const PG_VERSION: &str = "8.23.1";

/// What an added job is once `add_job` returns, and what a finished job costs.
pub const DURABILITY: &str = "fsync: `graphile_worker.add_job` is one PostgreSQL transaction per \
job, `fsync = on`, `synchronous_commit = on` (WAL flushed before it returns)";

const DRIVER: &str = include_str!("graphile_driver.js");

/// `node` from PATH and `cache/node/node_modules/graphile-worker`, installed there when missing.
pub fn locate(cache: &Path, install: bool) -> Result<driver::Tools> {
    let node = install::on_path("node").context("node is not on PATH")?;
    let prefix = cache.join("node");
    let modules = prefix.join("node_modules");
    let check = || {
        Command::new(&node)
            .args([
                "-e",
                &format!(
                    "if (require('graphile-worker/package.json').version !== '{VERSION}') process.exit(1); require('pg')"
                ),
            ])
            .env("NODE_PATH", &modules)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if !check() {
        if !install {
            bail!("no graphile-worker {VERSION} in {}", modules.display());
        }
        std::fs::create_dir_all(&prefix)?;
        install::step(
            "installing graphile-worker",
            Command::new(install::on_path("npm").context("npm is not on PATH")?)
                .args(["install", "--no-audit", "--no-fund", "--prefix"])
                .arg(&prefix)
                .arg(format!("graphile-worker@{VERSION}"))
                .arg(format!("pg@{PG_VERSION}")),
        )?;
        if !check() {
            bail!(
                "npm installed no usable graphile-worker {VERSION} in {}",
                modules.display()
            );
        }
    }
    let script = prefix.join("graphile_driver.js");
    std::fs::write(&script, DRIVER)?;
    let version = install::first_line(
        Command::new(&node)
            .args([
                "-e",
                "console.log(`graphile-worker ${require('graphile-worker/package.json').version}, \
                 pg ${require('pg/package.json').version}, Node ${process.versions.node}`)",
            ])
            .env("NODE_PATH", &modules),
    )?;
    Ok(driver::Tools {
        name: "graphile-worker",
        program: node,
        script,
        env: vec![("NODE_PATH".into(), modules)],
        version,
    })
}
