//! `spawn_app`: a real engine in-process on a free port, with fresh databases,
//! and a small HTTP client for it.

use std::time::Duration;

use actix_web::dev::ServerHandle;
use order_engine::config::{EventSettings, Settings};
use order_engine::startup::Application;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use sqlx::AnyPool;

use crate::mariadb::{self, MariaDb};

#[derive(Clone, Copy, Debug)]
pub enum Backend {
    MariaDb,
    Sqlite,
}

pub const ADMIN_TOKEN: &str = "test-admin-token";

pub struct TestApp {
    pub base: String,
    /// The admin listener's base URL.
    pub admin: String,
    pub client: reqwest::Client,
    /// (unit id, database URL)
    pub units: Vec<(u16, String)>,
    /// Where the routing table is kept (`admin.state_file`), if anywhere.
    pub state_file: Option<std::path::PathBuf>,
    pub handle: ServerHandle,
    pub stopped: tokio::sync::oneshot::Receiver<()>,
    _dir: tempfile::TempDir,
}

/// Settings for `units` with port 0; `extra` is appended TOML.
pub fn settings_for(units: &[(u16, String)], extra: &str) -> Settings {
    let mut toml = String::from(
        // Two unit threads: units share a thread and spread over more than one.
        "[server]\nport = 0\nworkers = 2\nunit_threads = 2\nshutdown_timeout_secs = 5\n\
         [sequence]\nstep = 50\n[log]\nlevel = \"error\"\n\
         [admin]\nport = 0\ntoken = \"test-admin-token\"\n",
    );
    for (id, url) in units {
        toml.push_str(&format!("[[units]]\nid = {id}\nprimary_url = \"{url}\"\n"));
    }
    toml.push_str(extra);
    Settings::from_toml(&toml, "test", []).expect("test settings are valid")
}

/// Database URLs for `n` units (ids 1..=n) on `backend`.
pub fn unit_urls(backend: Backend, n: u16, dir: &std::path::Path) -> Vec<(u16, String)> {
    let tag = mariadb::unique_db("app");
    (1..=n)
        .map(|id| {
            let url = match backend {
                Backend::MariaDb => mariadb::shared().url(&format!("{tag}_u{id}")),
                Backend::Sqlite => format!("sqlite://{}/unit-{id}.db", dir.display()),
            };
            (id, url)
        })
        .collect()
}

pub async fn spawn_app(backend: Backend, n: u16) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let units = unit_urls(backend, n, dir.path());
    spawn_app_with(settings_for(&units, ""), dir).await
}

/// One server per unit: the fault tests kill one of them.
pub fn servers_per_unit(n: u16) -> Vec<MariaDb> {
    (0..n).map(|_| MariaDb::start()).collect()
}

/// Units 1..=n, unit i on `servers[i - 1]`.
pub fn units_on(servers: &[MariaDb]) -> Vec<(u16, String)> {
    servers
        .iter()
        .enumerate()
        .map(|(i, s)| (i as u16 + 1, s.url("orders")))
        .collect()
}

pub async fn spawn_app_with(mut settings: Settings, dir: tempfile::TempDir) -> TestApp {
    order_engine::telemetry::init(&settings.log);
    if settings.events.file == EventSettings::default().file {
        // Never the working directory's `data/`: the test's own directory.
        settings.events.file = dir.path().join("events.jsonl").display().to_string();
    }
    let units = settings
        .units
        .iter()
        .map(|u| (u.id, u.primary_url.clone()))
        .collect();
    let state_file = settings.admin.state_file.as_ref().map(Into::into);
    let app = Application::build(settings).await.expect("engine starts");
    let base = format!("http://127.0.0.1:{}", app.port());
    let admin = format!(
        "http://127.0.0.1:{}",
        app.admin_port().expect("admin API on")
    );
    let handle = app.handle();
    let (tx, stopped) = tokio::sync::oneshot::channel();
    actix_web::rt::spawn(async move {
        let _ = app.run_until_stopped().await;
        let _ = tx.send(());
    });
    TestApp {
        base,
        admin,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        units,
        state_file,
        handle,
        stopped,
        _dir: dir,
    }
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    /// The stable error code of an error reply.
    pub fn code(&self) -> &str {
        self.body["error"]["code"]
            .as_str()
            .unwrap_or("<no error code>")
    }
}

impl TestApp {
    async fn reply(res: reqwest::Response) -> Reply {
        let status = res.status();
        let headers = res.headers().clone();
        let text = res.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        let res = self
            .client
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .unwrap();
        Self::reply(res).await
    }

