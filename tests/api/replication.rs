//! A unit on a real MariaDB primary and its semi-synchronous GTID replica:
//! eventual reads served by the replica while it is fresh, skipped while it
//! lags (replication stopped), served by it while the primary is down;
//! read-your-writes through consistency tokens; a replica that cannot be
//! reached never stops the engine from starting.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use sqlx::{MySqlPool, Row};

use crate::helpers::{TestApp, order_body, settings_for, spawn_app_with};
use crate::mariadb::{MariaDb, free_port, primary_and_replica, replicate, shared, unique_db};

async fn pool(server: &MariaDb) -> MySqlPool {
    MySqlPool::connect(&server.url("mysql")).await.unwrap()
}

#[actix_web::test]
async fn an_acknowledged_commit_is_on_the_semi_sync_replica() {
    let (primary, replica) = primary_and_replica();
    replicate(&primary, &replica).await;
    let (p, r) = (pool(&primary).await, pool(&replica).await);
    sqlx::raw_sql("CREATE DATABASE repl; CREATE TABLE repl.t (id INT PRIMARY KEY); INSERT INTO repl.t VALUES (1), (2)")
        .execute(&p)
        .await
        .unwrap();
    let pos: String = sqlx::query("SELECT @@gtid_binlog_pos AS pos")
        .fetch_one(&p)
        .await
        .unwrap()
        .get("pos");
    // Semi-sync acknowledged it: the replica has it (applied within the wait).
    let waited: i64 = sqlx::query("SELECT MASTER_GTID_WAIT(?, 10) AS w")
        .bind(&pos)
        .fetch_one(&r)
        .await
        .unwrap()
        .get("w");
    assert_eq!(waited, 0, "the replica did not reach {pos}");
    let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM repl.t")
        .fetch_one(&r)
        .await
        .unwrap()
        .get("n");
    assert_eq!(n, 2);
    let yes: String = sqlx::query("SHOW STATUS LIKE 'Rpl_semi_sync_master_yes_tx'")
        .fetch_one(&p)
        .await
        .unwrap()
        .get(1);
    assert!(
        yes.parse::<u64>().unwrap() >= 1,
        "no commit waited for the replica: {yes}"
    );
}

/// The engine with unit 1 on `primary` (replica `replica_url`) and unit 2
/// on the shared server; probes every 200 ms, so lag is measured often.
pub async fn engine_with_replica(primary_url: &str, replica_url: &str) -> TestApp {
    engine_with_replicas(primary_url, &[replica_url.to_owned()]).await
}

/// [`engine_with_replica`] with unit 1 on `replica_urls`.
pub async fn engine_with_replicas(primary_url: &str, replica_urls: &[String]) -> TestApp {
    let units = vec![
        (1, primary_url.to_owned()),
        (2, shared().url(&unique_db("rr2"))),
    ];
    let mut settings = settings_for(&units, "[supervisor]\nprobe_interval_ms = 200\n");
    settings.units[0].replica_urls = replica_urls.to_vec();
    settings.server.request_timeout_ms = 3_000;
    settings.storage.statement_timeout_ms = 1_000;
    let dir = tempfile::tempdir().unwrap();
    settings.admin.state_file = Some(dir.path().join("routing.json").display().to_string());
    spawn_app_with(settings, dir).await
}

/// An order created in unit 1 (keys are tried until one lands there).
pub async fn order_in_unit_1(app: &TestApp, tag: &str) -> String {
    for i in 0..200 {
        let key = format!("{tag}-{i}");
        let r = app
            .post("/v1/orders", &order_body("m-r", &key, "u-r", 100))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        let id = r.body["order_id"].as_str().unwrap().to_owned();
        if id[1..5].parse::<u16>().unwrap() == 1 {
            return id;
        }
    }
    panic!("no create landed in unit 1");
}

/// `orderengine_eventual_reads_total{unit="1",served_by}`.
pub async fn eventual_reads(app: &TestApp, served_by: &str) -> f64 {
    let text = app.metrics_text().await;
    let label = format!("served_by=\"{served_by}\"");
    text.lines()
        .filter(|l| l.starts_with("orderengine_eventual_reads_total{"))
        .find(|l| l.contains("unit=\"1\"") && l.contains(&label))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no eventual reads of unit 1 {label} in /metrics"))
}

pub async fn read(app: &TestApp, id: &str, token: Option<&str>) -> (StatusCode, Value) {
    let mut req = app
        .client
        .get(format!("{}/v1/orders/{id}?consistency=eventual", app.base));
    if let Some(t) = token {
        req = req.header("x-consistency-token", t);
    }
    let r = req.send().await.unwrap();
    (r.status(), r.json().await.unwrap_or(Value::Null))
}

