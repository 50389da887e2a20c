//! Bytes the in-memory store holds per record, counted by the global allocator.
//!
//! ```text
//! cargo run --release --example bench_memory -- --records 100000
//! ```
//!
//! Runs `--records` first requests through a durable route over a fresh `MemoryStore`
//! twice: once with a handler that answers a 200-byte JSON body and emits nothing, once
//! with the orders handler of the examples (a 200-byte answer and one `order.created`
//! event stored with it). Keys are UUID-shaped, 36 characters. After each run the bytes
//! still allocated, divided by the records held, is the cost of one record: its key, its
//! share of the hash table, the stored response and events. The target, for the record of
//! a response without events, is at most the response's size plus 256 bytes; the run with
//! the orders event reports what the event adds.
//!
//! The allocator also counts live allocations by size, so the largest contributors per
//! record are printed next to each figure.

#[path = "../shared/orders.rs"]
mod orders;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};

use bytes::Bytes;
use clap::Parser;
use cnerium::stores::MemoryStore;
use cnerium::{
    DiscardEvents, DurableRequest, DurableResponse, DurableRoute, Engine, EngineConfig, Timestamp,
};
use futures_executor::block_on;

/// Counts bytes and allocations live at any moment, and live allocations per size class.
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);
static LIVE_ALLOCS: AtomicIsize = AtomicIsize::new(0);

/// Size classes of 16 bytes up to 4 KiB; the last class holds everything larger.
const CLASS: usize = 16;
const CLASSES: usize = 257;
static LIVE_BY_CLASS: [AtomicUsize; CLASSES] = [const { AtomicUsize::new(0) }; CLASSES];

fn class(size: usize) -> usize {
    (size.div_ceil(CLASS)).min(CLASSES - 1)
}

fn count_alloc(size: usize) {
    LIVE_BYTES.fetch_add(size as isize, Ordering::Relaxed);
    LIVE_ALLOCS.fetch_add(1, Ordering::Relaxed);
    LIVE_BY_CLASS[class(size)].fetch_add(1, Ordering::Relaxed);
}

fn count_dealloc(size: usize) {
    LIVE_BYTES.fetch_sub(size as isize, Ordering::Relaxed);
    LIVE_ALLOCS.fetch_sub(1, Ordering::Relaxed);
    LIVE_BY_CLASS[class(size)].fetch_sub(1, Ordering::Relaxed);
}

// SAFETY: every call is forwarded to the system allocator unchanged; the counters only
// observe sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            count_alloc(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            count_alloc(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as for `alloc`.
        unsafe { System.dealloc(ptr, layout) };
        count_dealloc(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            count_dealloc(layout.size());
            count_alloc(new_size);
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Bytes per record of the in-memory store, for a 200-byte response.
#[derive(Debug, Parser)]
#[command(name = "bench_memory")]
struct Args {
    /// Records to store in each run.
    #[arg(long, default_value_t = 100_000)]
    records: u64,

    /// Size of the stored response body, in bytes.
    #[arg(long, default_value_t = 200)]
    response_bytes: usize,
}

/// Bytes over the response size one record may cost.
const TARGET_OVERHEAD: usize = 256;

struct Snapshot {
    bytes: isize,
    allocs: isize,
    by_class: Vec<usize>,
    rss: u64,
}

fn snapshot() -> Snapshot {
    Snapshot {
        bytes: LIVE_BYTES.load(Ordering::Relaxed),
        allocs: LIVE_ALLOCS.load(Ordering::Relaxed),
        by_class: LIVE_BY_CLASS
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect(),
        rss: resident_bytes(),
    }
}

/// Resident set size from /proc, 0 where it cannot be read.
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).unwrap_or(4096)
}

/// A UUID-shaped key, distinct for each `i`.
fn key(i: u64) -> String {
    let h = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        (h >> 32) as u32,
        (h >> 16) as u16,
        (h >> 4) & 0xfff,
        i & 0xfff,
        i
    )
}

fn fresh_engine() -> (Engine, Arc<MemoryStore>) {
    let store = Arc::new(MemoryStore::new());
    let clock = || Timestamp::from_millis(1_800_000_000_000);
    let engine = Engine::with_parts(
        store.clone(),
        Arc::new(DiscardEvents),
        Arc::new(clock),
        EngineConfig::default(),
    );
    (engine, store)
}

/// A handler answering a JSON body of exactly `size` bytes, emitting nothing.
fn plain_route(engine: &Engine, size: usize) -> DurableRoute {
    let body = |padding: usize| serde_json::json!({"ok": true, "padding": "x".repeat(padding)});
    let bare = serde_json::to_vec(&body(0)).map_or(0, |v| v.len());
    let padding = size.saturating_sub(bare);
    engine.route(
        "orders.create",
        move |_request: DurableRequest| async move { DurableResponse::created(body(padding)) },
    )
}

