//! Real `order-engine` processes for tests that need more than one, or a
//! process of their own (its own metrics): started with a config written
//! for them, driven over HTTP on loopback.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::order_body;
use crate::mariadb::{die_with_parent, free_port};

const TOKEN: &str = "process-t0ken";

/// One engine process: its public and admin ports, config and log.
pub struct Engine {
    pub port: u16,
    pub admin: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Engine {
    /// Starts `order-engine` with a config of its own: loopback ports, an
    /// admin token, `admin` added to its `[admin]` table, then `rest`
    /// (units, merchants, partitions).
    pub fn new(dir: &Path, name: &str, admin: &str, rest: &str) -> Self {
        Self::with_events(dir, name, admin, "", rest)
    }

    /// As `new`, with `events` added to its `[events]` table.
    pub fn with_events(dir: &Path, name: &str, admin: &str, events: &str, rest: &str) -> Self {
        let extra = admin;
        let (port, admin) = (free_port(), free_port());
        let config = dir.join(format!("{name}.toml"));
        let events_file = dir
            .join(format!("{name}-events.jsonl"))
            .display()
            .to_string();
        let toml = format!(
            "[server]\nhost = \"127.0.0.1\"\nport = {port}\n\
             request_timeout_ms = 2000\n\
             [storage]\nmax_connections = 4\nstatement_timeout_ms = 1000\n\
             [admin]\nport = {admin}\ntoken = \"{TOKEN}\"\n{extra}\n\
             [events]\nfile = \"{events_file}\"\n{events}\n\
             [log]\nlevel = \"info,sqlx=warn\"\n{rest}"
        );
        std::fs::write(&config, toml).unwrap();
        let mut engine = Self {
            port,
            admin,
            config,
            log: dir.join(format!("{name}.log")),
            child: None,
        };
        engine.start();
        engine
    }

    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_order-engine"));
        cmd.arg("--config")
            .arg(&self.config)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        die_with_parent(&mut cmd);
        self.child = Some(cmd.spawn().unwrap());
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn ready(&mut self, client: &reqwest::Client) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let up = client
                .get(format!("http://127.0.0.1:{}/readyz", self.port))
                .send()
                .await;
            if up.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("engine exited ({status}):\n{}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "engine not ready:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn admin(
        &self,
        client: &reqwest::Client,
        method: Method,
        path: &str,
        body: Option<Value>,
        if_match: Option<u64>,
    ) -> (StatusCode, Value) {
        let mut req = client
            .request(method, format!("http://127.0.0.1:{}{path}", self.admin))
            .bearer_auth(TOKEN)
            .timeout(Duration::from_secs(10));
        if let Some(body) = body {
            req = req.json(&body);
        }
        if let Some(v) = if_match {
            req = req.header("if-match", format!("\"{v}\""));
        }
        let r = req.send().await.unwrap();
        (r.status(), r.json().await.unwrap_or(Value::Null))
    }

    pub async fn units(&self, client: &reqwest::Client) -> Value {
        self.admin(client, Method::GET, "/admin/units", None, None)
            .await
            .1
    }

    /// Creates an order with key `key`: its unit.
    pub async fn create(&self, client: &reqwest::Client, key: &str) -> u64 {
        let r = client
            .post(format!("http://127.0.0.1:{}/v1/orders", self.port))
            .json(&order_body("m-1", key, "u-1", 100))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "create {key}");
        let body: Value = r.json().await.unwrap();
        body["unit"].as_u64().unwrap()
    }

    pub async fn metric(&self, client: &reqwest::Client, name: &str) -> f64 {
        let text = client
            .get(format!("http://127.0.0.1:{}/metrics", self.port))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics"))
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.kill();
    }
}
