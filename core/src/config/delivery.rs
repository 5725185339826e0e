//! `[delivery]`: the optional command that hands finished results on, and its time limit.

use super::validator::Validator;
use serde::Deserialize;
use std::time::Duration;
use toml::Spanned;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryConfig {
    pub command: Vec<String>,
    pub timeout: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDelivery {
    command: Spanned<Vec<String>>,
    timeout: Option<Spanned<String>>,
}

impl Validator<'_> {
    pub(super) fn delivery(&mut self, raw: Option<RawDelivery>) -> Option<DeliveryConfig> {
        raw.map(|d| {
            if d.command.get_ref().is_empty() {
                self.err(
                    "delivery.command",
                    Some(&d.command),
                    "must be a non-empty argv list",
                );
            }
            let timeout = self.positive_duration(
                "delivery.timeout",
                d.timeout.as_ref(),
                Duration::from_secs(300),
            );
            DeliveryConfig {
                command: d.command.into_inner(),
                timeout,
            }
        })
    }
}
