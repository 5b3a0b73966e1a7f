//! The CPU floor of P1 (a commit on a file replica within 10 ms at 2,000 commits/s, using at most
//! 10% of a core): what the file system alone charges for one shipment every 8 ms, with no WAL to
//! read, no LTX to encode and no second thread, for each way a shipment can be made durable.
//!
//! - `layout`: a new file per shipment in Litestream's layout, made durable: create under a
//!   temporary name, write, fsync, rename, fsync of the directory (what a file replica needs at
//!   least, whoever writes it);
//! - `layout-no-dir-sync`: the same without the directory's fsync (Litestream's own file replica:
//!   a machine crash may lose the name);
//! - `journal`: an append into a file of 16 MiB whose blocks were written beforehand, and one
//!   `fdatasync` (no inode, no name: sync mode's journal);
//! - `append`: an append at the end of a file that grows, and one `fdatasync` (which then also
//!   writes the new blocks' allocation and the inode's size), a new file every 64 MiB.
//!
//! Each runs for TRADEVAULT_BENCH_SECONDS (default 15) at one shipment per 8 ms of
//! TRADEVAULT_BENCH_BYTES (default 72 KiB, an LZ4 shipment of 16 trading commits), in its own
//! directory under TMPDIR; its CPU (user + system, from /proc) is printed as a share of one core.
//! Nothing is deleted until every variant ran: on ext4 without a journal, each new inode steps
//! over the inodes freed in the last minutes, so a variant run after a deletion pays for it.
//!
//! `cargo bench -p tradevault --bench layout_floor`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

const INTERVAL: Duration = Duration::from_millis(8);
const JOURNAL_BYTES: u64 = 16 << 20;
const APPEND_BYTES: u64 = 64 << 20;

fn main() {
    let seconds: u64 = env_or("TRADEVAULT_BENCH_SECONDS", 15);
    let bytes: usize = env_or("TRADEVAULT_BENCH_BYTES", 72 << 10);
    let root = tempfile::tempdir().expect("scratch directory");
    // Bytes that do not compress or repeat, as an LZ4 file's.
    let mut payload = vec![0u8; bytes];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for b in &mut payload {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    println!(
        "one shipment of {} KiB every {} ms for {seconds} s, in {}",
        bytes >> 10,
        INTERVAL.as_millis(),
        root.path().display()
    );
    for variant in ["journal", "append", "layout-no-dir-sync", "layout"] {
        let dir = root.path().join(variant);
        std::fs::create_dir(&dir).expect("variant directory");
        let mut journal = (variant == "journal").then(|| prepare_journal(&dir));
        let mut appended: Option<File> = None;
        let mut at = 0u64;
        let (cpu0, wall0) = (cpu_seconds(), Instant::now());
        let mut next = Instant::now();
        let mut shipments = 0u64;
        while wall0.elapsed() < Duration::from_secs(seconds) {
            match journal.as_mut() {
                Some(f) => {
                    if at + bytes as u64 > JOURNAL_BYTES {
                        at = 0;
                    }
                    f.write_all_at(&payload, at).expect("journal write");
                    f.sync_data().expect("journal fdatasync");
                    at += bytes as u64;
                }
                None if variant == "append" => {
                    if appended.is_none() || at + bytes as u64 > APPEND_BYTES {
                        let name = dir.join(format!("{shipments:016x}.seg"));
                        appended = Some(File::create(name).expect("segment"));
                        at = 0;
                    }
                    let f = appended.as_mut().expect("segment");
                    f.write_all(&payload).expect("append");
                    f.sync_data().expect("append fdatasync");
                    at += bytes as u64;
                }
                None => new_file(&dir, shipments, &payload, variant == "layout"),
            }
            shipments += 1;
            next += INTERVAL;
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        let (cpu, wall) = (cpu_seconds() - cpu0, wall0.elapsed().as_secs_f64());
        println!(
            "{variant:>20}: {:5.1}% of a core, {:.0} shipments/s, {:.0} us of CPU each",
            cpu / wall * 100.0,
            shipments as f64 / wall,
            cpu / shipments as f64 * 1e6
        );
    }
}

fn new_file(dir: &Path, n: u64, payload: &[u8], dir_sync: bool) {
    let tmp = dir.join(format!("{n:016x}.ltx.tmp"));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .expect("create");
    f.write_all(payload).expect("write");
    f.sync_all().expect("fsync");
    drop(f);
    std::fs::rename(&tmp, dir.join(format!("{n:016x}.ltx"))).expect("rename");
    if dir_sync {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .expect("directory fsync");
    }
}

fn prepare_journal(dir: &Path) -> File {
    let mut f = File::create(dir.join("journal")).expect("journal");
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..JOURNAL_BYTES >> 20 {
        f.write_all(&zeros).expect("fill journal");
    }
    f.sync_all().expect("fsync journal");
    f
}

/// This process's user + system CPU time, in seconds (fields 14 and 15 of /proc/self/stat, in
/// clock ticks of 1/100 s, as Linux reports them on x86-64).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // The command name may hold spaces: count fields after its closing parenthesis.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks = |i: usize| fields[i - 3].parse::<f64>().expect("tick count");
    (ticks(14) + ticks(15)) / 100.0
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
