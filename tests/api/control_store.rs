//! Two real engine processes sharing the routing table through a control
//! store on its own MariaDB server: a change through one governs creates
//! through the other within a second, concurrent conditional changes never
//! both win, a unit added (or moved to another database) through one takes
//! creates through the other, and
//! with the store's server killed both keep serving (and say so) until it
//! is back.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::mariadb::{MariaDb, copy_database, shared, unique_db};
use crate::process::Engine;
use crate::repoint::orders_at;

/// Waits (at most `within`) until `engine`'s table is at `version`; how
/// long that took.
async fn until_version(
    engine: &Engine,
    client: &reqwest::Client,
    version: u64,
    within: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        let units = engine.units(client).await;
        if units["version"].as_u64() >= Some(version) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "still at version {} after {within:?}, wanted {version}: {units}",
            units["version"]
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn unit_of(units: &Value, id: u64) -> &Value {
    units["units"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["id"] == id)
        .unwrap_or(&Value::Null)
}

#[actix_web::test]
async fn two_processes_share_the_routing_table_through_the_control_store() {
    let dir = tempfile::tempdir().unwrap();
    let mut control = MariaDb::start(); // durable: SIGKILL loses nothing committed
    let shared_table = format!("control_url = \"{}\"", control.url(&unique_db("control")));
    let units_server = shared();
    let dbs: Vec<String> = (1..=4).map(|u| unique_db(&format!("cs_unit{u}"))).collect();
    let url = |u: usize| units_server.url(&dbs[u - 1]);
    let units: String = (1..=3)
        .map(|u| format!("[[units]]\nid = {u}\nprimary_url = \"{}\"\n", url(u)))
        .collect();
    let client = reqwest::Client::new();
    let mut a = Engine::new(dir.path(), "a", &shared_table, &units);
    a.ready(&client).await;
    let mut b = Engine::new(dir.path(), "b", &shared_table, &units);
    b.ready(&client).await;
    // Seeded once from the config, then shared.
    assert_eq!(a.units(&client).await["version"], 1);
    assert_eq!(b.units(&client).await["version"], 1);
    assert_eq!(
        b.units(&client).await["table_store"]["kind"],
        "control_store"
    );

    // A change through A governs creates through B within a second.
    let (status, body) = a
        .admin(
            &client,
            Method::PATCH,
            "/admin/units/2",
            Some(json!({"mode": "read_only"})),
            Some(1),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["version"], 2);
    let took = until_version(&b, &client, 2, Duration::from_secs(1)).await;
    assert_eq!(unit_of(&b.units(&client).await, 2)["mode"], "read_only");
    for i in 0..30 {
        let unit = b.create(&client, &format!("after-ro-{i}")).await;
        assert_ne!(unit, 2, "a create through B reached the read-only unit");
    }
    println!("B took the change in {took:?}");

    // Two conditional changes at the same version, one through each
    // process, at once: exactly one wins, the other is told 412.
    for round in 0..5u64 {
        let version = 2 + round;
        let weight = |w: u64| Some(json!({ "weight": w }));
        let (ra, rb) = tokio::join!(
            a.admin(
                &client,
                Method::PATCH,
                "/admin/units/1",
                weight(10 + round),
                Some(version)
            ),
            b.admin(
                &client,
                Method::PATCH,
                "/admin/units/3",
                weight(20 + round),
                Some(version)
            ),
        );
        let mut statuses = [ra.0, rb.0];
        statuses.sort();
        assert_eq!(
            statuses,
            [StatusCode::OK, StatusCode::PRECONDITION_FAILED],
            "round {round}: {ra:?} {rb:?}"
        );
        let loser = if ra.0 == StatusCode::OK { &rb.1 } else { &ra.1 };
        assert_eq!(loser["error"]["code"], "version_mismatch", "{loser}");
        until_version(&a, &client, version + 1, Duration::from_secs(1)).await;
        until_version(&b, &client, version + 1, Duration::from_secs(1)).await;
    }
    // Without If-Match, a change built on a table the other process moved
    // on is rebuilt on the newer one: both apply.
    let (ra, rb) = tokio::join!(
        a.admin(
            &client,
            Method::PATCH,
            "/admin/units/1",
            Some(json!({"weight": 50})),
            None
        ),
        b.admin(
            &client,
            Method::PATCH,
            "/admin/units/3",
            Some(json!({"weight": 50})),
            None
        ),
    );
    assert_eq!(
        (ra.0, rb.0),
        (StatusCode::OK, StatusCode::OK),
        "{ra:?} {rb:?}"
    );
    let version = 9;
    until_version(&a, &client, version, Duration::from_secs(1)).await;
    until_version(&b, &client, version, Duration::from_secs(1)).await;
    for e in [&a, &b] {
        let units = e.units(&client).await;
        assert_eq!(units["version"], version, "{units}");
        for u in [1, 3] {
            assert_eq!(unit_of(&units, u)["weight"], 50, "{units}");
        }
    }

    // A unit added through B takes creates through A at once.
    let (status, body) = b
        .admin(
            &client,
            Method::POST,
            "/admin/units",
            Some(json!({"id": 4, "partition": "standard", "weight": 100, "primary_url": url(4)})),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let version = body["version"].as_u64().unwrap();
    until_version(&a, &client, version, Duration::from_secs(1)).await;
    let mut reached = false;
    for i in 0..60 {
        if a.create(&client, &format!("after-add-{i}")).await == 4 {
            reached = true;
            break;
        }
    }
    assert!(reached, "60 creates through A never reached the added unit");
    assert!(
        !unit_of(&a.units(&client).await, 4)["key_home"]
            .as_bool()
            .unwrap()
    );

    // Unit 4 moved to a copy of its database through B: A follows within a
    // second, and its creates for unit 4 land in the copy.
    let (status, body) = b
        .admin(
            &client,
            Method::PATCH,
            "/admin/units/4",
            Some(json!({"mode": "disabled"})),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Both processes took the disable in, and their writes to it are over.
    let deadline = Instant::now() + Duration::from_secs(20);
    for e in [&a, &b] {
        while unit_of(&e.units(&client).await, 4)["writes_fenced"] != true {
            assert!(Instant::now() < deadline, "unit 4 never fenced");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let copy = unique_db("cs_unit4_copy");
    copy_database(units_server.port(), &dbs[3], units_server.port(), &copy);
    let before = orders_at(&units_server.url(&copy)).await.len();
    let moved = json!({"mode": "open", "primary_url": units_server.url(&copy)});
    let (status, body) = b
        .admin(&client, Method::PATCH, "/admin/units/4", Some(moved), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let version = body["version"].as_u64().unwrap();
    until_version(&a, &client, version, Duration::from_secs(1)).await;
    let shown = unit_of(&a.units(&client).await, 4)["primary_url"].clone();
    assert!(shown.as_str().unwrap().ends_with(&copy), "{shown}");
    let mut in_four = 0;
    for i in 0..60 {
        if a.create(&client, &format!("after-move-{i}")).await == 4 {
            in_four += 1;
        }
    }
    assert!(in_four > 0, "60 creates through A never reached unit 4");
    assert_eq!(
        orders_at(&units_server.url(&copy)).await.len(),
        before + in_four
    );

    // The control store's server dies: both keep serving with their table,
    // say so, and refuse changes; when it is back, changes flow again.
    control.kill();
    for e in [&a, &b] {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let units = e.units(&client).await;
            if units["table_store"]["reachable"] == false {
                assert!(units["table_store"]["error"].is_string(), "{units}");
                break;
            }
            assert!(Instant::now() < deadline, "never noticed: {units}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(e.metric(&client, "orderengine_routing_store_up").await, 0.0);
        for i in 0..10 {
            e.create(&client, &format!("store-down-{}-{i}", e.port))
                .await;
        }
    }
    let (status, body) = a
        .admin(
            &client,
            Method::PATCH,
            "/admin/units/2",
            Some(json!({"mode": "open"})),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "table_not_saved", "{body}");
    assert_eq!(unit_of(&a.units(&client).await, 2)["mode"], "read_only");

    control.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    let (status, body) = loop {
        let r = a
            .admin(
                &client,
                Method::PATCH,
                "/admin/units/2",
                Some(json!({"mode": "open"})),
                None,
            )
            .await;
        if r.0 != StatusCode::SERVICE_UNAVAILABLE || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(status, StatusCode::OK, "{body}");
    let version = body["version"].as_u64().unwrap();
    until_version(&b, &client, version, Duration::from_secs(2)).await;
    assert_eq!(unit_of(&b.units(&client).await, 2)["mode"], "open");
    assert_eq!(b.units(&client).await["table_store"]["reachable"], true);

    // A process restarted takes the table from the store, added unit and all.
    b.kill();
    b.start();
    b.ready(&client).await;
    let units = b.units(&client).await;
    assert_eq!(units["version"].as_u64(), Some(version), "{units}");
    assert_eq!(unit_of(&units, 4)["weight"], 100, "{units}");
    // Every order created along the way is readable through either process.
    for e in [&a, &b] {
        let r = client
            .get(format!(
                "http://127.0.0.1:{}/v1/merchants/m-1/orders/after-add-0",
                e.port
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
}

/// A change whose `COMMIT` reached the store but whose answer was cut is
/// settled before the caller is answered: read back under a lock, it was
/// made. (It was answered "may have been applied: repeat the call", and a
/// failover repeated that way failed over the unit's new primary.)
#[tokio::test]
async fn a_change_whose_commit_went_unanswered_is_settled() {
    use crate::proxy::{Mode, Proxy};
    use order_engine::storage::{ControlStore, Swapped};

    let server = shared();
    let proxy = Proxy::start(server.port()).await;
    let db = unique_db("cs_doubt");
    let url = format!("mysql://root@127.0.0.1:{}/{db}", proxy.port);
    let store = ControlStore::open(&url).await.unwrap();
    assert!(store.seed(1, r#"{"v":1}"#, "test").await.unwrap());

    proxy.set(Mode::CutAfterCommit);
    let heal = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(proxy.mode(), Mode::Refuse, "the commit was cut");
        proxy.set(Mode::Pass);
    };
    let (swapped, ()) = tokio::join!(store.swap(1, r#"{"v":2}"#, "test", "v 2"), heal);
    assert_eq!(swapped.unwrap(), Swapped::Done);
    let (version, body) = store.load().await.unwrap().unwrap();
    assert_eq!((version, body.as_str()), (2, r#"{"v":2}"#));
    // A change built on the old version is refused as before.
    let stale = store.swap(1, r#"{"v":3}"#, "test", "v 3").await.unwrap();
    assert_eq!(stale, Swapped::Moved);
    store.close().await;
}

/// A control store emptied under a running process (its table row
/// deleted) is reported like an unreachable one: `table_store.reachable`
/// false with the reason, `orderengine_routing_store_up` 0, and changes
/// refused with `503 table_not_saved` saying why. Creates go on by the
/// process's table. (It was taken for "nothing newer": the store looked
/// up while every change failed with "the table kept changing".)
#[tokio::test]
async fn an_emptied_control_store_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let server = shared();
    let control_db = unique_db("cs_empty");
    let admin = format!(
        "control_url = \"{}\"\ncontrol_poll_ms = 100",
        server.url(&control_db)
    );
    let units = format!(
        "[[units]]\nid = 1\nprimary_url = \"{}\"\n",
        server.url(&unique_db("cs_empty_u1"))
    );
    let client = reqwest::Client::new();
    let mut e = Engine::new(dir.path(), "e", &admin, &units);
    e.ready(&client).await;
    assert_eq!(e.units(&client).await["table_store"]["reachable"], true);

    let pool = sqlx::MySqlPool::connect(&server.url(&control_db))
        .await
        .unwrap();
    sqlx::query("DELETE FROM routing_table")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let units = loop {
        let units = e.units(&client).await;
        if units["table_store"]["reachable"] == false {
            break units;
        }
        assert!(Instant::now() < deadline, "never noticed: {units}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let error = units["table_store"]["error"].as_str().unwrap();
    assert!(error.contains("no routing table"), "{units}");
    assert_eq!(e.metric(&client, "orderengine_routing_store_up").await, 0.0);
    let (status, body) = e
        .admin(
            &client,
            Method::PATCH,
            "/admin/units/1",
            Some(json!({"weight": 50})),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "table_not_saved", "{body}");
    let said = body["error"]["message"].as_str().unwrap();
    assert!(said.contains("no routing table"), "{body}");
    e.create(&client, "after-empty").await;
}
