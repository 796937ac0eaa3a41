//! The live event stream behind `GET /llmux/events`.
//!
//! The switch task and the hook runner [`emit`](Events::emit) events
//! (switch started, phase done, activated, failed, asleep, hook output,
//! reloaded) into a bounded broadcast channel; each `/llmux/events` client
//! holds a receiver. Nothing is formatted while nobody listens, and a
//! client that reads too slowly loses the oldest events (and is told how
//! many) instead of holding memory.

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::broadcast;

/// Events kept for a slow reader before it starts losing them.
const CAPACITY: usize = 1024;

/// The event bus (cheap to clone: hook output readers hold one).
#[derive(Clone)]
pub struct Events {
    tx: broadcast::Sender<Bytes>,
}

impl Default for Events {
    fn default() -> Events {
        Events { tx: broadcast::channel(CAPACITY).0 }
    }
}

impl Events {
    /// True if someone is listening (check before building `data`).
    pub fn is_watched(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    /// Sends `event: kind` with `data` to every listener.
    pub fn emit(&self, kind: &str, data: impl FnOnce() -> Value) {
        if self.is_watched() {
            let _ = self.tx.send(frame(kind, &data()));
        }
    }

    /// A new listener, seeing events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Bytes> {
        self.tx.subscribe()
    }
}

/// One server-sent event.
pub fn frame(kind: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {kind}\ndata: {data}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn listeners_get_frames_and_nobody_listening_costs_nothing() {
        let events = Events::default();
        let mut built = false;
        events.emit("x", || {
            built = true;
            json!({})
        });
        assert!(!built, "data built with no listener");
        let mut rx = events.subscribe();
        events.emit("activated", || json!({"model": "a"}));
        let got = rx.recv().await.expect("an event");
        assert_eq!(&got[..], b"event: activated\ndata: {\"model\":\"a\"}\n\n");
    }
}
