//! The store's contract, run against both engines: what the domain relies on from a
//! [`Connection`] (values, parameters, transactions, conflicts, errors, run-time queries) and
//! from the schema each engine is given (the same tables, columns, keys and indexes, and the
//! same append-only guards). A test here fails on the engine that breaks the contract, and
//! names it.
//!
//! The domain's own operations are checked on both engines where they live:
//! `domain::stored` (a batch stored, repeats within and across batches, the cells it
//! maintains), `domain::rollup` (the cells answer as the rows do), `store` (group commit, a
//! failed write undone alone, budget charges under concurrency, a newer schema refused), and
//! the integration suite, which `tests/all.sh` runs a second time with every node on
//! PostgreSQL (ingest, consent, erasure, aggregates, audit chains).

use std::collections::BTreeSet;

use super::{
    Backend, Store,
    db::{Connection, Dialect, OptionalExtension, Pipeline, Query, params},
};
use crate::{error::NodeError, testing::Databases};

/// A connection of each engine, each to a fresh database with the node's schema.
fn connections(dbs: &Databases) -> Vec<(Dialect, Store)> {
    dbs.both()
        .iter()
        .map(|b| {
            let store = dbs.store(b);
            let dialect = match b {
                Backend::Sqlite(_) => Dialect::Sqlite,
                Backend::Postgres(_) => Dialect::Postgres,
            };
            (dialect, store)
        })
        .collect()
}

/// A scratch table of every column type, in each engine's terms.
fn scratch(conn: &Connection) -> Result<(), NodeError> {
    conn.execute_batch(match conn.dialect() {
        Dialect::Sqlite => {
            "CREATE TABLE scratch (k TEXT PRIMARY KEY, i INTEGER, r REAL, t TEXT, b BLOB, \
             n INTEGER NOT NULL DEFAULT 0)"
        }
        Dialect::Postgres => {
            "CREATE TABLE scratch (k TEXT PRIMARY KEY, i BIGINT, r DOUBLE PRECISION, t TEXT, \
             b BYTEA, n BIGINT NOT NULL DEFAULT 0)"
        }
    })
}

/// A key and a value of each type.
type ScratchRow<'a> = (
    &'a str,
    Option<i64>,
    Option<f64>,
    Option<&'a str>,
    Option<&'a [u8]>,
);

#[test]
fn values_come_back_as_they_went_in() {
    let dbs = Databases::new();
    for (dialect, store) in connections(&dbs) {
        store
            .write(|c| {
                scratch(c)?;
                let rows: [ScratchRow<'_>; 5] = [
                    ("min", Some(i64::MIN), Some(-0.5), Some(""), Some(&[])),
                    (
                        "max",
                        Some(i64::MAX),
                        Some(1e300),
                        Some("Zoë 🙂 'quoted' $1 ?"),
                        Some(&[0, 255, 0]),
                    ),
                    ("zero", Some(0), Some(0.0), Some("\n\t"), Some(b"\x00")),
                    ("nulls", None, None, None, None),
                    (
                        "neg",
                        Some(-1),
                        Some(f64::MIN_POSITIVE),
                        Some("x"),
                        Some(b"bytes"),
                    ),
                ];
                for (k, i, r, t, b) in rows {
                    c.execute(
                        "INSERT INTO scratch (k, i, r, t, b) VALUES ($1, $2, $3, $4, $5)",
                        params![k, i, r, t, b],
                    )?;
                }
                for (k, i, r, t, b) in rows {
                    let got = c.query_row(
                        "SELECT i, r, t, b FROM scratch WHERE k = $1",
                        params![k],
                        |row| {
                            Ok((
                                row.get::<_, Option<i64>>(0)?,
                                row.get::<_, Option<f64>>(1)?,
                                row.get::<_, Option<String>>(2)?,
                                row.get::<_, Option<Vec<u8>>>(3)?,
                            ))
                        },
                    )?;
                    assert_eq!(
                        got,
                        (i, r, t.map(str::to_owned), b.map(<[u8]>::to_vec)),
                        "{dialect:?}: row {k}"
                    );
                }
                Ok(())
            })
            .unwrap();
    }
}

#[test]
fn parameters_are_bound_by_number_not_by_position() {
    let dbs = Databases::new();
    for (dialect, store) in connections(&dbs) {
        let got = store
            .read(|c| {
                c.query_row(
                    "SELECT CAST($2 AS TEXT) || '-' || CAST($1 AS TEXT) || '-' || CAST($2 AS TEXT)",
                    params!["a", "b"],
                    |r| r.get::<_, String>(0),
                )
            })
            .unwrap();
        assert_eq!(got, "b-a-b", "{dialect:?}");
    }
}

