//! [`Scheduler`]: the jobs `tradevault serve` runs on cron schedules (backups, their pruning and
//! verification, restore drills; later issues add their own).
//!
//! Schedules are cron expressions evaluated in UTC. Each job runs at most once at a time: a run
//! that falls due while the previous one is still going is recorded as skipped. Every run is a row
//! of the store's `job_runs` table (so it is replicated and backed up with the store), which is
//! also how a run missed while the server was down is found: at start, a job whose last scheduled
//! run is older than its latest due time runs once, at once. A job with no history waits for its
//! first due time after the server started. A run still marked `running` when the server starts
//! was interrupted by a crash, and is marked failed.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use jiff::Timestamp;
use serde::Serialize;
use serde_json::Value;

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::exact::format_timestamp;
use crate::store::Store;

/// What a job does, given its run: its result, shown in the run's `detail` (a result with
/// `"ok": false` marks the run failed), or an error.
pub type JobFn = Arc<dyn Fn(&JobContext) -> Result<Value> + Send + Sync>;

/// What a run of a job knows about itself.
#[derive(Debug, Clone)]
pub struct JobContext {
    /// Its `job_runs` row, committed before the job starts (a drill uses it as its sentinel).
    pub run_id: i64,
}

/// A job to schedule.
#[derive(Clone)]
pub struct JobSpec {
    /// Its name (`backup`, `prune`, `verify`, `drill`, ...).
    pub name: String,
    /// A cron expression (5 fields, or 6 with seconds first), in UTC; empty: run only when asked.
    pub schedule: String,
    /// The work; runs on a blocking thread.
    pub run: JobFn,
}

/// How a run came about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// Its schedule.
    Schedule,
    /// A due time missed while the server was down.
    CatchUp,
    /// `POST /v1/jobs/{name}/run`.
    Manual,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::CatchUp => "catch_up",
            Trigger::Manual => "manual",
        }
    }
}

/// One run, as recorded in `job_runs`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobRun {
    /// Its row id.
    pub id: i64,
    /// The job.
    pub job: String,
    /// `schedule`, `catch_up` or `manual`.
    pub trigger: String,
    /// The due time it ran for (its start, if manual).
    pub scheduled_for: String,
    /// When it started.
    pub started_at: String,
    /// When it ended; `None` while running.
    pub finished_at: Option<String>,
    /// `running`, `ok`, `failed` or `skipped`.
    pub status: String,
    /// How long it took.
    pub duration_ms: Option<i64>,
    /// The job's result, or its error.
    pub detail: Value,
}

/// A job's schedule and state, for `GET /v1/jobs` and `tradevault status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobView {
    /// The job.
    pub name: String,
    /// Its cron expression.
    pub schedule: String,
    /// Its next due time.
    pub next_run: Option<String>,
    /// Whether a run is going on now.
    pub running: bool,
    /// Its latest run.
    pub last_run: Option<JobRun>,
}

struct Job {
    spec: JobSpec,
    cron: Option<croner::Cron>,
    state: Mutex<JobState>,
}

#[derive(Default)]
struct JobState {
    running: bool,
    /// The due time of the last scheduled (not manual) run.
    last_due: Option<Timestamp>,
}

impl Job {
    fn lock(&self) -> MutexGuard<'_, JobState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The first due time strictly after `t`.
    fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        let zoned = t.to_zoned(jiff::tz::TimeZone::UTC);
        self.cron
            .as_ref()?
            .find_next_occurrence(&zoned, false)
            .ok()
            .map(|z| z.timestamp())
    }
}

/// Parses a cron expression (5 fields, or 6 with seconds first).
pub fn parse_schedule(expr: &str) -> std::result::Result<croner::Cron, String> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .build()
        .parse(expr)
        .map_err(|e| format!("{expr:?} is not a cron expression: {e}"))
}

/// Runs jobs on their schedules until stopped.
pub struct Scheduler {
    store: Arc<Store>,
    clock: Arc<dyn Clock>,
    jobs: Vec<Job>,
    started_at: Timestamp,
}

