//! The check against SQLite's own verdicts.

use super::plan::{Constraints, Plan, not_null_column, plan};
use super::value::{Hasher, Value, compare, int_real};
use super::*;

/// SQLite's own `integrity_check`, lines, empty for `ok`, on a connection that can write (one
/// that cannot skips CHECK constraints).
fn sqlite_says(path: &Path) -> Vec<String> {
    pragma_lines(&writable(path), "integrity_check", None).unwrap()
}

/// A connection to an existing file that can write, as `sqlite3 FILE` opens it.
fn writable(path: &Path) -> Connection {
    Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE).unwrap()
}

/// What the walk says of each table whose indexes it judges, by name: its rows, or why it
/// handed the table to SQLite.
fn walked(path: &Path) -> Vec<(String, std::result::Result<u64, Why>)> {
    let conn = open(path).unwrap();
    let plan = plan(&conn, path, Check::Integrity).unwrap();
    assert!(!plan.whole);
    let walked = walk(path, &plan, Check::Integrity).unwrap();
    plan.tables
        .iter()
        .filter(|t| t.walked(Check::Integrity) && !t.indexes.is_empty())
        .map(|t| {
            let handed = walked.handed.iter().find(|(n, _)| *n == t.name);
            let verdict = match handed {
                Some((_, why)) => Err(*why),
                None => Ok(walked.rows[&t.name]),
            };
            (t.name.clone(), verdict)
        })
        .collect()
}

/// Tables and indexes of many shapes, with values of every kind where lookups and sort
/// orders are subtle.
fn many_shapes(path: &Path) {
    let conn = Connection::open(path).unwrap();
    conn.execute_batch(
        "PRAGMA page_size = 1024;
         CREATE TABLE t(id INTEGER PRIMARY KEY, a TEXT, b REAL, c NUMERIC, d BLOB, e, f INT);
         CREATE INDEX t_a ON t(a);
         CREATE INDEX t_b_a ON t(b DESC, a);
         CREATE UNIQUE INDEX t_id_c ON t(c, id);
         CREATE INDEX t_a_nocase ON t(a COLLATE NOCASE);
         CREATE INDEX t_e_rtrim ON t(e COLLATE RTRIM DESC);
         CREATE INDEX t_id_b ON t(id, b);
         CREATE INDEX t_d_f ON t(d, f);
         CREATE TABLE positions(symbol TEXT PRIMARY KEY, qty REAL);
         CREATE TABLE plain(x, y);
         CREATE TABLE keyed(k TEXT PRIMARY KEY, v) WITHOUT ROWID;
         CREATE TABLE partial(x, y); CREATE INDEX partial_x ON partial(x) WHERE y > 0;
         CREATE TABLE expr(x TEXT); CREATE INDEX expr_lower ON expr(lower(x));
         CREATE TABLE gen(x INT, y INT GENERATED ALWAYS AS (x * 2) STORED);
         CREATE INDEX gen_y ON gen(y);
         CREATE TABLE grown(x INT);
         CREATE TABLE fills(id INTEGER PRIMARY KEY, order_id INT, signal_id INT, note TEXT);
         CREATE INDEX fills_order ON fills(order_id) WHERE order_id IS NOT NULL;
         CREATE UNIQUE INDEX fills_signal ON fills(signal_id, note) WHERE (signal_id NOTNULL);
         CREATE TABLE typed(id INTEGER PRIMARY KEY, n INT NOT NULL, r REAL, s TEXT, b BLOB,
             a ANY) STRICT;
         CREATE TABLE checked(id INTEGER PRIMARY KEY,
             side TEXT NOT NULL CHECK (side IN ('B', 'S')), qty REAL NOT NULL);
         CREATE INDEX checked_side ON checked(side, qty);
         CREATE TABLE added(x INT NOT NULL, note VARCHAR(10));",
    )
    .unwrap();
    let values = [
        "NULL",
        "0",
        "-0.0",
        "3",
        "3.0",
        "3.5",
        "-7",
        "9007199254740993",
        "9007199254740992.0",
        "9223372036854775807",
        "-9223372036854775808",
        "1e300",
        "-1e300",
        "0.1",
        "'12'",
        "'1e3'",
        "' 12 '",
        "'abc'",
        "'ABC'",
        "'abc  '",
        "'Zebra'",
        "x'00ff'",
        "x''",
        "''",
        "replace(hex(zeroblob(150)), '0', 'long text ')",
        "zeroblob(900)",
    ];
    let tx = conn.unchecked_transaction().unwrap();
    let mut n = 0usize;
    for (i, a) in values.iter().enumerate() {
        for (j, b) in values.iter().enumerate() {
            n += 1;
            let e = values[(i * 7 + j) % values.len()];
            let f = values[(i + j * 3) % values.len()];
            tx.execute_batch(&format!(
                "INSERT INTO t(a, b, c, d, e, f) VALUES ({a}, {b}, {a}, {b}, {e}, {f});
                 INSERT INTO plain VALUES ({a}, {b});
                 INSERT OR IGNORE INTO keyed VALUES (printf('%d-%d', {i}, {j}), {b});
                 INSERT INTO partial VALUES ({a}, {j} - 10);
                 INSERT INTO expr VALUES ({a});
                 INSERT INTO gen(x) VALUES ({n});
                 INSERT INTO grown VALUES ({n});
                 INSERT INTO fills(order_id, signal_id, note) VALUES
                     (CASE WHEN {n} % 3 = 0 THEN NULL ELSE {n} % 50 END,
                      CASE WHEN {n} % 4 = 0 THEN NULL ELSE {n} END, {a});
                 INSERT OR REPLACE INTO positions VALUES (printf('SYM%03d', {n} % 97), {b} + 0.5);
                 INSERT INTO typed(n, r, s, b, a) VALUES ({n}, {n} * 0.5, printf('s%d', {n}),
                     x'00ff', {a});
                 INSERT INTO checked(side, qty) VALUES
                     (CASE WHEN {n} % 2 = 0 THEN 'B' ELSE 'S' END, {n});
                 INSERT INTO added VALUES ({n}, CASE WHEN {n} % 3 = 0 THEN 'abc' END);"
            ))
            .unwrap();
        }
    }
    tx.commit().unwrap();
    // Rows older than a column have no field for it: the walk hands such a table to SQLite.
    conn.execute_batch(
        "ALTER TABLE grown ADD COLUMN y TEXT DEFAULT 'd';
         CREATE INDEX grown_y ON grown(y);
         INSERT INTO grown VALUES (-1, 'new');
         DELETE FROM t WHERE id % 5 = 0;
         ALTER TABLE added ADD COLUMN later TEXT;
         INSERT INTO added VALUES (-1, NULL, 'x');
         CREATE TABLE dropped AS SELECT * FROM t;
         DROP TABLE dropped;",
    )
    .unwrap();
}

