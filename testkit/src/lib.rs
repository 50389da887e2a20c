//! Test tools for Cnerium: prove that retries are safe in your service, and that a store
//! you wrote keeps the [`Store`](cnerium_core::Store) contract.
//!
//! Add it as a dev-dependency. Nothing here needs an async runtime: the simulator is
//! driven by any executor (or by [`block_on`]), and the conformance suite blocks on its
//! own.
//!
//! - [`Simulation`]: the real engine over any store, a manual clock and a recording sink,
//!   with requests interleaved on purpose.
//! - [`FaultyStore`] and [`FaultPlan`]: fail, hold or delay the n-th call of a store
//!   method, or every call matching a rule.
//! - [`RecordingSink`]: keeps every published event in order; refuses on demand.
//! - [`properties`]: random schedules checked step by step against a reference [`model`].
//! - [`conformance`]: every rule of the `Store` documentation, checked against your store.
//!
//! # Simulating retries
//!
//! A [`Simulation`] sends `POST /things` requests with an idempotency key through a durable
//! route whose handler does what each [`SimRequest`] says: answer (201 by default, with
//! two staged events), panic, fail, or hold until the test releases it. It reports every
//! response, handler run and published event.
//!
//! ```
//! use std::time::Duration;
//! use cnerium_store_memory::MemoryStore;
//! use cnerium_testkit::{SimRequest, Simulation, StoreMethod, block_on};
//!
//! let mut sim = Simulation::new(MemoryStore::new());
//! block_on(async {
//!     // The first request is still running when its retry arrives.
//!     let first = sim.send(SimRequest::new("k1", "{}").hold()).await.id();
//!     let retry = sim.send(SimRequest::new("k1", "{}")).await.answered();
//!     assert_eq!(retry.status, 409);
//!
//!     // It hangs past its 30 s lease: a retry takes the key over and runs the handler.
//!     sim.advance(Duration::from_secs(31));
//!     let takeover = sim.send(SimRequest::new("k1", "{}")).await.answered();
//!     assert_eq!(takeover.status, 201);
//!
//!     // The first handler finally returns; its result is refused, not stored.
//!     let late = sim.release(first).await.unwrap();
//!     assert_eq!(late.status, 409);
//!
//!     // The store fails the next commit: 500, nothing published, the key is free again.
//!     sim.faults().fail_next(StoreMethod::Complete);
//!     let failed = sim.send(SimRequest::new("k2", "{}")).await.answered();
//!     assert_eq!(failed.status, 500);
//! });
//! assert_eq!(sim.handler_runs().len(), 3);
//! assert_eq!(sim.events().len(), 2); // only the takeover committed
//! ```
//!
//! [`Simulation::send_concurrently`] sends several requests at once (every claim happens
//! before any handler finishes), [`Simulation::restart`] drops what is in flight and
//! starts a new engine over the same store (reopened by a closure for a persistent store),
//! whose recovery publishes events left pending.
//!
//! # Checking the properties
//!
//! [`properties`] generates schedules of requests (keys, bodies and callers from small
//! pools), retries, concurrent sends, clock jumps past the lease and the retention, store
//! faults, sink refusals, handler failures and restarts. Each step runs on a simulation and
//! on the reference [`model`], and the answers, handler runs and published events must
//! agree. A failure shrinks to a short schedule and names the broken
//! [`Property`](properties::Property).
//!
//! ```
//! use cnerium_store_memory::MemoryStore;
//! use cnerium_testkit::properties::{self, Search};
//!
//! // `Search::default()` tries `PROPTEST_CASES` schedules (128 unless set).
//! if let Err(failure) = properties::check_store(MemoryStore::new, Search::cases(32)) {
//!     panic!("{failure}");
//! }
//! ```
//!
//! In a `proptest!` block, use [`properties::schedule`] as the strategy and
//! [`properties::check_schedule`] as the body.
//!
//! # Proving a store
//!
//! ```
//! use cnerium_store_memory::MemoryStore;
//!
//! // Panics naming every failed check; returns the report otherwise.
//! let report = cnerium_testkit::conformance::run(MemoryStore::new);
//! assert_eq!(report.failures().len(), 0);
//! ```
//!
//! A store that persists passes a [`conformance::persistent`] factory, which also runs the
//! restart checks. The `custom_store` example of the `cnerium` crate proves a store written
//! in application code this way.
//!
//! # Cargo features
//!
//! - `tokio` (off by default): [`bench`](mod@bench), what a store costs next to others, and
//!   `conformance::OnRuntime`, which runs each call of a store
//!   built on tokio I/O (PostgreSQL, Redis) on a tokio runtime, so that the suite's own
//!   executor can drive it.

#![warn(missing_docs)]

#[cfg(feature = "tokio")]
pub mod bench;
pub mod conformance;
pub mod faulty;
mod gate;
pub mod model;
#[cfg(feature = "tokio")]
mod on_runtime;
pub mod properties;
pub mod sim;
pub mod sink;

pub use faulty::{Call, Fault, FaultPlan, FaultyStore, StoreMethod, Trigger};
pub use gate::{Gate, GateWait, YieldNow, yield_now};
pub use sim::{
    Behaviour, HandlerRun, Outcome, RequestId, Sent, SimRequest, SimResponse, Simulation,
    SimulationBuilder, block_on,
};
pub use sink::RecordingSink;
