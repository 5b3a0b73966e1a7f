//! Every metric name is defined here and nowhere else. Metrics are public API: `tradevault_`
//! prefix, `_total` on counters, base units (`_seconds`, `_bytes`).

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// HTTP requests answered, by `route` (the matched path template), `method` and `status`.
pub const HTTP_REQUESTS_TOTAL: &str = "tradevault_http_requests_total";
/// Time to answer an HTTP request, by `route` and `method`.
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "tradevault_http_request_duration_seconds";
/// Transactions committed by the writer.
pub const STORE_COMMITS_TOTAL: &str = "tradevault_store_commits_total";
/// Time from BEGIN to durable COMMIT of one group.
pub const STORE_COMMIT_DURATION_SECONDS: &str = "tradevault_store_commit_duration_seconds";
/// Requests committed together in one transaction.
pub const STORE_COMMIT_REQUESTS: &str = "tradevault_store_commit_requests";
/// Rows inserted or updated, by `table`.
pub const STORE_ROWS_WRITTEN_TOTAL: &str = "tradevault_store_rows_written_total";
/// Size of the database file.
pub const STORE_DATABASE_BYTES: &str = "tradevault_store_database_bytes";
/// Size of the WAL file.
pub const STORE_WAL_BYTES: &str = "tradevault_store_wal_bytes";
/// Frames in the WAL after the last commit.
pub const STORE_WAL_FRAMES: &str = "tradevault_store_wal_frames";
/// The most frames the WAL held after any commit since the store opened (its high-water mark).
pub const STORE_WAL_FRAMES_PEAK: &str = "tradevault_store_wal_frames_peak";
/// WAL checkpoints run by the store.
pub const STORE_CHECKPOINTS_TOTAL: &str = "tradevault_store_checkpoints_total";
/// Time one checkpoint took.
pub const STORE_CHECKPOINT_DURATION_SECONDS: &str = "tradevault_store_checkpoint_duration_seconds";
/// LTX files written to a replica, by `database`, `replica` and `kind` (`snapshot` or `transactions`).
pub const REPLICATION_FILES_TOTAL: &str = "tradevault_replication_files_total";
/// Bytes written to a replica, by `replica`.
pub const REPLICATION_BYTES_TOTAL: &str = "tradevault_replication_bytes_total";
/// Failed syncs, by `database` and `replica` (`local`: the shipper's), each retried with backoff;
/// 0 from the start for every configured replica.
pub const REPLICATION_ERRORS_TOTAL: &str = "tradevault_replication_errors_total";
/// The newest TXID on a replica, by `replica`.
pub const REPLICATION_TXID: &str = "tradevault_replication_txid";
/// Seconds since a replica last held everything shipped (what `tradevault restore` reaches from
/// it; see `DatabaseStatus::measure_lags`), by `replica`.
pub const REPLICATION_LAG_SECONDS: &str = "tradevault_replication_lag_seconds";
/// Checkpoints of the replication engine that truncated a WAL, by `database`; 0 from the start.
pub const REPLICATION_CHECKPOINTS_TOTAL: &str = "tradevault_replication_checkpoints_total";
/// Size of a replicated database's WAL, by `database`.
pub const REPLICATION_WAL_BYTES: &str = "tradevault_replication_wal_bytes";
/// 1 while the writer refuses writes after a failed write or fsync, else 0.
pub const STORE_WRITER_POISONED: &str = "tradevault_store_writer_poisoned";
/// Runs of scheduled jobs, by job and status (`ok`, `failed`).
pub const JOB_RUNS_TOTAL: &str = "tradevault_job_runs_total";
/// How long job runs took, by job.
pub const JOB_DURATION_SECONDS: &str = "tradevault_job_duration_seconds";
/// When each job last ended well (seconds since the epoch), by job.
pub const JOB_LAST_SUCCESS_TIMESTAMP: &str = "tradevault_job_last_success_timestamp_seconds";
/// Restore drills, by database and result (`ok`, `failed`).
pub const DRILLS_TOTAL: &str = "tradevault_drills_total";
/// How long the last drill took to reach a checked copy (the recovery time), by database.
pub const DRILL_RTO_SECONDS: &str = "tradevault_drill_rto_seconds";
/// When each database was last proven restorable by a drill (seconds since the epoch).
pub const LAST_VERIFIED_RESTORABLE: &str = "tradevault_last_verified_restorable_timestamp_seconds";
/// Always 1; labelled with the `version` running.
pub const BUILD_INFO: &str = "tradevault_build_info";

const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
const GROUP_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder (once) and returns the handle that renders it, or `None`
/// if another recorder was installed first.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(STORE_COMMIT_REQUESTS.into()),
                        GROUP_BUCKETS,
                    )
                });
            let handle = builder.ok()?.install_recorder().ok()?;
            gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            gauge!(STORE_WRITER_POISONED).set(0.0);
            Some(handle)
        })
        .clone()
}

pub(crate) fn http_request(route: &str, method: &str, status: u16, elapsed: Duration) {
    counter!(HTTP_REQUESTS_TOTAL, "route" => route.to_owned(), "method" => method.to_owned(), "status" => status.to_string())
        .increment(1);
    histogram!(HTTP_REQUEST_DURATION_SECONDS, "route" => route.to_owned(), "method" => method.to_owned())
        .record(elapsed.as_secs_f64());
}

