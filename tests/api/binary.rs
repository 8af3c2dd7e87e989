//! The `order-engine` binary as an operator runs it: `--config`, a clear exit
//! on bad config, and a graceful stop on SIGTERM.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::helpers::order_body;
use crate::mariadb::free_port;

fn engine() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_order-engine"));
    cmd.env_remove("RUST_LOG").stdin(Stdio::null());
    cmd
}

#[test]
fn bad_config_stops_start_up_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[[units]]\nid = 1\nprimary_url = \"sqlite://a.db\"\n[[units]]\nid = 1\nprimary_url = \"sqlite://b.db\"\n",
            "duplicate unit id 1",
        ),
        (
            "[[units]]\nid = 1\nprimary_url = \"mysql//nope\"\n",
            "malformed database URL",
        ),
        (
            "[[units]]\nid = 1\nprimary_url = \"sqlite://a.db\"\ncolour = 1\n",
            "unknown field `colour`",
        ),
    ];
    for (toml, expected) in cases {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, toml).unwrap();
        let out = engine().arg("--config").arg(&path).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{toml}");
        assert!(
            stderr.contains(expected),
            "expected {expected:?} in: {stderr}"
        );
    }
    let out = engine()
        .args(["--config", "/no/such/file.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/file.toml"));
}

#[actix_web::test]
async fn serves_the_default_layout_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // The shipped default config, with its data directory and port moved by
    // environment overrides, as an operator would.
    let mut child = engine()
        .current_dir(dir.path())
        .arg("--config")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/config/default.toml"))
        .env("ORDERENGINE__SERVER__PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.get(format!("{base}/readyz")).send().await.is_err() {
        assert!(Instant::now() < deadline, "engine did not start");
        assert!(child.try_wait().unwrap().is_none(), "engine exited early");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ready: serde_json::Value = client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (
            &ready["partitions"][0]["units"],
            &ready["partitions"][0]["taking_creates"]
        ),
        (&serde_json::json!(4), &serde_json::json!(4)),
        "{ready}"
    );
    let r = client
        .post(format!("{base}/v1/orders"))
        .json(&order_body("m-1", "bin-1", "u-1", 10))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    // The default layout: one SQLite file per unit under ./data.
    for unit in 1..=4 {
        assert!(
            dir.path().join(format!("data/unit-{unit:04}.db")).is_file(),
            "unit {unit}"
        );
    }
    // Its events, as `order-engine events tail` prints them: the create,
    // and a pay and a section update with their diffs.
    let id: serde_json::Value = r.json().await.unwrap();
    let id = id["order_id"].as_str().unwrap().to_owned();
    let pay = serde_json::json!({"payment_ref": "p-bin", "amount": 10});
    let r = client
        .post(format!("{base}/v1/orders/{id}/pay"))
        .json(&pay)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = client
        .put(format!("{base}/v1/orders/{id}/sections/gift"))
        .body("{\"wrap\": true}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let events = tail_events(dir.path(), 3);
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        ["order.created", "order.paid", "order.sections_changed"]
    );
    assert_eq!(events[0]["order"]["order_id"], id.as_str());
    let change = &events[2]["changes"][0];
    assert_eq!(
        (&change["path"], &change["new"]),
        (
            &serde_json::json!("sections.gift"),
            &serde_json::json!({"wrap": true})
        )
    );

    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "engine did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
}

/// The first `n` events `order-engine events tail --from-start` prints in
/// `dir` (with the default config), within 20 s.
fn tail_events(dir: &std::path::Path, n: usize) -> Vec<serde_json::Value> {
    use std::io::BufRead;
    let mut child = engine()
        .current_dir(dir)
        .args([
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/default.toml"),
        ])
        .args(["events", "tail", "--from-start"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut events = Vec::new();
    while events.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => events.push(serde_json::from_str(&line).unwrap()),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(events.len(), n, "events tail printed {events:?}");
    events
}

/// `order-engine <command> ...` as an operator runs it beside a running
/// engine (same directory, config and environment): its exit status,
/// stdout and stderr.
fn cli(dir: &std::path::Path, env: &[(&str, String)], args: &[&str]) -> (bool, String, String) {
    let mut cmd = engine();
    cmd.current_dir(dir)
        .arg("--config")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/config/default.toml"))
        .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[actix_web::test]
async fn operators_change_the_routing_table_with_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let env = [
        ("ORDERENGINE__SERVER__PORT", port.to_string()),
        ("ORDERENGINE__ADMIN__PORT", free_port().to_string()),
        ("ORDERENGINE__ADMIN__TOKEN", "cli-t0ken".to_string()),
    ];
    let mut cmd = engine();
    cmd.current_dir(dir.path())
        .arg("--config")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/config/default.toml"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in &env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.get(format!("{base}/readyz")).send().await.is_err() {
        assert!(Instant::now() < deadline, "engine did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let run = |args: &[&str]| cli(dir.path(), &env, args);

    let (ok, out, err) = run(&["units", "list"]);
    assert!(ok, "{err}");
    assert!(
        out.starts_with("routing table version 1 (kept: file)"),
        "{out}"
    );
    assert_eq!(
        out.lines().filter(|l| l.contains(" open ")).count(),
        4,
        "{out}"
    );

    let (ok, out, err) = run(&[
        "units",
        "set",
        "2",
        "--mode",
        "read_only",
        "--if-match",
        "1",
    ]);
    assert!(ok, "{err}");
    let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (answer["version"].as_u64(), answer["unit"]["mode"].as_str()),
        (Some(2), Some("read_only"))
    );
    // An operator working from an old version is told, and nothing changes.
    let (ok, _, err) = run(&["units", "set", "3", "--weight", "5", "--if-match", "1"]);
    assert!(!ok);
    assert!(err.contains("412 version_mismatch"), "{err}");
    let (ok, _, err) = run(&["units", "set", "9", "--mode", "open"]);
    assert!(!ok && err.contains("404 unit_not_found"), "{err}");
    // A SQLite unit has nothing to fail over to (the failover itself:
    // tests/api/failover.rs).
    let (ok, _, err) = run(&["units", "failover", "3", "--mode", "emergency"]);
    assert!(!ok && err.contains("409 no_replica"), "{err}");

    // A key merchant's own partition, with a unit added for it.
    let (ok, _, err) = run(&["partitions", "set", "vip", "--spill-to", "standard"]);
    assert!(ok, "{err}");
    let (ok, out, err) = run(&[
        "units",
        "add",
        "5",
        "--partition",
        "vip",
        "--weight",
        "10",
        "--primary-url",
        "sqlite://data/unit-0005.db",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("\"takes_creates\": true"), "{out}");
    let (ok, out, err) = run(&["merchants", "set", "m-9", "vip"]);
    assert!(ok, "{err}");
    let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answer["partition"], "vip", "{out}");
    let (ok, out, _) = run(&["units", "list"]);
    assert!(ok);
    let head = format!("routing table version {}", answer["version"]);
    assert!(out.starts_with(&head), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("5 ") && l.contains("vip")),
        "{out}"
    );
    for i in 0..5 {
        let r = client
            .post(format!("{base}/v1/orders"))
            .json(&order_body("m-9", &format!("vip-{i}"), "u-1", 10))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["unit"], 5, "{body}");
    }

    // Without a token the CLI says what is missing.
    let (ok, _, err) = cli(dir.path(), &env[..2], &["units", "list"]);
    assert!(!ok && err.contains("no admin token"), "{err}");
    let _ = child.kill();
    let _ = child.wait();
}
