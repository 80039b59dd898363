//! What can go wrong when routing a read or waiting for a token.

use std::time::Duration;

use onephase_core::{Classify, ErrorKind, ProblemType};

use crate::token::{Lsn, Token};

/// A consistency token's text could not be read. Nothing was waited for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadToken(String);

impl BadToken {
    pub(crate) fn new(message: String) -> Self {
        Self(message)
    }
}

impl Classify for BadToken {
    fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidInput
    }
}

/// A read could not be routed, or a wait could not be answered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicaError {
    /// The token's text is malformed.
    #[error(transparent)]
    BadToken(#[from] BadToken),
    /// The token was taken on another cluster (another system identifier): no replica of this
    /// one can ever reach it.
    #[error(
        "the consistency token {token} was taken on another PostgreSQL cluster (system \
         {:016x}, this cluster is {cluster:016x}); send tokens only to services that read the \
         cluster they were written to", token.system()
    )]
    ForeignToken {
        /// The token.
        token: Token,
        /// This cluster's system identifier.
        cluster: u64,
    },
    /// The token names a position (or timeline) the primary has not reached: it was not taken
    /// on this primary, or was altered.
    #[error(
        "the consistency token {token} is ahead of the primary (timeline {timeline}, position \
         {primary}): it was not taken from this cluster's primary, or was altered"
    )]
    TokenAhead {
        /// The token.
        token: Token,
        /// The primary's timeline.
        timeline: u32,
        /// The primary's current WAL position.
        primary: Lsn,
    },
    /// The token was taken before a failover (on an older timeline than the primary's). No
    /// replica wait can prove it visible: what survived the failover is on the primary.
    #[error(
        "the consistency token {token} was taken on timeline {}, before a failover (the primary \
         is on timeline {timeline}); read from the primary, which has every write that survived \
         it", token.timeline()
    )]
    Superseded {
        /// The token.
        token: Token,
        /// The primary's timeline.
        timeline: u32,
    },
    /// No replica had reached the token within the bound (the wait API; a routed read goes to
    /// the primary instead).
    #[error(
        "no replica of cluster {cluster:?} in rotation had replayed {token} after {waited:?} \
         (replicas: {replicas}); read from the primary, or wait longer"
    )]
    NotReached {
        /// The cluster.
        cluster: String,
        /// The token.
        token: Token,
        /// How long it waited.
        waited: Duration,
        /// Each replica's name and state when the wait ended.
        replicas: String,
    },
    /// The read needed the primary (no replica could serve it) and the primary fallback budget
    /// was spent: the read is refused rather than added to an overloaded primary.
    #[error(
        "no replica of cluster {cluster:?} can serve this read ({why}) and the primary's \
         fallback budget is spent; retry later, or relax the read's policy"
    )]
    Overloaded {
        /// The cluster.
        cluster: String,
        /// Why no replica could serve it.
        why: String,
    },
    /// The cluster's state is not known yet (the monitor has not polled the primary once).
    #[error("cluster {0:?} has not been reached yet; its primary may be down")]
    NotReady(String),
    /// A database call failed.
    #[error("{server}: {source}")]
    Database {
        /// Which server (`primary` or the replica's name).
        server: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// No cluster of that name is watched.
    #[error("no replica cluster named {name:?} is watched; watched: {known:?}")]
    UnknownCluster {
        /// The name asked for.
        name: String,
        /// The clusters watched.
        known: Vec<String>,
    },
    /// The request named no cluster, and there is not exactly one to default to.
    #[error("{}", cluster_needed(known))]
    ClusterNeeded {
        /// The clusters watched.
        known: Vec<String>,
    },
}

fn cluster_needed(known: &[String]) -> String {
    if known.is_empty() {
        "no replica cluster is watched: configure a [[replica]] table".to_owned()
    } else {
        format!("several replica clusters are watched ({known:?}): name one in `cluster`")
    }
}

impl ReplicaError {
    pub(crate) fn db(server: &str) -> impl FnOnce(sqlx::Error) -> ReplicaError + '_ {
        move |source| ReplicaError::Database {
            server: server.to_owned(),
            source,
        }
    }
}

const NOT_REACHED: ProblemType = ProblemType {
    status: 504,
    slug: "replica-not-reached",
    title: "No replica reached the token in time",
};

const OVERLOADED: ProblemType = ProblemType {
    status: 503,
    slug: "primary-fallback-budget-spent",
    title: "Replicas are behind and the primary's fallback budget is spent",
};

impl Classify for ReplicaError {
    fn kind(&self) -> ErrorKind {
        match self {
            ReplicaError::BadToken(_)
            | ReplicaError::ForeignToken { .. }
            | ReplicaError::TokenAhead { .. } => ErrorKind::InvalidInput,
            ReplicaError::NotReached { .. } => ErrorKind::Timeout,
            ReplicaError::Superseded { .. } => ErrorKind::Conflict,
            ReplicaError::Overloaded { .. }
            | ReplicaError::NotReady(_)
            | ReplicaError::Database { .. } => ErrorKind::Unavailable,
            ReplicaError::UnknownCluster { .. } => ErrorKind::NotFound,
            ReplicaError::ClusterNeeded { .. } => ErrorKind::InvalidInput,
        }
    }

    fn specific(&self) -> Option<ProblemType> {
        match self {
            ReplicaError::NotReached { .. } => Some(NOT_REACHED),
            ReplicaError::Overloaded { .. } => Some(OVERLOADED),
            _ => None,
        }
    }
}
