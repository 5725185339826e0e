//! Agents' pauses (metadata keys `agent_pause:<agent>`), operators' lifts of budget pauses
//! (`budget_lift:<agent>`) and the usage their tasks reported.

use super::tx::Tx;
use crate::store::{
    BudgetLift, StoreError, StoredPause, UsageRow, LIFT_KEY_PREFIX, PAUSE_KEY_PREFIX,
};
use deadpool_postgres::Client;
use orchestrator_proto::task::TaskKind;

fn decode<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Sql(format!("{what}: {e}")))
}

fn pg(e: tokio_postgres::Error) -> StoreError {
    super::pg_error(e)
}

pub(super) async fn agent_pauses(c: &Client) -> Result<Vec<StoredPause>, StoreError> {
    keyed(c, PAUSE_KEY_PREFIX, "agent pause").await
}

pub(super) async fn budget_lifts(c: &Client) -> Result<Vec<BudgetLift>, StoreError> {
    keyed(c, LIFT_KEY_PREFIX, "budget lift").await
}

/// The values of the metadata keys under `prefix`, decoded, in key order.
async fn keyed<T: serde::de::DeserializeOwned>(
    c: &Client,
    prefix: &str,
    what: &str,
) -> Result<Vec<T>, StoreError> {
    let rows = c
        .query(
            "SELECT value FROM meta WHERE starts_with(key, $1) ORDER BY key",
            &[&prefix],
        )
        .await
        .map_err(pg)?;
    rows.iter()
        .map(|r| decode(what, r.get::<_, &str>(0)))
        .collect()
}

pub(super) async fn usage_since(c: &Client, since_ms: i64) -> Result<Vec<UsageRow>, StoreError> {
    let rows = c
        .query(
            "SELECT agent, kind, started_at, usage FROM tasks \
             WHERE usage IS NOT NULL AND started_at >= $1 ORDER BY started_at, id",
            &[&since_ms],
        )
        .await
        .map_err(pg)?;
    rows.iter()
        .map(|r| {
            Ok(UsageRow {
                agent: r.get(0),
                kind: r
                    .get::<_, &str>(1)
                    .parse::<TaskKind>()
                    .map_err(StoreError::Sql)?,
                started_ms: r.get(2),
                usage: decode("task usage", r.get::<_, &str>(3))?,
            })
        })
        .collect()
}

impl Tx<'_> {
    pub(super) async fn set_budget_lift(&mut self, lift: &BudgetLift) -> Result<(), StoreError> {
        let value =
            serde_json::to_string(lift).map_err(|e| StoreError::Sql(format!("encode: {e}")))?;
        self.set_meta(&format!("{LIFT_KEY_PREFIX}{}", lift.agent), &value)
            .await
    }

    pub(super) async fn set_agent_pause(
        &mut self,
        agent: &str,
        pause: Option<&StoredPause>,
    ) -> Result<(), StoreError> {
        let key = format!("{PAUSE_KEY_PREFIX}{agent}");
        match pause {
            Some(p) => {
                let value = serde_json::to_string(p)
                    .map_err(|e| StoreError::Sql(format!("encode: {e}")))?;
                self.set_meta(&key, &value).await
            }
            None => {
                self.exec("DELETE FROM meta WHERE key = $1", &[&key])
                    .await?;
                Ok(())
            }
        }
    }
}
