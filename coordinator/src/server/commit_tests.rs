//! The save → send order under group commit, with a store whose writes stall until released
//! (a test double behind the `RecordStore` seam): nothing a step decided goes out before its
//! state is written, the core's lock is free meanwhile, the steps sealed during the stall are
//! written in one batch, and a coordinator opened over what was written has all of it; a batch
//! of agent inputs from the inbox is one step, one write, then its events in input order.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use holdfast_core::cluster::Input;
use holdfast_proto::v1 as pb;

use super::Coordinator;
use crate::config::CoordinatorConfig;
use crate::store::{Change, RecordStore, Records, StoreError};

/// What the stalling store holds and did, shared with the test.
#[derive(Default)]
struct Disk {
    records: Mutex<Records>,
    /// Records per write, in order.
    batches: Mutex<Vec<usize>>,
    stalled: Mutex<bool>,
    released: Condvar,
    writing: AtomicBool,
}

/// Writes block while the disk is stalled.
struct StallingStore(Arc<Disk>);

impl RecordStore for StallingStore {
    fn load(&mut self) -> Result<Records, StoreError> {
        Ok(self.0.records.lock().unwrap().clone())
    }

    fn apply(&mut self, changes: &[Change]) -> Result<(), StoreError> {
        self.0.writing.store(true, Ordering::SeqCst);
        let mut stalled = self.0.stalled.lock().unwrap();
        while *stalled {
            stalled = self.0.released.wait(stalled).unwrap();
        }
        drop(stalled);
        let mut records = self.0.records.lock().unwrap();
        for (key, value) in changes {
            match value {
                Some(v) => records.insert(key.clone(), v.clone()),
                None => records.remove(key),
            };
        }
        self.0.batches.lock().unwrap().push(changes.len());
        self.0.writing.store(false, Ordering::SeqCst);
        Ok(())
    }

    fn describe(&self) -> String {
        "a stalling disk".into()
    }
}

fn hello(coordinator: &Coordinator, node: &str, conn: u64) -> Input {
    Input::Hello {
        request: coordinator.request_id(),
        conn,
        hello: crate::wire::hello(pb::Hello {
            node_id: node.into(),
            hostname: node.into(),
            boot_id: "boot".into(),
            sent_unix_ms: crate::now_ms(),
            agent_started_unix_ms: crate::now_ms(),
            ..Default::default()
        }),
    }
}

/// A coordinator over `disk` (what is written there is restored).
fn open_over(disk: &Arc<Disk>) -> Coordinator {
    let store = Box::new(StallingStore(disk.clone()));
    Coordinator::open(CoordinatorConfig::default(), store)
        .unwrap()
        .0
}

/// Waits (bounded) for `cond`.
fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn nothing_goes_out_before_its_save_and_a_stall_is_written_as_one_batch() {
    let disk = Arc::new(Disk::default());
    let coordinator = open_over(&disk);
    let mut events = coordinator.subscribe();
    *disk.stalled.lock().unwrap() = true;

    // The first hello's save stalls: its commit waits, nothing it decided is published.
    let first = {
        let c = coordinator.clone();
        let input = hello(&c, "n0", 1);
        std::thread::spawn(move || c.step(input))
    };
    wait_for("the first save to start", || {
        disk.writing.load(Ordering::SeqCst)
    });
    // The core's lock is free while the disk stalls: more hellos are stepped and sealed.
    let more: Vec<_> = (1..=5)
        .map(|i| {
            let c = coordinator.clone();
            let input = hello(&c, &format!("n{i}"), 1 + i);
            std::thread::spawn(move || c.step(input))
        })
        .collect();
    wait_for("every hello to be stepped", || {
        coordinator.cluster().nodes.len() == 6
    });
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        matches!(
            events.try_recv(),
            Err(tokio::sync::broadcast::error::TryRecvError::Empty)
        ),
        "an event went out before its state was saved"
    );
    assert!(!first.is_finished() && more.iter().all(|t| !t.is_finished()));

    *disk.stalled.lock().unwrap() = false;
    disk.released.notify_all();
    first.join().unwrap();
    for t in more {
        t.join().unwrap();
    }
    // The stalled write held the first hello; the five sealed during it went in one more.
    let batches = disk.batches.lock().unwrap().clone();
    assert_eq!(batches.len(), 3, "the opening save, then two: {batches:?}");
    assert_eq!(batches[1], 1, "{batches:?}");
    assert_eq!(batches[2], 5, "{batches:?}");
    assert!(
        events.try_recv().is_ok(),
        "the events went out after the save"
    );
    let (written_batches, steps, _) = coordinator.shared.save_stats.get();
    assert_eq!(written_batches, 2);
    assert!(steps >= 6, "{steps}");

    // A coordinator opened over the disk has the latest state: all six nodes.
    let restored = open_over(&disk);
    let nodes: Vec<String> = restored
        .cluster()
        .nodes
        .keys()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(nodes, ["n0", "n1", "n2", "n3", "n4", "n5"]);
}

#[test]
fn an_inbox_batch_is_stepped_in_order_saved_in_one_write_then_sent() {
    let disk = Arc::new(Disk::default());
    let coordinator = open_over(&disk);
    let mut events = coordinator.subscribe();
    let inputs: Vec<Input> = (0..3)
        .map(|i| hello(&coordinator, &format!("n{i}"), 1 + i))
        .collect();
    coordinator.step_batch(inputs);
    // The opening save, then one write holding the three nodes' records.
    let batches = disk.batches.lock().unwrap().clone();
    assert_eq!(batches.len(), 2, "{batches:?}");
    assert_eq!(batches[1], 3, "{batches:?}");
    let (written_batches, steps, _) = coordinator.shared.save_stats.get();
    assert_eq!(
        (written_batches, steps),
        (1, 1),
        "one sealed step, one write"
    );
    // Its events went out after the write, in the order the inputs were stepped.
    let mut order = Vec::new();
    while let Ok(event) = events.try_recv() {
        let event = crate::server::decode_event(&event).expect("an event");
        if !event.node_id.is_empty() && !order.contains(&event.node_id) {
            order.push(event.node_id);
        }
    }
    assert_eq!(order, ["n0", "n1", "n2"]);
}
