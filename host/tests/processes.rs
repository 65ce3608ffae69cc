//! The host as a real process: killed with SIGKILL at random points, scaled
//! out to two processes in one group, stopped gracefully. Nothing is lost and
//! nothing is applied twice.

mod common;

use std::process::{Child, Command};
use std::time::Duration;

use common::*;
use rand::Rng as _;

fn kill9(child: &mut Child) {
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

fn terminate(child: &mut Child) -> std::process::ExitStatus {
    // SIGTERM: finish the batch in hand, commit, exit 0.
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    child.wait().unwrap()
}

async fn processed(db: &TestDb) -> i64 {
    // Before the first host migrated, the table does not exist yet.
    sqlx::query_scalar("SELECT COUNT(*) FROM processed_events")
        .fetch_one(&db.pool)
        .await
        .unwrap_or(0)
}

/// Waits until the count of processed events moves past `from`.
async fn wait_progress(db: &TestDb, from: i64, timeout: Duration) -> i64 {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let n = processed(db).await;
        if n > from {
            return n;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no progress past {from} within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_host_at_random_points_loses_and_doubles_nothing() {
    // Long enough that every kill lands mid-stream.
    let events = events(1000);
    let (expected, clean_writes) = clean_run_audited(&events).await;
    let db = TestDb::audited().await;
    let topics = Topics::new();
    produce_all(&topics, &events).await;
    let group = unique("crash");
    let log = std::env::temp_dir().join(format!("{}.log", unique("projector-crash")));
    let mut rng = rand::rng();
    let total = events.len() as i64;
    let mut last = 0;
    // Small batches, so that each kill lands while events are outstanding
    // (checked below, not assumed).
    for kill in 0..4 {
        let mut host = spawn_host_batched(&db, &topics, &group, &log, 10);
        wait_progress(&db, last, Duration::from_secs(60)).await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..200))).await;
        kill9(&mut host);
        last = processed(&db).await;
        assert!(
            last < total,
            "kill {kill} came after the whole stream was applied; the stream is too short for this machine"
        );
    }
    let mut host = spawn_host(&db, &topics, &group, &log);
    wait_processed(&db.pool, events.len() as i64, Duration::from_secs(120)).await;
    assert!(
        terminate(&mut host).success(),
        "graceful stop exits 0; log: {}",
        log.display()
    );
    assert_each_event_once(&db, events.len(), clean_writes).await;
    assert_same(&dump(&db.pool).await, &expected);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_split_the_partitions_and_take_over_from_each_other() {
    let first = events(60);
    let second = events(60);
    let third = events(60);
    let all: Vec<_> = first.iter().chain(&second).chain(&third).cloned().collect();
    let (expected, clean_writes) = clean_run_audited(&all).await;

    let db = TestDb::audited().await;
    let topics = Topics::new();
    let group = unique("scale");
    let log_a = std::env::temp_dir().join(format!("{}.log", unique("projector-a")));
    let log_b = std::env::temp_dir().join(format!("{}.log", unique("projector-b")));
    produce_all(&topics, &first).await;
    let mut a = spawn_host(&db, &topics, &group, &log_a);
    let mut b = spawn_host(&db, &topics, &group, &log_b);
    wait_processed(&db.pool, first.len() as i64, Duration::from_secs(120)).await;
    // Both took part: each was assigned partitions.
    for log in [&log_a, &log_b] {
        wait_log(log, "partitions assigned", 1, Duration::from_secs(60)).await;
    }

    // A stops gracefully while more events arrive; B takes its partitions.
    let producing = tokio::spawn({
        let topics_prefix = topics.prefix.clone();
        let second = second.clone();
        async move {
            produce_all(
                &Topics {
                    prefix: topics_prefix,
                },
                &second,
            )
            .await
        }
    });
    // Events of the second part are in flight when A stops.
    wait_processed_past(&db.pool, first.len() as i64, Duration::from_secs(60)).await;
    assert!(terminate(&mut a).success());
    producing.await.unwrap();
    wait_processed(
        &db.pool,
        (first.len() + second.len()) as i64,
        Duration::from_secs(120),
    )
    .await;

    // A comes back; then B dies hard while the last events arrive.
    let mut a = spawn_host(&db, &topics, &group, &log_a);
    wait_log(&log_a, "partitions assigned", 1, Duration::from_secs(60)).await;
    let producing = tokio::spawn({
        let topics_prefix = topics.prefix.clone();
        let third = third.clone();
        async move {
            produce_all(
                &Topics {
                    prefix: topics_prefix,
                },
                &third,
            )
            .await
        }
    });
    // Events of the third part are in flight when B dies.
    wait_processed_past(
        &db.pool,
        (first.len() + second.len()) as i64,
        Duration::from_secs(60),
    )
    .await;
    kill9(&mut b);
    producing.await.unwrap();
    wait_processed(&db.pool, all.len() as i64, Duration::from_secs(120)).await;
    assert!(terminate(&mut a).success());

    assert_each_event_once(&db, all.len(), clean_writes).await;
    assert_same(&dump(&db.pool).await, &expected);
    db.drop_db().await;
}
