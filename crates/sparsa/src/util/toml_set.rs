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

/// A configuration error and where it lies: `field` is the origin (a file name) when the text
/// itself is at fault, `--set KEY` when an override is; `msg` does not repeat `field`.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigFault {
    pub field: String,
    pub msg: String,
}

/// Parse TOML `text`, apply the `key=value` overrides in order, and deserialize the result. A
/// value the type rejects is blamed on the first override after which the full error appears
/// (so `--set train.lr=abc` names `--set train.lr`, not the file), or on `origin` when the text
/// alone already gives it.
pub fn parse<T: serde::de::DeserializeOwned>(
    text: &str,
    overrides: &[String],
    origin: &str,
) -> Result<T, ConfigFault> {
    let at_origin = |msg: String| ConfigFault {
        field: origin.to_string(),
        msg,
    };
    let base: toml::Table = toml::from_str(text).map_err(|e| at_origin(e.to_string()))?;
    let mut table = base.clone();
    for ov in overrides {
        apply(&mut table, ov).map_err(|msg| ConfigFault {
            field: format!("--set {}", key(ov)),
            msg,
        })?;
    }
    let err = match toml::Value::Table(table).try_into::<T>() {
        Ok(v) => return Ok(v),
        Err(e) => e.to_string(),
    };
    let fails_alike = |t: &toml::Table| {
        toml::Value::Table(t.clone())
            .try_into::<T>()
            .is_err_and(|e| e.to_string() == err)
    };
    let mut prefix = base;
    if !fails_alike(&prefix) {
        for ov in overrides {
            // Every override applied above, so this one cannot fail.
            let _ = apply(&mut prefix, ov);
            if fails_alike(&prefix) {
                return Err(ConfigFault {
                    field: format!("--set {}", key(ov)),
                    msg: format!("`{}`: {}", ov.trim(), one_line(&err)),
                });
            }
        }
    }
    Err(at_origin(one_line(&err)))
}

/// serde's "…\nin `a.b`" as one line.
fn one_line(msg: &str) -> String {
    msg.trim_end().replace('\n', " ")
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

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Cfg {
        a: Inner,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        x: f64,
        name: String,
    }

    #[test]
    fn a_rejected_value_is_blamed_on_its_source() {
        let sets = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let good = "[a]\nx = 1.0\nname = \"n\"\n";
        assert!(parse::<Cfg>(good, &sets(&["a.x=2"]), "f.toml").is_ok());
        // The override's value is wrong: the override is named, not the file.
        let e = parse::<Cfg>(good, &sets(&["a.name=m", "a.x=abc"]), "f.toml").unwrap_err();
        assert_eq!(e.field, "--set a.x", "{e:?}");
        assert!(e.msg.contains("a.x=abc"), "{e:?}");
        // The file's value is wrong and no override touches it: the file is named.
        let bad = "[a]\nx = \"s\"\nname = \"n\"\n";
        let e = parse::<Cfg>(bad, &sets(&["a.name=m"]), "f.toml").unwrap_err();
        assert_eq!(e.field, "f.toml", "{e:?}");
        // The file lacks a field an override supplies; a later override is wrong.
        let partial = "[a]\nx = 1.0\n";
        let e = parse::<Cfg>(partial, &sets(&["a.name=m", "a.x=[1]"]), "f.toml").unwrap_err();
        assert_eq!(e.field, "--set a.x", "{e:?}");
        // An override fixes the file's bad value: fine.
        assert!(parse::<Cfg>(bad, &sets(&["a.x=3"]), "f.toml").is_ok());
    }
}
