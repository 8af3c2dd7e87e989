//! Events as JSON lines appended to one file, synced before a batch counts
//! as published. Every unit's relay in the process appends to it, one
//! batch at a time; `order-engine events tail` follows it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::storage::OutboxEvent;

#[derive(Debug)]
pub struct FileSink {
    path: PathBuf,
    /// Opened on the first batch (append), kept open.
    file: Arc<Mutex<Option<std::fs::File>>>,
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
                    .append(true)
                    .open(&path)?;
                *held = Some(f);
            }
            let f = held.as_mut().expect("opened above");
            let written = f.write_all(&lines).and_then(|()| f.sync_data());
            if written.is_err() {
                *held = None; // reopened (and appended to) by the next batch
            }
            written
        };
        tokio::task::spawn_blocking(write)
            .await
            .map_err(|e| format!("events file writer: {e}"))?
            .map_err(|e| format!("events file {}: {e}", self.path.display()))
    }
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
}
