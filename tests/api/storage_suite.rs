//! One storage suite, run against both back ends: SQLite (the embedded
//! default) and a real MariaDB server.

use std::collections::HashSet;

use futures_util::future::join_all;
use order_engine::config::StorageSettings;
use order_engine::domain::apply::{RefundUpdate, Update, UpdateAction};
use order_engine::domain::events::{FieldChange, apply, order_view};
use order_engine::domain::key_homes::{Attempt, Mark};
use order_engine::domain::timestamp;
use order_engine::domain::values::{
    Amount, Currency, MerchantId, OutTradeNo, PaymentRef, RefundId, SectionName, Sections, Text,
    UserId,
};
use order_engine::domain::{
    Consistency, NewOrder, NewRefund, Order, OrderId, OrderStatus, RuleError, UserCursor,
};
use order_engine::storage::sequence::SequenceGenerator;
use order_engine::storage::{BatchOutcome, InsertOutcome, KeyClaim, StoreError, UnitStore};
use serde_json::json;

use crate::helpers::{Backend, with_attempts};
use crate::mariadb as server;

const UNIT: u16 = 7;

/// A fresh unit database on `backend`; the temp dir keeps SQLite files alive.
async fn fresh_url(backend: Backend) -> (String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = match backend {
        Backend::Sqlite => format!("sqlite://{}/unit.db", dir.path().display()),
        Backend::MariaDb => server::shared().url(&server::unique_db("store")),
    };
    (url, dir)
}

/// A pay of `amount` with `payment_ref`.
fn pay(id: OrderId, payment_ref: &PaymentRef, amount: i64, expected: Option<i64>) -> Update {
    Update {
        id,
        action: UpdateAction::Pay {
            payment_ref: payment_ref.clone(),
            amount: Amount::new(amount).unwrap(),
        },
        expected_version: expected,
    }
}

fn close(id: OrderId) -> Update {
    Update {
        id,
        action: UpdateAction::Close,
        expected_version: None,
    }
}

async fn open(url: &str) -> UnitStore {
    UnitStore::open(UNIT, url, &[], &StorageSettings::default())
        .await
        .expect("unit database opens")
}

fn request(out_trade_no: &str, user: &str, amount: i64) -> NewOrder {
    let sections = r#"{"items": [{"sku": "c1", "qty": 2}], "note": "请快点"}"#;
    NewOrder {
        merchant_id: MerchantId::parse("m-1").unwrap(),
        out_trade_no: OutTradeNo::parse(out_trade_no).unwrap(),
        user_id: UserId::parse(user).unwrap(),
        amount: Amount::new(amount).unwrap(),
        currency: Currency::parse("CNY").unwrap(),
        description: Some(Text::parse("2 coffees ☕").unwrap()),
        sections: Sections::from_json(sections).unwrap(),
    }
}

/// Inserts an order with the next sequence number, created at `now_ms`.
async fn insert(store: &UnitStore, seq: u64, req: NewOrder, now_ms: i64) -> Order {
    let id = OrderId::new(UNIT, now_ms / 1000, seq).unwrap();
    let order = req.into_order(id, now_ms);
    match store.insert_order(&order, Attempt::random()).await.unwrap() {
        InsertOutcome::Inserted => order,
        other => panic!("expected an insert, got {other:?}"),
    }
}

async fn outbox_count(url: &str) -> i64 {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    let n = crate::helpers::count_rows(&pool, "outbox").await;
    pool.close().await;
    n
}

const T0: i64 = 1_795_000_000_000;

