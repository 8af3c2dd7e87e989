//! Builds the running engine from settings: opens every unit's database,
//! starts one supervised unit actor per unit on its own arbiter, starts the
//! dispatcher, and binds the HTTP listener (port 0 picks a free port).

use std::io;
use std::net::TcpListener;
use std::time::Duration;

use actix::{Actor, Addr, Arbiter, Supervisor};
use actix_web::dev::{Server, ServerHandle};
use actix_web::{App, HttpServer, web};
use futures_util::future::join_all;
use tokio::sync::oneshot;

use crate::actors::dispatcher::{CloseAll, Dispatcher, UnitRoute};
use crate::actors::unit::UnitActor;
use crate::api::{self, AppState};
use crate::config::{Settings, UnitSettings};
use crate::storage::{OpenError, UnitStore};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: io::Error },
    #[error("unit {0}: its arbiter stopped during start-up")]
    ArbiterGone(u16),
}

pub struct Application {
    port: u16,
    server: Server,
    dispatcher: Addr<Dispatcher>,
    arbiters: Vec<Arbiter>,
}

impl Application {
    /// Starts everything; must run inside an actix `System`.
    pub async fn build(settings: Settings) -> Result<Self, StartError> {
        let starts = settings
            .units
            .iter()
            .map(|u| start_unit(u.clone(), &settings));
        let mut routes = Vec::new();
        let mut arbiters = Vec::new();
        let mut first_error = None;
        for (started, unit) in join_all(starts).await.into_iter().zip(&settings.units) {
            match started {
                Ok((addr, arbiter)) => {
                    let window = Duration::from_secs(settings.dispatcher.recent_window_secs);
                    routes.push(UnitRoute::new(unit.clone(), addr, window));
                    arbiters.push(arbiter);
                }
                Err((e, arbiter)) => {
                    arbiter.stop();
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            arbiters.iter().for_each(|a| {
                a.stop();
            });
            return Err(e);
        }
        let dispatcher = Dispatcher::new(&settings, routes).start();

        let addr = format!("{}:{}", settings.server.host, settings.server.port);
        let bind_err = |source| StartError::Bind {
            addr: addr.clone(),
            source,
        };
        let listener = TcpListener::bind(&addr).map_err(bind_err)?;
        let port = listener.local_addr().map_err(bind_err)?.port();
        let state = web::Data::new(AppState {
            dispatcher: dispatcher.clone(),
        });
        let mut server =
            HttpServer::new(move || App::new().app_data(state.clone()).configure(api::configure))
                .shutdown_timeout(settings.server.shutdown_timeout_secs);
        if let Some(n) = settings.server.workers {
            server = server.workers(n);
        }
        let server = server.listen(listener).map_err(bind_err)?.run();
        tracing::info!(%addr, port, units = settings.units.len(), "order-engine listening");
        Ok(Self {
            port,
            server,
            dispatcher,
            arbiters,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server (what SIGTERM does): `run_until_stopped` then drains.
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves until SIGINT/SIGTERM (or `handle().stop()`), then shuts down in
    /// order: stop accepting, let in-flight requests finish, close every
    /// unit's pools, stop the unit arbiters.
    pub async fn run_until_stopped(self) -> io::Result<()> {
        let served = self.server.await;
        tracing::info!("HTTP server stopped; closing units");
        let _ = self.dispatcher.send(CloseAll).await;
        for a in &self.arbiters {
            a.stop();
        }
        served
    }
}

type Started = (Addr<UnitActor>, Arbiter);

/// Opens a unit's database and starts its actor, both on a new arbiter, so the
/// unit's connections belong to the thread that uses them.
async fn start_unit(
    unit: UnitSettings,
    settings: &Settings,
) -> Result<Started, (StartError, Arbiter)> {
    let arbiter = Arbiter::new();
    let (tx, rx) = oneshot::channel();
    let storage = settings.storage.clone();
    let (step, pct) = (
        settings.sequence.step,
        settings.sequence.prefetch_at_percent,
    );
    let mailbox = settings.dispatcher.unit_mailbox;
    let spawned = arbiter.spawn(async move {
        let opened = UnitStore::open(
            unit.id,
            &unit.primary_url,
            unit.replica_url.as_deref(),
            &storage,
        )
        .await
        .map(|store| Supervisor::start(move |_| UnitActor::new(store, step, pct, mailbox)));
        let _ = tx.send(opened);
    });
    if !spawned {
        return Err((StartError::ArbiterGone(unit.id), arbiter));
    }
    match rx.await {
        Ok(Ok(addr)) => Ok((addr, arbiter)),
        Ok(Err(e)) => Err((e.into(), arbiter)),
        Err(_) => Err((StartError::ArbiterGone(unit.id), arbiter)),
    }
}
