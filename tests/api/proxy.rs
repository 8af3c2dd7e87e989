//! A small TCP proxy on loopback between the engine and one MariaDB server,
//! for failures a clean kill cannot produce: refused connections, delays, a
//! black hole (bytes go in, nothing comes back), and a connection cut right
//! after the client's `COMMIT` reached the server but before its answer came
//! back (the ambiguous case order retry must not duplicate).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    /// Accept, then close at once.
    Refuse,
    /// Hold every chunk this long before passing it on.
    Delay(Duration),
    /// Accept and read, never answer; established connections go silent too.
    BlackHole,
    /// Pass until a `COMMIT` goes by: forward it, then cut every connection
    /// and refuse new ones (mode becomes `Refuse`).
    CutAfterCommit,
}

pub struct Proxy {
    pub port: u16,
    mode: Arc<Mutex<Mode>>,
    /// Reads from the engine's side (before any delay): traffic this proxy
    /// alone sees, so a test can tell that a call of its own reached it.
    from_engine: Arc<AtomicU64>,
    /// Bumped to cut every live connection.
    cut: watch::Sender<u64>,
}

/// MySQL COM_QUERY (0x03) carrying `COMMIT`.
const COMMIT: &[u8] = b"\x03COMMIT";

impl Proxy {
    pub async fn start(upstream_port: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mode = Arc::new(Mutex::new(Mode::Pass));
        let from_engine = Arc::new(AtomicU64::new(0));
        let (cut, _) = watch::channel(0u64);
        let proxy = Proxy {
            port,
            mode: mode.clone(),
            from_engine: from_engine.clone(),
            cut: cut.clone(),
        };
        // Runs on its own thread: the engine under test must not share it.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        return;
                    };
                    let (mode, cut) = (mode.clone(), cut.clone());
                    let from_engine = from_engine.clone();
                    tokio::spawn(serve(client, upstream_port, mode, cut, from_engine));
                }
            });
        });
        proxy
    }

    /// Switches mode; `Refuse` also drops every established connection, and
    /// `BlackHole` silences them.
    pub fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
        if mode == Mode::Refuse {
            self.cut.send_modify(|g| *g += 1);
        }
    }

    pub fn mode(&self) -> Mode {
        *self.mode.lock().unwrap()
    }

    /// How many reads the proxy has taken from the engine's connections.
    pub fn reads_from_engine(&self) -> u64 {
        self.from_engine.load(Ordering::SeqCst)
    }
}

async fn serve(
    client: TcpStream,
    upstream_port: u16,
    mode: Arc<Mutex<Mode>>,
    cut: watch::Sender<u64>,
    from_engine: Arc<AtomicU64>,
) {
    let current = *mode.lock().unwrap();
    match current {
        Mode::Refuse => return,
        Mode::BlackHole => {
            swallow(client).await;
            return;
        }
        _ => {}
    }
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)).await else {
        return;
    };
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let mut cut_rx = cut.subscribe();
    let up_mode = mode.clone();
    let up = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            from_engine.fetch_add(1, Ordering::SeqCst);
            let m = *up_mode.lock().unwrap();
            match m {
                Mode::BlackHole => continue,
                Mode::Delay(d) => tokio::time::sleep(d).await,
                _ => {}
            }
            if sw.write_all(&buf[..n]).await.is_err() {
                return;
            }
            if m == Mode::CutAfterCommit && buf[..n].windows(COMMIT.len()).any(|w| w == COMMIT) {
                let _ = sw.flush().await;
                *up_mode.lock().unwrap() = Mode::Refuse;
                cut.send_modify(|g| *g += 1);
                return;
            }
        }
    };
    let down_mode = mode.clone();
    let down = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let m = *down_mode.lock().unwrap();
            match m {
                Mode::BlackHole => continue,
                Mode::Delay(d) => tokio::time::sleep(d).await,
                _ => {}
            }
            if cw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    // Whichever direction ends, or a cut, ends the connection (both halves drop).
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = cut_rx.changed() => {}
    }
}

async fn swallow(mut client: TcpStream) {
    let mut buf = vec![0u8; 4096];
    while let Ok(n) = client.read(&mut buf).await {
        if n == 0 {
            return;
        }
    }
}