#[test]
fn other_parameter_forms_are_refused_on_both_engines() {
    let dbs = Databases::new();
    for (dialect, store) in connections(&dbs) {
        for sql in ["SELECT ?1", "SELECT ?", "SELECT :name", "SELECT @name"] {
            let err = store
                .read(|c| c.query_row(sql, params![1], |r| r.get::<_, i64>(0)))
                .expect_err(sql);
            assert!(
                matches!(err, NodeError::Storage(_)),
                "{dialect:?} {sql}: {err}"
            );
        }
        // The wrong number of values is an error, not a silent NULL.
        let err = store
            .read(|c| c.query_row("SELECT $1, $2", params![1], |r| r.get::<_, i64>(0)))
            .expect_err("one value for two parameters");
        assert!(matches!(err, NodeError::Storage(_)), "{dialect:?}: {err}");
    }
}

#[test]
fn a_failed_transaction_leaves_nothing_and_a_committed_one_stays() {
    let dbs = Databases::new();
    for (dialect, store) in connections(&dbs) {
        store.write(scratch).unwrap();
        let failed: Result<(), NodeError> = store.write(|c| {
            c.execute("INSERT INTO scratch (k) VALUES ($1)", params!["gone"])?;
            Err(NodeError::Internal("the caller gives up".into()))
        });
        assert!(failed.is_err());
        store
            .write(|c| {
                c.execute("INSERT INTO scratch (k) VALUES ($1)", params!["kept"])?;
                Ok(())
            })
            .unwrap();
        let keys: Vec<String> = store
            .read(|c| c.query_map("SELECT k FROM scratch ORDER BY k", params![], |r| r.get(0)))
            .unwrap();
        assert_eq!(keys, ["kept"], "{dialect:?}");
    }
}

#[test]
fn conflicts_skip_or_update_and_key_violations_are_recognised() {
    let dbs = Databases::new();
    for (dialect, store) in connections(&dbs) {
        store
            .write(|c| {
                scratch(c)?;
                let insert = "INSERT INTO scratch (k, i) VALUES ($1, $2) ON CONFLICT DO NOTHING";
                assert_eq!(c.execute(insert, params!["a", 1])?, 1, "{dialect:?}");
                assert_eq!(c.execute(insert, params!["a", 2])?, 0, "{dialect:?}");
                let upsert = "INSERT INTO scratch (k, i) VALUES ($1, $2) \
                              ON CONFLICT (k) DO UPDATE SET i = scratch.i + excluded.i";
                c.execute(upsert, params!["a", 10])?;
                let i: i64 =
                    c.query_row("SELECT i FROM scratch WHERE k = $1", params!["a"], |r| {
                        r.get(0)
                    })?;
                assert_eq!(i, 11, "{dialect:?}");
                let made: String = c.query_row(
                    "INSERT INTO scratch (k) VALUES ($1) RETURNING k",
                    params!["b"],
                    |r| r.get(0),
                )?;
                assert_eq!(made, "b", "{dialect:?}");
                Ok(())
            })
            .unwrap();
        // Each error in its own transaction: PostgreSQL aborts a transaction on any error.
        let duplicate = store
            .write(|c| c.execute("INSERT INTO scratch (k) VALUES ($1)", params!["a"]))
            .expect_err("a duplicate key");
        assert!(
            matches!(&duplicate, NodeError::Storage(db) if db.is_unique_violation()),
            "{dialect:?}: {duplicate}"
        );
        let null = store
            .write(|c| c.execute("INSERT INTO scratch (k, n) VALUES ($1, NULL)", params!["c"]))
            .expect_err("NULL into a NOT NULL column");
        assert!(
            matches!(&null, NodeError::Storage(db) if !db.is_unique_violation()),
            "{dialect:?}: a NOT NULL violation is not a key's: {null}"
        );
    }
}

