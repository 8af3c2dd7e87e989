//! Builds the running engine from settings: opens every unit's database,
//! starts one supervised unit actor per unit on the unit threads, the health
//! supervisor and the dispatcher, and binds the HTTP listeners (port 0 picks a
//! free port). `Addr`s are handed over explicitly: no global registry.

use std::collections::BTreeSet;
use std::io;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, Addr, Arbiter};
use actix_web::dev::{Server, ServerHandle};
use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};
use futures_util::future::join_all;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::actors::dispatcher::{
    CloseAll, Dispatcher, Keeper, LaunchError, SavedTable, UnitLauncher, UnitRoute, shared_table,
};
use crate::actors::health::HealthBoard;
use crate::actors::supervisor::{Supervisor, Watch};
use crate::actors::unit::{RelayOptions, SettleMeta, UnitActor};
use crate::api::middleware::{Admission, observe};
use crate::api::{self, AdminToken, AppState};
use crate::config::{Settings, TableState, mask_url};
use crate::domain::key_homes::KeyRing;
use crate::relay::{FileSink, NatsSink, Sink};
use crate::storage::{ControlStore, Dialect};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Launch(#[from] LaunchError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: io::Error },
    #[error("the key ring: {0}")]
    KeyRing(String),
    #[error("the routing state file: {0}")]
    TableState(String),
}

pub struct Application {
    port: u16,
    admin_port: Option<u16>,
    server: Server,
    admin: Option<Server>,
    dispatcher: Addr<Dispatcher>,
    arbiters: Vec<Arbiter>,
}

