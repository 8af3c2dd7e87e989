//! The operator's changes to the routing table, kept across restarts
//! without touching the operator's config file: a small JSON file (the
//! table's version and each changed unit's routing settings), written whole
//! to a temporary file, synced and renamed over the old one, so that a crash
//! leaves either the old state or the new one. Loaded at start-up over the
//! config's units.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::units::{Temperature, UnitMode, UnitSettings};

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

/// Most a unit's weight may be (a share among its partition's units).
pub const MAX_WEIGHT: u32 = 1_000_000;

/// An operator's change to one unit (`PATCH /admin/units/{id}`): the
/// fields named are set, the rest kept (none: nothing changes).
#[derive(Debug, Clone, Default)]
pub struct UnitPatch {
    pub mode: Option<UnitMode>,
    pub partition: Option<String>,
    pub temperature: Option<Temperature>,
    pub weight: Option<u32>,
}

impl UnitPatch {
    /// Whether the patch names nothing to change.
    pub fn is_empty(&self) -> bool {
        self.mode.is_none()
            && self.partition.is_none()
            && self.temperature.is_none()
            && self.weight.is_none()
    }
}

/// What the state file holds: the table's version, and what an operator
/// changed away from the config: each unit's routing settings, merchants'
/// partitions, partitions' spill rules (anything back at its config value
/// is left out, so later edits of the config reach it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableState {
    pub version: u64,
    pub units: BTreeMap<u16, UnitRouting>,
    #[serde(default)]
    pub merchants: BTreeMap<String, String>,
    /// Partition -> the partitions it spills into.
    #[serde(default)]
    pub partitions: BTreeMap<String, Vec<String>>,
}

impl TableState {
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
            let mut file = std::fs::File::create(&tmp)?;
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

    #[test]
    fn a_saved_state_loads_back_and_a_missing_file_is_none() {
        let dir = std::env::temp_dir().join(format!("oe-state-{}", std::process::id()));
        let path = dir.join("routing-state.json");
        assert_eq!(TableState::load(&path).unwrap(), None);
        let mut state = TableState {
            version: 7,
            ..TableState::default()
        };
        state.units.insert(
            2,
            UnitRouting {
                partition: "vip".into(),
                mode: UnitMode::ReadOnly,
                temperature: Temperature::Warm,
                weight: 5,
            },
        );
        state.save(&path).unwrap();
        assert_eq!(TableState::load(&path).unwrap(), Some(state));
        std::fs::write(&path, b"{not json").unwrap();
        assert!(TableState::load(&path).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
