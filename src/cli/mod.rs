//! The operator CLI over the admin API, so that nobody hand-writes JSON for
//! curl: `order-engine units list|add|set|failover`, `order-engine merchants
//! get|set`, `order-engine partitions list|set`. It finds the admin
//! listener and token in the same config (and `ORDERENGINE__*` overrides)
//! the engine runs with, or in `--admin-url` and `ORDERENGINE__ADMIN__TOKEN`.
//! `order-engine events tail` (`events.rs`) follows the published events.

pub mod events;

use std::path::Path;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};

use crate::config::Settings;

#[derive(Subcommand)]
pub enum Command {
    /// The routing table's units.
    #[command(subcommand)]
    Units(Units),
    /// Which partition a merchant's creates go to.
    #[command(subcommand)]
    Merchants(Merchants),
    /// Partitions and their spill rules.
    #[command(subcommand)]
    Partitions(Partitions),
    /// Change events as they are published.
    #[command(subcommand)]
    Events(Events),
}

#[derive(Subcommand)]
pub enum Events {
    /// Prints events as the relay publishes them (JSON lines), from the
    /// config's broker (`events.nats_url`) or else its `events.file`, until
    /// interrupted.
    Tail {
        /// Every event the file or stream holds first, not only those to come.
        #[arg(long)]
        from_start: bool,
        /// Another events file.
        #[arg(long, conflicts_with = "nats_url")]
        file: Option<std::path::PathBuf>,
        /// Another NATS server (the config's stream and subjects).
        #[arg(long)]
        nats_url: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum Units {
    /// Every unit with its settings and live health, and the table's version.
    List {
        /// The whole answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Adds a unit: its database is created if missing and migrated, then it takes creates.
    Add {
        id: u16,
        #[arg(long)]
        primary_url: String,
        #[arg(long, default_value = "standard")]
        partition: String,
        /// A replica (repeat the option for several).
        #[arg(long)]
        replica_url: Vec<String>,
        #[command(flatten)]
        settings: UnitSettingsArgs,
        #[command(flatten)]
        condition: Condition,
    },
    /// Changes a unit's mode, partition, temperature or weight, or the
    /// databases it is on (a new primary only while it is disabled).
    Set {
        id: u16,
        #[arg(long)]
        partition: Option<String>,
        #[arg(long)]
        primary_url: Option<String>,
        /// The unit's replicas, all of them (repeat the option for several).
        #[arg(long, conflicts_with = "no_replica")]
        replica_url: Vec<String>,
        /// The unit has no replica any more.
        #[arg(long)]
        no_replica: bool,
        #[command(flatten)]
        settings: UnitSettingsArgs,
        #[command(flatten)]
        condition: Condition,
    },
    /// Promotes the unit's most advanced replica (or `--to`) to its primary.
    Failover {
        id: u16,
        /// `planned` (the primary answers) or `emergency` (it is dead).
        #[arg(long, value_parser = ["planned", "emergency"])]
        mode: String,
        /// The replica to promote (default: the one that received the most).
        #[arg(long)]
        to: Option<String>,
        /// Emergency: go on although some replicas do not answer (they may
        /// hold acknowledged commits; they are dropped from the unit).
        #[arg(long)]
        skip_unreachable_replicas: bool,
    },
}

#[derive(Args)]
pub struct UnitSettingsArgs {
    #[arg(long, value_parser = ["open", "read_only", "disabled"])]
    mode: Option<String>,
    #[arg(long, value_parser = ["hot", "warm", "cold"])]
    temperature: Option<String>,
    /// Share of the partition's creates (0 takes none).
    #[arg(long)]
    weight: Option<u32>,
}

#[derive(Args)]
pub struct Condition {
    /// Apply only if the routing table is still at this version (else 412).
    #[arg(long)]
    if_match: Option<u64>,
}

#[derive(Subcommand)]
pub enum Merchants {
    /// The partition a merchant's creates go to.
    Get { merchant_id: String },
    /// Sends a merchant's creates to `partition` from now on.
    Set {
        merchant_id: String,
        partition: String,
        #[command(flatten)]
        condition: Condition,
    },
}

#[derive(Subcommand)]
pub enum Partitions {
    /// Every partition with its spill rules and units.
    List,
    /// Sets the partitions `name` spills creates into (a new name makes a partition).
    Set {
        name: String,
        /// Comma-separated, in order; empty: never spill.
        #[arg(long, value_delimiter = ',', num_args = 0..)]
        spill_to: Vec<String>,
        #[command(flatten)]
        condition: Condition,
    },
}

/// Where the admin API is and how to get in.
pub struct Target {
    base: String,
    token: String,
}

impl Target {
    /// From `--admin-url` when given, else the config's `admin.host` and
    /// `admin.port`; the token from the config (`ORDERENGINE__ADMIN__TOKEN`
    /// overrides it, as for the engine).
    pub fn find(config: &Path, admin_url: Option<String>) -> Result<Self, String> {
        let env_token = std::env::var("ORDERENGINE__ADMIN__TOKEN").ok();
        let settings = Settings::load(config);
        let base = match (admin_url, &settings) {
            (Some(url), _) => url.trim_end_matches('/').to_owned(),
            (None, Ok(s)) => format!("http://{}:{}", s.admin.host, s.admin.port),
            (None, Err(e)) => return Err(format!("{e} (or give --admin-url)")),
        };
        let token = match (env_token, &settings) {
            (Some(t), _) => t,
            (None, Ok(s)) => s.admin.token.clone(),
            (None, Err(_)) => String::new(),
        };
        if token.is_empty() {
            return Err(
                "no admin token: set ORDERENGINE__ADMIN__TOKEN (or admin.token in the config)"
                    .into(),
            );
        }
        Ok(Self { base, token })
    }
}

/// Runs `command` against the admin API; prints the answer.
pub async fn run(target: Target, command: Command) -> ExitCode {
    if matches!(command, Command::Events(_)) {
        eprintln!("order-engine: `events` reads the broker or the events file, not the admin API");
        return ExitCode::from(2);
    }
    let parts = command_parts(&command);
    let method = reqwest::Method::from_bytes(parts.method.as_bytes()).expect("a known method");
    let mut req = reqwest::Client::new()
        .request(method, format!("{}{}", target.base, parts.path))
        .bearer_auth(&target.token);
    if let Some(body) = &parts.body {
        req = req.json(body);
    }
    if let Some(v) = parts.if_match {
        req = req.header("If-Match", format!("\"{v}\""));
    }
    let answer = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "order-engine: cannot reach the admin API at {}: {e}",
                target.base
            );
            return ExitCode::FAILURE;
        }
    };
    let status = answer.status();
    let body: Value = answer.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        let error = &body["error"];
        let field = error["field"]
            .as_str()
            .map(|f| format!(" (field {f})"))
            .unwrap_or_default();
        eprintln!(
            "order-engine: {} {}: {}{field}",
            status.as_u16(),
            error["code"].as_str().unwrap_or("error"),
            error["message"].as_str().unwrap_or("")
        );
        return ExitCode::FAILURE;
    }
    match command {
        Command::Units(Units::List { json: false }) => print!("{}", units_table(&body)),
        _ => println!(
            "{}",
            serde_json::to_string_pretty(&body).expect("JSON prints")
        ),
    }
    ExitCode::SUCCESS
}