/// A product id that makes the orders handler answer `size` bytes for a 36-character key.
fn product_id_for(size: usize) -> String {
    let answer = |product_id: &str| {
        format!(
            r#"{{"ok":true,"order_id":"ord_{}","product_id":"{product_id}","quantity":2}}"#,
            key(0)
        )
        .len()
    };
    "p".repeat(size.saturating_sub(answer("")).max(1))
}

struct Run {
    label: &'static str,
    records: u64,
    response_bytes: usize,
    bytes: f64,
    allocs: f64,
    rss: f64,
    top: Vec<(usize, f64)>,
}

fn measure(label: &'static str, route: &DurableRoute, store: &MemoryStore, args: &Args) -> Run {
    let body = Bytes::from(format!(
        r#"{{"product_id":"{}","quantity":2}}"#,
        product_id_for(args.response_bytes)
    ));
    let request = |i: u64| {
        http::Request::post("/orders")
            .header("content-type", "application/json")
            .header("idempotency-key", key(i))
            .body(body.clone())
            .expect("a valid request")
    };

    // One request first, so that lazily built statics and the route's first allocations
    // are not counted per record; its record is counted below like every other.
    let mut response_bytes = 0;
    block_on(async {
        let response = route.handle(request(0)).await;
        assert_eq!(response.status(), 201, "the handler must succeed");
        response_bytes = response.body().len();
    });
    let before = snapshot();
    let progress = (args.records / 4).max(1);
    block_on(async {
        for i in 1..args.records {
            let response = route.handle(request(i)).await;
            debug_assert_eq!(response.status(), 201);
            if i % progress == 0 {
                eprintln!("  {label}: {i} records");
            }
        }
    });
    let after = snapshot();
    let records = store.len() as u64;
    assert_eq!(
        records, args.records,
        "every request must have stored a record"
    );

    let stored = (records - 1) as f64;
    let mut top: Vec<(usize, f64)> = after
        .by_class
        .iter()
        .zip(&before.by_class)
        .enumerate()
        .map(|(class, (a, b))| (class * CLASS, (*a as f64 - *b as f64) / stored))
        .filter(|(_, per_record)| *per_record >= 0.05)
        .collect();
    top.sort_by(|a, b| (b.0 as f64 * b.1).total_cmp(&(a.0 as f64 * a.1)));
    top.truncate(6);

    Run {
        label,
        records,
        response_bytes,
        bytes: (after.bytes - before.bytes) as f64 / stored,
        allocs: (after.allocs - before.allocs) as f64 / stored,
        rss: (after.rss as f64 - before.rss as f64) / stored,
        top,
    }
}

/// Prints one run; `without_events`, given for a run with events, is the same run without
/// them: the target is for a record of a response alone, so the other run reports what
/// its events add instead.
fn report(run: &Run, without_events: Option<&Run>) {
    let verdict = match without_events {
        None => {
            let limit = run.response_bytes + TARGET_OVERHEAD;
            let verdict = if run.bytes <= limit as f64 {
                "target met"
            } else {
                "TARGET MISSED"
            };
            format!("target <= {limit} B: {verdict}")
        }
        Some(base) => format!("its events add {:.0} B", run.bytes - base.bytes),
    };
    println!(
        "{:<28} {:>7} records  {:>4} B response  {:>7.0} B/record (allocator)  {:>5.1} \
         allocations/record  {:>7.0} B/record (RSS)  {verdict}",
        run.label, run.records, run.response_bytes, run.bytes, run.allocs, run.rss
    );
    let classes: Vec<String> = run
        .top
        .iter()
        .map(|(size, n)| {
            if *size >= (CLASSES - 1) * CLASS {
                format!("{n:.2} x >4096 B")
            } else {
                format!("{n:.2} x {}..{} B", size.saturating_sub(CLASS - 1), size)
            }
        })
        .collect();
    println!(
        "{:<28} live allocations per record by size: {}",
        "",
        classes.join(", ")
    );
}

fn main() {
    let args = Args::parse();
    println!(
        "bench_memory: {} records per run, {}-byte responses, 36-character keys",
        args.records, args.response_bytes
    );
    println!(
        "inline sizes: RecordKey {} B, Record {} B, StoredResponse {} B, Event {} B",
        std::mem::size_of::<cnerium::RecordKey>(),
        std::mem::size_of::<cnerium::Record>(),
        std::mem::size_of::<cnerium::StoredResponse>(),
        std::mem::size_of::<cnerium::Event>(),
    );

    let runs = {
        let (engine, store) = fresh_engine();
        let route = plain_route(&engine, args.response_bytes);
        let without_events = measure("response, no event", &route, &store, &args);
        drop((route, engine, store));

        let (engine, store) = fresh_engine();
        let route = engine.route(orders::CREATE_ORDER, orders::create_order);
        let with_event = measure("orders handler, one event", &route, &store, &args);
        [without_events, with_event]
    };
    report(&runs[0], None);
    report(&runs[1], Some(&runs[0]));
}