async fn pay(app: &TestApp, id: &str) -> String {
    let body = serde_json::json!({"payment_ref": format!("p-{id}"), "amount": 100});
    let r = app.post(&format!("/v1/orders/{id}/pay"), &body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let token = r.headers["x-consistency-token"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(token.starts_with("1:0-1-"), "a position on unit 1: {token}");
    token
}

/// Waits until `GET /admin/units` says what `wanted` accepts of unit 1's replica.
async fn wait_replica(app: &TestApp, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let replica = app.unit_status(1).await["replica"].clone();
        if wanted(&replica) {
            return replica;
        }
        assert!(Instant::now() < deadline, "replica never {what}: {replica}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[actix_web::test]
async fn eventual_reads_use_a_fresh_replica_and_tokens_give_read_your_writes() {
    let (mut primary, replica) = primary_and_replica();
    replicate(&primary, &replica).await;
    let db = unique_db("rr1");
    let app = engine_with_replica(&primary.url(&db), &replica.url(&db)).await;
    let fresh = wait_replica(&app, "fresh", |r| {
        r["reachable"] == true && r["lag_ms"].as_i64() < Some(1_000)
    })
    .await;
    println!("replica measured: {fresh}");

    // Read-your-writes: right after each pay, an eventual read with the
    // pay's token shows it paid, and replicas serve such reads.
    let before = eventual_reads(&app, "replica").await;
    for i in 0..20 {
        let id = order_in_unit_1(&app, &format!("ryw-{i}")).await;
        let token = pay(&app, &id).await;
        let (status, order) = read(&app, &id, Some(&token)).await;
        assert_eq!(status, StatusCode::OK, "{order}");
        assert_eq!(order["status"], "paid", "token {token}: {order}");
    }
    let by_replica = eventual_reads(&app, "replica").await - before;
    assert!(
        by_replica >= 10.0,
        "only {by_replica} of 20 reads served by the replica"
    );
    // A token without a position (a replayed write: its position is not
    // known) sends the read to the primary.
    let id = order_in_unit_1(&app, "replay").await;
    pay(&app, &id).await;
    let again = serde_json::json!({"payment_ref": format!("p-{id}"), "amount": 100});
    let r = app.post(&format!("/v1/orders/{id}/pay"), &again).await;
    let token = r.headers["x-consistency-token"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(token, "1:", "a replay has no position");
    let from_replica = eventual_reads(&app, "replica").await;
    let (status, order) = read(&app, &id, Some(&token)).await;
    assert_eq!(
        (status, &order["status"]),
        (StatusCode::OK, &Value::from("paid"))
    );
    assert_eq!(
        eventual_reads(&app, "replica").await,
        from_replica,
        "served by the replica"
    );

    // A token of another unit asks nothing of the read; one the engine did
    // not write is refused.
    let id = order_in_unit_1(&app, "other").await;
    let (status, _) = read(&app, &id, Some("2:0-1-999999999")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = read(&app, &id, Some("not-a-token")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["field"], "X-Consistency-Token");

    // Replication stops applying: the replica's lag grows past the bound,
    // eventual reads go to the primary, and a token is never served stale.
    let r = pool(&replica).await;
    sqlx::raw_sql("STOP SLAVE SQL_THREAD")
        .execute(&r)
        .await
        .unwrap();
    let lagging = wait_replica(&app, "lagging", |r| r["lag_ms"].as_i64() > Some(1_000)).await;
    println!("replica lagging: {lagging}");
    let id = order_in_unit_1(&app, "lag").await;
    let token = pay(&app, &id).await;
    let primary_before = eventual_reads(&app, "primary").await;
    let (status, order) = read(&app, &id, None).await;
    assert_eq!(
        (status, &order["status"]),
        (StatusCode::OK, &Value::from("paid")),
        "{order}"
    );
    let (status, order) = read(&app, &id, Some(&token)).await;
    assert_eq!(
        (status, &order["status"]),
        (StatusCode::OK, &Value::from("paid")),
        "{order}"
    );
    assert_eq!(eventual_reads(&app, "primary").await - primary_before, 2.0);
    sqlx::raw_sql("START SLAVE SQL_THREAD")
        .execute(&r)
        .await
        .unwrap();
    wait_replica(&app, "caught up", |r| r["lag_ms"].as_i64() < Some(1_000)).await;

    // The primary dies: eventual reads are still served, by the replica.
    primary.kill();
    let started = Instant::now();
    let (status, order) = read(&app, &id, None).await;
    assert_eq!(status, StatusCode::OK, "primary down: {order}");
    assert_eq!(order["status"], "paid");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    let strong = app.get(&format!("/v1/orders/{id}")).await;
    assert_eq!(
        strong.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        strong.body
    );
    app.shutdown().await;
}

#[actix_web::test]
async fn a_replica_that_cannot_be_reached_never_stops_the_engine() {
    let db = unique_db("rr-gone");
    let gone = format!("mysql://root@127.0.0.1:{}/{db}", free_port());
    let app = engine_with_replica(&shared().url(&db), &gone).await;
    let id = order_in_unit_1(&app, "gone").await;
    let (status, order) = read(&app, &id, None).await;
    assert_eq!(status, StatusCode::OK, "served by the primary: {order}");
    let replica = wait_replica(&app, "unreachable", |r| r["reachable"] == false).await;
    assert!(
        replica["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{replica}"
    );
    let unit = app.unit_status(1).await;
    assert_eq!(unit["running"], true, "{unit}");
    app.shutdown().await;
}
