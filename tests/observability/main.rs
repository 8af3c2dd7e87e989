//! Dashboards and alert rules against a real Prometheus (Debian's `prometheus`
//! package) scraping a real engine on MariaDB while one unit's server is
//! killed. Its own test binary, so the process-wide metrics registry holds
//! only this engine's series.

#[allow(dead_code)]
#[path = "../api/helpers.rs"]
mod helpers;
#[allow(dead_code)]
#[path = "../api/mariadb.rs"]
mod mariadb;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use helpers::{TestApp, order_body, servers_per_unit, settings_for, spawn_app_with, units_on};

const INSTALL_HINT: &str = "Prometheus is required by the observability tests, which start \
     their own server. Install it with `sudo apt-get install -y prometheus` (Debian/Ubuntu): \
     the tests need `prometheus` and `promtool` on PATH.";

fn dashboards() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards")
}

fn tool(name: &str) -> PathBuf {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/bin", "/usr/local/bin"])
    {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("cannot find {name}: {INSTALL_HINT}");
}

fn promtool(args: &[&str], stdin: Option<&[u8]>) -> (bool, String) {
    let mut child = Command::new(tool("promtool"))
        .args(args)
        .current_dir(dashboards())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Every panel of both dashboards: (dashboard, panel title, expr).
fn panel_queries() -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for file in ["overview.json", "units.json"] {
        let d: Value =
            serde_json::from_str(&std::fs::read_to_string(dashboards().join(file)).unwrap())
                .unwrap();
        for p in d["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().unwrap() {
                out.push((
                    file.to_string(),
                    p["title"].as_str().unwrap().to_string(),
                    t["expr"].as_str().unwrap().to_string(),
                ));
            }
        }
    }
    out
}

