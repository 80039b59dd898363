//! JSON helpers shared by everything that reads JSON from users.

use serde_json::Value;

/// Rewrites whole floats (`2.0`) as integers (`2`) in `value`, except inside the members
/// named in `untouched` (user data that is passed on as written).
///
/// JSON does not distinguish the two, and JSON Schema calls both integers, but serde refuses a
/// float where it expects an integer. Run this before deserializing a user's document so that
/// `"version": 2.0` means version 2. Floats beyond 2^53, where whole-ness is not exact, are
/// left alone.
///
/// ```
/// let mut v = serde_json::json!({"version": 2.0, "ratio": 0.5, "list": [1.0], "body": {"price": 2.0}});
/// onephase_core::json::integers_from_whole_floats(&mut v, &["body"]);
/// assert_eq!(v, serde_json::json!({"version": 2, "ratio": 0.5, "list": [1], "body": {"price": 2.0}}));
/// ```
pub fn integers_from_whole_floats(value: &mut Value, untouched: &[&str]) {
    match value {
        Value::Number(n) if n.is_f64() => {
            if let Some(f) = n.as_f64()
                && f.fract() == 0.0
                && f.abs() <= 9_007_199_254_740_992.0
            {
                #[allow(clippy::cast_possible_truncation)]
                let whole = f as i64;
                *value = Value::from(whole);
            }
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|v| integers_from_whole_floats(v, untouched)),
        Value::Object(map) => map
            .iter_mut()
            .filter(|(k, _)| !untouched.contains(&k.as_str()))
            .for_each(|(_, v)| integers_from_whole_floats(v, untouched)),
        _ => {}
    }
}

/// JSON text kept exactly as it was written: a number like `123456789012345678901234567890`
/// keeps every digit, which a [`Value`] (an `f64` for such numbers) would not.
pub use serde_json::value::RawValue;

/// The JSON text of `value`.
pub fn to_raw(value: &Value) -> Box<RawValue> {
    // Serializing a `Value` cannot fail: its keys are strings and its numbers finite.
    serde_json::value::to_raw_value(value).unwrap_or_else(|_| null())
}

/// `null` as raw JSON.
pub fn null() -> Box<RawValue> {
    RawValue::NULL.to_owned()
}

/// `raw` without the whitespace between its tokens; every key, string and number stays
/// exactly as written.
///
/// ```
/// let raw = serde_json::value::RawValue::from_string("{ \"big\" : 123456789012345678901234567890 , \"s\": \"a b\" }".into())?;
/// assert_eq!(onephase_core::json::compact(&raw).get(), r#"{"big":123456789012345678901234567890,"s":"a b"}"#);
/// # Ok::<(), serde_json::Error>(())
/// ```
pub fn compact(raw: &RawValue) -> Box<RawValue> {
    let text = raw.get();
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in text.chars() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            if c == '"' {
                in_string = true;
            }
            out.push(c);
        }
    }
    // Removing whitespace between the tokens of valid JSON leaves valid JSON.
    RawValue::from_string(out).unwrap_or_else(|_| raw.to_owned())
}

/// The text two JSON documents share exactly when they say the same: object keys sorted (the
/// last of a repeated key kept), no whitespace, strings in one escaping, numbers as written.
/// For telling a repeated request from a different one under the same idempotency key.
///
/// ```
/// use serde_json::value::RawValue;
/// let a = RawValue::from_string(r#"{"b": 1, "a": [true, "\u0041"]}"#.into())?;
/// let b = RawValue::from_string(r#"{"a":[true,"A"],"b":1}"#.into())?;
/// assert_eq!(onephase_core::json::canonical(&a), onephase_core::json::canonical(&b));
/// # Ok::<(), serde_json::Error>(())
/// ```
pub fn canonical(raw: &RawValue) -> String {
    let mut out = String::with_capacity(raw.get().len());
    write_canonical(raw, &mut out);
    out
}

fn write_canonical(raw: &RawValue, out: &mut String) {
    let text = raw.get().trim();
    match text.as_bytes().first() {
        Some(b'{') => {
            let members: std::collections::BTreeMap<String, &RawValue> =
                serde_json::from_str(text).unwrap_or_default();
            out.push('{');
            for (i, (key, value)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::to_string(key).unwrap_or_default());
                out.push(':');
                write_canonical(value, out);
            }
            out.push('}');
        }
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_str(text).unwrap_or_default();
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Some(b'"') => {
            let s: String = serde_json::from_str(text).unwrap_or_default();
            out.push_str(&serde_json::to_string(&s).unwrap_or_default());
        }
        _ => out.push_str(text),
    }
}

/// The member of `raw` at `path` (object keys, or indexes into arrays), exactly as written.
///
/// ```
/// use serde_json::value::RawValue;
/// let raw = RawValue::from_string(r#"{"order": {"ids": [1, 123456789012345678901234567890]}}"#.into())?;
/// let path = ["order".to_owned(), "ids".to_owned(), "1".to_owned()];
/// assert_eq!(onephase_core::json::lookup(&raw, &path).map(|v| v.get()), Some("123456789012345678901234567890"));
/// # Ok::<(), serde_json::Error>(())
/// ```
pub fn lookup<'a>(raw: &'a RawValue, path: &[String]) -> Option<&'a RawValue> {
    let Some((first, rest)) = path.split_first() else {
        return Some(raw);
    };
    let text = raw.get().trim_start();
    let member: &'a RawValue = match text.as_bytes().first() {
        Some(b'{') => {
            // The last of a repeated key, as a `Value` would read it.
            let members: Vec<(String, &'a RawValue)> =
                serde_json::from_str::<MembersInOrder<'a>>(raw.get())
                    .ok()?
                    .0;
            members.into_iter().rev().find(|(k, _)| k == first)?.1
        }
        Some(b'[') => {
            let items: Vec<&'a RawValue> = serde_json::from_str(raw.get()).ok()?;
            items.get(first.parse::<usize>().ok()?).copied()?
        }
        _ => return None,
    };
    lookup(member, rest)
}

