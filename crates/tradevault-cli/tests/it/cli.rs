//! The command line: help, version, init, stats, check, config errors and exit codes.

use serde_json::Value;

use crate::common::{Server, command};

fn run(args: &[&str]) -> (i32, String, String) {
    let out = command().args(args).output().expect("run tradevault");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_and_version() {
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, 0);
    for sub in ["serve", "init", "stats", "check"] {
        assert!(out.contains(sub), "--help lists {sub}:\n{out}");
    }
    let (code, out, _) = run(&["--version"]);
    assert_eq!(
        (code, out.trim()),
        (0, concat!("tradevault ", env!("CARGO_PKG_VERSION")))
    );
    let (code, out, _) = run(&["serve", "--help"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("--listen") && out.contains("--data-dir"),
        "{out}"
    );
    assert_eq!(
        run(&["frobnicate"]).0,
        2,
        "unknown subcommand is a usage error"
    );
    assert_eq!(run(&["stats", "--bogus"]).0, 2);
}

#[test]
fn init_stats_and_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_str().expect("utf8");
    let (code, out, err) = run(&["init", "--data-dir", d, "--json"]);
    assert_eq!(code, 0, "{err}");
    let init: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        init["schema_version"],
        tradevault::store::schema::SCHEMA_VERSION
    );
    assert!(dir.path().join("tradevault.db").exists());
    {
        let server = Server::start(dir.path());
        let mut api = server.client();
        let t = serde_json::json!({ "trade_id": "a", "symbol": "X", "side": "buy", "qty": "1", "price": "2" });
        assert_eq!(api.post("/v1/trades", &t).0, 201);
        // stats and check read beside a running server
        let (code, out, err) = run(&["stats", "--json", "--data-dir", d]);
        assert_eq!(code, 0, "{err}");
        let stats: Value = serde_json::from_str(&out).expect("json");
        assert_eq!(
            (
                stats["tables"]["trades"].as_i64(),
                stats["integrity"].as_str()
            ),
            (Some(1), Some("ok"))
        );
    }
    let (code, out, _) = run(&["stats", "--data-dir", d]);
    assert_eq!(code, 0);
    assert!(
        out.contains("trades") && out.contains("schema version"),
        "{out}"
    );
    let (code, out, err) = run(&["check", "--full", "--json", "--data-dir", d]);
    assert_eq!(code, 0, "{err}");
    let report: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(report["ok"], true, "{report}");
    let names: Vec<&str> = report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .map(|c| c["name"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(names, ["integrity", "schema", "foreign_keys", "positions"]);
}

#[test]
fn a_position_that_disagrees_with_its_fills_fails_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_str().expect("utf8");
    {
        let server = Server::start(dir.path());
        let t = serde_json::json!({ "trade_id": "a", "symbol": "X", "side": "buy", "qty": "1", "price": "2" });
        assert_eq!(server.client().post("/v1/trades", &t).0, 201);
    }
    crate::common::open_db(dir.path())
        .execute("UPDATE positions SET qty = '7'", [])
        .expect("tamper");
    let (code, out, err) = run(&["check", "--json", "--data-dir", d]);
    assert_eq!(code, 1, "{out}{err}");
    let report: Value = serde_json::from_str(&out).expect("json");
    let positions = report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == "positions")
        .cloned()
        .unwrap_or_default();
    assert_eq!(positions["ok"], false, "{report}");
    assert!(err.contains("hint:"), "{err}");
}

#[test]
fn missing_store_explains_what_to_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, _, err) = run(&[
        "stats",
        "--data-dir",
        dir.path().join("none").to_str().expect("utf8"),
    ]);
    assert_eq!(code, 1);
    assert!(err.starts_with("tradevault: no database at"), "{err}");
    assert!(err.contains("hint: run 'tradevault init'"), "{err}");
}

