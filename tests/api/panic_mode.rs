//! Panic mode reached for real: when fewer than half the units a
//! partition's creates can reach look healthy, health is no longer trusted
//! there and creates spread over all its open units (a wrong health view
//! must not shrink a partition to one unit). The engine runs as its own
//! process, so that its metrics are this test's alone.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::order_body;
use crate::mariadb::{shared, unique_db};
use crate::process::Engine;
use crate::proxy::{Mode, Proxy};

/// Creates retried on another unit because the first had its circuit open
/// or could not be reached.
async fn retried_elsewhere(engine: &Engine, client: &reqwest::Client) -> f64 {
    let mut sum = 0.0;
    for reason in ["circuit_open", "unavailable"] {
        let name = format!("orderengine_create_retries_total{{reason=\"{reason}\"}}");
        sum += engine.metric(client, &name).await;
    }
    sum
}

async fn panic_in(engine: &Engine, client: &reqwest::Client, partition: &str) -> bool {
    engine.units(client).await["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == partition && p["panic"] == true)
}

#[actix_web::test]
async fn a_partition_with_most_units_down_spreads_creates_over_all_its_units() {
    let dir = tempfile::tempdir().unwrap();
    let server = shared();
    let tag = unique_db("panic");
    let (four, five) = (
        Proxy::start(server.port()).await,
        Proxy::start(server.port()).await,
    );
    let mut units = String::new();
    for u in 1..=6u16 {
        let port = match u {
            4 => four.port,
            5 => five.port,
            _ => server.port(),
        };
        let partition = if u >= 4 { "small" } else { "standard" };
        units += &format!(
            "[[units]]\nid = {u}\npartition = \"{partition}\"\nprimary_url = \"mysql://root@127.0.0.1:{port}/{tag}_u{u}\"\n"
        );
    }
    let rest = format!(
        "[supervisor]\nprobe_interval_ms = 200\nprobe_timeout_ms = 500\n\
         [merchants]\n\"m-small\" = \"small\"\n{units}"
    );
    let client = reqwest::Client::new();
    let mut engine = Engine::new(dir.path(), "panic", "", &rest);
    engine.ready(&client).await;
    assert!(!panic_in(&engine, &client, "small").await);

    // Two of the partition's three units die: one in three looks healthy.
    four.set(Mode::Refuse);
    five.set(Mode::Refuse);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !panic_in(&engine, &client, "small").await {
        assert!(
            Instant::now() < deadline,
            "panic mode never came: {}",
            engine.units(&client).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        engine
            .metric(
                &client,
                "orderengine_partition_panic_mode{partition=\"small\"}"
            )
            .await,
        1.0
    );
    // Health is ignored: creates go to units 4 and 5 as well, fail there
    // (certainly uncommitted) and are retried on unit 6.
    let before = retried_elsewhere(&engine, &client).await;
    let mut landed = Vec::new();
    for i in 0..40 {
        let r = client
            .post(format!("http://127.0.0.1:{}/v1/orders", engine.port))
            .json(&order_body("m-small", &format!("p-{i}"), "u-1", 10))
            .send()
            .await
            .unwrap();
        // A key whose homes include both dead units cannot be created (503).
        if r.status() == StatusCode::CREATED {
            let body: Value = r.json().await.unwrap();
            landed.push(body["unit"].as_u64().unwrap());
        } else {
            assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        }
    }
    assert!(!landed.is_empty(), "no create succeeded");
    assert!(landed.iter().all(|u| *u == 6), "{landed:?}");
    let spread = retried_elsewhere(&engine, &client).await - before;
    assert!(spread > 0.0, "no create was tried on an unhealthy unit");
    // The other partition trusts health as before.
    assert!(!panic_in(&engine, &client, "standard").await);

    // The units come back: panic mode ends.
    four.set(Mode::Pass);
    five.set(Mode::Pass);
    let deadline = Instant::now() + Duration::from_secs(30);
    while panic_in(&engine, &client, "small").await {
        assert!(Instant::now() < deadline, "panic mode never ended");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    engine.kill();
}
