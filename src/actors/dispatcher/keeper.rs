//! Where the routing table's changes are kept: nowhere (they last until the
//! process stops), a state file of this process's (what differs from the
//! config), or the control store that several processes share (the whole
//! table, changed by compare-and-set on its version).

use std::path::PathBuf;

use crate::config::TableState;
use crate::storage::{ControlError, ControlStore, Swapped};

pub enum Keeper {
    Memory,
    File {
        path: PathBuf,
        /// The config's own table: the file keeps what differs from it.
        config: TableState,
    },
    Control(ControlStore),
}

/// What keeping a change did.
pub(super) enum Kept {
    Done,
    /// The shared table is no longer the one the change was built on.
    Moved,
}

impl Keeper {
    /// Keeps `after`, the change of `before` that `who` asked for (`what`).
    pub(super) async fn keep(
        &self,
        before: &TableState,
        after: &TableState,
        who: &str,
        what: &str,
    ) -> Result<Kept, String> {
        match self {
            Self::Memory => Ok(Kept::Done),
            Self::File { path, config } => after
                .file_changes(config)
                .save(path)
                .map(|()| Kept::Done)
                .map_err(|e| format!("{}: {e}", path.display())),
            Self::Control(store) => {
                let body = serde_json::to_string(after).map_err(|e| e.to_string())?;
                match store.swap(before.version, &body, who, what).await {
                    Ok(Swapped::Done) => Ok(Kept::Done),
                    Ok(Swapped::Moved) => Ok(Kept::Moved),
                    Err(e) => Err(e.to_string()),
                }
            }
        }
    }

    /// The shared table, when it is newer than `version`. A store that no
    /// longer holds one (it was seeded before this process started) is an
    /// error, as one that went back in time is: changes could not be kept
    /// there, and the process says so instead of failing each change.
    pub(super) async fn newer_than(&self, version: u64) -> Result<Option<TableState>, String> {
        let Self::Control(store) = self else {
            return Ok(None);
        };
        match store.version().await.map_err(|e| e.to_string())? {
            None => {
                return Err(format!(
                    "the control store holds no routing table (was it emptied?); this process routes by its own, version {version}, and refuses changes"
                ));
            }
            Some(v) if v > version => {}
            Some(v) if v < version => {
                return Err(format!(
                    "the control store's table is at version {v}, older than this process's {version} (was it restored from a backup?); not taking it"
                ));
            }
            _ => return Ok(None),
        }
        let Some((version, body)) = store.load().await.map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        read_table(version, &body).map(Some)
    }

    pub(super) fn is_shared(&self) -> bool {
        matches!(self, Self::Control(_))
    }

    pub(super) fn kind(&self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::File { .. } => "file",
            Self::Control(_) => "control_store",
        }
    }
}

/// The table the control store holds, at `version`.
pub fn read_table(version: u64, body: &str) -> Result<TableState, String> {
    let mut state: TableState = serde_json::from_str(body).map_err(|e| {
        format!("the control store holds no routing table this engine can read: {e}")
    })?;
    state.version = version;
    Ok(state)
}

/// The shared table, seeded from `config` when the store has none, with
/// what `config` has that the table lacks (a unit, a merchant, a partition)
/// added to it, so that every process routes to every unit any of them
/// runs. Used at start-up.
pub async fn shared_table(
    store: &ControlStore,
    config: &TableState,
    who: &str,
) -> Result<TableState, ControlError> {
    const TRIES: usize = 5;
    for _ in 0..TRIES {
        let Some((version, body)) = store.load().await? else {
            let mut first = config.clone();
            first.version = 1;
            let body = serde_json::to_string(&first).expect("a table serializes");
            store.seed(1, &body, who).await?;
            continue;
        };
        let table = read_table(version, &body).map_err(ControlError::Unreachable)?;
        let missing = config.missing_from(&table);
        if missing.is_empty() {
            return Ok(table);
        }
        let mut next = table.with(&missing);
        next.version = version + 1;
        let body = serde_json::to_string(&next).expect("a table serializes");
        let what = format!(
            "added from the config: units {:?}, merchants {:?}, partitions {:?}",
            missing.units.keys().collect::<Vec<_>>(),
            missing.merchants,
            missing.partitions
        );
        if store.swap(version, &body, who, &what).await? == Swapped::Done {
            tracing::warn!(version = version + 1, change = %what, "the shared routing table gained what this process's config has");
            return Ok(next);
        }
    }
    Err(ControlError::Unreachable(
        "the routing table kept changing during start-up".into(),
    ))
}
