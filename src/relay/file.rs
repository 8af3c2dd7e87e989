//! Events as JSON lines appended to one file, synced before a batch counts
//! as published. Every unit's relay in the process appends to it, one
//! batch at a time; `order-engine events tail` follows it.
//!
//! A write that failed part-way (a full disk), or a process killed in the
//! middle of one, can leave an unfinished last line. Its batch was not
//! marked published, so it is written again whole; before that, the file
//! is opened afresh and the unfinished line cut off, so that no line holds
//! half an event glued to a whole one.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::storage::OutboxEvent;

#[derive(Debug)]
pub struct FileSink {
    path: PathBuf,
    /// Opened on the first batch (append), kept open.
    file: Arc<Mutex<Option<File>>>,
}

impl FileSink {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            file: Arc::default(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line per event and syncs the file (on the blocking
    /// pool: a sync may take milliseconds).
    pub async fn publish(&self, events: &[OutboxEvent]) -> Result<(), String> {
        let mut lines = Vec::with_capacity(events.iter().map(|e| e.json.len() + 1).sum());
        for e in events {
            lines.extend_from_slice(e.json.as_bytes());
            lines.push(b'\n');
        }
        let (path, file) = (self.path.clone(), self.file.clone());
        let write = move || -> std::io::Result<()> {
            let mut held = file.lock().expect("events file lock");
            if held.is_none() {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)?;
                }
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .read(true)
                    .append(true)
                    .open(&path)?;
                cut_unfinished_line(&f)?;
                *held = Some(f);
            }
            let f = held.as_mut().expect("opened above");
            let written = f.write_all(&lines).and_then(|()| f.sync_data());
            if written.is_err() {
                *held = None; // reopened, cut and appended to by the next batch
            }
            written
        };
        tokio::task::spawn_blocking(write)
            .await
            .map_err(|e| format!("events file writer: {e}"))?
            .map_err(|e| format!("events file {}: {e}", self.path.display()))
    }
}

/// Cuts `file` back to the end of its last whole line (a line ends with
/// `\n`), if it does not end there.
fn cut_unfinished_line(file: &File) -> std::io::Result<()> {
    let len = file.metadata()?.len();
    let mut end = len;
    let mut buf = [0u8; 4096];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        file.read_exact_at(chunk, start)?;
        if let Some(i) = chunk.iter().rposition(|b| *b == b'\n') {
            end = start + i as u64 + 1;
            break;
        }
        end = start;
    }
    if end < len {
        file.set_len(end)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn batches_are_appended_as_lines() {
        let dir = tempfile::tempdir().unwrap();
        let sink = FileSink::new(dir.path().join("sub/events.jsonl"));
        let event = |json: serde_json::Value| OutboxEvent {
            record_id: 1,
            event_id: "o.1".into(),
            order_id: "o".into(),
            event_type: "order.created".into(),
            json: json.to_string(),
        };
        sink.publish(&[event(serde_json::json!({"a": 1}))])
            .await
            .unwrap();
        let two = [event(serde_json::json!({"b": "x\ny"})), event(2.into())];
        sink.publish(&two).await.unwrap();
        let text = std::fs::read_to_string(sink.path()).unwrap();
        assert_eq!(text, "{\"a\":1}\n{\"b\":\"x\\ny\"}\n2\n");
    }

    #[tokio::test]
    async fn an_unfinished_last_line_is_cut_before_appending() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let event = OutboxEvent {
            record_id: 1,
            event_id: "o.1".into(),
            order_id: "o".into(),
            event_type: "order.created".into(),
            json: "{\"c\":3}".into(),
        };
        // Half a line after two whole ones (a write that failed part-way,
        // or a process killed in one), the last of them past 4 KiB back.
        let long = format!("{{\"b\":\"{}\"}}", "x".repeat(5000));
        std::fs::write(&path, format!("{{\"a\":1}}\n{long}\n{{\"half\":")).unwrap();
        FileSink::new(&path)
            .publish(std::slice::from_ref(&event))
            .await
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("{{\"a\":1}}\n{long}\n{{\"c\":3}}\n"));

        // No whole line at all, and a file that ends well.
        std::fs::write(&path, "x".repeat(9000)).unwrap();
        FileSink::new(&path)
            .publish(std::slice::from_ref(&event))
            .await
            .unwrap();
        FileSink::new(&path).publish(&[event]).await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "{\"c\":3}\n{\"c\":3}\n");
    }
}
