//! Group commit: every synced write of a lane goes through [`Store::write`],
//! and the writes queued while a commit is in progress share the next one,
//! each in a savepoint of its own.

use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use rusqlite::Connection;

use super::{Store, StoreError};

/// Writes queued for the next group commit, and whether a caller (or a
/// task committing for it) is committing batches now.
#[derive(Default)]
pub(super) struct Group {
    pub(super) queue: Vec<Box<dyn Job>>,
    pub(super) leading: bool,
}

/// One caller's write inside a group commit.
pub(super) trait Job: Send {
    /// Runs the write in the batch's transaction; `false` when it failed and
    /// its changes are to be rolled back.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Answers the caller: with its own result once the batch committed, or
    /// with the error that kept the batch from committing.
    fn finish(self: Box<Self>, failed: Option<&rusqlite::Error>);
    /// Whether the write needs its commit synced to disk before it is
    /// answered (see [`Durability`]).
    fn durability(&self) -> Durability;
}

/// When a write must be on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Synced before the caller hears back: a power cut cannot undo it.
    Synced,
    /// Committed without a sync of its own. It becomes durable with the next
    /// synced commit (SQLite's WAL is replayed in order, so a power cut can
    /// lose it only together with every commit after it). For state whose
    /// loss is harmless: recovery treats the state before it the same way.
    Deferred,
}

/// Hands a write's result to its caller, who waits on a channel (blocking
/// or async); dropped unsent, it tells the caller the write was abandoned.
pub(super) type Reply<R> = Box<dyn FnOnce(Result<R, StoreError>) + Send>;

struct Write<F, R> {
    durability: Durability,
    work: Option<F>,
    result: Option<Result<R, StoreError>>,
    reply: Reply<R>,
}

impl<F, R> Job for Write<F, R>
where
    F: FnOnce(&Connection) -> Result<R, StoreError> + Send,
    R: Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let work = self.work.take().expect("a write runs once");
        let result = work(conn);
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn finish(self: Box<Self>, failed: Option<&rusqlite::Error>) {
        let Write { result, reply, .. } = *self;
        reply(match (failed, result) {
            (None, Some(result)) => result,
            // Nothing of the batch is on disk, whatever the write found.
            (Some(e), _) => Err(StoreError::Db(copy_error(e))),
            (None, None) => unreachable!("a committed batch ran every write"),
        });
    }

    fn durability(&self) -> Durability {
        self.durability
    }
}

/// The same error for every write of a batch whose commit failed.
fn copy_error(e: &rusqlite::Error) -> rusqlite::Error {
    match e {
        rusqlite::Error::SqliteFailure(code, message) => rusqlite::Error::SqliteFailure(*code, message.clone()),
        other => rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
            Some(other.to_string()),
        ),
    }
}

/// The error a caller gets when its queued write was dropped uncommitted.
fn abandoned<R>() -> Result<R, StoreError> {
    Err(StoreError::Db(rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
        Some("the write's group commit was abandoned".into()),
    )))
}

/// The duty to commit the queued writes, held by one caller (or one
/// blocking task, or with the simulator's commit time one async task) at a
/// time. Dropped before the queue is empty (a panic
/// mid-batch, or a runtime that shut down before the blocking task ran), it
/// clears the flag so later writes find a leader; the writes it held are
/// dropped, and their callers get an error.
pub(super) struct Leader<S: Deref<Target = Store>> {
    store: S,
    done: bool,
}

impl<S: Deref<Target = Store>> Leader<S> {
    pub(super) fn new(store: S) -> Self {
        Self { store, done: false }
    }

    /// Commits batch after batch until no write is queued.
    fn commit_queued(mut self) {
        while let Some(batch) = self.take_batch() {
            self.store.commit_batch(batch);
        }
    }

