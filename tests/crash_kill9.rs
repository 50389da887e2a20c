//! Kills the orders service with SIGKILL under a retrying client load, restarts it on the
//! same data directory, and checks that nothing a client was told was lost.
//!
//! Each incarnation's watcher connects with `?since=` set to the `ts` of the last event an
//! earlier connection received, so it catches up on events lost with the killed process;
//! every committed order's event must reach some watcher.
//!
//! ```text
//! cargo test --test crash_kill9 -- --nocapture                      # CI size
//! CNERIUM_CRASH_KILLS=200 CNERIUM_CRASH_KEYS=500 \
//!     cargo test --release --test crash_kill9 -- --nocapture         # a long run
//! ```
//!
//! `CNERIUM_CRASH_SEED` repeats a run's kill timings and key choices.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::Value;
use support::{Service, WsClient, client};

const EXAMPLE: &str = "durable_orders_realtime";
const WORKERS: usize = 8;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A small deterministic generator, so that a seed repeats a run.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn body_for(key: usize) -> String {
    format!(
        r#"{{"product_id":"p{}","quantity":{}}}"#,
        key % 7,
        key % 5 + 1
    )
}

#[derive(Default)]
struct Observed {
    /// Every 201 body a client received, by key.
    acknowledged: HashMap<usize, Vec<Vec<u8>>>,
    requests: u64,
}

/// Sends requests until the service stops answering or `budget` requests were sent: half
/// of them for a key never used before (up to `keys`), half retries of a used key.
async fn load(
    http: reqwest::Client,
    url: String,
    keys: u64,
    next_key: Arc<AtomicU64>,
    seed: u64,
    budget: u64,
    observed: Arc<Mutex<Observed>>,
) {
    let mut rng = Lcg(seed);
    for _ in 0..budget {
        let used = next_key.load(Ordering::SeqCst);
        let key = if used == 0 || (used < keys && rng.below(2) == 0) {
            next_key.fetch_add(1, Ordering::SeqCst).min(keys - 1)
        } else {
            rng.below(used.min(keys))
        } as usize;
        let sent = http
            .post(&url)
            .header("content-type", "application/json")
            .header("idempotency-key", format!("crash-{key}"))
            .body(body_for(key))
            .send()
            .await;
        observed.lock().unwrap().requests += 1;
        let Ok(response) = sent else {
            return;
        };
        let status = response.status().as_u16();
        let Ok(bytes) = response.bytes().await else {
            return;
        };
        match status {
            201 => observed
                .lock()
                .unwrap()
                .acknowledged
                .entry(key)
                .or_default()
                .push(bytes.to_vec()),
            409 => {}
            other => panic!(
                "unexpected status {other}: {}",
                String::from_utf8_lossy(&bytes)
            ),
        }
    }
}

