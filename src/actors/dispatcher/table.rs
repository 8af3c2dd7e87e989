//! The live routing table: every shard reads the current version without a
//! lock, and an operator's change builds the next version and swaps it in
//! whole, so a create sees one consistent table from start to end.
//!
//! Changes apply one at a time, each against the version it was asked
//! against (`If-Match`), and are kept in the state file (when configured)
//! before they take effect: a change the process cannot keep is refused,
//! so a restart never forgets one that was answered.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use metrics::{counter, gauge};

use super::routing::{Routing, SharedRouting};
use crate::actors::EngineError;
use crate::config::{MAX_WEIGHT, TableState, UnitMode, UnitPatch, UnitRouting};
use crate::metrics as m;

/// The routing table as start-up found it.
pub struct SavedTable {
    /// The version the operator's kept changes had reached (1 without any).
    pub version: u64,
    /// Each unit's routing settings as the config has them.
    pub config: BTreeMap<u16, UnitRouting>,
}

pub(super) struct RoutingTable {
    current: ArcSwap<Routing>,
    /// The config's settings: the state file keeps only changes from them.
    config: BTreeMap<u16, UnitRouting>,
    /// Held while a change is built, kept and swapped in.
    changing: Mutex<()>,
    state_file: Option<PathBuf>,
}

/// An applied change: the table it made, and the unit's settings before.
pub(super) struct Applied {
    pub table: SharedRouting,
    pub before: UnitRouting,
}

impl RoutingTable {
    pub fn new(
        routing: Routing,
        config: BTreeMap<u16, UnitRouting>,
        state_file: Option<PathBuf>,
    ) -> Self {
        publish(&routing);
        Self {
            current: ArcSwap::from_pointee(routing),
            config,
            changing: Mutex::new(()),
            state_file,
        }
    }

    /// The current version of the table.
    pub fn load(&self) -> SharedRouting {
        self.current.load_full()
    }

    /// Applies `patch` to unit `unit`, if the table is still at `if_match`
    /// (when given).
    pub fn patch_unit(
        &self,
        unit: u16,
        patch: &UnitPatch,
        if_match: Option<u64>,
    ) -> Result<Applied, EngineError> {
        let _one_at_a_time = self.changing.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.current.load_full();
        let outcome = self.build(&old, unit, patch, if_match);
        let label = match &outcome {
            Ok(_) => "applied",
            Err(EngineError::TableMoved { .. }) => "conflict",
            Err(EngineError::TableNotSaved(_)) => "not_saved",
            Err(_) => "refused",
        };
        counter!(m::ROUTING_CHANGES, "outcome" => label).increment(1);
        let (next, before) = outcome?;
        if next.version == old.version {
            return Ok(Applied { table: old, before });
        }
        let next = Arc::new(next);
        self.current.store(next.clone());
        publish(&next);
        Ok(Applied {
            table: next,
            before,
        })
    }

    /// What the state file keeps of `table`: its version, and the units
    /// whose settings differ from the config's.
    fn state_of(&self, table: &Routing) -> TableState {
        TableState {
            version: table.version,
            units: table
                .units
                .iter()
                .map(|(id, u)| (*id, UnitRouting::of(&u.settings)))
                .filter(|(id, now)| self.config.get(id) != Some(now))
                .collect(),
        }
    }

    /// The next table, kept in the state file; or why not.
    fn build(
        &self,
        old: &Routing,
        unit: u16,
        patch: &UnitPatch,
        if_match: Option<u64>,
    ) -> Result<(Routing, UnitRouting), EngineError> {
        let route = old
            .units
            .get(&unit)
            .ok_or(EngineError::UnitNotFound { unit })?;
        let before = UnitRouting::of(&route.settings);
        // A change the table cannot take is refused whatever the version.
        let after = changed(old, &before, patch)?;
        if let Some(v) = if_match
            && v != old.version
        {
            return Err(EngineError::TableMoved {
                version: old.version,
            });
        }
        if patch.is_empty() {
            // Nothing to change: the table stays at its version.
            return Ok((old.clone(), before));
        }
        let mut next = old.clone();
        next.version = old.version + 1;
        let entry = next.units.get_mut(&unit).expect("the unit is in the table");
        after.apply_to(&mut entry.settings);
        if let Some(path) = &self.state_file {
            self.state_of(&next)
                .save(path)
                .map_err(|e| EngineError::TableNotSaved(format!("{}: {e}", path.display())))?;
        }
        Ok((next, before))
    }
}

/// The unit's settings after `patch`, if the table can take them.
fn changed(
    table: &Routing,
    before: &UnitRouting,
    patch: &UnitPatch,
) -> Result<UnitRouting, EngineError> {
    let invalid = |field: &'static str, message: String| EngineError::InvalidChange {
        field: Some(field),
        message,
    };
    let mut after = before.clone();
    if let Some(p) = &patch.partition {
        if !table.known_partitions().contains(p.as_str()) {
            return Err(invalid(
                "partition",
                format!("no partition named {p:?} (a unit's, the default, or a configured one)"),
            ));
        }
        after.partition.clone_from(p);
    }
    if let Some(w) = patch.weight {
        if w > MAX_WEIGHT {
            return Err(invalid(
                "weight",
                format!("weight must be 0 to {MAX_WEIGHT}"),
            ));
        }
        after.weight = w;
    }
    if let Some(mode) = patch.mode {
        after.mode = mode;
    }
    if let Some(t) = patch.temperature {
        after.temperature = t;
    }
    Ok(after)
}

/// The table's version and each unit's weight and mode, as gauges.
fn publish(table: &Routing) {
    gauge!(m::ROUTING_VERSION).set(table.version as f64);
    for (id, u) in &table.units {
        let label = id.to_string();
        gauge!(m::UNIT_WEIGHT, "unit" => label.clone()).set(f64::from(u.settings.weight));
        for mode in [UnitMode::Open, UnitMode::ReadOnly, UnitMode::Disabled] {
            let on = if u.settings.mode == mode { 1.0 } else { 0.0 };
            gauge!(m::UNIT_MODE, "unit" => label.clone(), "mode" => mode.as_str()).set(on);
        }
    }
}
