//! An unbounded queue with one consumer task, which can be closed from either side.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

/// A FIFO queue read by one task at a time. Producers never wait, so a slow consumer
/// only makes the queue longer.
pub(super) struct Queue<T> {
    state: Mutex<State<T>>,
    consumer: AtomicWaker,
}

struct State<T> {
    items: VecDeque<T>,
    closed: bool,
}

impl<T> Queue<T> {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Queue {
            state: Mutex::new(State {
                items: VecDeque::new(),
                closed: false,
            }),
            consumer: AtomicWaker::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Every operation is a single push, pop or flag write, so the state stays valid
        // after a panic elsewhere.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends `item` and wakes the consumer; returns `false`, dropping `item`, once the
    /// queue is closed.
    pub(super) fn push(&self, item: T) -> bool {
        let mut state = self.lock();
        if state.closed {
            return false;
        }
        state.items.push_back(item);
        drop(state);
        self.consumer.wake();
        true
    }

    /// Rejects later pushes. The consumer still gets the items already queued, then `None`.
    pub(super) fn close(&self) {
        self.lock().closed = true;
        self.consumer.wake();
    }

    pub(super) fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Takes the oldest item without waiting.
    pub(super) fn try_pop(&self) -> Option<T> {
        self.lock().items.pop_front()
    }

    /// Takes the oldest item; `Ready(None)` once the queue is closed and empty.
    pub(super) fn poll_pop(&self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        // Register before looking, so a push in between still wakes the consumer.
        self.consumer.register(cx.waker());
        let mut state = self.lock();
        match state.items.pop_front() {
            Some(item) => Poll::Ready(Some(item)),
            None if state.closed => Poll::Ready(None),
            None => Poll::Pending,
        }
    }

    /// Waits for the oldest item; `None` once the queue is closed and empty.
    pub(super) async fn pop(&self) -> Option<T> {
        poll_fn(|cx| self.poll_pop(cx)).await
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;

    #[test]
    fn pops_in_order_until_closed() {
        let queue = Queue::new();
        assert!(queue.push(1));
        assert!(queue.push(2));
        queue.close();
        assert!(!queue.push(3), "push after close");
        assert_eq!(queue.pop().now_or_never(), Some(Some(1)));
        assert_eq!(queue.try_pop(), Some(2));
        assert_eq!(queue.pop().now_or_never(), Some(None));
    }

    #[test]
    fn empty_open_queue_waits() {
        let queue = Queue::<u8>::new();
        assert_eq!(queue.pop().now_or_never(), None);
        assert!(!queue.is_closed());
    }
}
