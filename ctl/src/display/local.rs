//! What `orchctl` renders without a daemon: `config check`, `init` and `rotate-token`.

use super::{Format, Output};
use crate::client::exit;
use orchestrator_core::config::{Config, ConfigErrors};
use orchestrator_core::credentials::Step;
use serde_json::json;
use std::io;
use std::path::Path;

/// `config check`: the warnings and a one-line verdict, or every error found (on `err`, each with
/// its source, as the daemon would log them).
pub fn config_check(
    path: &Path,
    result: &Result<Config, ConfigErrors>,
    format: Format,
    o: &mut Output,
) -> io::Result<u8> {
    match result {
        Ok(cfg) => {
            if format == Format::Json {
                writeln!(
                    o.out,
                    "{}",
                    json!({"path": path, "valid": true, "mode": cfg.mode, "rules": cfg.routing.rules.len(), "warnings": cfg.warnings, "errors": []})
                )?;
            } else {
                for w in &cfg.warnings {
                    writeln!(o.out, "warning: {w}")?;
                }
                writeln!(
                    o.out,
                    "{}: valid (mode {}, {} rules, fingerprint {})",
                    path.display(),
                    cfg.mode,
                    cfg.routing.rules.len(),
                    cfg.routing_fingerprint()
                )?;
            }
            Ok(exit::OK)
        }
        Err(e) => {
            if format == Format::Json {
                let errors: Vec<String> = e.errors.iter().map(|i| i.to_string()).collect();
                writeln!(
                    o.out,
                    "{}",
                    json!({"path": path, "valid": false, "errors": errors, "warnings": []})
                )?;
            }
            for issue in &e.errors {
                writeln!(o.err, "error: {}: {issue}", e.source)?;
            }
            Ok(exit::CONFIG)
        }
    }
}

/// `init`: one line per file or directory, and whether anything needs the operator.
pub fn init_steps(steps: &[Step], format: Format, o: &mut Output) -> io::Result<u8> {
    let mut problem = false;
    let mut lines = Vec::new();
    for s in steps {
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
        writeln!(o.out, "{}", json!({"steps": lines, "ok": !problem}))?;
    } else {
        for l in &lines {
            writeln!(o.out, "{l}")?;
        }
    }
    Ok(if problem { exit::FAILED } else { exit::OK })
}

/// `rotate-token`: where the new token was written.
pub fn token_rotated(path: &Path, format: Format, o: &mut Output) -> io::Result<u8> {
    if format == Format::Json {
        writeln!(o.out, "{}", json!({"token": path}))?;
    } else {
        writeln!(o.out, "wrote a new token to {}", path.display())?;
    }
    Ok(exit::OK)
}
