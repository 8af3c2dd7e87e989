//! The live routing table: every shard reads the current version without a
//! lock, and an operator's change builds the next version and swaps it in
//! whole, so a create sees one consistent table from start to end.
//!
//! Changes apply one at a time in a process, each checked against the
//! table first and then against the version it was asked against
//! (`If-Match`), and are kept (`keeper.rs`) before they take effect: a
//! change that cannot be kept is refused, so a restart never forgets one
//! that was answered. With a control store shared by several processes the
//! keeping is a compare-and-set on the version: a change built on an older
//! table than the store's is rebuilt on the store's (or, under `If-Match`,
//! answered `412`), and every process picks up the store's newer versions
//! (`poll`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::Addr;
use arc_swap::ArcSwap;
use metrics::{counter, gauge};

use super::keeper::{Keeper, Kept};
use super::launch::{LaunchError, UnitLauncher};
use super::routing::{Routing, SharedRouting, UnitRoute};
use super::status::TableStore;
use crate::actors::EngineError;
use crate::actors::supervisor::{SetSpill, Supervisor, Watch};
use crate::actors::unit::CloseUnit;
use crate::config::{PartitionSettings, TableState, UnitEntry, UnitMode};
use crate::metrics as m;

/// How often a change built on an old table is rebuilt on the store's
/// newer one before it is given up (each rebuild means another process
/// changed the table in between).
const REBUILDS: usize = 5;

/// The routing table as start-up found it, and where its changes are kept.
pub struct SavedTable {
    pub version: u64,
    pub keeper: Keeper,
}

pub(super) struct RoutingTable {
    current: ArcSwap<Routing>,
    keeper: Keeper,
    /// Held while a change is built, kept and swapped in (and while a newer
    /// table from the store is taken in).
    changing: tokio::sync::Mutex<()>,
    launcher: UnitLauncher,
    supervisor: Addr<Supervisor>,
    /// Units started for a newer table that could not be taken in yet
    /// (another of its units would not start): used when it is retried.
    started: Mutex<BTreeMap<u16, UnitRoute>>,
    /// The last exchange with the control store.
    contact: Mutex<Contact>,
}

struct Contact {
    at: Instant,
    error: Option<String>,
}

/// What a change makes of the table: the next table, or `None` when it
/// changes nothing.
pub(super) type Edit = Result<Option<Routing>, EngineError>;

impl RoutingTable {
    pub fn new(
        routing: Routing,
        keeper: Keeper,
        launcher: UnitLauncher,
        supervisor: Addr<Supervisor>,
    ) -> Self {
        publish(&routing);
        gauge!(m::ROUTING_STORE_UP).set(1.0);
        Self {
            current: ArcSwap::from_pointee(routing),
            keeper,
            changing: tokio::sync::Mutex::new(()),
            launcher,
            supervisor,
            started: Mutex::new(BTreeMap::new()),
            contact: Mutex::new(Contact {
                at: Instant::now(),
                error: None,
            }),
        }
    }

    /// The current version of the table.
    pub fn load(&self) -> SharedRouting {
        self.current.load_full()
    }

    /// Applies `edit` to the current table, if it is still at `if_match`
    /// (when given): checks the change, keeps it, swaps it in. Answers the
    /// table as it now is.
    pub async fn change(
        &self,
        if_match: Option<u64>,
        who: &str,
        edit: impl Fn(&Routing) -> Edit,
    ) -> Result<SharedRouting, EngineError> {
        let _one_at_a_time = self.changing.lock().await;
        self.change_held(if_match, who, edit).await
    }

    /// Adds the unit `id` (`entry`) to the table: it is started first (its
    /// database opened, migrated and checked), and joins only then.
    pub async fn add_unit(
        &self,
        id: u16,
        entry: &UnitEntry,
        if_match: Option<u64>,
        who: &str,
        check: impl Fn(&Routing) -> Result<(), EngineError>,
    ) -> Result<SharedRouting, EngineError> {
        let _one_at_a_time = self.changing.lock().await;
        let old = self.load();
        if let Err(e) = check(&old).and_then(|()| version_is(&old, if_match)) {
            counter!(m::ROUTING_CHANGES, "outcome" => refusal(&e)).increment(1);
            return Err(e);
        }
        let route = match self.launcher.join(entry.settings(id), &old.ring).await {
            Ok(route) => route,
            Err(e) => {
                counter!(m::ROUTING_CHANGES, "outcome" => "refused").increment(1);
                return Err(launch_refused(e));
            }
        };
        let added = self
            .change_held(if_match, who, |table| {
                check(table)?;
                let mut next = table.clone();
                next.units.insert(id, route.clone());
                Ok(Some(next))
            })
            .await;
        if added.is_err() {
            // Not in the table: nothing will call it.
            let _ = route.addr.send(CloseUnit).await;
        }
        added
    }

