//! The jobs `serve` schedules, from `[jobs]` and what they work on.

use tradevault::Config;
use tradevault::jobs::JobSpec;

/// The jobs to schedule: each `[jobs]` entry that is on and has something to work on.
pub fn specs(config: &Config) -> Vec<JobSpec> {
    let specs = Vec::new();
    for (name, schedule) in config.jobs.schedules() {
        // Backups, pruning, verification and drills need backup targets; none are wired yet.
        tracing::debug!(job = name, schedule, "no target to run this job on; not scheduled");
    }
    specs
}
