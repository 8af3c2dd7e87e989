//! A unit's primary fails over to its semi-synchronous replica while
//! creates and pays flow (`POST /admin/units/{id}/failover`).
//!
//! Emergency: the primary is SIGKILLed, eventual reads go on from the
//! replica, the failover promotes it; the unit serves again within 5 s of
//! the call, no acknowledged order or pay is lost, no key has two orders,
//! no sequence is handed out twice, and the old primary, once it is back,
//! is fenced. Planned: the old primary is fenced first and the replica
//! catches up with it exactly; a unit never starts on a fenced database.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use order_engine::domain::order_id::OrderId;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::TestApp;
use crate::mariadb::{
    primary_and_replica, primary_and_replicas, replicate, replicate_all, unique_db,
};
use crate::replication::{engine_with_replica, engine_with_replicas, order_in_unit_1};
use crate::repoint::{Ledger, Stored, caller, orders_at, stored_in};

/// Every order of unit 1 (at `unit1_url`) and of unit 2 as `app` has it.
async fn stored(app: &TestApp, unit1_url: &str) -> Stored {
    let unit2 = &app.units.iter().find(|(id, _)| *id == 2).unwrap().1;
    stored_in(&[(1, unit1_url), (2, unit2)]).await
}

/// The steps a failover's answer lists.
pub fn step_names(answer: &serde_json::Value) -> Vec<&str> {
    answer["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect()
}

async fn failover(app: &TestApp, mode: &str) -> crate::helpers::Reply {
    app.admin_send(
        Method::POST,
        "/admin/units/1/failover",
        &json!({ "mode": mode }),
        None,
    )
    .await
}

/// Whether a write to the database at `url` is refused by the fence. The
/// write stays out of the binlog: a semi-synchronous primary with no
/// replica would hold its commit (which fences it too, but for an hour).
pub async fn refuses_writes(url: &str) -> bool {
    use sqlx::Connection;
    let mut conn = sqlx::MySqlConnection::connect(url).await.unwrap();
    sqlx::raw_sql("SET SESSION sql_log_bin = 0")
        .execute(&mut conn)
        .await
        .unwrap();
    let wrote = sqlx::query("UPDATE probe SET token = token + 1 WHERE id = 1")
        .execute(&mut conn)
        .await;
    let mark = sqlx::query("SELECT value FROM engine_meta WHERE name = 'replaced_by_failover'")
        .fetch_optional(&mut conn)
        .await
        .unwrap();
    let _ = conn.close().await;
    match wrote {
        Err(sqlx::Error::Database(e)) => {
            assert!(e.message().contains("replaced by a failover"), "{e}");
            assert!(mark.is_some(), "fenced, but not marked");
            true
        }
        Err(e) => panic!("{e}"),
        Ok(_) => false,
    }
}

/// Waits (at most 5 s after `called`) until unit 1 serves `id` again.
pub async fn serves_again(app: &TestApp, id: &str, called: Instant) {
    loop {
        let r = app.get(&format!("/v1/orders/{id}")).await;
        if r.status == StatusCode::OK {
            println!("unit 1 serving {:?} after the call", called.elapsed());
            return;
        }
        assert!(
            called.elapsed() < Duration::from_secs(5),
            "unit 1 not serving 5 s after the failover call: {}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[actix_web::test]
async fn emergency_failover_under_load_loses_nothing() {
    let (mut primary, replica) = primary_and_replica();
    replicate(&primary, &replica).await;
    let db = unique_db("fo");
    let (old_url, new_url) = (primary.url(&db), replica.url(&db));
    let app = Arc::new(engine_with_replica(&old_url, &new_url).await);
    let early = order_in_unit_1(&app, "early").await;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let until = Instant::now() + Duration::from_secs(10);
    let callers: Vec<_> = (0..4)
        .map(|c| actix_web::rt::spawn(caller(app.base.clone(), c, "fo", until, ledger.clone())))
        .collect();

    tokio::time::sleep(Duration::from_secs(2)).await;
    primary.kill();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    // With the primary down, eventual reads are served by the replica.
    let r = app
        .get(&format!("/v1/orders/{early}?consistency=eventual"))
        .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "eventual read, primary down: {}",
        r.body
    );

    let called = Instant::now();
    let r = failover(&app, "emergency").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    println!("emergency failover: {} in {:?}", r.body, called.elapsed());
    assert_eq!(
        r.body["old_primary_fenced"], false,
        "the old primary is dead"
    );
    assert_eq!(
        step_names(&r.body),
        ["fence_writes", "catch_up", "promote", "repoint"]
    );
    serves_again(&app, &early, called).await;
    let unit = app.unit_status(1).await;
    assert!(
        unit["primary_url"]
            .as_str()
            .unwrap()
            .contains(&format!(":{}/", replica.port()))
    );
    assert_eq!(unit["replica_url"], serde_json::Value::Null);
    assert_eq!(unit["last_failover"]["mode"], "emergency");
    for c in callers {
        c.await.unwrap();
    }
    let ledger = Ledger::take(&ledger, "emergency failover under load");
    ledger.check(&stored(&app, &new_url).await);

    // The old primary comes back: fenced at once, and what it holds that
    // the promoted server lacks was never acknowledged; no sequence of it
    // names another order on the promoted server.
    primary.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    // Fenced, and then recorded as fenced (a moment later).
    while !refuses_writes(&old_url).await
        || app.unit_status(1).await["last_failover"]["old_primary_fenced"] != true
    {
        assert!(
            Instant::now() < deadline,
            "the old primary was never fenced: {}",
            app.unit_status(1).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let promoted: BTreeMap<i64, String> = orders_at(&new_url)
        .await
        .into_iter()
        .map(|(key, seq, _)| (seq, key))
        .collect();
    let on_old = orders_at(&old_url).await;
    for (key, seq, _) in &on_old {
        if let Some(other) = promoted.get(seq) {
            assert_eq!(other, key, "sequence {seq} reused");
        } else {
            // Not on the promoted server: never acknowledged. (Its key may
            // have been: a retry after the failover made another order,
            // which the ledger check above found.)
            let acked = ledger
                .created
                .get(key)
                .map(|id| OrderId::parse(id).unwrap());
            assert!(
                !acked.is_some_and(|id| id.unit() == 1 && id.sequence() as i64 == *seq),
                "{key} acknowledged as sequence {seq}, lost"
            );
        }
    }
    // Unit 1 took creates after the failover, past every earlier sequence.
    let old_max = on_old.iter().map(|o| o.1).max().unwrap_or(0);
    let after: Vec<i64> = promoted
        .iter()
        .filter(|(_, key)| !on_old.iter().any(|o| &o.0 == *key))
        .map(|(seq, _)| *seq)
        .collect();
    assert!(
        !after.is_empty(),
        "no create reached unit 1 after the failover"
    );
    assert!(after.iter().all(|s| *s > old_max), "{after:?} vs {old_max}");
    // A unit never starts on the fenced database again.
    let r = app
        .admin_send(
            Method::PATCH,
            "/admin/units/1",
            &json!({"mode": "disabled"}),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = app
        .admin_send(
            Method::PATCH,
            "/admin/units/1",
            &json!({"primary_url": old_url}),
            None,
        )
        .await;
    assert_eq!(r.code(), "invalid_change", "{}", r.body);
    let said = r.body["error"]["message"].as_str().unwrap();
    assert!(said.contains("failover"), "{said}");
}

/// With two replicas: the first call promotes one and fails at the
/// repoint; repeated, it goes on from there and re-points the other at the
/// new primary; a second planned failover then moves the unit on to that
/// other one.
#[actix_web::test]
async fn planned_failover_fences_the_old_primary_first() {
    let (primary, replicas) = primary_and_replicas(2);
    replicate_all(&primary, &[&replicas[0], &replicas[1]]).await;
    let db = unique_db("fp");
    let old_url = primary.url(&db);
    let urls: Vec<String> = replicas.iter().map(|r| r.url(&db)).collect();
    let app = Arc::new(engine_with_replicas(&old_url, &urls).await);
    let state_file = app.state_file.clone().expect("the table is kept");
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let until = Instant::now() + Duration::from_secs(6);
    let callers: Vec<_> = (0..4)
        .map(|c| actix_web::rt::spawn(caller(app.base.clone(), c, "fp", until, ledger.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The first call cannot keep the new table (its state file's place is
    // taken by a directory): it promotes a replica, then fails at the
    // repoint, and the unit waits, fenced.
    let state = state_file.clone();
    let _ = std::fs::remove_file(&state);
    std::fs::create_dir_all(state.join("blocked")).unwrap();
    let r = failover(&app, "planned").await;
    assert_eq!(r.code(), "failover_failed", "{}", r.body);
    let said = r.body["error"]["message"].as_str().unwrap();
    assert!(said.contains("repoint"), "{said}");
    std::fs::remove_dir_all(&state).unwrap();
    // Repeated, it goes on from there.
    let called = Instant::now();
    let r = failover(&app, "planned").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    println!(
        "planned failover, repeated: {} in {:?}",
        r.body,
        called.elapsed()
    );
    assert_eq!(r.body["old_primary_fenced"], true);
    assert_eq!(
        step_names(&r.body),
        ["fence_writes", "promote", "repoint_replicas", "repoint"]
    );
    assert_eq!(r.body["replicas"][0]["outcome"], "repointed", "{}", r.body);
    assert_eq!(r.body["semi_sync"], true, "{}", r.body);
    let promoted = replicas
        .iter()
        .position(|s| {
            let primary = r.body["primary_url"].as_str().unwrap();
            primary.contains(&format!(":{}/", s.port()))
        })
        .expect("a replica was promoted");
    let (new_url, other_url) = (&urls[promoted], &urls[1 - promoted]);
    for c in callers {
        c.await.unwrap();
    }
    let ledger = Ledger::take(&ledger, "planned failover under load");
    ledger.check(&stored(&app, new_url).await);
    assert!(
        refuses_writes(&old_url).await,
        "the old primary takes writes"
    );
    // The promoted server holds everything the old one committed.
    let old: Vec<String> = orders_at(&old_url).await.into_iter().map(|o| o.0).collect();
    let new: Vec<String> = orders_at(new_url).await.into_iter().map(|o| o.0).collect();
    for key in &old {
        assert!(
            new.contains(key),
            "{key} committed on the old primary, not on the new"
        );
    }
    // The other replica follows the new primary: a second planned
    // failover moves the unit on to it, with every order.
    order_in_unit_1(&app, "second").await;
    let r = failover(&app, "planned").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["replicas"], json!([]), "{}", r.body);
    let last: Vec<String> = orders_at(other_url)
        .await
        .into_iter()
        .map(|o| o.0)
        .collect();
    for key in orders_at(new_url).await.into_iter().map(|o| o.0) {
        assert!(last.contains(&key), "{key} did not reach the last primary");
    }
    assert!(refuses_writes(new_url).await);
    // Nothing to fail over to any more.
    let r = failover(&app, "planned").await;
    assert_eq!(r.code(), "no_replica", "{}", r.body);
}

/// Two engine processes share the routing table through a control store;
/// a planned failover through one. The other keeps writing to the old
/// primary until it follows the repoint: the fence refuses those writes
/// (its callers retry), so nothing it acknowledged is left behind on the
/// old primary.
#[actix_web::test]
async fn a_planned_failover_fences_the_other_processes_too() {
    use crate::mariadb::shared;
    use crate::process::Engine;
    let (primary, replica) = primary_and_replica();
    replicate(&primary, &replica).await;
    let db = unique_db("f2");
    let (old_url, new_url) = (primary.url(&db), replica.url(&db));
    let others: Vec<String> = (2..=3)
        .map(|u| shared().url(&unique_db(&format!("f2u{u}"))))
        .collect();
    let units = format!(
        "[[units]]\nid = 1\nprimary_url = \"{old_url}\"\nreplica_url = \"{new_url}\"\n\
         [[units]]\nid = 2\nprimary_url = \"{}\"\n[[units]]\nid = 3\nprimary_url = \"{}\"\n",
        others[0], others[1]
    );
    let control = format!(
        "control_url = \"{}\"",
        shared().url(&unique_db("f2control"))
    );
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let mut a = Engine::new(dir.path(), "a", &control, &units);
    a.ready(&client).await;
    // B polls the control store slowly: it goes on writing to the old
    // primary for seconds after the fence.
    let slow = format!("{control}\ncontrol_poll_ms = 3000");
    let mut b = Engine::new(dir.path(), "b", &slow, &units);
    b.ready(&client).await;
    let refused = "orderengine_unit_calls_total{unit=\"1\",outcome=\"unavailable\"}";

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let until = Instant::now() + Duration::from_secs(8);
    let callers: Vec<_> = [(a.port, "f2a"), (b.port, "f2b")]
        .into_iter()
        .flat_map(|(port, tag)| (0..2).map(move |c| (port, tag, c)))
        .map(|(port, tag, c)| {
            let base = format!("http://127.0.0.1:{port}");
            actix_web::rt::spawn(caller(base, c, tag, until, ledger.clone()))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, body) = a
        .admin(
            &client,
            Method::POST,
            "/admin/units/1/failover",
            Some(json!({"mode": "planned"})),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let version = body["version"].as_u64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.units(&client).await["version"].as_u64() < Some(version) {
        assert!(Instant::now() < deadline, "B never took the failover in");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for c in callers {
        c.await.unwrap();
    }
    let ledger = Ledger::take(&ledger, "planned failover, two processes");
    ledger.check(&stored_in(&[(1, &new_url), (2, &others[0]), (3, &others[1])]).await);
    let on_new: Vec<String> = orders_at(&new_url).await.into_iter().map(|o| o.0).collect();
    for (key, _, _) in orders_at(&old_url).await {
        assert!(
            on_new.contains(&key),
            "{key} committed on the old primary only"
        );
    }
    let through_b = ledger
        .created
        .keys()
        .filter(|k| k.starts_with("f2b"))
        .count();
    assert!(through_b > 0);
    let fenced_calls = b.metric(&client, refused).await;
    println!("B's calls refused by the fence before it followed: {fenced_calls}");
    assert!(fenced_calls > 0.0, "B never met the fence");
    assert!(refuses_writes(&old_url).await);
}

/// A failover that finds no replica to promote (its one replica does not
/// answer) fails, and is counted failed like any other: the alert
/// `OrderEngineFailoverFailed` watches that count (it was answered, but
/// never counted). In a process of its own: the count is per process.
#[tokio::test]
async fn a_failover_with_no_replica_to_promote_is_counted_failed() {
    use crate::mariadb::{free_port, shared};
    use crate::process::Engine;

    let dir = tempfile::tempdir().unwrap();
    let primary = shared().url(&unique_db("fo_none"));
    let gone = format!("mysql://root@127.0.0.1:{}/fo_none", free_port());
    let units =
        format!("[[units]]\nid = 1\nprimary_url = \"{primary}\"\nreplica_urls = [\"{gone}\"]\n");
    let state = dir.path().join("routing.json");
    let admin = format!("state_file = \"{}\"", state.display());
    let client = reqwest::Client::new();
    let mut engine = Engine::new(dir.path(), "fo", &admin, &units);
    engine.ready(&client).await;
    let body = json!({"mode": "emergency"});
    let path = "/admin/units/1/failover";
    let (status, answer) = engine
        .admin(&client, Method::POST, path, Some(body), None)
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    assert_eq!(answer["error"]["code"], "failover_failed", "{answer}");
    let failed = r#"orderengine_unit_failovers_total{unit="1",mode="emergency",outcome="failed"}"#;
    assert_eq!(engine.metric(&client, failed).await, 1.0);
}

/// An emergency failover that promotes the replica but cannot repoint the
/// unit (its table cannot be kept) still fences the old primary once it is
/// back: the table still names it, and other processes would write to it
/// until the call is repeated. (Only a failover that succeeded fenced it.)
#[actix_web::test]
async fn an_emergency_failover_failing_after_the_promotion_still_fences_the_old_primary() {
    let (mut primary, replica) = primary_and_replica();
    replicate(&primary, &replica).await;
    let db = unique_db("fl");
    let old_url = primary.url(&db);
    let app = engine_with_replica(&old_url, &replica.url(&db)).await;
    order_in_unit_1(&app, "before").await;
    primary.kill();
    let state = app.state_file.clone().expect("the table is kept");
    let _ = std::fs::remove_file(&state);
    std::fs::create_dir_all(state.join("blocked")).unwrap();
    let r = failover(&app, "emergency").await;
    assert_eq!(r.code(), "failover_failed", "{}", r.body);
    let said = r.body["error"]["message"].as_str().unwrap();
    assert!(said.contains("repoint"), "{said}");

    primary.restart();
    // Fenced: marked, and its tables' writes refused by triggers. (Read,
    // not written: the unit's probe, still sent there, holds the probe row
    // waiting for a semi-synchronous ack no replica will give.)
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(pool) = sqlx::MySqlPool::connect(&old_url).await {
            let mark: Option<String> = sqlx::query_scalar(
                "SELECT value FROM engine_meta WHERE name = 'replaced_by_failover'",
            )
            .fetch_optional(&pool)
            .await
            .unwrap_or(None);
            let triggers: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM information_schema.triggers \
                 WHERE trigger_schema = DATABASE() AND trigger_name LIKE 'oe_fence_orders_%'",
            )
            .fetch_one(&pool)
            .await
            .unwrap_or(0);
            pool.close().await;
            if mark.is_some() && triggers == 3 {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the old primary is back and not fenced"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
