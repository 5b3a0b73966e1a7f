//! `tradevault restore --json`: the result names the point restored, what it took and how long
//! each step ran; piped, nothing but the result is printed.

use std::path::Path;

use serde_json::Value;

use crate::common::command;

#[test]
fn restore_json_reports_the_point_sizes_check_and_durations() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fixtures =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/ltx-litestream-0.5.17");
    let url = format!(
        "file://{}",
        fixtures
            .join("replica")
            .canonicalize()
            .expect("fixture")
            .display()
    );
    let want = std::fs::metadata(fixtures.join("restored-latest.db"))
        .expect("fixture")
        .len();
    for (flags, check) in [
        (&[][..], "integrity_check"),
        (&["--quick-check"][..], "quick_check"),
    ] {
        let out = dir.path().join(format!("{check}.db"));
        let done = command()
            .args(["restore", "--replica", &url, "--json", "--output"])
            .arg(&out)
            .args(flags)
            .output()
            .expect("run restore");
        let stderr = String::from_utf8_lossy(&done.stderr);
        assert!(done.status.success(), "{stderr}");
        assert!(
            !stderr.contains("eta"),
            "no progress bar when piped: {stderr}"
        );
        let result: Value = serde_json::from_slice(&done.stdout).expect("one JSON object");
        assert_eq!(result["output"], out.display().to_string());
        assert_eq!(result["txid"], 16);
        let point = result["point_time"].as_str().expect("point_time");
        let parsed: jiff::Timestamp = point.parse().expect("RFC 3339");
        assert_eq!(Some(parsed.as_millisecond()), result["point_ms"].as_i64());
        assert_eq!(result["files"], 1);
        assert!(result["fetched_bytes"].as_u64().is_some_and(|b| b > 0));
        assert_eq!(result["bytes"].as_u64(), Some(want));
        assert_eq!(
            result["pages"]
                .as_u64()
                .zip(result["page_size"].as_u64())
                .map(|(p, s)| p * s),
            Some(want)
        );
        assert_eq!(result["check"], check);
        for step in ["plan", "fetch_apply", "check", "sync", "total"] {
            let seconds = result["durations"][format!("{step}_seconds")].as_f64();
            assert!(seconds.is_some_and(|s| s >= 0.0), "{step}: {result}");
        }
        assert_eq!(std::fs::metadata(&out).expect("restored").len(), want);
    }
}
