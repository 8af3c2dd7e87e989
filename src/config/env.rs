//! Environment overrides: `ORDERENGINE__SECTION__KEY=value` (double
//! underscores between path segments). A segment that lands on the `units`
//! array names a unit by its **id**, not its position:
//! `ORDERENGINE__UNITS__3__PRIMARY_URL=mysql://...` repoints unit 3 whatever
//! its place in the file. Values are read as TOML (numbers, booleans) and
//! fall back to plain strings.

pub const ENV_PREFIX: &str = "ORDERENGINE__";

pub(super) fn apply_override(tree: &mut toml::Value, var: &str, value: &str) -> Result<(), String> {
    let path: Vec<String> = var[ENV_PREFIX.len()..]
        .split("__")
        .map(str::to_ascii_lowercase)
        .collect();
    if path.iter().any(String::is_empty) {
        return Err("empty path segment".into());
    }
    let (leaf, parents) = path
        .split_last()
        .expect("split yields at least one segment");
    let mut node = tree;
    for seg in parents {
        node = match node {
            toml::Value::Table(t) => t
                .entry(seg.clone())
                .or_insert_with(|| toml::Value::Table(Default::default())),
            toml::Value::Array(items) => {
                let id: i64 = seg
                    .parse()
                    .map_err(|_| format!("{seg:?} is not a unit id"))?;
                items
                    .iter_mut()
                    .find(|i| i.get("id").and_then(toml::Value::as_integer) == Some(id))
                    .ok_or_else(|| format!("no entry with id {id}"))?
            }
            _ => return Err(format!("{seg:?} is below a plain value")),
        };
    }
    let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    match node {
        toml::Value::Table(t) => {
            t.insert(leaf.clone(), parsed);
            Ok(())
        }
        _ => Err(format!("{leaf:?} is below a plain value")),
    }
}
