//! The routing table as it is kept: the table's version, each unit's
//! settings (routing and database URLs), merchants' partitions and
//! partitions' spill rules.
//!
//! Two keepers hold it. The embedded default keeps only what an operator
//! changed away from the config, in a small JSON file (written whole to a
//! temporary file, synced and renamed over the old one, so that a crash
//! leaves either the old state or the new one) applied over the config at
//! start-up: the operator's commented config file is never rewritten, and
//! later config edits still reach what nobody changed. A control database
//! shared by several engine processes keeps the whole table
//! (`storage/control.rs`): there the config only seeds it.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::units::{Temperature, UnitMode, UnitSettings};
use super::urls::{mask_url, mask_urls, one_or_many};

/// A unit's routing settings as an operator may change them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitRouting {
    pub partition: String,
    pub mode: UnitMode,
    pub temperature: Temperature,
    pub weight: u32,
}

impl UnitRouting {
    pub fn of(unit: &UnitSettings) -> Self {
        Self {
            partition: unit.partition.clone(),
            mode: unit.mode,
            temperature: unit.temperature,
            weight: unit.weight,
        }
    }

    pub fn apply_to(&self, unit: &mut UnitSettings) {
        unit.partition.clone_from(&self.partition);
        unit.mode = self.mode;
        unit.temperature = self.temperature;
        unit.weight = self.weight;
    }
}

/// A unit as the table keeps it: its routing settings and where its
/// database is. The URLs may hold a password: `Debug` masks them.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitEntry {
    pub partition: String,
    pub mode: UnitMode,
    pub temperature: Temperature,
    pub weight: u32,
    /// Empty in the state file for a unit at the config's URLs (so that the
    /// config's URLs, passwords included, stay the config's to change).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub primary_url: String,
    #[serde(default, alias = "replica_url", deserialize_with = "one_or_many")]
    pub replica_urls: Vec<String>,
}

/// Written as read: one replica as `replica_url` (so that an engine of the
/// release before, sharing a control store during an upgrade, still reads
/// the table), several as `replica_urls`, none left out.
impl Serialize for UnitEntry {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut entry = serializer.serialize_struct("UnitEntry", 6)?;
        entry.serialize_field("partition", &self.partition)?;
        entry.serialize_field("mode", &self.mode)?;
        entry.serialize_field("temperature", &self.temperature)?;
        entry.serialize_field("weight", &self.weight)?;
        if !self.primary_url.is_empty() {
            entry.serialize_field("primary_url", &self.primary_url)?;
        }
        match self.replica_urls.as_slice() {
            [] => {}
            [one] => entry.serialize_field("replica_url", one)?,
            many => entry.serialize_field("replica_urls", many)?,
        }
        entry.end()
    }
}

impl UnitEntry {
    pub fn of(unit: &UnitSettings) -> Self {
        Self {
            partition: unit.partition.clone(),
            mode: unit.mode,
            temperature: unit.temperature,
            weight: unit.weight,
            primary_url: unit.primary_url.clone(),
            replica_urls: unit.replica_urls.clone(),
        }
    }

    pub fn routing(&self) -> UnitRouting {
        UnitRouting {
            partition: self.partition.clone(),
            mode: self.mode,
            temperature: self.temperature,
            weight: self.weight,
        }
    }

    /// Unit `id` with these settings.
    pub fn settings(&self, id: u16) -> UnitSettings {
        UnitSettings {
            id,
            partition: self.partition.clone(),
            mode: self.mode,
            temperature: self.temperature,
            weight: self.weight,
            primary_url: self.primary_url.clone(),
            replica_urls: self.replica_urls.clone(),
        }
    }
}

impl std::fmt::Debug for UnitEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnitEntry")
            .field("partition", &self.partition)
            .field("mode", &self.mode)
            .field("temperature", &self.temperature)
            .field("weight", &self.weight)
            .field("primary_url", &mask_url(&self.primary_url))
            .field("replica_urls", &mask_urls(&self.replica_urls))
            .finish()
    }
}

/// Most a unit's weight may be (a share among its partition's units).
pub const MAX_WEIGHT: u32 = 1_000_000;