pub(crate) fn commit(elapsed: Duration, requests: usize) {
    counter!(STORE_COMMITS_TOTAL).increment(1);
    histogram!(STORE_COMMIT_DURATION_SECONDS).record(elapsed.as_secs_f64());
    histogram!(STORE_COMMIT_REQUESTS).record(requests as f64);
}

pub(crate) fn rows_written(table: &'static str, n: u64) {
    counter!(STORE_ROWS_WRITTEN_TOTAL, "table" => table).increment(n);
}

pub(crate) fn checkpoint(elapsed: Duration) {
    counter!(STORE_CHECKPOINTS_TOTAL).increment(1);
    histogram!(STORE_CHECKPOINT_DURATION_SECONDS).record(elapsed.as_secs_f64());
}
pub(crate) fn wal_frames(now: u64, peak: u64) {
    gauge!(STORE_WAL_FRAMES).set(now as f64);
    gauge!(STORE_WAL_FRAMES_PEAK).set(peak as f64);
}

pub(crate) fn set_writer_poisoned(poisoned: bool) {
    gauge!(STORE_WRITER_POISONED).set(if poisoned { 1.0 } else { 0.0 });
}

pub(crate) fn file_sizes(database_bytes: u64, wal_bytes: u64) {
    gauge!(STORE_DATABASE_BYTES).set(database_bytes as f64);
    gauge!(STORE_WAL_BYTES).set(wal_bytes as f64);
}

pub(crate) fn replicated(database: &str, replica: &str, snapshot: bool, bytes: u64, txid: u64) {
    let kind = if snapshot { "snapshot" } else { "transactions" };
    let (d, r) = (database.to_owned(), replica.to_owned());
    counter!(REPLICATION_FILES_TOTAL, "database" => d.clone(), "replica" => r.clone(), "kind" => kind)
        .increment(1);
    counter!(REPLICATION_BYTES_TOTAL, "database" => d.clone(), "replica" => r.clone())
        .increment(bytes);
    gauge!(REPLICATION_TXID, "database" => d, "replica" => r).set(txid as f64);
}

/// Registers a replicated database's counters at 0, so that they exist (and rates and alerts on
/// them work) before the first upload, error or checkpoint: files and bytes uploaded and errors
/// for each replica, errors for `local` (the shipper's label: reading the WAL, writing the local
/// log), and checkpoints.
pub(crate) fn replication_started<'a>(database: &str, replicas: impl IntoIterator<Item = &'a str>) {
    for replica in replicas.into_iter().chain(["local"]) {
        counter!(REPLICATION_ERRORS_TOTAL, "database" => database.to_owned(), "replica" => replica.to_owned())
            .increment(0);
        if replica != "local" {
            let (d, r) = (database.to_owned(), replica.to_owned());
            for kind in ["snapshot", "transactions"] {
                counter!(REPLICATION_FILES_TOTAL, "database" => d.clone(), "replica" => r.clone(), "kind" => kind)
                    .increment(0);
            }
            counter!(REPLICATION_BYTES_TOTAL, "database" => d, "replica" => r).increment(0);
        }
    }
    counter!(REPLICATION_CHECKPOINTS_TOTAL, "database" => database.to_owned()).increment(0);
}

pub(crate) fn replication_failed(database: &str, replica: &str) {
    counter!(REPLICATION_ERRORS_TOTAL, "database" => database.to_owned(), "replica" => replica.to_owned())
        .increment(1);
}

pub(crate) fn replication_lag(database: &str, replica: &str, seconds: f64) {
    gauge!(REPLICATION_LAG_SECONDS, "database" => database.to_owned(), "replica" => replica.to_owned())
        .set(seconds);
}

pub(crate) fn replication_checkpoint(database: &str) {
    counter!(REPLICATION_CHECKPOINTS_TOTAL, "database" => database.to_owned()).increment(1);
}

pub(crate) fn replication_wal_bytes(database: &str, bytes: u64) {
    gauge!(REPLICATION_WAL_BYTES, "database" => database.to_owned()).set(bytes as f64);
}

pub(crate) fn job_run(job: &str, status: &'static str, seconds: f64) {
    counter!(JOB_RUNS_TOTAL, "job" => job.to_owned(), "status" => status).increment(1);
    histogram!(JOB_DURATION_SECONDS, "job" => job.to_owned()).record(seconds);
    if status == "ok" {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        gauge!(JOB_LAST_SUCCESS_TIMESTAMP, "job" => job.to_owned()).set(now);
    }
}

pub(crate) fn drill(database: &str, ok: bool, rto_seconds: f64) {
    let result = if ok { "ok" } else { "failed" };
    counter!(DRILLS_TOTAL, "database" => database.to_owned(), "result" => result).increment(1);
    if ok {
        gauge!(DRILL_RTO_SECONDS, "database" => database.to_owned()).set(rto_seconds);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        gauge!(LAST_VERIFIED_RESTORABLE, "database" => database.to_owned()).set(now);
    }
}
