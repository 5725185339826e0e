//! The shadow summary's tallies of settled time, kept between summaries.
//!
//! A summary folds every shadow task created in its window (`docs/BENCHMARKS.md`, "The shadow
//! summary at 1,000,000 tasks"). Most of a 24-hour window is older than its last minutes, and its
//! tasks are finished: a terminal task never changes again (`machine::next_state` leaves no
//! terminal state), so the tally of such a stretch stays true until retention deletes tasks from
//! it. [`ShadowTallies`] keeps the tallies of those stretches, in buckets of [`BUCKET_MS`] of
//! creation time, and a summary reads from the store only what is not kept: the partial bucket at
//! the start of its window, the last [`SETTLE_MS`] and more, and any bucket with a task still
//! running.
//!
//! A bucket is kept only when
//! - it ended at least [`SETTLE_MS`] before the summary (a task is stamped with its creation time
//!   before the writer commits it, so a bucket keeps filling for a moment after it ends);
//! - every task in it is terminal;
//! - nothing that changes kept time was reported while it was read, and what is kept is dropped
//!   when it is: retention's deletion of shadow tasks completed before a time, which drops the
//!   buckets before it ([`ShadowTallies::forget_before`], from the sweep), or a shadow task
//!   created with a time before the end of the kept time, after a step back of the clock
//!   ([`ShadowTallies::created`], from the submit);
//! - this daemon is the store's only writer: on a shared store other nodes create and delete
//!   tasks it does not hear of, so nothing is kept there.
//!
//! After a start the daemon reads the gate's window once in the background (the application
//! layer's `keep_settled_time`), so that the first summary asked for does not read it all either.
//!
//! The flip gate ([`crate::gate::flip::gather`]) never uses it: a flip reads its evidence afresh.

use crate::store::{ShadowTally, Store, StoreError};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

/// The width of a kept bucket of creation time.
pub const BUCKET_MS: i64 = 10 * 60_000;
/// How long after its end a bucket may still gain tasks.
pub const SETTLE_MS: i64 = 10 * 60_000;
/// At most this many buckets are kept (about 57 days of 10-minute buckets)…
const MAX_BUCKETS: usize = 8_192;
/// …holding at most this many durations (2 MiB).
const MAX_DURATIONS: usize = 262_144;

/// What is kept, shared by the summaries (see the module's comment).
#[derive(Debug)]
pub struct ShadowTallies {
    kept: Mutex<Kept>,
    /// The end of the settled time of the latest summary, set before it reads: every kept bucket
    /// ends at or before it, so a task created before it may belong in one.
    horizon: AtomicI64,
}

impl Default for ShadowTallies {
    fn default() -> ShadowTallies {
        ShadowTallies {
            kept: Mutex::default(),
            horizon: AtomicI64::new(i64::MIN),
        }
    }
}

#[derive(Debug, Default)]
struct Kept {
    /// Bumped by everything that drops kept buckets: a summary keeps what it read only if nothing
    /// was dropped in between.
    generation: u64,
    buckets: BTreeMap<i64, Arc<ShadowTally>>,
    durations: usize,
}

impl Kept {
    fn clear(&mut self) {
        self.generation += 1;
        self.buckets.clear();
        self.durations = 0;
    }

    /// Keep `tally` for the bucket at `start`, making room by dropping the oldest buckets, as
    /// long as they are older than the window (`oldest_wanted`) or than `start`: the newest part
    /// of a window too large to keep whole is what stays. Nothing is kept when there is no room.
    fn keep(&mut self, start: i64, mut tally: ShadowTally, oldest_wanted: i64) {
        // Kept for a long time: without the room the vector grew into.
        tally.durations_ms.shrink_to_fit();
        let size = tally.durations_ms.len();
        while self.buckets.len() >= MAX_BUCKETS || self.durations + size > MAX_DURATIONS {
            match self.buckets.first_key_value() {
                Some((&first, _)) if first < oldest_wanted || first < start => {
                    if let Some(gone) = self.buckets.remove(&first) {
                        self.durations -= gone.durations_ms.len();
                    }
                }
                _ => return,
            }
        }
        self.durations += size;
        if let Some(old) = self.buckets.insert(start, Arc::new(tally)) {
            self.durations -= old.durations_ms.len();
        }
    }
}

