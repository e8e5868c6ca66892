//! Erasures whose rows are deleted after the answer.
//!
//! Deleting a subject's 10,000 interactions, their index entries and rollup cells, and
//! committing the pages that changed takes about 140 ms on SQLite, and the WAL checkpoint that
//! takes the old page images out of the files another 80 ms (issue 25, measured). None of it
//! is what makes the erasure effective: once the vault entry is gone (crypto-shredding), no
//! copy of the rows can be linked to the person. So a complete erasure is answered after one
//! small transaction — the profile, consents, flags and follow-ups deleted, the suppressions
//! written, the subject queued in `erasure_purges`, the request recorded and audited — and the
//! vault entry's deletion. This module's worker then deletes the queued subjects' interactions,
//! comments and idempotency keys a chunk at a time ([`crate::domain::rights::purge_step`]),
//! and checkpoints the WAL once the queue is empty.
//!
//! Until then nothing may read those rows: every read of interactions (aggregates, record
//! queries, incidents, follow-ups) first waits for the queue to be empty
//! ([`Node::erasures_purged`]), and answers `UNAVAILABLE` if it is not within
//! [`READ_WAIT`]. The queue is a table, so a node that stops mid-purge finishes it when it
//! starts again, before those reads are answered.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::sync::watch;

use super::Node;
use crate::{domain::rights, error::NodeError};

/// How long a read waits for the erasures being purged before it answers `UNAVAILABLE`.
pub const READ_WAIT: Duration = Duration::from_secs(30);

/// The first pause after a purge failed (a full disk, a lost PostgreSQL connection); it
/// doubles up to [`MAX_BACKOFF`] while the failures go on.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The pause between two purge transactions, for writers waiting behind the purge.
const GIVE_WAY: Duration = Duration::from_millis(1);

/// The purge queue's state in memory.
#[derive(Debug)]
pub(crate) struct Purges {
    /// Erasures queued (or being queued) and not purged yet. Readers wait for 0.
    pending: watch::Sender<u64>,
    /// Readers waiting for the count to reach 0.
    waiting: AtomicUsize,
    worker: Mutex<Worker>,
}

#[derive(Debug, Default)]
struct Worker {
    /// A worker thread is running.
    running: bool,
    /// Work was queued since the worker last looked at the queue.
    kicked: bool,
    /// [`PurgeHold`]s alive: no purge starts.
    held: usize,
}

impl Purges {
    /// `queued`: the rows of `erasure_purges` at start.
    pub(crate) fn new(queued: u64) -> Self {
        Self {
            pending: watch::Sender::new(queued),
            waiting: AtomicUsize::new(0),
            worker: Mutex::new(Worker::default()),
        }
    }

    fn worker(&self) -> std::sync::MutexGuard<'_, Worker> {
        self.worker.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add(&self, n: i64) -> u64 {
        let mut now = 0;
        self.pending.send_modify(|v| {
            *v = v.saturating_add_signed(n);
            now = *v;
        });
        now
    }
}

/// While it lives, the node starts no purge: queued erasures stay queued, and reads of
/// interactions wait (then answer `UNAVAILABLE`). For tests that look at an erasure between
/// its answer and the deletion of its rows, and for an operator's maintenance window.
#[derive(Debug)]
#[must_use = "the purges resume when the hold is dropped"]
pub struct PurgeHold {
    node: Node,
}

impl Drop for PurgeHold {
    fn drop(&mut self) {
        let purges = &self.node.inner.purges;
        let mut w = purges.worker();
        w.held -= 1;
        drop(w);
        self.node.kick_purges();
    }
}

/// An erasure that may queue a purge ([`Node::purge_begin`]). Set [`PurgeTicket::queued`]
/// once its transaction has committed with the subject queued; dropped, it starts the worker
/// if so, and otherwise gives the count back. The worker starts at the end, not at the
/// commit, so that the erasure's last writes do not wait behind its own purge.
#[derive(Debug)]
pub(crate) struct PurgeTicket {
    node: Node,
    /// The subject was queued in `erasure_purges`.
    pub(crate) queued: bool,
}

impl Drop for PurgeTicket {
    fn drop(&mut self) {
        if self.queued {
            self.node.kick_purges();
        } else {
            let n = self.node.inner.purges.add(-1);
            self.node.inner.metrics.erasures_purging.set(n as i64);
        }
    }
}

