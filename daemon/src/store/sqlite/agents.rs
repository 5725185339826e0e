//! Agents' pauses (metadata keys `agent_pause:<agent>`), operators' lifts of budget pauses
//! (`budget_lift:<agent>`) and the usage their tasks reported.

use super::batch::Batch;
use crate::store::{
    BudgetLift, StoreError, StoredPause, UsageRow, LIFT_KEY_PREFIX, PAUSE_KEY_PREFIX,
};
use orchestrator_proto::task::TaskKind;
use rusqlite::{params, Connection};

fn decode<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Sql(format!("{what}: {e}")))
}

pub fn agent_pauses(conn: &Connection) -> Result<Vec<StoredPause>, StoreError> {
    keyed(conn, PAUSE_KEY_PREFIX, "agent pause")
}

pub fn budget_lifts(conn: &Connection) -> Result<Vec<BudgetLift>, StoreError> {
    keyed(conn, LIFT_KEY_PREFIX, "budget lift")
}

/// The values of the metadata keys under `prefix` (which ends in `:`), decoded, in key order.
fn keyed<T: serde::de::DeserializeOwned>(
    conn: &Connection,
    prefix: &str,
    what: &str,
) -> Result<Vec<T>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT value FROM meta WHERE key >= ?1 AND key < ?2 ORDER BY key")?;
    let (lo, hi) = key_range(prefix);
    let rows = stmt.query_map(params![lo, hi], |r| r.get::<_, String>(0))?;
    let mut out = Vec::new();
    for value in rows {
        out.push(decode(what, &value?)?);
    }
    Ok(out)
}

/// Every key with the prefix (ending in `:`) sorts in `[prefix, prefix with its `:` raised)`.
fn key_range(prefix: &str) -> (String, String) {
    let lo = prefix.to_string();
    let mut hi = lo.clone();
    hi.pop();
    hi.push(char::from(b':' + 1));
    (lo, hi)
}

pub fn usage_since(conn: &Connection, since_ms: i64) -> Result<Vec<UsageRow>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT agent, kind, started_at, usage FROM tasks \
         WHERE usage IS NOT NULL AND started_at >= ?1 ORDER BY started_at, id",
    )?;
    let rows = stmt.query_map([since_ms], |r| {
        Ok((
            r.get::<_, Option<String>>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, String>(3)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (agent, kind, started_ms, usage) = row?;
        out.push(UsageRow {
            agent,
            kind: kind.parse::<TaskKind>().map_err(StoreError::Sql)?,
            started_ms,
            usage: decode("task usage", &usage)?,
        });
    }
    Ok(out)
}

impl Batch<'_> {
    pub fn set_budget_lift(&mut self, lift: &BudgetLift) -> Result<(), StoreError> {
        let value =
            serde_json::to_string(lift).map_err(|e| StoreError::Sql(format!("encode: {e}")))?;
        self.set_meta(&format!("{LIFT_KEY_PREFIX}{}", lift.agent), &value)
    }

    pub fn set_agent_pause(
        &mut self,
        agent: &str,
        pause: Option<&StoredPause>,
    ) -> Result<(), StoreError> {
        let key = format!("{PAUSE_KEY_PREFIX}{agent}");
        match pause {
            Some(p) => {
                let value = serde_json::to_string(p)
                    .map_err(|e| StoreError::Sql(format!("encode: {e}")))?;
                self.set_meta(&key, &value)
            }
            None => {
                self.tx()
                    .prepare_cached("DELETE FROM meta WHERE key = ?1")?
                    .execute([key])?;
                Ok(())
            }
        }
    }
}