#[test]
fn a_missing_row_is_none_or_an_error_as_asked() {
    let dbs = Databases::new();
    for (dialect, store) in connections(&dbs) {
        store.write(scratch).unwrap();
        store
            .read(|c| {
                let sql = "SELECT i FROM scratch WHERE k = $1";
                let none = c.query_opt(sql, params!["nobody"], |r| r.get::<_, i64>(0))?;
                assert_eq!(none, None, "{dialect:?}");
                let optional = c
                    .query_row(sql, params!["nobody"], |r| r.get::<_, i64>(0))
                    .optional()?;
                assert_eq!(optional, None, "{dialect:?}");
                let err = c
                    .query_row(sql, params!["nobody"], |r| r.get::<_, i64>(0))
                    .expect_err("no row");
                assert!(err.to_string().contains("no row"), "{dialect:?}: {err}");
                Ok(())
            })
            .unwrap();
    }
}

#[test]
fn arrays_bind_on_postgres_and_are_refused_on_sqlite_with_the_reason() {
    let dbs = Databases::new();
    for (dialect, store) in connections(&dbs) {
        let ints: Vec<Option<i64>> = vec![Some(3), None, Some(-4)];
        let result = store.read(|c| {
            c.query_map(
                "SELECT COUNT(*) FROM unnest(CAST($1 AS BIGINT[])) AS v",
                params![ints],
                |r| r.get::<_, i64>(0),
            )
        });
        match dialect {
            Dialect::Postgres => assert_eq!(result.unwrap(), [3]),
            Dialect::Sqlite => {
                let err = result.expect_err("no arrays in SQLite").to_string();
                // Either the value or SQLite's missing `unnest` is named: never a wrong answer.
                assert!(
                    err.contains("arrays bind on PostgreSQL only") || err.contains("unnest"),
                    "{err}"
                );
            }
        }
        if dialect == Dialect::Sqlite {
            let err = store
                .read(|c| c.query_row("SELECT $1", params![ints], |r| r.get::<_, i64>(0)))
                .expect_err("an array bound on SQLite");
            assert!(
                err.to_string().contains("arrays bind on PostgreSQL only"),
                "{err}"
            );
        }
    }
}

#[test]
fn queries_put_together_at_run_time_number_their_parameters() {
    let dbs = Databases::new();
    for (dialect, store) in connections(&dbs) {
        store
            .write(|c| {
                scratch(c)?;
                for (k, i) in [("a", 1), ("b", 2), ("c", 3), ("d", 4)] {
                    c.execute("INSERT INTO scratch (k, i) VALUES ($1, $2)", params![k, i])?;
                }
                Ok(())
            })
            .unwrap();
        let wanted = ["b".to_owned(), "c".to_owned(), "d".to_owned()];
        let mut q = Query::new("SELECT k FROM scratch WHERE k IN (");
        q.bind_list(&wanted).push(") AND i >= ").bind(3_i64);
        // A fragment made elsewhere, joined in the middle, and a value after it.
        q.push(" AND k NOT IN (SELECT k FROM scratch WHERE i = ")
            .bind(4_i64)
            .push(") ORDER BY k LIMIT ")
            .bind(10_i64);
        assert_eq!(q.sql().matches('$').count(), 6, "{}", q.sql());
        let got: Vec<String> = store
            .read(|c| c.query_map(q.sql(), q.params(), |r| r.get(0)))
            .unwrap();
        assert_eq!(got, ["c"], "{dialect:?}: {}", q.sql());
        assert!(
            !format!("{q:?}").contains("\"b\""),
            "a query's Debug shows no values"
        );
    }
}

/// What the schema of one engine holds, in terms both share: per table, its columns (name,
/// kind of value, NOT NULL), its primary key, and its other indexes (columns, unique).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Shape {
    columns: BTreeSet<(String, String, &'static str, bool)>,
    keys: BTreeSet<(String, Vec<String>)>,
    indexes: BTreeSet<(String, Vec<String>, bool)>,
}

/// The kind of value a column's declared type holds.
fn kind(declared: &str) -> &'static str {
    let t = declared.to_ascii_uppercase();
    if t.contains("INT") {
        "integer"
    } else if t.contains("REAL") || t.contains("DOUBLE") || t.contains("FLOAT") {
        "real"
    } else if t.contains("BLOB") || t.contains("BYTEA") {
        "bytes"
    } else if t.contains("TEXT") || t.contains("CHAR") {
        "text"
    } else {
        "other"
    }
}

