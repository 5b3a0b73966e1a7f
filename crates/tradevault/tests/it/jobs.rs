//! The scheduler, driven by a manual clock over a real store: jobs run at their due times, never
//! twice at once, once for due times missed while the server was down, and every run is recorded
//! (a run a crash interrupted is marked failed at the next start).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use serde_json::json;
use tradevault::Store;
use tradevault::clock::{Clock, ManualClock};
use tradevault::config::StoreConfig;
use tradevault::jobs::{self, JobSpec, Scheduler};

fn at(text: &str) -> Timestamp {
    text.parse().expect("timestamp")
}

fn open(dir: &std::path::Path, clock: Arc<ManualClock>) -> Arc<Store> {
    let config = StoreConfig {
        data_dir: dir.to_owned(),
        ..Default::default()
    };
    Arc::new(Store::open(&config, clock as Arc<dyn Clock>).expect("open store"))
}

fn counting(name: &str, schedule: &str, runs: Arc<AtomicU32>) -> JobSpec {
    JobSpec {
        name: name.into(),
        schedule: schedule.into(),
        run: Arc::new(move |_| {
            let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
            Ok(json!({ "run": n }))
        }),
    }
}

async fn finish(handles: Vec<tokio::task::JoinHandle<()>>) -> usize {
    let n = handles.len();
    for h in handles {
        h.await.expect("run");
    }
    n
}

async fn runs(store: &Arc<Store>) -> Vec<jobs::JobRun> {
    store
        .read(|c| jobs::history(c, None, 100))
        .await
        .expect("history")
}

#[tokio::test]
async fn jobs_run_when_due_and_are_recorded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(at("2026-11-02T10:30:00Z")));
    let store = open(dir.path(), clock.clone());
    let count = Arc::new(AtomicU32::new(0));
    let failing = JobSpec {
        name: "verify".into(),
        schedule: "0 12 * * *".into(),
        run: Arc::new(|_| {
            Err(tradevault::Error::Internal {
                message: "checksum mismatch".into(),
            })
        }),
    };
    let scheduler = Scheduler::new(
        store.clone(),
        clock.clone(),
        vec![counting("backup", "0 * * * *", count.clone()), failing],
    )
    .await
    .expect("scheduler");
    // A job with no history waits for its first due time after the start.
    assert_eq!(finish(scheduler.tick().await).await, 0);
    clock.set(at("2026-11-02T11:00:00Z"));
    assert_eq!(finish(scheduler.tick().await).await, 1);
    assert_eq!(count.load(Ordering::SeqCst), 1);
    // Once per due time.
    clock.set(at("2026-11-02T11:59:59Z"));
    assert_eq!(finish(scheduler.tick().await).await, 0);
    clock.set(at("2026-11-02T12:00:00Z"));
    assert_eq!(finish(scheduler.tick().await).await, 2);
    let history = runs(&store).await;
    let verify = history
        .iter()
        .find(|r| r.job == "verify")
        .expect("verify run");
    assert_eq!(verify.status, "failed");
    assert!(
        verify.detail["error"]
            .as_str()
            .is_some_and(|e| e.contains("checksum mismatch")),
        "{verify:?}"
    );
    let backups: Vec<_> = history.iter().filter(|r| r.job == "backup").collect();
    assert_eq!(backups.len(), 2);
    assert!(
        backups
            .iter()
            .all(|r| r.status == "ok" && r.trigger == "schedule")
    );
    assert!(
        backups[0].scheduled_for.starts_with("2026-11-02T12:00:00"),
        "{backups:?}"
    );
    assert_eq!(backups[0].detail, json!({ "run": 2 }));
    let view = scheduler.jobs().await.expect("jobs");
    let backup = view.iter().find(|j| j.name == "backup").expect("backup");
    assert!(
        backup
            .next_run
            .as_deref()
            .is_some_and(|t| t.starts_with("2026-11-02T13:00:00")),
        "{backup:?}"
    );
    assert_eq!(backup.last_run.as_ref().map(|r| r.id), Some(backups[0].id));
}

