//! Time per `EntraIdProvider::get_credentials()` call on a warm provider, from one
//! thread and from two threads calling at once.
//!
//! The provider holds a one-hour token from a mock endpoint on loopback, so no call
//! below requests a token. Each case is measured twice: in wall-clock time, and in the
//! calling thread's CPU time. On a machine that other processes keep busy, two threads
//! often wait for a core, which inflates their wall-clock time but not their CPU time;
//! contention on shared memory (a lock, a shared reference count) inflates both.
//! Run with `cargo bench --bench credentials`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use redis_entraid::blocking::EntraIdProvider;

use common::plain_endpoint::PlainTokenEndpoint;

#[derive(Clone, Copy)]
enum Clock {
    Wall,
    ThreadCpu,
}

fn cached_credentials(c: &mut Criterion) {
    let endpoint = PlainTokenEndpoint::start(Duration::from_secs(3600), None);
    let provider = EntraIdProvider::new(endpoint.credential());
    provider
        .get_credentials()
        .expect("the mock endpoint issues a token");

    let mut group = c.benchmark_group("get_credentials");
    for (name, threads, clock) in [
        ("one_thread", 1, Clock::Wall),
        ("two_threads", 2, Clock::Wall),
        ("one_thread_cpu", 1, Clock::ThreadCpu),
        ("two_threads_cpu", 2, Clock::ThreadCpu),
    ] {
        group.bench_function(name, |b| {
            b.iter_custom(|iterations| concurrent_calls(&provider, threads, iterations, clock))
        });
    }
    group.finish();

    c.bench_function("generation", |b| {
        b.iter(|| black_box(provider.generation()))
    });
}

/// Runs `iterations` calls on each of `threads` threads, started together, and returns
/// the slowest thread's time on `clock`: the time per call with that many callers.
fn concurrent_calls(
    provider: &EntraIdProvider,
    threads: usize,
    iterations: u64,
    clock: Clock,
) -> Duration {
    let start = Barrier::new(threads);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    start.wait();
                    let (wall, cpu) = (Instant::now(), thread_cpu_time());
                    for _ in 0..iterations {
                        black_box(provider.get_credentials()).ok();
                    }
                    match clock {
                        Clock::Wall => wall.elapsed(),
                        Clock::ThreadCpu => thread_cpu_time().saturating_sub(cpu),
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| worker.join().expect("benchmark thread panicked"))
            .max()
            .unwrap_or_default()
    })
}

/// Returns the CPU time the calling thread has used (`CLOCK_THREAD_CPUTIME_ID`).
fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec for the duration of the call.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    assert_eq!(status, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = cached_credentials
}
criterion_main!(benches);
