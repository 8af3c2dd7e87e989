//! Group commit on MariaDB: concurrent creates share transactions, and each
//! caller still gets exactly the answer it would get alone.

use std::collections::HashMap;

use actix::Actor;
use futures_util::future::join_all;
use order_engine::actors::unit::{BatchStats, CreateOrder, CreateOutcome, UnitActor, UnitOptions};
use order_engine::config::{GroupCommitSettings, StorageSettings};
use order_engine::domain::NewOrder;
use order_engine::domain::key_homes::Attempt;
use order_engine::domain::values::{Amount, Currency, MerchantId, OutTradeNo, Sections, UserId};
use order_engine::storage::UnitStore;
use reqwest::StatusCode;
use sqlx::Row;

use crate::helpers::{count_rows, order_body, settings_for, spawn_app_with, with_attempts};
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

/// A MariaDB server of its own (its status counters are global to the
/// server), with a unit store on it and a connection that reads the counters.
struct CountedServer {
    server: mariadb::MariaDb,
    admin: sqlx::AnyConnection,
}

impl CountedServer {
    async fn start() -> Self {
        use sqlx::Connection;
        let server = mariadb::MariaDb::start();
        sqlx::any::install_default_drivers();
        let admin = sqlx::AnyConnection::connect(&server.url("mysql"))
            .await
            .unwrap();
        Self { server, admin }
    }

    async fn store(&self, unit: u16, db: &str) -> UnitStore {
        UnitStore::open(unit, &self.server.url(db), &[], &StorageSettings::default())
            .await
            .unwrap()
    }

    /// A `SHOW GLOBAL STATUS` counter, e.g. `Com_commit`.
    async fn counter(&mut self, name: &'static str) -> i64 {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SHOW GLOBAL STATUS LIKE '{name}'"
        )))
        .fetch_one(&mut self.admin)
        .await
        .unwrap();
        row.get::<String, _>(1).parse().unwrap()
    }
}

/// `window_us`: a batch waits for company only when the unit's create rate
/// says it comes. A lone create at an idle unit goes at once; a steady stream
/// waits and shares commits; after a silence a lone create goes at once again.
#[actix_web::test]
async fn a_batch_waits_for_company_only_when_the_rate_says_it_comes() {
    use std::time::{Duration, Instant};
    let url = mariadb::shared().url(&mariadb::unique_db("gcwin"));
    let store = UnitStore::open(6, &url, &[], &StorageSettings::default())
        .await
        .unwrap();
    // A window far longer than a commit, so that waiting shows.
    let window = Duration::from_millis(400);
    let options = UnitOptions {
        sequence_step: 1_000,
        prefetch_at_percent: 10,
        mailbox: 1_024,
        group_commit: GroupCommitSettings {
            window_us: window.as_micros() as u64,
            ..GroupCommitSettings::default()
        },
        relay: None,
    };
    let unit = UnitActor::new(store.clone(), options, None).start();
    let create = |key: String| {
        let unit = unit.clone();
        async move {
            let started = Instant::now();
            let r = unit
                .send(CreateOrder {
                    request: request(&key, 10),
                    attempt: Attempt::random(),
                })
                .await
                .unwrap()
                .unwrap();
            assert!(matches!(r, CreateOutcome::Created(_)), "{key}: {r:?}");
            started.elapsed()
        }
    };

    let alone = create("first".into()).await;
    assert!(alone < window / 2, "an idle unit's create waited {alone:?}");

    // 40 creates 5 ms apart (200/s: 80 per window): after the first 10 ms
    // the unit knows its rate, and the rest wait for company.
    let batches_before = unit.send(BatchStats).await.unwrap().batches;
    let mut stream = Vec::new();
    for i in 0..40 {
        stream.push(actix::spawn(create(format!("steady-{i}"))));
        actix::clock::sleep(Duration::from_millis(5)).await;
    }
    for answer in join_all(stream).await {
        answer.unwrap();
    }
    let batches_after = unit.send(BatchStats).await.unwrap().batches;
    let batches = batches_after - batches_before;
    assert!(
        batches <= 8,
        "40 creates at 200/s took {batches} batches: they did not wait for company"
    );

    // A silence: measured up to the next create, the rate is ~1/s, so
    // company is not expected within the window and that create goes at once.
    actix::clock::sleep(Duration::from_secs(3)).await;
    let after_silence = create("after-silence".into()).await;
    assert!(
        after_silence < window / 2,
        "a create after a silence waited {after_silence:?}"
    );
    store.close().await;
}