#[test]
fn the_walk_agrees_with_sqlite_on_valid_databases_of_many_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shapes.db");
    many_shapes(&path);
    assert_eq!(sqlite_says(&path), Vec::<String>::new());

    let walked = walked(&path);
    let names: Vec<&str> = walked.iter().map(|w| w.0.as_str()).collect();
    // What the walk cannot model is planned for SQLite, never walked.
    assert_eq!(names, ["checked", "fills", "grown", "positions", "t"]);
    for (name, verdict) in &walked {
        let expected = if name == "grown" {
            Err("a row is shorter than its table")
        } else {
            let conn = Connection::open(&path).unwrap();
            let n: i64 = conn
                .query_row(&format!("SELECT count(*) FROM {name}"), [], |r| r.get(0))
                .unwrap();
            Ok(n as u64)
        };
        assert_eq!(*verdict, expected, "table {name}");
    }

    // The walk covers the whole file (no fault found, nothing left for SQLite's whole check)
    // and hands SQLite only what it cannot model: `keyed` (WITHOUT ROWID), `gen` (generated),
    // `expr` and `partial` (their indexes, under integrity_check), `grown` (a default it
    // cannot read).
    let conn = open(&path).unwrap();
    for (mode, expected) in [
        (
            Check::Integrity,
            vec![
                ("expr", Some(Check::Integrity)),
                ("gen", Some(Check::Integrity)),
                ("keyed", Some(Check::Integrity)),
                ("partial", Some(Check::Integrity)),
            ],
        ),
        (
            Check::Quick,
            vec![("gen", Some(Check::Quick)), ("keyed", Some(Check::Quick))],
        ),
    ] {
        let plan = plan(&conn, &path, mode).unwrap();
        let planned: Vec<(&str, Option<Check>)> = plan
            .tables
            .iter()
            .filter(|t| t.sqlite(mode).is_some())
            .map(|t| (t.name.as_str(), t.sqlite(mode)))
            .collect();
        assert_eq!(planned, expected, "{mode:?}");
        let walked = walk(&path, &plan, mode).unwrap();
        assert_eq!(walked.problems, Vec::<String>::new());
        let handed: Vec<&str> = walked.handed.iter().map(|h| h.0.as_str()).collect();
        assert_eq!(handed, ["grown"], "{mode:?}");
    }

    // Row counts, from the walk or SQL, are SQL's, whichever check runs.
    let conn = Connection::open(&path).unwrap();
    let counted = crate::snapshot::row_counts(&conn, &path).unwrap();
    for mode in [Check::Integrity, Check::Quick] {
        let checked = check(&path, mode, true).unwrap();
        assert_eq!(checked.problems, Vec::<String>::new());
        assert_eq!(checked.rows, counted, "{mode:?}");
    }
    let whole = whole(&path, &conn, Check::Quick, Some(&plan_of(&path).counted)).unwrap();
    assert_eq!(whole.rows, counted);
}

