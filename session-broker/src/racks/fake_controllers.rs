//! Test support: racks registered with the broker, backed by controllers that are real TCP
//! servers on loopback, one that answers like a controller and one that never answers.

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use crate::broker::Broker;

/// Registers an online rack `id` in region `east` whose controller is at `url`.
pub fn add_rack(broker: &Broker, id: &str, url: &str) {
    let registration = serde_json::from_value(serde_json::json!({
        "region": "east", "controller_url": url, "controller_token": "t",
    }))
    .expect("a valid registration");
    let mut rack = super::registry::RackLive::new(id);
    rack.register(&registration, service_kit::time::now_ms());
    rack.stream_connected = true;
    broker.racks().insert(id.into(), rack);
}

/// A controller that reads every call and never answers, as a hung one does. Sends
/// `"silent: asked"` on the first call it reads and `"silent: hung up"` when a caller closes its
/// connection. Returns its URL.
pub async fn silent(events: UnboundedSender<&'static str>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let events = events.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut asked = false;
                loop {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => {
                            let _ = events.send("silent: hung up");
                            return;
                        }
                        Ok(_) if !asked => {
                            asked = true;
                            let _ = events.send("silent: asked");
                        }
                        Ok(_) => {}
                    }
                }
            });
        }
    });
    url
}

/// Serves `routes` on loopback; returns the URL.
pub async fn serve(routes: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, routes).await });
    url
}

/// What the fake controllers said, in order (`"silent: asked"`, `"silent: hung up"`, and
/// whatever the answering one's routes send).
pub struct Heard {
    rx: UnboundedReceiver<&'static str>,
    pub seen: Vec<&'static str>,
}

impl Heard {
    /// A log and the sender the servers say things with.
    pub fn new() -> (Heard, UnboundedSender<&'static str>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (Heard { rx, seen: Vec::new() }, tx)
    }

    /// Waits until `event` has been said (at most 30 s).
    pub async fn until(&mut self, event: &'static str) {
        while !self.seen.contains(&event) {
            let next = tokio::time::timeout(Duration::from_secs(30), self.rx.recv()).await;
            self.seen
                .push(next.unwrap_or_else(|_| panic!("no {event:?} within 30 s")).expect("the servers run"));
        }
    }

    /// Asserts that the silent controller was called and that its caller has not hung up
    /// (given a pause for what it noticed meanwhile to arrive): nothing waited for its answer
    /// until the call timed out (5 s).
    pub async fn assert_silent_call_still_open(&mut self) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        while let Ok(event) = self.rx.try_recv() {
            self.seen.push(event);
        }
        let seen = &self.seen;
        assert!(seen.contains(&"silent: asked"), "both racks are called: {seen:?}");
        assert!(!seen.contains(&"silent: hung up"), "something waited for the silent rack: {seen:?}");
    }
}