    /// The writes queued now, for one commit; `None` when there are none,
    /// and the duty is given up.
    fn take_batch(&mut self) -> Option<Vec<Box<dyn Job>>> {
        let mut g = self.store.group.lock().unwrap_or_else(|e| e.into_inner());
        if g.queue.is_empty() {
            g.leading = false;
            self.done = true;
            return None;
        }
        Some(std::mem::take(&mut g.queue))
    }
}

impl<S: Deref<Target = Store>> Drop for Leader<S> {
    fn drop(&mut self) {
        if !self.done {
            let mut g = self.store.group.lock().unwrap_or_else(|e| e.into_inner());
            g.leading = false;
            g.queue.clear();
        }
    }
}

impl Store {
    /// Runs `work` in a synced commit, shared with the writes other lanes
    /// queue meanwhile (group commit): every write queued while a commit is
    /// in progress goes into the next one, each in its own savepoint. A write
    /// that fails is rolled back alone; a commit that fails fails every write
    /// in it. Alone, a write is one transaction and one commit.
    ///
    /// A write that finds no commit in progress is committed at once on its
    /// caller's worker, as a blocking call would (a commit takes a fraction
    /// of a millisecond, and a lone lane pays no hand-off to another thread:
    /// `block_in_place` here cost 0.2 ms of posd's own time per payment and
    /// memory, docs/performance.md (c)). Writes that find a commit in progress
    /// wait without holding their workers, so the other lanes' tasks keep
    /// running and queue theirs; those are committed together on tokio's
    /// blocking pool. A caller that stops waiting does not stop the write:
    /// once queued, it commits or fails as if awaited. With the simulator's
    /// commit time ([`Store::set_commit_yields`]) the commit a caller leads
    /// waits in a task of its own.
    pub(super) async fn write<R, F>(self: &Arc<Self>, work: F) -> Result<R, StoreError>
    where
        F: FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
        R: Send + 'static,
    {
        self.write_with(Durability::Synced, work).await
    }