fn plan_of(path: &Path) -> Plan {
    plan(&open(path).unwrap(), path, Check::Integrity).unwrap()
}

/// 64 KiB pages: an interior page's leaves are read 16 at a time (`tree::BATCH_BYTES`), and
/// damage in any window is found.
#[test]
fn leaves_are_read_a_window_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big-pages.db");
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(
        "PRAGMA page_size = 65536;
         CREATE TABLE t(id INTEGER PRIMARY KEY, a TEXT NOT NULL, b INT);
         CREATE INDEX t_a ON t(a);
         WITH RECURSIVE n(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM n WHERE k < 60000)
         INSERT INTO t(a, b) SELECT printf('%040d', k * 7919 % 60000), k FROM n;",
    )
    .unwrap();
    drop(conn);
    let plan = plan_of(&path);
    let walked = walk(&path, &plan, Check::Integrity).unwrap();
    assert_eq!(walked.problems, Vec::<String>::new());
    assert!(walked.handed.is_empty());
    assert_eq!(walked.rows["t"], 60_000);
    // The table's root is interior, with more leaves than one window holds.
    let bytes = std::fs::read(&path).unwrap();
    let root = plan.tables.iter().find(|t| t.name == "t").unwrap().root as usize;
    let at = (root - 1) * 65_536;
    assert_eq!(bytes[at], INTERIOR_TABLE);
    let children = usize::from(u16::from_be_bytes([bytes[at + 3], bytes[at + 4]])) + 1;
    assert!(children > 2 * 16, "{children} children");
    // A damaged cell pointer in a leaf of the last window, then of the first.
    for child in [children - 2, 1] {
        // Cell `child`'s pointer, then its left child's page number.
        let ptr_at = at + 12 + 2 * child;
        let offset = usize::from(u16::from_be_bytes([bytes[ptr_at], bytes[ptr_at + 1]]));
        let child_pgno =
            u32::from_be_bytes(bytes[at + offset..at + offset + 4].try_into().unwrap()) as usize;
        let mut damaged = bytes.clone();
        // The leaf's first cell pointer.
        let leaf_at = (child_pgno - 1) * 65_536;
        damaged[leaf_at + 8] ^= 0x10;
        let copy = dir.path().join(format!("damaged-{child}.db"));
        std::fs::write(&copy, &damaged).unwrap();
        for mode in [Check::Quick, Check::Integrity] {
            let sqlite = pragma_lines(&open(&copy).unwrap(), mode.pragma(), None).unwrap();
            assert!(!sqlite.is_empty(), "child {child} {mode:?}");
            assert_eq!(check(&copy, mode, false).unwrap().problems, sqlite);
        }
    }
}

/// Files a review crafted where the walk's first version said `ok` and SQLite did not
/// (`testdata/integrity-crafted/README.md`).
#[test]
fn crafted_files_get_sqlite_s_verdict() {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in [
        (
            "A",
            &include_bytes!("../../../../testdata/integrity-crafted/A_9byte_payload_varint.db")[..],
        ),
        (
            "A2",
            include_bytes!(
                "../../../../testdata/integrity-crafted/A2_9byte_payload_varint_index.db"
            ),
        ),
        (
            "B1",
            include_bytes!("../../../../testdata/integrity-crafted/B1_nocase_nul_unique.db"),
        ),
        (
            "B2",
            include_bytes!("../../../../testdata/integrity-crafted/B2_nocase_nul_order.db"),
        ),
        (
            "C",
            include_bytes!("../../../../testdata/integrity-crafted/C_index_trailing_byte.db"),
        ),
        (
            "E",
            include_bytes!("../../../../testdata/integrity-crafted/E_hash_zeroing_int_vs_real.db"),
        ),
        (
            "H1",
            include_bytes!("../../../../testdata/integrity-crafted/H_table_int_index_real.db"),
        ),
        (
            "H2",
            include_bytes!("../../../../testdata/integrity-crafted/H_table_real_index_int.db"),
        ),
        (
            "J1",
            include_bytes!("../../../../testdata/integrity-crafted/J1_noncanonical_serial_key.db"),
        ),
        (
            "J2",
            include_bytes!(
                "../../../../testdata/integrity-crafted/J2_noncanonical_serial_rowid.db"
            ),
        ),
        (
            "J3",
            include_bytes!(
                "../../../../testdata/integrity-crafted/J3_noncanonical_header_size_index.db"
            ),
        ),
    ] {
        let path = dir.path().join(format!("{name}.db"));
        std::fs::write(&path, bytes).unwrap();
        let mut found = false;
        for mode in [Check::Quick, Check::Integrity] {
            let sqlite = pragma_lines(&open(&path).unwrap(), mode.pragma(), None).unwrap();
            found |= !sqlite.is_empty();
            let ours = check(&path, mode, false).unwrap();
            assert_eq!(ours.problems, sqlite, "{name} {mode:?}");
        }
        assert!(found, "{name}: SQLite finds nothing wrong");
    }
}