impl Scheduler {
    /// A scheduler of `specs`; reads each job's last due time from the store and marks runs that
    /// a crash interrupted as failed.
    pub async fn new(
        store: Arc<Store>,
        clock: Arc<dyn Clock>,
        specs: Vec<JobSpec>,
    ) -> Result<Arc<Scheduler>> {
        let mut jobs = Vec::new();
        for spec in specs {
            let cron = if spec.schedule.trim().is_empty() {
                None
            } else {
                Some(parse_schedule(&spec.schedule).map_err(|m| {
                    Error::invalid("bad_schedule", None, format!("job {}: {m}", spec.name))
                })?)
            };
            jobs.push(Job {
                spec,
                cron,
                state: Mutex::default(),
            });
        }
        let started_at = clock.now();
        let (interrupted, last): (i64, Vec<(String, String)>) = store
            .read(|conn| {
                let sql = |e| Error::sqlite("read job history", e);
                let interrupted = conn
                    .query_row(
                        "SELECT count(*) FROM job_runs WHERE status = 'running'",
                        [],
                        |r| r.get(0),
                    )
                    .map_err(sql)?;
                let mut stmt = conn
                    .prepare(
                        "SELECT job, max(scheduled_for) FROM job_runs \
                         WHERE trigger != 'manual' GROUP BY job",
                    )
                    .map_err(sql)?;
                let rows = stmt
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                    .map_err(sql)?
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(sql)?;
                Ok((interrupted, rows))
            })
            .await?;
        if interrupted > 0 {
            let now_text = format_timestamp(started_at);
            committed(
                store
                    .write(move |tx| {
                        tx.conn
                            .execute(
                                "UPDATE job_runs SET status = 'failed', finished_at = ?1, \
                                 detail = json_object('error', 'interrupted: the server stopped during this run') \
                                 WHERE status = 'running'",
                                [&now_text],
                            )
                            .map_err(|e| Error::sqlite("mark interrupted job runs", e))
                    })
                    .await,
            )?;
            tracing::warn!(
                runs = interrupted,
                "job runs interrupted by a stop were marked failed"
            );
        }
        for (name, due) in last {
            if let Some(job) = jobs.iter().find(|j| j.spec.name == name) {
                job.lock().last_due = crate::exact::parse_timestamp(&due).ok();
            }
        }
        Ok(Arc::new(Scheduler {
            store,
            clock,
            jobs,
            started_at,
        }))
    }

    /// The jobs due at `now`: (index, the latest due time at or before `now`, trigger). A job
    /// whose due times were missed runs once, for the latest of them.
    fn due(&self, now: Timestamp) -> Vec<(usize, Timestamp, Trigger)> {
        let mut out = Vec::new();
        for (i, job) in self.jobs.iter().enumerate() {
            let last = job.lock().last_due;
            let Some(mut due) = job.next_after(last.unwrap_or(self.started_at)) else {
                continue;
            };
            if due > now {
                continue;
            }
            let mut missed = false;
            // The latest due time not after now (bounded: a job due every second, down a day).
            for _ in 0..100_000 {
                match job.next_after(due) {
                    Some(next) if next <= now => {
                        due = next;
                        missed = true;
                    }
                    _ => break,
                }
            }
            let trigger = if missed || last.is_some_and(|_| due < self.started_at) {
                Trigger::CatchUp
            } else {
                Trigger::Schedule
            };
            out.push((i, due, trigger));
        }
        out
    }

    /// Starts every job due at the clock's time; returns the runs started (for tests to await).
    pub async fn tick(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        let now = self.clock.now();
        let mut started = Vec::new();
        for (i, due, trigger) in self.due(now) {
            let job = &self.jobs[i];
            let already = {
                let mut st = job.lock();
                st.last_due = Some(due);
                std::mem::replace(&mut st.running, true)
            };
            if already {
                tracing::warn!(job = %job.spec.name, "still running from its last due time; this one is skipped");
                if let Err(e) = self.record_skipped(i, due, trigger).await {
                    tracing::warn!(job = %job.spec.name, error = %e, "could not record a skipped run");
                }
                continue;
            }
            started.push(self.start(i, due, trigger));
        }
        started
    }