pub async fn orders_round_trip_and_keys_are_unique(backend: Backend) {
    let (url, _dir) = fresh_url(backend).await;
    let store = open(&url).await;
    let order = insert(&store, 1, request("o-1", "u-1", 1999), T0 + 123).await;

    let read = store.get(order.id, Consistency::Strong).await.unwrap();
    assert_eq!(
        read, order,
        "everything written is read back, sections and text included"
    );
    assert_eq!(
        store.get(order.id, Consistency::Eventual).await.unwrap(),
        order
    );

    // Same sequence, other time: another order id, so not found.
    let other_time = OrderId::new(UNIT, T0 / 1000 + 5, 1).unwrap();
    assert!(matches!(
        store.get(other_time, Consistency::Strong).await,
        Err(StoreError::NotFound)
    ));

    // The idempotency key is unique in the unit: a second insert returns the first order.
    let again =
        request("o-1", "u-1", 1999).into_order(OrderId::new(UNIT, T0 / 1000, 2).unwrap(), T0);
    match store.insert_order(&again, Attempt::random()).await.unwrap() {
        InsertOutcome::KeyExists(existing) => assert_eq!(*existing, order),
        other => panic!("expected KeyExists, got {other:?}"),
    }
    assert_eq!(
        store
            .find_by_key(&order.merchant_id, &order.out_trade_no)
            .await
            .unwrap(),
        Some(order.clone())
    );
    assert!(
        store
            .find_by_key(&order.merchant_id, &OutTradeNo::parse("O-1").unwrap())
            .await
            .unwrap()
            .is_none(),
        "keys compare case-sensitively on both back ends"
    );
    assert_eq!(
        outbox_count(&url).await,
        1,
        "only the inserted order wrote an event"
    );
    // The event says what happened to which order, for a relay to publish.
    let events = store.outbox_events(0, 10).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event_type, "order.created");
    let id = order.id.to_string();
    assert_eq!(
        events[0].payload(),
        json!({"schema_version": 1, "event_id": format!("{id}.1"), "order_id": id,
               "unit": UNIT, "version": 1, "type": "order.created",
               "occurred_at": timestamp(T0 + 123),
               "order": {"order_id": id, "unit": UNIT, "merchant_id": "m-1",
                         "out_trade_no": "o-1", "user_id": "u-1", "amount": 1999,
                         "currency": "CNY", "description": "2 coffees ☕",
                         "status": "created", "paid_amount": 0, "refunded_amount": 0,
                         "payment_ref": null, "version": 1,
                         "created_at": timestamp(T0 + 123),
                         "updated_at": timestamp(T0 + 123),
                         "sections": {"items": [{"sku": "c1", "qty": 2}], "note": "请快点"},
                         "refunds": {}}})
    );
    store.close().await;
}

/// One order's state from its events: the created event's order, each
/// later event's changes applied in order.
fn rebuilt(events: &[order_engine::storage::OutboxEvent]) -> serde_json::Value {
    let mut state = events[0].payload()["order"].clone();
    for e in &events[1..] {
        let changes: Vec<FieldChange> =
            serde_json::from_value(e.payload()["changes"].clone()).unwrap();
        apply(&mut state, &changes).unwrap();
    }
    state
}

/// Every event has what `docs/events.schema.json` requires, nothing it
/// does not name, and a created event's order exactly the order's fields.
fn check_against_schema(events: &[order_engine::storage::OutboxEvent]) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/events.schema.json");
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let names = |v: &serde_json::Value| -> HashSet<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap().to_owned())
            .collect()
    };
    let required = names(&schema["required"]);
    let known: HashSet<String> = schema["properties"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let types = names(&schema["properties"]["type"]["enum"]);
    let order_fields = names(&schema["$defs"]["order"]["required"]);
    for e in events {
        let keys: HashSet<String> = e.payload().as_object().unwrap().keys().cloned().collect();
        assert!(
            keys.is_superset(&required) && keys.is_subset(&known),
            "{}",
            e.json
        );
        assert!(
            types.contains(e.payload()["type"].as_str().unwrap()),
            "{}",
            e.json
        );
        assert_eq!(
            e.payload()["schema_version"],
            schema["properties"]["schema_version"]["const"]
        );
        if let Some(order) = e.payload().get("order") {
            let fields: HashSet<String> = order.as_object().unwrap().keys().cloned().collect();
            assert_eq!(fields, order_fields);
        }
    }
}

fn set_section(id: OrderId, name: &str, value: Option<&str>, expected: Option<i64>) -> Update {
    Update {
        id,
        action: UpdateAction::SetSection {
            name: SectionName::parse(name).unwrap(),
            value: value.map(|v| serde_json::from_str(v).unwrap()),
        },
        expected_version: expected,
    }
}

