//! Typed settings: a TOML file, then environment overrides, then validation.
//!
//! Overrides use `ORDERENGINE__SECTION__KEY=value` (double underscores between
//! path segments). A segment that lands on the `units` array names a unit by its
//! **id**, not its position: `ORDERENGINE__UNITS__3__PRIMARY_URL=mysql://...`
//! repoints unit 3 whatever its place in the file. Values are read as TOML
//! (numbers, booleans) and fall back to plain strings.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::domain::order_id::MAX_UNIT;
use crate::storage::shapes;

pub const ENV_PREFIX: &str = "ORDERENGINE__";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default)]
    pub server: ServerSettings,
    #[serde(default)]
    pub storage: StorageSettings,
    #[serde(default)]
    pub sequence: SequenceSettings,
    #[serde(default)]
    pub dispatcher: DispatcherSettings,
    #[serde(default)]
    pub log: LogSettings,
    #[serde(default)]
    pub supervisor: SupervisorSettings,
    #[serde(default)]
    pub admin: AdminSettings,
    #[serde(default)]
    pub group_commit: GroupCommitSettings,
    pub units: Vec<UnitSettings>,
    /// merchant id -> partition; merchants not listed use `dispatcher.default_partition`.
    #[serde(default)]
    pub merchants: BTreeMap<String, String>,
    /// Partition behaviour, e.g. `[partitions.vip] spill_to = ["standard"]`.
    #[serde(default)]
    pub partitions: BTreeMap<String, PartitionSettings>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
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

#[derive(Debug, Clone, Serialize, Deserialize)]
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
}

