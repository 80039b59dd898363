//! Crypto-shredding: personal fields sealed with a key per data subject.
//!
//! Events are immutable, and the right to erasure says personal data must go. The way to keep
//! both is to never store the personal data in the clear: each marked top-level field of an
//! event's data is encrypted (XChaCha20-Poly1305, a random 192-bit nonce, the event id and
//! field name as associated data, so a sealed value cannot be moved to another event) with a
//! key that belongs to the subject and is stored in its own table. Forgetting the subject
//! deletes the key; from then on those fields read as `null` everywhere (streams, projections
//! rebuilt from the events, `explain`), and the ciphertext left in the events is noise.
//!
//! What this does not reach is listed in `docs/events.md`: copies the application made of the
//! plaintext itself (its own read models, logs), and backups or WAL archives taken while the
//! key still existed.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use rand::Rng as _;
use uuid::Uuid;

use crate::EventsError;

/// The prefix of a sealed value (a JSON string in the stored data).
const SEALED: &str = "onephase-sealed:v1:";

/// A subject's key, as stored (base64 of 32 bytes).
pub(crate) fn new_key() -> String {
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    B64.encode(key)
}

fn cipher(key: &str) -> Result<XChaCha20Poly1305, EventsError> {
    let bytes = B64
        .decode(key)
        .map_err(|e| EventsError::corrupt("subject key", e))?;
    XChaCha20Poly1305::new_from_slice(&bytes).map_err(|e| EventsError::corrupt("subject key", e))
}

fn aad(event: Uuid, field: &str) -> Vec<u8> {
    let mut aad = event.as_bytes().to_vec();
    aad.extend_from_slice(field.as_bytes());
    aad
}

/// `data` with each of `fields` (top-level members) replaced by its sealed form. Fails, naming
/// the field, if the data is not an object or lacks one.
pub(crate) fn seal(
    data: &str,
    fields: &[String],
    key: &str,
    event: Uuid,
) -> Result<String, EventsError> {
    let raw = onephase_core::json::parse_raw(data)
        .map_err(|e| EventsError::invalid("data", format!("not JSON: {e}")))?;
    let members = onephase_core::json::members(&raw).ok_or_else(|| {
        EventsError::invalid(
            "personal",
            "personal fields are top-level members, and this event's data is not a JSON object",
        )
    })?;
    for field in fields {
        if !members.iter().any(|(k, _)| k == field) {
            return Err(EventsError::invalid(
                "personal",
                format!("field {field:?} is marked personal but the data has no such member"),
            ));
        }
    }
    let cipher = cipher(key)?;
    let mut sealed = Vec::with_capacity(members.len());
    for (name, value) in &members {
        if fields.contains(name) {
            let mut nonce = [0u8; 24];
            rand::rng().fill_bytes(&mut nonce);
            let payload = Payload {
                msg: value.get().as_bytes(),
                aad: &aad(event, name),
            };
            let mut out = nonce.to_vec();
            out.extend(
                cipher
                    .encrypt(&XNonce::from(nonce), payload)
                    .map_err(|e| EventsError::corrupt("subject key", e))?,
            );
            let text = serde_json::Value::String(format!("{SEALED}{}", B64.encode(out)));
            sealed.push((name.as_str(), text.to_string()));
        } else {
            sealed.push((name.as_str(), value.get().to_owned()));
        }
    }
    Ok(onephase_core::json::object(
        sealed.iter().map(|(k, v)| (*k, v.as_str())),
    ))
}

/// `data` with each of `fields` opened with `key`, or set to `null` when there is no key (the
/// subject was forgotten). Returns the data and the fields redacted.
pub(crate) fn open(
    data: &str,
    fields: &[String],
    key: Option<&str>,
    event: Uuid,
    position: u64,
) -> Result<(String, Vec<String>), EventsError> {
    let raw = onephase_core::json::parse_raw(data)
        .map_err(|e| EventsError::corrupt(format!("data at position {position}"), e))?;
    let members = onephase_core::json::members(&raw).ok_or_else(|| {
        EventsError::corrupt(
            format!("data at position {position}"),
            "sealed data is not an object",
        )
    })?;
    let cipher = key.map(cipher).transpose()?;
    let mut opened = Vec::with_capacity(members.len());
    let mut redacted = Vec::new();
    for (name, value) in &members {
        if !fields.contains(name) {
            opened.push((name.as_str(), value.get().to_owned()));
            continue;
        }
        let Some(cipher) = &cipher else {
            redacted.push(name.clone());
            opened.push((name.as_str(), "null".to_owned()));
            continue;
        };
        let fail = |reason: String| EventsError::Sealed {
            field: name.clone(),
            position,
            reason,
        };
        let text: String = serde_json::from_str(value.get()).map_err(|e| fail(e.to_string()))?;
        let bytes = text
            .strip_prefix(SEALED)
            .ok_or_else(|| fail("not a sealed value".into()))
            .and_then(|b| B64.decode(b).map_err(|e| fail(e.to_string())))?;
        if bytes.len() < 24 {
            return Err(fail("too short".into()));
        }
        let (nonce, ciphertext) = bytes.split_at(24);
        let nonce: [u8; 24] = nonce.try_into().map_err(|_| fail("bad nonce".into()))?;
        let plain = cipher
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad(event, name),
                },
            )
            .map_err(|_| fail("authentication failed (the stored bytes were changed)".into()))?;
        let plain = String::from_utf8(plain).map_err(|e| fail(e.to_string()))?;
        opened.push((name.as_str(), plain));
    }
    Ok((
        onephase_core::json::object(opened.iter().map(|(k, v)| (*k, v.as_str()))),
        redacted,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_fields_open_with_the_key_and_read_null_without_it() {
        let key = new_key();
        let id = Uuid::now_v7();
        let data = r#"{"order":123456789012345678901234567890,"email":"ada@example.com","n":1.50}"#;
        let fields = vec!["email".to_owned()];
        let sealed = seal(data, &fields, &key, id).unwrap();
        assert!(!sealed.contains("ada@"), "{sealed}");
        assert!(sealed.contains("123456789012345678901234567890"));
        let (opened, redacted) = open(&sealed, &fields, Some(&key), id, 1).unwrap();
        assert_eq!(opened, data);
        assert!(redacted.is_empty());
        let (forgotten, redacted) = open(&sealed, &fields, None, id, 1).unwrap();
        assert_eq!(
            forgotten,
            r#"{"order":123456789012345678901234567890,"email":null,"n":1.50}"#
        );
        assert_eq!(redacted, fields);
        // Moved to another event, the sealed value does not open.
        let err = open(&sealed, &fields, Some(&key), Uuid::now_v7(), 1).unwrap_err();
        assert!(err.to_string().contains("authentication failed"), "{err}");
    }

    #[test]
    fn a_missing_personal_field_or_a_non_object_is_refused() {
        let key = new_key();
        let id = Uuid::now_v7();
        let err = seal(r#"{"a":1}"#, &["email".into()], &key, id).unwrap_err();
        assert!(err.to_string().contains("no such member"), "{err}");
        let err = seal("[1]", &["email".into()], &key, id).unwrap_err();
        assert!(err.to_string().contains("not a JSON object"), "{err}");
    }
}
