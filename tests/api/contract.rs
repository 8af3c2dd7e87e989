//! The error contract, the OpenAPI document, health endpoints, start-up
//! errors and graceful shutdown.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Backend, count_rows, order_body, settings_for, spawn_app};

#[actix_web::test]
async fn bad_input_gets_stable_codes_and_writes_nothing() {
    let app = spawn_app(Backend::Sqlite, 2).await;
    let cases: Vec<(Value, &str, Option<&str>)> = vec![
        (json!({"amount": 0}), "validation_failed", Some("amount")),
        (
            json!({"amount": 1_000_000_000_001_i64}),
            "validation_failed",
            Some("amount"),
        ),
        (
            json!({"amount": 19.99}),
            "validation_failed",
            Some("amount"),
        ),
        (
            json!({"currency": "cny"}),
            "validation_failed",
            Some("currency"),
        ),
        (
            json!({"merchant_id": "has space"}),
            "validation_failed",
            Some("merchant_id"),
        ),
        (
            json!({"out_trade_no": "x".repeat(65)}),
            "validation_failed",
            Some("out_trade_no"),
        ),
        (
            json!({"description": "d".repeat(257)}),
            "validation_failed",
            Some("description"),
        ),
        (
            json!({"sections": {"bad name": 1}}),
            "validation_failed",
            Some("sections"),
        ),
        (
            json!({"sections": [1, 2]}),
            "validation_failed",
            Some("sections"),
        ),
        (
            json!({"colour": "red"}),
            "validation_failed",
            Some("colour"),
        ),
    ];
    for (patch, code, field) in cases {
        let mut body = order_body("m-1", "o-1", "u-1", 100);
        for (k, v) in patch.as_object().unwrap() {
            body[k] = v.clone();
        }
        let r = app.post("/v1/orders", &body).await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::BAD_REQUEST, code),
            "{patch}: {}",
            r.body
        );
        assert_eq!(
            r.body["error"]["field"].as_str(),
            field,
            "{patch}: {}",
            r.body
        );
        assert!(!r.body["error"]["message"].as_str().unwrap().is_empty());
    }
    let mut missing = order_body("m-1", "o-1", "u-1", 100);
    missing.as_object_mut().unwrap().remove("user_id");
    let r = app.post("/v1/orders", &missing).await;
    assert_eq!(
        (r.code(), r.body["error"]["field"].as_str()),
        ("validation_failed", Some("user_id"))
    );

    let r = app
        .post_raw("/v1/orders", b"{\"merchant_id\": ".to_vec(), None)
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_REQUEST, "malformed_json")
    );

    let mut huge = order_body("m-1", "o-1", "u-1", 100);
    huge["sections"] = json!({"blob": "x".repeat(70 * 1024)});
    let r = app.post("/v1/orders", &huge).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );

    let r = app.get("/v1/nothing-here").await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "not_found"));

    let r = app.get(&format!("/v1/orders/{}", "1".repeat(28))).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_REQUEST, "invalid_order_id")
    );

    let r = app
        .post_raw(
            "/v1/orders/1000326112214301500000000425/pay",
            br#"{"payment_ref":"p","amount":1}"#.to_vec(),
            Some("abc"),
        )
        .await;
    assert_eq!(
        (r.status, r.body["error"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("If-Match"))
    );

    // Nothing above was stored.
    for (u, _) in &app.units {
        let n = count_rows(&app.unit_db(*u).await, "orders").await;
        assert_eq!(n, 0);
    }
    app.shutdown().await;
}

#[actix_web::test]
async fn openapi_describes_what_the_server_accepts() {
    let app = spawn_app(Backend::Sqlite, 1).await;
    let doc = app.get("/openapi.json").await.body;
    for path in [
        "/v1/orders",
        "/v1/orders/{order_id}",
        "/v1/orders/{order_id}/pay",
        "/v1/orders/{order_id}/close",
        "/v1/orders/{order_id}/refunds",
        "/v1/merchants/{merchant_id}/orders/{out_trade_no}",
        "/v1/users/{user_id}/orders",
        "/healthz",
        "/readyz",
    ] {
        assert!(doc["paths"].get(path).is_some(), "missing {path}");
    }
    let schemas = &doc["components"]["schemas"];
    for name in [
        "CreateOrderRequest",
        "PayRequest",
        "RefundRequest",
        "CloseRequest",
    ] {
        assert_eq!(
            schemas[name]["additionalProperties"], false,
            "{name} must reject unknown fields"
        );
    }
    let create = &schemas["CreateOrderRequest"]["properties"];
    use order_engine::domain::values::{
        IDENTIFIER_PATTERN, MAX_AMOUNT, MAX_TEXT_CHARS, MIN_AMOUNT,
    };
    assert_eq!(create["amount"]["maximum"], MAX_AMOUNT);
    assert_eq!(create["amount"]["minimum"], MIN_AMOUNT);
    assert_eq!(create["merchant_id"]["pattern"], IDENTIFIER_PATTERN);
    assert_eq!(create["description"]["maxLength"], MAX_TEXT_CHARS);
    let required: Vec<_> = schemas["CreateOrderRequest"]["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for f in [
        "merchant_id",
        "out_trade_no",
        "user_id",
        "amount",
        "currency",
    ] {
        assert!(required.contains(&f), "{f} is required");
    }
    app.shutdown().await;
}

