//! Signing and verifying per the [Standard Webhooks] specification.
//!
//! A message is signed over `"{webhook-id}.{webhook-timestamp}.{body}"`. The
//! `webhook-signature` header holds one or more space-separated `version,base64` entries:
//! `v1` is HMAC-SHA256 with a shared secret (`whsec_` + base64), `v1a` is ed25519 with a
//! private key the sender keeps (`whsk_` + base64 of the 32-byte seed) and a public key the
//! receiver holds (`whpk_` + base64). Several entries let a sender rotate keys: during the
//! overlap it signs with the old and the new key, and a receiver holding either accepts.
//!
//! [Standard Webhooks]: https://www.standardwebhooks.com/
//!
//! ```
//! use onephase_webhook::signature::{Secret, Signer, Verifier};
//!
//! let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")?;
//! let signer = Signer::new(vec![secret.clone().into()]);
//! let header = signer.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#);
//! assert_eq!(header, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
//!
//! let verifier = Verifier::new(vec![secret.into()]);
//! verifier.verify_at(
//!     "msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", &header,
//!     br#"{"test": 2432232314}"#, 1614265330,
//! )?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use derive_setters::Setters;
use ed25519_dalek::{Signer as _, Verifier as _};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The header carrying the message id.
pub const WEBHOOK_ID: &str = "webhook-id";
/// The header carrying the Unix timestamp in seconds.
pub const WEBHOOK_TIMESTAMP: &str = "webhook-timestamp";
/// The header carrying the signatures.
pub const WEBHOOK_SIGNATURE: &str = "webhook-signature";

/// The default tolerance between the sender's timestamp and the receiver's clock: 5 minutes.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// A key could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid webhook key: {0}")]
pub struct KeyError(String);

impl KeyError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl onephase_core::Classify for KeyError {
    fn kind(&self) -> onephase_core::ErrorKind {
        onephase_core::ErrorKind::InvalidInput
    }
}

fn decode(text: &str, prefix: &str) -> Result<Vec<u8>, KeyError> {
    let body = text.strip_prefix(prefix).unwrap_or(text);
    BASE64
        .decode(body)
        .map_err(|e| KeyError(format!("{prefix}... is not base64: {e}")))
}

/// A `v1` shared secret (`whsec_` + base64 of 24 to 64 random bytes).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Reads `whsec_<base64>` (the prefix is optional).
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let bytes = decode(text.trim(), "whsec_")?;
        if !(24..=64).contains(&bytes.len()) {
            return Err(KeyError(format!(
                "a whsec_ secret holds 24 to 64 bytes, this one {}",
                bytes.len()
            )));
        }
        Ok(Self(bytes))
    }

    /// A new random 32-byte secret.
    pub fn generate(rng: &mut impl onephase_core::rand::Rng) -> Self {
        let mut bytes = vec![0_u8; 32];
        rng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes keys of any length; the length was checked when the secret was read.
        <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"))
    }
}

impl fmt::Display for Secret {
    /// The `whsec_` form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "whsec_{}", BASE64.encode(&self.0))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(whsec_…)")
    }
}

/// A `v1a` private key (`whsk_` + base64 of the 32-byte ed25519 seed).
#[derive(Clone)]
pub struct SigningKey(ed25519_dalek::SigningKey);

impl SigningKey {
    /// Reads `whsk_<base64>` (the prefix is optional).
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let bytes = decode(text.trim(), "whsk_")?;
        let seed: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            KeyError(format!(
                "a whsk_ key holds 32 bytes, this one {}",
                bytes.len()
            ))
        })?;
        Ok(Self(ed25519_dalek::SigningKey::from_bytes(&seed)))
    }

    /// A new random key.
    pub fn generate(rng: &mut impl onephase_core::rand::Rng) -> Self {
        let mut seed = [0_u8; 32];
        rng.fill_bytes(&mut seed);
        Self(ed25519_dalek::SigningKey::from_bytes(&seed))
    }

    /// The public key receivers verify with.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }
}

