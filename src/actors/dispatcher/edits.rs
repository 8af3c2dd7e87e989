//! The operator's changes as edits of the routing table: each checks that
//! the table can take it (`400 invalid_change` naming the field when not)
//! and builds the next table, or `None` when it changes nothing.

use super::routing::{Routing, UnitRoute};
use super::table::Edit;
use crate::actors::EngineError;
use crate::config::{
    MAX_WEIGHT, NO_SPILL_INTO, PartitionSettings, UnitEntry, UnitMode, UnitPatch, UnitRouting,
    UnitSettings, check_db_url, check_replica_urls,
};
use crate::domain::order_id::MAX_UNIT;
use crate::domain::values::is_identifier;

fn invalid(field: &'static str, message: String) -> EngineError {
    EngineError::InvalidChange {
        field: Some(field),
        message,
    }
}

fn unknown_partition(field: &'static str, name: &str) -> EngineError {
    invalid(
        field,
        format!(
            "no partition named {name:?} (a unit's, the default, a merchant's, or a configured one)"
        ),
    )
}

/// Applies `patch` to unit `unit`; `moved` is the unit's actor on the
/// database the patch moves it to (started by [`repoint`]'s answer).
pub(super) fn patch_unit(
    table: &Routing,
    unit: u16,
    patch: &UnitPatch,
    moved: Option<&UnitRoute>,
) -> Edit {
    let route = table
        .units
        .get(&unit)
        .ok_or(EngineError::UnitNotFound { unit })?;
    let was = UnitRouting::of(&route.settings);
    let after = changed(table, &was, patch)?;
    if after == was && moved.is_none() {
        return Ok(None);
    }
    let mut next = table.clone();
    let entry = next.units.get_mut(&unit).expect("the unit is in the table");
    if let Some(moved) = moved {
        // Built on a table another process changed meanwhile: it must not
        // have moved the unit elsewhere, or disabled it no more.
        if entry.settings.mode != UnitMode::Disabled {
            return Err(EngineError::UnitNotDisabled { unit });
        }
        *entry = moved.clone();
    }
    after.apply_to(&mut entry.settings);
    Ok(Some(next))
}

/// The settings unit `unit` moves to, when `patch` names database URLs it
/// does not have (`None` when nothing moves).
pub(super) fn repoint(
    table: &Routing,
    unit: u16,
    patch: &UnitPatch,
) -> Result<Option<UnitSettings>, EngineError> {
    if !patch.moves_database() {
        return Ok(None);
    }
    let route = table
        .units
        .get(&unit)
        .ok_or(EngineError::UnitNotFound { unit })?;
    let mut next = route.settings.clone();
    if let Some(url) = &patch.primary_url {
        next.primary_url.clone_from(url);
    }
    if let Some(urls) = &patch.replica_urls {
        next.replica_urls.clone_from(urls);
    }
    let now = &route.settings;
    if (&next.primary_url, &next.replica_urls) == (&now.primary_url, &now.replica_urls) {
        return Ok(None);
    }
    if now.mode != UnitMode::Disabled {
        // Calls routed by the table as it was may still write to the old
        // database; disabled first, they stop (after the request timeout)
        // before the copy is taken.
        return Err(EngineError::UnitNotDisabled { unit });
    }
    check_database(table, unit, &next.primary_url, &next.replica_urls)?;
    Ok(Some(next))
}

/// Maps `merchant`'s creates to `partition`.
pub(super) fn set_merchant(table: &Routing, merchant: &str, partition: &str) -> Edit {
    if !table.known_partitions().contains(partition) {
        return Err(unknown_partition("partition", partition));
    }
    if table.partition_of_str(merchant) == partition {
        return Ok(None);
    }
    let mut next = table.clone();
    next.merchants
        .insert(merchant.to_owned(), partition.to_owned());
    Ok(Some(next))
}

/// Sets the partitions `name` spills creates into (making `name` when the
/// table has no such partition yet).
pub(super) fn set_spill(table: &Routing, name: &str, spill_to: &[String]) -> Edit {
    check_spill(table, name, spill_to)?;
    let known = table.known_partitions().contains(name);
    let current = table.partitions.get(name).map(|p| p.spill_to.as_slice());
    if known && current.unwrap_or_default() == spill_to {
        return Ok(None);
    }
    let mut next = table.clone();
    next.partitions.insert(
        name.to_owned(),
        PartitionSettings {
            spill_to: spill_to.to_vec(),
        },
    );
    Ok(Some(next))
}

/// Whether the table can take unit `id` with `entry`: a free id, a known
/// partition, a weight in range, a database URL this engine can use and no
/// other unit uses.
pub(super) fn check_new_unit(
    table: &Routing,
    id: u16,
    entry: &UnitEntry,
) -> Result<(), EngineError> {
    if id > MAX_UNIT {
        return Err(invalid("id", format!("a unit id is 0 to {MAX_UNIT}")));
    }
    if table.units.contains_key(&id) {
        return Err(invalid("id", format!("unit {id} is in the table already")));
    }
    if table.ring.units().contains(&id) {
        // A home of keys whose database is gone from the table: a new
        // database under its id would be an empty home, and would hand out
        // its old order ids again.
        return Err(invalid(
            "id",
            format!(
                "unit {id} is a home of idempotency keys (in the key ring): its id cannot be reused"
            ),
        ));
    }
    if !table.known_partitions().contains(entry.partition.as_str()) {
        return Err(unknown_partition("partition", &entry.partition));
    }
    if entry.weight > MAX_WEIGHT {
        return Err(invalid(
            "weight",
            format!("weight must be 0 to {MAX_WEIGHT}"),
        ));
    }
    check_database(table, id, &entry.primary_url, &entry.replica_urls)
}

/// Whether unit `unit` may use these database URLs: ones this engine can
/// use, and a primary no other unit uses.
fn check_database(
    table: &Routing,
    unit: u16,
    primary: &str,
    replicas: &[String],
) -> Result<(), EngineError> {
    check_db_url(primary).map_err(|m| invalid("primary_url", m))?;
    check_replica_urls(primary, replicas).map_err(|m| invalid("replica_urls", m))?;
    if let Some(other) = table
        .units
        .values()
        .find(|u| u.settings.id != unit && u.settings.primary_url == primary)
    {
        return Err(invalid(
            "primary_url",
            format!("unit {} uses this database", other.settings.id),
        ));
    }
    Ok(())
}

/// Whether `name` may spill into `spill_to`: known partitions, each once,
/// never `canary` or `cold` (naming `name` itself adds nothing: its units
/// were tried first).
fn check_spill(table: &Routing, name: &str, spill_to: &[String]) -> Result<(), EngineError> {
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
