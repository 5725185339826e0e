//! The store contract (`store::contract`) run against PostgreSQL, one test per case, each on a
//! fresh database of a throwaway server (see `throwaway`). They need the PostgreSQL 15 binaries,
//! so they are ignored by default; `.ci/run` runs them with `--ignored`.

use super::{PostgresBackend, Settings};
use crate::store::{contract, Store};
use std::sync::Arc;

async fn fresh() -> Store {
    let url = super::throwaway::shared_database().expect("a throwaway PostgreSQL database");
    let backend = PostgresBackend::open(&Settings {
        url,
        pool_size: 8,
        node: "contract".into(),
    })
    .await
    .expect("open the store");
    Store::new(Arc::new(backend))
}

macro_rules! contract_cases {
    ($($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[ignore = "needs PostgreSQL 15 binaries; .ci/run runs them"]
            async fn $case() {
                let store = fresh().await;
                contract::$case(store.clone()).await;
                store.close();
            }
        )*
    };
}

contract_cases!(
    submit_answers_what_a_read_returns,
    a_submits_steps_keep_what_their_patches_set,
    one_event_per_transition_in_commit_order,
    refused_transition_changes_nothing,
    concurrent_approve_and_reject_one_wins,
    counts_follow_commits_only,
    advance_runs_each_plan_on_its_own,
    expiry_takes_only_due_waiting_tasks,
    expiry_batch_writes_what_each_expiry_would,
    shadow_tally_counts_the_window,
    shadow_tallies_split_the_range_into_buckets,
    leases_renew_void_and_lapse,
    an_outcome_lands_only_on_its_own_attempt,
    a_retry_keeps_its_wait_until_the_task_starts_again,
    a_write_whose_caller_goes_away_still_commits_and_is_published,
    retention_walks_and_deletes_terminal_tasks,
    gate_runs_are_recorded,
    mode_and_overrides,
    reads_for_gates_dispatch_and_delivery,
    probe_commits_nothing,
    listing_filters_and_pages_each_task_once,
    goal_text_filter_matches_as_typed,
    outbox_is_written_with_the_transition,
    rolled_back_job_writes_no_outbox_row,
    outbox_order_and_marks,
    a_sink_added_later_is_sent_what_commits_after,
    notices_follow_the_filters,
    awaiting_approval_lists_waiting_tasks,
    awaiting_approval_reads_only_what_the_cut_admits,
    awaiting_since_reads_the_newest_waiting_tasks,
    usage_is_stored_and_a_deferral_counts_no_attempt,
    agent_pauses_are_stored_and_cleared,
    budget_lifts_are_stored_and_replaced,
);
