//! The bounded queue of frames waiting to be written to one connection.
//!
//! Publishers push without waiting; the connection's writer pops. When a push finds the
//! queue full, the queue ends with [`End::Overflow`] instead of growing or blocking, and the
//! connection task closes the client.
//!
//! A connection catching up on missed events holds its live events back: they queue as
//! usual (and count against the capacity) but only answers come out until the writer has
//! sent the backlog and calls [`Outbox::release_events`].

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use async_tungstenite::tungstenite::{Message, Utf8Bytes};
use futures_util::task::AtomicWaker;

/// One frame waiting to be written.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Frame {
    /// An answer to the client (`room.joined`, `error`) or a ping.
    Control(Message),
    /// A published event's envelope, with the event id so that the writer can skip an
    /// event the connection already got from its backlog.
    Event { id: Arc<str>, text: Utf8Bytes },
}

impl Frame {
    /// The WebSocket message to write.
    pub(crate) fn into_message(self) -> Message {
        match self {
            Self::Control(message) => message,
            Self::Event { text, .. } => Message::Text(text),
        }
    }
}

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
    frames: VecDeque<Frame>,
    end: Option<End>,
    /// Event frames stay queued until [`Outbox::release_events`].
    holding_events: bool,
}

impl Outbox {
    /// An outbox for `capacity` frames; with `holding_events`, event frames wait for
    /// [`release_events`](Self::release_events).
    pub(crate) fn new(capacity: usize, holding_events: bool) -> Self {
        Self {
            capacity: capacity.max(1),
            state: Mutex::new(State {
                frames: VecDeque::new(),
                end: None,
                holding_events,
            }),
            frame_waker: AtomicWaker::new(),
            end_waker: AtomicWaker::new(),
        }
    }

    /// Queues `frame`; never waits.
    pub(crate) fn push(&self, frame: Frame) -> Result<(), Refused> {
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

    /// Lets held event frames out, in the order they were queued.
    pub(crate) fn release_events(&self) {
        self.lock().holding_events = false;
        self.frame_waker.wake();
    }

    /// The next queued frame, if any, without waiting; while events are held, the next
    /// control frame.
    pub(crate) fn try_pop(&self) -> Option<Frame> {
        let mut state = self.lock();
        if !state.holding_events {
            return state.frames.pop_front();
        }
        // The queue is bounded by the capacity, so the scan is too.
        let next = state
            .frames
            .iter()
            .position(|frame| matches!(frame, Frame::Control(_)))?;
        state.frames.remove(next)
    }

    /// Waits for the next queued frame; stays pending forever once the outbox ended (the
    /// end is reported by [`poll_end`](Self::poll_end)).
    pub(crate) fn poll_frame(&self, cx: &mut Context<'_>) -> Poll<Frame> {
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

    fn control(text: &str) -> Frame {
        Frame::Control(Message::text(text))
    }

    fn event(id: &str) -> Frame {
        Frame::Event {
            id: id.into(),
            text: id.into(),
        }
    }

    #[test]
    fn a_full_queue_ends_with_overflow_and_refuses_later_frames() {
        let outbox = Outbox::new(2, false);
        assert_eq!(outbox.push(control("a")), Ok(()));
        assert_eq!(outbox.push(control("b")), Ok(()));
        assert_eq!(outbox.push(control("c")), Err(Refused::Overflowed));
        assert_eq!(outbox.push(control("d")), Err(Refused::Ended));
        assert_eq!(outbox.try_pop(), None);

        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        assert_eq!(outbox.poll_end(&mut cx), Poll::Ready(End::Overflow));
    }

    #[test]
    fn frames_come_out_in_order() {
        let outbox = Outbox::new(8, false);
        outbox.push(control("a")).unwrap();
        outbox.push(event("b")).unwrap();
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        assert_eq!(outbox.poll_frame(&mut cx), Poll::Ready(control("a")));
        assert_eq!(outbox.try_pop(), Some(event("b")));
        assert!(outbox.poll_frame(&mut cx).is_pending());
        assert!(outbox.poll_end(&mut cx).is_pending());
    }

    #[test]
    fn held_events_wait_for_release_while_answers_pass() {
        let outbox = Outbox::new(8, true);
        outbox.push(event("e1")).unwrap();
        outbox.push(control("joined")).unwrap();
        outbox.push(event("e2")).unwrap();
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());

        assert_eq!(outbox.poll_frame(&mut cx), Poll::Ready(control("joined")));
        assert!(outbox.poll_frame(&mut cx).is_pending());

        outbox.release_events();
        assert_eq!(outbox.try_pop(), Some(event("e1")));
        assert_eq!(outbox.try_pop(), Some(event("e2")));
        assert_eq!(outbox.try_pop(), None);
    }

    #[test]
    fn held_events_count_against_the_capacity() {
        let outbox = Outbox::new(2, true);
        outbox.push(event("e1")).unwrap();
        outbox.push(event("e2")).unwrap();
        assert_eq!(outbox.push(event("e3")), Err(Refused::Overflowed));
    }
}
