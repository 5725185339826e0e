use super::*;
use crate::store::sqlite::{queries, schema};
use crate::store::{Cursor, TaskFilter};

fn migrated() -> Connection {
    let mut conn = Connection::open_in_memory().unwrap();
    schema::migrate(&mut conn).unwrap();
    conn
}

/// Tasks named `T{n:05}`, created in the order given, each with its goal and kind.
fn insert(conn: &Connection, first: usize, goals: &[(&str, &str)]) {
    let mut stmt = conn
        .prepare(
            "INSERT INTO tasks (id, kind, state, goal, required_caps, submitted_by, created_at, expires_at) \
             VALUES (?1, ?2, 'done', ?3, '[]', 'alice', ?4, 0)",
        )
        .unwrap();
    for (i, (kind, goal)) in goals.iter().enumerate() {
        let n = first + i;
        stmt.execute(params![format!("T{n:05}"), kind, goal, n as i64])
            .unwrap();
    }
}

fn search(conn: &Connection, text: &str, limit: u32) -> Vec<String> {
    queries::list_tasks(
        conn,
        &TaskFilter {
            kind: Some(orchestrator_proto::task::TaskKind::Live),
            goal_contains: Some(text.into()),
            limit,
            ..TaskFilter::default()
        },
    )
    .unwrap()
    .into_iter()
    .map(|t| t.id)
    .collect()
}

fn indexed_entries(conn: &Connection, text: &str) -> i64 {
    conn.query_row(
        "SELECT count(*) FROM tasks_goal WHERE tasks_goal MATCH ?1",
        [format!("\"{text}\"")],
        |r| r.get(0),
    )
    .unwrap()
}

#[test]
fn a_search_reads_the_index_and_the_unindexed_tail_alike() {
    let mut conn = migrated();
    insert(
        &conn,
        0,
        &[
            ("live", "Deploy the release"),
            ("live", "fix the bug"),
            ("shadow", "deploy in shadow"),
            ("live", "redeploy after the fix"),
        ],
    );
    // Half indexed, half in the tail.
    assert!(index_next(&mut conn, 2).unwrap());
    insert(
        &conn,
        4,
        &[("live", "DEPLOY again"), ("live", "nothing to see")],
    );
    assert!(behind(&conn).unwrap());
    assert!(matches!(plan(&conn, "deploy").unwrap(), Plan::Hits { .. }));
    let expected = ["T00004", "T00003", "T00000"];
    assert_eq!(search(&conn, "deploy", 10), expected);

    assert_eq!(catch_up(&mut conn).unwrap(), 4);
    assert!(!behind(&conn).unwrap());
    assert_eq!(search(&conn, "deploy", 10), expected);
    // The page and the cursor behave as without a text.
    assert_eq!(search(&conn, "deploy", 2), ["T00004", "T00003"]);
    let older = queries::list_tasks(
        &conn,
        &TaskFilter {
            goal_contains: Some("deploy".into()),
            cursor: Some(Cursor::Before("T00003".into())),
            limit: 10,
            ..TaskFilter::default()
        },
    )
    .unwrap();
    let older: Vec<_> = older.into_iter().map(|t| t.id).collect();
    assert_eq!(older, ["T00002", "T00000"]);
}

#[test]
fn the_text_matches_as_typed_whatever_the_index_folds() {
    let mut conn = migrated();
    insert(
        &conn,
        0,
        &[
            ("live", "say \"hi\" at 100% of_load"),
            ("live", "say hi at 100 percent"),
            ("live", "Été à Paris"),
            ("live", "été à Lyon"),
        ],
    );
    catch_up(&mut conn).unwrap();
    assert_eq!(search(&conn, "\"hi\" at 100%", 10), ["T00000"]);
    assert_eq!(search(&conn, "of_load", 10), ["T00000"]);
    assert_eq!(search(&conn, "SAY HI", 10), ["T00001"]);
    // ASCII case is folded, as by the scan; other letters match as typed, though the trigram
    // index folds them too.
    assert_eq!(search(&conn, "été", 10), ["T00003"]);
    // Shorter than a trigram: a scan.
    assert!(matches!(plan(&conn, "hi").unwrap(), Plan::Short));
    assert_eq!(search(&conn, "hi", 10), ["T00001", "T00000"]);
}

#[test]
fn deleted_tasks_leave_the_index_and_a_reused_rowid_is_found() {
    let mut conn = migrated();
    insert(
        &conn,
        0,
        &[("live", "rotate the keys"), ("live", "rotate the logs")],
    );
    catch_up(&mut conn).unwrap();
    assert_eq!(indexed_entries(&conn, "rotate"), 2);
    let newest: i64 = conn
        .query_row("SELECT rowid FROM tasks WHERE id = 'T00001'", [], |r| {
            r.get(0)
        })
        .unwrap();
    conn.execute("DELETE FROM tasks WHERE id = 'T00001'", [])
        .unwrap();
    assert_eq!(indexed_entries(&conn, "rotate"), 1);
    assert_eq!(search(&conn, "rotate", 10), ["T00000"]);

    // SQLite hands the newest rowid out again; the task that gets it is new to the index.
    insert(&conn, 2, &[("live", "rotate the certificates")]);
    let reused: i64 = conn
        .query_row("SELECT rowid FROM tasks WHERE id = 'T00002'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(reused, newest);
    assert_eq!(search(&conn, "certificates", 10), ["T00002"]);
    catch_up(&mut conn).unwrap();
    assert_eq!(search(&conn, "certificates", 10), ["T00002"]);
    assert_eq!(search(&conn, "rotate", 10), ["T00002", "T00000"]);
}

#[test]
fn a_common_text_is_found_newest_first_even_when_old() {
    let mut conn = migrated();
    let old = vec![("live", "quarterly report"); MOST_HITS + 10];
    insert(&conn, 0, &old);
    let newer = vec![("live", "weekly note"); FIRST_LOOK + 10];
    insert(&conn, old.len(), &newer);
    catch_up(&mut conn).unwrap();
    assert!(matches!(plan(&conn, "report").unwrap(), Plan::Common));
    // The newest tasks hold a page of it.
    let weekly = search(&conn, "weekly", 3);
    let last = old.len() + newer.len() - 1;
    let expect: Vec<String> = (0..3).map(|i| format!("T{:05}", last - i)).collect();
    assert_eq!(weekly, expect);
    // They do not: the walk goes on past them.
    let report = search(&conn, "report", 3);
    let expect: Vec<String> = (0..3)
        .map(|i| format!("T{:05}", old.len() - 1 - i))
        .collect();
    assert_eq!(report, expect);
}

#[test]
fn the_writer_indexes_goals_when_idle() {
    let dir = tempfile::tempdir().unwrap();
    let store = crate::store::Store::open(&dir.path().join("state.db")).unwrap();
    for i in 0..(STEP * 3) {
        let mut t = crate::store::sqlite::tests::new_task(&format!("W{i:04}"));
        t.goal = format!("index me {i}");
        store
            .write_blocking(move |b| b.insert_task(t, "alice"))
            .unwrap();
    }
    // Bounded wait for the background step, on what it writes.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let behind = store.read_blocking(behind).unwrap();
        if !behind {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the writer did not index the goals"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let n = store
        .read_blocking(|c| Ok(indexed_entries(c, "index me")))
        .unwrap();
    assert_eq!(n, STEP * 3);
    store.close();
}
