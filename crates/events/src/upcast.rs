//! Schema evolution: stored events stay as written; readers see the current shape.
//!
//! An event type's data changes over the years (a field renamed, a unit changed, two fields
//! merged). Stored events are never rewritten; instead each type has a current schema version,
//! and one upcaster per older version turns data of version `n` into version `n + 1`. On read,
//! the chain runs from the stored version to the current one (v1 -> v2 -> v3). A missing step,
//! a stored version newer than the reader knows, or (with [`Upcasters::strict`]) a type the
//! reader has never heard of is an error that names the type, the version and the position:
//! never a silent skip, because a projection that skips an event it does not understand is a
//! read model that is silently wrong.
//!
//! ```
//! use onephase_events::Upcasters;
//! use serde_json::json;
//!
//! let upcasters = Upcasters::new()
//!     // v1 had "name"; v2 split it.
//!     .step("CustomerRegistered", 1, |mut data| {
//!         let name = data["name"].take();
//!         data["full_name"] = name;
//!         Ok(data)
//!     })
//!     // v3 added a country with a default.
//!     .step("CustomerRegistered", 2, |mut data| {
//!         data["country"] = json!("unknown");
//!         Ok(data)
//!     });
//! assert_eq!(upcasters.current("CustomerRegistered"), Some(3));
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use onephase_core::json::RawJson;

use crate::{EventsError, RecordedEvent};

/// One step: data of version `n` to data of version `n + 1`, or why it cannot be.
pub type Upcaster =
    Arc<dyn Fn(serde_json::Value) -> Result<serde_json::Value, String> + Send + Sync>;

#[derive(Clone, Default)]
struct Schema {
    current: u32,
    steps: HashMap<u32, Upcaster>,
}

/// The schema versions and upcasters a reader knows; see the [module documentation](self).
#[derive(Clone, Default, derive_more::Debug)]
pub struct Upcasters {
    #[debug("{} types", types.len())]
    types: HashMap<String, Schema>,
    strict: bool,
}

impl Upcasters {
    /// No types known; events of unknown types pass through as stored.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes an event of a type never registered an error instead of passing it through.
    pub fn strict(mut self) -> Self {
        self.strict = true;
        self
    }

    /// Declares `event_type` at `current` schema version (new events of the type are written
    /// at it). Steps declared with [`step`](Self::step) raise it as needed.
    pub fn register(mut self, event_type: impl Into<String>, current: u32) -> Self {
        let schema = self.types.entry(event_type.into()).or_default();
        schema.current = schema.current.max(current);
        self
    }

    /// Declares how data of `event_type` at version `from` becomes version `from + 1`.
    pub fn step(
        mut self,
        event_type: impl Into<String>,
        from: u32,
        upcaster: impl Fn(serde_json::Value) -> Result<serde_json::Value, String>
        + Send
        + Sync
        + 'static,
    ) -> Self {
        let schema = self.types.entry(event_type.into()).or_default();
        schema.current = schema.current.max(from.saturating_add(1));
        schema.steps.insert(from, Arc::new(upcaster));
        self
    }

    /// The current schema version of `event_type`, if registered.
    pub fn current(&self, event_type: &str) -> Option<u32> {
        self.types.get(event_type).map(|s| s.current)
    }

    /// Brings `event` to its type's current schema version, in place.
    pub fn upcast(&self, event: &mut RecordedEvent) -> Result<(), EventsError> {
        let Some(schema) = self.types.get(&event.event_type) else {
            if self.strict {
                return Err(EventsError::UnknownType {
                    event_type: event.event_type.clone(),
                    version: event.schema_version,
                    position: event.position,
                });
            }
            return Ok(());
        };
        let unknown = |problem: String| EventsError::UnknownVersion {
            event_type: event.event_type.clone(),
            version: event.schema_version,
            position: event.position,
            problem,
        };
        if event.schema_version > schema.current {
            return Err(unknown(format!("knows only up to {}", schema.current)));
        }
        if event.schema_version == schema.current {
            return Ok(());
        }
        let mut version = event.schema_version;
        let mut data = event.data.to_value();
        while version < schema.current {
            let step = schema
                .steps
                .get(&version)
                .ok_or_else(|| unknown(format!("has no upcaster from version {version}")))?;
            data = step(data).map_err(|reason| EventsError::UpcastFailed {
                event_type: event.event_type.clone(),
                from: version,
                position: event.position,
                reason,
            })?;
            version += 1;
        }
        event.data = RawJson::from(data);
        event.schema_version = version;
        Ok(())
    }
}
