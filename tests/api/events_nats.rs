//! The relay on NATS JetStream under faults: four units, two engine
//! processes, callers creating, paying, refunding and updating sections
//! through either while the broker is killed and restarted and then an
//! engine process is killed and restarted. Read back through `order-engine
//! events tail --nats-url`, de-duplicated by `event_id`: every version of
//! every order in the databases arrives, each order's in version order, and
//! the diffs rebuild each order as the API shows it. While the broker is
//! down, creates go on and the backlog is measured.

use std::collections::{HashMap, HashSet};
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use sqlx::Row;

use crate::events::rebuild;
use crate::helpers::order_body;
use crate::mariadb::{die_with_parent, shared, unique_db};
use crate::nats::Nats;
use crate::process::Engine;
use order_engine::relay::NatsSink;
use order_engine::storage::OutboxEvent;

/// A caller's requests, sent to one process and, if it cannot answer, the
/// other. The answer's status, or `None` if neither answered.
async fn call(
    client: &reqwest::Client,
    ports: &[u16; 2],
    first: usize,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Option<(u16, Value)> {
    for port in [ports[first % 2], ports[(first + 1) % 2]] {
        let mut req = client
            .request(method.clone(), format!("http://127.0.0.1:{port}{path}"))
            .timeout(Duration::from_secs(5));
        if let Some(b) = &body {
            req = req.json(b);
        }
        if let Ok(r) = req.send().await {
            let status = r.status().as_u16();
            let body = r.json().await.unwrap_or(Value::Null);
            if status < 500 {
                return Some((status, body));
            }
        }
    }
    None
}

/// One order's life: created (retried with its key until acknowledged,
/// within 30 s), a section set, then paid and refunded, or the section
/// removed. Answers the acknowledged order id.
async fn lifecycle(
    client: &reqwest::Client,
    ports: &[u16; 2],
    key: &str,
    i: usize,
) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = order_body("m-ev", key, "u-ev", 100);
    let id = loop {
        match call(
            client,
            ports,
            i,
            Method::POST,
            "/v1/orders",
            Some(body.clone()),
        )
        .await
        {
            Some((200 | 201, o)) => break o["order_id"].as_str().unwrap().to_owned(),
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            other => panic!("{key} never created: {other:?}"),
        }
    };
    let section = format!("/v1/orders/{id}/sections/shipping");
    let city = Some(json!({"city": "Guangzhou"}));
    call(client, ports, i + 1, Method::PUT, &section, city).await;
    if i.is_multiple_of(2) {
        let pay = json!({"payment_ref": format!("p-{key}"), "amount": 100});
        call(
            client,
            ports,
            i,
            Method::POST,
            &format!("/v1/orders/{id}/pay"),
            Some(pay),
        )
        .await;
        let refund = json!({"refund_id": "r.1", "amount": 30});
        let path = format!("/v1/orders/{id}/refunds");
        call(client, ports, i + 1, Method::POST, &path, Some(refund)).await;
    } else {
        call(client, ports, i, Method::DELETE, &section, None).await;
    }
    Some(id)
}

/// Callers running lifecycles until told to stop (each at most 400).
struct Load {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(ports: [u16; 2], callers: usize) -> Self {
        let (stop, done) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicUsize::new(0)),
        );
        let tasks = (0..callers)
            .map(|c| {
                let (stop, done) = (stop.clone(), done.clone());
                tokio::spawn(async move {
                    let client = reqwest::Client::new();
                    let mut ids = Vec::new();
                    for i in 0..400 {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let key = format!("c{c}-{i}");
                        ids.extend(lifecycle(&client, &ports, &key, c + i).await);
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    ids
                })
            })
            .collect();
        Self { stop, done, tasks }
    }

    fn done(&self) -> usize {
        self.done.load(Ordering::Relaxed)
    }

    async fn stop(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        let mut ids = Vec::new();
        for t in self.tasks {
            ids.extend(t.await.unwrap());
        }
        ids
    }
}

/// Every value of metric `name` (any labels) in a process's /metrics.
async fn metric_values(client: &reqwest::Client, port: u16, name: &str) -> Vec<f64> {
    let Ok(r) = client
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
    else {
        return vec![];
    };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect()
}

/// `(order_id, version)` of every order of the unit databases, by key.
async fn stored_versions(urls: &[String]) -> HashMap<String, i64> {
    let mut all = HashMap::new();
    for url in urls {
        let pool = sqlx::MySqlPool::connect(url).await.unwrap();
        let rows = sqlx::query("SELECT out_trade_no, version FROM orders")
            .fetch_all(&pool)
            .await
            .unwrap();
        for r in rows {
            all.insert(r.get::<String, _>(0), r.get::<i64, _>(1));
        }
        pool.close().await;
    }
    all
}

