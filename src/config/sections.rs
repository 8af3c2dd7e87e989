//! The settings sections other than the routing table: server, storage,
//! sequence, dispatcher, group commit, supervisor, admin and log.

use super::urls::mask_url;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    pub host: String,
    pub port: u16,
    /// HTTP worker threads; defaults to the number of cores.
    pub workers: Option<usize>,
    /// Threads the unit actors run on, units spread over them in turn;
    /// defaults to half the cores (at least one). Each unit keeps its own
    /// actor, pools and sequence whatever the count: threads are only where
    /// their work is polled, and fewer of them mean fewer wake-ups per create.
    pub unit_threads: Option<usize>,
    /// How long shutdown waits for in-flight requests before closing pools.
    pub shutdown_timeout_secs: u64,
    /// Upper bound on the time one request may spend inside the engine.
    pub request_timeout_ms: u64,
    /// Requests served at once; more are shed with `429 overloaded`.
    pub max_in_flight: usize,
    /// Connections the kernel queues before the engine accepts them (capped
    /// by `net.core.somaxconn`). Past it, new connections wait a second for a
    /// SYN retransmit.
    pub backlog: u32,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8080,
            workers: None,
            unit_threads: None,
            shutdown_timeout_secs: 30,
            request_timeout_ms: 5_000,
            max_in_flight: 4_096,
            backlog: 1_024,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSettings {
    /// Connections per unit pool (MySQL). SQLite writes use one connection per unit.
    pub max_connections: u32,
    /// How long a query waits for a free connection before the unit counts as busy.
    pub acquire_timeout_ms: u64,
    /// How long start-up waits for a unit's database.
    pub connect_timeout_ms: u64,
    /// Bound on each statement of a transaction. One that runs out before
    /// `COMMIT` is a definite failure (rolled back); at `COMMIT`, an unknown outcome.
    /// Also how long shutdown waits for a unit's busy connections.
    pub statement_timeout_ms: u64,
    /// Eventual reads skip a replica measured further behind than this.
    pub replica_max_lag_ms: u64,
    /// Budget of an eventual read's replica attempt (and of each replica
    /// check); the primary, when the read falls back to it, has its own.
    pub replica_read_timeout_ms: u64,
    /// How long a read with a consistency token waits for the replica to
    /// apply the write before going to the primary.
    pub replica_wait_ms: u64,
    /// How long a failover waits for the chosen replica to apply what it
    /// has (emergency) or to catch up with the old primary (planned).
    pub failover_catch_up_ms: u64,
}

impl Default for StorageSettings {
    fn default() -> Self {
        Self {
            max_connections: 16,
            acquire_timeout_ms: 2_000,
            connect_timeout_ms: 5_000,
            statement_timeout_ms: 2_000,
            replica_max_lag_ms: 1_000,
            replica_read_timeout_ms: 250,
            replica_wait_ms: 100,
            failover_catch_up_ms: 30_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SequenceSettings {
    /// Numbers taken from the database per segment.
    pub step: u64,
    /// Fetch the next segment in the background once this percentage of the
    /// current one is used.
    pub prefetch_at_percent: u8,
}

impl Default for SequenceSettings {
    fn default() -> Self {
        Self {
            step: 1_000,
            prefetch_at_percent: 10,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DispatcherSettings {
    pub default_partition: String,
    /// The window over which recent creates per unit are counted for balancing.
    pub recent_window_secs: u64,
    /// Messages a unit actor queues before callers wait (backpressure).
    pub unit_mailbox: usize,
    /// Units a create may try (order retry) before `503 no_unit_available`.
    pub max_attempts: u32,
}

impl Default for DispatcherSettings {
    fn default() -> Self {
        Self {
            default_partition: "standard".into(),
            recent_window_secs: 10,
            unit_mailbox: 1_024,
            max_attempts: 3,
        }
    }
}

/// Group commit: a unit writes concurrent creates in shared transactions.
/// A unit runs at most `max_in_flight_batches` create transactions at once;
/// creates that arrive meanwhile queue and go together (up to `max_batch`)
/// when one finishes, so an idle unit adds no latency and a busy one writes
/// many orders per commit. A batch also waits up to `window_us` for company
/// when the unit's recent create rate says company comes within it and
/// grows the batch by at least a quarter (0: never waits).
/// Pays and closes, and refunds, batch the same way (without `overlap_at`
/// and `window_us`), and `enabled = false` writes each alone. Gets and key
/// look-ups always batch within `max_batch` and `max_in_flight_batches`.
/// Batches leave in a few sizes only (1, 2, 3, 4, 6, 8, 12, ...; see
/// `domain::shapes`), so `max_batch` is at most 128 and is rounded down to
/// one of them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GroupCommitSettings {
    pub enabled: bool,
    pub max_batch: usize,
    pub max_in_flight_batches: usize,
    /// A batch starts beside a running one only when at least this many
    /// creates wait; fewer wait for the running batch and go together. The
    /// first batch always starts at once.
    pub overlap_at: usize,
    /// The longest a batch waits for company, when the unit's create rate
    /// says it comes (`group_commit::Batcher::waits_for_company`).
    pub window_us: u64,
}

impl Default for GroupCommitSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            max_batch: 64,
            // Measured (docs/performance.md): 2 beats 4, 8 and 16 on a 2-core
            // machine, because bigger batches cost the database less CPU.
            max_in_flight_batches: 2,
            // Measured (docs/performance.md): below the peak, fuller batches
            // cost the database fewer statements, which is what cuts the tail.
            overlap_at: 16,
            // Measured (docs/performance.md): at half the peak, MariaDB CPU
            // per create -15%, p50 +0.3 ms, p99 the same; a slow unit never waits.
            window_us: 200,
        }
    }
}

/// Health checking and circuit breaking (see `domain::circuit`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisorSettings {
    pub probe_interval_ms: u64,
    pub probe_timeout_ms: u64,
    /// A probe slower than this counts as a failure.
    pub slow_probe_ms: u64,
    pub consecutive_failures: u32,
    pub failure_rate_percent: u8,
    pub failure_window_secs: u64,
    pub min_calls_in_window: u64,
    pub open_secs: u64,
    pub max_open_secs: u64,
    pub half_open_successes: u32,
    pub half_open_permits: u32,
    /// Below this share of healthy units a partition stops trusting health.
    pub panic_threshold_percent: u8,
}

impl Default for SupervisorSettings {
    fn default() -> Self {
        Self {
            probe_interval_ms: 1_000,
            probe_timeout_ms: 1_000,
            slow_probe_ms: 250,
            consecutive_failures: 5,
            failure_rate_percent: 50,
            failure_window_secs: 10,
            min_calls_in_window: 20,
            open_secs: 5,
            max_open_secs: 60,
            half_open_successes: 3,
            half_open_permits: 3,
            panic_threshold_percent: 50,
        }
    }
}

impl SupervisorSettings {
    pub fn circuit(&self) -> crate::domain::circuit::CircuitConfig {
        use std::time::Duration;
        crate::domain::circuit::CircuitConfig {
            consecutive_failures: self.consecutive_failures,
            failure_rate: f64::from(self.failure_rate_percent) / 100.0,
            window: Duration::from_secs(self.failure_window_secs),
            min_calls: self.min_calls_in_window,
            open_for: Duration::from_secs(self.open_secs),
            max_open_for: Duration::from_secs(self.max_open_secs),
            close_after: self.half_open_successes,
            half_open_permits: self.half_open_permits,
        }
    }
}

/// The admin listener. Every call needs `Authorization: Bearer <token>`; with
/// no token configured the admin API is off.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    pub host: String,
    pub port: u16,
    pub token: String,
    /// Where the operator's changes to the routing table are kept across
    /// restarts (`TableState`); none: they last until the process stops.
    /// Not used when `control_url` is set.
    pub state_file: Option<String>,
    /// A MySQL/MariaDB database that several engine processes share the
    /// routing table through (`mysql://user:password@host:port/database`).
    pub control_url: Option<String>,
    /// How often a process asks the control database for a newer table.
    pub control_poll_ms: u64,
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 9091,
            token: String::new(),
            state_file: None,
            control_url: None,
            control_poll_ms: 250,
        }
    }
}

