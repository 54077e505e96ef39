//! Time per `EntraIdProvider::get_credentials()` call on a warm provider, from one
//! thread and from two threads calling at once.
//!
//! The provider holds a one-hour token from a mock endpoint on loopback, so no call
//! below requests a token. Run with `cargo bench --bench credentials`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use redis_entraid::blocking::EntraIdProvider;

use common::plain_endpoint::PlainTokenEndpoint;

fn cached_credentials(c: &mut Criterion) {
    let endpoint = PlainTokenEndpoint::start(Duration::from_secs(3600), None);
    let provider = EntraIdProvider::new(endpoint.credential());
    provider
        .get_credentials()
        .expect("the mock endpoint issues a token");

    let mut group = c.benchmark_group("get_credentials");
    group.bench_function("one_thread", |b| {
        b.iter(|| black_box(provider.get_credentials()))
    });
    group.bench_function("two_threads", |b| {
        b.iter_custom(|iterations| concurrent_calls(&provider, 2, iterations))
    });
    group.finish();

    c.bench_function("generation", |b| b.iter(|| black_box(provider.generation())));
}

/// Runs `iterations` calls on each of `threads` threads, started together, and returns
/// the slowest thread's time, so the result is the time per call with that many
/// callers.
fn concurrent_calls(provider: &EntraIdProvider, threads: usize, iterations: u64) -> Duration {
    let start = Barrier::new(threads);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    start.wait();
                    let started = Instant::now();
                    for _ in 0..iterations {
                        black_box(provider.get_credentials()).ok();
                    }
                    started.elapsed()
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

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = cached_credentials
}
criterion_main!(benches);
