//! Real MariaDB servers, started by the tests themselves: `mariadbd` in a
//! temporary data directory on a free loopback port. No pre-existing server is
//! used, and a test can kill one server to fail one unit.
//!
//! If MariaDB is not installed the tests fail (they never skip) with a message
//! saying how to install it.

use std::io::Write;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const INSTALL_HINT: &str = "MariaDB is required by the integration tests, which start their own \
     servers. Install it with `sudo apt-get install -y mariadb-server` (Debian/Ubuntu); \
     the tests need `mariadbd` and `mariadb-install-db` on PATH or in /usr/sbin.";

fn find_binary(names: &[&str]) -> PathBuf {
    for name in names {
        for dir in std::env::var("PATH").unwrap_or_default().split(':').chain([
            "/usr/sbin",
            "/usr/bin",
            "/usr/local/bin",
            "/usr/local/sbin",
        ]) {
            let p = Path::new(dir).join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!("cannot find {}: {INSTALL_HINT}", names.join(" or "));
}

/// A loopback port nothing listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// One MariaDB server owned by a test.
pub struct MariaDb {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    durable: bool,
    /// Server options after the harness's own (a later one wins).
    extra: Vec<String>,
}

impl MariaDb {
    /// A durable server (`innodb_flush_log_at_trx_commit=1`): what it
    /// acknowledged survives SIGKILL, as in production. For fault tests.
    pub fn start() -> Self {
        Self::start_with(true)
    }

    /// Initialises a data directory and starts a server on a free port.
    /// `durable: false` skips the fsync per commit: for tests that never kill it.
    pub fn start_with(durable: bool) -> Self {
        Self::start_in("orderengine-mariadb-", durable)
    }

    /// A durable server started with `extra` options as well (replication:
    /// `--log-bin`, `--server-id`, semi-sync ...).
    pub fn start_with_options(extra: &[&str]) -> Self {
        Self::start_in_with("orderengine-mariadb-", true, extra)
    }

    fn start_in(prefix: &str, durable: bool) -> Self {
        Self::start_in_with(prefix, durable, &[])
    }

    fn start_in_with(prefix: &str, durable: bool, extra: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .expect("temp dir");
        let install = find_binary(&["mariadb-install-db", "mysql_install_db"]);
        // Its own tmpdir: servers installed side by side in a shared /tmp
        // collide on temporary table names.
        std::fs::create_dir(dir.path().join("tmp")).expect("tmpdir");
        let out = Command::new(&install)
            .arg("--no-defaults")
            .arg(format!("--datadir={}", dir.path().join("data").display()))
            .arg(format!("--tmpdir={}", dir.path().join("tmp").display()))
            .args([
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--innodb-log-file-size=16M",
                "--innodb-use-native-aio=0",
            ])
            .args(run_as_root_args())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}. {INSTALL_HINT}", install.display()));
        assert!(
            out.status.success(),
            "mariadb-install-db failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut server = Self {
            dir,
            port: free_port(),
            child: None,
            durable,
            extra: extra.iter().map(|o| (*o).to_owned()).collect(),
        };
        server.launch();
        server
    }

    fn launch(&mut self) {
        let mariadbd = find_binary(&["mariadbd", "mysqld"]);
        let d = self.dir.path();
        let log = std::fs::File::create(d.join("server.log")).expect("server log");
        let mut cmd = Command::new(&mariadbd);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", d.join("data").display()))
            .arg(format!("--socket={}", d.join("mysqld.sock").display()))
            .arg(format!("--pid-file={}", d.join("mysqld.pid").display()))
            .arg(format!("--tmpdir={}", d.join("tmp").display()))
            .arg(format!("--port={}", self.port))
            .args([
                "--bind-address=127.0.0.1",
                "--skip-grant-tables",
                "--skip-log-bin",
                "--innodb-buffer-pool-size=64M",
                "--innodb-log-file-size=16M",
                // Many servers run at once in the tests: native AIO / io_uring
                // contexts are a per-machine limit, simulated AIO is not.
                "--innodb-use-native-aio=0",
                "--max-connections=500",
            ])
            .arg(format!(
                "--innodb-flush-log-at-trx-commit={}",
                if self.durable { 1 } else { 0 }
            ))
            .args(run_as_root_args())
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("log handle")))
            .stderr(Stdio::from(log));
        die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}. {INSTALL_HINT}", mariadbd.display()));
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("mariadbd exited with {status}: {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "mariadbd did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// URL of database `db` on this server.
    pub fn url(&self, db: &str) -> String {
        format!("mysql://root@127.0.0.1:{}/{db}", self.port)
    }

    /// SIGKILL: the unit's database vanishes mid-flight, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same data and port.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The child gets SIGKILL when the thread that started it ends, so a crashed
/// or killed test run leaves no server behind.
pub fn die_with_parent(cmd: &mut Command) {
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

fn run_as_root_args() -> Vec<&'static str> {
    // mariadbd refuses to run as root unless told to.
    if unsafe { libc::geteuid() } == 0 {
        vec!["--user=root"]
    } else {
        vec![]
    }
}

/// The server shared by every test in this binary that does not kill servers.
/// It is started from a thread that lives as long as the process, so it dies
/// with the process (PR_SET_PDEATHSIG). Its data directory carries the test
/// process id; each run removes the directories of processes that are gone.
pub fn shared() -> &'static MariaDb {
    static SHARED: OnceLock<&'static MariaDb> = OnceLock::new();
    SHARED.get_or_init(|| {
        remove_stale_shared_dirs();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let prefix = format!("{SHARED_PREFIX}{}-", std::process::id());
            let server: &'static MariaDb = Box::leak(Box::new(MariaDb::start_in(&prefix, false)));
            tx.send(server).expect("test thread waits");
            loop {
                std::thread::park();
            }
        });
        rx.recv()
            .expect("shared MariaDB failed to start (see the panic above)")
    })
}