/// An operator's change to one unit (`PATCH /admin/units/{id}`): the
/// fields named are set, the rest kept (none: nothing changes).
#[derive(Clone, Default)]
pub struct UnitPatch {
    pub mode: Option<UnitMode>,
    pub partition: Option<String>,
    pub temperature: Option<Temperature>,
    pub weight: Option<u32>,
    /// Another database server for the unit (a copy of its database).
    pub primary_url: Option<String>,
    /// The unit's replicas, all of them (empty: none any more).
    pub replica_urls: Option<Vec<String>>,
}

impl UnitPatch {
    /// Whether the patch names nothing to change.
    pub fn is_empty(&self) -> bool {
        self.mode.is_none()
            && self.partition.is_none()
            && self.temperature.is_none()
            && self.weight.is_none()
            && !self.moves_database()
    }

    /// Whether the patch names database URLs.
    pub fn moves_database(&self) -> bool {
        self.primary_url.is_some() || self.replica_urls.is_some()
    }
}

impl std::fmt::Debug for UnitPatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnitPatch")
            .field("mode", &self.mode)
            .field("partition", &self.partition)
            .field("temperature", &self.temperature)
            .field("weight", &self.weight)
            .field("primary_url", &self.primary_url.as_deref().map(mask_url))
            .field("replica_urls", &self.replica_urls.as_deref().map(mask_urls))
            .finish()
    }
}

/// The routing table as kept: its version, each unit's settings, merchants'
/// partitions and partitions' spill rules. The whole table (a control
/// store, or the config's own, at version 0), or what an operator changed
/// away from the config (the state file: anything back at its config value
/// is left out, so later edits of the config reach it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableState {
    pub version: u64,
    pub units: BTreeMap<u16, UnitEntry>,
    #[serde(default)]
    pub merchants: BTreeMap<String, String>,
    /// Partition -> the partitions it spills into.
    #[serde(default)]
    pub partitions: BTreeMap<String, Vec<String>>,
}

impl TableState {
    /// What of `self` (a whole table) differs from `base`: each unit,
    /// merchant and partition whose settings are not `base`'s.
    pub fn changes_from(&self, base: &TableState) -> TableState {
        TableState {
            version: self.version,
            units: self
                .units
                .iter()
                .filter(|(id, u)| base.units.get(*id) != Some(*u))
                .map(|(id, u)| (*id, u.clone()))
                .collect(),
            merchants: self
                .merchants
                .iter()
                .filter(|(m, p)| base.merchants.get(*m) != Some(*p))
                .map(|(m, p)| (m.clone(), p.clone()))
                .collect(),
            partitions: self
                .partitions
                .iter()
                .filter(|(n, s)| base.partitions.get(*n) != Some(*s))
                .map(|(n, s)| (n.clone(), s.clone()))
                .collect(),
        }
    }

    /// What the state file keeps of `self` (a whole table) against the
    /// config's table: [`Self::changes_from`], without the URLs of units
    /// still at the config's URLs.
    pub fn file_changes(&self, config: &TableState) -> TableState {
        let mut changes = self.changes_from(config);
        for (id, unit) in &mut changes.units {
            if let Some(own) = config.units.get(id)
                && (&own.primary_url, &own.replica_urls) == (&unit.primary_url, &unit.replica_urls)
            {
                unit.primary_url.clear();
                unit.replica_urls.clear();
            }
        }
        changes
    }

    /// The state file's `changes` made whole again against the config's
    /// table: a unit kept without URLs takes the config's. Units kept
    /// without URLs that the config no longer has are left out, and named.
    pub fn with_file_changes(&self, mut changes: TableState) -> (TableState, Vec<u16>) {
        let mut dropped = Vec::new();
        changes.units.retain(|id, unit| {
            if !unit.primary_url.is_empty() {
                return true;
            }
            let Some(own) = self.units.get(id) else {
                dropped.push(*id);
                return false;
            };
            unit.primary_url.clone_from(&own.primary_url);
            unit.replica_urls.clone_from(&own.replica_urls);
            true
        });
        (self.with(&changes), dropped)
    }

