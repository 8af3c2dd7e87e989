//! Typed settings: a TOML file, then environment overrides (`env.rs`), then
//! validation. The sections are in `sections.rs`, the routing table's
//! entries (units, partitions) in `units.rs`, database URLs in `urls.rs`.

mod env;
mod sections;
mod table_state;
mod units;
mod urls;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use serde::Deserialize;

pub use env::ENV_PREFIX;
pub use sections::{
    AdminSettings, DispatcherSettings, EventSettings, GroupCommitSettings, LogFormat, LogSettings,
    SequenceSettings, ServerSettings, StorageSettings, SupervisorSettings,
};
pub use table_state::{MAX_WEIGHT, TableState, UnitEntry, UnitPatch, UnitRouting};
pub use units::{NO_SPILL_INTO, PartitionSettings, Temperature, UnitMode, UnitSettings};
pub use urls::{
    MAX_REPLICAS, check_db_url, check_replica_urls, host_port, mask_url, mask_urls, one_or_many,
    same_server,
};

use self::env::apply_override;
use crate::domain::order_id::MAX_UNIT;
use crate::domain::shapes;

#[derive(Debug, Clone, Deserialize)]
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
    #[serde(default)]
    pub events: EventSettings,
    pub units: Vec<UnitSettings>,
    /// merchant id -> partition; merchants not listed use `dispatcher.default_partition`.
    #[serde(default)]
    pub merchants: BTreeMap<String, String>,
    /// Partition behaviour, e.g. `[partitions.vip] spill_to = ["standard"]`.
    #[serde(default)]
    pub partitions: BTreeMap<String, PartitionSettings>,
}

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
            if let Err(m) = check_db_url(&u.primary_url)
                .and_then(|()| check_replica_urls(&u.primary_url, &u.replica_urls))
            {
                return invalid(format!("unit {}: {m}", u.id));
            }
        }
        // A partition exists when [partitions] declares it or a unit is in it.
        let exists = |p: &str| {
            self.partitions.contains_key(p) || self.units.iter().any(|u| u.partition == p)
        };
        for (name, p) in &self.partitions {
            if let Some(bad) = p
                .spill_to
                .iter()
                .find(|t| NO_SPILL_INTO.contains(&t.as_str()))
            {
                return invalid(format!("partition {name} may not spill into {bad}"));
            }
            if let Some(bad) = p.spill_to.iter().find(|t| !exists(t)) {
                return invalid(format!(
                    "partition {name} spills into {bad}, which no unit is in and [partitions] does not declare"
                ));
            }
        }
        if let Some((merchant, bad)) = self.merchants.iter().find(|(_, p)| !exists(p)) {
            return invalid(format!(
                "merchant {merchant} is mapped to partition {bad}, which no unit is in and [partitions] does not declare"
            ));
        }
        if !exists(&self.dispatcher.default_partition) {
            return invalid(format!(
                "dispatcher.default_partition {} is a partition no unit is in and [partitions] does not declare",
                self.dispatcher.default_partition
            ));
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
        let ev = &self.events;
        if ev.poll_ms == 0 || ev.batch == 0 || ev.batch > 10_000 || ev.file.is_empty() {
            return invalid(
                "events.poll_ms must be > 0, events.batch 1-10000, events.file set".into(),
            );
        }
        if let Some(url) = ev.nats_url.as_deref().filter(|u| !u.is_empty())
            && !(url.starts_with("nats://") || url.starts_with("tls://"))
        {
            return invalid(format!(
                "events.nats_url ({}) must start with nats:// or tls://",
                mask_url(url)
            ));
        }
        let token = |t: &str| {
            !t.is_empty()
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        if !token(&ev.nats_stream) || !ev.nats_subject_prefix.split('.').all(token) {
            return invalid(
                "events.nats_stream must be letters, digits, - and _; events.nats_subject_prefix \
                 the same, in dot-separated tokens"
                    .into(),
            );
        }
        if ev.lease_ms <= ev.poll_ms * 2 {
            return invalid(format!(
                "events.lease_ms ({}) must be more than twice events.poll_ms ({}): the relay \
                 renews its lease at the first poll after a third of it",
                ev.lease_ms, ev.poll_ms
            ));
        }
        if self.storage.max_connections == 0 {
            return invalid("storage.max_connections must be > 0".into());
        }
        let st = &self.storage;
        if st.replica_wait_ms >= st.replica_read_timeout_ms {
            return invalid(format!(
                "storage.replica_wait_ms ({}) must be below storage.replica_read_timeout_ms ({}): \
                 the wait is part of the replica attempt's budget",
                st.replica_wait_ms, st.replica_read_timeout_ms
            ));
        }
        // A caller's `Bearer <token>` is read without surrounding spaces, so
        // a token with any would turn the admin API on and let nobody in.
        if self.admin.token.chars().any(char::is_whitespace) {
            return invalid("admin.token must not contain whitespace".into());
        }
        if let Some(url) = &self.admin.control_url {
            if let Err(m) = check_db_url(url) {
                return invalid(format!("admin.control_url: {m}"));
            }
            if url.starts_with("sqlite:") {
                return invalid(
                    "admin.control_url: the control store is a MySQL/MariaDB database that every engine process reaches".into(),
                );
            }
            // Every process sharing the table must reach the same database
            // for a unit; each would open its own SQLite file.
            if let Some(u) = self
                .units
                .iter()
                .find(|u| u.primary_url.starts_with("sqlite:"))
            {
                return invalid(format!(
                    "unit {}: with admin.control_url every unit is a MySQL/MariaDB database (each engine process would open its own SQLite file)",
                    u.id
                ));
            }
        }
        if !(10..=60_000).contains(&self.admin.control_poll_ms) {
            return invalid("admin.control_poll_ms must be 10 to 60000".into());
        }
        Ok(())
    }

    /// The routing table as this config has it (version 0).
    pub fn table_state(&self) -> TableState {
        TableState {
            version: 0,
            units: self
                .units
                .iter()
                .map(|u| (u.id, UnitEntry::of(u)))
                .collect(),
            merchants: self.merchants.clone(),
            partitions: self
                .partitions
                .iter()
                .map(|(n, p)| (n.clone(), p.spill_to.clone()))
                .collect(),
        }
    }

    /// Routes by `table` (a whole table) instead of the config's own.
    pub fn route_by(&mut self, table: &TableState) {
        self.units = table.units.iter().map(|(id, u)| u.settings(*id)).collect();
        self.merchants.clone_from(&table.merchants);
        self.partitions = table
            .partitions
            .iter()
            .map(|(n, s)| {
                let p = PartitionSettings {
                    spill_to: s.clone(),
                };
                (n.clone(), p)
            })
            .collect();
    }

    /// The partition a merchant's creates go to.
    pub fn partition_of(&self, merchant_id: &str) -> &str {
        self.merchants
            .get(merchant_id)
            .unwrap_or(&self.dispatcher.default_partition)
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
    fn rejects_references_to_partitions_that_do_not_exist() {
        for (extra, says) in [
            (
                "[merchants]\n\"m-1\" = \"vip\"\n",
                "merchant m-1 is mapped to partition vip",
            ),
            (
                "[partitions.standard]\nspill_to = [\"nowhere\"]\n",
                "partition standard spills into nowhere",
            ),
            (
                "[dispatcher]\ndefault_partition = \"gone\"\n",
                "default_partition gone",
            ),
        ] {
            let e = Settings::from_toml(&format!("{BASE}\n{extra}"), "t", [])
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{e}");
        }
        // Declared, or a unit in it: both exist.
        let ok = format!(
            "{BASE}\n[merchants]\n\"m-1\" = \"vip\"\n[partitions.vip]\nspill_to = [\"standard\"]\n"
        );
        Settings::from_toml(&ok, "t", []).unwrap();
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

        let e = Settings::from_toml(BASE, "t", env(&[("ORDERENGINE__ADMIN__TOKEN", "s3cret ")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("admin.token must not contain whitespace"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");

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
    fn debug_output_never_shows_a_password() {
        let s = Settings::from_toml(
            BASE,
            "t",
            env(&[
                ("ORDERENGINE__ADMIN__TOKEN", "admin-secret"),
                (
                    "ORDERENGINE__UNITS__3__REPLICA_URL",
                    "mysql://r:replica-secret@h/db",
                ),
            ]),
        )
        .unwrap();
        let printed = format!("{s:?} {:?} {:#?}", s.units, s.units[1]);
        for secret in ["secret@", "replica-secret", "admin-secret"] {
            assert!(!printed.contains(secret), "{secret} in {printed}");
        }
        assert!(
            printed.contains("mysql://root:***@127.0.0.1:3306/unit_3"),
            "{printed}"
        );
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