/// A section set and removed in the same batch as a pay of the order: one
/// transaction, each change its own version and event; the sections as
/// created are kept for telling a replay of the create.
pub async fn sections_are_replaced_and_removed_with_the_order(backend: Backend) {
    let (url, _dir) = fresh_url(backend).await;
    let store = open(&url).await;
    let order = insert(&store, 1, request("o-1", "u-1", 100), T0).await;
    let p1 = PaymentRef::parse("p-1").unwrap();
    let answers = store
        .update_orders(vec![
            set_section(order.id, "shipping", Some(r#"{"city": "深圳"}"#), Some(1)),
            pay(order.id, &p1, 100, Some(2)),
            set_section(order.id, "note", None, None),
            set_section(order.id, "shipping", Some(r#"{"city":"深圳"}"#), None),
            set_section(order.id, "items", Some("[]"), Some(1)),
        ])
        .await
        .unwrap();
    let versions: Vec<_> = answers
        .iter()
        .map(|a| a.as_ref().map(|u| (u.order.version, u.changed)))
        .collect();
    assert!(
        matches!(
            versions.as_slice(),
            [
                Ok((2, true)),
                Ok((3, true)),
                Ok((4, true)),
                Ok((4, false)),
                Err(StoreError::Rule(RuleError::VersionMismatch {
                    current: 4,
                    ..
                }))
            ]
        ),
        "{versions:?}"
    );
    let read = store.get(order.id, Consistency::Strong).await.unwrap();
    assert_eq!(read.version, 4);
    assert_eq!(read.status, OrderStatus::Paid);
    assert_eq!(
        read.sections.to_json(),
        r#"{"items":[{"sku": "c1", "qty": 2}],"shipping":{"city": "深圳"}}"#
    );
    assert_eq!(read.created_sections.as_ref(), Some(&order.sections));
    assert!(request("o-1", "u-1", 100).is_replay_of(&read));
    assert_eq!(outbox_count(&url).await, 4, "created + three changes");
    // The events' diffs, applied to the created event's order, give the
    // order as it is.
    let events = store.outbox_events(0, 100).await.unwrap();
    let state = rebuilt(&events);
    assert_eq!(state, order_view(&read));
    let types: Vec<_> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types,
        [
            "order.created",
            "order.sections_changed",
            "order.paid",
            "order.sections_changed"
        ]
    );
    check_against_schema(&events);
    store.close().await;
}

pub async fn updates_are_versioned_and_logged(backend: Backend) {
    let (url, _dir) = fresh_url(backend).await;
    let store = open(&url).await;
    let order = insert(&store, 1, request("o-1", "u-1", 100), T0).await;
    let p1 = PaymentRef::parse("p-1").unwrap();

    let stale = store.update_order(pay(order.id, &p1, 100, Some(9))).await;
    assert!(matches!(
        stale,
        Err(StoreError::Rule(RuleError::VersionMismatch {
            current: 1,
            ..
        }))
    ));

    let paid = store
        .update_order(pay(order.id, &p1, 100, Some(1)))
        .await
        .unwrap();
    assert!(paid.changed);
    let paid = paid.order;
    assert_eq!(
        (paid.status, paid.version, paid.paid_amount),
        (OrderStatus::Paid, 2, 100)
    );

    let again = store
        .update_order(pay(order.id, &p1, 100, None))
        .await
        .unwrap();
    assert!(!again.changed, "a replayed pay changes nothing");
    assert_eq!(again.order.version, 2);

    let closed = store.update_order(close(order.id)).await;
    assert!(matches!(
        closed,
        Err(StoreError::Rule(RuleError::InvalidTransition { .. }))
    ));
    assert_eq!(
        store.get(order.id, Consistency::Strong).await.unwrap(),
        paid
    );
    assert_eq!(outbox_count(&url).await, 2, "created + paid");
    let events = store.outbox_events(0, 10).await.unwrap();
    assert_eq!(
        (
            &events[0].payload()["order"]["status"],
            &events[0].payload()["version"]
        ),
        (&json!("created"), &json!(1)),
        "the created event shows the order as created, though it is paid now"
    );
    let paid_event = &events[1].payload();
    assert_eq!(
        (&paid_event["type"], &paid_event["version"]),
        (&json!("order.paid"), &json!(2))
    );
    let changes: Vec<_> = paid_event["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["path"].as_str().unwrap(), c.get("old"), c.get("new")))
        .collect();
    assert_eq!(
        changes[..3],
        [
            ("paid_amount", Some(&json!(0)), Some(&json!(100))),
            ("payment_ref", Some(&json!(null)), Some(&json!("p-1"))),
            ("status", Some(&json!("created")), Some(&json!("paid"))),
        ]
    );
    assert_eq!(changes[4], ("version", Some(&json!(1)), Some(&json!(2))));

    let missing = OrderId::new(UNIT, T0 / 1000, 999).unwrap();
    let r = store.update_order(close(missing)).await;
    assert!(matches!(r, Err(StoreError::NotFound)));
    // A change that leaves the order as it is writes nothing.
    let r = store
        .update_order(pay(order.id, &p1, 100, None))
        .await
        .unwrap();
    assert!(!r.changed);
    assert_eq!(outbox_count(&url).await, 2, "nothing more written");
    store.close().await;
}

/// Pays and closes of several orders in one transaction: each gets the answer
/// it would get alone, each sees its order as the updates before it left it,
/// and only the changes are written (one event each).
pub async fn a_batch_of_updates_answers_each_as_alone(backend: Backend) {
    let (url, _dir) = fresh_url(backend).await;
    let store = open(&url).await;
    let a = insert(&store, 1, request("o-a", "u-1", 100), T0).await;
    let b = insert(&store, 2, request("o-b", "u-1", 100), T0).await;
    let c = insert(&store, 3, request("o-c", "u-1", 100), T0).await;
    let missing = OrderId::new(UNIT, T0 / 1000, 999).unwrap();
    let p1 = PaymentRef::parse("p-1").unwrap();
    let pay = |id: OrderId, expected: Option<i64>| pay(id, &p1, 100, expected);
    let answers = store
        .update_orders(vec![
            pay(a.id, None),
            pay(a.id, None), // a replay of the pay before it
            close(b.id),
            pay(b.id, None), // refused: the close before it won
            pay(missing, None),
            pay(c.id, Some(9)), // stale version
            close(c.id),
        ])
        .await
        .unwrap();
    let summary: Vec<_> = answers
        .iter()
        .map(|r| match r {
            Ok(u) => format!(
                "{} v{} {}",
                u.order.status.as_str(),
                u.order.version,
                u.changed
            ),
            Err(StoreError::NotFound) => "not found".into(),
            Err(StoreError::Rule(RuleError::InvalidTransition { .. })) => "invalid".into(),
            Err(StoreError::Rule(RuleError::VersionMismatch { .. })) => "stale".into(),
            Err(e) => format!("{e}"),
        })
        .collect();
    assert_eq!(
        summary,
        [
            "paid v2 true",
            "paid v2 false",
            "closed v2 true",
            "invalid",
            "not found",
            "stale",
            "closed v2 true",
        ]
    );
    for (id, status) in [
        (a.id, OrderStatus::Paid),
        (b.id, OrderStatus::Closed),
        (c.id, OrderStatus::Closed),
    ] {
        let stored = store.get(id, Consistency::Strong).await.unwrap();
        assert_eq!((stored.status, stored.version), (status, 2), "{id}");
    }
    assert_eq!(
        outbox_count(&url).await,
        3 + 3,
        "three created, three changed"
    );

    // A batch that changes nothing writes nothing.
    let answers = store
        .update_orders(vec![pay(a.id, None), close(a.id)])
        .await
        .unwrap();
    assert!(matches!(&answers[0], Ok(u) if !u.changed));
    assert!(matches!(
        answers[1],
        Err(StoreError::Rule(RuleError::InvalidTransition { .. }))
    ));
    assert_eq!(outbox_count(&url).await, 6);
    store.close().await;
}

/// Refunds of several orders in one transaction: each gets the answer it
/// would get alone, and each sees its order and the refund ids as the
/// refunds before it left them.
pub async fn a_batch_of_refunds_answers_each_as_alone(backend: Backend) {
    let (url, _dir) = fresh_url(backend).await;
    let store = open(&url).await;
    let mut paid = Vec::new();
    for (seq, key, amount) in [(1, "o-a", 100), (2, "o-b", 50)] {
        let o = insert(&store, seq, request(key, "u-1", amount), T0).await;
        let p = PaymentRef::parse(format!("p-{seq}")).unwrap();
        let o = store
            .update_order(pay(o.id, &p, amount, None))
            .await
            .unwrap();
        paid.push(o.order);
    }
    let (a, b) = (paid[0].id, paid[1].id);
    let unpaid = insert(&store, 3, request("o-c", "u-1", 10), T0).await.id;
    let missing = OrderId::new(UNIT, T0 / 1000, 999).unwrap();
    let refund = |id: OrderId, refund_id: &str, amount: i64, expected: Option<i64>| RefundUpdate {
        id,
        refund: NewRefund {
            refund_id: RefundId::parse(refund_id).unwrap(),
            amount: Amount::new(amount).unwrap(),
            reason: None,
        },
        expected_version: expected,
    };
    let answers = store
        .refund_orders(vec![
            refund(a, "r-1", 30, None),
            refund(a, "r-1", 30, None),    // a replay of the one before it
            refund(a, "r-1", 40, None),    // the same id, another body
            refund(a, "r-2", 80, None),    // 30 + 80 > 100
            refund(a, "r-3", 70, Some(3)), // the version the first refund left
            refund(b, "r-1", 50, Some(9)), // stale
            refund(b, "r-1", 50, None),    // the same id on another order is its own
            refund(unpaid, "r-1", 10, None),
            refund(missing, "r-1", 10, None),
        ])
        .await
        .unwrap();
    let summary: Vec<_> = answers
        .iter()
        .map(|r| match r {
            Ok(r) => format!(
                "{} {} -> {} {} v{} {}",
                r.refund.refund_id.as_str(),
                r.refund.amount.get(),
                r.order.status.as_str(),
                r.order.refunded_amount,
                r.order.version,
                r.created
            ),
            Err(StoreError::Rule(RuleError::RefundIdConflict)) => "conflict".into(),
            Err(StoreError::Rule(RuleError::RefundExceedsPaid { .. })) => "exceeds".into(),
            Err(StoreError::Rule(RuleError::VersionMismatch { .. })) => "stale".into(),
            Err(StoreError::Rule(RuleError::InvalidTransition { .. })) => "invalid".into(),
            Err(StoreError::NotFound) => "not found".into(),
            Err(e) => format!("{e}"),
        })
        .collect();
    assert_eq!(
        summary,
        [
            "r-1 30 -> paid 30 v3 true",
            "r-1 30 -> paid 30 v3 false",
            "conflict",
            "exceeds",
            "r-3 70 -> refunded 100 v4 true",
            "stale",
            "r-1 50 -> refunded 50 v3 true",
            "invalid",
            "not found",
        ]
    );
    let listed: Vec<_> = store
        .list_refunds(a)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.refund_id.as_str().to_owned(), r.amount.get()))
        .collect();
    assert_eq!(listed, [("r-1".to_owned(), 30), ("r-3".to_owned(), 70)]);
    assert_eq!(store.list_refunds(b).await.unwrap().len(), 1);
    // created x3, paid x2, refunded x3
    assert_eq!(outbox_count(&url).await, 8);

    // Next time the stored refunds answer: a replay, and a conflict.
    let answers = store
        .refund_orders(vec![refund(a, "r-1", 30, None), refund(a, "r-3", 1, None)])
        .await
        .unwrap();
    assert!(matches!(&answers[0],
        Ok(r) if !r.created && r.refund.amount.get() == 30 && r.order.version == 4));
    assert!(matches!(
        answers[1],
        Err(StoreError::Rule(RuleError::RefundIdConflict))
    ));
    assert_eq!(outbox_count(&url).await, 8);
    store.close().await;
}

pub async fn refunds_add_up_and_replay(backend: Backend) {
    let (url, _dir) = fresh_url(backend).await;
    let store = open(&url).await;
    let order = insert(&store, 1, request("o-1", "u-1", 100), T0).await;
    let p = PaymentRef::parse("p").unwrap();
    store
        .update_order(pay(order.id, &p, 100, None))
        .await
        .unwrap();
    let refund = |refund_id: &str, amount: i64, expected: Option<i64>| RefundUpdate {
        id: order.id,
        refund: NewRefund {
            refund_id: RefundId::parse(refund_id).unwrap(),
            amount: Amount::new(amount).unwrap(),
            reason: Some(Text::parse("cold").unwrap()),
        },
        expected_version: expected,
    };

    let first = store.refund(refund("r-1", 60, None)).await.unwrap();
    assert!(first.created);
    let (r1, after) = (first.refund, first.order);
    assert_eq!(
        (after.refunded_amount, after.status, after.version),
        (60, OrderStatus::Paid, 3)
    );
    let replay = store.refund(refund("r-1", 60, None)).await.unwrap();
    assert!(!replay.created);
    assert_eq!((replay.refund, replay.order.version), (r1.clone(), 3));
    assert!(matches!(
        store.refund(refund("r-1", 10, None)).await,
        Err(StoreError::Rule(RuleError::RefundIdConflict))
    ));
    assert!(matches!(
        store.refund(refund("r-2", 41, None)).await,
        Err(StoreError::Rule(RuleError::RefundExceedsPaid {
            requested: 101,
            paid: 100
        }))
    ));
    let done = store
        .refund(refund("r-2", 40, Some(3)))
        .await
        .unwrap()
        .order;
    assert_eq!(
        (done.refunded_amount, done.status),
        (100, OrderStatus::Refunded)
    );

    let listed = store.list_refunds(order.id).await.unwrap();
    let ids: Vec<_> = listed.iter().map(|r| r.refund_id.as_str()).collect();
    assert_eq!(ids, ["r-1", "r-2"], "oldest first");
    assert_eq!(listed[0], r1);
    assert_eq!(outbox_count(&url).await, 4, "created, paid, two refunds");
    // Replayed from the created event, the diffs give the order and its
    // refunds (`refunds.<refund_id>`).
    let events = store.outbox_events(0, 100).await.unwrap();
    let state = rebuilt(&events);
    let mut expected = order_view(&done);
    expected["refunds"] = json!({
        "r-1": {"refund_id": "r-1", "amount": 60, "reason": "cold",
                "created_at": timestamp(r1.created_at_ms)},
        "r-2": {"refund_id": "r-2", "amount": 40, "reason": "cold",
                "created_at": timestamp(listed[1].created_at_ms)},
    });
    assert_eq!(state, expected);
    store.close().await;
}

pub async fn user_pages_are_stable(backend: Backend) {
    let (url, _dir) = fresh_url(backend).await;
    let store = open(&url).await;
    // Several orders share a millisecond: the sequence breaks the tie.
    let mut all = Vec::new();
    for i in 0..9u64 {
        let at = T0 + (i as i64 / 3);
        all.push(insert(&store, i + 1, request(&format!("o-{i}"), "u-1", 10), at).await);
    }
    insert(&store, 100, request("other", "u-2", 10), T0).await;
    all.sort_by_key(|o| std::cmp::Reverse((o.created_at_ms, o.id)));

    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_user_orders(&UserId::parse("u-1").unwrap(), after, 4)
            .await
            .unwrap();
        if page.orders.is_empty() {
            break;
        }
        let last = page.orders.last().unwrap();
        after = Some(UserCursor {
            created_at_ms: last.created_at_ms,
            order_id: last.id,
        });
        seen.extend(page.orders.into_iter().map(|o| o.id));
    }
    let expected: Vec<_> = all.iter().map(|o| o.id).collect();
    assert_eq!(seen, expected, "newest first, nothing skipped or repeated");
    store.close().await;
}

pub async fn sequences_never_repeat(backend: Backend) {
    let (url, _dir) = fresh_url(backend).await;
    // Two "engine processes": separate pools on the same unit database, each
    // with its own generator, drawing concurrently with small segments.
    let (a, b) = (open(&url).await, open(&url).await);
    let gens = [
        SequenceGenerator::new(a.clone(), 7, 10),
        SequenceGenerator::new(b.clone(), 7, 10),
    ];
    let draws = gens.iter().cycle().take(8).map(|g| {
        let g = g.clone();
        async move {
            let mut v = Vec::new();
            for _ in 0..150 {
                v.push(g.next().await.unwrap());
            }
            v
        }
    });
    let mut values: Vec<u64> = join_all(draws).await.concat();
    let distinct: HashSet<_> = values.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        values.len(),
        "a sequence number was handed out twice"
    );
    values.sort_unstable();
    let max_before_restart = *values.last().unwrap();

    // A restart (a new generator on the same database) continues after every
    // reserved segment: the rest of a segment is skipped, never reused.
    drop(gens);
    let c = open(&url).await;
    let restarted = SequenceGenerator::new(c.clone(), 7, 10);
    let first = restarted.next().await.unwrap();
    assert!(
        first > max_before_restart,
        "{first} <= {max_before_restart}"
    );
    for s in [a, b, c] {
        s.close().await;
    }
}

