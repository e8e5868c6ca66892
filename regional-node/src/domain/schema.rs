//! The node's schema: every domain table's DDL, written for each engine by the module that
//! owns the tables, gathered in one place for the store to apply, and the migrations between
//! versions.
//!
//! The store ([`crate::store`]) knows how to apply a [`Schema`] and run its migrations on
//! either engine; which tables there are, and what a migration does with them, is the
//! domain's, and lives here.

use std::sync::LazyLock;

use crate::{
    error::NodeError,
    store::{
        Migration, Schema,
        db::{Connection, Dialect, params},
    },
};

/// The version of the schema this code writes (`PRAGMA user_version` on SQLite, the
/// `domicile_schema` table on PostgreSQL).
pub const SCHEMA_VERSION: i64 = 12;

/// The node's schema, both dialects, with its migrations.
pub static SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
    use crate::domain::{
        audit, authority, cases, consent, followup, incident, release, rights, rollup, stored,
    };
    let sqlite = [
        stored::SCHEMA_SQLITE,
        consent::SCHEMA_SQLITE,
        audit::SCHEMA_SQLITE,
        authority::SCHEMA_SQLITE,
        incident::SCHEMA_SQLITE,
        followup::SCHEMA_SQLITE,
        rights::SCHEMA_SQLITE,
        cases::SCHEMA_SQLITE,
        release::SCHEMA_SQLITE,
        &rollup::schema_sqlite(),
    ]
    .concat();
    let postgres = [
        stored::SCHEMA_POSTGRES,
        consent::SCHEMA_POSTGRES,
        audit::SCHEMA_POSTGRES,
        authority::SCHEMA_POSTGRES,
        incident::SCHEMA_POSTGRES,
        followup::SCHEMA_POSTGRES,
        rights::SCHEMA_POSTGRES,
        cases::SCHEMA_POSTGRES,
        release::SCHEMA_POSTGRES,
        rollup::TABLES_POSTGRES,
        &triggers(),
    ]
    .concat();
    Schema {
        version: SCHEMA_VERSION,
        sqlite,
        postgres,
        migrations: MIGRATIONS,
    }
});

/// The migrations that take a database at `version` to [`SCHEMA_VERSION`], or why it cannot
/// be.
pub fn pending_migrations(version: i64) -> Result<Vec<&'static Migration>, NodeError> {
    SCHEMA.pending(version)
}

/// Every migration, in order. A database older than the first one's starting version cannot
/// be migrated.
pub static MIGRATIONS: &[Migration] = &[
    Migration {
        version: 4,
        what: "rollup cells and per-subject cells, built from the stored interactions",
        apply: |tx| crate::domain::rollup::rebuild(tx),
    },
    Migration {
        version: 5,
        what: "DPO signature nonces; audit checkpoints append-only (both made by the schema)",
        apply: |_| Ok(()),
    },
    Migration {
        version: 6,
        what: "differentially private releases and their accountant (made by the schema)",
        apply: |_| Ok(()),
    },
    Migration {
        version: 7,
        what: "suppressions kept by erasures (made by the schema)",
        apply: |_| Ok(()),
    },
    Migration {
        version: 8,
        what: "subjects by reference, ids keyed by the subject's data key (an empty database only)",
        apply: keyed_ids,
    },
    Migration {
        version: 9,
        what: "follow-up cases (made by the schema)",
        apply: |_| Ok(()),
    },
    Migration {
        version: 10,
        what: "the console's consent counts and release statistics, counted from consent_state \
               and the audit log once (then kept as they change)",
        apply: derived_counts,
    },
    Migration {
        version: 11,
        what: "the queue of erasures whose rows are deleted after the answer (made by the schema)",
        apply: |_| Ok(()),
    },
    Migration {
        version: 12,
        what: "subject requests as cases: a case and a history for each request made before",
        apply: crate::domain::cases::migrate,
    },
];

/// Migration 10: the tables the console reads instead of every subject's consent and every
/// release's audit entry, filled from what is stored (the schema made them and their
/// triggers). The index they replace goes.
fn derived_counts(tx: &Connection) -> Result<(), NodeError> {
    tx.execute_batch(
        "DROP INDEX IF EXISTS consent_state_counts;
         DELETE FROM consent_counts;
         INSERT INTO consent_counts (tenant, policy_version, purpose, channel, state, subjects)
         SELECT tenant, policy_version, purpose, channel, state, COUNT(*) FROM consent_state
         WHERE true GROUP BY tenant, policy_version, purpose, channel, state;
         DELETE FROM release_stats;",
    )?;
    crate::domain::audit::count_past_releases(tx)
}

