//! Group commit for SQLite: transitions of many runs, queued while the single writer was busy,
//! are written in one transaction.
//!
//! SQLite has one writer and (with `synchronous = FULL`) one fsync per commit, so a commit per
//! transition caps an orchestrator at the disk's fsync rate. Each run still waits for its own
//! transition to be durable before its next call; it just shares the fsync with the runs that
//! were waiting at the same moment. A transition whose claim was lost writes nothing (its
//! guard is checked first, inside the same transaction); a database error fails the whole
//! group, and each of those runs is retried when its claim lapses.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::SqlitePool;
use tokio::sync::{mpsc, oneshot};

use super::{Guard, Transition};
use crate::SagaError;

/// Most transitions in one commit.
const MAX_GROUP: usize = 128;

struct Job {
    guard: Guard,
    transition: Transition,
    topic: Option<String>,
    done: oneshot::Sender<Result<bool, SagaError>>,
}

/// The queue in front of the SQLite writer. Its task ends when the last handle is dropped.
#[derive(Debug, Clone)]
pub(crate) struct GroupCommit {
    jobs: mpsc::Sender<Job>,
}

impl GroupCommit {
    /// Starts the writer task (inside a Tokio runtime); it counts its commits in `commits`.
    pub(crate) fn spawn(pool: SqlitePool, commits: Arc<AtomicU64>) -> Self {
        let (jobs, queue) = mpsc::channel(1024);
        tokio::spawn(write_groups(pool, queue, commits));
        Self { jobs }
    }

    /// Writes `transition` if `guard` holds; returns whether it did, once it is durable.
    pub(crate) async fn write(
        &self,
        guard: Guard,
        transition: Transition,
        topic: Option<&str>,
    ) -> Result<bool, SagaError> {
        let (done, written) = oneshot::channel();
        let job = Job {
            guard,
            transition,
            topic: topic.map(str::to_owned),
            done,
        };
        let gone = || SagaError::Store(sqlx::Error::PoolClosed);
        self.jobs.send(job).await.map_err(|_| gone())?;
        written.await.map_err(|_| gone())?
    }
}

async fn write_groups(pool: SqlitePool, mut queue: mpsc::Receiver<Job>, commits: Arc<AtomicU64>) {
    while let Some(first) = queue.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        match write_group(&pool, &group).await {
            Ok(written) => {
                commits.fetch_add(1, Ordering::Relaxed);
                for (job, written) in group.into_iter().zip(written) {
                    let _ = job.done.send(Ok(written));
                }
            }
            Err(e) => {
                let message = e.to_string();
                for job in group {
                    let _ = job
                        .done
                        .send(Err(SagaError::Store(sqlx::Error::Protocol(format!(
                            "the group commit this transition was part of failed: {message}"
                        )))));
                }
            }
        }
    }
}

async fn write_group(pool: &SqlitePool, group: &[Job]) -> Result<Vec<bool>, SagaError> {
    let mut tx = pool.begin().await?;
    let mut written = Vec::with_capacity(group.len());
    for job in group {
        written.push(
            super::sqlite::write_in(&mut tx, job.guard, &job.transition, job.topic.as_deref())
                .await?,
        );
    }
    tx.commit().await?;
    Ok(written)
}
