//! `--set key=value` overrides of a TOML config, shared by every config that takes them (SAE
//! training, pruning experiments): dotted keys, TOML values, a bare word read as a string.

/// The key of an `a.b.c=value` override, trimmed (the whole text when there is no `=`).
pub fn key(ov: &str) -> &str {
    ov.split_once('=').map_or(ov, |(k, _)| k).trim()
}

/// Apply one `a.b.c=value` override to a TOML table. The error is a sentence naming the override;
/// callers wrap it in their own config error.
pub fn apply(table: &mut toml::Table, ov: &str) -> Result<(), String> {
    let (_, raw) = ov.split_once('=').ok_or_else(|| {
        format!("override `{ov}` is not of the form key=value (e.g. train.lr=1e-3)")
    })?;
    let key = key(ov);
    let raw = raw.trim();
    let value: toml::Value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or(toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    };
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(format!("override key `{key}` is malformed"));
    }
    let mut cur = table;
    for p in &parts[..parts.len() - 1] {
        let entry = cur
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry
            .as_table_mut()
            .ok_or_else(|| format!("override `{key}`: `{p}` is not a table"))?;
    }
    cur.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_nested_keys_with_toml_values_and_bare_words() {
        let mut t: toml::Table = toml::from_str("[a]\nx = 1\n").unwrap();
        apply(&mut t, "a.x=2.5").unwrap();
        apply(&mut t, "a.b.c=[1, 2]").unwrap();
        apply(&mut t, "name=plain").unwrap();
        apply(&mut t, "q = \"quoted\"").unwrap();
        assert_eq!(t["a"]["x"].as_float(), Some(2.5));
        assert_eq!(t["a"]["b"]["c"].as_array().unwrap().len(), 2);
        assert_eq!(t["name"].as_str(), Some("plain"));
        assert_eq!(t["q"].as_str(), Some("quoted"));
    }

    #[test]
    fn malformed_overrides_are_named() {
        let mut t: toml::Table = toml::from_str("a = 1\n").unwrap();
        assert!(apply(&mut t, "novalue").unwrap_err().contains("key=value"));
        assert!(apply(&mut t, "a..b=1").unwrap_err().contains("malformed"));
        assert!(apply(&mut t, "a.b=1").unwrap_err().contains("not a table"));
    }
}
