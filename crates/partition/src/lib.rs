//! Partitioning you can measure before you choose.
//!
//! Choosing a partitioning scheme is hard to undo for two reasons: you choose before you know
//! how your keys are distributed, and moving data later means moving it while it is written.
//! This crate answers the first: [`analyze()`] runs your own keys through every scheme and
//! reports skew, hot keys, where new writes go and what growing costs. The schemes themselves
//! ([`Scheme`], compiled into a [`Partitioner`]) and the versioned [`PartitionMap`] that sends a
//! key to its owner are what a router uses at run time.
//!
//! ```
//! use onephase_partition::{AnalyzeOptions, Scheme, analyze};
//!
//! // A sequence id: every new key is larger than the last.
//! let keys: Vec<String> = (0..10_000).map(|i| i.to_string()).collect();
//! let options = AnalyzeOptions { partitions: vec![8], ..AnalyzeOptions::default() };
//! let analysis = analyze(&keys, &options)?;
//! assert!(analysis.monotonic);
//! let by = |kind: &str| analysis.candidates.iter().find(|c| c.scheme.kind() == kind).unwrap();
//! // Ranges chosen from the older keys send every new write to the last range...
//! assert_eq!(by("range").new_writes_max_share, 1.0);
//! // ...a hash spreads them, and jump moves about 1/9 of the keys when growing to 9.
//! assert!(by("jump").new_writes_max_share < 0.2);
//! assert!(by("jump").moved_on_growth < 0.15 && by("modulo").moved_on_growth > 0.8);
//! # Ok::<(), onephase_partition::PartitionError>(())
//! ```
//!
//! | module | what |
//! |---|---|
//! | [`scheme`] | modulo, jump, rendezvous, ring, range: data and compiled |
//! | [`map`] | key -> partition -> owner, versioned |
//! | [`analyze`](mod@analyze) | skew, new writes, growth per candidate |
//! | [`sketch`] | the space-saving heavy-hitters sketch |
//! | [`salt`] | a hot key split into sub-keys |
//! | [`report`] | the analysis as text, with histograms |

pub mod analyze;
mod error;
mod key;
pub mod map;
#[cfg(feature = "online")]
pub mod online;
pub mod report;
pub mod salt;
pub mod scheme;
pub mod sketch;
#[cfg(feature = "store")]
pub mod store;

pub use analyze::{Analysis, AnalyzeOptions, Candidate, HotKey, analyze};
pub use error::PartitionError;
pub use key::{as_integer, key_hash, key_order};
pub use map::{MapSpec, PartitionMap, Route};
pub use salt::Salted;
pub use scheme::{Partitioner, Scheme, jump};
pub use sketch::{HeavyHitter, SpaceSaving};
