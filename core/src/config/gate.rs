//! `[gate]`: the synthetic gate's fixture file and the shadow gate's window and minimum count.

use super::validator::Validator;
use crate::fixtures::{FixtureSet, BUILTIN_FIXTURES};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

#[derive(Debug, Clone)]
pub struct GateConfig {
    pub fixtures_path: Option<PathBuf>,
    pub fixtures: FixtureSet,
    pub shadow_window: Duration,
    pub min_shadow_tasks: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGate {
    fixtures: Option<Spanned<String>>,
    shadow_window: Option<Spanned<String>>,
    min_shadow_tasks: Option<u64>,
}

impl Validator<'_> {
    /// `config_path` anchors a relative fixture path to the config file's directory.
    pub(super) fn gate(&mut self, raw: Option<RawGate>, config_path: Option<&Path>) -> GateConfig {
        let mut gate = GateConfig {
            fixtures_path: None,
            fixtures: BUILTIN_FIXTURES.clone(),
            shadow_window: Duration::from_secs(24 * 3600),
            min_shadow_tasks: 10,
        };
        if let Some(g) = raw {
            gate.shadow_window = self.positive_duration(
                "gate.shadow_window",
                g.shadow_window.as_ref(),
                gate.shadow_window,
            );
            if let Some(n) = g.min_shadow_tasks {
                gate.min_shadow_tasks = n;
            }
            if let Some(f) = g.fixtures {
                let p = resolve_relative(config_path, f.get_ref());
                match FixtureSet::load(&p) {
                    Ok(set) => {
                        gate.fixtures = set;
                        gate.fixtures_path = Some(p);
                    }
                    Err(msg) => self.err("gate.fixtures", Some(&f), msg),
                }
            }
        }
        gate
    }
}

pub(super) fn resolve_relative(config_path: Option<&Path>, value: &str) -> PathBuf {
    let p = PathBuf::from(value);
    if p.is_absolute() {
        return p;
    }
    match config_path.and_then(Path::parent) {
        Some(dir) => dir.join(p),
        None => p,
    }
}
