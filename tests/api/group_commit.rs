//! Group commit on MariaDB: concurrent creates share transactions, and each
//! caller still gets exactly the answer it would get alone.

use std::collections::HashMap;

use actix::Actor;
use futures_util::future::join_all;
use order_engine::actors::unit::{BatchStats, CreateOrder, CreateOutcome, UnitActor, UnitOptions};
use order_engine::config::{GroupCommitSettings, StorageSettings};
use order_engine::domain::NewOrder;
use order_engine::domain::values::{Amount, Currency, MerchantId, OutTradeNo, Sections, UserId};
use order_engine::storage::UnitStore;
use reqwest::StatusCode;
use sqlx::Row;

use crate::helpers::{order_body, settings_for, spawn_app_with};
use crate::mariadb;

fn request(key: &str, amount: i64) -> NewOrder {
    NewOrder {
        merchant_id: MerchantId::parse("m-gc").unwrap(),
        out_trade_no: OutTradeNo::parse(key).unwrap(),
        user_id: UserId::parse("u-1").unwrap(),
        amount: Amount::new(amount).unwrap(),
        currency: Currency::parse("CNY").unwrap(),
        description: None,
        sections: Sections::default(),
    }
}

#[actix_web::test]
async fn a_batch_answers_every_caller_as_if_alone() {
    let url = mariadb::shared().url(&mariadb::unique_db("gc"));
    let store = UnitStore::open(5, &url, None, &StorageSettings::default())
        .await
        .unwrap();
    let options = UnitOptions {
        sequence_step: 1_000,
        prefetch_at_percent: 10,
        mailbox: 1_024,
        // One transaction at a time: everything that arrives meanwhile batches.
        group_commit: GroupCommitSettings {
            enabled: true,
            max_batch: 64,
            max_in_flight_batches: 1,
            overlap_at: 16,
            window_us: 2_000,
        },
    };
    let unit = UnitActor::new(store.clone(), options, None, None).start();

    // Orders that exist before the burst.
    for (key, amount) in [("replayed", 10), ("conflicting", 10)] {
        let r = unit
            .send(CreateOrder {
                request: request(key, amount),
            })
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(r, CreateOutcome::Created(_)));
    }

    // The burst: 40 new keys, a replay, a conflict (same key, other amount), and
    // one new key sent twice in the same burst.
    let mut burst: Vec<(String, i64)> = (0..40).map(|i| (format!("new-{i}"), 10)).collect();
    burst.push(("replayed".into(), 10));
    burst.push(("conflicting".into(), 99));
    burst.push(("twice".into(), 10));
    burst.push(("twice".into(), 10));
    let (batches_before, _) = unit.send(BatchStats).await.unwrap();
    let answers = join_all(burst.iter().map(|(key, amount)| {
        unit.send(CreateOrder {
            request: request(key, *amount),
        })
    }))
    .await;

    let mut twice_ids = Vec::new();
    for ((key, _), answer) in burst.iter().zip(answers) {
        match (key.as_str(), answer.unwrap().unwrap()) {
            (k, CreateOutcome::Created(o)) if k.starts_with("new-") => {
                assert_eq!(o.out_trade_no.as_str(), k);
            }
            ("replayed", CreateOutcome::Replayed(o)) => {
                assert_eq!(o.out_trade_no.as_str(), "replayed")
            }
            ("conflicting", CreateOutcome::KeyConflict) => {}
            ("twice", CreateOutcome::Created(o) | CreateOutcome::Replayed(o)) => {
                twice_ids.push(o.id)
            }
            (k, other) => panic!("{k}: unexpected {other:?}"),
        }
    }
    assert_eq!(twice_ids.len(), 2);
    assert_eq!(
        twice_ids[0], twice_ids[1],
        "the same key twice in a burst is one order"
    );

    let (batches_after, _) = unit.send(BatchStats).await.unwrap();
    let batches = batches_after - batches_before;
    assert!(
        batches < burst.len() as u64 / 2,
        "44 creates took {batches} batches: no grouping"
    );

    // What the database holds: one row per key, nothing else.
    sqlx::any::install_default_drivers();
    let db = sqlx::AnyPool::connect(&url).await.unwrap();
    let rows = sqlx::query("SELECT out_trade_no, amount FROM orders")
        .fetch_all(&db)
        .await
        .unwrap();
    let stored: HashMap<String, i64> = rows
        .iter()
        .map(|r| {
            (
                r.get::<String, _>("out_trade_no"),
                r.get::<i64, _>("amount"),
            )
        })
        .collect();
    assert_eq!(rows.len(), stored.len(), "no key stored twice");
    assert_eq!(stored.len(), 2 + 40 + 1);
    assert_eq!(
        stored["conflicting"], 10,
        "the conflicting create changed nothing"
    );
    let events: i64 = sqlx::query("SELECT COUNT(*) AS n FROM outbox")
        .fetch_one(&db)
        .await
        .unwrap()
        .get("n");
    assert_eq!(events, 43, "one created event per stored order");
    store.close().await;
}

#[actix_web::test]
async fn concurrent_http_creates_share_commits() {
    // A unit id no other test uses: the metrics registry is process-wide.
    let units = vec![(7777, mariadb::shared().url(&mariadb::unique_db("gchttp")))];
    let app = spawn_app_with(settings_for(&units, ""), tempfile::tempdir().unwrap()).await;
    let bodies: Vec<_> = (0..300)
        .map(|i| order_body("m-1", &format!("g-{i}"), "u-1", 10))
        .collect();
    let replies = join_all(bodies.iter().map(|b| app.post("/v1/orders", b))).await;
    for r in &replies {
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    }
    let metrics = app.metrics_text().await;
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(name) && l.contains("unit=\"7777\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let (orders, batches) = (
        value("orderengine_unit_create_batch_size_sum"),
        value("orderengine_unit_create_batch_size_count"),
    );
    assert_eq!(orders, 300.0, "{metrics}");
    assert!(
        batches < 300.0,
        "300 concurrent creates took {batches} transactions"
    );
    app.shutdown().await;
}