#[test]
fn invalid_config_names_the_key_and_the_file_and_starts_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bad.toml");
    let data = dir.path().join("data");
    for (text, key) in [
        ("[server]\nlisten = 7878\n", "server.listen"),
        ("[server]\nlisten = \"nowhere\"\n", "server.listen"),
        ("[store]\nread_conections = 2\n", "store.read_conections"),
        ("[api]\npage_limit_max = 0\n", "api.page_limit_max"),
        (
            "[[database]]\nname = \"a\"\npath = \"/x\"\n[[database.replica]]\nurl = \"file:///r\"\n\
             [[database]]\nname = \"a\"\npath = \"/y\"\n[[database.replica]]\nurl = \"file:///r\"\n",
            "database[1].name",
        ),
        (
            "[[database]]\nname = \"a\"\npath = \"/x\"\nacess_key = 1\n",
            "database[0].acess_key",
        ),
    ] {
        std::fs::write(&file, text).expect("write config");
        let (code, _, err) = run(&[
            "serve",
            "--config",
            file.to_str().expect("utf8"),
            "--data-dir",
            data.to_str().expect("utf8"),
        ]);
        assert_eq!(code, 2, "{text}: {err}");
        assert!(
            err.contains(key) && err.contains("bad.toml"),
            "{text}: {err}"
        );
        assert!(err.contains("hint:"), "{err}");
        assert!(!data.exists(), "nothing started for {text}");
    }
    let out = command()
        .args(["serve", "--data-dir", data.to_str().expect("utf8")])
        .env("TRADEVAULT_STORE_READ_CONNECTIONS", "lots")
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("TRADEVAULT_STORE_READ_CONNECTIONS") && err.contains("store.read_connections"),
        "{err}"
    );
    std::fs::write(
        &file,
        "[server]\nlisten = \"127.0.0.1:0\"\n[store]\nread_connections = 2\n",
    )
    .expect("write");
    let server = Server::try_start(
        {
            let mut c = command();
            c.args(["--config", file.to_str().expect("utf8")]);
            c
        },
        &data,
        &[],
    );
    assert!(
        server.is_ok(),
        "a valid config file starts: {:?}",
        server.err()
    );
}

#[test]
fn example_config_is_complete_and_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tradevault.example.toml");
    let text = std::fs::read_to_string(example).expect("tradevault.example.toml exists");
    let parsed = tradevault::Config::load(Some(std::path::Path::new(example)), Vec::new())
        .expect("the example loads");
    assert_eq!(
        parsed,
        tradevault::Config::default(),
        "the example lists the defaults"
    );
    let defaults: toml::Table = toml::to_string(&tradevault::Config::default())
        .expect("ser")
        .parse()
        .expect("toml");
    assert!(
        text.contains("[[database]]"),
        "example shows a [[database]] entry"
    );
    for (section, keys) in &defaults {
        // Arrays of tables ([[database]]) are shown commented out, checked above.
        let Some(keys) = keys.as_table() else {
            continue;
        };
        for (key, value) in keys {
            // Arrays of tables ([[replication.replica]], [[backup.target]]) are shown commented
            // out, as a `key = []` line would keep them from being uncommented (TOML forbids it).
            let tables = [("replication", "replica"), ("backup", "target")];
            if tables.contains(&(section.as_str(), key.as_str())) {
                assert!(value.as_array().is_some(), "{section}.{key} is an array");
                assert!(
                    text.contains(&format!("# [[{section}.{key}]]")),
                    "example shows a commented [[{section}.{key}]] entry"
                );
                assert!(
                    !text.contains(&format!("\n{key} = []")),
                    "example must not write {section}.{key} = [] (uncommenting [[{section}.{key}]] would then fail)"
                );
                continue;
            }
            assert!(
                text.contains(&format!("{key} =")),
                "example lists {section}.{key}"
            );
        }
    }
    // Every commented [[...]] entry, uncommented, still loads.
    let uncommented: String = text
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest)
                if rest.starts_with("[[")
                    || rest
                        .split_once(" = ")
                        .is_some_and(|(k, _)| !k.contains(' ')) =>
            {
                rest.split(" #").next().unwrap_or(rest).to_owned()
            }
            _ => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    uncommented
        .parse::<toml::Table>()
        .expect("the example with its [[...]] entries uncommented is valid TOML");
}

/// `tradevault status | head -1`: a reader that goes away early never makes a command panic
/// (`failed printing to stdout: Broken pipe`); it ends with the status it has with a reader.
#[test]
fn a_closed_stdout_ends_every_command_quietly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_str().expect("utf8");
    let target = format!("file://{}", dir.path().join("backups").display());
    assert_eq!(run(&["init", "--data-dir", d]).0, 0);
    assert_eq!(
        run(&["backup", "create", "--data-dir", d, "--target", &target]).0,
        0
    );
    let commands: &[&[&str]] = &[
        &["status", "--data-dir", d],
        &["status", "--json", "--data-dir", d],
        &["stats", "--data-dir", d],
        &["stats", "--json", "--data-dir", d],
        &["check", "--data-dir", d],
        &["init", "--data-dir", d],
        &["backup", "list", "--target", &target],
        &["backup", "stats", "--target", &target],
        &["--help"],
        &["status", "--help"],
    ];
    for args in commands {
        let (expected, out, _) = run(args);
        assert!(!out.is_empty(), "{args:?} prints something");
        // A pipe whose reading end is already closed: the first write fails with EPIPE.
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let closed = command()
            .args(*args)
            .stdout(writer)
            .output()
            .expect("run tradevault");
        let stderr = String::from_utf8_lossy(&closed.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(!stderr.contains("Broken pipe"), "{args:?}: {stderr}");
        assert_eq!(closed.status.code(), Some(expected), "{args:?}: {stderr}");
    }
}
