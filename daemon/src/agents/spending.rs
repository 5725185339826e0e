//! Budgets: what each agent, and all agents together, spent today and this month (days and months
//! in the configured `timezone`), from the costs their specialists report. At 80 % of a cap the
//! daemon raises `budget.warning`; at 100 % `budget.exhausted`, and pauses the agent (all agents,
//! for the global `[budget]`) until the day or month ends: queued tasks wait, running ones finish.
//! `orchctl agent resume` lifts such a pause for the rest of that period; the lift is stored, so a
//! restart within the period does not pause the agent again.
//!
//! The sums live in memory, loaded from the store's usage at start and added to by every outcome.
//! On a shared store every node's runs count: there the sums are taken from the store at each
//! heartbeat instead ([`Spending::refresh`]), and the thresholds they cross are announced by the
//! one node that claims each in the store (see the `cluster` module).

use crate::config::{Budget, Config, Periods};
use crate::store::cluster::Spent;
use crate::store::{BudgetLift, UsageRow};
use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

/// The share of a cap at which `budget.warning` is raised.
pub const WARN_AT: f64 = 0.8;
/// The scope of the global `[budget]` in the sums.
const ALL: &str = "*";

#[derive(Default)]
pub struct Spending {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    day_start: i64,
    month_start: i64,
    /// Spent per scope (an agent, or [`ALL`]) since `day_start` and since `month_start`.
    day: HashMap<String, f64>,
    month: HashMap<String, f64>,
    /// (scope, period, period start) already warned about, or exhausted.
    warned: HashSet<(String, Period, i64)>,
    exhausted: HashSet<(String, Period, i64)>,
    /// (agent, period start): an operator lifted the agent's budget pause for this period.
    lifted: HashSet<(String, i64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Period {
    Day,
    Month,
}

impl Period {
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "daily",
            Period::Month => "monthly",
        }
    }
}

/// A period a budget caps, as [`Inner::capped`] finds it.
struct Capped {
    period: Period,
    cap: f64,
    spent: f64,
    key: (String, Period, i64),
    ends: i64,
}

/// A threshold a charge crossed.
#[derive(Debug, Clone, PartialEq)]
pub struct Crossing {
    /// The agent, or `None` for the global budget.
    pub agent: Option<String>,
    pub period: Period,
    pub spent: f64,
    pub cap: f64,
    pub exhausted: bool,
    /// When the period ends, in milliseconds since the epoch.
    pub ends: i64,
}

impl Crossing {
    /// The name of this threshold in its period, the same on every node: what a node claims
    /// before it announces the crossing on a shared store.
    pub fn key(&self) -> String {
        format!(
            "{}:{}:{}:{}",
            self.agent.as_deref().unwrap_or(ALL),
            self.period.as_str(),
            self.ends,
            if self.exhausted {
                "exhausted"
            } else {
                "warning"
            }
        )
    }
}

impl Inner {
    /// Add to the sums of `agent` and of all agents.
    fn add(&mut self, agent: &str, day: f64, month: f64) {
        for scope in [agent, ALL] {
            *self.day.entry(scope.to_string()).or_default() += day;
            *self.month.entry(scope.to_string()).or_default() += month;
        }
    }

    /// Note the operators' lifts that hold in the periods `p` names (earlier ones are left out).
    fn note_lifts(&mut self, lifts: &[BudgetLift], p: &Periods) {
        for l in lifts {
            if l.day_start == p.day_start {
                self.lifted.insert((l.agent.clone(), p.day_start));
            }
            if l.month_start == p.month_start {
                self.lifted.insert((l.agent.clone(), p.month_start));
            }
        }
    }

    fn roll(&mut self, p: &Periods) {
        if p.day_start != self.day_start {
            self.day.clear();
            self.day_start = p.day_start;
        }
        if p.month_start != self.month_start {
            self.month.clear();
            self.month_start = p.month_start;
        }
    }

    /// Each period `budget` caps for `scope`: what the scope spent in it, against which cap, the
    /// key its thresholds are remembered by, and when it ends.
    fn capped(&self, scope: &str, budget: &Budget, p: &Periods) -> Vec<Capped> {
        [
            (
                Period::Day,
                budget.daily_usd,
                &self.day,
                p.day_start,
                p.next_day,
            ),
            (
                Period::Month,
                budget.monthly_usd,
                &self.month,
                p.month_start,
                p.next_month,
            ),
        ]
        .into_iter()
        .filter_map(|(period, cap, sums, start, ends)| {
            Some(Capped {
                period,
                cap: cap?,
                spent: sums.get(scope).copied().unwrap_or(0.0),
                key: (scope.to_string(), period, start),
                ends,
            })
        })
        .collect()
    }