const SHARED_PREFIX: &str = "orderengine-shared-";

fn remove_stale_shared_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(SHARED_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A database name no other test in this run uses.
pub fn unique_db(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "t{}_{}_{tag}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Copies database `from_db` of the server on port `from` to `to_db` of the
/// one on port `to` with mariadb-dump
/// and the mariadb client (as an operator would; a promoted replica does
/// the same job).
pub fn copy_database(from: u16, from_db: &str, to: u16, to_db: &str) {
    let dump = Command::new("mariadb-dump")
        .args([
            "--no-defaults",
            "-h127.0.0.1",
            "-uroot",
            "--single-transaction",
        ])
        .arg(format!("-P{from}"))
        .arg(from_db)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run mariadb-dump: {e}. {INSTALL_HINT}"));
    assert!(dump.status.success(), "mariadb-dump failed");
    let client = |sql: Option<&str>| {
        let mut cmd = Command::new("mariadb");
        cmd.args(["--no-defaults", "-h127.0.0.1", "-uroot"])
            .arg(format!("-P{to}"));
        match sql {
            Some(sql) => cmd.args(["-e", sql]),
            None => cmd.arg(to_db).stdin(Stdio::piped()),
        };
        cmd
    };
    let created = client(Some(&format!("CREATE DATABASE `{to_db}`")))
        .status()
        .unwrap_or_else(|e| panic!("cannot run mariadb: {e}. {INSTALL_HINT}"));
    assert!(created.success(), "CREATE DATABASE {to_db} failed");
    let mut load = client(None).spawn().unwrap();
    load.stdin.take().unwrap().write_all(&dump.stdout).unwrap();
    assert!(load.wait().unwrap().success(), "loading the copy failed");
}

/// A primary (server id 1) and a replica (server id 2): see
/// [`primary_and_replicas`].
pub fn primary_and_replica() -> (MariaDb, MariaDb) {
    let (primary, mut replicas) = primary_and_replicas(1);
    (primary, replicas.remove(0))
}

/// A primary (server id 1) and `n` replicas (server ids 2...) for MariaDB
/// GTID replication, semi-synchronous with the fallback to asynchronous
/// pushed out of reach (as Vitess runs it), so that a commit the primary
/// acknowledged is on a replica. Every server has the same settings, but
/// only the primary waits for replicas: a replica that did, with no
/// replica of its own, would hold its applier's commits for the whole
/// timeout (replication stalls). A promoted one turns it on (see the
/// failover). Not replicating yet: see [`replicate_all`].
pub fn primary_and_replicas(n: u32) -> (MariaDb, Vec<MariaDb>) {
    let server = |id: u32, primary: bool| {
        let id = format!("--server-id={id}");
        let waits = format!("--rpl-semi-sync-master-enabled={}", u8::from(primary));
        MariaDb::start_with_options(&[
            "--log-bin=mysql-bin",
            &id,
            "--binlog-format=ROW",
            "--gtid-strict-mode=1",
            "--log-slave-updates",
            &waits,
            "--rpl-semi-sync-slave-enabled=1",
            // Never fall back to asynchronous: a commit waits for a replica.
            "--rpl-semi-sync-master-timeout=3600000",
            "--rpl-semi-sync-master-wait-point=AFTER_SYNC",
        ])
    };
    let primary = server(1, true);
    (primary, (0..n).map(|i| server(i + 2, false)).collect())
}

/// Makes `replica` replicate `primary`: see [`replicate_all`].
pub async fn replicate(primary: &MariaDb, replica: &MariaDb) {
    replicate_all(primary, &[replica]).await;
}

/// Makes each of `replicas` replicate `primary` (GTID, from the start) and
/// waits until the primary counts them all as its semi-synchronous
/// clients.
pub async fn replicate_all(primary: &MariaDb, replicas: &[&MariaDb]) {
    use sqlx::Row;
    let connect = |s: &MariaDb| sqlx::MySqlPool::connect_lazy(&s.url("mysql")).unwrap();
    let p = connect(primary);
    for replica in replicas {
        let r = connect(replica);
        let change = format!(
            "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={}, MASTER_USER='root', \
             MASTER_CONNECT_RETRY=1, MASTER_USE_GTID=slave_pos",
            primary.port()
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(change))
            .execute(&r)
            .await
            .unwrap();
        sqlx::raw_sql("START SLAVE").execute(&r).await.unwrap();
        r.close().await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let row = sqlx::query("SHOW STATUS LIKE 'Rpl_semi_sync_master_clients'")
            .fetch_one(&p)
            .await
            .unwrap();
        if row.get::<String, _>(1) == replicas.len().to_string() {
            break;
        }
        assert!(Instant::now() < deadline, "the replicas never connected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    p.close().await;
}