    /// Runs `name` now, unless it is running. Returns the run's row id.
    pub async fn trigger(self: &Arc<Self>, name: &str) -> Result<i64> {
        let i = self
            .jobs
            .iter()
            .position(|j| j.spec.name == name)
            .ok_or_else(|| Error::NotFound {
                what: format!("job {name:?}"),
            })?;
        if std::mem::replace(&mut self.jobs[i].lock().running, true) {
            return Err(Error::Conflict {
                field: "name".into(),
                message: format!("job {name} is running; wait for it to end"),
            });
        }
        let now = self.clock.now();
        let id = match self.insert_run(i, now, Trigger::Manual).await {
            Ok(id) => id,
            Err(e) => {
                self.jobs[i].lock().running = false;
                return Err(e);
            }
        };
        let me = self.clone();
        tokio::spawn(async move { me.execute(i, id).await });
        Ok(id)
    }

    fn start(
        self: &Arc<Self>,
        i: usize,
        due: Timestamp,
        trigger: Trigger,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            match me.insert_run(i, due, trigger).await {
                Ok(id) => me.execute(i, id).await,
                Err(e) => {
                    me.jobs[i].lock().running = false;
                    tracing::warn!(job = %me.jobs[i].spec.name, error = %e, "could not record a run; not started");
                }
            }
        })
    }

    /// Runs job `i` (already marked running) as run `id`, then records how it ended.
    async fn execute(self: Arc<Self>, i: usize, id: i64) {
        let job = &self.jobs[i];
        let name = job.spec.name.clone();
        tracing::info!(job = %name, run = id, "job started");
        let started = std::time::Instant::now();
        let run = job.spec.run.clone();
        let context = JobContext { run_id: id };
        let result = tokio::task::spawn_blocking(move || run(&context))
            .await
            .unwrap_or_else(|_| {
                Err(Error::Internal {
                    message: "the job panicked; see the server log".into(),
                })
            });
        let ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        // A job may also fail with a full report: `{"ok": false, ...}`.
        let (status, detail) = match &result {
            Ok(v) if v.get("ok") == Some(&Value::Bool(false)) => ("failed", v.clone()),
            Ok(v) => ("ok", v.clone()),
            Err(e) => ("failed", serde_json::json!({ "error": e.to_string() })),
        };
        match &result {
            Ok(_) => tracing::info!(job = %name, run = id, duration_ms = ms, "job done"),
            Err(e) => {
                tracing::warn!(job = %name, run = id, duration_ms = ms, error = %e, "job failed")
            }
        }
        crate::metrics::job_run(&name, status, ms as f64 / 1000.0);
        let finished = format_timestamp(self.clock.now());
        let detail = detail.to_string();
        let recorded = self
            .store
            .write(move |tx| {
                tx.conn
                    .execute(
                        "UPDATE job_runs SET status = ?1, finished_at = ?2, duration_ms = ?3, detail = ?4 \
                         WHERE id = ?5",
                        rusqlite::params![status, finished, ms, detail, id],
                    )
                    .map_err(|e| Error::sqlite("record job run", e))
            })
            .await;
        if let Err(e) = committed(recorded) {
            tracing::warn!(job = %name, run = id, error = %e, "could not record how the run ended");
        }
        job.lock().running = false;
    }

    async fn insert_run(&self, i: usize, due: Timestamp, trigger: Trigger) -> Result<i64> {
        let job = self.jobs[i].spec.name.clone();
        let due = format_timestamp(due);
        let now = format_timestamp(self.clock.now());
        let (j, d) = (job.clone(), due.clone());
        let inserted = self
            .store
            .write(move |tx| {
                tx.conn
                    .execute(
                        "INSERT INTO job_runs (job, trigger, scheduled_for, started_at, status) \
                         VALUES (?1, ?2, ?3, ?4, 'running')",
                        rusqlite::params![j, trigger.as_str(), d, now],
                    )
                    .map_err(|e| Error::sqlite("record job run", e))?;
                Ok(tx.conn.last_insert_rowid())
            })
            .await;
        match committed(inserted)? {
            Some(id) => Ok(id),
            // Stored, but its answer was held back by sync replication: read its id.
            None => {
                self.store
                    .read(move |conn| {
                        conn.query_row(
                            "SELECT max(id) FROM job_runs WHERE job = ?1 AND scheduled_for = ?2",
                            [&job, &due],
                            |r| r.get(0),
                        )
                        .map_err(|e| Error::sqlite("read job run", e))
                    })
                    .await
            }
        }
    }

    async fn record_skipped(&self, i: usize, due: Timestamp, trigger: Trigger) -> Result<()> {
        let job = self.jobs[i].spec.name.clone();
        let due = format_timestamp(due);
        let now = format_timestamp(self.clock.now());
        let recorded = self.store
            .write(move |tx| {
                tx.conn
                    .execute(
                        "INSERT INTO job_runs (job, trigger, scheduled_for, started_at, finished_at, status, duration_ms, detail) \
                         VALUES (?1, ?2, ?3, ?4, ?4, 'skipped', 0, json_object('reason', 'the previous run was still going'))",
                        rusqlite::params![job, trigger.as_str(), due, now],
                    )
                    .map_err(|e| Error::sqlite("record job run", e))?;
                Ok(())
            })
            .await;
        committed(recorded).map(|_| ())
    }

    /// Ticks until `shutdown` completes: at each job's due time, and at least once a minute (so a
    /// clock change is noticed). Runs going on at shutdown are not waited for; the next start marks
    /// them interrupted.
    pub async fn run(self: Arc<Self>, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            self.tick().await;
            let now = self.clock.now();
            let next = self
                .jobs
                .iter()
                .filter_map(|j| j.next_after(j.lock().last_due.unwrap_or(self.started_at).max(now)))
                .min();
            let wait = next
                .map(|t| t.duration_since(now).unsigned_abs())
                .unwrap_or(Duration::from_secs(60))
                .clamp(Duration::from_millis(10), Duration::from_secs(60));
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Every job with its next due time and latest run.
    pub async fn jobs(&self) -> Result<Vec<JobView>> {
        let runs = self.history(None, 1_000).await?;
        let now = self.clock.now();
        Ok(self
            .jobs
            .iter()
            .map(|j| {
                let st = j.lock();
                let from = st.last_due.unwrap_or(self.started_at).max(now);
                JobView {
                    name: j.spec.name.clone(),
                    schedule: j.spec.schedule.clone(),
                    next_run: j.next_after(from).map(format_timestamp),
                    running: st.running,
                    last_run: runs.iter().find(|r| r.job == j.spec.name).cloned(),
                }
            })
            .collect())
    }

    /// The latest runs, newest first, of one job or all.
    pub async fn history(&self, job: Option<String>, limit: u32) -> Result<Vec<JobRun>> {
        self.store
            .read(move |conn| history(conn, job.as_deref(), limit))
            .await
    }
}

