//! The order lifecycle over HTTP on MariaDB, as a service team would use it.

use std::collections::HashMap;

use reqwest::StatusCode;
use serde_json::json;
use sqlx::Row;

use crate::helpers::{
    Backend, count_rows, order_body, settings_for, spawn_app, spawn_app_with, unit_urls,
};

/// Flips one digit: a mistyped id.
fn mistype(id: &str) -> String {
    let mut b = id.as_bytes().to_vec();
    b[10] = if b[10] == b'9' { b'0' } else { b[10] + 1 };
    String::from_utf8(b).unwrap()
}

#[actix_web::test]
async fn full_lifecycle_on_three_mariadb_units() {
    let app = spawn_app(Backend::MariaDb, 3).await;

    let r = app
        .post(
            "/v1/orders",
            &order_body("m-1001", "20261122-0001", "u-42", 1999),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let id = r.body["order_id"].as_str().unwrap().to_string();
    assert_eq!(r.headers["location"], format!("/v1/orders/{id}").as_str());
    assert_eq!(id.len(), 28);
    assert_eq!(r.body["status"], "created");
    assert_eq!(r.body["version"], 1);
    assert_eq!(r.body["sections"]["shipping"]["city"], "Shenzhen");

    // The unit in the id is the unit whose database holds the order, and only it.
    let unit: u16 = id[1..5].parse().unwrap();
    assert_eq!(r.body["unit"], unit);
    let seq: i64 = id[17..27].parse().unwrap();
    for (u, _) in &app.units {
        let db = app.unit_db(*u).await;
        let n: i64 =
            sqlx::query("SELECT COUNT(*) AS n FROM orders WHERE seq = ? AND out_trade_no = ?")
                .bind(seq)
                .bind("20261122-0001")
                .fetch_one(&db)
                .await
                .unwrap()
                .get("n");
        assert_eq!(n, i64::from(*u == unit), "unit {u}");
    }

    let r = app
        .post(
            &format!("/v1/orders/{id}/pay"),
            &json!({"payment_ref": "wx-8842", "amount": 1999}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        (r.body["status"].as_str(), r.body["paid_amount"].as_i64()),
        (Some("paid"), Some(1999))
    );
    assert_eq!(r.headers["etag"], "\"2\"");

    let r = app
        .post(
            &format!("/v1/orders/{id}/refunds"),
            &json!({"refund_id": "r-1", "amount": 500, "reason": "one coffee cold"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["refund"]["amount"], 500);
    assert_eq!(
        (
            r.body["order"]["status"].as_str(),
            r.body["order"]["refunded_amount"].as_i64()
        ),
        (Some("paid"), Some(500))
    );

    let r = app
        .post(
            &format!("/v1/orders/{id}/refunds"),
            &json!({"refund_id": "r-2", "amount": 1499}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["order"]["status"], "refunded");

    let r = app.get(&format!("/v1/orders/{id}")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["status"], "refunded");
    assert_eq!(r.body["refunded_amount"], 1999);
    assert_eq!(r.body["version"], 4);
    assert_eq!(r.body["payment_ref"], "wx-8842");
    assert!(r.body["created_at"].as_str().unwrap().ends_with('Z'));

    let r = app.get(&format!("/v1/orders/{id}/refunds")).await;
    let ids: Vec<_> = r.body["refunds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["refund_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["r-1", "r-2"]);

    // A mistyped id never reaches a unit; a well-formed id of an unknown unit is 404.
    let r = app.get(&format!("/v1/orders/{}", mistype(&id))).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_REQUEST, "invalid_order_id")
    );
    let r = app.get("/v1/orders/1999926112214301500000000427").await;
    assert_eq!(r.status.as_u16() / 100, 4);
    let unknown_unit = {
        let body = format!("1{:04}{}", 9999, &id[5..27]);
        order_engine::domain::OrderId::parse(&format!("{body}0"))
            .or_else(|_| {
                (1..10)
                    .map(|d| format!("{body}{d}"))
                    .find_map(|s| order_engine::domain::OrderId::parse(&s).ok())
                    .ok_or(())
            })
            .unwrap()
    };
    let r = app.get(&format!("/v1/orders/{unknown_unit}")).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::NOT_FOUND, "order_not_found")
    );

    // Look-up by the merchant's own number.
    let r = app.get("/v1/merchants/m-1001/orders/20261122-0001").await;
    assert_eq!(
        (r.status, r.body["order_id"].as_str()),
        (StatusCode::OK, Some(id.as_str()))
    );
    let r = app.get("/v1/merchants/m-1001/orders/nope").await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::NOT_FOUND, "order_not_found")
    );
    app.shutdown().await;
}

