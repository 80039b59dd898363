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