/// SQLite drops CHECK constraints from the schema of a database it cannot write, so its check
/// of a read-only file never runs them; the check runs them as `sqlite3 FILE` would, on a
/// connection that can write, and leaves the file and its directory as they were.
#[test]
fn check_constraints_are_tested_as_a_writable_connection_tests_them() {
    for wal in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let conn = Connection::open(&path).unwrap();
        if wal {
            conn.pragma_update(None, "journal_mode", "wal").unwrap();
        }
        conn.execute_batch(
            "CREATE TABLE t(a TEXT, b INT); CREATE INDEX i ON t(b);
             CREATE TABLE u(id INTEGER PRIMARY KEY, side TEXT NOT NULL);
             INSERT INTO t VALUES ('x', 5), ('y', 50), ('z', 70), ('w', NULL);
             INSERT INTO u(side) VALUES ('B'), ('S'), ('X');",
        )
        .unwrap();
        conn.pragma_update(None, "wal_checkpoint", "TRUNCATE")
            .unwrap();
        drop(conn);
        redefine(&path, "t", "CREATE TABLE t(a TEXT, b INT CHECK (b < 10))");
        // A table constraint, with the keyword in other cases, a quoted name and a comment.
        redefine(
            &path,
            "u",
            "CREATE TABLE u(id INTEGER PRIMARY KEY, \"side\" TEXT NOT NULL, -- 'B' or 'S'\n \
             constraint side_known cHeCk (side IN ('B', 'S')))",
        );
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "wal_checkpoint", "TRUNCATE")
            .unwrap();
        drop(conn);
        std::fs::remove_file(dir.path().join("c.db-wal")).ok();
        std::fs::remove_file(dir.path().join("c.db-shm")).ok();
        let before = std::fs::read(&path).unwrap();
        let read_only = pragma_lines(&open(&path).unwrap(), "quick_check", None).unwrap();
        assert_eq!(
            read_only,
            Vec::<String>::new(),
            "read-only SQLite skips them"
        );
        for mode in [Check::Quick, Check::Integrity] {
            let mut sqlite = pragma_lines(&writable(&path), mode.pragma(), None).unwrap();
            sqlite.sort();
            assert_eq!(
                sqlite,
                [
                    "CHECK constraint failed in t",
                    "CHECK constraint failed in t",
                    "CHECK constraint failed in u"
                ]
            );
            let mut ours = check(&path, mode, false).unwrap().problems;
            ours.sort();
            assert_eq!(ours, sqlite, "wal {wal} {mode:?}");
            // SQLite's whole check, where the walk cannot go, runs them too.
            let conn = open(&path).unwrap();
            let mut whole = whole(&path, &conn, mode, None).unwrap().problems;
            whole.sort();
            assert_eq!(whole, sqlite, "wal {wal} {mode:?}");
        }
        assert_eq!(
            std::fs::read(&path).unwrap(),
            before,
            "the file is unchanged"
        );
        let mut left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        left.sort();
        assert_eq!(left, ["c.db"], "wal {wal}");
    }
}

#[test]
fn check_constraints_are_read_from_a_definition() {
    use super::plan::check_constraints;
    let checks = |e: &[&str]| Constraints::Checks(e.iter().map(|s| s.to_string()).collect());
    for (sql, found) in [
        ("CREATE TABLE t(a INT CHECK (a > 0))", checks(&["a > 0"])),
        (
            "CREATE TABLE t(a INT, CONSTRAINT c check(a IN (1, (2))), b CHECK/**/(b))",
            checks(&["a IN (1, (2))", "b"]),
        ),
        ("CREATE TABLE t(a INT,CHECK(a>0))", checks(&["a>0"])),
        (
            "CREATE TABLE t(a TEXT CHECK (a <> ')' -- )\n AND a <> \"(\"))",
            checks(&["a <> ')' -- )\n AND a <> \"(\""]),
        ),
        (
            "CREATE TABLE checked(checks INT, \"check\" TEXT, [check] INT, `check` INT)",
            Constraints::None,
        ),
        (
            "CREATE TABLE t(a TEXT DEFAULT 'check (a)') -- check (a)",
            Constraints::None,
        ),
        (
            "CREATE TABLE t(a TEXT DEFAULT 'it''s' /* check (a) */, b)",
            Constraints::None,
        ),
        (
            "CREATE TABLE t(a TEXT DEFAULT 'it''s', b CHECK (b))",
            checks(&["b"]),
        ),
        // Text the scan cannot read to its end: SQLite checks the table.
        (
            "CREATE TABLE t(a TEXT DEFAULT 'open",
            Constraints::Unreadable,
        ),
        ("CREATE TABLE t(a CHECK (a > (0)", Constraints::Unreadable),
        ("CREATE TABLE t(a CHECK a > 0)", Constraints::Unreadable),
        // SQLite reads a statement up to a NUL.
        ("CREATE TABLE t(a)\0CHECK (a > 0)", Constraints::None),
    ] {
        assert_eq!(check_constraints(sql), found, "{sql}");
    }
}

