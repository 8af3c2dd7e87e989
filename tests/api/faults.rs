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

#[actix_web::test]
async fn the_engine_starts_with_a_unit_down_and_takes_it_in_when_it_answers() {
    let mut servers = servers_per_unit(3);
    let units = units_on(&servers);
    // Every unit's database is created and used once, then unit 2's server dies.
    let first = spawn_app_with(settings_for(&units, ""), tempfile::tempdir().unwrap()).await;
    let mut in_two = None;
    for i in 0..60 {
        let o = first.create("m-1", &format!("early-{i}"), "u-1", 10).await;
        if o["unit"] == 2 {
            in_two = Some(o["order_id"].as_str().unwrap().to_string());
        }
    }
    first.shutdown().await;
    let in_two = in_two.expect("60 creates reach unit 2");
    servers[1].kill();

    let app = spawn_app_with(settings_for(&units, ""), tempfile::tempdir().unwrap()).await;
    let two = app.unit_status(2).await;
    assert_eq!(
        (two["running"].as_bool(), two["circuit"].as_str()),
        (Some(false), Some("open")),
        "{two}"
    );
    assert_eq!(two["takes_creates"], false);
    // Creates flow to the others (two of the three key homes answer).
    for i in 0..20 {
        let o = app.create("m-1", &format!("down-{i}"), "u-1", 10).await;
        assert_ne!(o["unit"], 2, "{o}");
    }
    let r = app.get(&format!("/v1/orders/{in_two}")).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "unit_unavailable"),
        "{}",
        r.body
    );

    // Its server comes back: the unit starts and takes calls again.
    servers[1].restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.unit_status(2).await["running"] != true {
        assert!(Instant::now() < deadline, "unit 2 never started");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = app.get(&format!("/v1/orders/{in_two}")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let mut reached = false;
    for i in 0..60 {
        if app.create("m-1", &format!("back-{i}"), "u-1", 10).await["unit"] == 2 {
            reached = true;
            break;
        }
    }
    assert!(reached, "60 creates never reached unit 2 after it started");
    app.shutdown().await;
}