    /// [`Store::write`] with the durability the write needs; a batch is
    /// synced when any of its writes needs it.
    pub(super) async fn write_with<R, F>(self: &Arc<Self>, durability: Durability, work: F) -> Result<R, StoreError>
    where
        F: FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
        R: Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        if self.enqueue(durability, work, Box::new(move |r| drop(reply.send(r)))) {
            let yields = self.commit_yields.load(Ordering::Relaxed);
            if yields > 0 {
                // The simulator's stand-in for a commit's time on a disk:
                // other tasks run (and queue their writes) before it starts.
                // The commit waits in a task of its own: a caller held
                // unpolled (a future beside others in a `select!`) or
                // dropped must not hold up the writes queued behind it.
                let leader = Leader::new(Arc::clone(self));
                tokio::spawn(async move {
                    for _ in 0..yields {
                        tokio::task::yield_now().await;
                    }
                    leader.commit_queued();
                });
                return answer.await.unwrap_or_else(|_| abandoned());
            }
            let mut leader = Leader::new(Arc::clone(self));
            if let Some(batch) = leader.take_batch() {
                self.commit_batch(batch);
            }
            // The caller commits one batch at most.
            if let Some(batch) = leader.take_batch() {
                tokio::task::spawn_blocking(move || {
                    leader.store.commit_batch(batch);
                    leader.commit_queued();
                });
            }
        }
        answer.await.unwrap_or_else(|_| abandoned())
    }

    /// [`Store::write`] for threads outside the runtime (tests): the first
    /// caller to find no commit in progress commits the queue itself.
    #[cfg(test)]
    pub(super) fn write_blocking<R, F>(&self, work: F) -> Result<R, StoreError>
    where
        F: FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
        R: Send + 'static,
    {
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        if self.enqueue(Durability::Synced, work, Box::new(move |r| drop(reply.send(r)))) {
            Leader::new(self).commit_queued();
        }
        answer.recv().unwrap_or_else(|_| abandoned())
    }

    /// Queues a write for the next commit; true when no commit is in
    /// progress and the caller is to lead.
    pub(super) fn enqueue<R, F>(&self, durability: Durability, work: F, reply: Reply<R>) -> bool
    where
        F: FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
        R: Send + 'static,
    {
        let mut g = self.group.lock().unwrap_or_else(|e| e.into_inner());
        g.queue.push(Box::new(Write { durability, work: Some(work), result: None, reply }));
        !std::mem::replace(&mut g.leading, true)
    }

    fn commit_batch(&self, mut batch: Vec<Box<dyn Job>>) {
        let mut conn = self.conn();
        // A batch is deferred when none of its writes needs a sync. The
        // level applies to the connection's next commits, so it is switched
        // before the transaction begins, and only when it changes: a synced
        // batch never commits at NORMAL, and if the switch fails, nothing of
        // the batch is committed.
        let deferred = batch.iter().all(|job| job.durability() == Durability::Deferred);
        // How many writes the commit carries (a refused one is rolled back).
        // (The simulator's planted bug commits synced batches at NORMAL too.)
        let normal = deferred || self.planted_normal.load(Ordering::Relaxed);
        let committed = (|| {
            if normal != self.at_normal.load(Ordering::Relaxed) {
                conn.execute_batch(if normal { "PRAGMA synchronous=NORMAL" } else { "PRAGMA synchronous=FULL" })?;
                self.at_normal.store(normal, Ordering::Relaxed);
            }
            let mut tx = conn.transaction()?;
            let mut kept = 0;
            if let [job] = batch.as_mut_slice() {
                if !job.run(&tx) {
                    return Ok(0);
                }
                kept = 1;
            } else {
                for job in &mut batch {
                    let mut sp = tx.savepoint()?;
                    if job.run(&sp) {
                        kept += 1;
                    } else {
                        sp.rollback()?;
                    }
                    sp.commit()?;
                }
            }
            if kept > 0 {
                tx.commit()?;
            }
            Ok(kept)
        })();
        drop(conn);
        if let Ok(kept @ 1..) = committed {
            let counter = if deferred { &self.unsynced_commits } else { &self.commits };
            counter.fetch_add(1, Ordering::Relaxed);
            self.writes.fetch_add(kept, Ordering::Relaxed);
        }
        let failed = committed.as_ref().err();
        for job in batch {
            job.finish(failed);
        }
    }

    /// Writes committed through [`Store::write`] and the commits that carried
    /// them, since the store was opened: their ratio is the group commit's
    /// batch size. Refused writes (a stale transition) count in neither.
    pub fn write_counts(&self) -> (u64, u64) {
        (self.writes.load(Ordering::Relaxed), self.commits.load(Ordering::Relaxed))
    }

    /// Commits made without a sync of their own ([`Durability::Deferred`]);
    /// not among [`Store::write_counts`]'s commits.
    pub fn unsynced_commits(&self) -> u64 {
        self.unsynced_commits.load(Ordering::Relaxed)
    }

    /// Of what [`Store::write_counts`]'s writes stored, the new payments and
    /// the transitions of a payment's own run (each payment's share of the
    /// commits, apart from events, audit entries, refunds and records), one
    /// each, however many a write carries; the forwarder's batches
    /// ([`Store::apply_batch`]) are not counted.
    pub fn payment_writes(&self) -> u64 {
        self.payment_writes.load(Ordering::Relaxed)
    }

    /// Counts, once a payment write committed, the new payments and
    /// transitions it stored (`stored` of its result); a failed write counts
    /// none. Every path that counts payment writes counts through it.
    pub(super) fn counted<T>(
        &self,
        r: Result<T, StoreError>,
        stored: impl FnOnce(&T) -> usize,
    ) -> Result<T, StoreError> {
        if let Ok(value) = &r {
            self.payment_writes.fetch_add(stored(value) as u64, Ordering::Relaxed);
        }
        r
    }
}
