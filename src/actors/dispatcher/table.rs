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

use std::collections::{BTreeMap, BTreeSet};
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
use crate::actors::supervisor::{SetSpill, Supervisor, Unwatch, Watch};
use crate::actors::unit::{CloseUnit, FenceWrites};
use crate::config::{PartitionSettings, TableState, UnitEntry, UnitMode, UnitSettings};
use crate::metrics as m;

/// How often a change built on an old table is rebuilt on the store's
/// newer one before it is given up (each rebuild means another process
/// changed the table in between).
const REBUILDS: usize = 5;

/// The routing table as start-up found it, and where its changes are kept.
pub struct SavedTable {
    pub version: u64,
    pub keeper: Keeper,
    /// Units at the database this process's own config names for them: the
    /// only ones whose database may be set up as theirs when found empty.
    pub own: BTreeSet<u16>,
}

pub(super) struct RoutingTable {
    current: ArcSwap<Routing>,
    keeper: Keeper,
    /// Held while a change is built, kept and swapped in (and while a newer
    /// table from the store is taken in).
    changing: tokio::sync::Mutex<()>,
    launcher: UnitLauncher,
    supervisor: Addr<Supervisor>,
    /// How long a repointed unit's old actor is kept for calls in flight.
    grace: Duration,
    /// Units in the table that do not run yet (their database could not
    /// be opened): started again and again until they do.
    pending: Mutex<BTreeMap<u16, Pending>>,
    /// Wakes `start_pending` when a unit is added to `pending`.
    wake: tokio::sync::Notify,
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

/// A unit that does not run yet, and when to try again.
struct Pending {
    how: How,
    tries: u32,
    next_try: Instant,
}

/// How a unit that does not run yet is started.
#[derive(Clone, Copy)]
enum How {
    /// As at start-up: its database may be new (its id and the ring are
    /// recorded in it if absent).
    Join,
    /// A unit the shared table gained or moved: its database must record
    /// it already.
    PickUp,
}

impl Pending {
    fn new(how: How) -> Self {
        Self {
            how,
            tries: 0,
            next_try: Instant::now(),
        }
    }
}

/// The longest wait between two tries to start a unit that does not run.
const MOST_BETWEEN_TRIES: Duration = Duration::from_secs(30);

/// What a change needs started before it can apply.
pub(super) enum Start {
    /// A unit joining the table.
    Join(UnitSettings),
    /// A unit moving to the database these settings name.
    Repoint(UnitSettings),
}

impl RoutingTable {
    pub fn new(
        routing: Routing,
        saved: SavedTable,
        launcher: UnitLauncher,
        supervisor: Addr<Supervisor>,
        grace: Duration,
    ) -> Self {
        publish(&routing);
        gauge!(m::ROUTING_STORE_UP).set(1.0);
        // A unit down at start-up that is a home of keys, or not at its
        // config's database, must find its records where it comes back.
        let pending = routing
            .units
            .iter()
            .filter(|(_, u)| u.addr.is_none())
            .map(|(id, _)| {
                let fresh = saved.own.contains(id) && !routing.ring.units().contains(id);
                (
                    *id,
                    Pending::new(if fresh { How::Join } else { How::PickUp }),
                )
            })
            .collect();
        let keeper = saved.keeper;
        for u in routing.units.values() {
            if let Some(addr) = &u.addr
                && u.settings.mode == UnitMode::Disabled
            {
                addr.do_send(FenceWrites {
                    on: true,
                    after: Duration::ZERO,
                });
            }
        }
        Self {
            current: ArcSwap::from_pointee(routing),
            keeper,
            changing: tokio::sync::Mutex::new(()),
            launcher,
            supervisor,
            grace,
            pending: Mutex::new(pending),
            wake: tokio::sync::Notify::new(),
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
        // Built on the shared table as it is now, not as the last poll saw
        // it: a change "to" what another process just changed away from is
        // a change, and If-Match names the shared version.
        if let Err(e) = self.caught_up().await {
            counter!(m::ROUTING_CHANGES, "outcome" => "not_saved").increment(1);
            return Err(e);
        }
        self.change_held(if_match, who, edit).await
    }

    /// With a shared store: the store's current table taken in (the caller
    /// holds the change lock).
    async fn caught_up(&self) -> Result<(), EngineError> {
        if !self.keeper.is_shared() {
            return Ok(());
        }
        self.catch_up_held()
            .await
            .map_err(EngineError::TableNotSaved)
    }

    /// Whether changes outlive the process (a state file or a control
    /// store): a unit moves to another database only then.
    pub fn keeps_table(&self) -> bool {
        !matches!(self.keeper, Keeper::Memory)
    }

    /// Applies `edit` as [`Self::change`] does, after starting what
    /// `start` asks for (checked against the current table): a unit that
    /// joins, or a unit's actor on the database it moves to. `edit` gets
    /// the started unit, and the table it builds includes it only then. A
    /// unit started for a change that is not applied is closed.
    pub async fn change_starting(
        &self,
        if_match: Option<u64>,
        who: &str,
        start: impl Fn(&Routing) -> Result<Option<Start>, EngineError>,
        edit: impl Fn(&Routing, Option<&UnitRoute>) -> Edit,
    ) -> Result<SharedRouting, EngineError> {
        let _one_at_a_time = self.changing.lock().await;
        if let Err(e) = self.caught_up().await {
            counter!(m::ROUTING_CHANGES, "outcome" => "not_saved").increment(1);
            return Err(e);
        }
        let old = self.load();
        let wanted = match start(&old).and_then(|s| version_is(&old, if_match).map(|()| s)) {
            Ok(wanted) => wanted,
            Err(e) => {
                counter!(m::ROUTING_CHANGES, "outcome" => refusal(&e)).increment(1);
                return Err(e);
            }
        };
        if let Some(Start::Repoint(_)) = &wanted
            && matches!(self.keeper, Keeper::Memory)
        {
            counter!(m::ROUTING_CHANGES, "outcome" => "refused").increment(1);
            return Err(EngineError::TableNotKept);
        }
        if let Some(Start::Join(unit) | Start::Repoint(unit)) = &wanted
            && self.keeper.is_shared()
            && unit.primary_url.starts_with("sqlite:")
        {
            counter!(m::ROUTING_CHANGES, "outcome" => "refused").increment(1);
            return Err(EngineError::InvalidChange {
                field: Some("primary_url"),
                message: "with a control store every unit is a MySQL/MariaDB database (each engine process would open its own SQLite file)".into(),
            });
        }
        let started = match wanted {
            None => None,
            Some(Start::Join(unit)) => Some(self.launcher.join(unit, &old.ring).await),
            Some(Start::Repoint(unit)) => {
                let route = &old.units[&unit.id];
                Some(self.launcher.repoint(route, unit, &old.ring).await)
            }
        };
        let started = match started.transpose() {
            Ok(started) => started,
            Err(e) => {
                counter!(m::ROUTING_CHANGES, "outcome" => "refused").increment(1);
                tracing::warn!(who, error = %e, "routing table change refused");
                return Err(launch_refused(e));
            }
        };
        let answer = self
            .change_held(if_match, who, |t| edit(t, started.as_ref()))
            .await;
        if let Some(route) = &started {
            let joined = answer.as_ref().is_ok_and(|t| {
                t.units
                    .get(&route.settings.id)
                    .is_some_and(|u| u.addr == route.addr)
            });
            if !joined && let Some(addr) = &route.addr {
                // Not in the table: nothing will call it.
                let _ = addr.send(CloseUnit).await;
            }
        }
        answer
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
        let next = self.routing_for(&old, &state).await;
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

    /// `old` made into the whole table `state`: units it gained are
    /// started, and units whose database moved are started on the new one;
    /// one that cannot start here yet joins as not running (its calls
    /// answer `503`) and is retried, so that one bad unit never keeps a
    /// process on an old table.
    async fn routing_for(&self, old: &Routing, state: &TableState) -> Routing {
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
            let settings = entry.settings(*id);
            if let Some(route) = next.units.get_mut(id) {
                let now = &route.settings;
                if (&now.primary_url, &now.replica_urls)
                    == (&entry.primary_url, &entry.replica_urls)
                {
                    entry.routing().apply_to(&mut route.settings);
                    continue;
                }
            }
            // Started outside the table's lock (`start_pending`, woken
            // now): until then its calls answer 503, and a moved unit's old
            // actor is no longer used (the others moved away from it).
            self.pending
                .lock()
                .expect("not poisoned")
                .insert(*id, Pending::new(How::PickUp));
            self.wake.notify_one();
            let why = LaunchError::Unavailable {
                unit: *id,
                message: "starting on its database from the shared table".into(),
            };
            let route = match old.units.get(id) {
                Some(was) => {
                    self.launcher.unstarted(settings.clone(), &why);
                    was.repointed(settings, None, None)
                }
                None => self.launcher.unstarted(settings, &why),
            };
            next.units.insert(*id, route);
        }
        next
    }

    /// Tries to start the units of the table that do not run (at most every
    /// 30 s each), for as long as the process runs.
    pub async fn start_pending(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.wake.notified() => {}
            }
            let due: Vec<(u16, How)> = self
                .pending
                .lock()
                .expect("not poisoned")
                .iter()
                .filter(|(_, p)| p.next_try <= Instant::now())
                .map(|(id, p)| (*id, p.how))
                .collect();
            for (id, how) in due {
                self.start_one(id, how).await;
            }
        }
    }

