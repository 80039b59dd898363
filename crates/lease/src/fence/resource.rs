//! In-process fences.

use std::collections::HashMap;
use std::sync::{Arc, Mutex as StdMutex};

use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::{FenceError, FencingToken};

#[derive(Debug)]
struct Slot<T> {
    highest: Option<FencingToken>,
    value: T,
}

/// A value that only holders of the newest lease may change: every access presents a token,
/// and one older than the newest accepted so far is refused.
///
/// ```
/// # async fn demo() {
/// use onephase_lease::{FencingToken, fence::FencedResource};
///
/// let balance = FencedResource::new("balance", 100_i64);
/// balance.write(FencingToken::new(8), |b| *b -= 30).await.expect("fresh token");
/// // A holder paused since it was granted token 7 wakes up and writes:
/// let stale = balance.write(FencingToken::new(7), |b| *b = 0).await;
/// assert!(stale.is_err());
/// assert_eq!(balance.read(|b| *b).await, 70);
/// # }
/// ```
#[derive(Debug)]
pub struct FencedResource<T> {
    name: String,
    slot: Arc<Mutex<Slot<T>>>,
}

impl<T> FencedResource<T> {
    /// `value`, named `name` in errors, having accepted no token yet.
    pub fn new(name: impl Into<String>, value: T) -> Self {
        Self {
            name: name.into(),
            slot: Arc::new(Mutex::new(Slot {
                highest: None,
                value,
            })),
        }
    }

    /// The highest token accepted so far.
    pub async fn highest(&self) -> Option<FencingToken> {
        self.slot.lock().await.highest
    }

    /// Applies `change` if `token` is at least the highest accepted (and records it).
    pub async fn write<R>(
        &self,
        token: FencingToken,
        change: impl FnOnce(&mut T) -> R,
    ) -> Result<R, FenceError> {
        let mut guard = self.enter(token).await?;
        Ok(change(&mut guard))
    }

    /// Reads the value; reads need no token.
    pub async fn read<R>(&self, look: impl FnOnce(&T) -> R) -> R {
        look(&self.slot.lock().await.value)
    }

    /// Admits `token` and holds the resource until the guard is dropped: no other token is
    /// admitted meanwhile, so a check and the work after it cannot be split by a newer holder.
    pub async fn enter(&self, token: FencingToken) -> Result<FencedGuard<T>, FenceError> {
        let mut slot = Arc::clone(&self.slot).lock_owned().await;
        if let Some(highest) = slot.highest
            && token < highest
        {
            return Err(FenceError::Stale {
                resource: self.name.clone(),
                token,
                highest,
            });
        }
        slot.highest = Some(token);
        Ok(FencedGuard { slot })
    }
}

/// Access to a fenced value under an admitted token.
#[derive(Debug)]
pub struct FencedGuard<T> {
    slot: OwnedMutexGuard<Slot<T>>,
}

impl<T> std::ops::Deref for FencedGuard<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.slot.value
    }
}

impl<T> std::ops::DerefMut for FencedGuard<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.slot.value
    }
}

/// In-process fences by resource name, created on first use: what the HTTP middleware checks
/// requests against.
#[derive(Debug, Default, Clone)]
pub struct Fences {
    fences: Arc<StdMutex<HashMap<String, Arc<FencedResource<()>>>>>,
}

impl Fences {
    /// No fence yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Admits `token` to `resource`, holding it until the guard is dropped.
    pub async fn enter(
        &self,
        resource: &str,
        token: FencingToken,
    ) -> Result<FencedGuard<()>, FenceError> {
        let fence = {
            let mut fences = self.fences.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(
                fences
                    .entry(resource.to_owned())
                    .or_insert_with(|| Arc::new(FencedResource::new(resource, ()))),
            )
        };
        fence.enter(token).await
    }

    /// The highest token `resource` has accepted.
    pub async fn highest(&self, resource: &str) -> Option<FencingToken> {
        let fence = {
            let fences = self.fences.lock().unwrap_or_else(|e| e.into_inner());
            fences.get(resource).cloned()
        };
        match fence {
            Some(f) => f.highest().await,
            None => None,
        }
    }
}