#[actix_web::test]
async fn creates_are_idempotent_across_units() {
    let app = spawn_app(Backend::MariaDb, 4).await;
    let body = order_body("m-1", "k-1", "u-1", 100);
    let first = app.post("/v1/orders", &body).await;
    assert_eq!(first.status, StatusCode::CREATED);
    // With random unit choice most replays would land on another unit; they must
    // all find the original.
    for _ in 0..20 {
        let r = app.post("/v1/orders", &body).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(r.body["order_id"], first.body["order_id"]);
    }
    let mut other = body.clone();
    other["amount"] = json!(101);
    let r = app.post("/v1/orders", &other).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "idempotency_conflict")
    );

    // Concurrent identical creates: one order.
    let fresh = order_body("m-1", "k-2", "u-1", 100);
    let replies =
        futures_util::future::join_all((0..16).map(|_| app.post("/v1/orders", &fresh))).await;
    let ids: std::collections::HashSet<_> = replies
        .iter()
        .map(|r| r.body["order_id"].to_string())
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(
        replies
            .iter()
            .filter(|r| r.status == StatusCode::CREATED)
            .count(),
        1
    );
    let mut total = 0;
    for (u, _) in &app.units {
        let n: i64 =
            sqlx::query("SELECT COUNT(*) AS n FROM orders WHERE out_trade_no IN ('k-1', 'k-2')")
                .fetch_one(&app.unit_db(*u).await)
                .await
                .unwrap()
                .get("n");
        total += n;
    }
    assert_eq!(
        total, 2,
        "exactly one stored order per key across all units"
    );
    app.shutdown().await;
}

#[actix_web::test]
async fn replays_after_a_restart_find_orders_in_every_unit() {
    // Orders made by one engine; a second engine on the same units must
    // find every key wherever its random unit choice lands.
    let dir = tempfile::tempdir().unwrap();
    // Unit ids no other test uses: the metrics registry is process-wide.
    let units: Vec<_> = unit_urls(Backend::MariaDb, 4, dir.path())
        .into_iter()
        .map(|(id, url)| (id + 60, url))
        .collect();
    let first = spawn_app_with(settings_for(&units, ""), tempfile::tempdir().unwrap()).await;
    let bodies: Vec<_> = (0..200)
        .map(|i| order_body("m-restart", &format!("r-{i}"), "u-1", 10 + i))
        .collect();
    let mut ids = Vec::new();
    for body in &bodies {
        let r = first.post("/v1/orders", body).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        ids.push(r.body["order_id"].clone());
    }
    first.shutdown().await;

    let second = spawn_app_with(settings_for(&units, ""), dir).await;
    for (body, id) in bodies.iter().zip(&ids) {
        let r = second.post("/v1/orders", body).await;
        assert_eq!(r.status, StatusCode::OK, "a replay: {}", r.body);
        assert_eq!(&r.body["order_id"], id);
    }
    // A changed body under a stored key is a conflict, in whichever unit.
    for body in bodies.iter().take(20) {
        let mut other = body.clone();
        other["amount"] = json!(1);
        let r = second.post("/v1/orders", &other).await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::CONFLICT, "idempotency_conflict")
        );
    }
    for i in 0..50 {
        let r = second
            .post(
                "/v1/orders",
                &order_body("m-restart", &format!("n-{i}"), "u-1", 5),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    }
    let mut stored = 0;
    for (u, _) in &second.units {
        stored += count_rows(&second.unit_db(*u).await, "orders").await;
    }
    assert_eq!(stored, 250, "no replay made a second order");

    // Every key is recorded at a majority of its homes: its slot in the
    // order's unit (one per key), and claims naming that unit.
    let mut records = HashMap::<String, (usize, usize)>::new();
    for (u, _) in &second.units {
        let rows =
            sqlx::query("SELECT out_trade_no, unit, attempt FROM key_claims WHERE merchant_id = ?")
                .bind("m-restart")
                .fetch_all(&second.unit_db(*u).await)
                .await
                .unwrap();
        for r in rows {
            let (named, attempt): (i32, i64) = (r.get("unit"), r.get("attempt"));
            let entry = records.entry(r.get("out_trade_no")).or_default();
            match (named == i32::from(*u), attempt) {
                // A fence: a create that timed out on a busy machine was
                // settled here. It counts for nothing.
                (true, 0) => {}
                (true, _) => entry.0 += 1,
                (false, _) => entry.1 += 1,
            }
        }
    }
    assert_eq!(records.len(), 250);
    for (key, (slots, claims)) in &records {
        assert_eq!(*slots, 1, "{key}: one slot");
        // One or two (two when the order's unit is not a home), and a
        // third only when a claim answered too late and another home was
        // claimed instead (it stands harmlessly beside them).
        assert!((1..=3).contains(claims), "{key}: {claims} claims");
    }
    second.shutdown().await;
}