/// A CHECK constraint calling a function only the program that wrote the file defines: SQLite
/// cannot evaluate it, and it goes untested (as on a read-only file) rather than refusing a
/// sound file.
#[test]
fn check_constraints_sqlite_cannot_evaluate_go_untested() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch("CREATE TABLE t(a TEXT, b INT); INSERT INTO t VALUES ('x', 5);")
        .unwrap();
    drop(conn);
    redefine(
        &path,
        "t",
        "CREATE TABLE t(a TEXT, b INT CHECK (app_rule(b)))",
    );
    for mode in [Check::Quick, Check::Integrity] {
        assert_eq!(
            check(&path, mode, false).unwrap().problems,
            Vec::<String>::new()
        );
        let conn = open(&path).unwrap();
        assert_eq!(
            whole(&path, &conn, mode, None).unwrap().problems,
            Vec::<String>::new()
        );
    }
}

/// SQLite's declared-type rules, as SQLite applies them to a value stored in a column.
#[test]
fn column_affinities_are_sqlite_s() {
    let conn = Connection::open_in_memory().unwrap();
    for declared in [
        "",
        "INT",
        "integer",
        "TINYINT",
        "BIGINT UNSIGNED",
        "VARCHAR(20)",
        "NCHAR(5)",
        "CLOB",
        "TEXT",
        "text",
        "BLOB",
        "REAL",
        "DOUBLE PRECISION",
        "FLOAT",
        "NUMERIC",
        "DECIMAL(10,5)",
        "BOOLEAN",
        "DATE",
        "DATETIME",
        "CHARINT",
        "BLOBINT",
        "INTBLOB",
        "FLOATING POINT",
        "STRING",
        "ANY",
        "BLOBREAL",
        "REALBLOB",
        "TEXTBLOB",
        "BLOBTEXT",
        "DOUBLECHAR",
        "pointer",
        "x",
    ] {
        conn.execute_batch(&format!(
            "DROP TABLE IF EXISTS a; CREATE TABLE a(c {declared});
             INSERT INTO a VALUES (1), ('1');"
        ))
        .unwrap();
        let kinds: Vec<String> = conn
            .prepare("SELECT typeof(c) FROM a ORDER BY rowid")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let sqlite = match (kinds[0].as_str(), kinds[1].as_str()) {
            // An integer made text: TEXT affinity.
            ("text", _) => rows::Kind::NoNumber,
            // Both kept: BLOB affinity.
            ("integer", "text") => rows::Kind::Any,
            // Text made a number: numeric affinity.
            _ => rows::Kind::NoText,
        };
        assert_eq!(rows::affinity(declared), sqlite, "{declared:?}: {kinds:?}");
    }
}

/// Rewrites a table's definition: its rows then break a rule that only the row tests of
/// both checks see. Each case must be found, and reported as SQLite reports it.
#[test]
fn rows_that_break_their_columns_rules_get_sqlite_s_verdict() {
    let cases = [
        // A NOT NULL column holding NULL.
        (
            "CREATE TABLE t(a TEXT NOT NULL, b INT)",
            "NULL value in t.a",
        ),
        // Text that reads as a number, in a numeric column.
        ("CREATE TABLE t(a INTEGER, b INT)", "TEXT value in t.a"),
        // An integer in a TEXT column.
        ("CREATE TABLE t(a TEXT, b TEXT)", "NUMERIC value in t.b"),
        // STRICT: text in an INT column.
        (
            "CREATE TABLE t(a INT, b INT) STRICT",
            "non-INT value in t.a",
        ),
    ];
    for (sql, finding) in cases {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE t(a TEXT, b INT);
             CREATE INDEX i ON t(b);
             WITH RECURSIVE n(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM n WHERE k < 2000)
             INSERT INTO t SELECT CASE WHEN k = 1500 THEN NULL ELSE printf('%d', k) END, k
             FROM n;",
        )
        .unwrap();
        drop(conn);
        redefine(&path, "t", sql);
        for mode in [Check::Quick, Check::Integrity] {
            let sqlite = pragma_lines(&open(&path).unwrap(), mode.pragma(), None).unwrap();
            assert!(
                sqlite.iter().any(|l| l.contains(finding)),
                "{sql} {mode:?}: {sqlite:?}"
            );
            let checked = check(&path, mode, false).unwrap();
            assert_eq!(checked.problems, sqlite, "{sql} {mode:?}");
        }
    }
}

/// Rewrites an index's definition without rebuilding it: its entries then contradict it,
/// which only the index checks of `integrity_check` see.
fn redefine(path: &Path, index: &str, sql: &str) {
    let conn = Connection::open(path).unwrap();
    conn.execute_batch("PRAGMA writable_schema = ON").unwrap();
    conn.execute(
        "UPDATE sqlite_schema SET sql = ?1 WHERE name = ?2",
        [sql, index],
    )
    .unwrap();
}

