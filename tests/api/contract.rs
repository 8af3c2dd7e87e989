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
    // Every error code, and the exact path parameters.
    let codes = schemas["ErrorCode"]["enum"].as_array().unwrap();
    assert!(codes.contains(&json!("method_not_allowed")), "{codes:?}");
    let pay = &doc["paths"]["/v1/orders/{order_id}/pay"]["post"];
    let order_id = pay["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "order_id")
        .unwrap();
    assert_eq!(order_id["schema"]["pattern"], "^[0-9]{28}$");
    for status in ["200", "400", "404", "409", "412", "413", "429", "503"] {
        assert!(
            pay["responses"].get(status).is_some(),
            "pay documents {status}"
        );
    }
    // The admin routes are described by the admin listener, behind its token.
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.keys().all(|p| !p.starts_with("/admin")), "{paths:?}");
    let admin_doc = format!("{}/openapi.json", app.admin);
    let r = app.client.get(&admin_doc).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = app
        .client
        .get(&admin_doc)
        .bearer_auth(crate::helpers::ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let admin: Value = r.json().await.unwrap();
    assert!(admin["paths"].get("/admin/units").is_some());
    assert_eq!(
        admin["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    app.shutdown().await;
}

#[actix_web::test]
async fn health_and_readiness() {
    let app = spawn_app(Backend::Sqlite, 2).await;
    assert_eq!(app.get("/healthz").await.status, StatusCode::OK);
    let r = app.get("/readyz").await;
    assert_eq!(r.status, StatusCode::OK);
    // Public readiness: ready or not, and counts per partition; nothing
    // about where the units live (that needs the admin token).
    assert_eq!(
        r.body,
        json!({"ready": true, "partitions": [
            {"name": "standard", "units": 2, "taking_creates": 2, "panic": false}
        ]})
    );
    let status = app.units_status().await;
    let units = status["units"].as_array().unwrap();
    assert_eq!(units.len(), 2);
    for u in units {
        assert_eq!(
            (u["circuit"].as_str(), u["health"].as_str()),
            (Some("closed"), Some("healthy")),
            "{u}"
        );
        assert_eq!(u["takes_creates"], true);
        assert!(u["primary_url"].as_str().unwrap().starts_with("sqlite://"));
    }
    assert_eq!(status["partitions"][0]["panic"], false);
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

/// A path served with other methods answers 405 with `Allow`, before its
/// parameters are looked at; a path nothing serves answers 404.
#[actix_web::test]
async fn a_method_a_path_does_not_serve_is_405_with_allow() {
    let app = spawn_app(Backend::Sqlite, 1).await;
    let id = "1000326112214301500000000425";
    for (method, path, allow) in [
        ("GET", "/v1/orders".to_string(), "POST"),
        ("DELETE", format!("/v1/orders/{id}"), "GET"),
        ("GET", format!("/v1/orders/{id}/pay"), "POST"),
        ("PUT", "/v1/orders/not-an-id/close".to_string(), "POST"),
        ("PATCH", format!("/v1/orders/{id}/refunds"), "GET, POST"),
        ("POST", "/v1/users/u-1/orders".to_string(), "GET"),
        ("POST", "/healthz".to_string(), "GET"),
        ("DELETE", "/metrics".to_string(), "GET"),
    ] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let r = app
            .client
            .request(method.clone(), format!("{}{path}", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
        assert_eq!(r.headers()["allow"], allow, "{method} {path}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(
            body["error"]["code"], "method_not_allowed",
            "{method} {path}"
        );
    }
    let r = app
        .client
        .get(format!("{}/admin/units", app.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::UNAUTHORIZED,
        "the admin listener wants its token"
    );
    let r = app
        .client
        .delete(format!("{}/admin/units", app.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status(), r.headers()["allow"].to_str().unwrap()),
        (StatusCode::METHOD_NOT_ALLOWED, "GET, POST")
    );
    let r = app.get("/v2/orders").await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "not_found"));
    app.shutdown().await;
}

#[actix_web::test]
async fn start_up_with_an_unreachable_database_names_it_and_serves_the_rest() {
    use crate::proxy::{Mode, Proxy};
    // Unit 2's server behind a proxy of the test's own (any password works:
    // the test servers skip grants).
    let proxy = Proxy::start(crate::mariadb::shared().port()).await;
    let db = crate::mariadb::unique_db("down_at_start");
    let dir = tempfile::tempdir().unwrap();
    let units = [
        (1, format!("sqlite://{}/u1.db", dir.path().display())),
        (
            2,
            format!("mysql://root:hunter2@127.0.0.1:{}/{db}", proxy.port),
        ),
        (3, format!("sqlite://{}/u3.db", dir.path().display())),
    ];
    let settings = || {
        let mut s = settings_for(&units, "");
        s.storage.connect_timeout_ms = 2_000;
        s
    };
    // The first start needs every unit (the key ring is made then).
    let first = crate::helpers::spawn_app_with(settings(), tempfile::tempdir().unwrap()).await;
    first.shutdown().await;

    proxy.set(Mode::Refuse);
    let app = crate::helpers::spawn_app_with(settings(), tempfile::tempdir().unwrap()).await;
    let two = app.unit_status(2).await;
    assert_eq!(two["running"], false, "{two}");
    let why = two["start_error"].as_str().unwrap_or_default();
    assert!(
        why.contains("unit 2") && why.contains(&format!("127.0.0.1:{}", proxy.port)),
        "{two}"
    );
    assert!(
        !two.to_string().contains("hunter2"),
        "password leaked: {two}"
    );
    // Two of the three key homes answer: creates go on.
    let o = app.create("m-1", "with-2-down", "u-1", 10).await;
    assert_ne!(o["unit"], 2);
    app.shutdown().await;
}

#[actix_web::test]
async fn the_first_start_needs_every_unit() {
    let dir = tempfile::tempdir().unwrap();
    let units = [
        (1, format!("sqlite://{}/u1.db", dir.path().display())),
        (
            2,
            format!(
                "mysql://root@127.0.0.1:{}/unit_2",
                crate::mariadb::free_port()
            ),
        ),
    ];
    let mut settings = settings_for(&units, "");
    settings.storage.connect_timeout_ms = 2_000;
    let err = match order_engine::startup::Application::build(settings).await {
        Ok(_) => panic!("start-up must fail: no key ring yet, and unit 2 is down"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("first start needs every unit"), "{err}");
    assert!(err.contains("[2]"), "{err}");
}

/// A create that is inside the engine when shutdown begins is finished and
/// answered, not cut off, and new connections are refused. The unit's
/// MariaDB is behind a proxy of this test's own that holds every packet for
/// 400 ms, so a create takes seconds: the proxy seeing the create's first
/// statement says it is inside the engine before the stop, and its answer
/// comes after the stop began.
#[actix_web::test]
async fn shutdown_finishes_in_flight_requests() {
    use crate::proxy::{Mode, Proxy};
    use std::time::{Duration, Instant};

    let server = crate::mariadb::MariaDb::start();
    let proxy = Proxy::start(server.port()).await;
    let units = [(1, format!("mysql://root@127.0.0.1:{}/orders", proxy.port))];
    let mut settings = settings_for(&units, "");
    settings.server.shutdown_timeout_secs = 30;
    settings.storage.statement_timeout_ms = 10_000;
    settings.server.request_timeout_ms = 20_000;
    // No probes: the only traffic through the proxy is this test's creates
    // (and the unit's outbox gauge, once a second after start, then every 15 s).
    settings.supervisor.probe_interval_ms = 3_600_000;
    let app = crate::helpers::spawn_app_with(settings, tempfile::tempdir().unwrap()).await;
    // Warm: the unit's sequence segment and connections are in place, and
    // the first outbox gauge query has gone by.
    app.create("m-1", "sd-warm", "u-1", 10).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.set(Mode::Delay(Duration::from_millis(400)));
    let before = proxy.reads_from_engine();

    // A client of its own: no connection that outlives the stop.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let base = app.base.clone();
    let create = actix_web::rt::spawn(async move {
        let r = client
            .post(format!("{base}/v1/orders"))
            .json(&order_body("m-1", "sd-in-flight", "u-1", 10))
            .send()
            .await;
        (r.map(|r| r.status()), Instant::now())
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.reads_from_engine() == before {
        assert!(
            Instant::now() < deadline,
            "the create never reached its unit"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let stop_began = Instant::now();
    let handle = app.handle.clone();
    let stopping = actix_web::rt::spawn(async move { handle.stop(true).await });

    // New connections are refused once the listener closed.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let fresh = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        if fresh
            .get(format!("{}/healthz", app.base))
            .send()
            .await
            .is_err()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the listener still accepts after the stop"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, answered_at) = create.await.unwrap();
    assert_eq!(
        status.expect("the in-flight create was answered"),
        StatusCode::CREATED
    );
    assert!(
        answered_at > stop_began,
        "the create was answered before shutdown began: the test proved nothing"
    );
    stopping.await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), app.stopped)
        .await
        .expect("engine shuts down")
        .ok();
    proxy.set(Mode::Pass);
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&server.url("orders")).await.unwrap();
    assert_eq!(
        count_rows(&pool, "orders").await,
        2,
        "the warm-up and the in-flight create are stored"
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