#[actix_web::test]
async fn pay_close_and_versions() {
    let app = spawn_app(Backend::MariaDb, 3).await;
    let id = app.create("m-1", "o-1", "u-1", 100).await["order_id"]
        .as_str()
        .unwrap()
        .to_string();
    let pay = |r: &str, amount: i64| json!({"payment_ref": r, "amount": amount});

    let r = app
        .post(&format!("/v1/orders/{id}/pay"), &pay("p-1", 99))
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "amount_mismatch")
    );
    let r = app
        .post_raw(
            &format!("/v1/orders/{id}/pay"),
            pay("p-1", 100).to_string().into_bytes(),
            Some("7"),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::PRECONDITION_FAILED, "version_mismatch")
    );
    let r = app
        .post_raw(
            &format!("/v1/orders/{id}/pay"),
            pay("p-1", 100).to_string().into_bytes(),
            Some("\"1\""),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = app
        .post(&format!("/v1/orders/{id}/pay"), &pay("p-1", 100))
        .await;
    assert_eq!(
        (r.status, r.body["version"].as_i64()),
        (StatusCode::OK, Some(2)),
        "same ref: unchanged"
    );
    let r = app
        .post(&format!("/v1/orders/{id}/pay"), &pay("p-2", 100))
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "invalid_transition")
    );
    let r = app
        .post(&format!("/v1/orders/{id}/close"), &json!({}))
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "invalid_transition")
    );

    let id2 = app.create("m-1", "o-2", "u-1", 100).await["order_id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = app
        .post_raw(&format!("/v1/orders/{id2}/close"), vec![], None)
        .await;
    assert_eq!(
        (r.status, r.body["status"].as_str()),
        (StatusCode::OK, Some("closed"))
    );
    let r = app
        .post(&format!("/v1/orders/{id2}/close"), &json!({}))
        .await;
    assert_eq!(
        (r.status, r.body["version"].as_i64()),
        (StatusCode::OK, Some(2))
    );
    let r = app
        .post(&format!("/v1/orders/{id2}/pay"), &pay("p-1", 100))
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "invalid_transition")
    );
    let r = app
        .post(
            &format!("/v1/orders/{id2}/refunds"),
            &json!({"refund_id": "r", "amount": 1}),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "invalid_transition")
    );
    app.shutdown().await;
}

#[actix_web::test]
async fn sections_come_back_as_sent_and_a_replay_compares_them_as_json() {
    let app = spawn_app(Backend::MariaDb, 2).await;
    let body = |sections: &str| {
        format!(
            r#"{{"merchant_id":"m-1","out_trade_no":"raw-1","user_id":"u-1","amount":100,
                "currency":"CNY","sections":{sections}}}"#
        )
        .into_bytes()
    };
    let sent =
        r#"{"z": 1, "items": [{"sku": "c1", "qty": 2}], "n": 123456789012345678901234567890}"#;
    let r = app.post_raw("/v1/orders", body(sent), None).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let id = r.body["order_id"].as_str().unwrap().to_string();

    // Read back as text: a parsed tree would turn the big number into a float.
    let text = app
        .client
        .get(format!("{}/v1/orders/{id}", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(
            r#""sections":{"items":[{"sku": "c1", "qty": 2}],"n":123456789012345678901234567890,"z":1}"#
        ),
        "{text}"
    );

    // The same sections, spaced and ordered differently: a replay.
    let again = r#"{"n":123456789012345678901234567890,"items":[{"qty":2,"sku":"c1"}],"z":1}"#;
    let r = app.post_raw("/v1/orders", body(again), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["order_id"], id.as_str());
    // Another value: a conflict.
    let other = r#"{"n":123456789012345678901234567890,"items":[{"qty":3,"sku":"c1"}],"z":1}"#;
    let r = app.post_raw("/v1/orders", body(other), None).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "idempotency_conflict")
    );
    app.shutdown().await;
}

