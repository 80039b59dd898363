//! [`Webhooks`]: endpoints, keys, sending, and what operators look at.

use std::time::Duration;

use derive_setters::Setters;
use onephase_core::{SharedClock, SystemClock};
use onephase_store::Store;
use std::sync::Arc;
use time::OffsetDateTime;

use crate::WebhookError;
use crate::destination::AddressPolicy;
use crate::endpoint::{
    DEFAULT_APP, DEFAULT_CONCURRENCY, Endpoint, EndpointPatch, EndpointSpec, StoredKey,
    VerifyingKey, parse_key, validate,
};
use crate::message::{DEFAULT_MAX_BODY, NewMessage, Sent, send_with_limit};
use crate::signature::Secret;
use crate::sql::{
    self, AttemptView, DeliveryView, EndpointRow, EndpointStats, MessageView, Replay, ms, to_i32,
};

/// How long an old key keeps signing after a rotation, by default: 24 hours.
pub const DEFAULT_ROTATION_OVERLAP: Duration = Duration::from_secs(86_400);

/// The most rows a list returns.
pub const MAX_LIST: u32 = 1000;

/// Endpoint management, sending and inspection over one store. Cheap to clone.
///
/// ```
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use onephase_store::Store;
/// use onephase_webhook::{EndpointSpec, NewMessage, Webhooks, destination::AddressPolicy};
///
/// let store = Store::connect("sqlite::memory:").await?;
/// store.migrate(&[onephase_outbox::migrations(), onephase_webhook::migrations()]).await?;
/// // Tests reach a local receiver; production keeps the default policy (public addresses).
/// let policy = AddressPolicy::default().allow("127.0.0.0/8")?;
/// let webhooks = Webhooks::new(store, policy);
/// let endpoint = webhooks
///     .create_endpoint(EndpointSpec::new("http://127.0.0.1:9/hooks"))
///     .await?;
/// let secret = &webhooks.verifying_keys(&endpoint.id).await?[0].key; // give this to the receiver
/// assert!(secret.starts_with("whsec_"));
/// let sent = webhooks.send(&NewMessage::new("invoice.paid", serde_json::json!({"id": 7}))).await?;
/// assert_eq!(sent.endpoints, 1);
/// # Ok(()) }
/// ```
#[derive(Clone, Setters, derive_more::Debug)]
#[setters(generate = false, prefix = "with_")]
pub struct Webhooks {
    store: Store,
    #[debug(skip)]
    policy: AddressPolicy,
    /// Reads time from this clock.
    #[setters(generate)]
    #[debug(skip)]
    clock: SharedClock,
    /// The largest message body accepted, in bytes (default 256 KiB).
    #[setters(generate)]
    #[debug(skip)]
    max_body: usize,
}

impl Webhooks {
    /// Over `store`; endpoint URLs must be permitted by `policy`.
    pub fn new(store: Store, policy: AddressPolicy) -> Self {
        Self {
            store,
            policy,
            clock: Arc::new(SystemClock),
            max_body: DEFAULT_MAX_BODY,
        }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }

    /// Creates an endpoint. Its URL must not resolve to internal addresses now (a name that
    /// does not resolve yet is accepted), and is checked again on every attempt.
    pub async fn create_endpoint(&self, spec: EndpointSpec) -> Result<Endpoint, WebhookError> {
        let app = spec.app.clone().unwrap_or_else(|| DEFAULT_APP.to_owned());
        let concurrency = spec.max_concurrency.unwrap_or(DEFAULT_CONCURRENCY);
        validate(
            &app,
            &spec.url,
            spec.description.as_deref(),
            spec.event_types.as_deref(),
            concurrency,
            spec.rate_limit,
        )?;
        let key = match &spec.key {
            Some(text) => {
                parse_key(text).map_err(|e| WebhookError::invalid(format!("key: {e}")))?;
                text.clone()
            }
            None => Secret::generate(&mut onephase_core::rand::rng()).to_string(),
        };
        self.check_destination(&spec.url).await?;
        let now_ms = ms(self.now());
        let row = EndpointRow {
            id: format!("ep_{}", uuid::Uuid::now_v7().simple()),
            app,
            url: spec.url,
            description: spec.description,
            event_types: encode_filter(spec.event_types.as_deref())?,
            ordered: spec.ordered,
            max_concurrency: to_i32(concurrency),
            rate_limit: spec.rate_limit.map(to_i32),
            keys: encode_keys(&[StoredKey {
                key,
                expires_at_ms: None,
            }])?,
            disabled_at_ms: None,
            disabled_reason: None,
            failing_since_ms: None,
            slow_until_ms: 0,
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
        };
        sql::insert_endpoint(&self.store, &row).await?;
        Ok(row.view(now_ms)?)
    }

