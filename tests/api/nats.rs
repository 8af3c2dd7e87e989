//! Real NATS servers with JetStream, started by the tests themselves:
//! `nats-server` on a free loopback port with its store in a temporary
//! directory. Killed and restarted on the same port and store, a server
//! keeps its streams. Without `nats-server` the tests fail and say how to
//! install it.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::mariadb::{die_with_parent, free_port};

fn binary() -> &'static str {
    [
        "/usr/sbin/nats-server",
        "/usr/bin/nats-server",
        "/usr/local/bin/nats-server",
    ]
    .into_iter()
    .find(|p| Path::new(p).is_file())
    .or_else(|| {
        let on_path = Command::new("nats-server").arg("--version").output();
        on_path.is_ok().then_some("nats-server")
    })
    .expect(
        "nats-server is required by the event tests, which start their own. Install it \
             with `sudo apt-get install -y nats-server` (Debian/Ubuntu), or run \
             scripts/test.sh, which does",
    )
}

pub struct Nats {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl Nats {
    pub fn start() -> Self {
        let mut nats = Self {
            dir: tempfile::Builder::new()
                .prefix("orderengine-nats-")
                .tempdir()
                .unwrap(),
            port: free_port(),
            child: None,
        };
        nats.launch();
        nats
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("nats.log"))
            .unwrap();
        let mut cmd = Command::new(binary());
        cmd.args([
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-sd",
        ])
        .arg(self.dir.path().join("store"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
        die_with_parent(&mut cmd);
        self.child = Some(cmd.spawn().expect("nats-server starts"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}
