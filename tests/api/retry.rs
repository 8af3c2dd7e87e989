//! Creates stay available and duplicate-free while units fail: real MariaDB
//! servers really killed, and a proxy that cuts connections after COMMIT.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream;
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::Row;

use crate::helpers::{
    Backend, TestApp, count_rows, order_body, servers_per_unit, settings_for, spawn_app,
    spawn_app_with, units_on,
};
use crate::proxy::{Mode, Proxy};

/// A caller as real ones behave: a 503 is retried with the same key for up to
/// 20 s. Returns the order and how long the create took, or why it failed.
async fn create_like_a_caller(app: &TestApp, body: &Value) -> Result<(Value, Duration), String> {
    let started = Instant::now();
    loop {
        let r = app.post("/v1/orders", body).await;
        match r.status.as_u16() {
            200 | 201 => return Ok((r.body, started.elapsed())),
            503 if started.elapsed() < Duration::from_secs(20) => {
                assert!(
                    r.headers.contains_key("retry-after"),
                    "503 without Retry-After"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            _ => return Err(format!("{} {}", r.status, r.body)),
        }
    }
}

/// Every `(merchant_id, out_trade_no)` stored in any unit, with its count.
async fn stored_keys(app: &TestApp, merchant: &str) -> HashMap<String, usize> {
    let mut keys = HashMap::new();
    for (unit, _) in &app.units {
        let rows = sqlx::query("SELECT out_trade_no FROM orders WHERE merchant_id = ?")
            .bind(merchant)
            .fetch_all(&app.unit_db(*unit).await)
            .await
            .unwrap();
        for r in rows {
            *keys.entry(r.get::<String, _>("out_trade_no")).or_default() += 1;
        }
    }
    keys
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[actix_web::test]
async fn a_killed_unit_loses_no_create_and_makes_no_duplicate() {
    let mut servers = servers_per_unit(4);
    let units = units_on(&servers);
    let owned = spawn_app_with(settings_for(&units, ""), tempfile::tempdir().unwrap()).await;
    let app = &owned;

    // An order in the unit to be killed, and one in another unit.
    let mut victim_order = None;
    let mut other_order = None;
    for i in 0..100 {
        let o = app.create("m-pre", &format!("pre-{i}"), "u-1", 10).await;
        let id = o["order_id"].as_str().unwrap().to_string();
        match &id[1..5] {
            "0002" => victim_order = victim_order.or(Some(id)),
            _ => other_order = other_order.or(Some(id)),
        }
        if victim_order.is_some() && other_order.is_some() {
            break;
        }
    }
    let (victim_order, other_order) = (victim_order.unwrap(), other_order.unwrap());

    let t0 = Instant::now();
    let kill_at = Duration::from_secs(3);
    let restart_at = kill_at + Duration::from_secs(8);
    // Rejoining can take up to ~12 s (open 5 s, a half-open trial that meets
    // the still-dead server, open 10 s, three probes); leave time after it.
    let stop_at = restart_at + Duration::from_secs(17);

    // Callers: a bounded stream of creates with unique keys.
    let acked = Arc::new(Mutex::new(
        Vec::<(String, String, Duration, Duration)>::new(),
    ));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let workers = (0..6).map(|w| {
        let (acked, failures) = (acked.clone(), failures.clone());
        async move {
            for i in 0..100_000 {
                if t0.elapsed() >= stop_at {
                    break;
                }
                let key = format!("w{w}-{i}");
                let started = t0.elapsed();
                match create_like_a_caller(app, &order_body("m-stream", &key, "u-1", 10)).await {
                    Ok((order, took)) => acked.lock().unwrap().push((
                        key,
                        order["order_id"].as_str().unwrap().to_string(),
                        started,
                        took,
                    )),
                    Err(e) => failures.lock().unwrap().push(format!("{key}: {e}")),
                }
            }
        }
    });

    // The operator's view: when does unit 2's circuit open, when does it rejoin?
    let observed = Arc::new(Mutex::new((None::<Duration>, None::<Duration>)));
    let monitor = {
        let observed = observed.clone();
        async move {
            while t0.elapsed() < stop_at {
                let u = app.unit_status(2).await;
                let now = t0.elapsed();
                {
                    let mut o = observed.lock().unwrap();
                    if now > kill_at && o.0.is_none() && u["circuit"] == "open" {
                        o.0 = Some(now);
                    }
                    if now > restart_at && o.1.is_none() && u["takes_creates"] == true {
                        o.1 = Some(now);
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };

    // The failure, and what reads see during it.
    let fault = async {
        tokio::time::sleep(kill_at.saturating_sub(t0.elapsed())).await;
        servers[1].kill();
        // Wait for the circuit to open, then the killed unit's orders must fail
        // fast while the others' are served.
        let deadline = Instant::now() + Duration::from_secs(6);
        while app.unit_status(2).await["circuit"] != "open" {
            assert!(Instant::now() < deadline, "unit 2's circuit did not open");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let asked = Instant::now();
        let r = app.get(&format!("/v1/orders/{victim_order}")).await;
        let took = asked.elapsed();
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::SERVICE_UNAVAILABLE, "unit_unavailable")
        );
        assert!(
            took < Duration::from_secs(1),
            "a dead unit's order answered in {took:?}"
        );
        let r = app.get(&format!("/v1/orders/{other_order}")).await;
        assert_eq!(r.status, StatusCode::OK, "other units are unaffected");
        let status = app.units_status().await;
        assert_eq!(status["ready"], true);
        tokio::time::sleep(restart_at.saturating_sub(t0.elapsed())).await;
        servers[1].restart();
        took
    };
    let (_, _, fast_fail) = tokio::join!(futures_util::future::join_all(workers), monitor, fault);

    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} creates failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let acked = acked.lock().unwrap().clone();
    let (opened, rejoined) = *observed.lock().unwrap();
    let opened = opened.expect("circuit opened") - kill_at;
    let rejoined = rejoined.expect("unit 2 rejoined") - restart_at;
    assert!(
        rejoined <= Duration::from_secs(15),
        "rejoined {rejoined:?} after its server came back"
    );

    // No key has two orders anywhere, and nothing was stored that was not acknowledged.
    let stored = stored_keys(app, "m-stream").await;
    let dups: Vec<_> = stored.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "duplicate orders: {dups:?}");
    let acked_keys: HashSet<_> = acked.iter().map(|(k, ..)| k.clone()).collect();
    assert_eq!(acked_keys.len(), acked.len());
    assert_eq!(stored.keys().cloned().collect::<HashSet<_>>(), acked_keys);

    // The killed unit took creates again after it came back.
    let after_restart = acked
        .iter()
        .filter(|(_, id, started, _)| *started > restart_at && &id[1..5] == "0002")
        .count();
    assert!(
        after_restart > 0,
        "unit 2 took no creates after it came back"
    );

    // Every acknowledged order is readable.
    let unreadable: Vec<_> = stream::iter(acked.iter())
        .map(|(_, id, ..)| async move {
            (
                id.clone(),
                app.get(&format!("/v1/orders/{id}")).await.status,
            )
        })
        .buffer_unordered(16)
        .filter(|(_, s)| std::future::ready(*s != StatusCode::OK))
        .collect()
        .await;
    assert!(unreadable.is_empty(), "unreadable: {unreadable:?}");

    let mut during: Vec<_> = acked
        .iter()
        .filter(|(_, _, started, _)| *started >= kill_at && *started < restart_at)
        .map(|(.., took)| *took)
        .collect();
    during.sort();
    eprintln!(
        "kill test: {} creates acknowledged, 0 failed; circuit opened {:?} after the kill; \
         rejoined {:?} after the restart; {} creates on unit 2 after it; a dead unit's read \
         answered in {:?}; create latency during the outage p50 {:?} p99 {:?} max {:?} (n={})",
        acked.len(),
        opened,
        rejoined,
        after_restart,
        fast_fail,
        percentile(&during, 0.5),
        percentile(&during, 0.99),
        during.last().copied().unwrap_or_default(),
        during.len()
    );
    owned.shutdown().await;
}

/// Two units: unit 2 behind the proxy and alone in merchant `m-proxy`'s
/// partition (spilling to unit 1's), so creates try unit 2 first.
async fn app_with_proxied_unit(
    probe_interval_ms: u64,
) -> (TestApp, Proxy, Vec<crate::mariadb::MariaDb>) {
    proxied_unit(probe_interval_ms, 5).await
}

/// As [`app_with_proxied_unit`], with circuits that do not open on failures.
async fn app_with_proxied_unit_tolerant(
    probe_interval_ms: u64,
) -> (TestApp, Proxy, Vec<crate::mariadb::MariaDb>) {
    proxied_unit(probe_interval_ms, 1_000_000).await
}

async fn proxied_unit(
    probe_interval_ms: u64,
    consecutive_failures: u32,
) -> (TestApp, Proxy, Vec<crate::mariadb::MariaDb>) {
    let servers = servers_per_unit(2);
    let proxy = Proxy::start(servers[1].port()).await;
    // Three units: with unit 2 down, every key still has a majority of its
    // homes (docs/idempotency.md).
    let units = vec![
        (1, servers[0].url("orders")),
        (2, format!("mysql://root@127.0.0.1:{}/orders", proxy.port)),
        (3, servers[0].url("orders_3")),
    ];
    let extra = "[merchants]\n\"m-proxy\" = \"p2\"\n[partitions.p2]\nspill_to = [\"standard\"]\n";
    let mut settings = settings_for(&units, extra);
    settings.units[1].partition = "p2".into();
    settings.sequence.step = 1_000;
    settings.supervisor.probe_interval_ms = probe_interval_ms;
    settings.supervisor.consecutive_failures = consecutive_failures;
    settings.supervisor.failure_rate_percent = 100;
    let app = spawn_app_with(settings, tempfile::tempdir().unwrap()).await;
    (app, proxy, servers)
}

#[actix_web::test]
async fn a_connection_cut_after_commit_makes_no_duplicate() {
    // No probes: the only COMMIT through the proxy is the create's. (So the
    // circuit, which only probes close again, must not open on the failed
    // calls while the unit is cut off.)
    let (app, proxy, servers) = app_with_proxied_unit_tolerant(3_600_000).await;
    let warm = app.create("m-proxy", "warm-up", "u-1", 10).await;
    assert_eq!(warm["unit"], 2, "m-proxy's creates go to unit 2 first");

    proxy.set(Mode::CutAfterCommit);
    let body = order_body("m-proxy", "cut-1", "u-1", 10);
    let r = app.post("/v1/orders", &body).await;
    // The commit reached the server, the answer did not, and the unit cannot be
    // asked: the engine must not create the order elsewhere.
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "unit_unavailable"),
        "{}",
        r.body
    );
    assert!(r.headers.contains_key("retry-after"));
    assert_eq!(proxy.mode(), Mode::Refuse, "the cut happened");
    let r = app.post("/v1/orders", &body).await;
    assert_eq!(
        r.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "still in doubt: {}",
        r.body
    );

    // What the server holds: the commit went through on unit 2, and nothing on unit 1.
    sqlx::any::install_default_drivers();
    let direct = sqlx::AnyPool::connect(&servers[1].url("orders"))
        .await
        .unwrap();
    let committed: Vec<i64> = sqlx::query("SELECT seq FROM orders WHERE out_trade_no = 'cut-1'")
        .fetch_all(&direct)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get("seq"))
        .collect();
    assert_eq!(
        committed.len(),
        1,
        "the cut COMMIT was applied by the server"
    );

    proxy.set(Mode::Pass);
    let (order, _) = create_like_a_caller(&app, &body).await.unwrap();
    assert_eq!(order["unit"], 2);
    let seq: i64 = order["order_id"].as_str().unwrap()[17..27].parse().unwrap();
    assert_eq!(
        seq, committed[0],
        "the caller's retry gets the original order"
    );
    let stored = stored_keys(&app, "m-proxy").await;
    assert_eq!(stored.get("cut-1"), Some(&1), "{stored:?}");
    app.shutdown().await;
}

#[actix_web::test]
async fn a_black_holed_unit_fails_fast_and_creates_flow_elsewhere() {
    let (app, proxy, _servers) = app_with_proxied_unit(1_000).await;
    let before = app.create("m-proxy", "bh-0", "u-1", 10).await;
    assert_eq!(before["unit"], 2);
    let before_id = before["order_id"].as_str().unwrap().to_string();

    proxy.set(Mode::BlackHole);
    // Creates still succeed (on unit 1) while unit 2 swallows everything.
    let mut worst = Duration::ZERO;
    for i in 1..=12 {
        let started = Instant::now();
        let (order, _) =
            create_like_a_caller(&app, &order_body("m-proxy", &format!("bh-{i}"), "u-1", 10))
                .await
                .unwrap();
        worst = worst.max(started.elapsed());
        assert_ne!(order["unit"], 2, "{order}");
    }
    assert!(worst < Duration::from_secs(10), "a create waited {worst:?}");
    // By now the circuit is open: the unit's orders fail fast, with no pool wait.
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.unit_status(2).await["circuit"] != "open" {
        assert!(
            Instant::now() < deadline,
            "circuit did not open: {}",
            app.unit_status(2).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let started = Instant::now();
    let r = app.get(&format!("/v1/orders/{before_id}")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let started = Instant::now();
    app.create("m-proxy", "bh-fast", "u-1", 10).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "creates skip the open circuit"
    );

    // Back to normal: the unit rejoins through half-open and serves its orders.
    proxy.set(Mode::Refuse);
    proxy.set(Mode::Pass);
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.get(&format!("/v1/orders/{before_id}")).await.status != StatusCode::OK {
        assert!(
            Instant::now() < deadline,
            "unit 2 never came back: {}",
            app.unit_status(2).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    app.shutdown().await;
}

#[actix_web::test]
async fn a_silent_database_cannot_hold_up_shutdown() {
    let (app, proxy, _servers) = app_with_proxied_unit(200).await;
    let order = app.create("m-proxy", "quiet-0", "u-1", 10).await;
    assert_eq!(order["unit"], 2);
    proxy.set(Mode::BlackHole);
    // Reads that time out leave their connections waiting for answers that
    // never come; the probes keep trying on others.
    for _ in 0..3 {
        let r = app
            .get(&format!(
                "/v1/orders/{}",
                order["order_id"].as_str().unwrap()
            ))
            .await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    }
    let started = Instant::now();
    app.shutdown().await;
    // The HTTP drain is over at once (nothing in flight); closing unit 2's
    // connections may wait one statement timeout (2 s in tests), no more.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "shutdown took {:?}",
        started.elapsed()
    );
}

#[actix_web::test]
async fn a_slow_unit_is_taken_out_by_its_probes() {
    let (app, proxy, _servers) = app_with_proxied_unit(200).await;
    proxy.set(Mode::Delay(Duration::from_millis(300)));
    // Probes over 250 ms count as failures: five in a row open the circuit.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let u = app.unit_status(2).await;
        if u["circuit"] == "open" {
            assert_eq!(u["probe_ok"], false, "{u}");
            break;
        }
        assert!(Instant::now() < deadline, "slow unit still trusted: {u}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let o = app.create("m-proxy", "slow-1", "u-1", 10).await;
    assert_ne!(o["unit"], 2, "creates avoid the slow unit");
    app.shutdown().await;
}

#[actix_web::test]
async fn a_broken_prober_cannot_stop_creates() {
    let servers = servers_per_unit(1);
    let units: Vec<_> = (1..=3u16)
        .map(|u| (u, servers[0].url(&format!("orders_{u}"))))
        .collect();
    let mut settings = settings_for(&units, "");
    settings.supervisor.probe_interval_ms = 100;
    // Every probe now "fails" (too slow) although every database is fine.
    settings.supervisor.slow_probe_ms = 0;
    let app = spawn_app_with(settings, tempfile::tempdir().unwrap()).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    let status = app.units_status().await;
    assert_eq!(status["prober_suspected"], true, "{status}");
    for u in status["units"].as_array().unwrap() {
        assert_eq!(
            u["circuit"], "closed",
            "a suspected prober ejects nothing: {u}"
        );
        assert_eq!(u["probe_ok"], false);
    }
    for i in 0..30 {
        app.create("m-1", &format!("p-{i}"), "u-1", 10).await;
    }
    assert_eq!(app.get("/readyz").await.status, StatusCode::OK);
    app.shutdown().await;
}

#[actix_web::test]
async fn a_unit_whose_sequence_breaks_restarts_and_heals() {
    let servers = servers_per_unit(1);
    let units = vec![(1, servers[0].url("orders"))];
    let app = spawn_app_with(settings_for(&units, ""), tempfile::tempdir().unwrap()).await;
    let mut ids = HashSet::new();
    for i in 0..5 {
        ids.insert(app.create("m-1", &format!("s-{i}"), "u-1", 10).await["order_id"].to_string());
    }
    // Someone resets the sequence under the engine (a restore, a hand edit),
    // and the engine's own reserved segment is discarded with it.
    let db = app.unit_db(1).await;
    sqlx::query("UPDATE sequences SET next_value = 1")
        .execute(&db)
        .await
        .unwrap();

    // The unit's in-memory segment is still ahead, so force it to reserve:
    // creates continue until the unit notices, restarts and re-syncs.
    let mut restarted = false;
    for i in 5..200 {
        let (order, _) =
            create_like_a_caller(&app, &order_body("m-1", &format!("s-{i}"), "u-1", 10))
                .await
                .unwrap();
        assert!(
            ids.insert(order["order_id"].to_string()),
            "an order id was reused"
        );
        if app.unit_status(1).await["restarts"].as_u64().unwrap() > 0 {
            restarted = true;
        }
    }
    assert!(
        restarted,
        "the unit actor restarted after it found its sequence reused"
    );
    assert_eq!(count_rows(&db, "orders").await, 200);
    app.shutdown().await;
}

/// A panic in a unit actor's work (here: a create batch) does not lose the
/// unit: the panic is caught, the actor restarts with fresh state, the creates
/// of the panicked batch are settled and answered once, the unit's circuit
/// stays closed, and the unit serves its old orders and takes new ones.
#[actix_web::test]
async fn a_unit_whose_work_panics_restarts_and_loses_nothing() {
    let app = spawn_app(Backend::MariaDb, 2).await;
    let merchant = "m-panic";
    // An order in each unit, to read after the panic.
    let mut before = HashMap::<u64, String>::new();
    let mut created = 0;
    while before.len() < 2 && created < 200 {
        let o = app
            .create(merchant, &format!("pre-{created}"), "u-1", 10)
            .await;
        created += 1;
        let id = o["order_id"].as_str().unwrap().to_string();
        before.entry(o["unit"].as_u64().unwrap()).or_insert(id);
    }
    assert_eq!(before.len(), 2, "both units took creates");

    // The armed create, with neighbours that may share its batch.
    order_engine::fault::panic_on_create_of("panic-boom");
    let keys: Vec<String> = std::iter::once("panic-boom".to_string())
        .chain((1..16).map(|i| format!("near-{i}")))
        .collect();
    let answers = futures_util::future::join_all(keys.iter().map(|k| {
        let app = &app;
        async move { create_like_a_caller(app, &order_body(merchant, k, "u-1", 10)).await }
    }))
    .await;
    for (key, answer) in keys.iter().zip(&answers) {
        assert!(answer.is_ok(), "create {key}: {answer:?}");
    }

    // Exactly one unit caught the panic, counted it and restarted.
    let mut panicked = Vec::new();
    for unit in [1u16, 2] {
        if app.unit_status(unit).await["restarts"].as_u64().unwrap() > 0 {
            panicked.push(unit);
        }
    }
    assert_eq!(panicked.len(), 1, "restarted units: {panicked:?}");
    let unit = panicked[0];
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains(&format!(
            "orderengine_unit_panics_total{{unit=\"{unit}\"}} 1"
        )),
        "the panic is counted"
    );

    // Nothing lost, nothing doubled: old orders read, every key stored once.
    for id in before.values() {
        let r = app.get(&format!("/v1/orders/{id}")).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "order {id} after the panic: {}",
            r.body
        );
    }
    let stored = stored_keys(&app, merchant).await;
    assert!(stored.values().all(|n| *n == 1), "duplicates: {stored:?}");
    assert_eq!(stored.len(), created + keys.len());
    // The calls the restart failed say nothing about the unit's database: its
    // circuit stays closed (it used to open once five of them had failed).
    assert_eq!(
        app.unit_status(unit).await["circuit"],
        "closed",
        "a caught panic opened the unit's circuit"
    );

    // The restarted unit takes creates again.
    let mut took = false;
    for i in 0..200 {
        let o = app.create(merchant, &format!("post-{i}"), "u-1", 10).await;
        if o["unit"].as_u64() == Some(u64::from(unit)) {
            took = true;
            break;
        }
    }
    assert!(took, "unit {unit} took no creates after its restart");
    app.shutdown().await;
}

#[actix_web::test]
async fn the_admin_api_needs_its_token() {
    let servers = servers_per_unit(1);
    let units = vec![(1, servers[0].url("orders").replace("root@", "root:s3cret@"))];
    let app = spawn_app_with(settings_for(&units, ""), tempfile::tempdir().unwrap()).await;
    let url = format!("{}/admin/units", app.admin);
    let r = app.client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    let r = app
        .client
        .get(&url)
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let status = app.units_status().await;
    let unit = &status["units"][0];
    assert_eq!(
        unit["primary_url"].as_str().unwrap(),
        servers[0].url("orders").replace("root@", "root:***@")
    );
    assert!(!status.to_string().contains("s3cret"));
    assert_eq!(unit["mode"], "open");
    // The scheme matches in any case (RFC 7235).
    let r = app
        .client
        .get(&url)
        .header(
            "authorization",
            format!("bEaReR {}", crate::helpers::ADMIN_TOKEN),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // The admin routes are not on the public listener, and public readiness
    // shows no unit's address.
    assert_eq!(app.get("/admin/units").await.status, StatusCode::NOT_FOUND);
    let ready = app.get("/readyz").await.body.to_string();
    assert!(
        !ready.contains("mysql://") && !ready.contains("127.0.0.1"),
        "{ready}"
    );
    app.shutdown().await;
}
