//! Databases for the unit tests, on both backends: SQLite files in a temporary directory and
//! databases in a throwaway PostgreSQL cluster (which fails, saying how to install
//! PostgreSQL, when its binaries are missing: the tests never skip a backend).

use std::sync::atomic::{AtomicUsize, Ordering};

use domicile_pg_cluster::PgCluster;

use crate::store::{Backend, Store};

/// Fresh databases of either backend, each with its own key vault.
pub(crate) struct Databases {
    dir: tempfile::TempDir,
    pg: PgCluster,
    next: AtomicUsize,
}

impl Databases {
    /// A temporary directory and a started cluster.
    pub(crate) fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            pg: PgCluster::start().expect("a PostgreSQL cluster for the tests"),
            next: AtomicUsize::new(0),
        }
    }

    fn n(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// A new, empty database of each backend.
    pub(crate) fn both(&self) -> [Backend; 2] {
        let n = self.n();
        [
            Backend::Sqlite(self.dir.path().join(format!("t{n}.sqlite"))),
            Backend::Postgres(self.pg.create_database(&format!("t{n}")).unwrap()),
        ]
    }

    /// A new, empty PostgreSQL database.
    pub(crate) fn postgres(&self) -> Backend {
        let n = self.n();
        Backend::Postgres(self.pg.create_database(&format!("t{n}")).unwrap())
    }

    /// A new key vault on the same backend as `data` (PostgreSQL data, PostgreSQL vault: what
    /// replicas on several machines run).
    pub(crate) fn vault(&self, data: &Backend) -> Backend {
        let n = self.n();
        match data {
            Backend::Sqlite(_) => Backend::Sqlite(self.dir.path().join(format!("v{n}.sqlite"))),
            Backend::Postgres(_) => {
                Backend::Postgres(self.pg.create_database(&format!("v{n}")).unwrap())
            }
        }
    }

    /// A store on `backend` with a vault of its own.
    pub(crate) fn store(&self, backend: &Backend) -> Store {
        self.store_with_vault(backend, &self.vault(backend))
    }

    /// A store on `backend` with its key vault at `vault`.
    pub(crate) fn store_with_vault(&self, backend: &Backend, vault: &Backend) -> Store {
        Store::open(backend, vault, &[7; 32], &crate::domain::schema::SCHEMA).unwrap()
    }
}
