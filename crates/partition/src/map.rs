//! A partition map: key -> partition -> owner, with a version that only rises.
//!
//! The version is what makes a map safe to change while writers run: a writer routes with
//! the version it holds and presents it where it writes; the owner of a partition that moved
//! refuses a version older than the move's (see the online move), and the writer fetches the
//! map again. Any change to the scheme or to an owner makes a new version.

use serde::{Deserialize, Serialize};

use crate::{PartitionError, Partitioner, Scheme};

/// The longest map name.
pub const MAX_NAME_LEN: usize = 128;

/// A named, versioned assignment of a scheme's partitions to owners (shards, workers).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct MapSpec {
    /// The map's name: letters, digits, `.`, `_`, `-`, at most 128 characters.
    pub name: String,
    /// Its version: 1 for a new map, one more at every change.
    pub version: u64,
    /// How keys become partitions.
    pub scheme: Scheme,
    /// The owner of each partition, by partition number.
    pub owners: Vec<String>,
}

/// Where a key goes under one version of a map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route<'a> {
    /// The key's partition.
    pub partition: u32,
    /// The partition's owner.
    pub owner: &'a str,
    /// The map version this route was made with: present it where you write.
    pub version: u64,
}

/// A [`MapSpec`] checked and compiled for lookups.
///
/// ```
/// use onephase_partition::{MapSpec, PartitionMap, Scheme};
/// let map = PartitionMap::new(MapSpec {
///     name: "orders".into(),
///     version: 1,
///     scheme: Scheme::Range { splits: vec!["1000".into()] },
///     owners: vec!["shard-a".into(), "shard-b".into()],
/// })?;
/// assert_eq!(map.route("999").owner, "shard-a");
/// assert_eq!(map.route("1000").owner, "shard-b");
/// # Ok::<(), onephase_partition::PartitionError>(())
/// ```
#[derive(Debug, Clone)]
pub struct PartitionMap {
    spec: MapSpec,
    partitioner: Partitioner,
}

impl PartitionMap {
    /// Checks the name, that there is one owner per partition and no empty owner, and builds
    /// the scheme.
    pub fn new(spec: MapSpec) -> Result<Self, PartitionError> {
        validate_name(&spec.name)?;
        if spec.version == 0 {
            return Err(PartitionError::InvalidMap(
                "versions start at 1; 0 means no map".into(),
            ));
        }
        let partitioner = spec.scheme.build()?;
        let n = partitioner.partitions() as usize;
        if spec.owners.len() != n {
            return Err(PartitionError::InvalidMap(format!(
                "map {:?}: the {} scheme has {n} partitions but {} owners were given; give one \
                 owner per partition, in partition order",
                spec.name,
                spec.scheme.kind(),
                spec.owners.len()
            )));
        }
        if let Some(i) = spec.owners.iter().position(|o| o.trim().is_empty()) {
            return Err(PartitionError::InvalidMap(format!(
                "map {:?}: partition {i} has an empty owner",
                spec.name
            )));
        }
        Ok(Self { spec, partitioner })
    }

    /// Where `key` goes.
    pub fn route(&self, key: &str) -> Route<'_> {
        let partition = self.partitioner.partition(key);
        Route {
            partition,
            owner: &self.spec.owners[partition as usize],
            version: self.spec.version,
        }
    }

    /// The map as data.
    pub fn spec(&self) -> &MapSpec {
        &self.spec
    }

    /// The compiled scheme.
    pub fn partitioner(&self) -> &Partitioner {
        &self.partitioner
    }

    /// The map with partition `partition` owned by `owner`, one version later.
    pub fn reassigned(&self, partition: u32, owner: &str) -> Result<Self, PartitionError> {
        let mut spec = self.spec.clone();
        let slot = spec.owners.get_mut(partition as usize).ok_or_else(|| {
            PartitionError::InvalidMap(format!(
                "map {:?} has no partition {partition}",
                self.spec.name
            ))
        })?;
        *slot = owner.to_owned();
        spec.version += 1;
        Self::new(spec)
    }
}

/// Checks a map name: letters, digits, `.`, `_`, `-`, 1 to 128 characters.
pub fn validate_name(name: &str) -> Result<(), PartitionError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(PartitionError::InvalidMap(format!(
            "map name {name:?}: use 1 to {MAX_NAME_LEN} letters, digits, '.', '_' or '-'"
        )))
    }
}
