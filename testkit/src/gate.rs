//! Points where a future stops until a test lets it go: [`Gate`], plus the internal
//! checkpoints and timers the simulator and the fault-injecting store are built on.
//!
//! Nothing here needs an async runtime. A gate wakes its waiters through their wakers; a
//! delay runs its timer on a plain thread.

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Why the future being polled by the simulator stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Park {
    /// It waits at a closed [`Gate`] and makes no progress until the gate opens.
    Gate,
    /// It reached a checkpoint: it may go on, but lets other requests run first.
    Checkpoint,
}

thread_local! {
    /// Set by a gate or a checkpoint when it returns `Pending`, read by the simulator right
    /// after the poll that returned. A poll runs on one thread, so this needs no lock.
    static PARKED: Cell<Option<Park>> = const { Cell::new(None) };
}

/// Forgets any park reason left by an earlier poll on this thread.
pub(crate) fn clear_park() {
    PARKED.with(|p| p.set(None));
}

/// Takes the reason the last poll on this thread stopped, if a gate or checkpoint said so.
pub(crate) fn take_park() -> Option<Park> {
    PARKED.with(Cell::take)
}

fn note_park(park: Park) {
    PARKED.with(|p| p.set(Some(park)));
}

/// A latch that holds futures until it is opened; clones share one latch.
///
/// The simulator uses gates to hold a handler (so that "the first request is still
/// running" is a state a test creates on purpose) and to hold a store call. A test may also
/// use one in its own handler. Once open, a gate stays open.
///
/// ```
/// use cnerium_testkit::Gate;
///
/// let gate = Gate::new();
/// let waiter = gate.clone();
/// gate.open();
/// futures_executor::block_on(waiter.wait());
/// assert!(waiter.is_open());
/// ```
#[derive(Clone, Default)]
pub struct Gate {
    inner: Arc<Mutex<GateState>>,
}

#[derive(Default)]
struct GateState {
    open: bool,
    waiting: usize,
    wakers: Vec<Waker>,
}

impl Gate {
    /// A closed gate.
    pub fn new() -> Self {
        Self::default()
    }

    /// Opens the gate and wakes every future waiting at it.
    pub fn open(&self) {
        let wakers = {
            let mut state = self.lock();
            state.open = true;
            std::mem::take(&mut state.wakers)
        };
        for waker in wakers {
            waker.wake();
        }
    }

    /// Whether the gate was opened.
    pub fn is_open(&self) -> bool {
        self.lock().open
    }

    /// How many futures are waiting at the gate right now.
    pub fn waiting(&self) -> usize {
        self.lock().waiting
    }

    /// Waits until the gate is open; ready at once when it already is.
    pub fn wait(&self) -> GateWait {
        GateWait {
            gate: self.clone(),
            counted: false,
        }
    }

    fn lock(&self) -> MutexGuard<'_, GateState> {
        // No code panics while holding this lock, so a poisoned lock still holds
        // consistent data.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl fmt::Debug for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("Gate")
            .field("open", &state.open)
            .field("waiting", &state.waiting)
            .finish()
    }
}

/// The future of [`Gate::wait`].
#[derive(Debug)]
#[must_use = "futures do nothing unless awaited"]
pub struct GateWait {
    gate: Gate,
    counted: bool,
}

impl Future for GateWait {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.gate.lock();
        if state.open {
            if self.counted {
                state.waiting -= 1;
                drop(state);
                self.counted = false;
            }
            return Poll::Ready(());
        }
        if !state.wakers.iter().any(|w| w.will_wake(cx.waker())) {
            state.wakers.push(cx.waker().clone());
        }
        if !self.counted {
            state.waiting += 1;
            drop(state);
            self.counted = true;
        }
        note_park(Park::Gate);
        Poll::Pending
    }
}

impl Drop for GateWait {
    fn drop(&mut self) {
        if self.counted {
            self.gate.lock().waiting -= 1;
        }
    }
}

/// Lets other simulated requests run before this one goes on.
///
/// Under the simulator, the request stops here until every other runnable request had its
/// turn. Under any other executor it yields once.
pub(crate) fn checkpoint() -> Checkpoint {
    Checkpoint { passed: false }
}

/// The future of [`checkpoint`].
pub(crate) struct Checkpoint {
    passed: bool,
}

impl Future for Checkpoint {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.passed {
            return Poll::Ready(());
        }
        self.passed = true;
        note_park(Park::Checkpoint);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Completes after `duration` of real time, with the timer on a plain thread so that no
/// runtime is needed.
pub(crate) fn sleep(duration: Duration) -> Sleep {
    Sleep {
        deadline: Instant::now() + duration,
        shared: None,
    }
}

/// The future of [`sleep`].
pub(crate) struct Sleep {
    deadline: Instant,
    shared: Option<Arc<Mutex<Option<Waker>>>>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            return Poll::Ready(());
        }
        match &self.shared {
            Some(shared) => {
                *shared.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
            }
            None => {
                let shared = Arc::new(Mutex::new(Some(cx.waker().clone())));
                let timer = shared.clone();
                let deadline = self.deadline;
                std::thread::spawn(move || {
                    std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
                    let waker = timer.lock().unwrap_or_else(|e| e.into_inner()).take();
                    if let Some(waker) = waker {
                        waker.wake();
                    }
                });
                self.shared = Some(shared);
            }
        }
        Poll::Pending
    }
}

/// Yields once to the executor, waking itself, so that other tasks may interleave.
///
/// Handy inside a store under test, to widen a race window on purpose.
pub fn yield_now() -> YieldNow {
    YieldNow { yielded: false }
}

/// The future of [`yield_now`].
#[derive(Debug)]
#[must_use = "futures do nothing unless awaited"]
pub struct YieldNow {
    yielded: bool,
}

impl Future for YieldNow {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.yielded {
            return Poll::Ready(());
        }
        self.yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_waiter_parks_until_the_gate_opens() {
        let gate = Gate::new();
        let mut wait = Box::pin(gate.wait());
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        clear_park();
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        assert_eq!(take_park(), Some(Park::Gate));
        assert_eq!(gate.waiting(), 1);
        gate.open();
        assert!(wait.as_mut().poll(&mut cx).is_ready());
        assert_eq!(gate.waiting(), 0);
    }

    #[test]
    fn a_dropped_waiter_is_no_longer_counted() {
        let gate = Gate::new();
        let mut wait = Box::pin(gate.wait());
        let mut cx = Context::from_waker(Waker::noop());
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        drop(wait);
        assert_eq!(gate.waiting(), 0);
    }

    #[test]
    fn sleep_completes_without_a_runtime() {
        let start = Instant::now();
        futures_executor::block_on(sleep(Duration::from_millis(5)));
        assert!(start.elapsed() >= Duration::from_millis(5));
    }
}