    fn check(&mut self, scope: &str, budget: &Budget, p: &Periods, out: &mut Vec<Crossing>) {
        for Capped {
            period,
            cap,
            spent,
            key,
            ends,
        } in self.capped(scope, budget, p)
        {
            let exhausted = spent >= cap;
            let new = if exhausted {
                self.exhausted.insert(key.clone())
            } else {
                spent >= cap * WARN_AT && self.warned.insert(key.clone())
            };
            if exhausted {
                self.warned.insert(key);
            }
            if new {
                out.push(Crossing {
                    agent: (scope != ALL).then(|| scope.to_string()),
                    period,
                    spent,
                    cap,
                    exhausted,
                    ends,
                });
            }
        }
    }
}

impl Spending {
    fn inner(&self) -> MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Start from what the store holds for this month. A warning threshold the sums already
    /// crossed was announced before this start and is not announced again. An exhausted one is
    /// taken as acted on only where a budget pause is in force (`budget_paused`, from the stored
    /// pauses) or an operator lifted the pause for that period (`lifts`, the stored lifts; those
    /// of earlier periods are left out): otherwise (a cap added or lowered while the daemon was
    /// stopped) the next charge crosses it and pauses.
    pub fn load(
        &self,
        cfg: &Config,
        rows: &[UsageRow],
        lifts: &[BudgetLift],
        p: &Periods,
        budget_paused: &dyn Fn(&str) -> bool,
    ) {
        let mut inner = self.inner();
        inner.roll(p);
        inner.day.clear();
        inner.month.clear();
        inner.lifted.clear();
        inner.note_lifts(lifts, p);
        for r in rows {
            let (Some(agent), Some(cost)) = (r.agent.as_deref(), r.usage.cost_usd) else {
                continue;
            };
            let within = |start: i64| if r.started_ms >= start { cost } else { 0.0 };
            inner.add(agent, within(p.day_start), within(p.month_start));
        }
        let scopes: Vec<String> = inner.month.keys().cloned().collect();
        for scope in scopes {
            // The budget, and the agents whose pause or lift counts for it.
            let (budget, agents): (_, Vec<&str>) = match scope.as_str() {
                ALL => (
                    &cfg.budget,
                    cfg.configured_agents.iter().map(String::as_str).collect(),
                ),
                agent => match cfg.agent(agent) {
                    Some(a) => (&a.budget, vec![agent]),
                    None => continue,
                },
            };
            let paused = agents.iter().any(|a| budget_paused(a));
            for c in inner.capped(&scope, budget, p) {
                if c.spent >= c.cap * WARN_AT {
                    inner.warned.insert(c.key.clone());
                }
                let start = c.key.2;
                let lifted = agents
                    .iter()
                    .any(|a| inner.lifted.contains(&(a.to_string(), start)));
                if c.spent >= c.cap && (paused || lifted) {
                    inner.exhausted.insert(c.key);
                }
            }
        }
    }

    /// Add a run's cost; answers the thresholds it crossed, each once per period.
    pub fn charge(&self, cfg: &Config, agent: &str, cost: f64, p: &Periods) -> Vec<Crossing> {
        let mut inner = self.inner();
        inner.roll(p);
        inner.add(agent, cost, cost);
        let mut out = Vec::new();
        if let Some(a) = cfg.agent(agent) {
            inner.check(agent, &a.budget, p, &mut out);
        }
        inner.check(ALL, &cfg.budget, p, &mut out);
        out
    }

    /// On a shared store: take the sums of every node's runs as the store holds them, and the
    /// operators' lifts stored through any node. Answers the thresholds the sums cross that were
    /// not crossed before, each once per period (so each node finds a crossing once; which node
    /// announces it is settled in the store).
    pub fn refresh(
        &self,
        cfg: &Config,
        spent: &[Spent],
        lifts: &[BudgetLift],
        p: &Periods,
    ) -> Vec<Crossing> {
        let mut inner = self.inner();
        inner.roll(p);
        inner.day.clear();
        inner.month.clear();
        for s in spent {
            inner.add(&s.agent, s.day_usd, s.month_usd);
        }
        inner.note_lifts(lifts, p);
        let mut out = Vec::new();
        for s in spent {
            if let Some(a) = cfg.agent(&s.agent) {
                inner.check(&s.agent, &a.budget, p, &mut out);
            }
        }
        inner.check(ALL, &cfg.budget, p, &mut out);
        out
    }

    /// Take back a crossing [`Spending::refresh`] answered, so that the next refresh finds it
    /// again (its announcement could not be claimed).
    pub fn forget(&self, c: &Crossing, p: &Periods) {
        let start = match c.period {
            Period::Day => p.day_start,
            Period::Month => p.month_start,
        };
        let key = (
            c.agent.as_deref().unwrap_or(ALL).to_string(),
            c.period,
            start,
        );
        let mut inner = self.inner();
        if c.exhausted {
            inner.exhausted.remove(&key);
        } else {
            inner.warned.remove(&key);
        }
    }

