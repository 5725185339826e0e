//! procrastinate (a PostgreSQL job queue, PyPI) in a virtualenv in the cache, driven by
//! `procrastinate_driver.py` through the protocol of `driver.rs`.

use super::{driver, install};
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::{Command, Stdio};

/// The release this benchmark installs.
pub const VERSION: &str = "3.10.0";

/// What a deferred job is once `defer` returns: the commit of its own transaction.
pub const DURABILITY: &str = "fsync: one PostgreSQL transaction per job, `fsync = on`, \
`synchronous_commit = on` (WAL flushed before `defer` returns)";

const DRIVER: &str = include_str!("procrastinate_driver.py");

/// The virtualenv in `cache/venv`, made and filled when it lacks procrastinate.
pub fn locate(cache: &Path, install: bool) -> Result<driver::Tools> {
    let venv = cache.join("venv");
    let python = venv.join("bin/python");
    let check = |python: &Path| {
        Command::new(python)
            .args(["-c", &format!("import procrastinate, psycopg, psycopg_pool; assert procrastinate.__version__ == '{VERSION}'")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if !check(&python) {
        if !install {
            bail!("no procrastinate {VERSION} in {}", venv.display());
        }
        if !python.is_file() {
            let system = install::on_path("python3").context("python3 is not on PATH")?;
            install::step(
                "making a virtualenv for procrastinate",
                Command::new(system).args(["-m", "venv"]).arg(&venv),
            )?;
        }
        install::step(
            "installing procrastinate",
            Command::new(&python).args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                &format!("procrastinate=={VERSION}"),
                "psycopg[binary,pool]",
            ]),
        )?;
    }
    let driver = cache.join("procrastinate_driver.py");
    std::fs::write(&driver, DRIVER)?;
    let version = install::first_line(Command::new(&python).args([
        "-c",
        "import importlib.metadata as m, platform; \
         print(f\"procrastinate {m.version('procrastinate')}, psycopg {m.version('psycopg')}, Python {platform.python_version()}\")",
    ]))?;
    Ok(driver::Tools {
        name: "procrastinate",
        program: python,
        script: driver,
        env: Vec::new(),
        version,
    })
}