impl Application {
    /// Starts everything, in this order; must run inside an actix `System`.
    /// A failure stops whatever had started.
    pub async fn build(mut settings: Settings) -> Result<Self, StartError> {
        let listeners = Listeners::bind(&settings)?;
        let metrics = install_metrics(&settings);
        let own_urls: Vec<(u16, String)> = settings
            .units
            .iter()
            .map(|u| (u.id, u.primary_url.clone()))
            .collect();
        let mut saved = restore_table(&mut settings).await?;
        saved.own = settings
            .units
            .iter()
            .filter(|u| own_urls.contains(&(u.id, u.primary_url.clone())))
            .map(|u| u.id)
            .collect();
        let board = Arc::new(HealthBoard::new(settings.units.iter().map(|u| u.id)));
        let mut arbiters = unit_arbiters(&settings);
        let handles = arbiters.iter().map(Arbiter::handle).collect();
        let launcher =
            UnitLauncher::new(&settings, handles, board.clone(), relay_options(&settings));
        let routes = match start_units(&settings, &launcher, &saved.own).await {
            Ok(routes) => routes,
            Err(e) => return Err(stop_started(&arbiters, None, e)),
        };
        let ring = match settle_key_ring(&settings, &routes).await {
            Ok(ring) => ring,
            Err(e) => return Err(stop_started(&arbiters, None, e)),
        };
        let supervisor = start_supervisor(&settings, &board, &routes, &mut arbiters);
        let shard = Dispatcher::new(&settings, routes, ring, saved, launcher, supervisor);
        let poll = Duration::from_millis(settings.admin.control_poll_ms);
        actix_web::rt::spawn(shard.keep_table(poll));
        // This shard serves status, the admin API and shutdown; every HTTP
        // worker starts its own on its own thread (see the dispatcher's docs).
        let dispatcher = shard.clone().start();
        let server = match serve_public(&settings, listeners.public, shard, metrics) {
            Ok(server) => server,
            Err(e) => return Err(stop_started(&arbiters, None, e)),
        };
        let admin = match listeners.admin {
            Some(listener) => match serve_admin(&settings, listener, dispatcher.clone()) {
                Ok(admin) => Some(admin),
                Err(e) => return Err(stop_started(&arbiters, Some(&server), e)),
            },
            None => {
                tracing::warn!("admin.token is empty: the admin API is off");
                None
            }
        };
        Ok(Self {
            port: listeners.port,
            admin_port: admin.as_ref().map(|(_, port)| *port),
            server,
            admin: admin.map(|(server, _)| server),
            dispatcher,
            arbiters,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The admin listener's port, when the admin API is on.
    pub fn admin_port(&self) -> Option<u16> {
        self.admin_port
    }

    /// Stops the server (what SIGTERM does): `run_until_stopped` then drains.
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves until SIGINT/SIGTERM (or `handle().stop()`), then shuts down in
    /// order: stop accepting, let in-flight requests finish, stop the admin
    /// listener, close every unit's pools, stop the unit arbiters.
    pub async fn run_until_stopped(self) -> io::Result<()> {
        let admin_handle = self.admin.as_ref().map(Server::handle);
        if let Some(admin) = self.admin {
            actix_web::rt::spawn(admin);
        }
        let served = self.server.await;
        if let Some(h) = admin_handle {
            h.stop(true).await;
        }
        tracing::info!("HTTP server stopped; closing units");
        let _ = self.dispatcher.send(CloseAll).await;
        for a in &self.arbiters {
            a.stop();
        }
        served
    }
}

/// Stops what start-up had started before it failed with `error`.
fn stop_started(arbiters: &[Arbiter], server: Option<&Server>, error: StartError) -> StartError {
    if let Some(server) = server {
        // The command is sent now; nobody waits for it to finish.
        drop(server.handle().stop(false));
    }
    for a in arbiters {
        a.stop();
    }
    error
}

/// The listening sockets, bound before anything starts: a taken port stops
/// start-up before any unit is opened.
struct Listeners {
    public: TcpListener,
    port: u16,
    /// Only when the admin API is on (a token is set).
    admin: Option<TcpListener>,
}

impl Listeners {
    fn bind(settings: &Settings) -> Result<Self, StartError> {
        let addr = format!("{}:{}", settings.server.host, settings.server.port);
        let public = bind(&addr, settings.server.backlog)?;
        let port = public.local_addr().map_err(bind_err(&addr))?.port();
        let admin = if settings.admin.token.is_empty() {
            None
        } else {
            let addr = format!("{}:{}", settings.admin.host, settings.admin.port);
            Some(bind(&addr, settings.server.backlog)?)
        };
        Ok(Self {
            public,
            port,
            admin,
        })
    }
}

/// Installs the metrics recorder, creates every unit's and partition's
/// series at zero, and keeps the exporter's upkeep running.
fn install_metrics(settings: &Settings) -> PrometheusHandle {
    let metrics = crate::metrics::install();
    for u in &settings.units {
        let most =
            Dialect::of_url(&u.primary_url).most_connections(settings.storage.max_connections);
        crate::metrics::init_unit(u.id, most);
        crate::metrics::set_replicas(u.id, u.replica_urls.len());
        crate::metrics::init_partition(&u.partition);
    }
    // The exporter folds histogram samples in on upkeep; keep it regular.
    let upkeep = metrics.clone();
    actix_web::rt::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    metrics
}

/// The routing table as the operator left it. With a control store: the
/// table it holds (seeded from this config the first time, and given what
/// this config adds). With a state file: the config with the changes kept
/// there applied over it. `settings` routes by it from then on.
async fn restore_table(settings: &mut Settings) -> Result<SavedTable, StartError> {
    let config = settings.table_state();
    let admin = settings.admin.clone();
    if let Some(url) = &admin.control_url {
        if let Some(path) = &admin.state_file {
            tracing::info!(
                path,
                "admin.state_file is not used: the control store keeps the routing table"
            );
        }
        let who = format!("engine process {} (start-up)", std::process::id());
        let store = ControlStore::open(url)
            .await
            .map_err(|e| StartError::TableState(e.to_string()))?;
        let table = shared_table(&store, &config, &who)
            .await
            .map_err(|e| StartError::TableState(e.to_string()))?;
        for (id, unit) in &table.units {
            match config.units.get(id) {
                Some(own) if own != unit => {
                    tracing::warn!(unit = id, config = ?own, table = ?unit, "the shared routing table overrides the config for this unit")
                }
                None => {
                    tracing::info!(unit = id, table = ?unit, "a unit of the shared routing table that the config does not name")
                }
                Some(_) => {}
            }
        }
        tracing::info!(version = table.version, url = %mask_url(url), "routing table from the control store");
        settings.route_by(&table);
        settings
            .validate()
            .map_err(|e| StartError::TableState(format!("the control store's table: {e}")))?;
        return Ok(SavedTable {
            own: BTreeSet::new(),
            version: table.version,
            keeper: Keeper::Control(store),
        });
    }
    let Some(path) = admin.state_file else {
        if !admin.token.is_empty() {
            tracing::warn!(
                "admin.state_file is not set: routing changes made through the admin API last until this process stops"
            );
        }
        return Ok(SavedTable {
            own: BTreeSet::new(),
            version: 1,
            keeper: Keeper::Memory,
        });
    };
    let kept = TableState::load(Path::new(&path)).map_err(StartError::TableState)?;
    let version = kept.as_ref().map_or(1, |k| k.version.max(1));
    if let Some(changes) = kept {
        let (table, dropped) = config.with_file_changes(changes.clone());
        for id in dropped {
            tracing::warn!(
                unit = id,
                path,
                "the routing state file names a unit the config no longer has; ignored"
            );
        }
        for (id, unit) in &changes.units {
            match config.units.get(id) {
                Some(own) => {
                    tracing::warn!(unit = id, config = ?own, kept = ?unit, path, "an operator's change overrides the config for this unit")
                }
                None if !unit.primary_url.is_empty() => {
                    tracing::warn!(unit = id, kept = ?unit, path, "a unit an operator added (the config does not name it)")
                }
                None => {}
            }
        }
        for (merchant, partition) in &changes.merchants {
            tracing::warn!(
                merchant,
                partition,
                path,
                "an operator's change overrides the config for this merchant"
            );
        }
        for (name, spill_to) in &changes.partitions {
            tracing::warn!(
                partition = name,
                ?spill_to,
                path,
                "an operator's change overrides the config for this partition"
            );
        }
        tracing::info!(version, path, "routing table changes restored");
        settings.route_by(&table);
        settings
            .validate()
            .map_err(|e| StartError::TableState(e.to_string()))?;
    }
    Ok(SavedTable {
        own: BTreeSet::new(),
        version,
        keeper: Keeper::File {
            path: path.into(),
            config,
        },
    })
}

/// The threads the unit actors share.
fn unit_arbiters(settings: &Settings) -> Vec<Arbiter> {
    (0..unit_threads(settings))
        .map(|_| Arbiter::new())
        .collect()
}

/// Opens every unit's database and starts its actor (spread over the unit
/// threads in turn), all at once. A unit whose database cannot be opened
/// starts down (its calls answer `503`; starting it is retried); one whose
/// database belongs to another unit or deployment stops start-up.
async fn start_units(
    settings: &Settings,
    launcher: &UnitLauncher,
    own: &BTreeSet<u16>,
) -> Result<Vec<UnitRoute>, StartError> {
    let started = join_all(settings.units.iter().map(|u| async {
        // A unit not at its config's database (added or moved through the
        // admin API) must find its database set up already.
        if own.contains(&u.id) {
            launcher.start(u.clone()).await
        } else {
            launcher.start_existing(u.clone()).await
        }
    }))
    .await;
    let mut routes = Vec::with_capacity(started.len());
    for (unit, started) in settings.units.iter().zip(started) {
        match started {
            Ok(route) => routes.push(route),
            Err(e @ LaunchError::Refused { .. }) => return Err(e.into()),
            Err(e) => {
                tracing::error!(unit = unit.id, error = %e, "unit starts down: its calls answer 503 until its database answers");
                routes.push(launcher.unstarted(unit.clone(), &e));
            }
        }
    }
    Ok(routes)
}

/// The key ring every engine process uses: the one the units' databases
/// hold, or, the first time they meet, every configured unit. It is written
/// to each unit that lacks it (a unit added later gets the ring as it was,
/// so no key's homes move). Units that hold different rings stop start-up.
async fn settle_key_ring(settings: &Settings, all: &[UnitRoute]) -> Result<KeyRing, StartError> {
    const NAME: &str = "key_ring";
    // Units that start down are given the ring when they start (and are
    // refused if they hold another).
    let routes: Vec<(&UnitRoute, &Addr<UnitActor>)> = all
        .iter()
        .filter_map(|r| Some((r, r.addr.as_ref()?)))
        .collect();
    let read = || {
        join_all(routes.iter().map(|(r, addr)| {
            let msg = SettleMeta {
                name: NAME,
                proposed: None,
            };
            async move {
                match addr.send(msg).await {
                    Ok(Ok(value)) => Ok(value),
                    Ok(Err(e)) => Err(format!("unit {}: {e}", r.settings.id)),
                    Err(e) => Err(format!("unit {}: {e}", r.settings.id)),
                }
            }
        }))
    };
    let stored: Vec<Option<String>> = read()
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .map_err(StartError::KeyRing)?;
    let mut known: Vec<&String> = stored.iter().flatten().collect();
    known.sort();
    known.dedup();
    let down: Vec<u16> = all
        .iter()
        .filter(|r| r.addr.is_none())
        .map(|r| r.settings.id)
        .collect();
    let ring = match known.as_slice() {
        // The first start: the ring is every configured unit. Made up while
        // a unit is down, it could differ from the one that unit holds.
        [] if !down.is_empty() => {
            return Err(StartError::KeyRing(format!(
                "no unit that answers holds the key ring yet, and units {down:?} do not answer: the first start needs every unit's database"
            )));
        }
        [] => KeyRing::new(settings.units.iter().map(|u| u.id).collect())
            .ok_or_else(|| StartError::KeyRing("no units".into()))?,
        [one] => KeyRing::decode(one)
            .ok_or_else(|| StartError::KeyRing(format!("unreadable ring {one:?}")))?,
        many => {
            return Err(StartError::KeyRing(format!(
                "the units' databases hold different rings: {many:?}"
            )));
        }
    };
    // Units without it get it one at a time, lowest id first, so that two
    // processes starting at once on new databases agree: the first unit
    // keeps whichever proposal came first, and both go on with that.
    let mut ring = ring;
    let mut agreed = !known.is_empty();
    let mut missing: Vec<(&UnitRoute, &Addr<UnitActor>)> = routes
        .iter()
        .zip(&stored)
        .filter(|(_, s)| s.is_none())
        .map(|(r, _)| *r)
        .collect();
    missing.sort_by_key(|(r, _)| r.settings.id);
    for (route, addr) in missing {
        let msg = SettleMeta {
            name: NAME,
            proposed: Some(ring.encode()),
        };
        let fixed = match addr.send(msg).await {
            Ok(Ok(Some(value))) => value,
            Ok(Ok(None)) => String::new(),
            Ok(Err(e)) => {
                return Err(StartError::KeyRing(format!(
                    "unit {}: {e}",
                    route.settings.id
                )));
            }
            Err(e) => {
                return Err(StartError::KeyRing(format!(
                    "unit {}: {e}",
                    route.settings.id
                )));
            }
        };
        if fixed != ring.encode() {
            match KeyRing::decode(&fixed) {
                Some(theirs) if !agreed => ring = theirs,
                _ => {
                    return Err(StartError::KeyRing(format!(
                        "unit {} holds the ring {fixed:?}, others {:?}",
                        route.settings.id,
                        ring.encode()
                    )));
                }
            }
        }
        agreed = true;
    }
    tracing::info!(ring = %ring.encode(), "key ring");
    Ok(ring)
}

/// Starts the supervisor on a thread of its own (it folds in a report per
/// unit call, which must not compete with the dispatcher for the
/// dispatcher's thread) and tells it about every unit.
fn start_supervisor(
    settings: &Settings,
    board: &Arc<HealthBoard>,
    routes: &[UnitRoute],
    arbiters: &mut Vec<Arbiter>,
) -> Addr<Supervisor> {
    let arbiter = Arbiter::new();
    let supervisor = {
        let (board, supervision, partitions) = (
            board.clone(),
            settings.supervisor.clone(),
            settings.partitions.clone(),
        );
        Supervisor::start_in_arbiter(&arbiter.handle(), move |_| {
            Supervisor::new(board, supervision, partitions)
        })
    };
    arbiters.push(arbiter);
    for (r, addr) in routes.iter().filter_map(|r| Some((r, r.addr.clone()?))) {
        supervisor.do_send(Watch {
            unit: r.settings.id,
            addr,
            partition: r.settings.partition.clone(),
            mode: r.settings.mode,
            takes_creates: r.takes_creates(),
        });
    }
    supervisor
}

/// Serves the public routes on `listener`; each HTTP worker starts its own
/// dispatcher shard on its own thread.
fn serve_public(
    settings: &Settings,
    listener: TcpListener,
    shard: Dispatcher,
    metrics: PrometheusHandle,
) -> Result<Server, StartError> {
    let addr = format!("{}:{}", settings.server.host, settings.server.port);
    let port = listener.local_addr().map_err(bind_err(&addr))?.port();
    let admission = web::Data::new(Admission::new(settings.server.max_in_flight));
    let metrics = web::Data::new(metrics);
    let mut server = HttpServer::new(move || {
        // Runs once on each worker's thread.
        let app_state = web::Data::new(AppState {
            dispatcher: shard.clone().start(),
        });
        App::new()
            .app_data(app_state)
            .app_data(admission.clone())
            .app_data(metrics.clone())
            .wrap(from_fn(observe))
            .configure(api::configure)
    })
    .shutdown_timeout(settings.server.shutdown_timeout_secs);
    if let Some(n) = settings.server.workers {
        server = server.workers(n);
    }
    let server = server.listen(listener).map_err(bind_err(&addr))?.run();
    tracing::info!(%addr, port, units = settings.units.len(), "order-engine listening");
    Ok(server)
}

/// Serves the admin routes on `listener` (one worker, the status shard);
/// returns the server and its port.
fn serve_admin(
    settings: &Settings,
    listener: TcpListener,
    dispatcher: Addr<Dispatcher>,
) -> Result<(Server, u16), StartError> {
    let addr = format!("{}:{}", settings.admin.host, settings.admin.port);
    let port = listener.local_addr().map_err(bind_err(&addr))?.port();
    let state = web::Data::new(AppState { dispatcher });
    let token = web::Data::new(AdminToken::new(&settings.admin.token));
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(token.clone())
            .configure(api::configure_admin)
    })
    .workers(1)
    .shutdown_timeout(settings.server.shutdown_timeout_secs)
    .listen(listener)
    .map_err(bind_err(&addr))?
    .run();
    tracing::info!(%addr, port, "admin API listening");
    Ok((server, port))
}

/// A listening socket on the first of `addr`'s addresses that binds, with
/// `backlog` (std's `TcpListener::bind` always uses 128).
fn bind(addr: &str, backlog: u32) -> Result<TcpListener, StartError> {
    use socket2::{Domain, Socket, Type};
    let backlog = i32::try_from(backlog).expect("validated: at most i32::MAX");
    let listen = |a: SocketAddr| -> io::Result<TcpListener> {
        let socket = Socket::new(Domain::for_address(a), Type::STREAM, None)?;
        // As std does: a restart may bind while old connections are in TIME_WAIT.
        socket.set_reuse_address(true)?;
        socket.bind(&a.into())?;
        socket.listen(backlog)?;
        Ok(socket.into())
    };
    let mut last = io::Error::new(io::ErrorKind::InvalidInput, "no address to bind");
    for a in addr.to_socket_addrs().map_err(bind_err(addr))? {
        match listen(a) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = e,
        }
    }
    Err(bind_err(addr)(last))
}

