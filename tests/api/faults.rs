//! Fault containment: one unit's database dies; only that unit's orders are
//! affected, and they come back with it.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{servers_per_unit, settings_for, spawn_app_with, units_on};

#[actix_web::test]
async fn a_dead_unit_fails_only_its_own_orders() {
    let mut servers = servers_per_unit(3);
    let units = units_on(&servers);
    let app = spawn_app_with(settings_for(&units, ""), tempfile::tempdir().unwrap()).await;

    // One order in every unit.
    let mut by_unit = std::collections::BTreeMap::new();
    for i in 0..200 {
        if by_unit.len() == 3 {
            break;
        }
        let o = app.create("m-1", &format!("f-{i}"), "u-1", 10).await;
        let id = o["order_id"].as_str().unwrap().to_string();
        by_unit
            .entry(id[1..5].parse::<u16>().unwrap())
            .or_insert(id);
    }
    assert_eq!(by_unit.len(), 3);

    servers[1].kill(); // unit 2
    let started = Instant::now();
    let r = app.get(&format!("/v1/orders/{}", by_unit[&2])).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "unit_unavailable"),
        "{}",
        r.body
    );
    assert!(r.headers.contains_key("retry-after"));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "failed fast: {:?}",
        started.elapsed()
    );
    let r = app
        .post(&format!("/v1/orders/{}/close", by_unit[&2]), &json!({}))
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    for unit in [1, 3] {
        let r = app.get(&format!("/v1/orders/{}", by_unit[&unit])).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "unit {unit} is unaffected: {}",
            r.body
        );
        let r = app
            .post(&format!("/v1/orders/{}/close", by_unit[&unit]), &json!({}))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }

    servers[1].restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = app.get(&format!("/v1/orders/{}", by_unit[&2])).await;
        if r.status == StatusCode::OK {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "unit 2 did not come back: {}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    app.shutdown().await;
}