    /// `self` with `changes` applied over it (at `changes`' version): the
    /// units, merchants and partitions `changes` names replace or join
    /// `self`'s.
    pub fn with(&self, changes: &TableState) -> TableState {
        let mut all = self.clone();
        all.version = changes.version;
        all.units
            .extend(changes.units.iter().map(|(id, u)| (*id, u.clone())));
        all.merchants.extend(changes.merchants.clone());
        all.partitions.extend(changes.partitions.clone());
        all
    }

    /// The units, merchants and partitions `self` has that `other` lacks
    /// (what a config would seed into a shared table).
    pub fn missing_from(&self, other: &TableState) -> TableState {
        TableState {
            version: other.version,
            units: self
                .units
                .iter()
                .filter(|(id, _)| !other.units.contains_key(*id))
                .map(|(id, u)| (*id, u.clone()))
                .collect(),
            merchants: self
                .merchants
                .iter()
                .filter(|(m, _)| !other.merchants.contains_key(*m))
                .map(|(m, p)| (m.clone(), p.clone()))
                .collect(),
            partitions: self
                .partitions
                .iter()
                .filter(|(n, _)| !other.partitions.contains_key(*n))
                .map(|(n, s)| (n.clone(), s.clone()))
                .collect(),
        }
    }

    /// Whether `self` names no unit, merchant or partition.
    pub fn is_empty(&self) -> bool {
        self.units.is_empty() && self.merchants.is_empty() && self.partitions.is_empty()
    }

