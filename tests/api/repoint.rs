//! A unit moved to another database server while creates and pays flow:
//! the operator disables it, copies its database to a second MariaDB
//! server, and repoints it there (`PATCH /admin/units/{id}` with
//! `primary_url` and `mode: open`). Callers that retry `503`s see every
//! call through, no order is lost or made twice, the unit's sequence
//! continues past every copied order, and its old orders are read from the
//! new server.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::Row;

use crate::helpers::{order_body, settings_for, spawn_app_with};
use crate::mariadb::{MariaDb, copy_database, shared, unique_db};

const CALLERS: usize = 4;
const UNIT: u16 = 2;

/// Acknowledged creates (key -> order id) and pays (order ids).
#[derive(Default)]
pub struct Ledger {
    pub created: BTreeMap<String, String>,
    pub paid: BTreeSet<String>,
    pub retried: u64,
}

impl Ledger {
    /// The ledger once its callers are done, its totals printed under `what`.
    pub fn take(ledger: &Mutex<Ledger>, what: &str) -> Ledger {
        let ledger = std::mem::take(&mut *ledger.lock().unwrap());
        println!(
            "{what}: {} creates, {} pays acknowledged, {} calls retried",
            ledger.created.len(),
            ledger.paid.len(),
            ledger.retried
        );
        ledger
    }

    /// Every acknowledged create is stored once, with the id it was
    /// answered, and paid when its pay was acknowledged.
    pub fn check(&self, stored: &Stored) {
        for (key, id) in &self.created {
            let found = stored.get(key).map(Vec::as_slice).unwrap_or_default();
            assert_eq!(found.len(), 1, "key {key} ({id}): {found:?}");
            let (unit, seq, status) = &found[0];
            assert_eq!(id[1..5].parse::<u16>().unwrap(), *unit, "{key}");
            assert_eq!(id[17..27].parse::<i64>().unwrap(), *seq, "{key}");
            if self.paid.contains(id) {
                assert_eq!(status, "paid", "{key} was paid, and the pay acknowledged");
            }
        }
    }
}

/// Every order of some units' databases: key -> `(unit, seq, status)`.
pub type Stored = BTreeMap<String, Vec<(u16, i64, String)>>;

/// The orders in the databases of `units` (`(unit, url)`).
pub async fn stored_in(units: &[(u16, &str)]) -> Stored {
    let mut stored = Stored::new();
    for (unit, url) in units {
        for (key, seq, status) in orders_at(url).await {
            stored.entry(key).or_default().push((*unit, seq, status));
        }
    }
    stored
}

/// `POST path` with `body`, retried on 503 and transport errors for up to
/// 30 s (as a caller of a payment flow does); the final answer.
async fn call(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    body: &Value,
    ledger: &Mutex<Ledger>,
) -> (StatusCode, Value) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let sent = client
            .post(format!("{base}{path}"))
            .json(body)
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        match sent {
            Ok(r) if r.status() != StatusCode::SERVICE_UNAVAILABLE => {
                let status = r.status();
                return (status, r.json().await.unwrap_or(Value::Null));
            }
            _ if Instant::now() < deadline => {
                ledger.lock().unwrap().retried += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(r) => return (r.status(), r.json().await.unwrap_or(Value::Null)),
            Err(e) => panic!("{path}: {e}"),
        }
    }
}

/// Creates orders through the engine at `base` and pays earlier ones
/// (picked across everything it made, so that pays reach the moving unit
/// while it is disabled and after).
pub async fn caller(
    base: String,
    c: usize,
    tag: &'static str,
    until: Instant,
    ledger: Arc<Mutex<Ledger>>,
) {
    let client = reqwest::Client::new();
    let mut unpaid = Vec::new();
    let mut i = 0;
    while Instant::now() < until && i < 5_000 {
        let key = format!("{tag}-{c}-{i}");
        i += 1;
        let body = order_body("m-1", &key, "u-1", 100);
        let (status, order) = call(&client, &base, "/v1/orders", &body, &ledger).await;
        // 200: a retry found the order its first, unanswered try created.
        assert!(
            matches!(status, StatusCode::CREATED | StatusCode::OK),
            "create {key}: {status} {order}"
        );
        let id = order["order_id"].as_str().unwrap().to_owned();
        ledger.lock().unwrap().created.insert(key, id.clone());
        unpaid.push(id);
        if i % 2 == 0 {
            let id = unpaid.swap_remove(i * 7_919 % unpaid.len());
            let pay = json!({"payment_ref": format!("p-{id}"), "amount": 100});
            let path = format!("/v1/orders/{id}/pay");
            let (status, body) = call(&client, &base, &path, &pay, &ledger).await;
            assert_eq!(status, StatusCode::OK, "pay {id}: {body}");
            ledger.lock().unwrap().paid.insert(id);
        }
    }
}

