//! `PUT`/`DELETE /v1/orders/{id}/sections/{name}` over HTTP: one named
//! section replaced or removed under `If-Match`, a new version each time
//! something changes and none when nothing does, an event per change, and
//! a create replayed after its sections changed is still a replay.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{Backend, count_rows, order_body, spawn_app};

#[actix_web::test]
async fn a_section_is_replaced_and_removed_under_its_version() {
    let app = spawn_app(Backend::Sqlite, 1).await;
    let created = app.create("m-s", "o-s", "u-s", 100).await;
    let id = created["order_id"].as_str().unwrap().to_owned();
    let path = format!("/v1/orders/{id}/sections/shipping");
    let put = |body: &'static str, if_match: Option<&'static str>| {
        let (app, path) = (&app, &path);
        async move { app.send(Method::PUT, path, Some(body), if_match).await }
    };

    let r = put(r#"{"city": "Guangzhou", "floor": 3}"#, Some("1")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["version"], 2);
    assert_eq!(r.headers["etag"], "\"2\"");
    assert!(r.headers.contains_key("x-consistency-token"));
    assert_eq!(
        r.body["sections"],
        json!({"items": [{"sku": "c1", "qty": 2}], "shipping": {"city": "Guangzhou", "floor": 3}})
    );
    // The same value again (however spaced): nothing changes.
    let r = put(r#"{ "floor":3, "city":"Guangzhou" }"#, Some("7")).await;
    assert_eq!(
        (r.status, r.body["version"].clone()),
        (StatusCode::OK, json!(2))
    );
    // Another value against a stale version: refused.
    let r = put(r#""a string is a value too""#, Some("1")).await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED, "{}", r.body);
    assert_eq!(r.code(), "version_mismatch");
    let r = put(r#"[1, 2.50, null]"#, None).await;
    assert_eq!(r.body["sections"]["shipping"], json!([1, 2.50, null]));
    assert_eq!(r.body["version"], 3);

    let r = app.send(Method::DELETE, &path, None, Some("3")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["version"], 4);
    assert_eq!(
        r.body["sections"],
        json!({"items": [{"sku": "c1", "qty": 2}]})
    );
    let r = app.send(Method::DELETE, &path, None, Some("3")).await;
    assert_eq!(
        (r.status, r.body["version"].clone()),
        (StatusCode::OK, json!(4))
    );
    let got = app.get(&format!("/v1/orders/{id}?sections=shipping")).await;
    assert_eq!(got.body["sections"], json!({}), "{}", got.body);

    // Refused before anything is asked of the unit.
    for (method, path, body, code) in [
        (
            Method::PUT,
            format!("/v1/orders/{id}/sections/bad%20section"),
            Some("1"),
            "validation_failed",
        ),
        (Method::PUT, path.clone(), Some("   "), "validation_failed"),
        (
            Method::PUT,
            path.clone(),
            Some("{\"city\":"),
            "malformed_json",
        ),
        (
            Method::PUT,
            "/v1/orders/123/sections/x".into(),
            Some("1"),
            "invalid_order_id",
        ),
    ] {
        let r = app.send(method, &path, body, None).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}: {}", r.body);
        assert_eq!(r.code(), code, "{path}: {}", r.body);
    }
    let r = app.send(Method::PATCH, &path, Some("1"), None).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.headers["allow"], "PUT, DELETE");

    // The create, replayed with its first body, is still that create.
    let again = app
        .post("/v1/orders", &order_body("m-s", "o-s", "u-s", 100))
        .await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    assert_eq!(again.body["order_id"], id.as_str());
    assert_eq!(again.body["version"], 4);
    // One event per change: the create and three changes.
    let db = app.unit_db(1).await;
    assert_eq!(count_rows(&db, "outbox").await, 4);
    app.shutdown().await;
}

/// Section values that are JSON by syntax but do not read back as values
/// (a number past a double's range, a lone surrogate escape) are refused
/// on create and on `PUT`. Taken, every later change of the order failed:
/// its event could not be built, and the unit's actor restarted each time.
#[actix_web::test]
async fn sections_that_do_not_read_back_are_refused() {
    let app = spawn_app(Backend::Sqlite, 1).await;
    for sections in [r#"{"x":1e400}"#, r#"{"x":["\ud800"]}"#] {
        let mut body = order_body("m-r", "o-r", "u-r", 100);
        body["sections"] = serde_json::from_str(r#"{"y":1}"#).unwrap();
        let text = body.to_string().replace(r#"{"y":1}"#, sections);
        let r = app
            .send(Method::POST, "/v1/orders", Some(&text), None)
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{sections}: {}", r.body);
        assert_eq!(r.code(), "validation_failed", "{}", r.body);
        assert_eq!(r.body["error"]["field"], "sections", "{}", r.body);
    }
    let created = app.create("m-r", "o-r", "u-r", 100).await;
    let id = created["order_id"].as_str().unwrap().to_owned();
    let path = format!("/v1/orders/{id}/sections/x");
    for value in ["1e400", r#"{"a":"\udc00"}"#] {
        let r = app.send(Method::PUT, &path, Some(value), None).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{value}: {}", r.body);
        assert_eq!(r.code(), "validation_failed", "{}", r.body);
    }
    // Nothing was written, and the order takes changes as before.
    let r = app
        .post(
            &format!("/v1/orders/{id}/pay"),
            &json!({"payment_ref": "p-r", "amount": 100}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["version"], 2);
    let db = app.unit_db(1).await;
    assert_eq!(count_rows(&db, "orders").await, 1);
    app.shutdown().await;
}

/// Section updates add to an order one body at a time; past 1 MiB of
/// sections in all the next one that adds is refused (a row that grew
/// without end failed at the database's column and packet limits, with a
/// 500), while one that shrinks them is still taken.
#[actix_web::test]
async fn an_orders_sections_are_bounded() {
    let app = spawn_app(Backend::Sqlite, 1).await;
    let created = app.create("m-b", "o-b", "u-b", 100).await;
    let id = created["order_id"].as_str().unwrap().to_owned();
    let big = format!("\"{}\"", "x".repeat(60_000));
    let mut taken = 0;
    let refused = loop {
        let r = app
            .send(
                Method::PUT,
                &format!("/v1/orders/{id}/sections/s{taken}"),
                Some(&big),
                None,
            )
            .await;
        if r.status != StatusCode::OK {
            break r;
        }
        taken += 1;
        assert!(taken < 40, "never refused");
    };
    assert_eq!(taken, 17, "1 MiB holds 17 sections of 60,000 bytes");
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{}", refused.body);
    assert_eq!(refused.code(), "validation_failed", "{}", refused.body);
    let got = app.get(&format!("/v1/orders/{id}")).await;
    assert_eq!(got.body["version"], 1 + taken);
    // Smaller is still taken, and the order goes on.
    let r = app
        .send(
            Method::PUT,
            &format!("/v1/orders/{id}/sections/s0"),
            Some("1"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let pay = json!({"payment_ref": "p-b", "amount": 100});
    let r = app.post(&format!("/v1/orders/{id}/pay"), &pay).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    app.shutdown().await;
}