    async fn start_one(&self, id: u16, how: How) {
        let table = self.load();
        let Some(route) = table.units.get(&id).filter(|r| r.addr.is_none()) else {
            self.pending.lock().expect("not poisoned").remove(&id);
            return;
        };
        let settings = route.settings.clone();
        let started = match how {
            How::Join => self.launcher.join(settings, &table.ring).await,
            How::PickUp => self.launcher.pick_up(settings, &table.ring).await,
        };
        let started = match started {
            Ok(started) => started,
            Err(e) => {
                let mut pending = self.pending.lock().expect("not poisoned");
                if let Some(p) = pending.get_mut(&id) {
                    p.tries += 1;
                    let wait =
                        Duration::from_secs(1 << (p.tries - 1).min(5)).min(MOST_BETWEEN_TRIES);
                    p.next_try = Instant::now() + wait;
                    tracing::warn!(unit = id, error = %e, retry_in = ?wait, "unit still cannot start");
                }
                self.launcher.still_down(id, &e);
                return;
            }
        };
        let _one_at_a_time = self.changing.lock().await;
        let now = self.load();
        let fits = now.units.get(&id).filter(|r| {
            r.addr.is_none()
                && (&r.settings.primary_url, &r.settings.replica_urls)
                    == (
                        &started.settings.primary_url,
                        &started.settings.replica_urls,
                    )
        });
        let Some(current) = fits else {
            // The table moved it meanwhile: the next try follows it.
            if let Some(addr) = &started.addr {
                let _ = addr.send(CloseUnit).await;
            }
            return;
        };
        let mut next = (*now).clone();
        let route = current.repointed(
            current.settings.clone(),
            started.addr.clone(),
            started.replication.clone(),
        );
        next.units.insert(id, route);
        self.pending.lock().expect("not poisoned").remove(&id);
        tracing::info!(unit = id, "unit started: it takes calls");
        self.install(next);
    }