    /// The state at `path`; `None` when there is no file yet.
    pub fn load(path: &Path) -> Result<Option<Self>, String> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| format!("{}: not a routing state file: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// Writes the state to `path` atomically: a temporary file of this
    /// process's own, synced, renamed over `path`. An error means `path` still
    /// holds the old state. The directory is synced afterwards (so that the
    /// rename survives a power cut); that failing only warns, since the new
    /// state is in place already.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        std::fs::create_dir_all(dir)?;
        let tmp = path.with_extension(format!("json.{}.tmp", std::process::id()));
        let written = (|| {
            // Only the engine's user may read it: it may hold database
            // passwords (of units added or moved through the admin API).
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            let body = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
            file.write_all(&body)?;
            file.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        if let Err(e) = std::fs::File::open(dir).and_then(|d| d.sync_all()) {
            tracing::warn!(path = %path.display(), error = %e, "routing state written, but its directory could not be synced");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(partition: &str, weight: u32) -> UnitEntry {
        UnitEntry {
            partition: partition.into(),
            mode: UnitMode::ReadOnly,
            temperature: Temperature::Warm,
            weight,
            primary_url: "mysql://u:pw@h:1/db".into(),
            replica_urls: Vec::new(),
        }
    }

    #[test]
    fn replicas_are_read_from_one_url_or_a_list() {
        let one: UnitEntry = serde_json::from_str(
            r#"{"partition":"standard","mode":"open","temperature":"hot","weight":1,
                "primary_url":"mysql://h/db","replica_url":"mysql://r/db"}"#,
        )
        .unwrap();
        assert_eq!(one.replica_urls, ["mysql://r/db"]);
        let many: UnitEntry = serde_json::from_str(
            r#"{"partition":"standard","mode":"open","temperature":"hot","weight":1,
                "primary_url":"mysql://h/db","replica_urls":["mysql://r/db","mysql://s/db"]}"#,
        )
        .unwrap();
        assert_eq!(many.replica_urls.len(), 2);
        // Written as read (one as `replica_url`, for the release before),
        // none left out.
        let text = serde_json::to_string(&many).unwrap();
        assert!(
            text.contains(r#""replica_urls":["mysql://r/db","mysql://s/db"]"#),
            "{text}"
        );
        let text = serde_json::to_string(&one).unwrap();
        assert!(text.contains(r#""replica_url":"mysql://r/db""#), "{text}");
        assert_eq!(serde_json::from_str::<UnitEntry>(&text).unwrap(), one);
        let none = serde_json::to_string(&entry("standard", 1)).unwrap();
        assert!(!none.contains("replica"), "{none}");
        let both = serde_json::from_str::<UnitEntry>(
            r#"{"partition":"standard","mode":"open","temperature":"hot","weight":1,
                "primary_url":"mysql://h/db","replica_url":"mysql://r/db","replica_urls":[]}"#,
        );
        assert!(both.is_err());
        let toml: UnitSettings = toml::from_str(
            "id = 1\nprimary_url = \"mysql://h/db\"\nreplica_url = \"mysql://r/db\"\n",
        )
        .unwrap();
        assert_eq!(toml.replica_urls, ["mysql://r/db"]);
    }

    #[test]
    fn changes_apply_back_over_their_base() {
        let mut base = TableState::default();
        base.units.insert(1, entry("standard", 100));
        base.units.insert(2, entry("standard", 100));
        base.merchants.insert("m-1".into(), "standard".into());
        let mut now = base.with(&TableState {
            version: 4,
            ..TableState::default()
        });
        now.units.get_mut(&2).unwrap().weight = 5;
        now.units.insert(7, entry("vip", 1));
        now.partitions.insert("vip".into(), vec!["standard".into()]);
        let changes = now.changes_from(&base);
        assert_eq!(changes.units.keys().collect::<Vec<_>>(), [&2, &7]);
        assert!(changes.merchants.is_empty());
        assert_eq!(base.with(&changes), now);
        // What the table lacks of a config: only what it has not got at all.
        let seed = base.missing_from(&now);
        assert!(seed.is_empty(), "{seed:?}");
        let mut config = base.clone();
        config.units.insert(9, entry("standard", 100));
        assert_eq!(
            config.missing_from(&now).units.keys().collect::<Vec<_>>(),
            [&9]
        );
        assert!(!format!("{now:?}").contains("pw@"));
    }

    #[test]
    fn the_state_file_keeps_urls_only_where_they_are_not_the_configs() {
        let mut config = TableState::default();
        config.units.insert(1, entry("standard", 100));
        config.units.insert(2, entry("standard", 100));
        let mut now = config.clone();
        now.units.get_mut(&1).unwrap().weight = 5;
        now.units.get_mut(&2).unwrap().primary_url = "mysql://u:pw@other:1/db".into();
        now.units.insert(3, entry("vip", 1));
        let kept = now.file_changes(&config);
        assert_eq!(kept.units[&1].primary_url, "");
        assert_eq!(kept.units[&2].primary_url, "mysql://u:pw@other:1/db");
        assert_eq!(kept.units[&3].primary_url, "mysql://u:pw@h:1/db");
        // The config's URL for unit 1 changes: the kept weight stays, the new URL is taken.
        config.units.get_mut(&1).unwrap().primary_url = "mysql://u:new@h:1/db".into();
        let (back, dropped) = config.with_file_changes(kept.clone());
        assert!(dropped.is_empty());
        assert_eq!(back.units[&1].weight, 5);
        assert_eq!(back.units[&1].primary_url, "mysql://u:new@h:1/db");
        assert_eq!(back.units[&2], now.units[&2]);
        // A file written before URLs were kept (none for a unit) still loads.
        let old: TableState = serde_json::from_str(
            r#"{"version":3,"units":{"1":{"partition":"standard","mode":"read_only","temperature":"hot","weight":7}}}"#,
        )
        .unwrap();
        let (back, _) = config.with_file_changes(old);
        assert_eq!(
            (back.units[&1].weight, back.units[&1].primary_url.as_str()),
            (7, "mysql://u:new@h:1/db")
        );
        config.units.remove(&1);
        let (_, dropped) = config.with_file_changes(kept);
        assert_eq!(dropped, [1]);
    }

    #[test]
    fn a_saved_state_loads_back_and_a_missing_file_is_none() {
        let dir = std::env::temp_dir().join(format!("oe-state-{}", std::process::id()));
        let path = dir.join("routing-state.json");
        assert_eq!(TableState::load(&path).unwrap(), None);
        let mut state = TableState {
            version: 7,
            ..TableState::default()
        };
        state.units.insert(2, entry("vip", 5));
        state.save(&path).unwrap();
        assert_eq!(TableState::load(&path).unwrap(), Some(state));
        std::fs::write(&path, b"{not json").unwrap();
        assert!(TableState::load(&path).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