#[actix_web::test]
async fn sections_can_be_read_one_at_a_time() {
    let app = spawn_app(Backend::MariaDb, 3).await;
    let id = app.create("m-1", "o-1", "u-1", 100).await["order_id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = app.get(&format!("/v1/orders/{id}?sections=items")).await;
    let keys: Vec<_> = r.body["sections"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(keys, ["items"]);
    let r = app.get(&format!("/v1/orders/{id}?sections=")).await;
    assert!(r.body.get("sections").is_none(), "{}", r.body);
    let r = app
        .get(&format!("/v1/orders/{id}?consistency=eventual"))
        .await;
    assert_eq!(r.body["sections"].as_object().unwrap().len(), 2);
    let r = app
        .get(&format!("/v1/orders/{id}?consistency=sometimes"))
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_REQUEST, "validation_failed")
    );
    app.shutdown().await;
}

#[actix_web::test]
async fn user_orders_page_across_units() {
    let app = spawn_app(Backend::MariaDb, 3).await;
    let mut created = std::collections::HashSet::new();
    for i in 0..25 {
        let o = app.create("m-1", &format!("o-{i}"), "u-pager", 10).await;
        created.insert(o["order_id"].as_str().unwrap().to_string());
    }
    app.create("m-1", "someone-else", "u-other", 10).await;
    let units: std::collections::HashSet<_> =
        created.iter().map(|id| id[1..5].to_string()).collect();
    assert!(units.len() > 1, "orders spread over units");

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let q = cursor
            .as_ref()
            .map(|c| format!("&cursor={c}"))
            .unwrap_or_default();
        let r = app
            .get(&format!("/v1/users/u-pager/orders?limit=7{q}"))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        for o in r.body["orders"].as_array().unwrap() {
            seen.push((
                o["created_at"].as_str().unwrap().to_string(),
                o["order_id"].as_str().unwrap().to_string(),
            ));
        }
        cursor = r.body["next_cursor"].as_str().map(String::from);
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(seen.len(), 25, "no order skipped or repeated");
    let ids: std::collections::HashSet<_> = seen.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(ids, created);
    let mut sorted = seen.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(seen, sorted, "newest first by (created_at, order_id)");

    let r = app.get("/v1/users/u-pager/orders?cursor=garbage").await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_REQUEST, "validation_failed")
    );
    let r = app.get("/v1/users/u-pager/orders?limit=0").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    app.shutdown().await;
}

