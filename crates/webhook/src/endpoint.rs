//! Endpoints: where an application's messages go, which of them, how fast, and signed with
//! which keys.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::WebhookError;
use crate::signature::{KeyError, Secret, SignKey, Signer, SigningKey};

/// The application an endpoint or message belongs to when none is named.
pub const DEFAULT_APP: &str = "default";

/// Concurrency when an endpoint does not say.
pub const DEFAULT_CONCURRENCY: u32 = 10;

/// The most attempts in flight one endpoint may ask for.
pub const MAX_CONCURRENCY: u32 = 1000;

/// The longest URL an endpoint may have.
pub const MAX_URL: usize = 2048;

/// A new endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EndpointSpec {
    /// The application whose messages it receives (default `default`).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(pattern = r"^[A-Za-z0-9_.-]{1,128}$"))]
    pub app: Option<String>,
    /// Where to POST (http or https).
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 1, max_length = 2048, pattern = r"^https?://[^\s/?#@]+")
    )]
    pub url: String,
    /// Free text for operators.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 1024))]
    pub description: Option<String>,
    /// Only these event types; absent for every type.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(min_items = 1, max_items = 256))]
    pub event_types: Option<Vec<String>>,
    /// Deliver messages with the same partition key one after another.
    #[serde(default)]
    pub ordered: bool,
    /// Attempts in flight at once (default 10, at most 1000).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1000))]
    pub max_concurrency: Option<u32>,
    /// Attempts per second, if limited.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 100000))]
    pub rate_limit: Option<u32>,
    /// The signing key: `whsec_...` (v1) or `whsk_...` (v1a); a new `whsec_` secret if absent.
    #[serde(default)]
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = r"^(whsec_|whsk_)[A-Za-z0-9+/=]+$")
    )]
    pub key: Option<String>,
}

impl EndpointSpec {
    /// An endpoint of the default application at `url`, for every event type.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            app: None,
            url: url.into(),
            description: None,
            event_types: None,
            ordered: false,
            max_concurrency: None,
            rate_limit: None,
            key: None,
        }
    }
}

/// Changes to an endpoint; absent fields stay as they are. `null` clears the optional ones
/// (`description`, `event_types`, `rate_limit`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EndpointPatch {
    /// New URL.
    #[serde(default)]
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 1, max_length = 2048, pattern = r"^https?://[^\s/?#@]+")
    )]
    pub url: Option<String>,
    /// New description (`null` clears).
    #[serde(default, with = "double_option")]
    #[cfg_attr(feature = "openapi", schema(max_length = 1024))]
    pub description: Option<Option<String>>,
    /// New filter (`null`: every type).
    #[serde(default, with = "double_option")]
    #[cfg_attr(feature = "openapi", schema(min_items = 1, max_items = 256))]
    pub event_types: Option<Option<Vec<String>>>,
    /// The ordering mode, which is fixed when the endpoint is created: the same value is
    /// accepted, a different one is refused (invalid input) and changes nothing.
    #[serde(default)]
    pub ordered: Option<bool>,
    /// New concurrency.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1000))]
    pub max_concurrency: Option<u32>,
    /// New rate limit (`null`: none).
    #[serde(default, with = "double_option")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 100000))]
    pub rate_limit: Option<Option<u32>>,
}

/// Tells an absent field (outer `None`) from an explicit `null` (`Some(None)`).
mod double_option {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(super) fn deserialize<'de, T, D>(d: D) -> Result<Option<Option<T>>, D::Error>
    where
        T: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        Option::<T>::deserialize(d).map(Some)
    }

    pub(super) fn serialize<T: Serialize, S: Serializer>(
        v: &Option<Option<T>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(inner) => inner.serialize(s),
            None => s.serialize_none(),
        }
    }
}

/// An endpoint as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Endpoint {
    /// `ep_...`.
    pub id: String,
    /// Its application.
    pub app: String,
    /// Where messages go.
    pub url: String,
    /// Free text.
    pub description: Option<String>,
    /// The event types it receives; `None` for all.
    pub event_types: Option<Vec<String>>,
    /// Whether same-key messages go one after another.
    pub ordered: bool,
    /// Attempts in flight at once.
    pub max_concurrency: u32,
    /// Attempts per second, if limited.
    pub rate_limit: Option<u32>,
    /// Whether messages are delivered to it.
    pub enabled: bool,
    /// Why it was disabled.
    pub disabled_reason: Option<String>,
    /// When it was disabled.
    #[serde(with = "time::serde::rfc3339::option")]
    pub disabled_at: Option<OffsetDateTime>,
    /// Since when every attempt failed, if the last one did.
    #[serde(with = "time::serde::rfc3339::option")]
    pub failing_since: Option<OffsetDateTime>,
    /// Until when it is slowed down after a 429 or 5xx overload answer.
    #[serde(with = "time::serde::rfc3339::option")]
    pub slowed_until: Option<OffsetDateTime>,
    /// Its signing keys, without their secret parts.
    pub keys: Vec<KeyInfo>,
    /// Created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last changed.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl Endpoint {
    /// Whether it receives messages of `event_type`.
    pub fn accepts(&self, event_type: &str) -> bool {
        accepts(self.event_types.as_deref(), event_type)
    }
}

pub(crate) fn accepts(filter: Option<&[String]>, event_type: &str) -> bool {
    filter.is_none_or(|types| types.iter().any(|t| t == event_type))
}