/// The members of the JSON object `raw`, in the order written, each value exactly as written;
/// `None` if `raw` is not an object.
///
/// ```
/// use serde_json::value::RawValue;
/// let raw = RawValue::from_string(r#"{"b": 1.50, "a": [1]}"#.into())?;
/// let members = onephase_core::json::members(&raw).expect("an object");
/// assert_eq!(members[0].0, "b");
/// assert_eq!(members[0].1.get(), "1.50");
/// # Ok::<(), serde_json::Error>(())
/// ```
pub fn members(raw: &RawValue) -> Option<Vec<(String, &RawValue)>> {
    if !raw.get().trim_start().starts_with('{') {
        return None;
    }
    serde_json::from_str::<MembersInOrder<'_>>(raw.get())
        .ok()
        .map(|m| m.0)
}

/// A JSON object written from `members` in order: each key escaped, each value's text as given
/// (which must be JSON).
pub fn object<'a>(members: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut out = String::from("{");
    for (i, (key, value)) in members.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&Value::String(key.to_owned()).to_string());
        out.push(':');
        out.push_str(value);
    }
    out.push('}');
    out
}

/// An object's members in the order written, values borrowed from the text.
struct MembersInOrder<'a>(Vec<(String, &'a RawValue)>);

impl<'de> serde::Deserialize<'de> for MembersInOrder<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = MembersInOrder<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut members = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, &'de RawValue>()? {
                    members.push((k, v));
                }
                Ok(MembersInOrder(members))
            }
        }
        d.deserialize_map(Visit)
    }
}

/// A JSON document kept as the text it was written in: what onephase carries for users
/// (payloads, a saga's input and its steps' outputs), so that nothing is lost in a round trip
/// through a `Value` (numbers beyond 64 bits, `-0`, `1.50`). Two are equal when their texts are.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct RawJson(Box<RawValue>);

impl RawJson {
    /// `null`.
    pub fn null() -> Self {
        Self(null())
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// As a raw value.
    pub fn as_raw(&self) -> &RawValue {
        &self.0
    }

    /// Read into a [`Value`] (numbers beyond an `f64`'s precision are rounded: use the text
    /// where they matter).
    pub fn to_value(&self) -> Value {
        serde_json::from_str(self.get()).unwrap_or(Value::Null)
    }

    /// Parses `text`, keeping it exactly (surrounding whitespace removed).
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        parse_raw(text).map(Self)
    }
}

impl std::fmt::Debug for RawJson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.get())
    }
}

impl std::fmt::Display for RawJson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.get())
    }
}

impl PartialEq for RawJson {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl From<Value> for RawJson {
    fn from(value: Value) -> Self {
        Self(to_raw(&value))
    }
}

impl From<&Value> for RawJson {
    fn from(value: &Value) -> Self {
        Self(to_raw(value))
    }
}

impl From<Box<RawValue>> for RawJson {
    fn from(raw: Box<RawValue>) -> Self {
        Self(raw)
    }
}

impl From<RawJson> for Box<RawValue> {
    fn from(json: RawJson) -> Self {
        json.0
    }
}

/// Parses `text` as raw JSON, keeping it exactly.
pub fn parse_raw(text: &str) -> Result<Box<RawValue>, serde_json::Error> {
    RawValue::from_string(text.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Box<RawValue> {
        parse_raw(text).expect("valid JSON")
    }

    #[test]
    fn big_numbers_and_escapes_survive_compact_canonical_and_lookup() {
        let doc = raw(
            r#"{ "big": 123456789012345678901234567890, "neg": -9223372036854775809,
                 "f": 1.50, "s": "line\nbreak \"q\"", "a": [ {"x": 1e400} ] }"#,
        );
        let compacted = compact(&doc);
        assert_eq!(
            compacted.get(),
            r#"{"big":123456789012345678901234567890,"neg":-9223372036854775809,"f":1.50,"s":"line\nbreak \"q\"","a":[{"x":1e400}]}"#
        );
        assert_eq!(
            canonical(&doc),
            r#"{"a":[{"x":1e400}],"big":123456789012345678901234567890,"f":1.50,"neg":-9223372036854775809,"s":"line\nbreak \"q\""}"#
        );
        let at = |p: &[&str]| {
            let path: Vec<String> = p.iter().map(|s| (*s).to_owned()).collect();
            lookup(&doc, &path).map(|v| v.get().to_owned())
        };
        assert_eq!(
            at(&["big"]).as_deref(),
            Some("123456789012345678901234567890")
        );
        assert_eq!(at(&["a", "0", "x"]).as_deref(), Some("1e400"));
        assert_eq!(at(&["a", "1"]), None);
        assert_eq!(at(&["s", "0"]), None);
        assert_eq!(at(&[]).as_deref(), Some(doc.get()));
        assert_eq!(
            lookup(&raw(r#"{"k":1,"k":2}"#), &["k".to_owned()]).map(RawValue::get),
            Some("2")
        );
    }
}
