//! [`RecordingSink`]: an [`EventSink`] that keeps what it is given and can refuse on demand.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use cnerium_core::async_trait;
use cnerium_core::{Event, EventSink, PublishError};

/// An [`EventSink`] that records every batch it accepts, in order.
///
/// Clones share one record, so a test keeps a clone and hands another to the engine. It can
/// be told to refuse the next publications, or all of them, to exercise the path where
/// committed events stay pending until recovery. With [`RecordingSink::forwarding`] it
/// passes accepted batches on to another sink and records only what that sink accepted.
///
/// ```
/// use cnerium_core::{Event, EventSink, Timestamp};
/// use cnerium_testkit::RecordingSink;
///
/// let sink = RecordingSink::new();
/// let event = Event::new("order.created", None, 1, Timestamp::EPOCH).unwrap();
/// sink.refuse_next(1);
/// futures_executor::block_on(async {
///     assert!(sink.publish(&[event.clone()]).await.is_err());
///     assert!(sink.publish(&[event.clone()]).await.is_ok());
/// });
/// assert_eq!(sink.events(), vec![event]);
/// assert_eq!(sink.refused().len(), 1);
/// ```
#[derive(Clone, Default)]
pub struct RecordingSink {
    state: Arc<Mutex<SinkState>>,
    forward: Option<Arc<dyn EventSink>>,
}

#[derive(Default)]
struct SinkState {
    accepted: Vec<Vec<Event>>,
    refused: Vec<Vec<Event>>,
    refuse_next: usize,
    refuse_all: bool,
}

impl RecordingSink {
    /// A sink that accepts and records everything.
    pub fn new() -> Self {
        Self::default()
    }

    /// A sink that hands every batch to `to` and records the batches `to` accepted.
    pub fn forwarding(to: Arc<dyn EventSink>) -> Self {
        Self {
            state: Arc::default(),
            forward: Some(to),
        }
    }

    /// Every accepted event, in publication order.
    pub fn events(&self) -> Vec<Event> {
        self.lock().accepted.iter().flatten().cloned().collect()
    }

    /// Every accepted batch, one per `publish` call, in order.
    pub fn batches(&self) -> Vec<Vec<Event>> {
        self.lock().accepted.clone()
    }

    /// Every batch refused, one per refused `publish` call, in order.
    pub fn refused(&self) -> Vec<Vec<Event>> {
        self.lock().refused.clone()
    }

    /// Refuses the next `count` publications (on top of any refusals already planned).
    pub fn refuse_next(&self, count: usize) {
        self.lock().refuse_next += count;
    }

    /// Refuses every publication while `refusing` is true.
    pub fn set_refusing(&self, refusing: bool) {
        self.lock().refuse_all = refusing;
    }

    /// Forgets every recorded batch; planned refusals stay.
    pub fn clear(&self) {
        let mut state = self.lock();
        state.accepted.clear();
        state.refused.clear();
    }

    fn lock(&self) -> MutexGuard<'_, SinkState> {
        // No code panics while holding this lock, so a poisoned lock still holds
        // consistent data.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl EventSink for RecordingSink {
    async fn publish(&self, events: &[Event]) -> Result<(), PublishError> {
        let refuse = {
            let mut state = self.lock();
            if state.refuse_all {
                true
            } else if state.refuse_next > 0 {
                state.refuse_next -= 1;
                true
            } else {
                false
            }
        };
        if refuse {
            self.lock().refused.push(events.to_vec());
            return Err(PublishError::new("the recording sink was told to refuse"));
        }
        if let Some(forward) = &self.forward {
            if let Err(e) = forward.publish(events).await {
                self.lock().refused.push(events.to_vec());
                return Err(e);
            }
        }
        self.lock().accepted.push(events.to_vec());
        Ok(())
    }
}

impl fmt::Debug for RecordingSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("RecordingSink")
            .field("accepted", &state.accepted.len())
            .field("refused", &state.refused.len())
            .field("forwarding", &self.forward.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cnerium_core::Timestamp;

    fn event(n: u64) -> Event {
        Event::new("thing.created", None, n, Timestamp::EPOCH).unwrap()
    }

    #[test]
    fn a_refusing_sink_records_nothing_as_accepted() {
        let sink = RecordingSink::new();
        sink.set_refusing(true);
        let outcome = futures_executor::block_on(sink.publish(&[event(1)]));
        assert!(outcome.is_err());
        assert!(sink.events().is_empty());
        sink.set_refusing(false);
        futures_executor::block_on(sink.publish(&[event(2)])).unwrap();
        assert_eq!(sink.events(), vec![event(2)]);
    }

    #[test]
    fn a_forwarding_sink_records_only_what_the_target_accepted() {
        let target = RecordingSink::new();
        target.refuse_next(1);
        let sink = RecordingSink::forwarding(Arc::new(target.clone()));
        assert!(futures_executor::block_on(sink.publish(&[event(1)])).is_err());
        futures_executor::block_on(sink.publish(&[event(2)])).unwrap();
        assert_eq!(sink.events(), vec![event(2)]);
        assert_eq!(target.events(), vec![event(2)]);
        assert_eq!(sink.refused(), vec![vec![event(1)]]);
    }
}
