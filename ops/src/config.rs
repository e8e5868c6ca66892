//! Configuration files with environment overrides, as the gateway and the nodes read them.

use serde::de::DeserializeOwned;

/// An environment value as TOML: a TOML literal when it is one, else a string (or, for a list,
/// comma-separated strings).
pub fn env_value(raw: &str, list: bool) -> toml::Value {
    if let Ok(t) = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        && let Some(v) = t.get("v")
    {
        return v.clone();
    }
    if list {
        toml::Value::Array(
            raw.split(',')
                .map(|s| toml::Value::String(s.trim().to_owned()))
                .collect(),
        )
    } else {
        toml::Value::String(raw.to_owned())
    }
}

/// Parses `text` as `T` after overriding each of `options` that the environment sets as
/// `<prefix>_<OPTION>` (upper case); those named in `lists` take comma-separated values. `env`
/// looks a variable up, so tests can pass their own. Errors are `(path, message)`.
pub fn parse_with_env<T: DeserializeOwned>(
    text: &str,
    prefix: &str,
    options: &[&str],
    lists: &[&str],
    env: impl Fn(&str) -> Option<String>,
) -> Result<T, (String, String)> {
    let mut table: toml::Table = toml::from_str(text).map_err(|e| {
        (
            e.span()
                .map_or_else(String::new, |s| format!("byte {}", s.start)),
            e.message().to_owned(),
        )
    })?;
    for key in options {
        if let Some(value) = env(&format!("{prefix}_{}", key.to_uppercase())) {
            table.insert((*key).to_owned(), env_value(&value, lists.contains(key)));
        }
    }
    table.try_into().map_err(|e: toml::de::Error| {
        (
            format!("(file or {prefix}_* environment)"),
            e.message().to_owned(),
        )
    })
}