impl std::fmt::Debug for AdminSettings {
    // The token is a secret: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("token", &if self.token.is_empty() { "" } else { "***" })
            .field("state_file", &self.state_file)
            .field("control_url", &self.control_url.as_deref().map(mask_url))
            .field("control_poll_ms", &self.control_poll_ms)
            .finish()
    }
}

/// The outbox relay: every unit's change events published in order
/// (`docs/events.md`).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventSettings {
    /// `false` (the default when a file does not say; both shipped
    /// configs turn it on): nothing is published, events wait in the
    /// outbox. On, it cost a median 12% of the peak creates/s with the
    /// file sink on a 2-core machine (`bench/relay.sh`, docs/performance.md).
    pub relay: bool,
    /// The JSON-lines file events are appended to (relative: to the
    /// working directory, like the embedded units' files), unless
    /// `nats_url` names a broker.
    pub file: String,
    /// A NATS server with JetStream (`nats://host:4222`, credentials in
    /// the URL if it needs them): events are published there instead of
    /// the file.
    pub nats_url: Option<String>,
    /// The JetStream stream, created over `<nats_subject_prefix>.>` when
    /// missing.
    pub nats_stream: String,
    /// Events go to `<prefix>.<unit>.<type>` (`orders.3.order.paid`).
    pub nats_subject_prefix: String,
    /// How often each unit's relay looks for new events.
    pub poll_ms: u64,
    /// Outbox records per publish.
    pub batch: u32,
    /// How long a relay's lease on a unit lasts unless renewed (it renews
    /// at the first poll after a third of it): a relay that dies is
    /// replaced after at most this.
    pub lease_ms: u64,
    /// Published records are deleted from the outbox after this.
    pub retain_published_ms: u64,
}

impl Default for EventSettings {
    fn default() -> Self {
        Self {
            relay: false,
            file: "data/events.jsonl".into(),
            nats_url: None,
            nats_stream: "ORDERS".into(),
            nats_subject_prefix: "orders".into(),
            poll_ms: 200,
            batch: 256,
            lease_ms: 10_000,
            retain_published_ms: 3_600_000,
        }
    }
}

impl std::fmt::Debug for EventSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSettings")
            .field("relay", &self.relay)
            .field("file", &self.file)
            .field("nats_url", &self.nats_url.as_deref().map(mask_url))
            .field("nats_stream", &self.nats_stream)
            .field("nats_subject_prefix", &self.nats_subject_prefix)
            .field("poll_ms", &self.poll_ms)
            .field("batch", &self.batch)
            .field("lease_ms", &self.lease_ms)
            .field("retain_published_ms", &self.retain_published_ms)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `order_engine=debug,sqlx=warn`.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info,sqlx=warn".into(),
        }
    }
}
