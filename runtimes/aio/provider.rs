//! A token provider that renews in a task of an async runtime.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::future::poll_fn;
use std::hash::BuildHasher;
use std::marker::PhantomData;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};

use futures_util::future::{Either, select};
use futures_util::task::AtomicWaker;
use log::debug;

use super::Runtime;
use super::stream::CredentialsStream;
use super::thread::run_on_new_thread;
use crate::io::{http, steps};
use crate::{
    Action, Credentials, Error, Event, RefreshPolicy, State, TokenManager, TokenSource, Username,
};

/// How long [`EntraIdProvider::get_credentials_async`] and a new connection wait for the
/// first token by default.
pub const DEFAULT_FIRST_TOKEN_TIMEOUT: Duration = Duration::from_secs(30);

/// Builds an [`EntraIdProvider`].
pub struct ProviderBuilder<R> {
    source: Arc<dyn TokenSource>,
    policy: RefreshPolicy,
    username: Username,
    first_token_timeout: Duration,
    runtime: PhantomData<R>,
}

impl<R: Runtime> ProviderBuilder<R> {
    /// Sets when to refresh and how to retry.
    pub fn refresh_policy(mut self, policy: RefreshPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Sets where the Redis username comes from (default: the token's `oid`).
    pub fn username(mut self, username: Username) -> Self {
        self.username = username;
        self
    }

    /// Sets how long [`EntraIdProvider::get_credentials_async`] and a new connection wait
    /// for the first token (default 30 s).
    pub fn first_token_timeout(mut self, timeout: Duration) -> Self {
        self.first_token_timeout = timeout;
        self
    }

    /// Spawns the renewal task, which requests the first token at once.
    ///
    /// It can be called from any thread, inside or outside `block_on`, because smol and
    /// async-std both spawn onto a global executor.
    pub fn start(self) -> EntraIdProvider<R> {
        let seed = RandomState::new().hash_one(SystemTime::now());
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                manager: TokenManager::new(self.policy, self.username, seed),
                shutdown: false,
            }),
            generation: AtomicU64::new(0),
            renewal: AtomicWaker::new(),
            renewal_woken: AtomicBool::new(false),
            watchers: Mutex::new(Vec::new()),
            source_name: self.source.name().to_owned(),
        });
        R::spawn(renew::<R>(Arc::clone(&shared), self.source));
        EntraIdProvider {
            owner: Arc::new(Owner { shared }),
            first_token_timeout: self.first_token_timeout,
            runtime: PhantomData,
        }
    }
}

/// A source of Redis credentials that keeps its token fresh in a background task.
///
/// Clones share one renewal task. The task stops when the last clone and the last
/// [`CredentialsStream`] are dropped, or at [`shutdown`](Self::shutdown). Connections
/// configured with a provider hold a clone or a stream, so renewal lasts as long as they
/// do.
pub struct EntraIdProvider<R> {
    owner: Arc<Owner>,
    first_token_timeout: Duration,
    runtime: PhantomData<R>,
}

impl<R> Clone for EntraIdProvider<R> {
    fn clone(&self) -> Self {
        EntraIdProvider {
            owner: Arc::clone(&self.owner),
            first_token_timeout: self.first_token_timeout,
            runtime: PhantomData,
        }
    }
}

/// Shuts renewal down when the last handle goes.
struct Owner {
    shared: Arc<Shared>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.shared.shut_down();
    }
}

/// The state the renewal task shares with the handles.
pub(super) struct Shared {
    inner: Mutex<Inner>,
    /// Number of credential changes. It is written only while `inner` is locked, so a
    /// reader that holds the lock reads the count that matches the manager's credentials.
    generation: AtomicU64,
    /// Wakes the renewal task for a forced refresh or shutdown.
    renewal: AtomicWaker,
    renewal_woken: AtomicBool,
    /// Wakes tasks waiting for credentials or for a change. Each waiter owns its waker;
    /// a dropped waiter leaves a dead entry that the next insertion or wake removes.
    watchers: Mutex<Vec<Weak<AtomicWaker>>>,
    source_name: String,
}

pub(super) struct Inner {
    pub(super) manager: TokenManager,
    pub(super) shutdown: bool,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the manager consistent, because every
        // manager method completes its update before returning.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_watchers(&self) -> MutexGuard<'_, Vec<Weak<AtomicWaker>>> {
        // The list stays valid after a panic: each operation is a single push or retain.
        self.watchers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Polls the manager and publishes its events; `None` once shut down.
    fn poll(&self) -> Option<Action> {
        let mut inner = self.lock();
        if inner.shutdown {
            return None;
        }
        let action = inner.manager.poll(SystemTime::now());
        let notify = self.publish(&mut inner);
        drop(inner);
        if notify {
            self.wake_watchers();
        }
        Some(action)
    }

    fn handle_response(&self, outcome: Result<crate::Token, Error>) {
        let mut inner = self.lock();
        inner.manager.handle_response(SystemTime::now(), outcome);
        let notify = self.publish(&mut inner);
        drop(inner);
        if notify {
            self.wake_watchers();
        }
    }