/// Migration 8: the layout where no customer id is stored in clear. Ids stored by an earlier
/// version are in clear and their subjects' keys are in the vault by external id: converting
/// them needs both databases at once and is not done in place, so a database that holds
/// subjects is refused (docs/erasure.md, upgrading from schema 7).
fn keyed_ids(tx: &Connection) -> Result<(), NodeError> {
    let held: i64 = tx.query_row(
        "SELECT (SELECT COUNT(*) FROM subjects) + (SELECT COUNT(*) FROM interactions)
              + (SELECT COUNT(*) FROM consent_ledger)",
        params![],
        |r| r.get(0),
    )?;
    if held > 0 {
        return Err(NodeError::Internal(
            "schema 7 holds customer ids in clear and this release cannot convert them in \
             place: export the subjects, start an empty database and ingest them again \
             (docs/erasure.md, upgrading from schema 7)"
                .into(),
        ));
    }
    match tx.dialect() {
        Dialect::Sqlite => {
            let has: i64 = tx.query_row(
                "SELECT COUNT(*) FROM pragma_table_info('interactions') WHERE name = 'sealed_id'",
                params![],
                |r| r.get(0),
            )?;
            if has == 0 {
                tx.execute_batch("ALTER TABLE interactions ADD COLUMN sealed_id BLOB")?;
            }
        }
        Dialect::Postgres => {
            tx.execute_batch("ALTER TABLE interactions ADD COLUMN IF NOT EXISTS sealed_id BYTEA")?
        }
    }
    Ok(())
}

/// PostgreSQL's triggers: the append-only audit log, its checkpoints and the consent ledger (a consent delete is
/// allowed only inside an erasure, which raises `erasure_guard` for its own transaction), and
/// the rollups' subject tracking.
fn triggers() -> String {
    let mut sql = String::from(
        "CREATE OR REPLACE FUNCTION domicile_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           RAISE EXCEPTION 'the % is append-only', TG_ARGV[0];
         END $$;
         CREATE OR REPLACE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
           FOR EACH ROW EXECUTE FUNCTION domicile_append_only('audit log');
         CREATE OR REPLACE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
           FOR EACH ROW EXECUTE FUNCTION domicile_append_only('audit log');
         CREATE OR REPLACE TRIGGER consent_ledger_no_update BEFORE UPDATE ON consent_ledger
           FOR EACH ROW EXECUTE FUNCTION domicile_append_only('consent ledger');
         CREATE OR REPLACE FUNCTION domicile_consent_delete() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NOT EXISTS (SELECT 1 FROM erasure_guard) THEN
             RAISE EXCEPTION 'the consent ledger is append-only';
           END IF;
           RETURN OLD;
         END $$;
         CREATE OR REPLACE TRIGGER consent_ledger_no_delete BEFORE DELETE ON consent_ledger
           FOR EACH ROW EXECUTE FUNCTION domicile_consent_delete();
         -- The table-level form: TRUNCATE would skip the row triggers.
         CREATE OR REPLACE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
           FOR EACH STATEMENT EXECUTE FUNCTION domicile_append_only('audit log');
         CREATE OR REPLACE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
           FOR EACH ROW EXECUTE FUNCTION domicile_append_only('audit checkpoints');
         CREATE OR REPLACE TRIGGER audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
           FOR EACH ROW EXECUTE FUNCTION domicile_append_only('audit checkpoints');
         CREATE OR REPLACE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
           FOR EACH STATEMENT EXECUTE FUNCTION domicile_append_only('audit checkpoints');
         ",
    );
    sql.push_str(
        "CREATE OR REPLACE FUNCTION domicile_consent_counts() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF TG_OP IN ('UPDATE', 'DELETE') THEN
             UPDATE consent_counts SET subjects = subjects - 1
             WHERE tenant = OLD.tenant AND policy_version = OLD.policy_version
               AND purpose = OLD.purpose AND channel = OLD.channel AND state = OLD.state;
           END IF;
           IF TG_OP IN ('INSERT', 'UPDATE') THEN
             INSERT INTO consent_counts (tenant, policy_version, purpose, channel, state, subjects)
             VALUES (NEW.tenant, NEW.policy_version, NEW.purpose, NEW.channel, NEW.state, 1)
             ON CONFLICT (tenant, policy_version, purpose, channel, state)
             DO UPDATE SET subjects = consent_counts.subjects + 1;
           END IF;
           RETURN NULL;
         END $$;
         CREATE OR REPLACE TRIGGER consent_counts AFTER INSERT OR UPDATE OR DELETE ON consent_state
           FOR EACH ROW EXECUTE FUNCTION domicile_consent_counts();
         ",
    );
    sql.push_str(&crate::domain::rollup::pg_triggers());
    sql
}
