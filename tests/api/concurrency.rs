//! Load spread and no lost updates under concurrency, on MariaDB.

use std::collections::HashMap;

use futures_util::StreamExt;
use futures_util::stream;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{
    Backend, count_rows, order_body, settings_for, spawn_app, spawn_app_with, unit_urls,
};

#[actix_web::test]
async fn creates_spread_evenly_over_units() {
    let app = spawn_app(Backend::MariaDb, 4).await;
    const N: usize = 2_000;
    let replies: Vec<_> = stream::iter(0..N)
        .map(|i| {
            let app = &app;
            async move {
                app.post(
                    "/v1/orders",
                    &order_body("m-1", &format!("spread-{i}"), "u-1", 10),
                )
                .await
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let mut per_unit: HashMap<u16, usize> = HashMap::new();
    for r in &replies {
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        let id = r.body["order_id"].as_str().unwrap();
        *per_unit.entry(id[1..5].parse().unwrap()).or_default() += 1;
    }
    assert_eq!(per_unit.len(), 4, "{per_unit:?}");
    for (unit, n) in &per_unit {
        assert!(
            *n * 100 <= N * 35,
            "unit {unit} took {n} of {N}: {per_unit:?}"
        );
    }
    // What the replies say is what the databases hold.
    for (unit, n) in &per_unit {
        let stored = count_rows(&app.unit_db(*unit).await, "orders").await;
        assert_eq!(stored as usize, *n, "unit {unit}");
    }
    app.shutdown().await;
}

#[actix_web::test]
async fn concurrent_refunds_never_exceed_the_paid_amount() {
    let app = spawn_app(Backend::MariaDb, 3).await;
    let id = app.paid_order("refund-race", 100).await;
    let path = format!("/v1/orders/{id}/refunds");
    let bodies: Vec<_> = (0..50)
        .map(|i| json!({"refund_id": format!("r-{i}"), "amount": 10}))
        .collect();
    let replies = futures_util::future::join_all(bodies.iter().map(|b| app.post(&path, b))).await;
    let ok = replies
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .count();
    assert_eq!(ok, 10, "exactly ten refunds of 10 fit into 100");
    for r in replies.iter().filter(|r| r.status != StatusCode::CREATED) {
        assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
        assert!(
            matches!(r.code(), "refund_exceeds_paid" | "invalid_transition"),
            "{}",
            r.body
        );
    }
    let order = app.get(&format!("/v1/orders/{id}")).await.body;
    assert_eq!(order["refunded_amount"], 100);
    assert_eq!(order["status"], "refunded");
    assert_eq!(order["version"], 2 + 10);
    let refunds = app.get(&format!("/v1/orders/{id}/refunds")).await.body;
    assert_eq!(refunds["refunds"].as_array().unwrap().len(), 10);
    app.shutdown().await;
}

#[actix_web::test]
async fn concurrent_pays_and_closes_have_one_winner() {
    let app = spawn_app(Backend::MariaDb, 3).await;
    for round in 0..5 {
        let order = app
            .create("m-1", &format!("race-{round}"), "u-1", 100)
            .await;
        let id = order["order_id"].as_str().unwrap().to_string();
        let calls = (0..20).map(|i| {
            let (path, body) = if i % 2 == 0 {
                (
                    format!("/v1/orders/{id}/pay"),
                    json!({"payment_ref": format!("p-{i}"), "amount": 100}),
                )
            } else {
                (format!("/v1/orders/{id}/close"), json!({}))
            };
            let app = &app;
            async move { app.post(&path, &body).await }
        });
        let replies = futures_util::future::join_all(calls).await;
        let final_order = app.get(&format!("/v1/orders/{id}")).await.body;
        assert_eq!(
            final_order["version"], 2,
            "exactly one change won: {final_order}"
        );
        let pays_ok = replies
            .iter()
            .filter(|r| r.status == StatusCode::OK && r.body["status"] == "paid")
            .count();
        match final_order["status"].as_str().unwrap() {
            "paid" => assert_eq!(pays_ok, 1),
            "closed" => assert_eq!(pays_ok, 0),
            other => panic!("unexpected status {other}"),
        }
        for r in &replies {
            assert!(matches!(r.status.as_u16(), 200 | 409), "{}", r.body);
        }
    }
    app.shutdown().await;
}

#[actix_web::test]
async fn two_engines_sharing_unit_databases_never_reuse_an_id() {
    let dir = tempfile::tempdir().unwrap();
    let units = crate::helpers::unit_urls(Backend::MariaDb, 2, dir.path());
    let a = crate::helpers::spawn_app_with(
        crate::helpers::settings_for(&units, ""),
        tempfile::tempdir().unwrap(),
    )
    .await;
    let b = crate::helpers::spawn_app_with(crate::helpers::settings_for(&units, ""), dir).await;
    let replies: Vec<_> = stream::iter(0..400)
        .map(|i| {
            let app = if i % 2 == 0 { &a } else { &b };
            async move {
                app.post(
                    "/v1/orders",
                    &order_body("m-1", &format!("shared-{i}"), "u-1", 10),
                )
                .await
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut ids = std::collections::HashSet::new();
    let mut seqs = std::collections::HashSet::new();
    for r in &replies {
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        let id = r.body["order_id"].as_str().unwrap().to_string();
        assert!(
            seqs.insert((id[1..5].to_string(), id[17..27].to_string())),
            "(unit, sequence) reused: {id}"
        );
        ids.insert(id);
    }
    assert_eq!(ids.len(), 400);
    a.shutdown().await;
    b.shutdown().await;
}

#[actix_web::test]
async fn overlapping_batches_of_refunds_never_deadlock() {
    // One unit whose batches overlap freely: up to four refund transactions
    // at once, each locking its own mix of the same orders. Batches that
    // locked rows in different orders would deadlock, and the server would
    // abort one of them: its callers would get 503.
    let dir = tempfile::tempdir().unwrap();
    let units = unit_urls(Backend::MariaDb, 1, dir.path());
    let extra = "[group_commit]\nmax_in_flight_batches = 4\noverlap_at = 1\n";
    let app = spawn_app_with(settings_for(&units, extra), dir).await;
    let mut ids = Vec::new();
    for i in 0..12 {
        ids.push(app.paid_order(&format!("lock-{i}"), 1_000).await);
    }
    // Twenty refunds of 1 per order, each round visiting the orders in
    // another order, from 64 callers at once.
    let calls: Vec<(String, serde_json::Value)> = (0..20)
        .flat_map(|round| {
            let ids = &ids;
            (0..ids.len()).map(move |k| {
                let id = &ids[(k * 7 + round * 5) % ids.len()];
                (
                    format!("/v1/orders/{id}/refunds"),
                    json!({"refund_id": format!("r-{round}"), "amount": 1}),
                )
            })
        })
        .collect();
    let replies: Vec<_> = stream::iter(&calls)
        .map(|(path, body)| app.post(path, body))
        .buffer_unordered(64)
        .collect()
        .await;
    for r in &replies {
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    }
    for id in &ids {
        let order = app.get(&format!("/v1/orders/{id}")).await.body;
        assert_eq!(order["refunded_amount"], 20, "{order}");
        assert_eq!(order["version"], 2 + 20, "{order}");
    }
    app.shutdown().await;
}