/// What a command asks of the admin API.
struct Parts {
    method: &'static str,
    path: String,
    body: Option<Value>,
    if_match: Option<u64>,
}

fn command_parts(command: &Command) -> Parts {
    let get = |path: String| Parts {
        method: "GET",
        path,
        body: None,
        if_match: None,
    };
    match command {
        Command::Units(Units::List { .. }) => get("/admin/units".into()),
        Command::Units(Units::Add {
            id,
            primary_url,
            partition,
            replica_url,
            settings,
            condition,
        }) => {
            let mut body = settings.body();
            body.insert("id".into(), json!(id));
            body.insert("partition".into(), json!(partition));
            body.insert("primary_url".into(), json!(primary_url));
            if !replica_url.is_empty() {
                body.insert("replica_urls".into(), json!(replica_url));
            }
            Parts {
                method: "POST",
                path: "/admin/units".into(),
                body: Some(Value::Object(body)),
                if_match: condition.if_match,
            }
        }
        Command::Units(Units::Set {
            id,
            partition,
            primary_url,
            replica_url,
            no_replica,
            settings,
            condition,
        }) => {
            let mut body = settings.body();
            if let Some(p) = partition {
                body.insert("partition".into(), json!(p));
            }
            if let Some(p) = primary_url {
                body.insert("primary_url".into(), json!(p));
            }
            if !replica_url.is_empty() {
                body.insert("replica_urls".into(), json!(replica_url));
            }
            if *no_replica {
                body.insert("replica_urls".into(), json!([]));
            }
            Parts {
                method: "PATCH",
                path: format!("/admin/units/{id}"),
                body: Some(Value::Object(body)),
                if_match: condition.if_match,
            }
        }
        Command::Units(Units::Failover {
            id,
            mode,
            to,
            skip_unreachable_replicas,
        }) => {
            let mut body = Map::new();
            body.insert("mode".into(), json!(mode));
            if let Some(t) = to {
                body.insert("to".into(), json!(t));
            }
            if *skip_unreachable_replicas {
                body.insert("skip_unreachable_replicas".into(), json!(true));
            }
            Parts {
                method: "POST",
                path: format!("/admin/units/{id}/failover"),
                body: Some(Value::Object(body)),
                if_match: None,
            }
        }
        Command::Merchants(Merchants::Get { merchant_id }) => {
            get(format!("/admin/merchants/{}", segment(merchant_id)))
        }
        Command::Merchants(Merchants::Set {
            merchant_id,
            partition,
            condition,
        }) => Parts {
            method: "PUT",
            path: format!("/admin/merchants/{}", segment(merchant_id)),
            body: Some(json!({ "partition": partition })),
            if_match: condition.if_match,
        },
        Command::Events(_) => unreachable!("`run` answers events commands itself"),
        Command::Partitions(Partitions::List) => get("/admin/partitions".into()),
        Command::Partitions(Partitions::Set {
            name,
            spill_to,
            condition,
        }) => Parts {
            method: "PUT",
            path: format!("/admin/partitions/{}", segment(name)),
            body: Some(json!({ "spill_to": spill_to })),
            if_match: condition.if_match,
        },
    }
}

