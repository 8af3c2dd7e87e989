//! The outbox relay end to end: every change's event reaches the events
//! file once per `event_id`, each order's in version order, the diffs
//! rebuild each order as the API shows it, published records are pruned;
//! with two engine processes on the same units, one relay per unit at a
//! time, and when the one holding a unit's lease stops, the other takes
//! the unit over within the lease.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use order_engine::domain::events::{FieldChange, apply};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, count_rows, settings_for, spawn_app_with, unit_urls};

/// The events in `file` (none when it does not exist yet).
fn events_in(file: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Waits (at most 15 s) until `files` together hold `n` distinct events.
fn wait_for(files: &[&std::path::Path], n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let all: Vec<Value> = files.iter().flat_map(|f| events_in(f)).collect();
        let mut ids: Vec<&str> = all
            .iter()
            .map(|e| e["event_id"].as_str().unwrap())
            .collect();
        ids.sort();
        ids.dedup();
        if ids.len() >= n {
            return all;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} events published",
            ids.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Each order's state from its events (deduplicated by `event_id`, in
/// file order), checking versions come in order.
pub fn rebuild(events: &[Value]) -> BTreeMap<String, Value> {
    let mut seen = std::collections::HashSet::new();
    let mut orders: BTreeMap<String, Value> = BTreeMap::new();
    for e in events {
        if !seen.insert(e["event_id"].as_str().unwrap().to_owned()) {
            continue;
        }
        let id = e["order_id"].as_str().unwrap().to_owned();
        match e.get("order") {
            Some(order) => {
                assert!(!orders.contains_key(&id), "created twice: {e}");
                orders.insert(id, order.clone());
            }
            None => {
                let state = orders.get_mut(&id).expect("created first");
                assert_eq!(e["version"], state["version"].as_i64().unwrap() + 1, "{e}");
                let changes: Vec<FieldChange> =
                    serde_json::from_value(e["changes"].clone()).unwrap();
                apply(state, &changes).unwrap();
            }
        }
    }
    orders
}

/// Creates, pays, refunds and section updates of `n` orders: the ids.
async fn lifecycle(app: &TestApp, tag: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let o = app.create("m-e", &format!("{tag}-{i}"), "u-e", 100).await;
        let id = o["order_id"].as_str().unwrap().to_owned();
        let section = format!("/v1/orders/{id}/sections/shipping");
        let r = app
            .send(Method::PUT, &section, Some(r#"{"city":"Guangzhou"}"#), None)
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        if i % 2 == 0 {
            let pay = json!({"payment_ref": format!("p-{i}"), "amount": 100});
            let r = app.post(&format!("/v1/orders/{id}/pay"), &pay).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.body);
            let refund = json!({"refund_id": "r.1", "amount": 30});
            let r = app.post(&format!("/v1/orders/{id}/refunds"), &refund).await;
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        } else {
            let r = app.send(Method::DELETE, &section, None, None).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        }
        ids.push(id);
    }
    ids
}

/// Every order rebuilt from its events is the order the API shows.
async fn check_rebuilt(app: &TestApp, ids: &[String], rebuilt: &BTreeMap<String, Value>) {
    for id in ids {
        let api = app.get(&format!("/v1/orders/{id}")).await.body;
        let state = &rebuilt[id];
        for field in [
            "status",
            "version",
            "paid_amount",
            "refunded_amount",
            "payment_ref",
            "updated_at",
            "sections",
        ] {
            assert_eq!(state[field], api[field], "{id} {field}: {state} vs {api}");
        }
        let refunds = app.get(&format!("/v1/orders/{id}/refunds")).await.body;
        let n = refunds["refunds"].as_array().map_or(0, Vec::len);
        assert_eq!(
            state["refunds"].as_object().unwrap().len(),
            n,
            "{id}: {state}"
        );
    }
}

#[actix_web::test]
async fn every_change_is_published_once_in_order_and_rebuilds_the_order() {
    let dir = tempfile::tempdir().unwrap();
    let units = unit_urls(Backend::Sqlite, 2, dir.path());
    let mut settings = settings_for(
        &units,
        "[events]\nrelay = true\npoll_ms = 50\nretain_published_ms = 0\n",
    );
    let file = dir.path().join("events.jsonl");
    settings.events.file = file.display().to_string();
    let app = spawn_app_with(settings, dir).await;
    let ids = lifecycle(&app, "one", 6).await;
    // Per order: created, section set, then pay + refund or section removed.
    let events = wait_for(&[&file], 6 * 3 + 3);
    assert_eq!(events.len(), 6 * 3 + 3, "each event once");
    check_rebuilt(&app, &ids, &rebuild(&events)).await;
    // Published records are pruned (retention 0).
    let deadline = Instant::now() + Duration::from_secs(10);
    for unit in [1, 2] {
        let db = app.unit_db(unit).await;
        while count_rows(&db, "outbox").await > 0 {
            assert!(
                Instant::now() < deadline,
                "unit {unit}'s outbox never pruned"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let published = app.metrics_text().await;
    assert!(
        published.contains("orderengine_events_published_total{unit=\"1\"}"),
        "{published}"
    );
    app.shutdown().await;
}

#[actix_web::test]
async fn two_processes_share_the_units_and_one_relays_each_unit_at_a_time() {
    let servers = crate::helpers::servers_per_unit(2);
    let units = crate::helpers::units_on(&servers);
    let extra = "[events]\nrelay = true\npoll_ms = 50\nlease_ms = 1000\n";
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // Outside the processes' directories, which go with them.
    let files = tempfile::tempdir().unwrap();
    let (file_a, file_b) = (files.path().join("a.jsonl"), files.path().join("b.jsonl"));
    let spawn = |dir: tempfile::TempDir, file: &std::path::Path| {
        let mut settings = settings_for(&units, extra);
        settings.events.file = file.display().to_string();
        spawn_app_with(settings, dir)
    };
    let a = spawn(dir_a, &file_a).await;
    let b = spawn(dir_b, &file_b).await;
    let mut ids = lifecycle(&a, "a", 4).await;
    ids.extend(lifecycle(&b, "b", 4).await);
    let events = wait_for(&[&file_a, &file_b], 8 * 3 + 4);
    assert_eq!(
        events.len(),
        8 * 3 + 4,
        "each event once across both processes"
    );
    // A unit's events all went through one process.
    let mut by_unit: HashMap<u64, [usize; 2]> = HashMap::new();
    for (f, file) in [&file_a, &file_b].into_iter().enumerate() {
        for e in events_in(file) {
            by_unit.entry(e["unit"].as_u64().unwrap()).or_default()[f] += 1;
        }
    }
    for (unit, counts) in &by_unit {
        assert!(
            counts.contains(&0),
            "unit {unit} published by both: {counts:?}"
        );
    }
    check_rebuilt(&a, &ids, &rebuild(&events)).await;

    // The process relaying the first order's unit stops: the other takes
    // that unit over.
    let unit: u64 = ids[0][1..5].parse().unwrap();
    let (stays, stays_file, gone_file) = if by_unit[&unit][0] > 0 {
        a.shutdown().await;
        (b, file_b, file_a)
    } else {
        b.shutdown().await;
        (a, file_a, file_b)
    };
    let before = events_in(&stays_file).len();
    let later = lifecycle(&stays, "later", 4).await;
    // Every event, those of the stopped process's unit included, arrives.
    wait_for(&[&gone_file, &stays_file], 8 * 3 + 4 + 4 * 3 + 2);
    let taken_over = events_in(&stays_file)[before..]
        .iter()
        .any(|e| e["unit"].as_u64() == Some(unit));
    assert!(taken_over, "unit {unit} never taken over");
    // The stopped process's events came first.
    let all: Vec<Value> = [&gone_file, &stays_file]
        .iter()
        .flat_map(|f| events_in(f))
        .collect();
    let mut everyone = ids.clone();
    everyone.extend(later);
    check_rebuilt(&stays, &everyone, &rebuild(&all)).await;
    stays.shutdown().await;
}