    async fn change_held(
        &self,
        if_match: Option<u64>,
        who: &str,
        edit: impl Fn(&Routing) -> Edit,
    ) -> Result<SharedRouting, EngineError> {
        let mut rebuilds = 0;
        let answer = loop {
            let old = self.load();
            let next = match edit(&old).and_then(|next| version_is(&old, if_match).map(|()| next)) {
                Ok(Some(mut next)) => {
                    next.version = old.version + 1;
                    next
                }
                Ok(None) => break Ok(None),
                Err(e) => break Err(e),
            };
            let (before, after) = (state_of(&old), state_of(&next));
            let what = describe(&before, &after);
            match self.keeper.keep(&before, &after, who, &what).await {
                Ok(Kept::Done) => {
                    self.contacted(None);
                    tracing::info!(who, version = next.version, change = %what, "routing table changed");
                    break Ok(Some(self.install(next)));
                }
                Ok(Kept::Moved) if rebuilds < REBUILDS => {
                    // Another process changed the table: take its version
                    // in and build the change again on it.
                    rebuilds += 1;
                    self.contacted(None);
                    if let Err(e) = self.catch_up_held().await {
                        break Err(EngineError::TableNotSaved(e));
                    }
                }
                Ok(Kept::Moved) => {
                    break Err(EngineError::TableNotSaved(
                        "the table kept changing under this change; try again".into(),
                    ));
                }
                Err(e) => {
                    self.contacted(Some(e.clone()));
                    break Err(EngineError::TableNotSaved(e));
                }
            }
        };
        counter!(m::ROUTING_CHANGES, "outcome" => outcome(&answer)).increment(1);
        if let Err(e) = &answer {
            tracing::warn!(who, error = %e, "routing table change refused");
        }
        Ok(answer?.unwrap_or_else(|| self.load()))
    }

    /// Takes in the store's table when it is newer than this process's.
    pub async fn catch_up(&self) -> Result<(), String> {
        let _one_at_a_time = self.changing.lock().await;
        self.catch_up_held().await
    }

    async fn catch_up_held(&self) -> Result<(), String> {
        let newer = self.keeper.newer_than(self.load().version).await;
        self.contacted(newer.as_ref().err().cloned());
        let Some(state) = newer? else {
            return Ok(());
        };
        let old = self.load();
        let next = self.routing_for(&old, &state).await?;
        let what = describe(&state_of(&old), &state);
        tracing::info!(version = state.version, change = %what, "routing table changed by another process");
        self.install(next);
        Ok(())
    }