/// A create batch writes one outbox record for all its orders; read back, it
/// is one `created` event per order, in the batch's order, each showing the
/// order as it was created, however it changed since.
pub async fn a_create_batch_writes_one_record_read_as_an_event_per_order(backend: Backend) {
    let (url, _dir) = fresh_url(backend).await;
    let store = open(&url).await;
    // As a relay holding the lease: the batch's orders are kept, and its
    // events rendered from them the first time, from the rows after.
    store.keep_created(true);
    let batch: Vec<Order> = (1..=5)
        .map(|seq| {
            let id = OrderId::new(UNIT, T0 / 1000, seq).unwrap();
            request(&format!("b-{seq}"), "u-1", 100 * seq as i64).into_order(id, T0 + seq as i64)
        })
        .collect();
    assert_eq!(
        store.insert_orders(&with_attempts(&batch)).await.unwrap(),
        BatchOutcome::Inserted
    );
    assert_eq!(outbox_count(&url).await, 1, "one record for the batch");
    let p1 = PaymentRef::parse("p-1").unwrap();
    store
        .update_order(pay(batch[2].id, &p1, batch[2].amount.get(), None))
        .await
        .unwrap();
    let alone = insert(&store, 6, request("alone", "u-2", 7), T0 + 60_000).await;

    let events = store.outbox_events(0, 100).await.unwrap();
    let expected: Vec<_> = batch
        .iter()
        .chain([&alone])
        .map(|o| (format!("{}.1", o.id), order_view(o)))
        .collect();
    let created: Vec<_> = events
        .iter()
        .filter(|e| e.event_type == "order.created")
        .map(|e| {
            (
                e.payload()["event_id"].as_str().unwrap().to_owned(),
                e.payload()["order"].clone(),
            )
        })
        .collect();
    assert_eq!(created, expected);
    let again = store.outbox_events(0, 100).await.unwrap();
    assert_eq!(again, events, "rendered from the rows, the same events");
    let types: Vec<_> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types,
        [
            "order.created",
            "order.created",
            "order.created",
            "order.created",
            "order.created",
            "order.paid",
            "order.created"
        ],
        "records in commit order"
    );
    let records: Vec<_> = events.iter().map(|e| e.record_id).collect();
    assert!(records[..5].iter().all(|&r| r == records[0]), "one record");
    assert!(records[0] < records[5] && records[5] < records[6]);
    assert_eq!(events[5].payload()["order_id"], batch[2].id.to_string());

    // A relay's cursor: after the batch's record come the pay and the lone create.
    let rest = store.outbox_events(records[0], 100).await.unwrap();
    assert_eq!(rest, events[5..]);
    let first = store.outbox_events(0, 1).await.unwrap();
    assert_eq!(first, events[..5], "a limit counts records, not events");

    // A created record from before batches had one record: it holds the
    // order (in the state the change left it), carried as `order`.
    let legacy = json!({"type": "order.created", "order_id": "legacy", "version": 1});
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    sqlx::query(
        "INSERT INTO outbox (order_seq, order_version, event_type, payload, created_at_ms) \
         VALUES (99, 1, 'order.created', ?, 0)",
    )
    .bind(legacy.to_string())
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let last = store.outbox_events(records[6], 100).await.unwrap();
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].payload()["order"], legacy);
    assert_eq!(last[0].payload()["event_id"], "legacy.1");
    store.close().await;
}