impl fmt::Display for SigningKey {
    /// The `whsk_` form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "whsk_{}", BASE64.encode(self.0.to_bytes()))
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(whsk_…)")
    }
}

/// A `v1a` public key (`whpk_` + base64 of the 32-byte key).
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(ed25519_dalek::VerifyingKey);

impl PublicKey {
    /// Reads `whpk_<base64>` (the prefix is optional).
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let bytes = decode(text.trim(), "whpk_")?;
        let raw: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            KeyError(format!(
                "a whpk_ key holds 32 bytes, this one {}",
                bytes.len()
            ))
        })?;
        ed25519_dalek::VerifyingKey::from_bytes(&raw)
            .map(Self)
            .map_err(|e| KeyError(format!("not an ed25519 public key: {e}")))
    }
}

impl fmt::Display for PublicKey {
    /// The `whpk_` form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "whpk_{}", BASE64.encode(self.0.as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// A key a sender signs with.
#[derive(Debug, Clone)]
pub enum SignKey {
    /// `v1`.
    Secret(Secret),
    /// `v1a`.
    Private(SigningKey),
}

impl From<Secret> for SignKey {
    fn from(s: Secret) -> Self {
        SignKey::Secret(s)
    }
}

impl From<SigningKey> for SignKey {
    fn from(k: SigningKey) -> Self {
        SignKey::Private(k)
    }
}

/// A key a receiver verifies with.
#[derive(Debug, Clone)]
pub enum VerifyKey {
    /// `v1`.
    Secret(Secret),
    /// `v1a`.
    Public(PublicKey),
}

impl VerifyKey {
    /// Reads `whsec_...` (v1) or `whpk_...` (v1a).
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        if text.trim().starts_with("whpk_") {
            PublicKey::parse(text).map(Self::Public)
        } else {
            Secret::parse(text).map(Self::Secret)
        }
    }
}

impl From<Secret> for VerifyKey {
    fn from(s: Secret) -> Self {
        VerifyKey::Secret(s)
    }
}

impl From<PublicKey> for VerifyKey {
    fn from(k: PublicKey) -> Self {
        VerifyKey::Public(k)
    }
}

fn signed_content(id: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
    let mut content = Vec::with_capacity(id.len() + body.len() + 24);
    content.extend_from_slice(id.as_bytes());
    content.push(b'.');
    content.extend_from_slice(timestamp.to_string().as_bytes());
    content.push(b'.');
    content.extend_from_slice(body);
    content
}

/// Signs with one or more keys (more than one while rotating).
#[derive(Debug, Clone)]
pub struct Signer {
    keys: Vec<SignKey>,
}

impl Signer {
    /// A signer over `keys`, each of which adds an entry to the header.
    pub fn new(keys: Vec<SignKey>) -> Self {
        Self { keys }
    }

    /// The `webhook-signature` header value for message `id` sent at `timestamp` (Unix
    /// seconds) with `body`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let content = signed_content(id, timestamp, body);
        self.keys
            .iter()
            .map(|key| match key {
                SignKey::Secret(secret) => {
                    let mut mac = secret.mac();
                    mac.update(&content);
                    format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
                }
                SignKey::Private(key) => {
                    format!("v1a,{}", BASE64.encode(key.0.sign(&content).to_bytes()))
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Why a webhook was refused. Each says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// A required header is absent (or not text).
    #[error("the {0} header is missing")]
    MissingHeader(&'static str),
    /// `webhook-id` is empty, too long, or not printable ASCII.
    #[error("the webhook-id header must be 1 to 255 printable ASCII characters")]
    InvalidId,
    /// `webhook-timestamp` is not a Unix time in seconds.
    #[error("the webhook-timestamp header {0:?} is not a Unix time in seconds")]
    InvalidTimestamp(String),
    /// The timestamp is too far from the receiver's clock (replayed, or a skewed clock).
    #[error(
        "the webhook-timestamp is {seconds} s {direction} this receiver's clock, beyond the tolerance of {tolerance} s; a replayed message, or a sender's clock that is off"
    )]
    StaleTimestamp {
        /// How far off.
        seconds: i64,
        /// `behind` or `ahead of`.
        direction: &'static str,
        /// The tolerance in seconds.
        tolerance: u64,
    },
    /// An entry of `webhook-signature` has a known version but is not base64 of the right size.
    #[error(
        "webhook-signature entry {0:?} is malformed: expected `v1,<base64 of 32 bytes>` or `v1a,<base64 of 64 bytes>`"
    )]
    MalformedSignature(String),
    /// No entry verifies with any key held.
    #[error(
        "no signature in webhook-signature matches this receiver's keys (wrong secret, or the body was changed)"
    )]
    NoValidSignature,
}