/// `(out_trade_no, seq, status)` of every order in the database at `url`.
pub async fn orders_at(url: &str) -> Vec<(String, i64, String)> {
    let pool = sqlx::MySqlPool::connect(url).await.unwrap();
    let rows = sqlx::query("SELECT out_trade_no, seq, status FROM orders")
        .fetch_all(&pool)
        .await
        .unwrap();
    pool.close().await;
    rows.iter()
        .map(|r| (r.get("out_trade_no"), r.get("seq"), r.get("status")))
        .collect()
}

#[actix_web::test]
async fn a_unit_moves_to_a_copy_of_its_database_under_load() {
    let (old_server, new_server) = (MariaDb::start(), MariaDb::start());
    let db = unique_db("moving");
    let (old_url, new_url) = (old_server.url(&db), new_server.url(&db));
    let units = vec![
        (1, shared().url(&unique_db("rp1"))),
        (UNIT, old_url.clone()),
        (3, shared().url(&unique_db("rp3"))),
    ];
    let mut settings = settings_for(&units, "");
    settings.server.request_timeout_ms = 2_000;
    settings.storage.statement_timeout_ms = 1_000;
    let dir = tempfile::tempdir().unwrap();
    // A move is kept, or a restart would go back to the old database.
    settings.admin.state_file = Some(dir.path().join("routing.json").display().to_string());
    let app = Arc::new(spawn_app_with(settings, dir).await);
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let until = Instant::now() + Duration::from_secs(8);
    let callers: Vec<_> = (0..CALLERS)
        .map(|c| actix_web::rt::spawn(caller(app.base.clone(), c, "rp", until, ledger.clone())))
        .collect();

    // Orders flow into every unit first.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let send = |body: Value| {
        let app = app.clone();
        async move {
            app.admin_send(Method::PATCH, &format!("/admin/units/{UNIT}"), &body, None)
                .await
        }
    };
    let r = send(json!({"mode": "disabled"})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // Once the unit's database takes no more writes, the copy.
    let deadline = Instant::now() + Duration::from_secs(20);
    while app.unit_status(UNIT).await["writes_fenced"] != true {
        assert!(Instant::now() < deadline, "unit {UNIT} never fenced");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    copy_database(old_server.port(), &db, new_server.port(), &db);
    let copied = orders_at(&new_url).await;
    let max_copied = copied.iter().map(|o| o.1).max().expect("unit 2 had orders");
    // A database that is not a copy of the unit's is refused.
    let r = send(json!({"primary_url": shared().url(&unique_db("empty"))})).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_REQUEST, "invalid_change"),
        "{}",
        r.body
    );
    assert_eq!(r.body["error"]["field"], "primary_url");
    let said = r.body["error"]["message"].as_str().unwrap();
    assert!(said.contains("not a copy"), "{said}");
    let r = send(json!({"primary_url": units[0].1})).await;
    assert_eq!(
        r.code(),
        "invalid_change",
        "another unit's database: {}",
        r.body
    );
    // Repointed and open again, in one change.
    let r = send(json!({"primary_url": new_url, "mode": "open"})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["unit"]["mode"], "open");
    let shown = r.body["unit"]["primary_url"].as_str().unwrap();
    assert!(
        shown.ends_with(&format!(":{}/{db}", new_server.port())),
        "{shown}"
    );
    for c in callers {
        c.await.unwrap();
    }
    // The old database took no write once the disabled unit's calls in
    // flight had their time: the copy holds everything.
    assert_eq!(orders_at(&old_url).await.len(), copied.len());

    let ledger = Ledger::take(&ledger, "repoint under load");
    // Every database as it is now (unit 2: the new server).
    let stored = stored_in(&[(1, &units[0].1), (UNIT, &new_url), (3, &units[2].1)]).await;
    ledger.check(&stored);
    let mut moved_after = 0;
    for key in ledger.created.keys() {
        let (unit, seq, _) = &stored[key][0];
        if *unit == UNIT && !copied.iter().any(|c| &c.0 == key) {
            // Made on the new server: its sequence went on past the copy.
            assert!(*seq > max_copied, "{key}: seq {seq} <= {max_copied}");
            moved_after += 1;
        }
    }
    assert!(moved_after > 0, "no create reached unit 2 after it moved");
    assert!(ledger.retried > 0, "no call met the disabled unit");
    assert_eq!(
        stored.len(),
        ledger.created.len(),
        "orders nobody asked for"
    );
    // Its old orders are read from the new server.
    let (key, _, _) = &copied[0];
    let id = &ledger.created[key];
    let got = app.get(&format!("/v1/orders/{id}")).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.body);
    drop(old_server);
    let got = app.get(&format!("/v1/orders/{id}")).await;
    assert_eq!(
        got.status,
        StatusCode::OK,
        "the old server is gone: {}",
        got.body
    );
}