#[test]
fn an_index_that_contradicts_its_table_is_reported_as_sqlite_reports_it() {
    let cases = [
        // Another column's values: rows missing from the index.
        ("CREATE INDEX i ON t(b)", "missing from index i"),
        // Repeated keys under a unique definition.
        (
            "CREATE UNIQUE INDEX i ON t(a)",
            "non-unique entry in index i",
        ),
        // Entries in the other order.
        ("CREATE INDEX i ON t(a DESC)", "missing from index i"),
    ];
    for (sql, finding) in cases {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE t(a TEXT, b TEXT);
             CREATE INDEX i ON t(a);
             WITH RECURSIVE n(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM n WHERE k < 3000)
             INSERT INTO t SELECT printf('a%05d', k / 2), printf('b%05d', 3000 - k) FROM n;",
        )
        .unwrap();
        drop(conn);
        redefine(&path, "i", sql);

        let quick = check(&path, Check::Quick, false).unwrap();
        assert_eq!(quick.problems, Vec::<String>::new(), "{sql}");
        let walked = walked(&path);
        assert!(walked[0].1.is_err(), "{sql}: the walk found nothing");
        let checked = check(&path, Check::Integrity, false).unwrap();
        let sqlite = sqlite_says(&path);
        assert!(
            sqlite.iter().any(|l| l.contains(finding)),
            "{sql}: {sqlite:?}"
        );
        assert_eq!(checked.problems, sqlite, "{sql}");
    }
}

#[test]
fn a_partial_index_is_walked_when_its_condition_is_not_null() {
    assert_eq!(
        not_null_column("CREATE INDEX i ON t (c) WHERE c IS NOT NULL").as_deref(),
        Some("c")
    );
    assert_eq!(
        not_null_column("create index i on t(c) where (\"my col\" notnull)"),
        None,
        "a quoted name with a space is not parsed"
    );
    assert_eq!(
        not_null_column("CREATE INDEX i ON t(c) WHERE [c] NOT NULL").as_deref(),
        Some("c")
    );
    assert_eq!(not_null_column("CREATE INDEX i ON t(c) WHERE c > 0"), None);
    // Texts a simple reading would get wrong (a review found them).
    for misleading in [
        "CREATE INDEX i ON t(c) WHERE d = 'x WHERE c IS NOT NULL'",
        "CREATE INDEX i ON t(a) WHERE c > 0 -- WHERE b NOTNULL",
        "CREATE INDEX i ON t(a) WHERE c > 0 /* WHERE b NOTNULL",
        "CREATE INDEX i ON t(a) WHERE [x WHERE [b] NOTNULL",
        "CREATE INDEX i ON t(a) WHERE 1 NOTNULL",
    ] {
        assert_eq!(not_null_column(misleading), None, "{misleading}");
    }

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.db");
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(
        "CREATE TABLE t(a TEXT, b TEXT);
         CREATE INDEX i ON t(a) WHERE b IS NOT NULL;
         WITH RECURSIVE n(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM n WHERE k < 2000)
         INSERT INTO t SELECT printf('a%05d', k), CASE WHEN k % 3 = 0 THEN NULL ELSE k END FROM n;",
    )
    .unwrap();
    drop(conn);
    assert_eq!(walked(&path), [("t".to_owned(), Ok(2000))]);
    assert_eq!(
        check(&path, Check::Integrity, false).unwrap().problems,
        Vec::<String>::new()
    );

    // The index now claims every row with an `a`: a third of them are missing.
    redefine(&path, "i", "CREATE INDEX i ON t(a) WHERE a IS NOT NULL");
    assert!(walked(&path)[0].1.is_err());
    let sqlite = sqlite_says(&path);
    assert!(
        sqlite.iter().any(|l| l.contains("missing from index i")),
        "{sqlite:?}"
    );
    assert_eq!(
        check(&path, Check::Integrity, false).unwrap().problems,
        sqlite
    );
}

#[test]
fn an_integer_a_real_column_cannot_hold_gets_sqlite_s_verdict() {
    // An integer a REAL column cannot hold exactly (an older SQLite, or damage), in the table
    // and its index alike. A review feared SQLite would look it up as the nearest real and
    // miss; it finds it, and the walk must agree.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.db");
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(
        "CREATE TABLE t(x INTEGER, y TEXT); CREATE INDEX i ON t(x);
         INSERT INTO t VALUES (9007199254740993, 'a'), (5, 'b');",
    )
    .unwrap();
    drop(conn);
    redefine(&path, "t", "CREATE TABLE t(x REAL, y TEXT)");
    let sqlite = sqlite_says(&path);
    let checked = check(&path, Check::Integrity, false).unwrap();
    assert_eq!(checked.problems, sqlite);
    assert_eq!(sqlite, Vec::<String>::new());
    assert_eq!(walked(&path), [("t".to_owned(), Ok(2))]);
}

