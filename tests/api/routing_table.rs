//! The live routing table through the admin API (`PATCH /admin/units/{id}`)
//! on one engine process: a change governs the next creates at once, is
//! versioned and conditional, refuses what it cannot take with a stable
//! code, and survives a restart through the state file.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Backend, Reply, TestApp, settings_for, spawn_app_with, unit_urls};

/// `PATCH /admin/units/{unit}` with the admin token.
async fn patch(app: &TestApp, unit: &str, body: &Value, if_match: Option<&str>) -> Reply {
    let path = format!("/admin/units/{unit}");
    app.admin_send(Method::PATCH, &path, body, if_match).await
}

/// `PUT path` on the admin listener with the admin token.
async fn put(app: &TestApp, path: &str, body: &Value) -> Reply {
    app.admin_send(Method::PUT, path, body, None).await
}

/// Creates `n` orders with keys `prefix-i`; the unit of each.
async fn create_many(app: &TestApp, prefix: &str, n: usize) -> Vec<(String, u64)> {
    let mut made = Vec::new();
    for i in 0..n {
        let o = app
            .create("m-1", &format!("{prefix}-{i}"), "u-1", 100)
            .await;
        made.push((
            o["order_id"].as_str().unwrap().to_string(),
            o["unit"].as_u64().unwrap(),
        ));
    }
    made
}

/// The engine over `units`, keeping its routing state in `root` (which
/// outlives the engine, so that a restart finds the databases and state).
async fn spawn(root: &tempfile::TempDir, units: &[(u16, String)]) -> TestApp {
    let mut settings = settings_for(units, "");
    let state = root.path().join("routing-state.json");
    settings.admin.state_file = Some(state.display().to_string());
    spawn_app_with(settings, tempfile::TempDir::new_in(root.path()).unwrap()).await
}