fn bind_err(addr: &str) -> impl Fn(io::Error) -> StartError + '_ {
    move |source| StartError::Bind {
        addr: addr.to_string(),
        source,
    }
}

/// How many threads the unit actors share: `server.unit_threads`, by default
/// half the cores, never more than there are units.
fn unit_threads(settings: &Settings) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let wanted = settings.server.unit_threads.unwrap_or(cores / 2);
    wanted.clamp(1, settings.units.len().max(1))
}

/// The outbox relay every unit runs (`[events]`), with this process's
/// name for the units' relay leases.
fn relay_options(settings: &Settings) -> Option<RelayOptions> {
    let ev = &settings.events;
    if !ev.relay {
        return None;
    }
    let sink = match ev.nats_url.as_deref().filter(|u| !u.is_empty()) {
        Some(url) => Sink::Nats(Box::new(NatsSink::new(
            url,
            &ev.nats_stream,
            &ev.nats_subject_prefix,
        ))),
        None => Sink::File(FileSink::new(&ev.file)),
    };
    let holder = format!("pid-{}-{:08x}", std::process::id(), rand::random::<u32>());
    tracing::info!(sink = %sink.describe(), holder, "publishing change events");
    Some(RelayOptions {
        sink: Arc::new(sink),
        holder,
        poll: Duration::from_millis(ev.poll_ms),
        batch: ev.batch,
        lease_ms: ev.lease_ms,
        retain_published_ms: ev.retain_published_ms,
    })
}

#[cfg(test)]
mod tests {
    use std::net::TcpStream;
    use std::time::Duration;

    use super::bind;

    /// Connections beyond std's 128 queue up while none is accepted yet: the
    /// kernel completes their handshakes instead of dropping SYNs (which would
    /// cost each a one-second retransmit).
    #[test]
    fn the_listener_queues_the_configured_backlog() {
        let listener = bind("127.0.0.1:0", 400).unwrap();
        let addr = listener.local_addr().unwrap();
        let connected: Vec<TcpStream> = (0..300)
            .map(|i| {
                TcpStream::connect_timeout(&addr, Duration::from_millis(500))
                    .unwrap_or_else(|e| panic!("connection {i} was not queued: {e}"))
            })
            .collect();
        assert_eq!(connected.len(), 300);
        drop(listener);
    }
}