/// One relay holds a unit's lease at a time: another takes it only once it
/// has expired, and the holder, which renews it at most every third of its
/// time, learns that it lost it. A fenced store neither takes nor keeps it.
pub async fn the_relay_lease_has_one_holder_at_a_time(backend: Backend) {
    let (url, _dir) = fresh_url(backend).await;
    let (a, b) = (open(&url).await, open(&url).await);
    const TTL: i64 = 900;
    assert!(a.hold_relay_lease("a", TTL).await.unwrap());
    assert!(!b.hold_relay_lease("b", TTL).await.unwrap());
    assert!(a.hold_relay_lease("a", TTL).await.unwrap(), "kept");
    tokio::time::sleep(std::time::Duration::from_millis(TTL as u64 / 3 + 50)).await;
    assert!(a.hold_relay_lease("a", TTL).await.unwrap(), "renewed");
    assert!(!b.hold_relay_lease("b", TTL).await.unwrap(), "not expired");
    tokio::time::sleep(std::time::Duration::from_millis(TTL as u64 + 50)).await;
    assert!(
        b.hold_relay_lease("b", TTL).await.unwrap(),
        "taken once expired"
    );
    assert!(!a.hold_relay_lease("a", TTL).await.unwrap(), "lost");
    b.fence_writes(true);
    assert!(!b.hold_relay_lease("b", TTL).await.unwrap(), "fenced");
    b.fence_writes(false);
    assert!(
        b.hold_relay_lease("b", TTL).await.unwrap(),
        "unfenced, still b's"
    );
    a.close().await;
    b.close().await;
}