#[actix_web::test]
async fn operators_change_units_live_and_a_restart_keeps_it() {
    let root = tempfile::tempdir().unwrap();
    let units = unit_urls(Backend::Sqlite, 3, root.path());
    let app = spawn(&root, &units).await;
    assert_eq!(app.units_status().await["version"], 1);
    // The admin document names the partitions a unit may be moved into.
    let doc = app.admin_get("/openapi.json").await;
    assert_eq!(
        doc["components"]["schemas"]["UnitPatchRequest"]["properties"]["partition"]["enum"],
        json!(["standard", null])
    );

    // An order in unit 2 before the change (creates spread over the units).
    let before = create_many(&app, "before", 30).await;
    let (in_two, _) = before
        .iter()
        .find(|(_, u)| *u == 2)
        .expect("30 creates over 3 units reach unit 2")
        .clone();

    // read_only: no new orders in unit 2; its orders are still paid.
    let r = patch(&app, "2", &json!({"mode": "read_only"}), Some("1")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["version"], 2);
    assert_eq!(r.headers["etag"], "\"2\"");
    assert_eq!(r.body["unit"]["mode"], "read_only");
    assert_eq!(r.body["unit"]["takes_creates"], false);
    let after = create_many(&app, "after", 30).await;
    assert!(after.iter().all(|(_, u)| *u != 2), "{after:?}");
    let pay = app
        .post(
            &format!("/v1/orders/{in_two}/pay"),
            &json!({"payment_ref": "p-1", "amount": 100}),
        )
        .await;
    assert_eq!(pay.status, StatusCode::OK, "{}", pay.body);

    // A change against a version the table has left: 412, nothing changed.
    let r = patch(&app, "2", &json!({"mode": "open"}), Some("1")).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::PRECONDITION_FAILED, "version_mismatch")
    );
    assert_eq!(app.unit_status(2).await["mode"], "read_only");

    // disabled: its orders answer 503; weight 0: unit 1 takes no creates.
    let r = patch(&app, "2", &json!({"mode": "disabled"}), Some("\"2\"")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let get = app.get(&format!("/v1/orders/{in_two}")).await;
    assert_eq!(
        (get.status, get.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "unit_unavailable")
    );
    let r = patch(&app, "1", &json!({"weight": 0}), None).await;
    assert_eq!(
        (r.status, r.body["version"].clone()),
        (StatusCode::OK, json!(4))
    );
    let last = create_many(&app, "last", 20).await;
    assert!(last.iter().all(|(_, u)| *u == 3), "{last:?}");

    // What the table cannot take: a stable code, the field, nothing changed.
    for (unit, body, status, code, field) in [
        (
            "2",
            json!({"partition": "nowhere"}),
            400,
            "invalid_change",
            Some("partition"),
        ),
        (
            "2",
            json!({"weight": 2_000_000}),
            400,
            "validation_failed",
            Some("weight"),
        ),
        (
            "2",
            json!({"primary_url": "mysql:/no-host"}),
            400,
            "validation_failed",
            Some("primary_url"),
        ),
        (
            // Nothing listens on port 1: the unit stays where it is.
            "2",
            json!({"primary_url": "mysql://x@127.0.0.1:1/y"}),
            503,
            "unit_not_started",
            None,
        ),
        (
            "2",
            json!({"mode": "sleepy"}),
            400,
            "validation_failed",
            None,
        ),
        (
            "2",
            json!({"colour": "red"}),
            400,
            "validation_failed",
            None,
        ),
        ("99", json!({"mode": "open"}), 404, "unit_not_found", None),
        (
            "x",
            json!({"mode": "open"}),
            400,
            "validation_failed",
            Some("id"),
        ),
    ] {
        let r = patch(&app, unit, &body, None).await;
        assert_eq!(r.status.as_u16(), status, "{unit} {body}: {}", r.body);
        assert_eq!(r.code(), code, "{unit} {body}: {}", r.body);
        if let Some(f) = field {
            assert_eq!(r.body["error"]["field"], f, "{unit} {body}");
        }
    }
    let r = app
        .client
        .patch(format!("{}/admin/units/2", app.admin))
        .header("if-match", "not a version")
        .json(&json!({"mode": "sleepy"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::UNAUTHORIZED,
        "the token is checked before anything else"
    );
    // Naming nothing to change changes nothing, the version included.
    let r = patch(&app, "2", &json!({}), Some("4")).await;
    assert_eq!(
        (r.status, r.body["version"].clone()),
        (StatusCode::OK, json!(4))
    );
    let status = app.units_status().await;
    assert_eq!(status["version"], 4, "refused changes leave the version");
    // Counted (the registry is the test process's: other tests add to it).
    let metrics = app.metrics_text().await;
    let applied: f64 = metrics
        .lines()
        .find(|l| l.starts_with("orderengine_routing_table_changes_total{outcome=\"applied\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .expect("changes are counted");
    assert!(applied >= 3.0, "{applied}");

    // The state file keeps the units changed away from the config, only.
    let state: Value =
        serde_json::from_slice(&std::fs::read(root.path().join("routing-state.json")).unwrap())
            .unwrap();
    assert_eq!(state["version"], 4);
    let kept: Vec<&String> = state["units"].as_object().unwrap().keys().collect();
    assert_eq!(kept, ["1", "2"], "{state}");

    // A restart keeps every change and the version.
    app.shutdown().await;
    let app = spawn(&root, &units).await;
    let status = app.units_status().await;
    assert_eq!(status["version"], 4);
    assert_eq!(app.unit_status(2).await["mode"], "disabled");
    assert_eq!(app.unit_status(1).await["weight"], 0);
    let again = create_many(&app, "again", 10).await;
    assert!(again.iter().all(|(_, u)| *u == 3), "{again:?}");
    app.shutdown().await;
}

#[actix_web::test]
async fn of_concurrent_changes_against_one_version_exactly_one_wins() {
    let root = tempfile::tempdir().unwrap();
    let units = unit_urls(Backend::Sqlite, 2, root.path());
    let app = spawn(&root, &units).await;
    let tries = (0..8).map(|i| {
        let app = &app;
        async move { patch(app, "1", &json!({"weight": 10 + i}), Some("1")).await }
    });
    let replies = futures_util::future::join_all(tries).await;
    let won: Vec<&Reply> = replies
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .collect();
    assert_eq!(
        won.len(),
        1,
        "{:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert!(
        replies
            .iter()
            .filter(|r| r.status != StatusCode::OK)
            .all(|r| r.code() == "version_mismatch")
    );
    let status = app.units_status().await;
    assert_eq!(status["version"], 2);
    assert_eq!(
        app.unit_status(1).await["weight"],
        won[0].body["unit"]["weight"]
    );
    app.shutdown().await;
}

#[actix_web::test]
async fn creates_follow_the_weights() {
    let root = tempfile::tempdir().unwrap();
    let units = unit_urls(Backend::Sqlite, 2, root.path());
    let app = spawn(&root, &units).await;
    let r = patch(&app, "2", &json!({"weight": 25}), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let made = create_many(&app, "w", 400).await;
    let in_two = made.iter().filter(|(_, u)| *u == 2).count();
    // Expected 400 * 25/125 = 80; a binomial's standard deviation is 8, and
    // the choice balances recent creates, which only narrows it: six
    // deviations each way cannot flake.
    assert!((32..=128).contains(&in_two), "unit 2 took {in_two} of 400");
    app.shutdown().await;
}

/// Creates `n` orders of `merchant`; the unit of each.
async fn units_of_creates(app: &TestApp, merchant: &str, prefix: &str, n: usize) -> Vec<u64> {
    let mut units = Vec::new();
    for i in 0..n {
        let o = app
            .create(merchant, &format!("{prefix}-{i}"), "u-1", 100)
            .await;
        units.push(o["unit"].as_u64().unwrap());
    }
    units
}

#[actix_web::test]
async fn a_key_merchant_gets_its_own_partition_live_and_keeps_it_across_a_restart() {
    let root = tempfile::tempdir().unwrap();
    let units = unit_urls(Backend::Sqlite, 3, root.path());
    let app = spawn(&root, &units).await;
    let early = app.create("m-key", "early", "u-1", 100).await;

    // A new partition that spills into the standard one, and unit 3 in it.
    let r = put(
        &app,
        "/admin/partitions/vip",
        &json!({"spill_to": ["standard"]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["version"], 2);
    let r = patch(&app, "3", &json!({"partition": "vip"}), Some("2")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(
        units_of_creates(&app, "m-other", "o", 20)
            .await
            .iter()
            .all(|u| *u != 3),
        "standard merchants stay off the vip unit"
    );

    // The key merchant moves there; its earlier order stays reachable.
    let r = put(&app, "/admin/merchants/m-key", &json!({"partition": "vip"})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["partition"], "vip");
    assert_eq!(r.headers["etag"], "\"4\"");
    assert!(
        units_of_creates(&app, "m-key", "k", 10)
            .await
            .iter()
            .all(|u| *u == 3)
    );
    let id = early["order_id"].as_str().unwrap();
    assert_eq!(
        app.get(&format!("/v1/orders/{id}")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        app.admin_get("/admin/merchants/m-other").await,
        json!({"version": 4, "merchant_id": "m-other", "partition": "standard", "mapped": false})
    );

    // Its partition's only unit read-only: its creates spill into standard.
    let r = patch(&app, "3", &json!({"mode": "read_only"}), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(
        units_of_creates(&app, "m-key", "s", 10)
            .await
            .iter()
            .all(|u| *u != 3)
    );

    // What the table cannot take.
    for (path, body, code, field) in [
        (
            "/admin/partitions/vip",
            json!({"spill_to": ["cold"]}),
            "invalid_change",
            Some("spill_to"),
        ),
        (
            "/admin/partitions/vip",
            json!({"spill_to": ["nowhere"]}),
            "invalid_change",
            Some("spill_to"),
        ),
        (
            "/admin/partitions/vip",
            json!({"spill_to": ["standard", "standard"]}),
            "invalid_change",
            Some("spill_to"),
        ),
        (
            "/admin/partitions/bad%20name",
            json!({"spill_to": []}),
            "validation_failed",
            Some("name"),
        ),
        (
            "/admin/merchants/m-key",
            json!({"partition": "nowhere"}),
            "invalid_change",
            Some("partition"),
        ),
        (
            "/admin/merchants/bad%20id",
            json!({"partition": "vip"}),
            "validation_failed",
            Some("merchant_id"),
        ),
        (
            "/admin/merchants/m-key",
            json!({"partition": 7}),
            "validation_failed",
            None,
        ),
    ] {
        let r = put(&app, path, &body).await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::BAD_REQUEST, code),
            "{path} {body}: {}",
            r.body
        );
        if let Some(f) = field {
            assert_eq!(r.body["error"]["field"], f, "{path} {body}");
        }
    }
    let table = app.admin_get("/admin/partitions").await;
    assert_eq!(table["version"], 5);
    let vip = table["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "vip")
        .cloned()
        .unwrap();
    assert_eq!(
        vip,
        json!({"name": "vip", "spill_to": ["standard"], "units": [3]})
    );

    // A restart keeps the partition, the merchant and the unit's move.
    app.shutdown().await;
    let app = spawn(&root, &units).await;
    assert_eq!(app.admin_get("/admin/partitions").await["version"], 5);
    assert_eq!(
        app.admin_get("/admin/merchants/m-key").await["partition"],
        "vip"
    );
    let r = patch(&app, "3", &json!({"mode": "open"}), Some("5")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(
        units_of_creates(&app, "m-key", "r", 10)
            .await
            .iter()
            .all(|u| *u == 3)
    );
    app.shutdown().await;
}

#[actix_web::test]
async fn a_unit_added_live_takes_creates_at_once_and_a_restart_keeps_it() {
    let root = tempfile::tempdir().unwrap();
    let units = unit_urls(Backend::Sqlite, 2, root.path());
    let app = spawn(&root, &units).await;
    let new_url = format!("sqlite://{}/added-3.db", root.path().display());
    let add = |body: Value| {
        let app = &app;
        async move {
            app.admin_send(Method::POST, "/admin/units", &body, None)
                .await
        }
    };

    // What the table cannot take is refused with a stable code, and nothing changes.
    for (body, status, code, field) in [
        (
            json!({"id": 1, "partition": "standard", "primary_url": new_url}),
            400,
            "invalid_change",
            "id",
        ),
        (
            json!({"id": 3, "partition": "nowhere", "primary_url": new_url}),
            400,
            "invalid_change",
            "partition",
        ),
        (
            json!({"id": 3, "partition": "standard", "primary_url": "mysql:/oops"}),
            400,
            "validation_failed",
            "primary_url",
        ),
        (
            json!({"id": 3, "partition": "standard", "primary_url": units[0].1}),
            400,
            "invalid_change",
            "primary_url",
        ),
        (
            json!({"id": 10000, "partition": "standard", "primary_url": new_url}),
            400,
            "validation_failed",
            "id",
        ),
        // Replicas: MariaDB servers beside a MariaDB primary, each once,
        // not the primary, at most four, named in one field.
        (
            json!({"id": 3, "partition": "standard", "primary_url": new_url,
                   "replica_url": "mysql://u:pw@127.0.0.1:1/r"}),
            400,
            "invalid_change",
            "replica_urls",
        ),
        (
            json!({"id": 3, "partition": "standard", "primary_url": "mysql://u:pw@127.0.0.1:1/db",
                   "replica_urls": ["mysql://u:pw@127.0.0.1:1/db"]}),
            400,
            "invalid_change",
            "replica_urls",
        ),
        (
            json!({"id": 3, "partition": "standard", "primary_url": "mysql://u:pw@127.0.0.1:1/db",
                   "replica_urls": ["mysql://u:pw@127.0.0.1:2/r", "mysql://u:pw@127.0.0.1:2/r"]}),
            400,
            "invalid_change",
            "replica_urls",
        ),
        (
            json!({"id": 3, "partition": "standard", "primary_url": "mysql://u:pw@127.0.0.1:1/db",
                   "replica_url": "mysql://u:pw@127.0.0.1:2/r",
                   "replica_urls": ["mysql://u:pw@127.0.0.1:3/r"]}),
            400,
            "validation_failed",
            "replica_urls",
        ),
        (
            json!({"id": 3, "partition": "standard", "primary_url": "mysql://u:pw@127.0.0.1:1/db",
                   "replica_urls": (2..7).map(|p| format!("mysql://u:pw@127.0.0.1:{p}/r")).collect::<Vec<_>>()}),
            400,
            "validation_failed",
            "replica_urls",
        ),
        (
            json!({"id": 3, "partition": "standard", "primary_url": "mysql://u:pw@127.0.0.1:1/db"}),
            503,
            "unit_not_started",
            "",
        ),
    ] {
        let r = add(body.clone()).await;
        assert_eq!(r.status.as_u16(), status, "{body}: {}", r.body);
        assert_eq!(r.code(), code, "{body}: {}", r.body);
        if !field.is_empty() {
            assert_eq!(r.body["error"]["field"], field, "{body}: {}", r.body);
        }
        assert!(!r.body.to_string().contains("pw@"), "{}", r.body);
    }
    assert_eq!(app.units_status().await["version"], 1);

    // Creates flow while the unit joins; it takes creates right after.
    let stream = async {
        let mut units_seen = Vec::new();
        for i in 0..40 {
            let o = app.create("m-1", &format!("during-{i}"), "u-1", 100).await;
            units_seen.push(o["unit"].as_u64().unwrap());
        }
        units_seen
    };
    let joined =
        add(json!({"id": 3, "partition": "standard", "weight": 100, "primary_url": new_url}));
    let (_, r) = tokio::join!(stream, joined);
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["version"], 2);
    assert_eq!(r.body["unit"]["id"], 3);
    assert_eq!(r.body["unit"]["takes_creates"], true);
    let after = create_many(&app, "after-add", 40).await;
    let in_three: Vec<_> = after.iter().filter(|(_, u)| *u == 3).collect();
    assert!(
        !in_three.is_empty(),
        "40 creates never reached the new unit: {after:?}"
    );
    // Its orders are paid like any other; its sequence started fresh.
    let (id, _) = in_three[0];
    let pay = app
        .post(
            &format!("/v1/orders/{id}/pay"),
            &json!({"payment_ref": "p-3", "amount": 100}),
        )
        .await;
    assert_eq!(pay.status, StatusCode::OK, "{}", pay.body);
    // The same id again: in use now.
    let r =
        add(json!({"id": 3, "partition": "standard", "primary_url": format!("{new_url}x")})).await;
    assert_eq!(r.code(), "invalid_change", "{}", r.body);

    // A restart keeps the unit (the config does not name it) and its orders.
    app.shutdown().await;
    let app = spawn(&root, &units).await;
    let status = app.units_status().await;
    assert_eq!(status["version"], 2, "{status}");
    assert_eq!(app.unit_status(3).await["primary_url"], new_url);
    let got = app.get(&format!("/v1/orders/{id}")).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.body);
    assert_eq!(got.body["status"], "paid");
    app.shutdown().await;
}

#[actix_web::test]
async fn a_unit_moved_to_a_copy_of_its_database_keeps_it_across_a_restart() {
    let root = tempfile::tempdir().unwrap();
    let units = unit_urls(Backend::Sqlite, 2, root.path());
    let app = spawn(&root, &units).await;
    let made = create_many(&app, "before-move", 20).await;
    let (in_two, _) = made
        .iter()
        .find(|(_, u)| *u == 2)
        .expect("20 creates reach unit 2")
        .clone();

    let r = patch(&app, "2", &json!({"mode": "disabled"}), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let copy = root.path().join("unit-2-copy.db");
    let db = app.unit_db(2).await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "VACUUM INTO '{}'",
        copy.display()
    )))
    .execute(&db)
    .await
    .unwrap();
    db.close().await;
    let copy_url = format!("sqlite://{}", copy.display());

    // An empty database is no copy of the unit's: refused, nothing changes.
    let empty = format!("sqlite://{}/empty.db", root.path().display());
    let r = patch(&app, "2", &json!({"primary_url": empty}), None).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_REQUEST, "invalid_change"),
        "{}",
        r.body
    );
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not a copy"),
        "{}",
        r.body
    );

    // Nothing listens on port 1: the unit stays where it is.
    let closed = json!({"primary_url": "mysql://x@127.0.0.1:1/y"});
    let r = patch(&app, "2", &closed, None).await;
    assert_eq!(r.code(), "unit_not_started", "{}", r.body);
    let r = patch(
        &app,
        "2",
        &json!({"primary_url": copy_url, "mode": "open"}),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["unit"]["primary_url"], copy_url);
    let got = app.get(&format!("/v1/orders/{in_two}")).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.body);
    // New orders of unit 2 land in the copy.
    let after = create_many(&app, "after-move", 20).await;
    let new_in_two = after.iter().filter(|(_, u)| *u == 2).count();
    assert!(new_in_two > 0);

    app.shutdown().await;
    let app = spawn(&root, &units).await;
    assert_eq!(app.unit_status(2).await["primary_url"], copy_url);
    let got = app.get(&format!("/v1/orders/{in_two}")).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.body);
    let original = sqlx::AnyPool::connect(&units[1].1).await.unwrap();
    let copied = sqlx::AnyPool::connect(&copy_url).await.unwrap();
    let count = |db| async move { crate::helpers::count_rows(db, "orders").await };
    assert_eq!(
        count(&copied).await,
        count(&original).await + new_in_two as i64,
        "unit 2's new orders are in the copy only"
    );
    app.shutdown().await;
}