/// Waits (at most 60 s) until no unit has an unpublished outbox record.
async fn drained(urls: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    for url in urls {
        let pool = sqlx::MySqlPool::connect(url).await.unwrap();
        loop {
            let left: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE published_at_ms IS NULL")
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            if left == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{left} events never published from {url}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        pool.close().await;
    }
}

/// The stream read through `order-engine events tail --from-start`, until
/// it has `distinct` event ids and then nothing more for a second (at most
/// 60 s).
fn tail_stream(nats_url: &str, distinct: usize) -> Vec<Value> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_order-engine"));
    cmd.args(["events", "tail", "--from-start", "--nats-url", nats_url])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    die_with_parent(&mut cmd);
    let mut child = cmd.spawn().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let (mut events, mut ids) = (Vec::new(), HashSet::new());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let wait = if ids.len() >= distinct {
            Duration::from_secs(1)
        } else {
            Duration::from_millis(200)
        };
        match rx.recv_timeout(wait) {
            Ok(line) => {
                let e: Value = serde_json::from_str(&line).unwrap();
                ids.insert(e["event_id"].as_str().unwrap().to_owned());
                events.push(e);
            }
            Err(_) if ids.len() >= distinct => break,
            Err(_) => assert!(
                Instant::now() < deadline,
                "the stream has {} of {distinct} events",
                ids.len()
            ),
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_change_reaches_the_stream_once_in_order_through_broker_and_engine_restarts() {
    let mut nats = Nats::start();
    let server = shared();
    let urls: Vec<String> = (1..=4)
        .map(|u| server.url(&unique_db(&format!("evn{u}"))))
        .collect();
    let units: String = urls
        .iter()
        .enumerate()
        .map(|(i, url)| format!("[[units]]\nid = {}\nprimary_url = \"{url}\"\n", i + 1))
        .collect();
    let events = format!(
        "relay = true\npoll_ms = 50\nlease_ms = 1000\nnats_url = \"{}\"\n",
        nats.url()
    );
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let mut a = Engine::with_events(dir.path(), "a", "", &events, &units);
    a.ready(&client).await;
    let mut b = Engine::with_events(dir.path(), "b", "", &events, &units);
    b.ready(&client).await;
    let ports = [a.port, b.port];
    let load = Load::start(ports, 6);
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The broker dies: creates go on, the backlog is measured.
    nats.kill();
    let before = load.done();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(load.done() > before + 10, "orders stopped with the broker");
    let mut oldest = vec![];
    let mut errors = 0.0;
    for port in ports {
        oldest.extend(
            metric_values(
                &client,
                port,
                "orderengine_outbox_oldest_unpublished_seconds",
            )
            .await,
        );
        errors += metric_values(&client, port, "orderengine_relay_errors_total")
            .await
            .iter()
            .sum::<f64>();
    }
    assert!(
        oldest.iter().any(|s| *s >= 1.0),
        "backlog age not measured: {oldest:?}"
    );
    assert!(errors > 0.0, "relay errors not counted");
    nats.restart();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // An engine process dies mid-stream and comes back.
    a.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    a.start();
    a.ready(&client).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let acknowledged = load.stop().await;
    assert!(acknowledged.len() > 50, "{} orders", acknowledged.len());

    drained(&urls).await;
    let versions = stored_versions(&urls).await;
    let expected: i64 = versions.values().sum();
    let events = tail_stream(&nats.url(), expected as usize);

    // De-duplicated by event id: each order's events in version order.
    let orders = rebuild(&events);
    let seen: HashSet<&str> = events
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        seen.len() as i64,
        expected,
        "one event per version of every order"
    );
    let by_key: HashMap<&str, &Value> = orders
        .values()
        .map(|o| (o["out_trade_no"].as_str().unwrap(), o))
        .collect();
    for (key, version) in &versions {
        let rebuilt = by_key
            .get(key.as_str())
            .unwrap_or_else(|| panic!("{key}: no events"));
        assert_eq!(rebuilt["version"], *version, "{key}: {rebuilt}");
    }
    for id in &acknowledged {
        let state = orders
            .get(id)
            .unwrap_or_else(|| panic!("{id} acknowledged, no events"));
        let api: Value = client
            .get(format!("http://127.0.0.1:{}/v1/orders/{id}", b.port))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for field in [
            "status",
            "version",
            "paid_amount",
            "refunded_amount",
            "payment_ref",
            "updated_at",
            "sections",
        ] {
            assert_eq!(state[field], api[field], "{id} {field}: {state} vs {api}");
        }
    }
    eprintln!(
        "{} orders acknowledged, {} events ({} delivered, duplicates included)",
        acknowledged.len(),
        expected,
        events.len()
    );
}

/// The sink creates a missing stream, puts each event on
/// `<prefix>.<unit>.<type>` with its event id as `Nats-Msg-Id`, and the
/// stream drops events published again (a relay that died between the
/// broker's ack and marking them published).
#[tokio::test]
async fn the_stream_is_created_and_drops_republished_events() {
    let nats = Nats::start();
    let sink = NatsSink::new(&nats.url(), "T1", "shop.orders");
    let event = |order: &str, version: u32, event_type: &str| OutboxEvent {
        record_id: 1,
        event_id: format!("{order}.{version}"),
        order_id: order.into(),
        event_type: event_type.into(),
        json: json!({"event_id": format!("{order}.{version}")}).to_string(),
    };
    let batch = [
        event("o1", 1, "order.created"),
        event("o2", 1, "order.created"),
        event("o1", 2, "order.paid"),
    ];
    sink.publish(3, &batch).await.unwrap();
    sink.publish(3, &batch[1..]).await.unwrap();
    sink.publish(3, &[event("o2", 2, "order.closed")])
        .await
        .unwrap();

    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("T1").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 4);
    let mut got = Vec::new();
    for seq in 1..=4 {
        let m = stream.get_raw_message(seq).await.unwrap();
        let id = m.headers.get("Nats-Msg-Id").unwrap().to_string();
        got.push(format!("{} {id}", m.subject));
    }
    assert_eq!(
        got,
        [
            "shop.orders.3.order.created o1.1",
            "shop.orders.3.order.created o2.1",
            "shop.orders.3.order.paid o1.2",
            "shop.orders.3.order.closed o2.2",
        ]
    );
}

