//! The bounded queue of frames waiting to be written to one connection.
//!
//! Publishers push without waiting; the connection's writer pops. When a push finds the
//! queue full, the queue ends with [`End::Overflow`] instead of growing or blocking, and the
//! connection task closes the client.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll};

use async_tungstenite::tungstenite::Message;
use futures_util::task::AtomicWaker;

/// Why a connection's outbox stopped taking frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// A push found the queue full: the client does not read fast enough.
    Overflow,
    /// The application asked every connection to close.
    Shutdown,
}

/// The outbox refused a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// This push found the queue full and ended it.
    Overflowed,
    /// The outbox had already ended.
    Ended,
}

pub(crate) struct Outbox {
    capacity: usize,
    state: Mutex<State>,
    frame_waker: AtomicWaker,
    end_waker: AtomicWaker,
}

struct State {
    frames: VecDeque<Message>,
    end: Option<End>,
}

impl Outbox {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            state: Mutex::new(State {
                frames: VecDeque::new(),
                end: None,
            }),
            frame_waker: AtomicWaker::new(),
            end_waker: AtomicWaker::new(),
        }
    }

    /// Queues `frame`; never waits.
    pub(crate) fn push(&self, frame: Message) -> Result<(), Refused> {
        let mut state = self.lock();
        if state.end.is_some() {
            return Err(Refused::Ended);
        }
        if state.frames.len() >= self.capacity {
            state.end = Some(End::Overflow);
            state.frames.clear();
            drop(state);
            self.end_waker.wake();
            return Err(Refused::Overflowed);
        }
        state.frames.push_back(frame);
        drop(state);
        self.frame_waker.wake();
        Ok(())
    }

    /// Ends the outbox with `end` unless it already ended.
    pub(crate) fn end(&self, end: End) {
        let mut state = self.lock();
        if state.end.is_none() {
            state.end = Some(end);
            state.frames.clear();
        }
        drop(state);
        self.end_waker.wake();
    }

    /// The next queued frame, if any, without waiting.
    pub(crate) fn try_pop(&self) -> Option<Message> {
        self.lock().frames.pop_front()
    }

    /// Waits for the next queued frame; stays pending forever once the outbox ended (the
    /// end is reported by [`poll_end`](Self::poll_end)).
    pub(crate) fn poll_frame(&self, cx: &mut Context<'_>) -> Poll<Message> {
        // Register before looking, so a push between the look and the return wakes us.
        self.frame_waker.register(cx.waker());
        match self.try_pop() {
            Some(frame) => Poll::Ready(frame),
            None => Poll::Pending,
        }
    }

    /// Waits until the outbox ends.
    pub(crate) fn poll_end(&self, cx: &mut Context<'_>) -> Poll<End> {
        self.end_waker.register(cx.waker());
        match self.lock().end {
            Some(end) => Poll::Ready(end),
            None => Poll::Pending,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No code that can panic runs under this lock, so a poisoned lock still holds a
        // consistent queue.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_ends_with_overflow_and_refuses_later_frames() {
        let outbox = Outbox::new(2);
        assert_eq!(outbox.push(Message::text("a")), Ok(()));
        assert_eq!(outbox.push(Message::text("b")), Ok(()));
        assert_eq!(outbox.push(Message::text("c")), Err(Refused::Overflowed));
        assert_eq!(outbox.push(Message::text("d")), Err(Refused::Ended));
        assert_eq!(outbox.try_pop(), None);

        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        assert_eq!(outbox.poll_end(&mut cx), Poll::Ready(End::Overflow));
    }

    #[test]
    fn frames_come_out_in_order() {
        let outbox = Outbox::new(8);
        outbox.push(Message::text("a")).unwrap();
        outbox.push(Message::text("b")).unwrap();
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        assert_eq!(outbox.poll_frame(&mut cx), Poll::Ready(Message::text("a")));
        assert_eq!(outbox.try_pop(), Some(Message::text("b")));
        assert!(outbox.poll_frame(&mut cx).is_pending());
        assert!(outbox.poll_end(&mut cx).is_pending());
    }
}