#[test]
fn dashboards_follow_the_conventions() {
    for file in ["overview.json", "units.json"] {
        let d: Value =
            serde_json::from_str(&std::fs::read_to_string(dashboards().join(file)).unwrap())
                .unwrap();
        let vars: Vec<_> = d["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| (v["name"].as_str().unwrap(), v["type"].as_str().unwrap()))
            .collect();
        assert!(
            vars.contains(&("datasource", "datasource")),
            "{file}: {vars:?}"
        );
        assert!(vars.contains(&("unit", "query")), "{file}: {vars:?}");
        assert!(d["uid"].as_str().is_some_and(|u| !u.is_empty()));
        let mut ids = BTreeSet::new();
        for p in d["panels"].as_array().unwrap() {
            let title = p["title"].as_str().unwrap_or_default();
            assert!(!title.is_empty(), "{file}: a panel has no title");
            assert!(
                p["description"].as_str().is_some_and(|s| !s.is_empty()),
                "{file}: {title} has no description"
            );
            assert!(
                p["fieldConfig"]["defaults"]["unit"]
                    .as_str()
                    .is_some_and(|s| !s.is_empty()),
                "{file}: {title} has no unit"
            );
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{file}: {title}");
            assert!(
                ids.insert(p["id"].as_i64().unwrap()),
                "{file}: duplicate panel id"
            );
            for t in p["targets"].as_array().unwrap() {
                let expr = t["expr"].as_str().unwrap();
                for f in ["rate(", "increase("] {
                    for (i, _) in expr.match_indices(f) {
                        let window = &expr[i..expr[i..].find(')').map(|j| i + j).unwrap()];
                        assert!(
                            window.contains("[$__rate_interval]"),
                            "{file}: {title}: {expr}"
                        );
                    }
                }
                assert_eq!(t["datasource"]["uid"], "${datasource}");
            }
        }
    }
}

#[test]
fn alert_rules_check_and_pass_their_unit_tests() {
    let (ok, out) = promtool(&["check", "rules", "alerts.yml"], None);
    assert!(ok, "{out}");
    let (ok, out) = promtool(&["test", "rules", "alerts_test.yml"], None);
    assert!(ok, "{out}");
}

struct Prometheus {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(target_port: u16) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: order-engine\n    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n",
            dashboards().join("alerts.yml").display()
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let mut cmd = Command::new(tool("prometheus"));
        cmd.arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--log.level=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log));
        mariadb::die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start prometheus: {e}. {INSTALL_HINT}"));
        Prometheus {
            child,
            base: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    async fn query(&self, client: &reqwest::Client, expr: &str) -> Value {
        let r: Value = client
            .get(format!("{}/api/v1/query", self.base))
            .query(&[("query", expr)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r["status"], "success", "{expr}: {r}");
        r["data"]["result"].clone()
    }
}

/// A mixed load: creates, pays, refunds, reads, look-ups, lists, closes, and
/// some client errors and conflicts.
async fn drive(app: &TestApp, worker: usize, until: Instant) {
    let mut i = 0;
    while Instant::now() < until {
        i += 1;
        let key = format!("w{worker}-{i}");
        let r = app
            .post(
                "/v1/orders",
                &order_body("m-obs", &key, &format!("u-{worker}"), 100),
            )
            .await;
        if r.status.as_u16() != 201 {
            continue;
        }
        let id = r.body["order_id"].as_str().unwrap().to_string();
        app.get(&format!("/v1/orders/{id}")).await;
        app.get(&format!("/v1/orders/{id}?consistency=eventual"))
            .await;
        if i % 4 == 0 {
            app.post(&format!("/v1/orders/{id}/close"), &json!({}))
                .await;
            continue;
        }
        app.post(
            &format!("/v1/orders/{id}/pay"),
            &json!({"payment_ref": key, "amount": 100}),
        )
        .await;
        app.post(
            &format!("/v1/orders/{id}/refunds"),
            &json!({"refund_id": "r1", "amount": 30}),
        )
        .await;
        app.get(&format!("/v1/orders/{id}/refunds")).await;
        app.get(&format!("/v1/merchants/m-obs/orders/{key}")).await;
        app.get(&format!("/v1/users/u-{worker}/orders?limit=5"))
            .await;
        if i % 5 == 0 {
            app.get("/v1/orders/1000326112214301500000000426").await; // bad check digit
            app.post(
                &format!("/v1/orders/{id}/pay"),
                &json!({"payment_ref": "other", "amount": 100}),
            )
            .await;
        }
    }
}

#[actix_web::test]
async fn every_panel_and_alert_works_against_a_real_prometheus() {
    let mut servers = servers_per_unit(4);
    // Unit 1 on a primary with a semi-synchronous replica (the replica panels).
    let (primary, replica) = mariadb::primary_and_replica();
    mariadb::replicate(&primary, &replica).await;
    servers[0] = primary;
    let mut settings = settings_for(&units_on(&servers), "");
    settings.units[0].replica_urls = vec![replica.url("orders")];
    let app = spawn_app_with(settings, tempfile::tempdir().unwrap()).await;
    let port: u16 = app.base.rsplit(':').next().unwrap().parse().unwrap();
    let prom = Prometheus::start(port);
    let client = reqwest::Client::new();

    // The engine's own output is clean for promtool.
    let text = app.metrics_text().await;
    let (ok, out) = promtool(&["check", "metrics"], Some(text.as_bytes()));
    assert!(ok && out.trim().is_empty(), "promtool check metrics: {out}");

    let deadline = Instant::now() + Duration::from_secs(30);
    while client
        .get(format!("{}/-/ready", prom.base))
        .send()
        .await
        .map(|r| r.status().is_success())
        .ok()
        != Some(true)
    {
        assert!(Instant::now() < deadline, "prometheus did not start");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Traffic for 20 s; unit 2's server dies after 6 s and stays down.
    let start = Instant::now();
    let until = start + Duration::from_secs(20);
    let load = futures_util::future::join_all((0..6).map(|w| drive(&app, w, until)));
    let kill = async {
        tokio::time::sleep(Duration::from_secs(6)).await;
        servers[1].kill();
    };
    tokio::join!(load, kill);
    tokio::time::sleep(Duration::from_secs(2)).await; // last scrapes

    // Every panel's query returns data.
    let mut empty = Vec::new();
    for (file, title, expr) in panel_queries() {
        let q = expr
            .replace("$__rate_interval", "15s")
            .replace("$unit", ".*");
        let result = prom.query(&client, &q).await;
        let has_value = result.as_array().unwrap().iter().any(|s| {
            s["value"][1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(f64::is_finite)
        });
        if !has_value {
            empty.push(format!("{file} / {title}: {q} -> {result}"));
        }
    }
    assert!(
        empty.is_empty(),
        "panels without data:\n{}",
        empty.join("\n")
    );

    // Every metric the alert rules use is exported.
    let rules = std::fs::read_to_string(dashboards().join("alerts.yml")).unwrap();
    let names: BTreeSet<_> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("orderengine_"))
        .collect();
    assert!(names.len() >= 7, "{names:?}");
    for name in names {
        let found = prom
            .query(&client, &format!("count({{__name__=\"{name}\"}})"))
            .await;
        assert!(
            !found.as_array().unwrap().is_empty(),
            "alert rules use {name}, which is not exported"
        );
    }

    // The unit-down alert is pending or firing for the killed unit.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let alerts: Value = client
            .get(format!("{}/api/v1/alerts", prom.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let hit = alerts["data"]["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| {
                a["labels"]["alertname"] == "OrderEngineUnitDown" && a["labels"]["unit"] == "2"
            });
        if let Some(a) = hit {
            assert!(
                matches!(a["state"].as_str(), Some("pending" | "firing")),
                "{a}"
            );
            let others = alerts["data"]["alerts"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|a| {
                    a["labels"]["alertname"] == "OrderEngineUnitDown" && a["labels"]["unit"] != "2"
                })
                .count();
            assert_eq!(others, 0, "only the killed unit is down: {alerts}");
            break;
        }
        if Instant::now() >= deadline {
            let rules: Value = client
                .get(format!("{}/api/v1/rules", prom.base))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let up = prom.query(&client, "orderengine_unit_up").await;
            panic!(
                "no OrderEngineUnitDown alert for unit 2: {alerts}\nrules: {rules}\nunit_up: {up}"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    app.shutdown().await;
}
