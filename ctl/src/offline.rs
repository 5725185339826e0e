//! Verbs that need no daemon: `config check`, `init`, `rotate-token`, `completions`, man pages.

use crate::client::exit;
use crate::display::Format;
use orchestrator_core::config::{Config, DEFAULT_CONFIG_PATH};
use orchestrator_core::credentials::{self, Step};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

pub fn config_check(path: Option<PathBuf>, format: Format) -> ExitCode {
    let path = path.unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
    match Config::load(&path) {
        Ok(cfg) => {
            if format == Format::Json {
                println!(
                    "{}",
                    json!({"path": path, "valid": true, "mode": cfg.mode, "rules": cfg.routing.rules.len(), "warnings": cfg.warnings, "errors": []})
                );
            } else {
                for w in &cfg.warnings {
                    println!("warning: {w}");
                }
                println!(
                    "{}: valid (mode {}, {} rules, fingerprint {})",
                    path.display(),
                    cfg.mode,
                    cfg.routing.rules.len(),
                    cfg.routing_fingerprint()
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            if format == Format::Json {
                let errors: Vec<String> = e.errors.iter().map(|i| i.to_string()).collect();
                println!(
                    "{}",
                    json!({"path": path, "valid": false, "errors": errors, "warnings": []})
                );
            }
            for issue in &e.errors {
                eprintln!("error: {}: {issue}", e.source);
            }
            ExitCode::from(exit::CONFIG)
        }
    }
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
) -> ExitCode {
    let config = config.unwrap_or_else(|| {
        if nix::unistd::Uid::effective().is_root() {
            PathBuf::from(DEFAULT_CONFIG_PATH)
        } else {
            orchestrator_core::paths::default_state_dir().with_file_name("orchestrator.toml")
        }
    });
    let state_dir = state_dir.unwrap_or_else(|| state_dir_default(&config));
    match credentials::init(&config, &state_dir, force) {
        Ok(steps) => {
            let mut problem = false;
            let mut lines = Vec::new();
            for s in &steps {
                lines.push(match s {
                    Step::Created(p) => format!("created {}", p.display()),
                    Step::Exists(p) => format!("exists  {}", p.display()),
                    Step::Replaced(p) => format!("replaced {}", p.display()),
                    Step::Problem(m) => {
                        problem = true;
                        format!("ERROR   {m}")
                    }
                });
            }
            if format == Format::Json {
                println!("{}", json!({"steps": lines, "ok": !problem}));
            } else {
                for l in &lines {
                    println!("{l}");
                }
            }
            if problem {
                ExitCode::from(exit::FAILED)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("orchctl: init failed: {e}");
            ExitCode::from(exit::FAILED)
        }
    }
}

pub fn rotate_token(state_dir: Option<PathBuf>, format: Format) -> ExitCode {
    let state_dir = state_dir.unwrap_or_else(|| state_dir_default(Path::new(DEFAULT_CONFIG_PATH)));
    match credentials::rotate(&state_dir) {
        Ok(path) => {
            if format == Format::Json {
                println!("{}", json!({"token": path}));
            } else {
                println!("wrote a new token to {}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("orchctl: rotate-token failed: {e}");
            ExitCode::from(exit::FAILED)
        }
    }
}

pub fn completions(shell: clap_complete::Shell) -> ExitCode {
    let mut cmd = crate::command();
    clap_complete::generate(shell, &mut cmd, "orchctl", &mut std::io::stdout());
    ExitCode::SUCCESS
}

pub fn man(dir: &Path) -> ExitCode {
    let cmd = crate::command();
    let result = std::fs::create_dir_all(dir).and_then(|_| clap_mangen::generate_to(cmd, dir));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("orchctl: cannot write man pages: {e}");
            ExitCode::from(exit::FAILED)
        }
    }
}
