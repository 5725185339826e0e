//! Verbs that need no daemon: `config check`, `init`, `rotate-token`, `completions`, man pages.
//! Each does its work here and leaves the rendering to [`crate::display`].

use crate::client::exit;
use crate::display::{self, Format, Output};
use orchestrator_core::config::{Config, DEFAULT_CONFIG_PATH};
use orchestrator_core::credentials;
use std::io;
use std::path::{Path, PathBuf};

pub fn config_check(path: Option<PathBuf>, format: Format, o: &mut Output) -> io::Result<u8> {
    let path = path.unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
    display::config_check(&path, &Config::load(&path), format, o)
}

fn state_dir_default(config: &Path) -> PathBuf {
    Config::load(config)
        .ok()
        .and_then(|c| c.state_dir)
        .unwrap_or_else(orchestrator_core::paths::default_state_dir)
}

pub fn init(
    config: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    force: bool,
    format: Format,
    o: &mut Output,
) -> io::Result<u8> {
    let config = config.unwrap_or_else(|| {
        if nix::unistd::Uid::effective().is_root() {
            PathBuf::from(DEFAULT_CONFIG_PATH)
        } else {
            orchestrator_core::paths::default_state_dir().with_file_name("orchestrator.toml")
        }
    });
    let state_dir = state_dir.unwrap_or_else(|| state_dir_default(&config));
    match credentials::init(&config, &state_dir, force) {
        Ok(steps) => display::init_steps(&steps, format, o),
        Err(e) => {
            writeln!(o.err, "orchctl: init failed: {e}")?;
            Ok(exit::FAILED)
        }
    }
}

pub fn rotate_token(state_dir: Option<PathBuf>, format: Format, o: &mut Output) -> io::Result<u8> {
    let state_dir = state_dir.unwrap_or_else(|| state_dir_default(Path::new(DEFAULT_CONFIG_PATH)));
    match credentials::rotate(&state_dir) {
        Ok(path) => display::token_rotated(&path, format, o),
        Err(e) => {
            writeln!(o.err, "orchctl: rotate-token failed: {e}")?;
            Ok(exit::FAILED)
        }
    }
}

pub fn completions(shell: clap_complete::Shell, o: &mut Output) -> io::Result<u8> {
    let mut cmd = crate::cli::command();
    // Generated into memory first: the generator panics on a failed write (a closed pipe), and
    // a write error is reported here instead.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "orchctl", &mut script);
    o.out.write_all(&script)?;
    Ok(exit::OK)
}

pub fn man(dir: &Path, o: &mut Output) -> io::Result<u8> {
    let cmd = crate::cli::command();
    let result = std::fs::create_dir_all(dir).and_then(|_| clap_mangen::generate_to(cmd, dir));
    match result {
        Ok(()) => Ok(exit::OK),
        Err(e) => {
            writeln!(o.err, "orchctl: cannot write man pages: {e}")?;
            Ok(exit::FAILED)
        }
    }
}