fn shape(c: &Connection) -> Result<Shape, NodeError> {
    let mut shape = Shape {
        columns: BTreeSet::new(),
        keys: BTreeSet::new(),
        indexes: BTreeSet::new(),
    };
    match c.dialect() {
        Dialect::Sqlite => {
            let tables: Vec<String> = c.query_map(
                "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
                params![],
                |r| r.get(0),
            )?;
            for t in tables {
                let mut key = Vec::new();
                c.query_each(
                    "SELECT name, type, \"notnull\", pk FROM pragma_table_info($1) ORDER BY pk, cid",
                    params![t],
                    |r| {
                        let (name, ty): (String, String) = (r.get(0)?, r.get(1)?);
                        let pk: i64 = r.get(3)?;
                        // SQLite lets a primary key's column be NULL unless it says NOT NULL;
                        // PostgreSQL never does: compare what a key column can hold.
                        let not_null = r.get::<_, bool>(2)? || pk > 0;
                        if pk > 0 {
                            key.push(name.clone());
                        }
                        shape.columns.insert((t.clone(), name, kind(&ty), not_null));
                        Ok(true)
                    },
                )?;
                if !key.is_empty() {
                    shape.keys.insert((t.clone(), key));
                }
                let indexes: Vec<(String, bool)> = c.query_map(
                    "SELECT name, \"unique\" FROM pragma_index_list($1) WHERE origin <> 'pk'",
                    params![t],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?;
                for (index, unique) in indexes {
                    let cols: Vec<String> = c.query_map(
                        "SELECT name FROM pragma_index_info($1) ORDER BY seqno",
                        params![index],
                        |r| r.get(0),
                    )?;
                    shape.indexes.insert((t.clone(), cols, unique));
                }
            }
        }
        Dialect::Postgres => {
            c.query_each(
                "SELECT c.table_name, c.column_name, c.data_type, c.is_nullable = 'NO' \
                 FROM information_schema.columns c JOIN information_schema.tables t \
                 ON t.table_schema = c.table_schema AND t.table_name = c.table_name \
                 WHERE c.table_schema = 'public' AND t.table_type = 'BASE TABLE'",
                params![],
                |r| {
                    let ty: String = r.get(2)?;
                    shape
                        .columns
                        .insert((r.get(0)?, r.get(1)?, kind(&ty), r.get(3)?));
                    Ok(true)
                },
            )?;
            c.query_each(
                "SELECT t.relname, i.indisprimary, i.indisunique, \
                 array_to_string(ARRAY(SELECT a.attname FROM unnest(i.indkey) WITH ORDINALITY \
                 AS k(n, o) JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.n \
                 ORDER BY k.o), ',') \
                 FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid \
                 JOIN pg_namespace s ON s.oid = t.relnamespace WHERE s.nspname = 'public'",
                params![],
                |r| {
                    let (table, primary, unique): (String, bool, bool) =
                        (r.get(0)?, r.get(1)?, r.get(2)?);
                    let cols: Vec<String> = r
                        .get::<_, String>(3)?
                        .split(',')
                        .map(str::to_owned)
                        .collect();
                    if primary {
                        shape.keys.insert((table, cols));
                    } else {
                        shape.indexes.insert((table, cols, unique));
                    }
                    Ok(true)
                },
            )?;
        }
    }
    Ok(shape)
}

/// SQLite addresses a rollup cell by the `rowid` every table has; PostgreSQL's schema makes it
/// a column and the key. The SQLite side is given the same, so that the rest compares as is.
fn with_rowids(mut sqlite: Shape) -> Shape {
    let table = "rollup_cells";
    assert!(
        !sqlite.keys.iter().any(|(t, _)| t == table),
        "rollup_cells has no declared key on SQLite: its rowid is the key"
    );
    sqlite
        .keys
        .insert((table.to_owned(), vec!["rowid".to_owned()]));
    sqlite
        .columns
        .insert((table.to_owned(), "rowid".to_owned(), "integer", true));
    sqlite
}

/// What one shape has and the other has not, one line each (empty when they agree).
fn differences(sqlite: &Shape, postgres: &Shape) -> String {
    fn diff<T: Ord + std::fmt::Debug>(what: &str, a: &BTreeSet<T>, b: &BTreeSet<T>) -> String {
        let only = |x: &BTreeSet<T>, y: &BTreeSet<T>, side: &str| {
            x.difference(y)
                .map(|v| format!("{what} only on {side}: {v:?}\n"))
                .collect::<String>()
        };
        only(a, b, "SQLite") + &only(b, a, "PostgreSQL")
    }
    diff("column", &sqlite.columns, &postgres.columns)
        + &diff("key", &sqlite.keys, &postgres.keys)
        + &diff("index", &sqlite.indexes, &postgres.indexes)
}

#[test]
fn both_engines_get_the_same_tables_columns_keys_and_indexes() {
    let dbs = Databases::new();
    let [sqlite, postgres] = dbs.both();
    let shapes: Vec<Shape> = [&sqlite, &postgres]
        .into_iter()
        .map(|b| dbs.store(b).read(shape).unwrap())
        .collect();
    let lite = with_rowids(shapes[0].clone());
    // The schema version: `PRAGMA user_version` on SQLite, a table on PostgreSQL.
    let mut pg = shapes[1].clone();
    pg.columns.retain(|(table, ..)| table != "domicile_schema");
    pg.keys.retain(|(table, _)| table != "domicile_schema");
    assert!(lite.columns.len() > 50, "the schema was read: {lite:?}");
    assert_eq!(
        differences(&lite, &pg),
        "",
        "SQLite and PostgreSQL schemas differ"
    );
}

#[test]
fn the_vault_gets_the_same_tables_on_both_engines() {
    let dbs = Databases::new();
    let [sqlite, postgres] = dbs.both();
    let shapes: Vec<Shape> = [&sqlite, &postgres]
        .into_iter()
        .map(|b| {
            let vault = dbs.vault(b);
            dbs.store_with_vault(b, &vault);
            let conn = match &vault {
                Backend::Sqlite(path) => {
                    Connection::sqlite(rusqlite::Connection::open(path).unwrap())
                }
                Backend::Postgres(url) => Connection::postgres(url).unwrap(),
            };
            shape(&conn).unwrap()
        })
        .collect();
    assert!(shapes[0].columns.len() > 10, "{:?}", shapes[0]);
    assert_eq!(
        differences(&shapes[0], &shapes[1]),
        "",
        "the vaults' schemas differ"
    );
}

#[test]
fn guarded_tables_refuse_updates_and_deletes_on_both_engines() {
    let dbs = Databases::new();
    for (dialect, store) in connections(&dbs) {
        store
            .write(|c| {
                c.execute(
                    "INSERT INTO audit_log (seq, at, kind, tenant, details, prev_hash, hash) \
                     VALUES (1, 0, 'test', 't', '{}', $1, $2)",
                    params![[0u8; 32], [1u8; 32]],
                )?;
                c.execute(
                    "INSERT INTO audit_checkpoints (seq, at, head_hash, signature) \
                     VALUES (1, 0, $1, $2)",
                    params![[1u8; 32], [2u8; 64]],
                )?;
                c.execute(
                    "INSERT INTO consent_ledger (tenant, subject_id, seq, purpose, channel, \
                     action, recorded_at, source, policy_version, actor, state) \
                     VALUES ('t', 's', 1, 1, 0, 1, 0, 1, 'v', 'a', 1)",
                    params![],
                )?;
                Ok(())
            })
            .unwrap();
        for sql in [
            "UPDATE audit_log SET details = 'changed'",
            "DELETE FROM audit_log",
            "UPDATE audit_checkpoints SET at = 1",
            "DELETE FROM audit_checkpoints",
            "UPDATE consent_ledger SET state = 0",
            "DELETE FROM consent_ledger",
        ] {
            let err = store.write(|c| c.execute(sql, params![])).expect_err(sql);
            assert!(
                err.to_string().contains("append-only"),
                "{dialect:?} {sql}: {err}"
            );
        }
        let rows: i64 = store
            .read(|c| {
                c.query_row(
                    "SELECT (SELECT COUNT(*) FROM audit_log) + (SELECT COUNT(*) FROM \
                     audit_checkpoints) + (SELECT COUNT(*) FROM consent_ledger)",
                    params![],
                    |r| r.get(0),
                )
            })
            .unwrap();
        assert_eq!(rows, 3, "{dialect:?}: nothing changed");
    }
}

/// PostgreSQL plans every execution for its own parameters and the tables' size then: a
/// generic plan cached while a table was small would keep scanning all of it as it grows
/// (`store::postgres::SESSION`). SQLite plans each statement once, by its indexes.
#[test]
fn postgres_plans_each_execution_for_the_tables_as_they_are() {
    let dbs = Databases::new();
    let store = dbs.store(&dbs.postgres());
    let mode: String = store
        .read(|c| c.query_row("SHOW plan_cache_mode", params![], |r| r.get(0)))
        .unwrap();
    assert_eq!(mode, "force_custom_plan");
    // A lookup of a batch's subjects, prepared and run while the table is small, is still
    // planned with the values it is given (a generic plan would show the parameter `$2`, and
    // compare every row with every id of the array, one by one).
    let plan: Vec<String> = store
        .write(|c| {
            c.execute_batch(
                "PREPARE lookup (text, text[]) AS SELECT COUNT(*) FROM subject_numbers \
                 WHERE tenant = $1 AND subject_id = ANY($2)",
            )?;
            for _ in 0..6 {
                c.execute_batch("EXECUTE lookup ('t', ARRAY['s1', 's2', 's3'])")?;
            }
            c.query_map(
                "EXPLAIN EXECUTE lookup ('t', ARRAY['s1', 's2', 's3'])",
                params![],
                |r| r.get::<_, String>(0),
            )
        })
        .unwrap();
    let plan = plan.join("\n");
    assert!(plan.contains("s2") && !plan.contains("$2"), "{plan}");
}

/// A pipeline runs its statements in the order given, on both engines: each step here
/// depends on the one before it, so any reordering (PostgreSQL receives them all before it
/// answers the first) changes the result.
#[test]
fn a_pipeline_runs_its_statements_in_order() {
    let dbs = Databases::new();
    for (dialect, store) in connections(&dbs) {
        let (counts, i) = store
            .write(|c| {
                scratch(c)?;
                let mut pipeline = Pipeline::default();
                pipeline.push(
                    "INSERT INTO scratch (k, i) VALUES ($1, $2)",
                    params!["a", 1],
                );
                let double = "UPDATE scratch SET i = i * 2 + $2 WHERE k = $1";
                for bit in (0..60).map(|n| (n * 7 % 3) % 2) {
                    pipeline.push(double, params!["a", bit]);
                }
                // A statement not prepared before, and one that changes nothing.
                pipeline.push(
                    "UPDATE scratch SET t = $2 WHERE k = $1",
                    params!["a", "last"],
                );
                pipeline.push("DELETE FROM scratch WHERE k = $1", params!["nobody"]);
                assert_eq!(pipeline.len(), 63);
                let counts = c.pipeline(&pipeline)?;
                let i: i64 =
                    c.query_row("SELECT i FROM scratch WHERE k = $1", params!["a"], |r| {
                        r.get(0)
                    })?;
                Ok((counts, i))
            })
            .unwrap();
        let expected = (0..60)
            .map(|n: i64| (n * 7 % 3) % 2)
            .fold(1i64, |i, bit| i.wrapping_mul(2).wrapping_add(bit));
        assert_eq!(i, expected, "{dialect:?}: the steps ran out of order");
        assert_eq!(counts.len(), 63, "{dialect:?}");
        assert!(
            counts[..62].iter().all(|n| *n == 1),
            "{dialect:?}: {counts:?}"
        );
        assert_eq!(counts[62], 0, "{dialect:?}");
    }
}

/// A failing step fails the pipeline with that step's error, and the transaction it ran in
/// leaves nothing, the steps before the failure included. Outside a transaction, where
/// PostgreSQL would go on with the steps after a failure, SQLite refuses to run one (the
/// integration suite runs on both engines, so a misuse fails it).
#[test]
fn a_pipeline_fails_at_its_first_error_and_its_transaction_leaves_nothing() {
    let dbs = Databases::new();
    for (dialect, store) in connections(&dbs) {
        store.write(scratch).unwrap();
        let failed = store
            .write(|c| {
                let mut pipeline = Pipeline::default();
                let insert = "INSERT INTO scratch (k) VALUES ($1)";
                pipeline
                    .push(insert, params!["a"])
                    .push(insert, params!["b"])
                    .push(insert, params!["a"])
                    .push(insert, params!["c"]);
                c.pipeline(&pipeline)
            })
            .expect_err("the third step breaks the key");
        assert!(
            matches!(&failed, NodeError::Storage(db) if db.is_unique_violation()),
            "{dialect:?}: {failed}"
        );
        let rows: i64 = store
            .read(|c| c.query_row("SELECT COUNT(*) FROM scratch", params![], |r| r.get(0)))
            .unwrap();
        assert_eq!(
            rows, 0,
            "{dialect:?}: nothing of the failed transaction stays"
        );
        if dialect == Dialect::Sqlite {
            let conn = dbs.both()[0].connect_read_write().unwrap();
            let mut pipeline = Pipeline::default();
            pipeline.push("INSERT INTO scratch (k) VALUES ($1)", params!["x"]);
            let refused = conn.pipeline(&pipeline).expect_err("outside a transaction");
            assert!(
                refused.to_string().contains("inside a transaction"),
                "{refused}"
            );
        }
    }
}

/// PostgreSQL readers come from a bounded pool: many readers at once never open more than
/// [`super::READERS`] sessions, each session is read-only, and a session the server closed
/// (a restart, a failover, an operator's `pg_terminate_backend`) is replaced, not handed out.
#[test]
fn postgres_readers_are_pooled_bounded_read_only_and_replaced_when_closed() {
    let dbs = Databases::new();
    let backend = dbs.postgres();
    let store = std::sync::Arc::new(dbs.store(&backend));
    let admin = backend.connect_read_write().unwrap();
    let sessions = |admin: &Connection| -> i64 {
        admin
            .query_row(
                "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
                params![],
                |r| r.get(0),
            )
            .unwrap()
    };
    let before = sessions(&admin);
    // 32 readers at once, each holding its session while the others start.
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(32));
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
    let threads: Vec<_> = (0..32)
        .map(|_| {
            let (store, barrier, peak) = (store.clone(), barrier.clone(), peak.clone());
            std::thread::spawn(move || {
                barrier.wait();
                store
                    .read(|c| {
                        let open: i64 = c.query_row(
                            "SELECT COUNT(*) FROM pg_stat_activity \
                             WHERE datname = current_database() \
                             AND backend_type = 'client backend'",
                            params![],
                            |r| r.get(0),
                        )?;
                        peak.fetch_max(open, std::sync::atomic::Ordering::SeqCst);
                        c.query_row("SELECT pg_sleep(0.05)::text", params![], |_| Ok(()))
                    })
                    .unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let readers = sessions(&admin) - before;
    assert!(
        (1..=super::READERS as i64).contains(&readers),
        "{readers} reader sessions stay open for 32 readers"
    );
    // The admin, the store's writer and vault, and at most READERS readers.
    let peak = peak.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        peak <= before + 1 + super::READERS as i64,
        "{peak} sessions at once"
    );
    let written = store.read(|c| c.execute_batch("CREATE TABLE written (k BIGINT)"));
    assert!(written.is_err(), "a reader's session is read-only");
    // The server closes every reader's session: the next reads get new ones.
    admin
        .execute_batch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid() \
             AND backend_type = 'client backend' AND query NOT LIKE '%domicile_schema%'",
        )
        .unwrap();
    for _ in 0..(super::READERS + 2) {
        let one: i64 = store
            .read(|c| c.query_row("SELECT 1::bigint", params![], |r| r.get(0)))
            .unwrap();
        assert_eq!(one, 1);
    }
}

/// Called from inside a tokio task that has spent its cooperative budget (a test's, or a
/// handler that calls the store directly), a PostgreSQL call still returns. It used to spin
/// for ever at 100% CPU: a budgeted operation (the statement cache's `OnceCell`, the pool's
/// `JoinHandle`) answered "not yet" and woke itself at once, and the budget refills only when
/// the task yields, which a thread blocked on the answer never does.
#[tokio::test(flavor = "current_thread")]
async fn postgres_calls_from_a_task_that_spent_its_budget_return() {
    use futures::FutureExt;
    let dbs = Databases::new();
    let store = dbs.store(&dbs.postgres());
    // Spend the budget: each poll of a semaphore costs a unit, and past the budget a ready
    // semaphore answers "not yet".
    let semaphore = tokio::sync::Semaphore::new(1_000);
    let spent = (0..1_000).any(|_| semaphore.acquire().now_or_never().is_none());
    assert!(spent, "the task's budget is spent");
    // A call that spins never returns: a watchdog ends the run with the reason instead of
    // letting it hang.
    let (done, watched) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if watched
            .recv_timeout(std::time::Duration::from_secs(60))
            .is_err()
        {
            eprintln!("a PostgreSQL call from a task without budget did not return in 60 s");
            std::process::exit(101);
        }
    });
    // A new pooled session (the pool's task, awaited here) and a statement not cached yet.
    let n: i64 = store
        .read(|c| c.query_row("SELECT 41::bigint + 1", params![], |r| r.get(0)))
        .unwrap();
    assert_eq!(n, 42);
    let _ = done.send(());
}