#[actix_web::test]
async fn health_and_readiness() {
    let app = spawn_app(Backend::Sqlite, 2).await;
    assert_eq!(app.get("/healthz").await.status, StatusCode::OK);
    let r = app.get("/readyz").await;
    assert_eq!(
        (r.status, r.body["ready"].as_bool()),
        (StatusCode::OK, Some(true))
    );
    let units = r.body["units"].as_array().unwrap();
    assert_eq!(units.len(), 2);
    for u in units {
        assert_eq!(
            (u["circuit"].as_str(), u["health"].as_str()),
            (Some("closed"), Some("healthy")),
            "{u}"
        );
        assert_eq!(u["takes_creates"], true);
    }
    assert_eq!(r.body["partitions"][0]["panic"], false);
    app.shutdown().await;

    // All units read-only: up, but not ready for creates.
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/u.db", dir.path().display());
    let mut settings = settings_for(&[(1, url)], "");
    settings.units[0].mode = order_engine::config::UnitMode::ReadOnly;
    let app = crate::helpers::spawn_app_with(settings, dir).await;
    let r = app.get("/readyz").await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "no_unit_available")
    );
    assert!(r.headers.contains_key("retry-after"));
    let r = app.post("/v1/orders", &order_body("m", "o", "u", 1)).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "no_unit_available")
    );
    app.shutdown().await;
}

#[actix_web::test]
async fn start_up_refuses_an_unreachable_database_and_names_it() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let units = [
        (1, format!("sqlite://{}/u1.db", dir.path().display())),
        (2, format!("mysql://root:hunter2@127.0.0.1:{port}/unit_2")),
    ];
    let mut settings = settings_for(&units, "");
    settings.storage.connect_timeout_ms = 2_000;
    let err = match order_engine::startup::Application::build(settings).await {
        Ok(_) => panic!("start-up must fail"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("unit 2"), "{err}");
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(!err.contains("hunter2"), "password leaked: {err}");
}

#[actix_web::test]
async fn shutdown_finishes_in_flight_requests() {
    // Room to drain on a loaded machine: past the shutdown timeout, responses
    // may be cut off after their order committed, which is not this test.
    let dir = tempfile::tempdir().unwrap();
    let units = crate::helpers::unit_urls(Backend::MariaDb, 2, dir.path());
    let mut settings = settings_for(&units, "");
    settings.server.shutdown_timeout_secs = 30;
    let app = crate::helpers::spawn_app_with(settings, dir).await;
    let client = app.client.clone();
    let base = app.base.clone();
    let (answered, mut first_answer) = tokio::sync::mpsc::unbounded_channel();
    let creates: Vec<_> = (0..40)
        .map(|i| {
            let (client, base, answered) = (client.clone(), base.clone(), answered.clone());
            actix_web::rt::spawn(async move {
                let r = client
                    .post(format!("{base}/v1/orders"))
                    .json(&order_body("m-1", &format!("sd-{i}"), "u-1", 10))
                    .send()
                    .await
                    .map(|r| r.status());
                let _ = answered.send(());
                r
            })
        })
        .collect();
    // Stop as soon as the first create is answered: the rest are in flight.
    first_answer.recv().await;
    let units = app.units.clone();
    app.shutdown().await;

    let mut acknowledged = 0;
    for c in creates {
        match c.await.unwrap() {
            // Accepted before the stop: it must have completed, not been cut off.
            Ok(status) => {
                assert_eq!(status, StatusCode::CREATED);
                acknowledged += 1;
            }
            // Sent after the listener closed: refused, never half-done.
            Err(e) => assert!(e.is_connect() || e.is_request(), "{e}"),
        }
    }
    sqlx::any::install_default_drivers();
    let mut stored = 0;
    for (_, url) in units {
        let pool = sqlx::AnyPool::connect(&url).await.unwrap();
        let n = count_rows(&pool, "orders").await;
        stored += n;
    }
    assert!(acknowledged > 0, "some requests were in flight");
    assert_eq!(
        stored, acknowledged,
        "every acknowledged create is stored, nothing else"
    );
}

#[actix_web::test]
async fn overload_is_shed_with_429_and_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let units = crate::helpers::unit_urls(Backend::Sqlite, 2, dir.path());
    let mut settings = settings_for(&units, "");
    settings.server.max_in_flight = 1;
    let app = crate::helpers::spawn_app_with(settings, dir).await;
    let bodies: Vec<_> = (0..60)
        .map(|i| order_body("m-1", &format!("shed-{i}"), "u-1", 10))
        .collect();
    let replies =
        futures_util::future::join_all(bodies.iter().map(|b| app.post("/v1/orders", b))).await;
    let shed: Vec<_> = replies
        .iter()
        .filter(|r| r.status == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert!(
        !shed.is_empty(),
        "60 concurrent creates with max_in_flight = 1 shed none"
    );
    for r in &replies {
        assert!(
            matches!(r.status.as_u16(), 201 | 429),
            "{} {}",
            r.status,
            r.body
        );
    }
    for r in shed {
        assert_eq!(r.code(), "overloaded");
        assert!(r.headers.contains_key("retry-after"));
        assert!(r.headers.contains_key("x-request-id"));
    }
    let metrics = app.metrics_text().await;
    assert!(
        metrics.lines().any(|l| l
            .starts_with("orderengine_admission_shed_total{reason=\"in_flight\"}")
            && !l.ends_with(" 0")),
        "shed requests are counted"
    );
    app.shutdown().await;
}