impl onephase_core::Classify for VerifyError {
    fn kind(&self) -> onephase_core::ErrorKind {
        match self {
            VerifyError::StaleTimestamp { .. } | VerifyError::NoValidSignature => {
                onephase_core::ErrorKind::Unauthenticated
            }
            _ => onephase_core::ErrorKind::InvalidInput,
        }
    }
}

/// Verifies signatures with the keys a receiver holds (more than one while a sender rotates).
#[derive(Debug, Clone, Setters)]
#[setters(generate = false, prefix = "with_")]
pub struct Verifier {
    keys: Vec<VerifyKey>,
    /// With another timestamp tolerance.
    #[setters(generate)]
    tolerance: Duration,
}

impl Verifier {
    /// A verifier over `keys` with the default tolerance of 5 minutes.
    pub fn new(keys: Vec<VerifyKey>) -> Self {
        Self {
            keys,
            tolerance: DEFAULT_TOLERANCE,
        }
    }

    /// Verifies the three header values and the raw body against the receiver's clock `now`
    /// (Unix seconds); returns the message's timestamp.
    pub fn verify_at(
        &self,
        id: &str,
        timestamp: &str,
        signature: &str,
        body: &[u8],
        now: i64,
    ) -> Result<i64, VerifyError> {
        if id.is_empty() || id.len() > 255 || !id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(VerifyError::InvalidId);
        }
        let sent: i64 = timestamp
            .trim()
            .parse()
            .map_err(|_| VerifyError::InvalidTimestamp(timestamp.chars().take(40).collect()))?;
        let tolerance = i64::try_from(self.tolerance.as_secs()).unwrap_or(i64::MAX);
        let off = now.saturating_sub(sent);
        if off.abs() > tolerance {
            return Err(VerifyError::StaleTimestamp {
                seconds: off.abs(),
                direction: if off > 0 { "behind" } else { "ahead of" },
                tolerance: self.tolerance.as_secs(),
            });
        }
        let content = signed_content(id, sent, body);
        let mut malformed = None;
        for entry in signature.split(' ').filter(|e| !e.is_empty()) {
            let Some((version, encoded)) = entry.split_once(',') else {
                continue;
            };
            let expected_len = match version {
                "v1" => 32,
                "v1a" => 64,
                _ => continue, // a version this receiver does not know
            };
            let Ok(raw) = BASE64.decode(encoded).map_err(drop).and_then(|raw| {
                if raw.len() == expected_len {
                    Ok(raw)
                } else {
                    Err(())
                }
            }) else {
                malformed.get_or_insert_with(|| entry.chars().take(60).collect::<String>());
                continue;
            };
            for key in &self.keys {
                let ok = match (version, key) {
                    ("v1", VerifyKey::Secret(secret)) => {
                        let mut mac = secret.mac();
                        mac.update(&content);
                        // Constant time.
                        mac.verify_slice(&raw).is_ok()
                    }
                    ("v1a", VerifyKey::Public(public)) => {
                        ed25519_dalek::Signature::from_slice(&raw)
                            .is_ok_and(|sig| public.0.verify(&content, &sig).is_ok())
                    }
                    _ => false,
                };
                if ok {
                    return Ok(sent);
                }
            }
        }
        Err(match malformed {
            Some(entry) => VerifyError::MalformedSignature(entry),
            None => VerifyError::NoValidSignature,
        })
    }
}