#[test]
fn tables_named_like_sqlite_s_own_are_checked_too() {
    // `sqlitedata` matches `LIKE 'sqlite_%'`; `sqlite_x` is only possible by editing the
    // schema (and only its constraints can index it).
    for (create, table, redefined) in [
        (
            "CREATE TABLE sqlitedata(a TEXT, b TEXT); CREATE INDEX i ON sqlitedata(a);",
            "sqlitedata",
            ("i", "CREATE INDEX i ON sqlitedata(b)"),
        ),
        (
            "PRAGMA writable_schema = ON; CREATE TABLE sqlite_x(a TEXT, b TEXT UNIQUE);",
            "sqlite_x",
            ("sqlite_x", "CREATE TABLE sqlite_x(a TEXT UNIQUE, b TEXT)"),
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(create).unwrap();
        for k in 0..3 {
            conn.execute(
                &format!("INSERT INTO {table} VALUES (?1, ?2)"),
                [format!("a{k}"), format!("b{}", 9 - k)],
            )
            .unwrap();
        }
        drop(conn);
        redefine(&path, redefined.0, redefined.1);
        let sqlite = sqlite_says(&path);
        assert!(!sqlite.is_empty(), "{create}");
        let checked = check(&path, Check::Integrity, false).unwrap();
        assert_eq!(checked.problems, sqlite, "{create}");
    }
}

#[test]
fn random_damage_gets_the_same_verdict_as_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let pristine = dir.path().join("pristine.db");
    many_shapes(&pristine);
    let bytes = std::fs::read(&pristine).unwrap();
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let rounds = 400;
    let mut found = 0;
    for round in 0..rounds {
        let mut damaged = bytes.clone();
        for _ in 0..1 + next() % 3 {
            // Past the first page: a damaged schema is SQLite's alone to describe. Half the
            // time in a page's first bytes (its header and cell pointers), where damage
            // tests the b-tree checks rather than the row tests.
            let page = 1 + (next() as usize) % (damaged.len() / 1024 - 1);
            let within = if next() % 2 == 0 { 32 } else { 1024 };
            let at = page * 1024 + (next() as usize) % within;
            damaged[at] ^= 1 << (next() % 8);
        }
        let path = dir.path().join(format!("d{round}.db"));
        std::fs::write(&path, &damaged).unwrap();
        for mode in [Check::Integrity, Check::Quick] {
            let sqlite = pragma_lines(&writable(&path), mode.pragma(), None).unwrap();
            let ours = check(&path, mode, false).unwrap();
            assert_eq!(
                ours.problems.is_empty(),
                sqlite.is_empty(),
                "round {round} {mode:?}: ours {:?}, SQLite's {sqlite:?}",
                ours.problems
            );
            if mode == Check::Integrity {
                found += usize::from(!sqlite.is_empty());
            }
        }
        std::fs::remove_file(&path).unwrap();
    }
    eprintln!("{found} of {rounds} damaged copies were corrupt");
    // The damage must matter often enough for the comparison to mean something.
    assert!(
        found > rounds / 5,
        "only {found} of {rounds} damaged copies were found corrupt"
    );
}

#[test]
fn values_compare_and_hash_as_sqlite_looks_them_up() {
    use std::cmp::Ordering::*;
    let seeded = |seed: u64, v: Value<'_>| {
        let mut h = Hasher::new(seed);
        h.value(&v);
        h.finish()
    };
    let hash = |v: Value<'_>| seeded(0, v);
    assert_eq!(hash(Value::Int(3)), hash(Value::Real(3.0)));
    assert_eq!(hash(Value::Int(0)), hash(Value::Real(-0.0)));
    assert_ne!(
        hash(Value::Int(9_007_199_254_740_993)),
        hash(Value::Real(9_007_199_254_740_992.0))
    );
    assert_ne!(hash(Value::Text(b"a")), hash(Value::Blob(b"a")));
    assert_ne!(hash(Value::Text(b"")), hash(Value::Null));
    assert_ne!(hash(Value::Text(b"abc")), hash(Value::Text(b"abc\0")));
    // A kind added to the bits would let this integer hash as the real (a review found it).
    let real_as_int = 0.5f64
        .to_bits()
        .wrapping_add(0x94d0_49bb_1331_11eb)
        .wrapping_sub(0xbf58_476d_1ce4_e5b9) as i64;
    assert_ne!(hash(Value::Int(real_as_int)), hash(Value::Real(0.5)));
    assert_ne!(hash(Value::Int(0)), hash(Value::Null));
    // A zero operand made every kind's product zero, twice: the integer equal to the state met
    // the real with the same bits (a first review), then the integer and the real that each
    // zeroed the operand with their kind's multiplier (a second). Whatever the seed, the
    // state a zeroed operand leaves tells the kinds apart.
    // (A real that is an integer hashes as that integer, rightly: those pairs are skipped.)
    for seed in [0, 1, 2, Hasher::random_seed()] {
        let state = seed ^ Hasher::SEED;
        for (int, real) in [(state, state), (state ^ Hasher::INT, state ^ Hasher::REAL)] {
            let real = f64::from_bits(real);
            if crate::integrity::value::exact_int(real).is_none() && !real.is_nan() {
                assert_ne!(
                    seeded(seed, Value::Int(int as i64)),
                    seeded(seed, Value::Real(real)),
                    "seed {seed}"
                );
            }
        }
    }
    assert_ne!(Hasher::random_seed(), Hasher::random_seed());
    assert_ne!(hash(Value::Int(3)), hash(Value::Text(b"")));

    assert_eq!(
        int_real(9_007_199_254_740_993, 9_007_199_254_740_992.0),
        Greater
    );
    assert_eq!(int_real(i64::MAX, 9_223_372_036_854_775_808.0), Less);
    assert_eq!(int_real(3, 3.0), Equal);
    assert_eq!(
        compare(&Value::Null, &Value::Int(-5), Collation::Binary),
        Less
    );
    assert_eq!(
        compare(&Value::Real(1e300), &Value::Text(b""), Collation::Binary),
        Less
    );
    assert_eq!(
        compare(&Value::Text(b"z"), &Value::Blob(b""), Collation::Binary),
        Less
    );
    assert_eq!(
        compare(
            &Value::Text(b"ABC"),
            &Value::Text(b"abc"),
            Collation::NoCase
        ),
        Equal
    );
    assert_eq!(
        compare(&Value::Text(b"ab "), &Value::Text(b"ab"), Collation::RTrim),
        Equal
    );
    assert_eq!(
        compare(&Value::Text(b"ab "), &Value::Text(b"ab"), Collation::Binary),
        Greater
    );
}