impl Default for StorageSettings {
    fn default() -> Self {
        Self {
            max_connections: 16,
            acquire_timeout_ms: 2_000,
            connect_timeout_ms: 5_000,
            statement_timeout_ms: 2_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
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

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DispatcherSettings {
    pub default_partition: String,
    /// The window over which recent creates per unit are counted for balancing.
    pub recent_window_secs: u64,
    /// Messages a unit actor queues before callers wait (backpressure).
    pub unit_mailbox: usize,
    /// Units a create may try (order retry) before `503 no_unit_available`.
    pub max_attempts: u32,
    /// How long a key whose create had an unknown outcome is remembered, so
    /// the caller's retry asks that unit first.
    pub in_doubt_ttl_secs: u64,
    /// Skip asking a unit for a new order's key when the unit's key filter
    /// (its keys at start plus every key this process sent it) rules it out.
    /// Turn it off while a second engine process creates orders in the same
    /// units (its keys are not in this process's filters).
    pub key_filter: bool,
    /// Keys the first part of a unit's key filter holds (it grows by doubling).
    pub key_filter_capacity: u64,
}

impl Default for DispatcherSettings {
    fn default() -> Self {
        Self {
            default_partition: "standard".into(),
            recent_window_secs: 10,
            unit_mailbox: 1_024,
            max_attempts: 3,
            in_doubt_ttl_secs: 600,
            key_filter: true,
            key_filter_capacity: 1 << 20,
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
/// `storage::shapes`), so `max_batch` is at most 128 and is rounded down to
/// one of them.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
            // Measured (README, Performance): 2 beats 4, 8 and 16 on a 2-core
            // machine, because bigger batches cost the database less CPU.
            max_in_flight_batches: 2,
            // Measured (README, Performance): below the peak, fuller batches
            // cost the database fewer statements, which is what cuts the tail.
            overlap_at: 16,
            // Measured (README, Performance): at half the peak, MariaDB CPU
            // per create -15%, p50 +0.3 ms, p99 the same; a slow unit never waits.
            window_us: 200,
        }
    }
}

/// Health checking and circuit breaking (see `domain::circuit`).
#[derive(Debug, Clone, Serialize, Deserialize)]
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
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    pub host: String,
    pub port: u16,
    pub token: String,
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 9091,
            token: String::new(),
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
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
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

/// Operator-set availability of a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UnitMode {
    /// Takes creates, reads and updates.
    #[default]
    Open,
    /// No new orders; reads and updates of its orders continue.
    ReadOnly,
    /// Operator blacklist: nothing is routed to it.
    Disabled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Temperature {
    #[default]
    Hot,
    Warm,
    /// Holds old orders; takes no new ones.
    Cold,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitSettings {
    pub id: u16,
    #[serde(default = "default_partition")]
    pub partition: String,
    #[serde(default)]
    pub mode: UnitMode,
    #[serde(default)]
    pub temperature: Temperature,
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// `mysql://user:pass@host:port/db` or `sqlite://path/to/file.db`.
    pub primary_url: String,
    #[serde(default)]
    pub replica_url: Option<String>,
}

fn default_partition() -> String {
    "standard".into()
}

fn default_weight() -> u32 {
    100
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionSettings {
    /// Partitions this one may spill creates into when it has no usable unit.
    #[serde(default)]
    pub spill_to: Vec<String>,
}

/// Partitions nothing may spill into: canary traffic is opt-in, cold takes no creates.
const NO_SPILL_INTO: [&str; 2] = ["canary", "cold"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: String, message: String },
    #[error("environment override {var}: {message}")]
    Env { var: String, message: String },
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl Settings {
    /// Reads `path`, applies `ORDERENGINE__*` overrides from the process
    /// environment, and validates the result.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text, &path.display().to_string(), std::env::vars())
    }

    /// Parses TOML `text`, applies the overrides among `env`, validates.
    pub fn from_toml(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let parse_err = |message: String| ConfigError::Parse {
            path: origin.to_string(),
            message,
        };
        let mut tree: toml::Value = toml::from_str(text).map_err(|e| parse_err(e.to_string()))?;
        let mut overrides: Vec<_> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        overrides.sort();
        for (var, value) in overrides {
            apply_override(&mut tree, &var, &value)
                .map_err(|message| ConfigError::Env { var, message })?;
        }
        let settings: Settings = tree
            .try_into()
            .map_err(|e: toml::de::Error| parse_err(e.to_string()))?;
        settings.validate()?;
        Ok(settings)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.units.is_empty() {
            return invalid("no units: add at least one [[units]] entry".into());
        }
        if self.server.unit_threads == Some(0) || self.server.workers == Some(0) {
            return invalid("server.workers and server.unit_threads must be at least 1".into());
        }
        if self.server.backlog == 0 || self.server.backlog > i32::MAX as u32 {
            return invalid(format!(
                "server.backlog must be 1 to {}, not {}",
                i32::MAX,
                self.server.backlog
            ));
        }
        let mut seen = HashSet::new();
        for u in &self.units {
            if !seen.insert(u.id) {
                return invalid(format!("duplicate unit id {}", u.id));
            }
            if u.id > MAX_UNIT {
                return invalid(format!("unit id {} is over {MAX_UNIT}", u.id));
            }
            for url in std::iter::once(&u.primary_url).chain(&u.replica_url) {
                if let Err(m) = check_db_url(url) {
                    return invalid(format!("unit {}: {m}", u.id));
                }
            }
        }
        for (name, p) in &self.partitions {
            if let Some(bad) = p
                .spill_to
                .iter()
                .find(|t| NO_SPILL_INTO.contains(&t.as_str()))
            {
                return invalid(format!("partition {name} may not spill into {bad}"));
            }
        }
        if self.sequence.step == 0 || self.sequence.prefetch_at_percent > 100 {
            return invalid("sequence.step must be > 0 and prefetch_at_percent <= 100".into());
        }
        if self.group_commit.max_batch == 0 || self.group_commit.max_in_flight_batches == 0 {
            return invalid("group_commit.max_batch and max_in_flight_batches must be > 0".into());
        }
        if self.group_commit.max_batch > shapes::MAX_ROWS {
            return invalid(format!(
                "group_commit.max_batch must be <= {} (every batch size's statements \
                 must fit each connection's statement cache)",
                shapes::MAX_ROWS
            ));
        }
        if self.dispatcher.max_attempts == 0 {
            return invalid("dispatcher.max_attempts must be > 0".into());
        }
        if self.storage.max_connections == 0 {
            return invalid("storage.max_connections must be > 0".into());
        }
        Ok(())
    }

    /// The partition a merchant's creates go to.
    pub fn partition_of(&self, merchant_id: &str) -> &str {
        self.merchants
            .get(merchant_id)
            .unwrap_or(&self.dispatcher.default_partition)
    }
}

/// Checks that `url` is a database URL this engine can use, naming the problem if not.
pub fn check_db_url(url: &str) -> Result<(), String> {
    let masked = mask_url(url);
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!(
            "malformed database URL {masked:?}: expected mysql://... or sqlite://..."
        ));
    };
    match scheme {
        "mysql" | "mariadb" => {
            let path = rest.split(['?', '#']).next().unwrap_or_default();
            match path.split_once('/') {
                Some((host, db)) if !host.is_empty() && !db.is_empty() && !db.contains('/') => {
                    Ok(())
                }
                _ => Err(format!(
                    "malformed database URL {masked:?}: expected mysql://user:password@host:port/database"
                )),
            }
        }
        "sqlite" if !rest.is_empty() => Ok(()),
        _ => Err(format!(
            "unsupported database URL {masked:?}: expected mysql://... or sqlite://path"
        )),
    }
}

/// `url` with any password replaced by `***`, safe to log and to show operators.
pub fn mask_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => match rest[..at].find(':') {
            Some(colon) => format!("{scheme}://{}:***{}", &rest[..colon], &rest[at..]),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

fn apply_override(tree: &mut toml::Value, var: &str, value: &str) -> Result<(), String> {
    let path: Vec<String> = var[ENV_PREFIX.len()..]
        .split("__")
        .map(str::to_ascii_lowercase)
        .collect();
    if path.iter().any(String::is_empty) {
        return Err("empty path segment".into());
    }
    let (leaf, parents) = path
        .split_last()
        .expect("split yields at least one segment");
    let mut node = tree;
    for seg in parents {
        node = match node {
            toml::Value::Table(t) => t
                .entry(seg.clone())
                .or_insert_with(|| toml::Value::Table(Default::default())),
            toml::Value::Array(items) => {
                let id: i64 = seg
                    .parse()
                    .map_err(|_| format!("{seg:?} is not a unit id"))?;
                items
                    .iter_mut()
                    .find(|i| i.get("id").and_then(toml::Value::as_integer) == Some(id))
                    .ok_or_else(|| format!("no entry with id {id}"))?
            }
            _ => return Err(format!("{seg:?} is below a plain value")),
        };
    }
    let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    match node {
        toml::Value::Table(t) => {
            t.insert(leaf.clone(), parsed);
            Ok(())
        }
        _ => Err(format!("{leaf:?} is below a plain value")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
        [server]
        port = 8080
        [[units]]
        id = 1
        primary_url = "sqlite://data/u1.db"
        [[units]]
        id = 3
        primary_url = "mysql://root:secret@127.0.0.1:3306/unit_3"
    "#;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn environment_overrides_by_unit_id() {
        let s = Settings::from_toml(
            BASE,
            "t",
            env(&[
                ("ORDERENGINE__SERVER__PORT", "9000"),
                ("ORDERENGINE__UNITS__3__PRIMARY_URL", "mysql://u@h:1/other"),
                ("ORDERENGINE__UNITS__3__WEIGHT", "5"),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(s.server.port, 9000);
        assert_eq!(s.units[1].primary_url, "mysql://u@h:1/other");
        assert_eq!(s.units[1].weight, 5);
        assert_eq!(s.units[0].weight, 100);
        let err = Settings::from_toml(BASE, "t", env(&[("ORDERENGINE__UNITS__9__WEIGHT", "1")]));
        assert!(err.unwrap_err().to_string().contains("no entry with id 9"));
    }

    #[test]
    fn rejects_duplicate_ids_bad_urls_and_unknown_keys() {
        let dup = format!("{BASE}\n[[units]]\nid = 1\nprimary_url = \"sqlite://x.db\"\n");
        let e = Settings::from_toml(&dup, "t", []).unwrap_err().to_string();
        assert!(e.contains("duplicate unit id 1"), "{e}");

        let bad = BASE.replace("mysql://root:secret@127.0.0.1:3306/unit_3", "mysql:/oops");
        let e = Settings::from_toml(&bad, "t", []).unwrap_err().to_string();
        assert!(e.contains("unit 3") && e.contains("malformed"), "{e}");

        let no_db = BASE.replace("/unit_3", "");
        let e = Settings::from_toml(&no_db, "t", [])
            .unwrap_err()
            .to_string();
        assert!(e.contains("unit 3"), "{e}");
        assert!(!e.contains("secret"), "password leaked: {e}");

        let unknown = format!("{BASE}\n[server2]\nx = 1\n");
        assert!(Settings::from_toml(&unknown, "t", []).is_err());

        let spill = format!("{BASE}\n[partitions.vip]\nspill_to = [\"canary\"]\n");
        let e = Settings::from_toml(&spill, "t", [])
            .unwrap_err()
            .to_string();
        assert!(e.contains("may not spill into canary"), "{e}");

        let e = Settings::from_toml(BASE, "t", env(&[("ORDERENGINE__SERVER__BACKLOG", "0")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("server.backlog must be 1 to"), "{e}");
        let e = Settings::from_toml(
            BASE,
            "t",
            env(&[("ORDERENGINE__SERVER__UNIT_THREADS", "0")]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("server.unit_threads must be at least 1"), "{e}");

        let batch = |n: &str| {
            Settings::from_toml(
                BASE,
                "t",
                env(&[("ORDERENGINE__GROUP_COMMIT__MAX_BATCH", n)]),
            )
        };
        assert!(batch("128").is_ok());
        let e = batch("129").unwrap_err().to_string();
        assert!(e.contains("group_commit.max_batch must be <= 128"), "{e}");
    }

    #[test]
    fn masks_passwords() {
        assert_eq!(
            mask_url("mysql://root:secret@127.0.0.1:3306/unit_3"),
            "mysql://root:***@127.0.0.1:3306/unit_3"
        );
        assert_eq!(mask_url("mysql://root@h/db"), "mysql://root@h/db");
        assert_eq!(mask_url("sqlite://data/u1.db"), "sqlite://data/u1.db");
    }

    #[test]
    fn shipped_configs_are_valid() {
        for file in ["config/default.toml", "config/mariadb.toml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
            let text = std::fs::read_to_string(&path).unwrap();
            let s = Settings::from_toml(&text, file, []).unwrap();
            assert_eq!(s.units.len(), 4, "{file}");
        }
    }
}
