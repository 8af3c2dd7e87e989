//! `order-engine events tail`: prints change events as the relay publishes
//! them, one JSON object per line, from the events file of the config
//! (`events.file`) or `--file`. Follows the file as it grows (and starts
//! over if it is replaced by a shorter one); by default from its end.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

/// How often the file is looked at again.
const POLL: Duration = Duration::from_millis(200);

pub async fn tail(file: &Path, from_start: bool) -> ExitCode {
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
                if len < at {
                    at = 0; // replaced: start over
                    partial.clear();
                }
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