/// A review's files where the first version said ok and `sqlite3 FILE` did not: a CHECK that
/// fails on a row (an integer overflow, malformed JSON), one naming a column the table lacks
/// (SQLite calls the schema malformed), one `quick_check` would read through an index that
/// contradicts its table; each in the walk and in the whole-file fallback (auto-vacuum).
#[test]
fn check_constraints_that_cannot_run_are_problems() {
    let cases = [
        (
            "CREATE TABLE t(a INTEGER); INSERT INTO t VALUES (-9223372036854775808);",
            vec![("t", "CREATE TABLE t(a INTEGER CHECK (abs(a) >= 0))")],
        ),
        (
            "CREATE TABLE t(a TEXT); INSERT INTO t VALUES ('{bad');",
            vec![(
                "t",
                "CREATE TABLE t(a TEXT CHECK (json_extract(a, '$.x') IS NULL))",
            )],
        ),
        (
            "CREATE TABLE t(a); INSERT INTO t VALUES (1);",
            vec![("t", "CREATE TABLE t(a CHECK (nosuch > 0))")],
        ),
        (
            "CREATE TABLE t(a, b, pad); CREATE INDEX i ON t(b);
             INSERT INTO t VALUES (-1, 1, zeroblob(3000));",
            vec![
                ("t", "CREATE TABLE t(a CHECK (a > 0), b, pad)"),
                ("i", "CREATE INDEX i ON t(a)"),
            ],
        ),
    ];
    for (k, (setup, redefined)) in cases.iter().enumerate() {
        for vacuum in ["NONE", "FULL"] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("c.db");
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(&format!("PRAGMA auto_vacuum = {vacuum}; {setup}"))
                .unwrap();
            drop(conn);
            for (name, sql) in redefined {
                redefine(&path, name, sql);
            }
            // Auto-vacuum: the walk hands the file to SQLite's whole check.
            let walked = walk(&path, &plan_of(&path), Check::Quick);
            assert_eq!(walked.is_err(), vacuum == "FULL", "case {k}");
            for mode in [Check::Quick, Check::Integrity] {
                let ours = check(&path, mode, false).unwrap().problems;
                assert!(!ours.is_empty(), "case {k} {vacuum} {mode:?}");
            }
        }
    }
}

/// The whole-file fallback opens a file with CHECK constraints for writing only when nothing
/// SQLite would read or roll back with it lies beside it (here a `-journal`, which a connection
/// that can write would play back into the file, or delete).
#[test]
fn nothing_beside_the_file_is_rolled_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(
        "PRAGMA auto_vacuum = FULL; CREATE TABLE t(a CHECK (a > 0)); INSERT INTO t VALUES (1);",
    )
    .unwrap();
    drop(conn);
    let journal = dir.path().join("c.db-journal");
    std::fs::write(&journal, [0xd9u8; 1024]).unwrap();
    let before = std::fs::read(&path).unwrap();
    for mode in [Check::Quick, Check::Integrity] {
        assert_eq!(
            check(&path, mode, false).unwrap().problems,
            Vec::<String>::new()
        );
    }
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert_eq!(std::fs::read(&journal).unwrap(), [0xd9u8; 1024]);
}