    pub async fn post_raw(&self, path: &str, body: Vec<u8>, if_match: Option<&str>) -> Reply {
        let mut req = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body);
        if let Some(v) = if_match {
            req = req.header("if-match", v);
        }
        Self::reply(req.send().await.unwrap()).await
    }

    /// Any method, with an optional raw body and `If-Match`.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&str>,
        if_match: Option<&str>,
    ) -> Reply {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_owned());
        }
        if let Some(v) = if_match {
            req = req.header("if-match", v);
        }
        Self::reply(req.send().await.unwrap()).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        let res = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        Self::reply(res).await
    }

    /// Creates an order and asserts `201`.
    pub async fn create(
        &self,
        merchant: &str,
        out_trade_no: &str,
        user: &str,
        amount: i64,
    ) -> Value {
        let r = self
            .post(
                "/v1/orders",
                &order_body(merchant, out_trade_no, user, amount),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        r.body
    }

    /// Creates and pays an order; returns its id.
    pub async fn paid_order(&self, out_trade_no: &str, amount: i64) -> String {
        let order = self.create("m-1", out_trade_no, "u-1", amount).await;
        let id = order["order_id"].as_str().unwrap().to_string();
        let r = self
            .post(
                &format!("/v1/orders/{id}/pay"),
                &json!({"payment_ref": format!("pay-{out_trade_no}"), "amount": amount}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        id
    }

    /// `GET /metrics` (the registry is process-wide: filter by unit ids the
    /// test owns).
    pub async fn metrics_text(&self) -> String {
        let url = format!("{}/metrics", self.base);
        self.client
            .get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// `GET /admin/units` with the admin token.
    pub async fn units_status(&self) -> Value {
        self.admin_get("/admin/units").await
    }

    /// `GET path` on the admin listener with the admin token: the JSON body.
    pub async fn admin_get(&self, path: &str) -> Value {
        self.client
            .get(format!("{}{path}", self.admin))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// `method path` on the admin listener with the admin token, a JSON body
    /// and an optional `If-Match`.
    pub async fn admin_send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &Value,
        if_match: Option<&str>,
    ) -> Reply {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.admin))
            .bearer_auth(ADMIN_TOKEN)
            .json(body);
        if let Some(v) = if_match {
            req = req.header("if-match", v);
        }
        Self::reply(req.send().await.unwrap()).await
    }

    /// One unit's entry in `GET /admin/units`.
    pub async fn unit_status(&self, unit: u16) -> Value {
        let all = self.units_status().await;
        all["units"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["id"] == unit)
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// A direct connection to a unit's database, to check what was stored.
    pub async fn unit_db(&self, unit: u16) -> AnyPool {
        sqlx::any::install_default_drivers();
        let url = &self.units.iter().find(|(id, _)| *id == unit).unwrap().1;
        AnyPool::connect(url).await.unwrap()
    }

    /// Stops the engine the way SIGTERM does and waits until it has shut down.
    pub async fn shutdown(self) {
        self.handle.stop(true).await;
        tokio::time::timeout(Duration::from_secs(30), self.stopped)
            .await
            .expect("engine shuts down")
            .ok();
    }
}

/// Rows in `table` ("orders" or "outbox") of one unit database.
pub async fn count_rows(db: &AnyPool, table: &'static str) -> i64 {
    use sqlx::Row;
    let sql = match table {
        "orders" => "SELECT COUNT(*) AS n FROM orders",
        "outbox" => "SELECT COUNT(*) AS n FROM outbox",
        other => panic!("count_rows: no query for table {other}"),
    };
    sqlx::query(sql).fetch_one(db).await.unwrap().get("n")
}

/// New orders as a create batch writes them, each with its own attempt.
pub fn with_attempts(
    orders: &[order_engine::domain::Order],
) -> Vec<(
    order_engine::domain::Order,
    order_engine::domain::key_homes::Attempt,
)> {
    orders
        .iter()
        .map(|o| {
            (
                o.clone(),
                order_engine::domain::key_homes::Attempt::random(),
            )
        })
        .collect()
}

pub fn order_body(merchant: &str, out_trade_no: &str, user: &str, amount: i64) -> Value {
    json!({
        "merchant_id": merchant,
        "out_trade_no": out_trade_no,
        "user_id": user,
        "amount": amount,
        "currency": "CNY",
        "description": "2 coffees",
        "sections": {"items": [{"sku": "c1", "qty": 2}], "shipping": {"city": "Shenzhen"}}
    })
}