#[tokio::test]
async fn a_job_never_runs_twice_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(at("2026-11-02T10:30:00Z")));
    let store = open(dir.path(), clock.clone());
    // The job holds until the test lets it go (drops the sender).
    let (release, wait) = std::sync::mpsc::channel::<()>();
    let wait = Arc::new(Mutex::new(wait));
    let slow = JobSpec {
        name: "drill".into(),
        schedule: "0 * * * *".into(),
        run: Arc::new(move |_| {
            let _ = wait.lock().expect("lock").recv();
            Ok(json!({}))
        }),
    };
    let scheduler = Scheduler::new(store.clone(), clock.clone(), vec![slow])
        .await
        .expect("scheduler");
    clock.set(at("2026-11-02T11:00:00Z"));
    let first = scheduler.tick().await;
    assert_eq!(first.len(), 1);
    // Let the run start.
    while !scheduler.jobs().await.expect("jobs")[0].running {
        tokio::task::yield_now().await;
    }
    clock.set(at("2026-11-02T12:00:00Z"));
    assert!(
        scheduler.tick().await.is_empty(),
        "not started while running"
    );
    let manual = scheduler.trigger("drill").await;
    assert!(manual.is_err(), "a manual run is refused while running");
    drop(release);
    finish(first).await;
    let history = runs(&store).await;
    // (The first run records itself from its own task, so the rows may be in either order.)
    let mut statuses: Vec<_> = history.iter().map(|r| r.status.as_str()).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, ["ok", "skipped"], "{history:?}");
}

#[tokio::test]
async fn missed_runs_run_once_at_start_and_interrupted_runs_are_marked_failed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(at("2026-11-02T10:30:00Z")));
    let count = Arc::new(AtomicU32::new(0));
    {
        let store = open(dir.path(), clock.clone());
        let scheduler = Scheduler::new(
            store.clone(),
            clock.clone(),
            vec![counting("backup", "0 * * * *", count.clone())],
        )
        .await
        .expect("scheduler");
        clock.set(at("2026-11-02T11:00:00Z"));
        finish(scheduler.tick().await).await;
        // A run a crash interrupts stays `running` in the table.
        store
            .write(|tx| {
                tx.conn
                    .execute(
                        "INSERT INTO job_runs (job, trigger, scheduled_for, started_at, status) \
                         VALUES ('prune', 'manual', '2026-11-02T11:00:00Z', '2026-11-02T11:00:00Z', 'running')",
                        [],
                    )
                    .map_err(|e| tradevault::Error::sqlite("insert", e))
            })
            .await
            .expect("insert");
        drop(scheduler);
        match Arc::try_unwrap(store) {
            Ok(store) => store.close(),
            Err(_) => panic!("the store has one owner"),
        }
    }
    // Down from 11:00 to 15:30: four due times missed, one run.
    clock.set(at("2026-11-02T15:30:00Z"));
    let store = open(dir.path(), clock.clone());
    let scheduler = Scheduler::new(
        store.clone(),
        clock.clone(),
        vec![counting("backup", "0 * * * *", count.clone())],
    )
    .await
    .expect("scheduler");
    assert_eq!(finish(scheduler.tick().await).await, 1);
    assert_eq!(finish(scheduler.tick().await).await, 0);
    assert_eq!(count.load(Ordering::SeqCst), 2);
    let history = runs(&store).await;
    let catch_up = &history[0];
    assert_eq!(catch_up.trigger, "catch_up");
    assert!(
        catch_up.scheduled_for.starts_with("2026-11-02T15:00:00"),
        "{catch_up:?}"
    );
    let interrupted = history.iter().find(|r| r.job == "prune").expect("prune");
    assert_eq!(interrupted.status, "failed");
    assert!(
        interrupted.detail["error"]
            .as_str()
            .is_some_and(|e| e.contains("interrupted"))
    );
}
