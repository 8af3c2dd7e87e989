//! The live routing table: every shard reads the current version without a
//! lock, and an operator's change builds the next version and swaps it in
//! whole, so a create sees one consistent table from start to end.
//!
//! Changes apply one at a time, each checked against the table first and
//! then against the version it was asked against (`If-Match`), and are kept
//! in the state file (when configured) before they take effect: a change
//! the process cannot keep is refused, so a restart never forgets one that
//! was answered.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use metrics::{counter, gauge};

use super::routing::{Routing, SharedRouting};
use crate::actors::EngineError;
use crate::config::{
    MAX_WEIGHT, NO_SPILL_INTO, PartitionSettings, TableState, UnitMode, UnitPatch, UnitRouting,
};
use crate::domain::values::is_identifier;
use crate::metrics as m;

/// The routing table as start-up found it.
pub struct SavedTable {
    /// The version the operator's kept changes had reached (1 without any).
    pub version: u64,
    /// The routing settings as the config has them (version 0).
    pub config: TableState,
}

pub(super) struct RoutingTable {
    current: ArcSwap<Routing>,
    /// The config's settings: the state file keeps only changes from them.
    config: TableState,
    /// Held while a change is built, kept and swapped in.
    changing: Mutex<()>,
    state_file: Option<PathBuf>,
}

/// An applied change to a unit: the table it made, and the unit's settings
/// before.
pub(super) struct Applied {
    pub table: SharedRouting,
    pub before: UnitRouting,
}

/// What a change makes of the table: the next table, or `None` when it
/// changes nothing.
type Edit = Result<Option<Routing>, EngineError>;

impl RoutingTable {
    pub fn new(routing: Routing, config: TableState, state_file: Option<PathBuf>) -> Self {
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
        let mut before = None;
        let table = self.change(if_match, |old| {
            let route = old
                .units
                .get(&unit)
                .ok_or(EngineError::UnitNotFound { unit })?;
            let was = UnitRouting::of(&route.settings);
            let after = changed(old, &was, patch)?;
            let unchanged = after == was;
            before = Some(was);
            if unchanged {
                return Ok(None);
            }
            let mut next = old.clone();
            let entry = next.units.get_mut(&unit).expect("the unit is in the table");
            after.apply_to(&mut entry.settings);
            Ok(Some(next))
        })?;
        Ok(Applied {
            table,
            before: before.expect("a change that was applied saw the unit"),
        })
    }

    /// Maps `merchant`'s creates to `partition` from now on.
    pub fn set_merchant(
        &self,
        merchant: &str,
        partition: &str,
        if_match: Option<u64>,
    ) -> Result<SharedRouting, EngineError> {
        self.change(if_match, |old| {
            if !old.known_partitions().contains(partition) {
                return Err(unknown_partition("partition", partition));
            }
            if old.partition_of_str(merchant) == partition {
                return Ok(None);
            }
            let mut next = old.clone();
            next.merchants
                .insert(merchant.to_owned(), partition.to_owned());
            Ok(Some(next))
        })
    }

    /// Sets the partitions `name` spills creates into (creating `name` when
    /// the table has no such partition yet).
    pub fn set_spill(
        &self,
        name: &str,
        spill_to: &[String],
        if_match: Option<u64>,
    ) -> Result<SharedRouting, EngineError> {
        self.change(if_match, |old| {
            check_spill(old, name, spill_to)?;
            let known = old.known_partitions().contains(name);
            let current = old.partitions.get(name).map(|p| p.spill_to.as_slice());
            if known && current.unwrap_or_default() == spill_to {
                return Ok(None);
            }
            let mut next = old.clone();
            next.partitions.insert(
                name.to_owned(),
                PartitionSettings {
                    spill_to: spill_to.to_vec(),
                },
            );
            Ok(Some(next))
        })
    }

    /// Applies `edit` to the current table: it checks the change and builds
    /// the next table; then the version is checked, the next table is kept
    /// and swapped in. Answers the table as it now is.
    fn change(
        &self,
        if_match: Option<u64>,
        edit: impl FnOnce(&Routing) -> Edit,
    ) -> Result<SharedRouting, EngineError> {
        let _one_at_a_time = self.changing.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.current.load_full();
        let outcome = edit(&old).and_then(|next| {
            // A change the table cannot take is refused whatever the version.
            if let Some(v) = if_match
                && v != old.version
            {
                return Err(EngineError::TableMoved {
                    version: old.version,
                });
            }
            let Some(mut next) = next else {
                return Ok(None);
            };
            next.version = old.version + 1;
            if let Some(path) = &self.state_file {
                self.state_of(&next)
                    .save(path)
                    .map_err(|e| EngineError::TableNotSaved(format!("{}: {e}", path.display())))?;
            }
            Ok(Some(next))
        });
        let label = match &outcome {
            Ok(Some(_)) => "applied",
            Ok(None) => "unchanged",
            Err(EngineError::TableMoved { .. }) => "conflict",
            Err(EngineError::TableNotSaved(_)) => "not_saved",
            Err(_) => "refused",
        };
        counter!(m::ROUTING_CHANGES, "outcome" => label).increment(1);
        let Some(next) = outcome? else {
            return Ok(old);
        };
        let next = Arc::new(next);
        self.current.store(next.clone());
        publish(&next);
        Ok(next)
    }

    /// What the state file keeps of `table`: its version, and what differs
    /// from the config.
    fn state_of(&self, table: &Routing) -> TableState {
        let config = &self.config;
        TableState {
            version: table.version,
            units: table
                .units
                .iter()
                .map(|(id, u)| (*id, UnitRouting::of(&u.settings)))
                .filter(|(id, now)| config.units.get(id) != Some(now))
                .collect(),
            merchants: table
                .merchants
                .iter()
                .filter(|(m, p)| config.merchants.get(*m) != Some(*p))
                .map(|(m, p)| (m.clone(), p.clone()))
                .collect(),
            partitions: table
                .partitions
                .iter()
                .filter(|(n, p)| config.partitions.get(*n) != Some(&p.spill_to))
                .map(|(n, p)| (n.clone(), p.spill_to.clone()))
                .collect(),
        }
    }
}

fn unknown_partition(field: &'static str, name: &str) -> EngineError {
    EngineError::InvalidChange {
        field: Some(field),
        message: format!(
            "no partition named {name:?} (a unit's, the default, a merchant's, or a configured one)"
        ),
    }
}

/// Whether `name` may spill into `spill_to`: known partitions, each once,
/// never `canary` or `cold` (naming `name` itself adds nothing: its units
/// were tried first).
fn check_spill(table: &Routing, name: &str, spill_to: &[String]) -> Result<(), EngineError> {
    let invalid = |field: &'static str, message: String| EngineError::InvalidChange {
        field: Some(field),
        message,
    };
    if !is_identifier(name) {
        return Err(invalid(
            "name",
            "a partition name is 1-64 characters of [A-Za-z0-9_.:-]".into(),
        ));
    }
    let known = table.known_partitions();
    for (i, target) in spill_to.iter().enumerate() {
        if NO_SPILL_INTO.contains(&target.as_str()) {
            return Err(invalid(
                "spill_to",
                format!(
                    "nothing may spill into {target} (canary traffic is opt-in; cold takes no creates)"
                ),
            ));
        }
        if spill_to[..i].contains(target) {
            return Err(invalid("spill_to", format!("{target} is named twice")));
        }
        if !known.contains(target.as_str()) {
            return Err(unknown_partition("spill_to", target));
        }
    }
    Ok(())
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
            return Err(unknown_partition("partition", p));
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