/// A batch with more events than the client keeps acks pending for (its
/// default was 5,000: a wave past it hung the relay for good), from two
/// units at once, reaches the stream whole.
#[tokio::test]
async fn a_batch_past_the_clients_ack_window_is_published() {
    const EVENTS: usize = 12_000;
    let nats = Nats::start();
    let sink = NatsSink::new(&nats.url(), "T2", "big");
    let batch = |unit: u16| -> Vec<OutboxEvent> {
        (0..EVENTS)
            .map(|i| OutboxEvent {
                record_id: 1 + i as i64 / 50,
                event_id: format!("{unit}-{i}.1"),
                order_id: format!("{unit}-{i}"),
                event_type: "order.created".into(),
                json: json!({"event_id": format!("{unit}-{i}.1")}).to_string(),
            })
            .collect()
    };
    let (a, b) = (batch(1), batch(2));
    let both = async { tokio::join!(sink.publish(1, &a), sink.publish(2, &b)) };
    let (a, b) = tokio::time::timeout(Duration::from_secs(60), both)
        .await
        .expect("publishing hung");
    a.unwrap();
    b.unwrap();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("T2").await.unwrap();
    assert_eq!(
        stream.info().await.unwrap().state.messages,
        2 * EVENTS as u64
    );
}

/// A section rewritten throughout (30,000 elements, a 60 KB body) is
/// published as one change of the whole section. Element by element its
/// event would be ~1.4 MB, over the broker's 1 MB message limit: the
/// unit's relay retried it for good, holding back every later event.
#[tokio::test]
async fn a_section_rewritten_throughout_is_published() {
    let nats = Nats::start();
    let url = shared().url(&unique_db("evbig"));
    let units = format!("[[units]]\nid = 1\nprimary_url = \"{url}\"\n");
    let events = format!(
        "relay = true\npoll_ms = 50\nnats_url = \"{}\"\n",
        nats.url()
    );
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let mut engine = Engine::with_events(dir.path(), "a", "", &events, &units);
    engine.ready(&client).await;
    let base = format!("http://127.0.0.1:{}/v1/orders", engine.port);

    let mut body = order_body("m-big", "k-1", "u-big", 100);
    body["sections"] = json!({"a": vec![0; 30_000]});
    let r = client.post(&base).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.unwrap()["order_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let section = format!("{base}/{id}/sections/a");
    let r = client.put(&section).json(&vec![1; 30_000]).send().await;
    assert_eq!(r.unwrap().status(), 200);

    drained(std::slice::from_ref(&url)).await;
    let events = tail_stream(&nats.url(), 2);
    let changed = events
        .iter()
        .find(|e| e["type"] == "order.sections_changed")
        .expect("the section's event");
    let paths: Vec<&str> = changed["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["path"].as_str().unwrap())
        .collect();
    assert!(paths.contains(&"sections.a"), "{paths:?}");
    let rebuilt = rebuild(&events);
    assert_eq!(rebuilt[&id]["sections"]["a"], json!(vec![1; 30_000]));
}