/// A write's result, counting one that is stored locally but not yet confirmed by sync replicas as
/// done (`None`: its answer was not returned).
fn committed<T>(result: Result<T>) -> Result<Option<T>> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(Error::NotReplicated { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The latest runs in `job_runs`, newest first, of one job or all.
pub fn history(conn: &rusqlite::Connection, job: Option<&str>, limit: u32) -> Result<Vec<JobRun>> {
    let sql = |e| Error::sqlite("read job history", e);
    let mut stmt = conn
        .prepare(
            "SELECT id, job, trigger, scheduled_for, started_at, finished_at, status, duration_ms, detail \
             FROM job_runs WHERE ?1 IS NULL OR job = ?1 ORDER BY id DESC LIMIT ?2",
        )
        .map_err(sql)?;
    let rows = stmt
        .query_map(rusqlite::params![job, limit], |r| {
            let detail: Option<String> = r.get(8)?;
            Ok(JobRun {
                id: r.get(0)?,
                job: r.get(1)?,
                trigger: r.get(2)?,
                scheduled_for: r.get(3)?,
                started_at: r.get(4)?,
                finished_at: r.get(5)?,
                status: r.get(6)?,
                duration_ms: r.get(7)?,
                detail: detail
                    .and_then(|d| serde_json::from_str(&d).ok())
                    .unwrap_or(Value::Null),
            })
        })
        .map_err(sql)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(sql)?;
    Ok(rows)
}