/// Collects event frames on one connection until it closes or `stop` fires.
async fn watch(mut client: WsClient, stop: tokio::sync::oneshot::Receiver<()>) -> Vec<Value> {
    let mut events = Vec::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return events,
            frame = client.next_json(Duration::from_secs(3600)) => match frame {
                Some(frame) if frame.get("id").is_some() => events.push(frame),
                Some(_) => {}
                None => return events,
            },
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_under_retries_loses_no_acknowledged_response() {
    let kills = env_or("CNERIUM_CRASH_KILLS", 4);
    let keys = env_or("CNERIUM_CRASH_KEYS", 3000);
    let seed = env_or(
        "CNERIUM_CRASH_SEED",
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    );
    println!("crash test: seed {seed}, {kills} kills, {keys} keys");
    let mut rng = Lcg(seed);
    let dir = tempfile::tempdir().unwrap();
    let observed = Arc::new(Mutex::new(Observed::default()));
    let next_key = Arc::new(AtomicU64::new(0));
    let mut connections: Vec<Vec<Value>> = Vec::new();

    for round in 0..=kills {
        let mut service = Service::start(EXAMPLE, dir.path());
        // The URL room's answer comes once the catch-up was read, before the load starts.
        let since = last_ts(&connections).unwrap_or_else(|| "0".to_owned());
        let url = format!("{}?since={since}&room=crash-watch", service.ws);
        let watcher = WsClient::connect(&url).await;
        let (stop_watch, stopped) = tokio::sync::oneshot::channel();
        let watching = tokio::spawn(watch(watcher, stopped));

        let last = round == kills;
        let budget = if last { 50 } else { u64::MAX };
        let workers: Vec<_> = (0..WORKERS)
            .map(|w| {
                let url = service.url("/orders");
                tokio::spawn(load(
                    client(),
                    url,
                    keys,
                    next_key.clone(),
                    rng.next() ^ w as u64,
                    budget,
                    observed.clone(),
                ))
            })
            .collect();

        if last {
            for worker in workers {
                worker.await.unwrap();
            }
        } else {
            tokio::time::sleep(Duration::from_millis(100 + rng.below(500))).await;
            service.kill();
            for worker in workers {
                worker.await.unwrap();
            }
        }
        // Give frames already sent time to arrive before the connection is read out.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = stop_watch.send(());
        connections.push(watching.await.unwrap());
        if !last {
            println!("crash test: kill {} of {kills} done", round + 1);
        }
    }

    // A final run: every key once more. Acknowledged keys must replay what clients got.
    let service = Service::start(EXAMPLE, dir.path());
    let http = client();
    let acknowledged = std::mem::take(&mut observed.lock().unwrap().acknowledged);
    let mut lost = Vec::new();
    let mut committed = HashSet::new();
    let used = next_key.load(Ordering::SeqCst).min(keys) as usize;
    for key in 0..used {
        let response = http
            .post(service.url("/orders"))
            .header("content-type", "application/json")
            .header("idempotency-key", format!("crash-{key}"))
            .body(body_for(key))
            .send()
            .await
            .unwrap();
        let replayed = response.headers().get("idempotent-replayed").is_some();
        let status = response.status().as_u16();
        let body = response.bytes().await.unwrap().to_vec();
        if let Some(seen) = acknowledged.get(&key) {
            committed.insert(key);
            if status != 201 || !replayed || seen.iter().any(|b| *b != body) {
                lost.push((key, status, replayed));
            }
        } else if status == 201 && replayed {
            committed.insert(key);
        }
    }

    // Handler runs per key, told apart by event id: a second committed run of a key would
    // have a fence of its own and so events with other ids.
    let mut ids_by_key: HashMap<String, HashSet<String>> = HashMap::new();
    let mut repeated_on_a_connection = 0;
    let mut received_before = HashSet::new();
    let mut received_again = 0;
    for events in &connections {
        let mut seen = HashSet::new();
        for event in events {
            let id = event["id"].as_str().unwrap().to_owned();
            if !seen.insert(id.clone()) {
                repeated_on_a_connection += 1;
            } else if received_before.contains(&id) {
                received_again += 1;
            }
            let order = event["payload"]["order_id"].as_str().unwrap().to_owned();
            ids_by_key.entry(order).or_default().insert(id);
        }
        received_before.extend(seen);
    }
    let run_twice = ids_by_key.values().filter(|ids| ids.len() > 1).count();
    let undelivered = committed
        .iter()
        .filter(|key| !ids_by_key.contains_key(&format!("ord_crash-{key}")))
        .count();

    let requests = observed.lock().unwrap().requests;
    let acknowledged_count: usize = acknowledged.values().map(Vec::len).sum();
    println!(
        "crash test: kills {kills}, requests {requests}, keys {used}, acknowledged responses \
         {acknowledged_count} on {} keys, acknowledged responses lost {}, handlers run twice \
         {run_twice}, events repeated on one connection {repeated_on_a_connection}, events a \
         later connection received again {received_again}, committed orders whose event no \
         client received {undelivered}",
        acknowledged.len(),
        lost.len(),
    );
    assert!(lost.is_empty(), "acknowledged responses lost: {lost:?}");
    assert_eq!(
        run_twice, 0,
        "a key's handler committed twice: {ids_by_key:?}"
    );
    assert_eq!(repeated_on_a_connection, 0);
    assert_eq!(
        undelivered, 0,
        "committed orders whose event no client received, even after catching up"
    );
}

/// The `ts` of the last event received by the latest connection that received any.
fn last_ts(connections: &[Vec<Value>]) -> Option<String> {
    let last = connections.iter().rev().find_map(|events| events.last())?;
    Some(last["ts"].as_str()?.to_owned())
}