/// A unit the operator disabled still counts as a place that may hold a
/// key: its orders' look-ups answer 503 (never a false 404), user lists name
/// it instead of silently missing its orders, and a replay of its orders
/// makes no second order elsewhere.
#[actix_web::test]
async fn a_disabled_unit_is_unavailable_never_absent() {
    let dir = tempfile::tempdir().unwrap();
    // Unit ids no other test uses: the metrics registry is process-wide.
    let units: Vec<_> = unit_urls(Backend::MariaDb, 3, dir.path())
        .into_iter()
        .map(|(id, url)| (id + 70, url))
        .collect();
    let first = spawn_app_with(settings_for(&units, ""), tempfile::tempdir().unwrap()).await;
    let mut in_unit = HashMap::<u64, Vec<String>>::new();
    for i in 0..60 {
        let o = first.create("m-dis", &format!("d-{i}"), "u-dis", 10).await;
        let unit = o["unit"].as_u64().unwrap();
        in_unit.entry(unit).or_default().push(format!("d-{i}"));
    }
    assert_eq!(in_unit.len(), 3, "every unit took orders: {in_unit:?}");
    first.shutdown().await;

    let mut settings = settings_for(&units, "");
    settings.units[1].mode = order_engine::config::UnitMode::Disabled;
    let second = spawn_app_with(settings, dir).await;
    let disabled = u64::from(units[1].0);
    for key in &in_unit[&disabled] {
        let r = second
            .get(&format!("/v1/merchants/m-dis/orders/{key}"))
            .await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::SERVICE_UNAVAILABLE, "unit_unavailable"),
            "{key}: {}",
            r.body
        );
        let r = second
            .post("/v1/orders", &order_body("m-dis", key, "u-dis", 10))
            .await;
        assert_eq!(
            r.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{key}: {}",
            r.body
        );
    }
    for (unit, keys) in &in_unit {
        if *unit == disabled {
            continue;
        }
        for key in keys {
            let r = second
                .get(&format!("/v1/merchants/m-dis/orders/{key}"))
                .await;
            assert_eq!(r.status, StatusCode::OK, "{key}: {}", r.body);
            let r = second
                .post("/v1/orders", &order_body("m-dis", key, "u-dis", 10))
                .await;
            assert_eq!(r.status, StatusCode::OK, "a replay: {}", r.body);
        }
    }
    // A key nobody created: a majority of its homes answered.
    let r = second.get("/v1/merchants/m-dis/orders/never").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    // The list names the unit it could not read.
    let r = second.get("/v1/users/u-dis/orders?limit=100").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["unavailable_units"], json!([disabled]));
    let listed = r.body["orders"].as_array().unwrap().len();
    assert_eq!(listed, 60 - in_unit[&disabled].len());
    // Fresh keys still go to the open units.
    for i in 0..20 {
        let o = second
            .create("m-dis", &format!("fresh-{i}"), "u-dis", 10)
            .await;
        assert_ne!(o["unit"].as_u64().unwrap(), disabled);
    }
    let mut stored = 0;
    for (u, _) in &units {
        stored += count_rows(&second.unit_db(*u).await, "orders").await;
    }
    assert_eq!(stored, 80, "no replay made a second order");
    second.shutdown().await;
}

/// Two engine processes starting at once on new databases, with different
/// unit lists, agree on the key ring (the first unit keeps whichever
/// proposal came first), and every unit's database holds that ring.
#[actix_web::test]
async fn processes_starting_together_agree_on_the_key_ring() {
    let dir = tempfile::tempdir().unwrap();
    // Unit ids no other test uses: the metrics registry is process-wide.
    let units: Vec<_> = unit_urls(Backend::MariaDb, 4, dir.path())
        .into_iter()
        .map(|(id, url)| (id + 80, url))
        .collect();
    let (a, b) = futures_util::future::join(
        spawn_app_with(settings_for(&units[..3], ""), tempfile::tempdir().unwrap()),
        spawn_app_with(settings_for(&units, ""), tempfile::tempdir().unwrap()),
    )
    .await;
    let mut rings = Vec::new();
    for (u, _) in &units {
        let row = sqlx::query("SELECT value FROM engine_meta WHERE name = 'key_ring'")
            .fetch_one(&b.unit_db(*u).await)
            .await
            .unwrap();
        rings.push(row.get::<String, _>("value"));
    }
    rings.dedup();
    assert_eq!(rings.len(), 1, "one ring in every unit: {rings:?}");
    let homes = |status: serde_json::Value| -> Vec<u64> {
        status["units"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|u| u["key_home"] == true)
            .map(|u| u["id"].as_u64().unwrap())
            .collect()
    };
    let ring: Vec<u64> = rings[0].split(',').map(|id| id.parse().unwrap()).collect();
    // The process with three units lists only those; each is a home.
    let a_units: Vec<u64> = units[..3].iter().map(|(u, _)| u64::from(*u)).collect();
    assert_eq!(homes(a.units_status().await), a_units);
    assert!(a_units.iter().all(|u| ring.contains(u)), "{ring:?}");
    let of_b: Vec<u64> = homes(b.units_status().await);
    assert_eq!(
        of_b, ring,
        "the process with a fourth unit uses the same ring"
    );
    a.shutdown().await;
    b.shutdown().await;
}
