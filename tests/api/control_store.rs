//! Two real engine processes sharing the routing table through a control
//! store on its own MariaDB server: a change through one governs creates
//! through the other within a second, concurrent conditional changes never
//! both win, a unit added through one takes creates through the other, and
//! with the store's server killed both keep serving (and say so) until it
//! is back.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::order_body;
use crate::mariadb::{MariaDb, die_with_parent, free_port, shared, unique_db};

const TOKEN: &str = "control-t0ken";

/// One engine process: its public and admin ports, config and log.
struct Engine {
    port: u16,
    admin: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Engine {
    fn new(dir: &Path, name: &str, control_url: &str, units: &str) -> Self {
        let (port, admin) = (free_port(), free_port());
        let config = dir.join(format!("{name}.toml"));
        let toml = format!(
            "[server]\nhost = \"127.0.0.1\"\nport = {port}\n\
             [storage]\nmax_connections = 4\n\
             [admin]\nport = {admin}\ntoken = \"{TOKEN}\"\ncontrol_url = \"{control_url}\"\n\
             [log]\nlevel = \"info,sqlx=warn\"\n{units}"
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

    fn start(&mut self) {
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

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn ready(&mut self, client: &reqwest::Client) {
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

    async fn admin(
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

    async fn units(&self, client: &reqwest::Client) -> Value {
        self.admin(client, Method::GET, "/admin/units", None, None)
            .await
            .1
    }

    /// Creates an order with key `key`: its unit.
    async fn create(&self, client: &reqwest::Client, key: &str) -> u64 {
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

    async fn metric(&self, client: &reqwest::Client, name: &str) -> f64 {
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

/// Waits (at most `within`) until `engine`'s table is at `version`; how
/// long that took.
async fn until_version(
    engine: &Engine,
    client: &reqwest::Client,
    version: u64,
    within: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        let units = engine.units(client).await;
        if units["version"].as_u64() >= Some(version) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "still at version {} after {within:?}, wanted {version}: {units}",
            units["version"]
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn unit_of(units: &Value, id: u64) -> &Value {
    units["units"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["id"] == id)
        .unwrap_or(&Value::Null)
}

#[actix_web::test]
async fn two_processes_share_the_routing_table_through_the_control_store() {
    let dir = tempfile::tempdir().unwrap();
    let mut control = MariaDb::start(); // durable: SIGKILL loses nothing committed
    let control_url = control.url(&unique_db("control"));
    let units_server = shared();
    let dbs: Vec<String> = (1..=4).map(|u| unique_db(&format!("cs_unit{u}"))).collect();
    let url = |u: usize| units_server.url(&dbs[u - 1]);
    let units: String = (1..=3)
        .map(|u| format!("[[units]]\nid = {u}\nprimary_url = \"{}\"\n", url(u)))
        .collect();
    let client = reqwest::Client::new();
    let mut a = Engine::new(dir.path(), "a", &control_url, &units);
    a.ready(&client).await;
    let mut b = Engine::new(dir.path(), "b", &control_url, &units);
    b.ready(&client).await;
    // Seeded once from the config, then shared.
    assert_eq!(a.units(&client).await["version"], 1);
    assert_eq!(b.units(&client).await["version"], 1);
    assert_eq!(
        b.units(&client).await["table_store"]["kind"],
        "control_store"
    );

    // A change through A governs creates through B within a second.
    let (status, body) = a
        .admin(
            &client,
            Method::PATCH,
            "/admin/units/2",
            Some(json!({"mode": "read_only"})),
            Some(1),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["version"], 2);
    let took = until_version(&b, &client, 2, Duration::from_secs(1)).await;
    assert_eq!(unit_of(&b.units(&client).await, 2)["mode"], "read_only");
    for i in 0..30 {
        let unit = b.create(&client, &format!("after-ro-{i}")).await;
        assert_ne!(unit, 2, "a create through B reached the read-only unit");
    }
    println!("B took the change in {took:?}");

    // Two conditional changes at the same version, one through each
    // process, at once: exactly one wins, the other is told 412.
    for round in 0..5u64 {
        let version = 2 + round;
        let weight = |w: u64| Some(json!({ "weight": w }));
        let (ra, rb) = tokio::join!(
            a.admin(
                &client,
                Method::PATCH,
                "/admin/units/1",
                weight(10 + round),
                Some(version)
            ),
            b.admin(
                &client,
                Method::PATCH,
                "/admin/units/3",
                weight(20 + round),
                Some(version)
            ),
        );
        let mut statuses = [ra.0, rb.0];
        statuses.sort();
        assert_eq!(
            statuses,
            [StatusCode::OK, StatusCode::PRECONDITION_FAILED],
            "round {round}: {ra:?} {rb:?}"
        );
        let loser = if ra.0 == StatusCode::OK { &rb.1 } else { &ra.1 };
        assert_eq!(loser["error"]["code"], "version_mismatch", "{loser}");
        until_version(&a, &client, version + 1, Duration::from_secs(1)).await;
        until_version(&b, &client, version + 1, Duration::from_secs(1)).await;
    }
    // Without If-Match, a change built on a table the other process moved
    // on is rebuilt on the newer one: both apply.
    let (ra, rb) = tokio::join!(
        a.admin(
            &client,
            Method::PATCH,
            "/admin/units/1",
            Some(json!({"weight": 50})),
            None
        ),
        b.admin(
            &client,
            Method::PATCH,
            "/admin/units/3",
            Some(json!({"weight": 50})),
            None
        ),
    );
    assert_eq!(
        (ra.0, rb.0),
        (StatusCode::OK, StatusCode::OK),
        "{ra:?} {rb:?}"
    );
    let version = 9;
    until_version(&a, &client, version, Duration::from_secs(1)).await;
    until_version(&b, &client, version, Duration::from_secs(1)).await;
    for e in [&a, &b] {
        let units = e.units(&client).await;
        assert_eq!(units["version"], version, "{units}");
        for u in [1, 3] {
            assert_eq!(unit_of(&units, u)["weight"], 50, "{units}");
        }
    }

    // A unit added through B takes creates through A at once.
    let (status, body) = b
        .admin(
            &client,
            Method::POST,
            "/admin/units",
            Some(json!({"id": 4, "partition": "standard", "weight": 100, "primary_url": url(4)})),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let version = body["version"].as_u64().unwrap();
    until_version(&a, &client, version, Duration::from_secs(1)).await;
    let mut reached = false;
    for i in 0..60 {
        if a.create(&client, &format!("after-add-{i}")).await == 4 {
            reached = true;
            break;
        }
    }
    assert!(reached, "60 creates through A never reached the added unit");
    assert!(
        !unit_of(&a.units(&client).await, 4)["key_home"]
            .as_bool()
            .unwrap()
    );

    // The control store's server dies: both keep serving with their table,
    // say so, and refuse changes; when it is back, changes flow again.
    control.kill();
    for e in [&a, &b] {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let units = e.units(&client).await;
            if units["table_store"]["reachable"] == false {
                assert!(units["table_store"]["error"].is_string(), "{units}");
                break;
            }
            assert!(Instant::now() < deadline, "never noticed: {units}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(e.metric(&client, "orderengine_routing_store_up").await, 0.0);
        for i in 0..10 {
            e.create(&client, &format!("store-down-{}-{i}", e.port))
                .await;
        }
    }
    let (status, body) = a
        .admin(
            &client,
            Method::PATCH,
            "/admin/units/2",
            Some(json!({"mode": "open"})),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "table_not_saved", "{body}");
    assert_eq!(unit_of(&a.units(&client).await, 2)["mode"], "read_only");

    control.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    let (status, body) = loop {
        let r = a
            .admin(
                &client,
                Method::PATCH,
                "/admin/units/2",
                Some(json!({"mode": "open"})),
                None,
            )
            .await;
        if r.0 != StatusCode::SERVICE_UNAVAILABLE || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(status, StatusCode::OK, "{body}");
    let version = body["version"].as_u64().unwrap();
    until_version(&b, &client, version, Duration::from_secs(2)).await;
    assert_eq!(unit_of(&b.units(&client).await, 2)["mode"], "open");
    assert_eq!(b.units(&client).await["table_store"]["reachable"], true);

    // A process restarted takes the table from the store, added unit and all.
    b.kill();
    b.start();
    b.ready(&client).await;
    let units = b.units(&client).await;
    assert_eq!(units["version"].as_u64(), Some(version), "{units}");
    assert_eq!(unit_of(&units, 4)["weight"], 100, "{units}");
    // Every order created along the way is readable through either process.
    for e in [&a, &b] {
        let r = client
            .get(format!(
                "http://127.0.0.1:{}/v1/merchants/m-1/orders/after-add-0",
                e.port
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
}
