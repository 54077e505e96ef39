//! Token exchanges on a thread of their own.

use std::any::Any;
use std::future::{Future, poll_fn};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;

use futures_util::task::AtomicWaker;
use log::warn;

type Outcome<T> = Result<T, Box<dyn Any + Send>>;

/// The result of a thread's work and the task waiting for it.
struct Slot<T> {
    outcome: Mutex<Option<Outcome<T>>>,
    waker: AtomicWaker,
}

/// Runs `work` on a new thread and completes with its result; a panic in `work` is
/// resumed in the task that awaits it.
///
/// The renewal task sends about one token request per token lifetime, so a thread per
/// request costs a thread start (tens of microseconds) and leaves nothing behind. The
/// runtimes' blocking pools would keep a thread that wakes every 500 ms while idle: the
/// `blocking` crate (1.7.0), under both `smol::unblock` and async-std's
/// `spawn_blocking`, stops an idle thread only when the pool has more threads than its
/// limit. When the operating system cannot start a thread, `work` runs on the calling
/// thread instead, which blocks that executor thread for the length of the request.
pub(super) fn run_on_new_thread<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> impl Future<Output = T> + Send {
    let slot = Arc::new(Slot {
        outcome: Mutex::new(None),
        waker: AtomicWaker::new(),
    });
    let writer = Arc::clone(&slot);
    let work = Arc::new(Mutex::new(Some(work)));
    let thread_work = Arc::clone(&work);
    let spawned = std::thread::Builder::new()
        .name("redis-entraid-token".to_owned())
        .spawn(move || {
            let work = take(&thread_work);
            let outcome = catch_unwind(AssertUnwindSafe(work));
            *writer
                .outcome
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(outcome);
            writer.waker.wake();
        });
    if let Err(error) = spawned {
        warn!("cannot start a thread for the token request ({error}); running it inline");
        let outcome = catch_unwind(AssertUnwindSafe(take(&work)));
        *slot.outcome.lock().unwrap_or_else(PoisonError::into_inner) = Some(outcome);
    }
    poll_fn(move |cx| {
        // Register before looking, so a result stored in between still wakes the task.
        slot.waker.register(cx.waker());
        let outcome = slot
            .outcome
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        match outcome {
            Some(Ok(value)) => Poll::Ready(value),
            Some(Err(panic)) => resume_unwind(panic),
            None => Poll::Pending,
        }
    })
}

/// Takes the work out of its cell; it is there exactly once, for the thread or for the
/// inline fallback.
fn take<W>(cell: &Mutex<Option<W>>) -> W {
    cell.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
        .expect("the token request runs once")
}

#[cfg(test)]
mod tests {
    use std::panic::catch_unwind;
    use std::pin::pin;
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};
    use std::thread::Thread;

    use super::*;

    struct Unpark(Thread);

    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }

    fn block_on<F: Future>(future: F) -> F::Output {
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut context = Context::from_waker(&waker);
        let mut future = pin!(future);
        loop {
            match future.as_mut().poll(&mut context) {
                Poll::Ready(value) => return value,
                Poll::Pending => std::thread::park(),
            }
        }
    }

    #[test]
    fn work_runs_on_named_thread() {
        let name = block_on(run_on_new_thread(|| {
            std::thread::current().name().map(str::to_owned)
        }));
        assert_eq!(name.as_deref(), Some("redis-entraid-token"));
    }

    #[test]
    fn panic_resumes_in_awaiting_task() {
        let outcome = catch_unwind(|| block_on(run_on_new_thread(|| -> u32 { panic!("boom") })));
        let panic = outcome.expect_err("the panic should reach the caller");
        assert_eq!(panic.downcast_ref::<&str>(), Some(&"boom"));
    }
}