#[actix_web::test]
async fn a_batch_answers_every_caller_as_if_alone() {
    let url = mariadb::shared().url(&mariadb::unique_db("gc"));
    let store = UnitStore::open(5, &url, &[], &StorageSettings::default())
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
        relay: None,
    };
    let unit = UnitActor::new(store.clone(), options, None).start();

    // Orders that exist before the burst.
    for (key, amount) in [("replayed", 10), ("conflicting", 10)] {
        let r = unit
            .send(CreateOrder {
                request: request(key, amount),
                attempt: Attempt::random(),
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
    let batches_before = unit.send(BatchStats).await.unwrap().batches;
    let answers = join_all(burst.iter().map(|(key, amount)| {
        unit.send(CreateOrder {
            request: request(key, *amount),
            attempt: Attempt::random(),
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

    let batches_after = unit.send(BatchStats).await.unwrap().batches;
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
    let events = store.outbox_events(0, 1000).await.unwrap();
    let mut created: Vec<String> = events
        .iter()
        .filter(|e| e.event_type == "order.created")
        .map(|e| {
            e.payload()["order"]["out_trade_no"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    created.sort();
    let mut keys: Vec<String> = stored.keys().cloned().collect();
    keys.sort();
    assert_eq!(created, keys, "one created event per stored order");
    assert_eq!(events.len(), 43, "and no other");
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

/// Create batches on MariaDB run on the unit's own connections (the create
/// lane, `autocommit = 0`). One the server killed between batches fails the
/// next batch as a definite failure, is not reused, and writes nothing; the
/// batch after it gets a new connection.
#[actix_web::test]
async fn a_killed_create_connection_fails_one_batch_cleanly() {
    use order_engine::domain::OrderId;
    use order_engine::storage::{BatchOutcome, StoreError};

    let db_name = mariadb::unique_db("lane");
    let url = mariadb::shared().url(&db_name);
    let store = UnitStore::open(5, &url, &[], &StorageSettings::default())
        .await
        .unwrap();
    let now = order_engine::storage::now_ms();
    let batch = |from: u64| -> Vec<_> {
        (from..from + 3)
            .map(|seq| {
                let id = OrderId::new(5, now / 1000, seq).unwrap();
                request(&format!("lane-{seq}"), 10).into_order(id, now)
            })
            .collect()
    };
    assert_eq!(
        store
            .insert_orders(&with_attempts(&batch(1)))
            .await
            .unwrap(),
        BatchOutcome::Inserted
    );
    assert_eq!(
        store.write_connections(),
        1,
        "one batch, one lane connection"
    );

    // Kill every connection to the unit's database: the lane's among them.
    sqlx::any::install_default_drivers();
    let admin = sqlx::AnyPool::connect(&mariadb::shared().url("mysql"))
        .await
        .unwrap();
    let ids = sqlx::query(
        "SELECT CAST(ID AS SIGNED) AS id FROM information_schema.PROCESSLIST WHERE DB = ?",
    )
    .bind(&db_name)
    .fetch_all(&admin)
    .await
    .unwrap();
    assert!(!ids.is_empty());
    for row in &ids {
        let id: i64 = row.get("id");
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("KILL CONNECTION {id}")))
            .execute(&admin)
            .await;
    }

    match store.insert_orders(&with_attempts(&batch(10))).await {
        Err(StoreError::Unavailable(_)) => {}
        other => {
            panic!("a batch on a killed connection: expected a definite failure, got {other:?}")
        }
    }
    assert_eq!(
        store.write_connections(),
        0,
        "the killed connection was kept"
    );
    assert_eq!(
        store
            .insert_orders(&with_attempts(&batch(20)))
            .await
            .unwrap(),
        BatchOutcome::Inserted,
        "the next batch opens a new connection"
    );

    // The orders insert succeeds and the outbox insert fails: the orders must
    // not stay (nothing commits before COMMIT, even without BEGIN).
    let rename =
        |from: &str, to: &str| format!("RENAME TABLE `{db_name}`.{from} TO `{db_name}`.{to}");
    sqlx::raw_sql(sqlx::AssertSqlSafe(rename("outbox", "outbox_away")))
        .execute(&admin)
        .await
        .unwrap();
    let failed = store.insert_orders(&with_attempts(&batch(30))).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(rename("outbox_away", "outbox")))
        .execute(&admin)
        .await
        .unwrap();
    assert!(failed.is_err(), "{failed:?}");

    let db = sqlx::AnyPool::connect(&url).await.unwrap();
    let keys: Vec<String> = sqlx::query("SELECT out_trade_no FROM orders ORDER BY seq")
        .fetch_all(&db)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get("out_trade_no"))
        .collect();
    assert_eq!(
        keys,
        [
            "lane-1", "lane-2", "lane-3", "lane-20", "lane-21", "lane-22"
        ],
        "the failed batches wrote nothing"
    );
    assert_eq!(store.outbox_events(0, 100).await.unwrap().len(), 6);
    assert_eq!(count_rows(&db, "outbox").await, 2, "a record per batch");
    store.close().await;
}

/// The write lane opens no more connections than the pool may: concurrent
/// batches beyond `max_connections` wait for one instead of opening more.
#[actix_web::test]
async fn the_write_lane_is_bounded() {
    use order_engine::domain::OrderId;
    use order_engine::storage::BatchOutcome;

    let url = mariadb::shared().url(&mariadb::unique_db("lanecap"));
    let settings = StorageSettings {
        max_connections: 2,
        ..StorageSettings::default()
    };
    let store = UnitStore::open(5, &url, &[], &settings).await.unwrap();
    let now = order_engine::storage::now_ms();
    let batches: Vec<Vec<_>> = (0..12u64)
        .map(|b| {
            (0..3)
                .map(|i| {
                    let seq = 1 + b * 3 + i;
                    let id = OrderId::new(5, now / 1000, seq).unwrap();
                    request(&format!("cap-{seq}"), 10).into_order(id, now)
                })
                .collect()
        })
        .collect();
    let batches: Vec<_> = batches.iter().map(|b| with_attempts(b)).collect();
    let outcomes = join_all(batches.iter().map(|b| store.insert_orders(b))).await;
    for o in outcomes {
        assert_eq!(o.unwrap(), BatchOutcome::Inserted);
    }
    assert_eq!(
        store.write_connections(),
        2,
        "12 concurrent batches, 2 connections"
    );
    let db = sqlx::AnyPool::connect(&url).await.unwrap();
    assert_eq!(count_rows(&db, "orders").await, 36);
    store.close().await;
}

/// Strong reads on MariaDB run on the unit's read lane: one round trip each,
/// without the ping sqlx sends when a pooled connection goes back (counted by
/// the server as `Com_admin_commands`), on one reused connection. A lane
/// connection the server killed fails one read as a definite failure and is
/// replaced.
#[actix_web::test]
async fn reads_are_one_round_trip_on_the_read_lane() {
    use order_engine::domain::Consistency;
    use order_engine::domain::OrderId;
    use order_engine::storage::{InsertOutcome, StoreError};

    let mut server = CountedServer::start().await;
    let store = server.store(6, "reads").await;
    let now = order_engine::storage::now_ms();
    let id = OrderId::new(6, now / 1000, 1).unwrap();
    let order = request("read-1", 10).into_order(id, now);
    assert!(matches!(
        store.insert_order(&order, Attempt::random()).await.unwrap(),
        InsertOutcome::Inserted
    ));

    let before = server.counter("Com_admin_commands").await;
    let pools_before = store.pool_stats();
    for _ in 0..50 {
        let read = store.get(id, Consistency::Strong).await.unwrap();
        assert_eq!(read.out_trade_no, order.out_trade_no);
    }
    assert_eq!(
        server.counter("Com_admin_commands").await - before,
        0,
        "a read pinged its connection"
    );
    assert_eq!(store.read_connections(), 1, "50 reads, one connection");
    // The `pool` gauges count the lanes' connections too.
    let pools = store.pool_stats();
    assert_eq!(
        (pools.open, pools.idle),
        (pools_before.open + 1, pools_before.idle + 1),
        "the read lane's connection, idle again, is counted"
    );
    assert_eq!(pools.max, 3 * StorageSettings::default().max_connections);

    // The server kills the lane's connection between two reads.
    let ids = sqlx::query(
        "SELECT CAST(ID AS SIGNED) AS id FROM information_schema.PROCESSLIST WHERE DB = 'reads'",
    )
    .fetch_all(&mut server.admin)
    .await
    .unwrap();
    for row in &ids {
        let id: i64 = row.get("id");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("KILL CONNECTION {id}")))
            .execute(&mut server.admin)
            .await
            .unwrap();
    }
    match store.get(id, Consistency::Strong).await {
        Err(StoreError::Unavailable(_)) => {}
        other => {
            panic!("a read on a killed connection: expected a definite failure, got {other:?}")
        }
    }
    assert_eq!(
        store.read_connections(),
        0,
        "the killed connection was kept"
    );
    assert_eq!(store.get(id, Consistency::Strong).await.unwrap().id, id);
    assert_eq!(store.read_connections(), 1);
    store.close().await;
}

#[actix_web::test]
async fn concurrent_gets_pays_and_refunds_share_statements_and_each_gets_its_own_answer() {
    use order_engine::actors::unit::{GetOrder, PayOrder, RefundOrder};
    use order_engine::domain::Consistency;
    use order_engine::domain::values::{PaymentRef, RefundId};
    use order_engine::domain::{NewRefund, OrderId};
    use order_engine::storage::StoreError;

    let mut server = CountedServer::start().await;
    let store = server.store(7, "gets").await;
    let options = UnitOptions {
        sequence_step: 1_000,
        prefetch_at_percent: 10,
        mailbox: 1_024,
        // One query at a time: gets that arrive meanwhile go together.
        group_commit: GroupCommitSettings {
            max_in_flight_batches: 1,
            ..GroupCommitSettings::default()
        },
        relay: None,
    };
    let unit = UnitActor::new(store.clone(), options, None).start();
    let mut orders = Vec::new();
    for i in 0..30 {
        match unit
            .send(CreateOrder {
                request: request(&format!("get-{i}"), 10 + i),
                attempt: Attempt::random(),
            })
            .await
            .unwrap()
            .unwrap()
        {
            CreateOutcome::Created(o) => orders.push(o),
            other => panic!("create {i}: {other:?}"),
        }
    }
    let known = orders[0].id;
    // The right sequence with another second names no order; so does an
    // unused sequence.
    let wrong_time = OrderId::new(7, known.created_secs() + 1, known.sequence()).unwrap();
    let unused = OrderId::new(7, known.created_secs(), 999_999).unwrap();

    let before = server.counter("Com_select").await;
    // Each order asked twice, plus the two ids that name nothing.
    let mut asked: Vec<OrderId> = orders.iter().chain(&orders).map(|o| o.id).collect();
    asked.extend([wrong_time, unused]);
    let answers = join_all(asked.iter().map(|id| {
        unit.send(GetOrder {
            id: *id,
            consistency: Consistency::Strong,
            wait_for: None,
        })
    }))
    .await;
    // Slack for the unit's own background reads (the outbox gauge).
    let queries = server.counter("Com_select").await - before;

    for (id, answer) in asked.iter().zip(answers) {
        match answer.unwrap() {
            Ok(order) => {
                assert_eq!(order.id, *id);
                let created = orders.iter().find(|o| o.id == *id).unwrap();
                assert_eq!(order.out_trade_no, created.out_trade_no);
                assert_eq!(order.amount, created.amount);
            }
            Err(StoreError::NotFound) => {
                assert!(*id == wrong_time || *id == unused, "{id} not found")
            }
            Err(e) => panic!("{id}: {e}"),
        }
    }
    assert!(
        queries <= 8,
        "{} gets took {queries} queries: no batching",
        asked.len()
    );

    // Pays: every order paid twice at once (the second a replay), one with
    // the wrong amount, and an id that names nothing.
    let before = server.counter("Com_commit").await;
    let mut pays: Vec<(OrderId, i64)> = orders
        .iter()
        .chain(&orders)
        .map(|o| (o.id, o.amount.get()))
        .collect();
    pays.push((orders[0].id, 1));
    pays.push((unused, 10));
    let answers = join_all(pays.iter().map(|(id, amount)| {
        unit.send(PayOrder {
            id: *id,
            payment_ref: PaymentRef::parse(format!("pay-{}", id.sequence())).unwrap(),
            amount: Amount::new(*amount).unwrap(),
            expected_version: None,
        })
    }))
    .await;
    let commits = server.counter("Com_commit").await - before;
    let mut changed = 0;
    for ((id, amount), answer) in pays.iter().zip(answers) {
        match answer.unwrap() {
            Ok(paid) => {
                let order = &paid.order;
                assert_eq!(
                    (order.id, order.paid_amount, order.version),
                    (*id, *amount, 2)
                );
                changed += usize::from(paid.changed);
            }
            Err(StoreError::NotFound) => assert_eq!(*id, unused),
            Err(StoreError::Rule(_)) => {
                assert_eq!(*amount, 1, "{id}: only the wrong amount is refused")
            }
            Err(e) => panic!("{id}: {e}"),
        }
    }
    assert_eq!(
        changed,
        orders.len(),
        "each order paid once, its replay unchanged"
    );
    assert!(
        commits <= 8,
        "{} pays took {commits} commits: no batching",
        pays.len()
    );

    // Refunds: two of each order at once, under two ids.
    let before = server.counter("Com_commit").await;
    let refunds: Vec<(OrderId, &str)> = orders
        .iter()
        .flat_map(|o| [(o.id, "r-1"), (o.id, "r-2")])
        .collect();
    let answers = join_all(refunds.iter().map(|(id, refund_id)| {
        unit.send(RefundOrder {
            id: *id,
            refund: NewRefund {
                refund_id: RefundId::parse(*refund_id).unwrap(),
                amount: Amount::new(1).unwrap(),
                reason: None,
            },
            expected_version: None,
        })
    }))
    .await;
    let commits = server.counter("Com_commit").await - before;
    for ((id, refund_id), answer) in refunds.iter().zip(answers) {
        let order_engine::domain::apply::Refunded {
            refund,
            order,
            created,
        } = answer.unwrap().unwrap();
        assert!(created, "{id} {refund_id}");
        assert_eq!(
            (refund.order_id, refund.refund_id.as_str()),
            (*id, *refund_id)
        );
        assert!(order.refunded_amount >= 1);
    }
    for o in &orders {
        let stored = store.get(o.id, Consistency::Strong).await.unwrap();
        assert_eq!((stored.refunded_amount, stored.version), (2, 4), "{}", o.id);
    }
    assert!(
        commits <= 8,
        "{} refunds took {commits} commits: no batching",
        refunds.len()
    );
    store.close().await;
}

/// Pays, closes and refunds on MariaDB run on the unit's write lane: no
/// `BEGIN` (the connection runs with `autocommit = 0`) and no ping after
/// (`Com_admin_commands`). Answers that change nothing (a replay, a refused
/// transition, a stale version, an unknown order) roll back and keep the
/// connection: all of it runs on one.
#[actix_web::test]
async fn updates_run_on_the_write_lane_without_begin_or_ping() {
    use order_engine::domain::apply::{RefundUpdate, Update, UpdateAction};
    use order_engine::domain::values::{Amount, PaymentRef, RefundId};
    use order_engine::domain::{NewRefund, OrderId, RuleError};
    use order_engine::storage::{BatchOutcome, StoreError};

    let mut server = CountedServer::start().await;
    let store = server.store(8, "writes").await;
    let now = order_engine::storage::now_ms();
    let id = OrderId::new(8, now / 1000, 1).unwrap();
    let order = request("write-1", 100).into_order(id, now);
    assert_eq!(
        store.insert_orders(&with_attempts(&[order])).await.unwrap(),
        BatchOutcome::Inserted
    );

    const COUNTERS: [&str; 4] = [
        "Com_begin",
        "Com_admin_commands",
        "Com_commit",
        "Com_rollback",
    ];
    let mut before = HashMap::new();
    for name in COUNTERS {
        before.insert(name, server.counter(name).await);
    }

    let pay = |expected: Option<i64>| {
        store.update_order(Update {
            id,
            action: UpdateAction::Pay {
                payment_ref: PaymentRef::parse("p-1").unwrap(),
                amount: Amount::new(100).unwrap(),
            },
            expected_version: expected,
        })
    };
    let close = |id: OrderId| Update {
        id,
        action: UpdateAction::Close,
        expected_version: None,
    };
    assert!(matches!(
        pay(Some(7)).await,
        Err(StoreError::Rule(RuleError::VersionMismatch { .. }))
    ));
    assert!(
        pay(None).await.unwrap().changed,
        "the pay changed the order"
    );
    assert!(
        !pay(None).await.unwrap().changed,
        "a replayed pay changes nothing"
    );
    assert!(matches!(
        store.update_order(close(id)).await,
        Err(StoreError::Rule(RuleError::InvalidTransition { .. }))
    ));
    let missing = OrderId::new(8, now / 1000, 999).unwrap();
    assert!(matches!(
        store.update_order(close(missing)).await,
        Err(StoreError::NotFound)
    ));
    let refund = || RefundUpdate {
        id,
        refund: NewRefund {
            refund_id: RefundId::parse("r-1").unwrap(),
            amount: Amount::new(40).unwrap(),
            reason: None,
        },
        expected_version: None,
    };
    assert!(
        store.refund(refund()).await.unwrap().created,
        "a new refund"
    );
    assert!(!store.refund(refund()).await.unwrap().created, "a replay");

    let mut after = HashMap::new();
    for name in COUNTERS {
        after.insert(name, server.counter(name).await);
    }
    let delta = |k: &str| after[k] - before[k];
    assert_eq!(delta("Com_begin"), 0, "an update sent BEGIN");
    assert_eq!(
        delta("Com_admin_commands"),
        0,
        "an update pinged its connection"
    );
    assert_eq!(delta("Com_commit"), 2, "the pay and the refund commit");
    assert_eq!(
        delta("Com_rollback"),
        5,
        "each answer that changed nothing rolls back"
    );
    assert_eq!(
        store.write_connections(),
        1,
        "every answer kept the one connection"
    );
    let stored = store
        .get(id, order_engine::domain::Consistency::Strong)
        .await
        .unwrap();
    assert_eq!(
        (stored.paid_amount, stored.refunded_amount, stored.version),
        (100, 40, 3)
    );
    store.close().await;
}

/// One pass over batches of every size from 1 to `shapes::MAX_ROWS`: creates,
/// gets, key look-ups, pays (every third refused, so the events written are
/// a subset of the batch) and refunds of the paid orders.
async fn a_batch_of_every_size(store: &UnitStore, pass: &str, first_seq: u64) {
    use order_engine::domain::apply::{RefundUpdate, Update, UpdateAction};
    use order_engine::domain::shapes;
    use order_engine::domain::values::{PaymentRef, RefundId};
    use order_engine::domain::{NewRefund, Order, OrderId};
    use order_engine::storage::{BatchOutcome, now_ms};

    let now = now_ms();
    let mut seq = first_seq;
    for n in 1..=shapes::MAX_ROWS {
        let orders: Vec<Order> = (0..n)
            .map(|i| {
                let id = OrderId::new(store.unit(), now.div_euclid(1000), seq + i as u64).unwrap();
                request(&format!("{pass}-{n}-{i}"), 100).into_order(id, now)
            })
            .collect();
        seq += n as u64;
        let ids: Vec<OrderId> = orders.iter().map(|o| o.id).collect();
        let keys: Vec<_> = orders
            .iter()
            .map(|o| (o.merchant_id.clone(), o.out_trade_no.clone()))
            .collect();
        assert_eq!(
            store.insert_orders(&with_attempts(&orders)).await.unwrap(),
            BatchOutcome::Inserted
        );
        assert_eq!(store.get_many(&ids).await.unwrap().len(), n);
        assert_eq!(store.find_by_keys(&keys).await.unwrap().len(), n);
        let payment = PaymentRef::parse("p-1").unwrap();
        let pays = ids
            .iter()
            .enumerate()
            .map(|(i, id)| Update {
                id: *id,
                action: UpdateAction::Pay {
                    payment_ref: payment.clone(),
                    amount: Amount::new(if i % 3 == 2 { 1 } else { 100 }).unwrap(),
                },
                expected_version: None,
            })
            .collect();
        let paid: Vec<OrderId> = store
            .update_orders(pays)
            .await
            .unwrap()
            .into_iter()
            .filter_map(|answer| answer.ok().map(|u| u.order.id))
            .collect();
        assert_eq!(paid.len(), n - n / 3, "the wrong amounts are refused");
        let refunds = paid
            .iter()
            .map(|id| RefundUpdate {
                id: *id,
                refund: NewRefund {
                    refund_id: RefundId::parse("r-1").unwrap(),
                    amount: Amount::new(10).unwrap(),
                    reason: None,
                },
                expected_version: None,
            })
            .collect();
        let refunded = store.refund_orders(refunds).await.unwrap();
        assert!(refunded.iter().all(Result::is_ok), "{n}: {refunded:?}");
    }
}

/// sqlx keeps at most 100 prepared statements per connection. A batch
/// statement is a distinct text for every row count, and an eviction sends
/// `COM_STMT_CLOSE`, which the server does not answer: with sqlx 0.9.0 not
/// setting `TCP_NODELAY`, the next statement then waited 40-100 ms for the
/// server's delayed ACK. So batches come in a few shapes, and after one pass
/// over every batch size up to the largest, a second pass prepares nothing
/// and nothing was ever evicted.
#[actix_web::test]
async fn the_statements_of_every_batch_size_fit_the_statement_cache() {
    let mut server = CountedServer::start().await;
    let store = server.store(9, "shapes").await;
    let (prepares, closes) = (
        server.counter("Com_stmt_prepare").await,
        server.counter("Com_stmt_close").await,
    );
    a_batch_of_every_size(&store, "first", 1).await;
    let first_pass = server.counter("Com_stmt_prepare").await - prepares;
    a_batch_of_every_size(&store, "second", 100_000).await;
    let second_pass = server.counter("Com_stmt_prepare").await - prepares - first_pass;
    let evicted = server.counter("Com_stmt_close").await - closes;
    assert_eq!(
        evicted, 0,
        "statements were evicted ({first_pass} prepared in the first pass)"
    );
    assert_eq!(
        second_pass, 0,
        "the second pass prepared again ({first_pass} in the first)"
    );
    // Two connections (the write lane and the read lane), at most 100 each.
    assert!(first_pass <= 200, "{first_pass} statements prepared");
    store.close().await;
}
