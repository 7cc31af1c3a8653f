//! Task events sent to the containerd that owns the task, over its ttrpc events service
//! (`Events/Forward` at the TTRPC_ADDRESS it gave the shim). One queue per containerd keeps
//! each task's events in the order they happened, which containerd requires
//! (create → start → exit → delete).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskOOM, TaskStart,
};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::{MessageField, MessageFull};
use containerd_shim_protos::shim::event::Envelope;
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::shim_async::EventsClient;
use tokio::sync::mpsc;

/// Events a containerd's queue holds before the oldest are dropped (containerd has its own
/// `Wait` and state calls; events only speed it up).
const QUEUE: usize = 4096;

/// One topic's event.
pub enum Event {
    Create(TaskCreate),
    Start(TaskStart),
    Exit(TaskExit),
    Delete(TaskDelete),
    ExecAdded(TaskExecAdded),
    ExecStarted(TaskExecStarted),
    Oom(TaskOOM),
}

impl Event {
    fn envelope(self, namespace: &str) -> Envelope {
        let (topic, event) = match self {
            Event::Create(e) => ("/tasks/create", any(&e)),
            Event::Start(e) => ("/tasks/start", any(&e)),
            Event::Exit(e) => ("/tasks/exit", any(&e)),
            Event::Delete(e) => ("/tasks/delete", any(&e)),
            Event::ExecAdded(e) => ("/tasks/exec-added", any(&e)),
            Event::ExecStarted(e) => ("/tasks/exec-started", any(&e)),
            Event::Oom(e) => ("/tasks/oom", any(&e)),
        };
        Envelope {
            timestamp: MessageField::some(timestamp(SystemTime::now())),
            namespace: namespace.to_owned(),
            topic: topic.to_owned(),
            event: MessageField::some(event),
            ..Default::default()
        }
    }
}

/// A message as containerd's typeurl names it: the bare full name of its proto type.
pub fn any<M: MessageFull>(m: &M) -> Any {
    Any {
        type_url: M::descriptor().full_name().to_owned(),
        value: m.write_to_bytes().unwrap_or_default(),
        ..Default::default()
    }
}

pub fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
        ..Default::default()
    }
}

/// The queues, one per containerd address.
#[derive(Default)]
pub struct Publisher {
    queues: Mutex<HashMap<String, mpsc::Sender<Envelope>>>,
}

impl Publisher {
    /// Queues `event` for the containerd at `address` (a path or `unix://` address); an empty
    /// address (a task nobody registered) publishes nothing.
    pub fn publish(&self, address: &str, namespace: &str, event: Event) {
        if address.is_empty() {
            return;
        }
        let envelope = event.envelope(namespace);
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        let tx = queues
            .entry(address.to_owned())
            .or_insert_with(|| spawn_sender(address));
        if let Err(e) = tx.try_send(envelope) {
            tracing::warn!(address, "event for containerd dropped: {e}");
        }
    }
}

/// The task that forwards one containerd's queue, reconnecting as needed.
fn spawn_sender(address: &str) -> mpsc::Sender<Envelope> {
    let (tx, mut rx) = mpsc::channel::<Envelope>(QUEUE);
    let address = match address.starts_with("unix://") {
        true => address.to_owned(),
        false => format!("unix://{address}"),
    };
    tokio::spawn(async move {
        let mut client: Option<EventsClient> = None;
        while let Some(envelope) = rx.recv().await {
            let request = ForwardRequest {
                envelope: MessageField::some(envelope),
                ..Default::default()
            };
            // A containerd restarting comes back on the same address: try for a while.
            for attempt in 0..5 {
                if client.is_none() {
                    client = ttrpc::asynchronous::Client::connect(&address)
                        .await
                        .ok()
                        .map(EventsClient::new);
                }
                if let Some(c) = &client {
                    let ctx =
                        ttrpc::context::with_timeout(Duration::from_secs(5).as_nanos() as i64);
                    match c.forward(ctx, &request).await {
                        Ok(_) => break,
                        Err(e) => {
                            tracing::debug!(%address, "forwarding an event: {e}");
                            client = None;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
            }
        }
    });
    tx
}
