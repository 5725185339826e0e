//! `orchestratord`: routes AI-agent tasks to specialist agents, runs them, records every step, holds
//! risky results for human approval, and rolls out through three modes (synthetic → shadow → live).
//!
//! Where things live:
//!
//! - [`machine`]: the task state machine, as a pure function.
//! - [`clock`]: the one clock every subsystem reads (the wall clock; a manual one in unit tests;
//!   an offset one the end-to-end tests move).
//! - [`config`], [`routing`], [`fixtures`], [`paths`], [`credentials`]: shared with `orchctl`, they
//!   live in the `orchestrator-core` crate and are re-exported here under the same names.
//! - [`tasks`]: the application layer — submit, approve/reject/cancel, list/show, route preview,
//!   gate runs, overrides, sweep now, reload. Every front end calls it; none calls another front end.
//! - [`store`]: the store interface (typed operations, no SQL outside it), its SQLite backend with
//!   one group-committing writer, and the contract suite every backend passes; every transition is
//!   a compare-and-set with its trajectory event in the same transaction.
//! - [`dispatch`]: the dispatcher — synthetic runs and real specialist processes.
//! - [`agents`]: agents' pauses and spending, as the dispatcher keeps them.
//! - [`gate`]: the rollout's rules — the synthetic gate's verdicts, the shadow summary, the mode-flip
//!   rules — and what `status` shows of the gates.
//! - [`sweeper`]: the sweeper's rules and state; the sweep (expiry, lease reclaim, retention) is
//!   [`tasks::sweep`].
//! - [`integrity`]: the store's integrity check, after READY and then periodically.
//! - [`server`]: the control socket — binding (or taking systemd's), connections, one handler per verb.
//! - [`http`]: the HTTP listener: the API for dashboards and scripts (behind the bearer token) and
//!   the web console under `/console/` (signed-in sessions), over the same operations.
//! - [`access`]: peer credentials and who may do what.
//! - [`sessions`]: the console's single-use login links and browser sessions.
//! - [`lifecycle`]: start-up mode, the one mode-flip decision, reload bookkeeping, systemd
//!   notifications.
//! - [`service`]: signal handlers and systemd's watchdog with its liveness probe.
//! - [`notify`]: notification sinks and their delivery workers, over the store's outbox.
//! - [`logging`]: journald or stderr, and the log line (and counter) of every transition.
//! - [`background`]: `--daemonize` with a locked pidfile, for hosts without systemd.
//! - [`state_lock`]: one daemon per state directory.
//! - [`supervisor`]: every long-lived task runs under a name; one that panics or ends early stops
//!   the daemon with a non-zero exit, for the service manager to restart it. [`fault`] is its
//!   test-only fault hook.
//! - [`cluster`]: this daemon as a node of a store several daemons share — heartbeats, the
//!   leader's lease on periodic work, the poll for work to claim.
//! - [`node`]: this daemon's node id and whether it leads, held by [`daemon`].
//! - [`daemon`]: the shared state all of the above hang off, holding each subsystem's own state.
//! - [`run`]: wiring it all together at start.

pub mod access;
pub mod agents;
pub mod background;
pub mod clock;
pub mod cluster;
pub mod daemon;
pub mod dispatch;
pub mod fault;
pub mod gate;
pub mod heap;
pub mod http;
pub mod integrity;
pub mod lifecycle;
pub mod logging;
pub mod machine;
pub mod metrics;
pub mod node;
pub mod notify;
pub mod priority;
pub mod run;
pub mod server;
pub mod service;
pub mod sessions;
pub mod state_lock;
pub mod store;
pub mod supervisor;
pub mod sweeper;
pub mod tasks;

// Shared with `orchctl`; re-exported so `crate::config::…` and friends keep their paths.
pub use orchestrator_core::{config, credentials, fixtures, paths, routing};