pub async fn key_records_are_compare_and_set_and_fence_orders(backend: Backend) {
    let (url, _dir) = fresh_url(backend).await;
    let store = open(&url).await;
    let key = |k: &str| {
        (
            MerchantId::parse("m-1").unwrap(),
            OutTradeNo::parse(k).unwrap(),
        )
    };
    let order_of = |k: &str, seq: u64| {
        request(k, "u-1", 10).into_order(OrderId::new(UNIT, T0 / 1000, seq).unwrap(), T0)
    };
    let (a, b, c) = (Attempt(11), Attempt(22), Attempt(33));
    let claim = |unit, attempt| Mark::Claim { unit, attempt };
    // A claim is written where the key has no record, and answers the record.
    let first = store
        .claim_keys(vec![
            KeyClaim {
                key: key("k-1"),
                mark: claim(3, a),
            },
            KeyClaim {
                key: key("k-2"),
                mark: claim(4, a),
            },
        ])
        .await
        .unwrap();
    assert_eq!(
        first.into_iter().map(Result::unwrap).collect::<Vec<_>>(),
        [claim(3, a), claim(4, a)]
    );
    let second = store
        .claim_keys(vec![KeyClaim {
            key: key("k-1"),
            mark: claim(5, b),
        }])
        .await
        .unwrap();
    assert_eq!(
        second[0].as_ref().unwrap(),
        &claim(3, a),
        "the first claim stands"
    );
    // Replacing is a compare-and-set on the record seen.
    assert!(
        !store
            .replace_mark(&key("k-1"), claim(5, b), claim(6, b))
            .await
            .unwrap()
    );
    assert!(
        store
            .replace_mark(&key("k-1"), claim(3, a), claim(5, b))
            .await
            .unwrap()
    );
    assert_eq!(
        store.read_mark(&key("k-1")).await.unwrap(),
        Some(claim(5, b))
    );
    assert_eq!(store.read_mark(&key("k-9")).await.unwrap(), None);
    // A key whose record here is a home's claim cannot get its order here.
    match store.insert_order(&order_of("k-1", 1), c).await.unwrap() {
        InsertOutcome::Blocked(mark) => assert_eq!(mark, claim(5, b)),
        other => panic!("expected the claim to block the order, got {other:?}"),
    }
    // Settling attempt d of a key without a record fences the key and
    // lists d: d's order can no longer be written here, alone or in a batch
    // (which then writes nothing at all).
    let d = Attempt(44);
    let settled = store.settle_key(&key("k-3"), d).await.unwrap();
    assert_eq!((settled.mark, settled.order.is_none()), (Mark::Fence, true));
    match store.insert_order(&order_of("k-3", 2), d).await.unwrap() {
        InsertOutcome::Blocked(Mark::Fence) => {}
        other => panic!("expected the fence to block the order, got {other:?}"),
    }
    let batch = [order_of("k-5", 3), order_of("k-3", 4), order_of("k-6", 5)];
    assert_eq!(
        store.insert_orders(&with_attempts(&batch)).await.unwrap(),
        BatchOutcome::KeyTaken
    );
    assert_eq!(
        store.read_mark(&key("k-5")).await.unwrap(),
        None,
        "nothing of the batch"
    );
    assert_eq!(
        store
            .find_by_key(&key("k-5").0, &key("k-5").1)
            .await
            .unwrap(),
        None
    );
    // Another attempt's order takes the fence's place (alone).
    let k3 = order_of("k-3", 7);
    assert!(matches!(
        store.insert_order(&k3, c).await.unwrap(),
        InsertOutcome::Inserted
    ));
    assert_eq!(
        store.read_mark(&key("k-3")).await.unwrap(),
        Some(Mark::Slot { attempt: c })
    );
    // An order writes its key's slot; settling the key finds both.
    let order = order_of("k-4", 6);
    assert!(matches!(
        store.insert_order(&order, c).await.unwrap(),
        InsertOutcome::Inserted
    ));
    let settled = store.settle_key(&key("k-4"), b).await.unwrap();
    assert_eq!(settled.mark, Mark::Slot { attempt: c });
    assert_eq!(settled.order.map(|o| o.id), Some(order.id));
    // A fence is replaced by a claim (a home taking a new claim); the settled
    // attempt stays listed: even when the record is a fence again, its
    // order cannot take its place, while the claim's own attempt's can.
    store.settle_key(&key("k-7"), d).await.unwrap();
    assert!(
        store
            .replace_mark(&key("k-7"), Mark::Fence, claim(3, a))
            .await
            .unwrap()
    );
    match store.insert_order(&order_of("k-7", 8), d).await.unwrap() {
        InsertOutcome::Blocked(mark) => assert_eq!(mark, claim(3, a)),
        other => panic!("expected a's claim to block d, got {other:?}"),
    }
    assert!(
        store
            .replace_mark(&key("k-7"), claim(3, a), Mark::Fence)
            .await
            .unwrap()
    );
    assert!(matches!(
        store.insert_order(&order_of("k-7", 9), d).await.unwrap(),
        InsertOutcome::Blocked(Mark::Fence)
    ));
    assert!(
        store
            .replace_mark(&key("k-7"), Mark::Fence, claim(3, a))
            .await
            .unwrap()
    );
    assert!(matches!(
        store.insert_order(&order_of("k-7", 10), a).await.unwrap(),
        InsertOutcome::Inserted
    ));
    // A claim its create gave up becomes a fence, again only as seen.
    assert!(
        !store
            .replace_mark(&key("k-2"), claim(4, b), Mark::Fence)
            .await
            .unwrap()
    );
    assert!(
        store
            .replace_mark(&key("k-2"), claim(4, a), Mark::Fence)
            .await
            .unwrap()
    );
    assert_eq!(
        store.read_mark(&key("k-2")).await.unwrap(),
        Some(Mark::Fence)
    );
    // Settings: whoever comes first fixes them.
    assert_eq!(store.read_meta("key_ring").await.unwrap(), None);
    assert_eq!(store.settle_meta("key_ring", "1,2").await.unwrap(), "1,2");
    assert_eq!(store.settle_meta("key_ring", "1,2,3").await.unwrap(), "1,2");
    assert_eq!(
        store.read_meta("key_ring").await.unwrap().as_deref(),
        Some("1,2")
    );
    // Only the three orders wrote outbox records.
    assert_eq!(store.outbox_backlog().await.unwrap(), 3);
    store.close().await;
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(#[actix_web::test]
            async fn $name() {
                super::$name(crate::helpers::Backend::Sqlite).await
            })*
        }
        mod on_mariadb {
            $(#[actix_web::test]
            async fn $name() {
                super::$name(crate::helpers::Backend::MariaDb).await
            })*
        }
    };
}

on_both_backends!(
    orders_round_trip_and_keys_are_unique,
    updates_are_versioned_and_logged,
    a_batch_of_updates_answers_each_as_alone,
    a_batch_of_refunds_answers_each_as_alone,
    refunds_add_up_and_replay,
    user_pages_are_stable,
    sequences_never_repeat,
    key_records_are_compare_and_set_and_fence_orders,
    a_create_batch_writes_one_record_read_as_an_event_per_order,
    the_relay_lease_has_one_holder_at_a_time,
    sections_are_replaced_and_removed_with_the_order,
);
