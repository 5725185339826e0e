//! pueue (a task-queue daemon and CLI over a Unix socket, the closest relative of ours): found on
//! PATH or installed with `cargo install` into the cache, and run as a `pueued` of its own with a
//! private configuration, state directory and socket.

use super::install;
use crate::stats::Samples;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The release this benchmark installs (`--locked`, so the figure does not move with its
/// dependencies).
pub const VERSION: &str = "4.0.4";

/// What pueue promises about an added task, read from its source (`State::save` in
/// `pueue/src/daemon/internal_state/state.rs`, called by the `add` handler before it answers).
pub const DURABILITY: &str = "no fsync: each add rewrites state.json (write + rename) without \
flushing it; survives a crash of pueued, not of the machine";

pub struct Tools {
    pub pueue: PathBuf,
    pub pueued: PathBuf,
    /// `pueue --version`, e.g. `pueue 4.0.4`.
    pub version: String,
}

/// `pueue` and `pueued` from PATH, else from the cache, else installed there.
pub fn locate(cache: &Path, install: bool) -> Result<Tools> {
    let root = cache.join("cargo");
    let (pueue, pueued) = match (install::on_path("pueue"), install::on_path("pueued")) {
        (Some(a), Some(b)) => (a, b),
        _ => {
            let bin = root.join("bin");
            if !bin.join("pueued").is_file() {
                if !install {
                    bail!("not on PATH nor in {}", bin.display());
                }
                // The build directory is kept too, so that an interrupted build resumes.
                install::step(
                    "installing pueue",
                    Command::new(install::on_path("cargo").context("cargo is not on PATH")?)
                        .args([
                            "install",
                            "pueue",
                            "--locked",
                            "--version",
                            VERSION,
                            "--root",
                        ])
                        .arg(&root)
                        .env("CARGO_TARGET_DIR", cache.join("cargo-target")),
                )?;
            }
            (bin.join("pueue"), bin.join("pueued"))
        }
    };
    let version = install::first_line(Command::new(&pueue).arg("--version"))?;
    Ok(Tools {
        pueue,
        pueued,
        version,
    })
}

/// A running `pueued` with its own configuration; stopped when dropped.
pub struct Daemon {
    child: Child,
    config: PathBuf,
    pueue: PathBuf,
}

impl Daemon {
    /// Start `pueued` with everything under `dir` (no TCP: a Unix socket in `dir`).
    pub fn start(tools: &Tools, dir: &Path) -> Result<Daemon> {
        let state = dir.join("pueue");
        std::fs::create_dir_all(&state)?;
        let config = dir.join("pueue.yml");
        std::fs::write(&config, config_yaml(&state))?;
        let log = std::fs::File::create(dir.join("pueued.log"))?;
        let child = Command::new(&tools.pueued)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", tools.pueued.display()))?;
        let mut d = Daemon {
            child,
            config,
            pueue: tools.pueue.clone(),
        };
        let started = Instant::now();
        loop {
            if d.quiet(&["status"])? {
                return Ok(d);
            }
            if let Some(status) = d.child.try_wait()? {
                bail!(
                    "pueued exited with {status}; see {}",
                    dir.join("pueued.log").display()
                );
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("pueued was not ready after 30 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `pueue ARGS` against this daemon, output discarded; whether it succeeded.
    pub fn quiet(&self, args: &[&str]) -> Result<bool> {
        Ok(Command::new(&self.pueue)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .with_context(|| format!("cannot run {}", self.pueue.display()))?
            .success())
    }

    /// `pueue ARGS` as a whole process, `runs` times; the wall time of each.
    pub fn runs(&self, args: &[&str], runs: usize) -> Result<Samples> {
        let mut s = Samples::default();
        for _ in 0..runs {
            let t = Instant::now();
            let ok = self.quiet(args)?;
            s.push(t.elapsed());
            if !ok {
                bail!("pueue {} failed", args.join(" "));
            }
        }
        Ok(s)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Ok(None) = self.child.try_wait() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.wait();
    }
}

/// Every path of pueue's under `state`, so that nothing of the user's own pueue is touched.
fn config_yaml(state: &Path) -> String {
    let s = state.display();
    format!(
        "shared:\n  pueue_directory: \"{s}\"\n  runtime_directory: \"{s}\"\n  use_unix_socket: true\n  unix_socket_path: \"{s}/pueue.sock\"\n  pid_path: \"{s}/pueue.pid\"\n  alias_file: \"{s}/pueue_aliases.yml\"\n"
    )
}