    /// Drains the manager's events; returns whether waiters must look again.
    fn publish(&self, inner: &mut Inner) -> bool {
        let mut notify = false;
        while let Some(event) = inner.manager.poll_event() {
            match event {
                Event::CredentialsChanged(_) => {
                    self.generation.fetch_add(1, Ordering::AcqRel);
                    notify = true;
                }
                Event::Failed(_) | Event::Expired => notify = true,
                // The manager logs failed refreshes; waiters keep waiting.
                _ => {}
            }
        }
        notify
    }

    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn shut_down(&self) {
        self.lock().shutdown = true;
        self.wake_renewal();
        self.wake_watchers();
    }

    fn wake_renewal(&self) {
        self.renewal_woken.store(true, Ordering::Release);
        self.renewal.wake();
    }

    /// Completes at the next [`wake_renewal`](Self::wake_renewal), or at once if one came
    /// since the last wake-up.
    async fn renewal_wakeup(&self) {
        poll_fn(|cx| {
            self.renewal.register(cx.waker());
            if self.renewal_woken.swap(false, Ordering::AcqRel) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }

    fn add_watcher(&self) -> Arc<AtomicWaker> {
        let watcher = Arc::new(AtomicWaker::new());
        let mut watchers = self.lock_watchers();
        watchers.retain(|w| w.strong_count() > 0);
        watchers.push(Arc::downgrade(&watcher));
        watcher
    }

    fn wake_watchers(&self) {
        self.lock_watchers()
            .retain(|watcher| match watcher.upgrade() {
                Some(watcher) => {
                    watcher.wake();
                    true
                }
                None => false,
            });
    }

    /// Waits until `check` returns a value, running it again after each change the
    /// renewal task publishes. Returns `None` when `timeout` passes first.
    ///
    /// `check` gets the manager with the generation that matches it. `watcher` is created
    /// on the first wait and can be reused by later waits of the same caller.
    pub(super) async fn wait_until<R: Runtime, T>(
        &self,
        watcher: &mut Option<Arc<AtomicWaker>>,
        timeout: Option<Duration>,
        mut check: impl FnMut(&Inner, u64) -> Option<T>,
    ) -> Option<T> {
        if let Some(found) = check(&self.lock(), self.generation()) {
            return Some(found);
        }
        let watcher = watcher.get_or_insert_with(|| self.add_watcher());
        let changed = poll_fn(|cx| {
            // Register before looking, so a change published in between still wakes us.
            watcher.register(cx.waker());
            match check(&self.lock(), self.generation()) {
                Some(found) => Poll::Ready(found),
                None => Poll::Pending,
            }
        });
        let Some(timeout) = timeout else {
            return Some(changed.await);
        };
        match select(pin!(changed), pin!(R::sleep(timeout))).await {
            Either::Left((found, _)) => Some(found),
            Either::Right(_) => None,
        }
    }
}

impl<R: Runtime> EntraIdProvider<R> {
    /// Starts building a provider that takes tokens from `source`.
    pub fn builder(source: impl TokenSource) -> ProviderBuilder<R> {
        ProviderBuilder {
            source: Arc::new(source),
            policy: RefreshPolicy::default(),
            username: Username::default(),
            first_token_timeout: DEFAULT_FIRST_TOKEN_TIMEOUT,
            runtime: PhantomData,
        }
    }

    /// Starts a provider with the default settings; see [`ProviderBuilder::start`].
    pub fn new(source: impl TokenSource) -> Self {
        Self::builder(source).start()
    }

    /// Returns the current credentials, waiting for the first token up to the configured
    /// timeout without blocking the executor.
    ///
    /// Expired credentials are never returned: once the token has expired and no new one
    /// has arrived, this fails at once with [`Error::TokenExpired`], or with
    /// [`Error::ShutDown`] after [`shutdown`](Self::shutdown).
    pub async fn get_credentials_async(&self) -> Result<Credentials, Error> {
        self.get_credentials_timeout_async(self.first_token_timeout)
            .await
    }

    /// Like [`get_credentials_async`](Self::get_credentials_async), waiting at most
    /// `timeout` for the first token. With a zero timeout it never waits, and fails with
    /// [`Error::NotAcquired`] while the first token is still on its way.
    pub async fn get_credentials_timeout_async(
        &self,
        timeout: Duration,
    ) -> Result<Credentials, Error> {
        let (_, credentials) = self.credentials_with_generation(timeout).await?;
        Ok(credentials)
    }

    /// Like [`get_credentials_timeout_async`](Self::get_credentials_timeout_async), and
    /// returns the generation that matches the credentials.
    pub(super) async fn credentials_with_generation(
        &self,
        timeout: Duration,
    ) -> Result<(u64, Credentials), Error> {
        let started = Instant::now();
        let shared = self.shared();
        let found = shared
            .wait_until::<R, _>(&mut None, Some(timeout), |inner, generation| {
                match inner.manager.credentials(SystemTime::now()) {
                    Ok(credentials) => Some(Ok((generation, credentials.clone()))),
                    // No token comes after shutdown, so a missing or expired one is final.
                    Err(_) if inner.shutdown => Some(Err(Error::ShutDown)),
                    Err(Error::NotAcquired { .. }) => None,
                    Err(error) => Some(Err(error)),
                }
            })
            .await;
        found.unwrap_or_else(|| {
            let inner = shared.lock();
            if timeout.is_zero() {
                // The caller requested no wait, so report why there are no credentials
                // (not acquired yet) rather than a timed-out wait.
                let credentials = inner.manager.credentials(SystemTime::now()).cloned()?;
                return Ok((shared.generation(), credentials));
            }
            Err(Error::Timeout {
                waited: started.elapsed(),
                last_error: inner.manager.last_error().cloned().map(Box::new),
            })
        })
    }

    /// Returns a stream of the current credentials, then of each change; see
    /// [`CredentialsStream`].
    pub fn credentials_stream(&self) -> CredentialsStream {
        CredentialsStream::new(self.clone())
    }

    /// Counts the credential changes so far.
    pub fn generation(&self) -> u64 {
        self.shared().generation()
    }

    /// Asks for a new token at once, for example after Redis answered `WRONGPASS`.
    /// Concurrent calls cause one request.
    pub fn force_refresh(&self) {
        let shared = self.shared();
        shared.lock().manager.force_refresh(SystemTime::now());
        shared.wake_renewal();
    }

    /// Stops renewal for every clone of this provider: the renewal task ends after any
    /// request in flight, waiters get [`Error::ShutDown`] and credential streams end.
    /// Later calls return the current credentials until they expire, then
    /// [`Error::ShutDown`].
    pub fn shutdown(&self) {
        self.shared().shut_down();
    }

    /// Returns the name of the token source, such as `client secret`.
    pub fn source_name(&self) -> &str {
        &self.shared().source_name
    }

    /// Returns the current generation with the credentials that match it, without
    /// waiting. Expired credentials are never returned.
    pub(super) fn snapshot(&self) -> (u64, Result<Credentials, Error>) {
        let shared = self.shared();
        let inner = shared.lock();
        let credentials = inner.manager.credentials(SystemTime::now()).cloned();
        (shared.generation(), credentials)
    }

    /// Returns credentials newer than generation `rejected`, the one a server rejected
    /// with `WRONGPASS`, with their generation.
    ///
    /// It forces a refresh only while `rejected` is still the current generation, so a
    /// renewal that already replaced the rejected token causes no token request, and
    /// concurrent callers cause one. It waits up to the first-token timeout and returns
    /// `None` when no newer credentials that have not expired arrive by then, when the
    /// provider shuts down, or when token requests failed for good.
    pub(super) async fn credentials_after_rejection(
        &self,
        rejected: u64,
    ) -> Option<(u64, Credentials)> {
        if self.generation() == rejected {
            self.force_refresh();
        }
        let found = self
            .shared()
            .wait_until::<R, _>(
                &mut None,
                Some(self.first_token_timeout),
                |inner, generation| {
                    let now = SystemTime::now();
                    if generation != rejected {
                        let credentials = inner.manager.credentials(now).ok();
                        return Some(credentials.map(|c| (generation, c.clone())));
                    }
                    let failed = matches!(inner.manager.state(now), State::Failed);
                    (inner.shutdown || failed).then_some(None)
                },
            )
            .await;
        found.flatten()
    }

    pub(super) fn shared(&self) -> &Shared {
        &self.owner.shared
    }

    pub(super) fn first_token_timeout(&self) -> Duration {
        self.first_token_timeout
    }
}

impl<R> fmt::Debug for EntraIdProvider<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = &self.owner.shared;
        f.debug_struct("EntraIdProvider")
            .field("source", &shared.source_name)
            .field("generation", &shared.generation())
            .finish_non_exhaustive()
    }
}

/// Renews tokens until shutdown: sleeps until the manager's next deadline, runs each
/// token exchange on a thread of its own, and keeps no lock while a request is in flight.
async fn renew<R: Runtime>(shared: Arc<Shared>, source: Arc<dyn TokenSource>) {
    debug!("token renewal started for {}", shared.source_name);
    let agent = http::agent();
    while let Some(action) = shared.poll() {
        match action {
            Action::RequestToken => {
                let (agent, source) = (agent.clone(), Arc::clone(&source));
                let outcome =
                    run_on_new_thread(move || steps::run_exchange(&agent, source.as_ref())).await;
                shared.handle_response(outcome);
            }
            Action::WaitUntil(deadline) => {
                let delay = deadline
                    .duration_since(SystemTime::now())
                    .unwrap_or_default();
                select(pin!(R::sleep(delay)), pin!(shared.renewal_wakeup())).await;
            }
            Action::AwaitResponse | Action::Idle => shared.renewal_wakeup().await,
        }
    }
    debug!("token renewal stopped");
}