impl Node {
    /// Erasures answered whose rows are not all deleted yet.
    pub fn erasures_purging(&self) -> u64 {
        *self.inner.purges.pending.borrow()
    }

    /// Reads waiting for the erasures being purged ([`Node::erasures_purged`]).
    pub fn reads_waiting_for_purges(&self) -> usize {
        self.inner.purges.waiting.load(Ordering::Relaxed)
    }

    /// Waits until every erasure answered has had its interactions, comments and idempotency
    /// keys deleted; `UNAVAILABLE` after [`READ_WAIT`]. Every read of interactions calls it
    /// first; with nothing queued it costs one atomic load.
    pub async fn erasures_purged(&self) -> Result<(), NodeError> {
        let purges = &self.inner.purges;
        if *purges.pending.borrow() == 0 {
            return Ok(());
        }
        let mut rx = purges.pending.subscribe();
        purges.waiting.fetch_add(1, Ordering::Relaxed);
        let waited = tokio::time::timeout(READ_WAIT, rx.wait_for(|n| *n == 0)).await;
        purges.waiting.fetch_sub(1, Ordering::Relaxed);
        match waited {
            Ok(Ok(_)) => Ok(()),
            _ => Err(NodeError::Unavailable(
                "an erasure's rows are still being deleted in this region; retry".into(),
            )),
        }
    }

    /// Stops purges from starting until the hold is dropped ([`PurgeHold`]).
    pub fn hold_purges(&self) -> PurgeHold {
        self.inner.purges.worker().held += 1;
        PurgeHold { node: self.clone() }
    }

    /// Before an erasure's transaction that may queue a purge: from here on, reads wait until
    /// the returned guard is dropped, and then until the purge it may have queued is done.
    pub(crate) fn purge_begin(&self) -> PurgeTicket {
        let n = self.inner.purges.add(1);
        self.inner.metrics.erasures_purging.set(n as i64);
        PurgeTicket {
            node: self.clone(),
            queued: false,
        }
    }

    /// Starts the worker if there is work and none runs (and no hold is alive); a running
    /// one looks at the queue once more before it stops.
    pub(crate) fn kick_purges(&self) {
        let purges = &self.inner.purges;
        let mut w = purges.worker();
        w.kicked = true;
        if w.running || w.held > 0 {
            return;
        }
        w.running = true;
        drop(w);
        let node = self.clone();
        let spawned = std::thread::Builder::new()
            .name("domicile-purge".into())
            .spawn(move || node.purge_worker());
        if let Err(e) = spawned {
            // The next erasure, hold release or start tries again; reads wait meanwhile.
            tracing::error!(error = %e, "could not start the erasure purge worker");
            purges.worker().running = false;
        }
    }

    fn purge_worker(self) {
        let purges = &self.inner.purges;
        let mut backoff = FIRST_BACKOFF;
        loop {
            {
                let mut w = purges.worker();
                if !w.kicked || w.held > 0 {
                    w.running = false;
                    return;
                }
                w.kicked = false;
            }
            // Subjects whose rows are deleted; they leave the count once the WAL is
            // checkpointed too, so that a read answered after the wait finds them in no file.
            let mut finished = 0;
            loop {
                if purges.worker().held > 0 {
                    break;
                }
                match self.purge_next() {
                    Ok(None) => break,
                    Ok(Some(done)) => {
                        backoff = FIRST_BACKOFF;
                        finished += i64::from(done);
                        // Give way: the writer's mutex is not fair, and without a pause this
                        // thread takes it back before a waiting ingest or erasure wakes, which
                        // then waits for the whole purge (measured: 236 ms per erasure sent
                        // while another was purged, against 8 ms with the pause).
                        std::thread::sleep(GIVE_WAY);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?backoff, "an erasure purge step failed");
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
            if finished > 0 {
                rights::scrub(&self.inner.store);
                let n = purges.add(-finished);
                self.inner.metrics.erasures_purging.set(n as i64);
            }
        }
    }

    /// One step of the first queued purge: `None` when the queue is empty, otherwise whether
    /// that subject is done.
    fn purge_next(&self) -> Result<Option<bool>, NodeError> {
        self.inner.store.write(|tx| {
            let Some((tenant, subject)) = rights::next_purge(tx)? else {
                return Ok(None);
            };
            let (_, done) = rights::purge_step(tx, &tenant, &subject, rights::PURGE_CHUNK)?;
            Ok(Some(done))
        })
    }
}