/// A signing key, without its secret part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyInfo {
    /// `v1` (HMAC-SHA256) or `v1a` (ed25519).
    pub scheme: &'static str,
    /// When it stops being used, while a newer key takes over.
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
}

/// What a receiver needs to verify one signing key: the `whsec_` secret, or for `v1a` the
/// `whpk_` public key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VerifyingKey {
    /// `v1` or `v1a`.
    pub scheme: &'static str,
    /// `whsec_...` or `whpk_...`.
    pub key: String,
    /// When the sender stops signing with it.
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
}

/// A key as stored in the endpoint's `keys` column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredKey {
    pub key: String,
    pub expires_at_ms: Option<i64>,
}

impl StoredKey {
    pub(crate) fn live(&self, now_ms: i64) -> bool {
        self.expires_at_ms.is_none_or(|at| at > now_ms)
    }

    fn sign_key(&self) -> Result<SignKey, KeyError> {
        parse_key(&self.key)
    }

    pub(crate) fn info(&self) -> Result<KeyInfo, sqlx::Error> {
        Ok(KeyInfo {
            scheme: scheme_of(&self.key),
            expires_at: self.expires_at_ms.map(crate::sql::from_ms).transpose()?,
        })
    }

    pub(crate) fn verifying(&self) -> Result<VerifyingKey, KeyError> {
        let key = match self.sign_key()? {
            SignKey::Secret(s) => s.to_string(),
            SignKey::Private(k) => k.public_key().to_string(),
        };
        Ok(VerifyingKey {
            scheme: scheme_of(&self.key),
            key,
            expires_at: self
                .expires_at_ms
                .map(crate::sql::from_ms)
                .transpose()
                .map_err(|_| KeyError::new("a stored key's expiry is out of range"))?,
        })
    }
}

fn scheme_of(key: &str) -> &'static str {
    if key.starts_with("whsk_") {
        "v1a"
    } else {
        "v1"
    }
}

/// Reads a signing key: `whsec_...` (v1) or `whsk_...` (v1a).
pub fn parse_key(text: &str) -> Result<SignKey, KeyError> {
    if text.starts_with("whsk_") {
        SigningKey::parse(text).map(SignKey::Private)
    } else if text.starts_with("whsec_") {
        Secret::parse(text).map(SignKey::Secret)
    } else {
        Secret::parse(&format!("whsec_{text}"))
            .map_err(|_| {
                KeyError::new("a signing key is whsec_<base64> (v1) or whsk_<base64> (v1a)")
            })
            .map(SignKey::Secret)
    }
}

/// The signer over the keys live at `now_ms`.
pub(crate) fn signer(keys: &[StoredKey], now_ms: i64) -> Result<Signer, KeyError> {
    let live = keys
        .iter()
        .filter(|k| k.live(now_ms))
        .map(StoredKey::sign_key)
        .collect::<Result<Vec<_>, _>>()?;
    if live.is_empty() {
        return Err(KeyError::new("the endpoint has no live signing key"));
    }
    Ok(Signer::new(live))
}

/// Checks the parts of an endpoint that need no network.
pub(crate) fn validate(
    app: &str,
    url: &str,
    description: Option<&str>,
    event_types: Option<&[String]>,
    max_concurrency: u32,
    rate_limit: Option<u32>,
) -> Result<(), WebhookError> {
    validate_app(app)?;
    if url.len() > MAX_URL {
        return Err(WebhookError::invalid(format!(
            "url is {} bytes; at most {MAX_URL}",
            url.len()
        )));
    }
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| WebhookError::invalid(format!("url {url:?} is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(WebhookError::invalid(format!(
            "url {url:?} must be http:// or https:// with a host"
        )));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(WebhookError::invalid(
            "url must not carry credentials; sign with the endpoint's key instead",
        ));
    }
    if description.is_some_and(|d| d.len() > 1024) {
        return Err(WebhookError::invalid("description is at most 1024 bytes"));
    }
    if let Some(types) = event_types {
        if types.is_empty() {
            return Err(WebhookError::invalid(
                "event_types is a non-empty list; leave it out (or null) for every type",
            ));
        }
        if types.len() > 256 {
            return Err(WebhookError::invalid("event_types holds at most 256 types"));
        }
        for t in types {
            validate_event_type(t)?;
        }
    }
    if !(1..=MAX_CONCURRENCY).contains(&max_concurrency) {
        return Err(WebhookError::invalid(format!(
            "max_concurrency is 1 to {MAX_CONCURRENCY}, not {max_concurrency}"
        )));
    }
    if rate_limit.is_some_and(|r| !(1..=100_000).contains(&r)) {
        return Err(WebhookError::invalid(
            "rate_limit is 1 to 100000 attempts per second; leave it out for no limit",
        ));
    }
    Ok(())
}

/// Applications are short names: letters, digits, `_`, `-`, `.`.
pub(crate) fn validate_app(app: &str) -> Result<(), WebhookError> {
    if app.is_empty()
        || app.len() > 128
        || !app
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return Err(WebhookError::invalid(format!(
            "app {app:?} must be 1 to 128 letters, digits, '_', '-' or '.'"
        )));
    }
    Ok(())
}

/// Event types are like `invoice.paid`: 1 to 256 printable ASCII characters without spaces.
pub(crate) fn validate_event_type(t: &str) -> Result<(), WebhookError> {
    if t.is_empty() || t.len() > 256 || !t.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(WebhookError::invalid(format!(
            "event type {t:?} must be 1 to 256 printable ASCII characters without spaces"
        )));
    }
    Ok(())
}
