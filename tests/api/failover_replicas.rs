//! A unit with two replicas fails over: the replica that received the most
//! is promoted whatever the order of the unit's `replica_urls`, the other
//! is re-pointed at it and stays the unit's replica (and the new primary's
//! commits wait for it again); an emergency failover that cannot ask every
//! replica stops, unless the caller gives the silent ones up.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::json;
use sqlx::Row;

use crate::failover::{serves_again, step_names};
use crate::helpers::TestApp;
use crate::mariadb::{MariaDb, primary_and_replicas, replicate_all, unique_db};
use crate::replication::{engine_with_replicas, eventual_reads, order_in_unit_1, read};
use crate::repoint::{Ledger, caller, orders_at, stored_in};

async fn sql(server: &MariaDb, statement: &'static str) -> Vec<sqlx::mysql::MySqlRow> {
    let pool = sqlx::MySqlPool::connect(&server.url("mysql"))
        .await
        .unwrap();
    let rows = sqlx::raw_sql(statement).fetch_all(&pool).await.unwrap();
    pool.close().await;
    rows
}

async fn status_var(server: &MariaDb, name: &'static str) -> String {
    let rows = sql(server, name).await;
    rows[0].get::<String, _>(1)
}

async fn failover(app: &TestApp, body: serde_json::Value) -> crate::helpers::Reply {
    app.admin_send(Method::POST, "/admin/units/1/failover", &body, None)
        .await
}

