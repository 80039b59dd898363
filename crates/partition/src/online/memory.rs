//! A map store in memory, for one process: tests, the lab, a tool that moves a range on its own.

use std::collections::HashMap;
use std::sync::Mutex;

use futures::future::BoxFuture;

use super::{MapStore, MoveError};
use crate::MapSpec;

/// Maps kept in this process, with [`MapStore`]'s compare-and-set on the version. A server
/// keeps its maps in its store instead (`store::StoreMapStore`), where every process that
/// routes can read them.
///
/// ```
/// use onephase_partition::online::{MapStore, MemoryMaps};
/// use onephase_partition::{MapSpec, Scheme};
/// let v1 = MapSpec {
///     name: "orders".into(),
///     version: 1,
///     scheme: Scheme::Range { splits: vec!["1000".into()] },
///     owners: vec!["a".into(), "a".into()],
/// };
/// let maps = MemoryMaps::new([v1.clone()]);
/// let v2 = MapSpec { version: 2, owners: vec!["a".into(), "b".into()], ..v1.clone() };
/// # let runtime = tokio::runtime::Builder::new_current_thread().build()?;
/// # runtime.block_on(async {
/// assert!(maps.compare_and_set(&v2).await?);
/// // Someone else's version 2: refused.
/// assert!(!maps.compare_and_set(&MapSpec { version: 2, ..v1 }).await?);
/// # Ok::<(), onephase_partition::online::MoveError>(()) })?;
/// assert_eq!(maps.get("orders").map(|m| m.version), Some(2));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Default)]
pub struct MemoryMaps(Mutex<HashMap<String, MapSpec>>);

impl MemoryMaps {
    /// A store holding `maps`.
    pub fn new(maps: impl IntoIterator<Item = MapSpec>) -> Self {
        Self(Mutex::new(
            maps.into_iter().map(|m| (m.name.clone(), m)).collect(),
        ))
    }

    /// The current version of `map`, if there is one.
    pub fn get(&self, map: &str) -> Option<MapSpec> {
        self.lock().get(map).cloned()
    }

    /// Makes `spec` the current version of its map, whatever the version was: a change made
    /// behind a move's back, as an operator's would be.
    pub fn publish(&self, spec: MapSpec) {
        self.lock().insert(spec.name.clone(), spec);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, MapSpec>> {
        // A panic while holding the lock leaves a whole map behind: the data is still good.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl MapStore for MemoryMaps {
    fn compare_and_set(&self, next: &MapSpec) -> BoxFuture<'_, Result<bool, MoveError>> {
        let mut maps = self.lock();
        let swapped = match maps.get(&next.name) {
            Some(current) if current == next => true,
            Some(current) if current.version + 1 == next.version => {
                maps.insert(next.name.clone(), next.clone());
                true
            }
            Some(_) => false,
            None if next.version == 1 => {
                maps.insert(next.name.clone(), next.clone());
                true
            }
            None => false,
        };
        Box::pin(async move { Ok(swapped) })
    }

    fn current(&self, map: &str) -> BoxFuture<'_, Result<MapSpec, MoveError>> {
        let current = self
            .get(map)
            .ok_or_else(|| MoveError::MapStore(format!("no map {map:?}")));
        Box::pin(async move { current })
    }
}
