//! `order-engine events tail`: prints change events as the relay publishes
//! them, one JSON object per line: from the config's NATS stream
//! (`events.nats_url`, or `--nats-url`), or else from its events file
//! (`events.file`, or `--file`). Follows the file as it grows (and starts
//! over if it is replaced by a shorter one); by default from its end, or
//! the stream's.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use crate::config::Settings;
use crate::relay::NatsSink;

/// How often the file is looked at again.
const POLL: Duration = Duration::from_millis(200);

pub async fn tail(
    config: &Path,
    from_start: bool,
    file: Option<PathBuf>,
    nats_url: Option<String>,
) -> ExitCode {
    let settings = Settings::load(config);
    if let Some(file) = file {
        return tail_file(&file, from_start).await;
    }
    let events = match settings {
        Ok(s) => s.events,
        Err(e) if nats_url.is_some() => {
            tracing::debug!(error = %e, "no config: the default stream and subjects");
            Default::default()
        }
        Err(e) => {
            eprintln!("order-engine: {e} (or give --file or --nats-url)");
            return ExitCode::from(2);
        }
    };
    match nats_url.or(events.nats_url).filter(|u| !u.is_empty()) {
        Some(url) => {
            let sink = NatsSink::new(&url, &events.nats_stream, &events.nats_subject_prefix);
            let mut out = std::io::stdout();
            let follow = sink.follow(from_start, |event| {
                out.write_all(event)
                    .and_then(|()| out.write_all(b"\n"))
                    .and_then(|()| out.flush())
                    .is_ok()
            });
            match follow.await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("order-engine: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        None => tail_file(Path::new(&events.file), from_start).await,
    }
}

async fn tail_file(file: &Path, from_start: bool) -> ExitCode {
    let mut at = match (from_start, std::fs::metadata(file)) {
        (false, Ok(m)) => m.len(),
        _ => 0,
    };
    let mut partial = Vec::new();
    let mut out = std::io::stdout();
    loop {
        match std::fs::File::open(file) {
            Ok(mut f) => {
                let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                at = resume_at(at, &mut partial, len);
                let mut new = Vec::new();
                let read = f
                    .seek(SeekFrom::Start(at))
                    .and_then(|_| f.read_to_end(&mut new));
                if let Err(e) = read {
                    eprintln!("order-engine: cannot read {}: {e}", file.display());
                    return ExitCode::FAILURE;
                }
                at += new.len() as u64;
                partial.extend_from_slice(&new);
                if let Some(end) = partial.iter().rposition(|b| *b == b'\n') {
                    let lines: Vec<u8> = partial.drain(..=end).collect();
                    if out.write_all(&lines).and_then(|()| out.flush()).is_err() {
                        return ExitCode::SUCCESS; // the reader went away
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {} // none yet
            Err(e) => {
                eprintln!("order-engine: cannot open {}: {e}", file.display());
                return ExitCode::FAILURE;
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Where to read on from when the file is `len` bytes long, having read
/// `at` bytes of it, the last `partial` of them not yet a whole line. A
/// file cut back within that unfinished line (the relay cuts what a failed
/// write left) is read on from its end; one cut further was replaced, and
/// is read from its start.
fn resume_at(at: u64, partial: &mut Vec<u8>, len: u64) -> u64 {
    if len >= at {
        return at;
    }
    let whole = at - partial.len() as u64;
    if len >= whole {
        partial.truncate((len - whole) as usize);
        len
    } else {
        partial.clear();
        0
    }
}

#[cfg(test)]
mod tests {
    use super::resume_at;

    #[test]
    fn a_cut_unfinished_line_is_dropped_and_a_replaced_file_read_again() {
        let mut partial = b"{\"half\":".to_vec();
        assert_eq!(resume_at(100, &mut partial, 120), 100, "grown: read on");
        assert_eq!(partial.len(), 8);
        assert_eq!(resume_at(100, &mut partial, 95), 95);
        assert_eq!(partial, b"{\"h");
        assert_eq!(resume_at(95, &mut partial, 10), 0, "replaced");
        assert!(partial.is_empty());
    }
}