    /// Swaps `next` in, and tells the supervisor what changed for it.
    fn install(&self, next: Routing) -> SharedRouting {
        let old = self.load();
        let next = Arc::new(next);
        self.current.store(next.clone());
        publish(&next);
        for (id, u) in &next.units {
            let s = &u.settings;
            let was = old.units.get(id);
            if let Some(old_addr) = was
                .filter(|w| w.addr != u.addr)
                .and_then(|w| w.addr.clone())
            {
                // Moved: calls in flight finish on the old database.
                let grace = self.grace;
                actix::spawn(async move {
                    tokio::time::sleep(grace).await;
                    let _ = old_addr.send(CloseUnit).await;
                });
            }
            let seen = |r: &UnitRoute| {
                let s = &r.settings;
                (
                    s.partition.clone(),
                    s.mode,
                    r.takes_creates(),
                    r.addr.clone(),
                )
            };
            // It probes each unit's actor, counts the units that take
            // creates per partition for panic mode, and leaves disabled
            // units unprobed.
            if was.map(seen) != Some(seen(u)) {
                match &u.addr {
                    Some(addr) => self.supervisor.do_send(Watch {
                        unit: *id,
                        addr: addr.clone(),
                        partition: s.partition.clone(),
                        mode: s.mode,
                        takes_creates: u.takes_creates(),
                    }),
                    None => self.supervisor.do_send(Unwatch { unit: *id }),
                }
            }
            let new_actor = was.is_none_or(|w| w.addr != u.addr);
            if u.addr.is_some() && new_actor {
                // A new actor: its circuit starts closed, no start error.
                self.launcher.started(*id);
            }
            let was_disabled = was.is_some_and(|w| w.settings.mode == UnitMode::Disabled);
            let disabled = s.mode == UnitMode::Disabled;
            if let Some(addr) = &u.addr
                && (new_actor || was_disabled != disabled)
            {
                // A disabled unit's database takes no writes once calls in
                // flight had their time (an actor that just started has
                // none), so that it can be copied elsewhere.
                let after = if new_actor {
                    Duration::ZERO
                } else {
                    self.grace
                };
                addr.do_send(FenceWrites {
                    on: disabled,
                    after,
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

/// The table's version and each unit's weight, mode and partition, as
/// gauges.
fn publish(table: &Routing) {
    gauge!(m::ROUTING_VERSION).set(table.version as f64);
    let partitions = table.known_partitions();
    for (id, u) in &table.units {
        let label = id.to_string();
        gauge!(m::UNIT_WEIGHT, "unit" => label.clone()).set(f64::from(u.settings.weight));
        for p in &partitions {
            let on = if u.settings.partition == *p { 1.0 } else { 0.0 };
            gauge!(m::UNIT_PARTITION, "unit" => label.clone(), "partition" => p.to_string())
                .set(on);
        }
        let running = if u.addr.is_some() { 1.0 } else { 0.0 };
        gauge!(m::UNIT_RUNNING, "unit" => label.clone()).set(running);
        for mode in [UnitMode::Open, UnitMode::ReadOnly, UnitMode::Disabled] {
            let on = if u.settings.mode == mode { 1.0 } else { 0.0 };
            gauge!(m::UNIT_MODE, "unit" => label.clone(), "mode" => mode.as_str()).set(on);
        }
    }
}