impl ShadowTallies {
    fn kept(&self) -> std::sync::MutexGuard<'_, Kept> {
        match self.kept.lock() {
            Ok(k) => k,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Retention deleted shadow tasks completed before `before_ms`: drop the buckets that can hold
    /// them (a task is created before it completes), and what summaries under way would keep.
    pub fn forget_before(&self, before_ms: i64) {
        let mut k = self.kept();
        k.generation += 1;
        let later = k.buckets.split_off(&before_ms);
        let gone = std::mem::replace(&mut k.buckets, later);
        k.durations -= gone.values().map(|t| t.durations_ms.len()).sum::<usize>();
    }

    /// A shadow task created at `created_ms` was committed: if that is before the end of the time
    /// kept (the clock stepped back), drop what is kept.
    pub fn created(&self, created_ms: i64) {
        if created_ms < self.horizon.load(Ordering::SeqCst) {
            self.kept().clear();
        }
    }

    /// How many buckets are kept.
    pub fn kept_buckets(&self) -> usize {
        self.kept().buckets.len()
    }

    /// Every shadow task created since `since_ms`, as of `now_ms`, from the kept buckets and the
    /// store.
    pub async fn since(
        &self,
        store: &Store,
        since_ms: i64,
        now_ms: i64,
    ) -> Result<ShadowTally, StoreError> {
        if store.cluster().is_some() {
            // Other nodes create and delete tasks this one does not hear of: nothing is kept.
            return store.shadow_tally_since(since_ms).await;
        }
        // Buckets that lie whole inside the window and ended SETTLE_MS ago.
        let first_whole = ceil_to(since_ms, BUCKET_MS);
        let settled_end = (now_ms - SETTLE_MS).div_euclid(BUCKET_MS) * BUCKET_MS;
        let (generation, kept) = {
            let k = self.kept();
            // Before the reads: a task committed after them with an earlier time drops what
            // they keep ([`ShadowTallies::created`]).
            self.horizon.fetch_max(settled_end, Ordering::SeqCst);
            // (`range` wants its start at or before its end: a window shorter than the settling
            // time has no kept part.)
            let kept: Vec<(i64, Arc<ShadowTally>)> = k
                .buckets
                .range(first_whole..settled_end.max(first_whole))
                .map(|(&at, t)| (at, Arc::clone(t)))
                .collect();
            (k.generation, kept)
        };

        let mut total = ShadowTally::default();
        total
            .durations_ms
            .reserve(kept.iter().map(|(_, t)| t.durations_ms.len()).sum());
        let mut fresh = Vec::new();
        let mut from = since_ms;
        let gaps = kept
            .iter()
            .map(|(at, _)| (*at, at + BUCKET_MS))
            .chain(std::iter::once((i64::MAX, i64::MAX)));
        for (gap_end, next_from) in gaps {
            if from < gap_end {
                let read = read_stretch(store, from, gap_end, now_ms).await?;
                let mut read = read.into_iter().peekable();
                let mut at = ceil_to(from, BUCKET_MS);
                // The partial bucket at the window's start is only counted.
                while let Some((_, tally)) = read.next_if(|(b, _)| *b < at) {
                    total.merge(&tally);
                }
                // Whole settled buckets of this stretch, with or without tasks.
                while at + BUCKET_MS <= gap_end.min(settled_end) {
                    match read.next_if(|(b, _)| *b == at) {
                        Some((_, tally)) => {
                            total.merge(&tally);
                            if tally.all_terminal() {
                                fresh.push((at, tally));
                            }
                        }
                        None => fresh.push((at, ShadowTally::default())),
                    }
                    at += BUCKET_MS;
                }
                for (_, tally) in read {
                    total.merge(&tally);
                }
            }
            from = next_from;
        }
        for (_, tally) in &kept {
            total.merge(tally);
        }

        if !fresh.is_empty() {
            let mut k = self.kept();
            if k.generation == generation {
                // Newest first, so that when room runs out the latest part of the window stays.
                for (at, tally) in fresh.into_iter().rev() {
                    k.keep(at, tally, first_whole);
                }
            }
        }
        Ok(total)
    }
}

/// A stretch of at least this much time up to now is read as two halves at once.
const SPLIT_MS: i64 = 6 * BUCKET_MS;

/// The store's tallies of the shadow tasks created in `from..until`. A long stretch (the whole
/// window, when nothing is kept yet) is read as two halves at once, on two pooled read
/// connections, split at a bucket's start so that each bucket comes whole from one of them.
async fn read_stretch(
    store: &Store,
    from: i64,
    until: i64,
    now_ms: i64,
) -> Result<Vec<(i64, ShadowTally)>, StoreError> {
    let end = until.min(now_ms);
    let mid = ceil_to(from + (end - from) / 2, BUCKET_MS);
    if end - from < SPLIT_MS || mid <= from || mid >= until {
        return store.shadow_tallies(from, until, BUCKET_MS).await;
    }
    let (early, late) = tokio::join!(
        store.shadow_tallies(from, mid, BUCKET_MS),
        store.shadow_tallies(mid, until, BUCKET_MS)
    );
    let mut read = early?;
    read.extend(late?);
    Ok(read)
}

/// The smallest multiple of `step` at or after `t`.
fn ceil_to(t: i64, step: i64) -> i64 {
    let floor = t.div_euclid(step) * step;
    if floor == t {
        t
    } else {
        floor.saturating_add(step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::Action;
    use crate::store::{NewTask, Patch, SubmitPlan, TransitionOp};
    use orchestrator_proto::task::TaskKind;

    const HOUR: i64 = 3_600_000;
    /// A moment inside a bucket, so that windows start part-way into one.
    const NOW: i64 = 20_000 * BUCKET_MS + 123_456;

    fn fresh() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = Store::open(&dir.path().join("state.db")).expect("open the store");
        (dir, store)
    }

    /// A shadow task created at `created`, failed 5 ms later, or left assigned when `running`.
    async fn put(store: &Store, id: &str, created: i64, running: bool) {
        let route = TransitionOp::new(id, Action::Route, "t", created + 1).patch(Patch {
            agent: Some(
                if id.len().is_multiple_of(2) {
                    "coder"
                } else {
                    "writer"
                }
                .into(),
            ),
            ..Patch::default()
        });
        let mut steps = vec![route];
        if !running {
            steps.push(TransitionOp::new(id, Action::Fail, "t", created + 5));
        }
        let plan = SubmitPlan {
            task: NewTask {
                id: id.to_string(),
                kind: TaskKind::Shadow,
                goal: "g".into(),
                workspace_dir: None,
                required_capabilities: Vec::new(),
                submitted_by: "t".into(),
                harness: false,
                created_ms: created,
                expires_ms: created + 100 * HOUR,
            },
            actor: "t".into(),
            steps,
        };
        store.submit(plan).await.expect("submit");
    }

    /// A tally with its lists in one order, to compare tallies folded in different orders.
    fn sorted(mut t: ShadowTally) -> ShadowTally {
        t.durations_ms.sort_unstable();
        t.per_agent.sort();
        t.failures_by_code.sort();
        t
    }

    async fn check(tallies: &ShadowTallies, store: &Store, since: i64, now: i64) -> ShadowTally {
        let got = sorted(tallies.since(store, since, now).await.expect("tallies"));
        let afresh = sorted(store.shadow_tally_since(since).await.expect("fresh"));
        assert_eq!(got, afresh, "window from {since} at {now}");
        got
    }

    /// Whole buckets from `since` that ended SETTLE_MS before `now`.
    fn settled(since: i64, now: i64) -> usize {
        let end = (now - SETTLE_MS).div_euclid(BUCKET_MS) * BUCKET_MS;
        ((end - ceil_to(since, BUCKET_MS)) / BUCKET_MS) as usize
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kept_buckets_answer_what_a_fresh_read_does() {
        let (_dir, store) = fresh();
        // Every 7 minutes over the last 7 hours, and one still running 3 hours ago.
        for i in 0..60 {
            put(&store, &format!("S{i}"), NOW - i * 7 * 60_000, false).await;
        }
        put(&store, "RUN", NOW - 3 * HOUR, true).await;
        let tallies = ShadowTallies::default();
        let since = NOW - 24 * HOUR;

        let first = check(&tallies, &store, since, NOW).await;
        assert_eq!(first.total, 61);
        // Every whole settled bucket is kept, with or without tasks, but the running task's.
        assert_eq!(tallies.kept_buckets(), settled(since, NOW) - 1);
        // Asked again, and later, with the kept buckets.
        check(&tallies, &store, since, NOW).await;
        check(&tallies, &store, since + 60_000, NOW + 60_000).await;

        // The running task's bucket was read afresh, so its ending is counted.
        let op = TransitionOp::new("RUN", Action::Fail, "t", NOW + 2);
        store.transition(op).await.expect("fail");
        let after = check(&tallies, &store, since, NOW + 120_000).await;
        assert_eq!(after.total, 61);
        assert!(!first.all_terminal() && after.all_terminal());

        // A narrower window, starting inside a bucket, from the same buckets.
        let inside = NOW - 2 * HOUR - 30_000;
        check(&tallies, &store, inside, NOW + 120_000).await;
        // The same from nothing kept (its first bucket holds tasks, and is not kept), twice.
        let cold = ShadowTallies::default();
        check(&cold, &store, inside, NOW + 120_000).await;
        assert_eq!(cold.kept_buckets(), settled(inside, NOW + 120_000));
        check(&cold, &store, inside, NOW + 120_000).await;
        store.close();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_deletion_forgets_the_buckets_before_its_cut() {
        let (_dir, store) = fresh();
        for i in 0..10 {
            put(
                &store,
                &format!("S{i}"),
                NOW - 5 * HOUR + i * 30 * 60_000,
                false,
            )
            .await;
        }
        let tallies = ShadowTallies::default();
        let since = NOW - 24 * HOUR;
        assert_eq!(check(&tallies, &store, since, NOW).await.total, 10);
        let kept = tallies.kept_buckets();

        // Retention of the tasks completed before S2 was created: S0 and S1.
        let cut = NOW - 5 * HOUR + 60 * 60_000;
        let deleted = store
            .delete_tasks(vec!["S0".into(), "S1".into()])
            .await
            .expect("delete");
        assert_eq!(deleted.len(), 2);
        // Kept, the buckets still count the deleted tasks: that is why a deletion must be told.
        let stale = tallies.since(&store, since, NOW).await.expect("tallies");
        assert_eq!(stale.total, 10);
        tallies.forget_before(cut);
        // The buckets from the cut on stay kept.
        let left = tallies.kept_buckets();
        assert!(left > 0 && left < kept, "{left} of {kept} buckets left");
        assert_eq!(check(&tallies, &store, since, NOW).await.total, 8);
        store.close();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_task_created_in_kept_time_forgets_what_was_kept() {
        let (_dir, store) = fresh();
        put(&store, "A", NOW - 5 * HOUR, false).await;
        let tallies = ShadowTallies::default();
        check(&tallies, &store, NOW - 24 * HOUR, NOW).await;
        assert!(tallies.kept_buckets() > 0);

        // A task of now changes nothing kept.
        put(&store, "B", NOW, false).await;
        tallies.created(NOW);
        assert!(tallies.kept_buckets() > 0);

        // After a step back of the clock, a task lands in a bucket that was kept; the summary
        // after it is asked later than the first, as the clock has caught up again.
        put(&store, "C", NOW - 5 * HOUR + 1, false).await;
        tallies.created(NOW - 5 * HOUR + 1);
        assert_eq!(tallies.kept_buckets(), 0);
        let got = check(&tallies, &store, NOW - 24 * HOUR, NOW + HOUR).await;
        assert_eq!(got.total, 3);
        store.close();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_window_shorter_than_the_settling_time_is_read_whole() {
        let (_dir, store) = fresh();
        put(&store, "A", NOW - 2 * HOUR, false).await;
        put(&store, "B", NOW - 60_000, false).await;
        let tallies = ShadowTallies::default();
        check(&tallies, &store, NOW - 24 * HOUR, NOW).await;
        assert!(tallies.kept_buckets() > 0);
        // From a minute ago, and from after now: nothing kept applies.
        assert_eq!(check(&tallies, &store, NOW - 60_000, NOW).await.total, 1);
        assert_eq!(check(&tallies, &store, NOW + HOUR, NOW).await.total, 0);
        store.close();
    }

    #[test]
    fn only_what_fits_is_kept_newest_first() {
        let mut k = Kept::default();
        let with = |n: usize| ShadowTally {
            durations_ms: vec![1; n],
            ..ShadowTally::default()
        };
        k.keep(10, with(MAX_DURATIONS - 5), 0);
        // No room, and nothing older than the window to make room with.
        k.keep(5, with(10), 0);
        assert_eq!(k.buckets.keys().copied().collect::<Vec<_>>(), [10]);
        // Room made by dropping a bucket the window no longer wants.
        k.keep(20, with(10), 15);
        assert_eq!(k.buckets.keys().copied().collect::<Vec<_>>(), [20]);
        assert_eq!(k.durations, 10);
        // Or one of the window older than the bucket to keep.
        k.keep(30, with(MAX_DURATIONS - 5), 0);
        assert_eq!(k.buckets.keys().copied().collect::<Vec<_>>(), [30]);
        assert_eq!(k.durations, MAX_DURATIONS - 5);
    }
}