    /// Asks the store for a newer table every `every`, for as long as the
    /// process runs (only a shared store has anything to ask).
    pub async fn poll(self: Arc<Self>, every: Duration) {
        if !self.keeper.is_shared() {
            return;
        }
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.catch_up().await {
                tracing::warn!(error = %e, "routing table: cannot catch up with the control store; serving with version {}", self.load().version);
            }
        }
    }

    /// `old` made into the whole table `state`: units it lacks are started
    /// (and refused if one cannot be), the others take their new settings.
    async fn routing_for(&self, old: &Routing, state: &TableState) -> Result<Routing, String> {
        let mut next = old.clone();
        next.version = state.version;
        next.merchants.clone_from(&state.merchants);
        next.partitions = state
            .partitions
            .iter()
            .map(|(n, s)| {
                let settings = PartitionSettings {
                    spill_to: s.clone(),
                };
                (n.clone(), settings)
            })
            .collect();
        for (id, entry) in &state.units {
            if let Some(route) = next.units.get_mut(id) {
                let running = &route.settings;
                if (&running.primary_url, &running.replica_url)
                    != (&entry.primary_url, &entry.replica_url)
                {
                    tracing::warn!(unit = id, table = ?entry, "the table names other database URLs for this unit than it runs on; it keeps its own until the engine restarts");
                }
                entry.routing().apply_to(&mut route.settings);
                continue;
            }
            let waiting = self.started.lock().expect("not poisoned").remove(id);
            let route = match waiting {
                Some(route) => route,
                None => self
                    .launcher
                    .join(entry.settings(*id), &old.ring)
                    .await
                    .map_err(|e| format!("a unit the table gained cannot start: {e}"))?,
            };
            self.started
                .lock()
                .expect("not poisoned")
                .insert(*id, route.clone());
            next.units.insert(*id, route);
        }
        self.started.lock().expect("not poisoned").clear();
        Ok(next)
    }

    /// Swaps `next` in, and tells the supervisor what changed for it.
    fn install(&self, next: Routing) -> SharedRouting {
        let old = self.load();
        let next = Arc::new(next);
        self.current.store(next.clone());
        publish(&next);
        for (id, u) in &next.units {
            let s = &u.settings;
            let was = old
                .units
                .get(id)
                .map(|o| (&o.settings.partition, o.settings.mode));
            // It counts open units per partition for panic mode, and
            // leaves disabled units unprobed.
            if was != Some((&s.partition, s.mode)) {
                self.supervisor.do_send(Watch {
                    unit: *id,
                    addr: u.addr.clone(),
                    partition: s.partition.clone(),
                    mode: s.mode,
                });
            }
        }
        let spills = |t: &Routing| -> Vec<(String, Vec<String>)> {
            t.partitions
                .iter()
                .map(|(n, p)| (n.clone(), p.spill_to.clone()))
                .collect()
        };
        if spills(&old) != spills(&next) {
            self.supervisor.do_send(SetSpill {
                partitions: next.partitions.clone(),
            });
        }
        next
    }

    fn contacted(&self, error: Option<String>) {
        if !self.keeper.is_shared() {
            return;
        }
        gauge!(m::ROUTING_STORE_UP).set(if error.is_none() { 1.0 } else { 0.0 });
        let mut contact = self.contact.lock().expect("not poisoned");
        if error.is_none() {
            contact.at = Instant::now();
        }
        contact.error = error;
    }

    /// Where the table is kept, and (for a shared store) how the last
    /// exchange with it went.
    pub fn store(&self) -> TableStore {
        let contact = self.contact.lock().expect("not poisoned");
        let shared = self.keeper.is_shared();
        TableStore {
            kind: self.keeper.kind(),
            reachable: shared.then_some(contact.error.is_none()),
            last_contact_ms_ago: shared
                .then(|| u64::try_from(contact.at.elapsed().as_millis()).unwrap_or(u64::MAX)),
            error: contact.error.clone(),
        }
    }
}

/// Refuses the change when the table is not at `if_match` (when given).
fn version_is(table: &Routing, if_match: Option<u64>) -> Result<(), EngineError> {
    match if_match {
        Some(v) if v != table.version => Err(EngineError::TableMoved {
            version: table.version,
        }),
        _ => Ok(()),
    }
}

fn outcome(answer: &Result<Option<SharedRouting>, EngineError>) -> &'static str {
    match answer {
        Ok(Some(_)) => "applied",
        Ok(None) => "unchanged",
        Err(e) => refusal(e),
    }
}

fn refusal(e: &EngineError) -> &'static str {
    match e {
        EngineError::TableMoved { .. } => "conflict",
        EngineError::TableNotSaved(_) => "not_saved",
        _ => "refused",
    }
}

/// A unit that could not be started, as an answer to the operator.
fn launch_refused(e: LaunchError) -> EngineError {
    match e {
        LaunchError::Refused { message, .. } => EngineError::InvalidChange {
            field: Some("primary_url"),
            message,
        },
        e => EngineError::UnitNotStarted(e.to_string()),
    }
}

/// The whole table as kept.
pub(super) fn state_of(table: &Routing) -> TableState {
    TableState {
        version: table.version,
        units: table
            .units
            .iter()
            .map(|(id, u)| (*id, UnitEntry::of(&u.settings)))
            .collect(),
        merchants: table.merchants.clone(),
        partitions: table
            .partitions
            .iter()
            .map(|(n, p)| (n.clone(), p.spill_to.clone()))
            .collect(),
    }
}

/// What changed from `before` to `after`, for the logs (URLs masked).
fn describe(before: &TableState, after: &TableState) -> String {
    let mut said = Vec::new();
    for (id, u) in &after.units {
        match before.units.get(id) {
            None => said.push(format!("unit {id} added: {u:?}")),
            Some(was) if was != u => said.push(format!("unit {id}: {was:?} -> {u:?}")),
            Some(_) => {}
        }
    }
    for (m, p) in &after.merchants {
        if before.merchants.get(m) != Some(p) {
            let was = before.merchants.get(m).map_or("(default)", String::as_str);
            said.push(format!("merchant {m}: {was} -> {p}"));
        }
    }
    for (n, s) in &after.partitions {
        if before.partitions.get(n) != Some(s) {
            said.push(format!(
                "partition {n}: spill_to {:?} -> {s:?}",
                before.partitions.get(n)
            ));
        }
    }
    if said.is_empty() {
        "nothing".into()
    } else {
        said.join("; ")
    }
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
