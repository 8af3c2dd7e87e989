//! The `order-engine` binary as an operator runs it: `--config`, a clear exit
//! on bad config, and a graceful stop on SIGTERM.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::helpers::order_body;

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