    /// (today, this month) for an agent.
    pub fn spent(&self, agent: &str, p: &Periods) -> (f64, f64) {
        let mut inner = self.inner();
        inner.roll(p);
        let get = |m: &HashMap<String, f64>| m.get(agent).copied().unwrap_or(0.0);
        (get(&inner.day), get(&inner.month))
    }

    /// An operator resumed the agent: no budget pauses it again before the month ends (a daily
    /// cap, before the day ends). Answers the lift to store.
    pub fn lift(&self, agent: &str, p: &Periods) -> BudgetLift {
        let mut inner = self.inner();
        inner.lifted.insert((agent.to_string(), p.day_start));
        inner.lifted.insert((agent.to_string(), p.month_start));
        BudgetLift {
            agent: agent.to_string(),
            day_start: p.day_start,
            month_start: p.month_start,
        }
    }

    /// Whether an operator lifted the agent's budget pause for the period starting at `start`.
    pub fn lifted(&self, agent: &str, start: i64) -> bool {
        self.inner().lifted.contains(&(agent.to_string(), start))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn periods(day: i64) -> Periods {
        Periods {
            day_start: day * 100,
            next_day: (day + 1) * 100,
            month_start: 0,
            next_month: 10_000,
        }
    }

    fn cfg() -> Config {
        Config::from_toml(
            "[budget]\nmonthly_usd = 10\n[agents.coder]\ncommand = [\"c\"]\nbudget = { daily_usd = 1 }\n",
            None,
        )
        .unwrap()
    }

    #[test]
    fn warns_at_80_percent_and_exhausts_at_100_once_per_period() {
        let (c, s) = (cfg(), Spending::default());
        assert!(s.charge(&c, "coder", 0.5, &periods(0)).is_empty());
        let w = s.charge(&c, "coder", 0.3, &periods(0));
        assert_eq!(w.len(), 1);
        assert!(!w[0].exhausted && w[0].agent.as_deref() == Some("coder"));
        assert_eq!(w[0].period, Period::Day);
        let x = s.charge(&c, "coder", 0.2, &periods(0));
        assert_eq!(x.len(), 1);
        assert!(x[0].exhausted);
        assert_eq!(x[0].ends, 100);
        assert!(s.charge(&c, "coder", 0.2, &periods(0)).is_empty(), "once");
        // A new day starts from zero.
        assert!(s.charge(&c, "coder", 0.5, &periods(1)).is_empty());
        assert_eq!(s.spent("coder", &periods(1)), (0.5, 1.7));
    }

    #[test]
    fn the_global_budget_counts_every_agent() {
        let (c, s) = (cfg(), Spending::default());
        let mut crossed = Vec::new();
        for day in 0..12 {
            crossed.extend(s.charge(&c, "other", 1.0, &periods(day)));
        }
        let global: Vec<&Crossing> = crossed.iter().filter(|c| c.agent.is_none()).collect();
        assert_eq!(global.len(), 2, "{crossed:?}");
        assert!(!global[0].exhausted && global[1].exhausted);
        assert_eq!(global[1].period, Period::Month);
    }

    fn used_by(agent: &str, cost: f64, started_ms: i64) -> UsageRow {
        UsageRow {
            agent: Some(agent.into()),
            kind: orchestrator_proto::task::TaskKind::Live,
            started_ms,
            usage: orchestrator_proto::task::Usage {
                cost_usd: Some(cost),
                ..Default::default()
            },
        }
    }

    /// A restart does not announce again what the previous run announced: an exhausted budget
    /// whose pause is in force crosses nothing more; one without (a cap added while the daemon
    /// was stopped) is crossed by the next charge, which pauses; a warning is not repeated.
    #[test]
    fn thresholds_crossed_before_a_start_are_not_crossed_again_in_their_period() {
        let c = cfg();
        let paused = Spending::default();
        paused.load(&c, &[used_by("coder", 1.2, 50)], &[], &periods(0), &|a| {
            a == "coder"
        });
        assert_eq!(paused.spent("coder", &periods(0)), (1.2, 1.2));
        assert!(paused.charge(&c, "coder", 0.1, &periods(0)).is_empty());

        let new_cap = Spending::default();
        new_cap.load(&c, &[used_by("coder", 1.2, 50)], &[], &periods(0), &|_| {
            false
        });
        let crossed = new_cap.charge(&c, "coder", 0.1, &periods(0));
        assert_eq!(crossed.len(), 1, "{crossed:?}");
        assert!(crossed[0].exhausted && crossed[0].period == Period::Day);

        let warned = Spending::default();
        warned.load(&c, &[used_by("coder", 0.85, 50)], &[], &periods(0), &|_| {
            false
        });
        assert!(
            warned.charge(&c, "coder", 0.05, &periods(0)).is_empty(),
            "warned once"
        );
        let s = paused;
        // The next day counts afresh.
        let next = s.charge(&c, "coder", 0.9, &periods(1));
        assert_eq!(next.len(), 1, "{next:?}");
        assert_eq!(next[0].period, Period::Day);
        assert!(!next[0].exhausted);
    }

    /// A lift stored before a restart holds for the rest of its day and month: the agent is
    /// counted as lifted and its exhausted cap is not crossed (nor announced) again. A lift of an
    /// earlier day holds for the month only.
    #[test]
    fn a_stored_lift_holds_after_a_restart_for_its_period_only() {
        let c = cfg();
        let today = BudgetLift {
            agent: "coder".into(),
            day_start: 0,
            month_start: 0,
        };
        let s = Spending::default();
        s.load(
            &c,
            &[used_by("coder", 1.2, 50)],
            std::slice::from_ref(&today),
            &periods(0),
            &|_| false,
        );
        assert!(s.lifted("coder", 0));
        assert!(s.charge(&c, "coder", 0.1, &periods(0)).is_empty());

        let later = Spending::default();
        later.load(
            &c,
            &[used_by("coder", 1.2, 150)],
            &[today],
            &periods(1),
            &|_| false,
        );
        assert!(
            !later.lifted("coder", 100),
            "yesterday's lift is not today's"
        );
        assert!(later.lifted("coder", 0), "the month's lift holds");
        let crossed = later.charge(&c, "coder", 0.1, &periods(1));
        assert_eq!(crossed.len(), 1, "{crossed:?}");
        assert!(crossed[0].exhausted && crossed[0].period == Period::Day);
    }

    fn spent(agent: &str, day_usd: f64, month_usd: f64) -> Spent {
        Spent {
            agent: agent.into(),
            day_usd,
            month_usd,
        }
    }

    /// On a shared store the sums are the store's, whatever this node ran: each refresh replaces
    /// them, a threshold crossed is found once per period, and a lift stored through another node
    /// counts here.
    #[test]
    fn a_refresh_takes_the_stores_sums_and_finds_each_crossing_once() {
        let (c, s) = (cfg(), Spending::default());
        assert!(s
            .refresh(&c, &[spent("coder", 0.5, 0.5)], &[], &periods(0))
            .is_empty());
        assert_eq!(s.spent("coder", &periods(0)), (0.5, 0.5));
        // Another node's runs bring the day to 0.85: a warning, found once.
        let w = s.refresh(&c, &[spent("coder", 0.85, 0.85)], &[], &periods(0));
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(!w[0].exhausted && w[0].agent.as_deref() == Some("coder"));
        assert_eq!(w[0].key(), "coder:daily:100:warning");
        assert!(s
            .refresh(&c, &[spent("coder", 0.9, 0.9)], &[], &periods(0))
            .is_empty());
        // Replaced, not added to: the same sums read twice cross nothing more.
        let x = s.refresh(&c, &[spent("coder", 1.2, 1.2)], &[], &periods(0));
        assert_eq!(x.len(), 1, "{x:?}");
        assert!(x[0].exhausted && (x[0].spent - 1.2).abs() < 1e-9);
        assert_eq!(x[0].key(), "coder:daily:100:exhausted");
        assert!(s
            .refresh(&c, &[spent("coder", 1.2, 1.2)], &[], &periods(0))
            .is_empty());
        assert_eq!(s.spent("coder", &periods(0)), (1.2, 1.2));

        // The global budget counts every agent's sums, also of agents this node does not run.
        let g = s.refresh(
            &c,
            &[spent("coder", 0.0, 1.2), spent("elsewhere", 0.0, 7.0)],
            &[],
            &periods(1),
        );
        assert_eq!(g.len(), 1, "{g:?}");
        assert!(g[0].agent.is_none() && !g[0].exhausted && g[0].period == Period::Month);
        assert_eq!(g[0].key(), "*:monthly:10000:warning");

        // A crossing taken back is found again by the next refresh.
        s.forget(&x[0], &periods(0));
        let again = s.refresh(&c, &[spent("coder", 1.2, 1.2)], &[], &periods(0));
        assert_eq!(again, x);

        // A lift stored through another node holds here for its day.
        let lift = BudgetLift {
            agent: "coder".into(),
            day_start: 100,
            month_start: 0,
        };
        assert!(!s.lifted("coder", 100));
        s.refresh(&c, &[], &[lift], &periods(1));
        assert!(s.lifted("coder", 100));
    }
}