impl UnitSettingsArgs {
    fn body(&self) -> Map<String, Value> {
        let mut body = Map::new();
        if let Some(m) = &self.mode {
            body.insert("mode".into(), json!(m));
        }
        if let Some(t) = &self.temperature {
            body.insert("temperature".into(), json!(t));
        }
        if let Some(w) = self.weight {
            body.insert("weight".into(), json!(w));
        }
        body
    }
}

/// `s` as one URL path segment (ids are `[A-Za-z0-9_.:-]`; anything else
/// is escaped, and the server refuses it with a clear error).
fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b':' | b'-' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `GET /admin/units` as a table: one line per unit.
fn units_table(status: &Value) -> String {
    let mut out = format!(
        "routing table version {} (kept: {})\n",
        status["version"],
        status["table_store"]["kind"].as_str().unwrap_or("?")
    );
    let rows: Vec<[String; 9]> = status["units"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|u| {
            let text = |k: &str| match &u[k] {
                Value::String(s) => s.clone(),
                Value::Null => "-".into(),
                v => v.to_string(),
            };
            [
                text("id"),
                text("partition"),
                text("mode"),
                text("temperature"),
                text("weight"),
                text("health"),
                text("takes_creates"),
                text("writes_fenced"),
                text("primary_url"),
            ]
        })
        .collect();
    let head = [
        "ID",
        "PARTITION",
        "MODE",
        "TEMP",
        "WEIGHT",
        "HEALTH",
        "CREATES",
        "FENCED",
        "PRIMARY",
    ]
    .map(str::to_owned);
    let mut widths = head.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    for row in std::iter::once(&head).chain(&rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out += cells.join("  ").trim_end();
        out.push('\n');
    }
    out
}