    /// Refuses a URL whose host is internal now. A name that does not resolve yet is
    /// accepted: every attempt resolves it again and refuses internal addresses then.
    async fn check_destination(&self, url: &str) -> Result<(), WebhookError> {
        match self.policy.check(url).await {
            Ok(()) | Err(crate::destination::DestinationError::Unresolvable { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn row(&self, id: &str) -> Result<EndpointRow, WebhookError> {
        sql::endpoint(&self.store, id)
            .await?
            .ok_or_else(|| WebhookError::not_found("endpoint", id))
    }

    /// One endpoint.
    pub async fn endpoint(&self, id: &str) -> Result<Endpoint, WebhookError> {
        Ok(self.row(id).await?.view(ms(self.now()))?)
    }

    /// Endpoints by id, of one application or all, after `after` (paging).
    pub async fn endpoints(
        &self,
        app: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Endpoint>, WebhookError> {
        let now_ms = ms(self.now());
        sql::endpoints(&self.store, app, after, limit.clamp(1, MAX_LIST))
            .await?
            .iter()
            .map(|r| r.view(now_ms).map_err(WebhookError::from))
            .collect()
    }

    /// Reads, changes and writes an endpoint; fails with a conflict if it changed meanwhile.
    async fn modify(
        &self,
        id: &str,
        change: impl FnOnce(&mut EndpointRow, i64) -> Result<(), WebhookError>,
    ) -> Result<Endpoint, WebhookError> {
        let mut row = self.row(id).await?;
        let read_at = row.updated_at_ms;
        let now_ms = ms(self.now()).max(read_at + 1);
        change(&mut row, now_ms)?;
        row.updated_at_ms = now_ms;
        if !sql::update_endpoint(&self.store, &row, read_at).await? {
            return Err(WebhookError::Conflict(format!(
                "endpoint {id} changed while this change was made; read it again and retry"
            )));
        }
        Ok(row.view(now_ms)?)
    }

    /// Changes an endpoint's settings. Deliveries already pending keep going to the endpoint
    /// (at its new URL); a changed filter applies to messages sent from now on. `ordered` is
    /// fixed at creation: a patch may repeat it but not change it.
    pub async fn update_endpoint(
        &self,
        id: &str,
        patch: EndpointPatch,
    ) -> Result<Endpoint, WebhookError> {
        if let Some(url) = &patch.url {
            // Refuse early, before reading; validated in full below.
            crate::endpoint::validate(DEFAULT_APP, url, None, None, 1, None)?;
            self.check_destination(url).await?;
        }
        self.modify(id, |row, _| {
            if let Some(url) = patch.url {
                row.url = url;
            }
            if let Some(description) = patch.description {
                row.description = description;
            }
            let mut filter = row.filter()?;
            if let Some(types) = patch.event_types {
                filter = types;
            }
            if let Some(ordered) = patch.ordered.filter(|&o| o != row.ordered) {
                // Deliveries already pending or in flight could not be put in (or out of)
                // order after the fact, and each carries the mode it was sent under.
                return Err(WebhookError::invalid(format!(
                    "ordered is fixed when an endpoint is created, and endpoint {} was created \
                     with ordered = {}; create a new endpoint with ordered = {ordered} and delete \
                     this one once its deliveries have gone",
                    row.id, row.ordered
                )));
            }
            if let Some(c) = patch.max_concurrency {
                row.max_concurrency = to_i32(c);
            }
            if let Some(rate) = patch.rate_limit {
                row.rate_limit = rate.map(to_i32);
            }
            validate(
                &row.app,
                &row.url,
                row.description.as_deref(),
                filter.as_deref(),
                sql::to_u32(row.max_concurrency)?,
                row.rate_limit.map(sql::to_u32).transpose()?,
            )?;
            row.event_types = encode_filter(filter.as_deref())?;
            Ok(())
        })
        .await
    }

    /// Deletes an endpoint with its pending, delivered and dead deliveries. Its attempts stay
    /// in the history.
    pub async fn delete_endpoint(&self, id: &str) -> Result<(), WebhookError> {
        if sql::delete_endpoint(&self.store, id).await? {
            Ok(())
        } else {
            Err(WebhookError::not_found("endpoint", id))
        }
    }

    /// Enables an endpoint: it receives new messages, its pending deliveries resume, and its
    /// failure clock starts over. Dead deliveries stay dead until replayed.
    pub async fn enable(&self, id: &str) -> Result<Endpoint, WebhookError> {
        if !sql::set_enabled(&self.store, id, None, ms(self.now())).await? {
            return Err(WebhookError::not_found("endpoint", id));
        }
        self.endpoint(id).await
    }

    /// Disables an endpoint by hand: new messages skip it and its pending deliveries wait
    /// (they resume when it is enabled).
    pub async fn disable(&self, id: &str, reason: &str) -> Result<Endpoint, WebhookError> {
        if reason.len() > 1024 {
            return Err(WebhookError::invalid("reason is at most 1024 bytes"));
        }
        if !sql::set_enabled(&self.store, id, Some(reason), ms(self.now())).await? {
            return Err(WebhookError::not_found("endpoint", id));
        }
        self.endpoint(id).await
    }

    /// What the endpoint's receiver verifies with: each live key's `whsec_` secret or `whpk_`
    /// public key, newest last.
    pub async fn verifying_keys(&self, id: &str) -> Result<Vec<VerifyingKey>, WebhookError> {
        let row = self.row(id).await?;
        let now_ms = ms(self.now());
        row.stored_keys()?
            .iter()
            .filter(|k| k.live(now_ms))
            .map(|k| {
                k.verifying()
                    .map_err(|e| WebhookError::invalid(format!("stored key: {e}")))
            })
            .collect()
    }

    /// Starts signing with a new key (`key`, or a new `whsec_` secret). The keys in use keep
    /// signing beside it for `overlap`, so receivers can switch without a gap; then they
    /// expire. Returns what receivers need for the new key.
    pub async fn rotate_key(
        &self,
        id: &str,
        key: Option<String>,
        overlap: Duration,
    ) -> Result<VerifyingKey, WebhookError> {
        if overlap > Duration::from_secs(30 * 86_400) {
            return Err(WebhookError::invalid("overlap is at most 30 days"));
        }
        let key = match key {
            Some(text) => {
                parse_key(&text).map_err(|e| WebhookError::invalid(format!("key: {e}")))?;
                text
            }
            None => Secret::generate(&mut onephase_core::rand::rng()).to_string(),
        };
        let new = StoredKey {
            key,
            expires_at_ms: None,
        };
        let verifying = new
            .verifying()
            .map_err(|e| WebhookError::invalid(format!("key: {e}")))?;
        self.modify(id, |row, now_ms| {
            let until = now_ms + i64::try_from(overlap.as_millis()).unwrap_or(0);
            let mut keys: Vec<StoredKey> = row
                .stored_keys()?
                .into_iter()
                .filter(|k| k.live(now_ms))
                .map(|mut k| {
                    k.expires_at_ms = Some(k.expires_at_ms.map_or(until, |at| at.min(until)));
                    k
                })
                .collect();
            if keys.iter().any(|k| k.key == new.key) {
                return Err(WebhookError::invalid("that key is already in use"));
            }
            if keys.len() >= 8 {
                return Err(WebhookError::invalid(
                    "at most 8 keys at once; wait for an overlap to end or use a shorter one",
                ));
            }
            keys.push(new);
            row.keys = encode_keys(&keys)?;
            Ok(())
        })
        .await?;
        Ok(verifying)
    }

    /// Sends a message in a transaction of its own (see [`send`](crate::send) to send in
    /// yours).
    pub async fn send(&self, message: &NewMessage) -> Result<Sent, WebhookError> {
        let now = self.now();
        match self.store.db() {
            onephase_store::Db::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let sent = send_with_limit(&mut tx, message, now, self.max_body).await?;
                tx.commit().await?;
                crate::dispatcher::wake();
                Ok(sent)
            }
            onephase_store::Db::Sqlite(s) => {
                let mut tx = s.writer().begin().await?;
                let sent = send_with_limit(&mut tx, message, now, self.max_body).await?;
                tx.commit().await?;
                crate::dispatcher::wake();
                Ok(sent)
            }
        }
    }

    /// A message, with where it stands at each endpoint.
    pub async fn message(&self, id: &str) -> Result<MessageView, WebhookError> {
        sql::message(&self.store, id)
            .await?
            .ok_or_else(|| WebhookError::not_found("message", id))
    }

    /// Messages newest first, of one application or all, before `before` (paging).
    pub async fn messages(
        &self,
        app: Option<&str>,
        before: Option<&str>,
        limit: u32,
    ) -> Result<Vec<MessageView>, WebhookError> {
        Ok(sql::messages(&self.store, app, before, limit.clamp(1, MAX_LIST)).await?)
    }

    /// Attempts newest first, of a message and/or an endpoint, before attempt `before`.
    pub async fn attempts(
        &self,
        message: Option<&str>,
        endpoint: Option<&str>,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AttemptView>, WebhookError> {
        Ok(sql::attempts(
            &self.store,
            message,
            endpoint,
            before,
            limit.clamp(1, MAX_LIST),
        )
        .await?)
    }

    /// Deliveries that will not be attempted again (exhausted, or dead-lettered when their
    /// endpoint was disabled), newest first.
    pub async fn dead_letters(
        &self,
        endpoint: Option<&str>,
        limit: u32,
    ) -> Result<Vec<DeliveryView>, WebhookError> {
        Ok(sql::dead_letters(&self.store, endpoint, limit.clamp(1, MAX_LIST)).await?)
    }

    /// Delivers again: one message (to every endpoint, or one), every dead delivery of an
    /// endpoint, or everything since a time. Only enabled endpoints are replayed to; a named
    /// endpoint that is disabled is refused. Returns how many deliveries are pending again.
    pub async fn replay(&self, replay: &Replay) -> Result<u64, WebhookError> {
        if let Some(id) = &replay.message_id {
            self.message(id).await?;
        }
        if let Some(id) = &replay.endpoint_id
            && !self.endpoint(id).await?.enabled
        {
            return Err(WebhookError::Conflict(format!(
                "endpoint {id} is disabled; enable it before replaying to it"
            )));
        }
        if replay.message_id.is_none() && replay.endpoint_id.is_none() && replay.since.is_none() {
            return Err(WebhookError::invalid(
                "name a message_id, an endpoint_id or a since time to replay",
            ));
        }
        let replayed = sql::replay(&self.store, replay, ms(self.now())).await?;
        if replayed > 0 {
            crate::dispatcher::wake();
        }
        Ok(replayed)
    }

    /// Per endpoint: attempts, success rate and latency over the last `window`, and
    /// deliveries pending and dead now.
    pub async fn stats(&self, window: Duration) -> Result<Vec<EndpointStats>, WebhookError> {
        let since = self.now() - window;
        Ok(sql::stats(&self.store, ms(since)).await?)
    }
}

fn encode_filter(types: Option<&[String]>) -> Result<Option<String>, WebhookError> {
    types
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| WebhookError::invalid(format!("event_types: {e}")))
}

fn encode_keys(keys: &[StoredKey]) -> Result<String, WebhookError> {
    serde_json::to_string(keys).map_err(|e| WebhookError::invalid(format!("keys: {e}")))
}