#[actix_web::test]
async fn emergency_failover_promotes_the_replica_that_received_the_most() {
    let (mut primary, replicas) = primary_and_replicas(2);
    let (behind, ahead) = (&replicas[0], &replicas[1]);
    replicate_all(&primary, &[behind, ahead]).await;
    let db = unique_db("fm");
    let (old_url, behind_url, ahead_url) = (primary.url(&db), behind.url(&db), ahead.url(&db));
    // The replica that will lag is named first.
    let app =
        Arc::new(engine_with_replicas(&old_url, &[behind_url.clone(), ahead_url.clone()]).await);
    let early = order_in_unit_1(&app, "early").await;
    // `behind` stops receiving: from now on `ahead` alone acknowledges.
    sql(behind, "STOP SLAVE IO_THREAD").await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let until = Instant::now() + Duration::from_secs(8);
    let callers: Vec<_> = (0..4)
        .map(|c| actix_web::rt::spawn(caller(app.base.clone(), c, "fm", until, ledger.clone())))
        .collect();

    // An eventual read of an order `behind` lacks is served by a replica:
    // `ahead`, the fresh one least behind.
    let fresh = order_in_unit_1(&app, "fresh").await;
    let by_replica = eventual_reads(&app, "replica").await;
    let (status, body) = read(&app, &fresh, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(eventual_reads(&app, "replica").await, by_replica + 1.0);
    let unit = app.unit_status(1).await;
    assert_eq!(unit["replicas"].as_array().unwrap().len(), 2, "{unit}");
    assert!(
        unit["replicas"][1]["lag_ms"].as_i64() < unit["replicas"][0]["lag_ms"].as_i64(),
        "{unit}"
    );

    tokio::time::sleep(Duration::from_secs(2)).await;
    primary.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let called = Instant::now();
    let r = failover(&app, json!({"mode": "emergency"})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    println!(
        "emergency failover, two replicas: {} in {:?}",
        r.body,
        called.elapsed()
    );
    let port = |s: &MariaDb| format!(":{}/", s.port());
    assert!(
        r.body["primary_url"]
            .as_str()
            .unwrap()
            .contains(&port(ahead)),
        "{}",
        r.body
    );
    assert_eq!(
        step_names(&r.body),
        [
            "fence_writes",
            "catch_up",
            "promote",
            "repoint_replicas",
            "repoint"
        ]
    );
    assert_eq!(r.body["replicas"][0]["outcome"], "repointed", "{}", r.body);
    assert!(
        r.body["replicas"][0]["url"]
            .as_str()
            .unwrap()
            .contains(&port(behind))
    );
    assert_eq!(r.body["semi_sync"], true, "{}", r.body);
    serves_again(&app, &early, called).await;
    for c in callers {
        c.await.unwrap();
    }
    let ledger = Ledger::take(&ledger, "emergency failover, two replicas");
    let unit2 = &app.units.iter().find(|(id, _)| *id == 2).unwrap().1;
    ledger.check(&stored_in(&[(1, &ahead_url), (2, unit2)]).await);

    // `behind` replicates the new primary: it catches up with every
    // acknowledged order of unit 1, and the new primary's commits wait for it.
    let in_unit_1: Vec<&String> = ledger
        .created
        .iter()
        .filter(|(_, id)| id[1..5].parse::<u16>().unwrap() == 1)
        .map(|(key, _)| key)
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let on_behind: Vec<String> = orders_at(&behind_url)
            .await
            .into_iter()
            .map(|o| o.0)
            .collect();
        let missing = in_unit_1.iter().filter(|k| !on_behind.contains(k)).count();
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} acknowledged orders never reached `behind`"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        status_var(ahead, "SHOW STATUS LIKE 'Rpl_semi_sync_master_status'").await,
        "ON"
    );
    let unit = app.unit_status(1).await;
    assert_eq!(unit["replica_urls"].as_array().unwrap().len(), 1, "{unit}");
    assert!(
        unit["replica_url"]
            .as_str()
            .unwrap()
            .contains(&port(behind)),
        "{unit}"
    );
    let after = order_in_unit_1(&app, "after").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while read(&app, &after, None).await.0 != StatusCode::OK
        || app.unit_status(1).await["replicas"][0]["reachable"] != true
    {
        assert!(Instant::now() < deadline, "{}", app.unit_status(1).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The second replica stops receiving, so an order is acknowledged by the
/// first alone; then the primary and the first replica die. The failover
/// stops rather than lose that order; told to skip the silent replica, it
/// promotes the second (the order is lost: what the option risks), and
/// the first, back meanwhile, is dropped: it holds what the new primary
/// lacks. (The first skipping call fails at the repoint, so the repeat
/// meets the first replica answering again.)
#[actix_web::test]
async fn emergency_failover_stops_for_a_silent_replica_unless_told_to_skip_it() {
    let (mut primary, mut replicas) = primary_and_replicas(2);
    replicate_all(&primary, &[&replicas[0], &replicas[1]]).await;
    let db = unique_db("fs");
    let urls: Vec<String> = replicas.iter().map(|r| r.url(&db)).collect();
    let app = engine_with_replicas(&primary.url(&db), &urls).await;
    let early = order_in_unit_1(&app, "early").await;
    sql(&replicas[1], "STOP SLAVE IO_THREAD").await;
    let only_on_first = order_in_unit_1(&app, "only-on-first").await;
    primary.kill();
    replicas[0].kill();
    // The silent replica may hold commits no other has: no promotion.
    let r = failover(&app, json!({"mode": "emergency"})).await;
    assert_eq!(r.code(), "failover_failed", "{}", r.body);
    let said = r.body["error"]["message"].as_str().unwrap();
    assert!(said.contains("skip_unreachable_replicas"), "{said}");
    let port = |s: &MariaDb| format!(":{}/", s.port());
    let unit = app.unit_status(1).await;
    assert!(
        unit["primary_url"]
            .as_str()
            .unwrap()
            .contains(&port(&primary)),
        "{unit}"
    );
    assert_eq!(unit["replica_urls"].as_array().unwrap().len(), 2, "{unit}");

    // Told to, it promotes the one that answers; the table cannot be
    // written (its file's place is taken), so the call stops there.
    let skip = json!({"mode": "emergency", "skip_unreachable_replicas": true});
    let state = app.state_file.clone().expect("the table is kept");
    let _ = std::fs::remove_file(&state);
    std::fs::create_dir_all(state.join("blocked")).unwrap();
    let r = failover(&app, skip.clone()).await;
    assert_eq!(r.code(), "failover_failed", "{}", r.body);
    std::fs::remove_dir_all(&state).unwrap();
    // The first replica is back, ahead of the promoted one: dropped.
    replicas[0].restart();
    let called = Instant::now();
    let r = failover(&app, skip).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(
        r.body["primary_url"]
            .as_str()
            .unwrap()
            .contains(&port(&replicas[1]))
    );
    assert_eq!(r.body["replicas"][0]["outcome"], "dropped", "{}", r.body);
    let why = r.body["replicas"][0]["error"].as_str().unwrap();
    assert!(why.contains("lacks"), "{why}");
    assert_eq!(r.body["semi_sync"], false, "{}", r.body);
    serves_again(&app, &early, called).await;
    let unit = app.unit_status(1).await;
    assert_eq!(unit["replica_urls"], json!([]), "{unit}");
    assert_eq!(unit["last_failover"]["semi_sync"], false, "{unit}");
    let lost = app.get(&format!("/v1/orders/{only_on_first}")).await;
    assert_eq!(lost.status, StatusCode::NOT_FOUND, "{}", lost.body);
}

/// A planned failover whose replica cannot catch up goes back to the old
/// primary; a unit disabled while it waited stays disabled and fenced in
/// this process (the undo decided from the table as it was when the
/// failover began, and cancelled the disabled unit's pending fence).
#[actix_web::test]
async fn a_failover_undone_leaves_a_unit_disabled_meanwhile_fenced() {
    let (primary, replica) = crate::mariadb::primary_and_replica();
    crate::mariadb::replicate(&primary, &replica).await;
    let db = unique_db("fu");
    let units = vec![
        (1, primary.url(&db)),
        (2, crate::mariadb::shared().url(&unique_db("fu2"))),
    ];
    let mut settings = crate::helpers::settings_for(&units, "");
    settings.units[0].replica_urls = vec![replica.url(&db)];
    settings.storage.failover_catch_up_ms = 3_000;
    let dir = tempfile::tempdir().unwrap();
    settings.admin.state_file = Some(dir.path().join("routing.json").display().to_string());
    let app = crate::helpers::spawn_app_with(settings, dir).await;
    order_in_unit_1(&app, "before").await;
    // The replica receives but does not apply: it cannot catch up.
    sql(&replica, "STOP SLAVE SQL_THREAD").await;
    order_in_unit_1(&app, "unapplied").await;

    let planned = failover(&app, json!({"mode": "planned"}));
    let disable = async {
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        let r = app
            .admin_send(
                Method::PATCH,
                "/admin/units/1",
                &json!({"mode": "disabled"}),
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    };
    let (r, ()) = tokio::join!(planned, disable);
    assert_eq!(r.code(), "failover_failed", "{}", r.body);
    let said = r.body["error"]["message"].as_str().unwrap();
    assert!(said.contains("catch_up"), "{said}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let unit = app.unit_status(1).await;
        assert_eq!(unit["mode"], "disabled", "{unit}");
        if unit["writes_fenced"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "never fenced: {unit}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
