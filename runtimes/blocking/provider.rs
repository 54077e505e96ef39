//! A token provider that renews on its own thread.

use std::cell::RefCell;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use log::{debug, warn};

use crate::io::{http, steps};
use crate::{
    Action, Credentials, Error, Event, RefreshPolicy, State, Token, TokenManager, TokenSource,
    Username,
};

/// How long [`EntraIdProvider::get_credentials`] waits for the first token by default.
pub const DEFAULT_FIRST_TOKEN_TIMEOUT: Duration = Duration::from_secs(30);

/// Source of [`Shared::id`]; 0 is never handed out.
static NEXT_PROVIDER_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// The credentials this thread last read from a provider under its lock, so later
    /// reads of the same generation need no lock and write no memory that other threads
    /// share. Holds a private copy of the token until the thread reads another provider
    /// or ends.
    static CACHED: RefCell<Option<CachedCredentials>> = const { RefCell::new(None) };
}

struct CachedCredentials {
    provider: u64,
    generation: u64,
    credentials: Credentials,
}

/// Returns this thread's cached credentials of `provider` if they belong to
/// `generation` and have not expired at `now`.
fn cached(provider: u64, generation: u64, now: SystemTime) -> Option<Credentials> {
    CACHED
        .try_with(|cache| {
            let cache = cache.borrow();
            let entry = cache.as_ref()?;
            let current = entry.provider == provider && entry.generation == generation;
            (current && !entry.credentials.is_expired(now)).then(|| entry.credentials.clone())
        })
        .ok()
        .flatten()
}

/// Stores a copy of `credentials` as this thread's cache for `provider`.
///
/// The copy has its own token allocation: a clone would share the reference count of
/// the provider's token, and every thread that clones it would write that count.
fn cache(provider: u64, generation: u64, credentials: &Credentials) {
    let copy = Credentials::new(
        credentials.username(),
        credentials.password(),
        credentials.expires_on(),
    );
    // Fails only while the thread is being torn down; the next read then locks.
    let _ = CACHED.try_with(|cache| {
        *cache.borrow_mut() = Some(CachedCredentials {
            provider,
            generation,
            credentials: copy,
        });
    });
}

/// Builds an [`EntraIdProvider`].
pub struct ProviderBuilder {
    source: Arc<dyn TokenSource>,
    policy: RefreshPolicy,
    username: Username,
    first_token_timeout: Duration,
}

impl ProviderBuilder {
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

    /// Sets how long [`EntraIdProvider::get_credentials`] waits for the first token
    /// (default 30 s).
    pub fn first_token_timeout(mut self, timeout: Duration) -> Self {
        self.first_token_timeout = timeout;
        self
    }

    /// Starts the renewal thread, which requests the first token at once.
    pub fn start(self) -> EntraIdProvider {
        let seed = RandomState::new().hash_one(SystemTime::now());
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                manager: TokenManager::new(self.policy, self.username, seed),
                shutdown: false,
            }),
            wake: Condvar::new(),
            changed: Condvar::new(),
            generation: AtomicU64::new(0),
            id: NEXT_PROVIDER_ID.fetch_add(1, Ordering::Relaxed),
            source_name: self.source.name().to_owned(),
        });
        let worker = Arc::clone(&shared);
        let source = self.source;
        let thread = std::thread::Builder::new()
            .name("redis-entraid-renewal".to_owned())
            .spawn(move || run(&worker, source.as_ref()))
            .expect("the OS could not start the token renewal thread");
        EntraIdProvider {
            owner: Arc::new(Owner {
                shared,
                thread: Some(thread),
            }),
            first_token_timeout: self.first_token_timeout,
        }
    }
}

/// A source of Redis credentials that keeps its token fresh in the background.
///
/// Clones share one renewal thread. The thread stops when the last clone is dropped;
/// connections made from a provider hold a clone, so renewal lasts as long as they do.
/// Dropping the last clone waits for the thread to end, which takes up to the request
/// timeout (10 s by default) when a token request is in flight.
#[derive(Clone)]
pub struct EntraIdProvider {
    owner: Arc<Owner>,
    first_token_timeout: Duration,
}

struct Owner {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    inner: Mutex<Inner>,
    /// Wakes the renewal thread: a forced refresh or shutdown.
    wake: Condvar,
    /// Wakes callers waiting for credentials or for a change.
    changed: Condvar,
    /// Counts credential changes, so connections can check for one without locking. It
    /// changes only while `inner` is locked, together with the manager's credentials.
    generation: AtomicU64,
    /// Tells this provider's entries in the thread-local cache from other providers'.
    id: u64,
    source_name: String,
}

struct Inner {
    manager: TokenManager,
    shutdown: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the manager consistent, because every
        // manager method completes its update before returning.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl EntraIdProvider {
    /// Starts building a provider that takes tokens from `source`.
    pub fn builder(source: impl TokenSource) -> ProviderBuilder {
        ProviderBuilder {
            source: Arc::new(source),
            policy: RefreshPolicy::default(),
            username: Username::default(),
            first_token_timeout: DEFAULT_FIRST_TOKEN_TIMEOUT,
        }
    }

    /// Starts a provider with the default settings.
    pub fn new(source: impl TokenSource) -> Self {
        Self::builder(source).start()
    }

    /// Returns the current credentials, waiting for the first token up to the configured
    /// timeout.
    ///
    /// Expired credentials are never returned: once the token has expired and no new one
    /// has arrived, this fails at once with [`Error::TokenExpired`].
    ///
    /// Each calling thread keeps a copy of the credentials it last read, so that later
    /// calls take no lock until the next renewal. The copy, token included, stays in
    /// memory until the thread reads another provider or ends.
    pub fn get_credentials(&self) -> Result<Credentials, Error> {
        self.get_credentials_timeout(self.first_token_timeout)
    }

    /// Like [`get_credentials`](Self::get_credentials), waiting at most `timeout` for the
    /// first token.
    pub fn get_credentials_timeout(&self, timeout: Duration) -> Result<Credentials, Error> {
        self.snapshot_timeout(timeout).1
    }

    /// Returns the credentials with the generation they belong to.
    ///
    /// Without a renewal since this thread's last call, it reads one atomic and a
    /// thread-local copy, and takes no lock. The copy is as good as the manager's
    /// credentials: both change only with the generation, and the manager fails for good
    /// only before its first token.
    pub(crate) fn snapshot_timeout(&self, timeout: Duration) -> (u64, Result<Credentials, Error>) {
        let shared = &self.owner.shared;
        let generation = shared.generation.load(Ordering::Acquire);
        if let Some(credentials) = cached(shared.id, generation, SystemTime::now()) {
            return (generation, Ok(credentials));
        }
        let started = Instant::now();
        let mut inner = shared.lock();
        loop {
            let generation = shared.generation.load(Ordering::Acquire);
            match inner.manager.credentials(SystemTime::now()) {
                Ok(credentials) => {
                    cache(shared.id, generation, credentials);
                    return (generation, Ok(credentials.clone()));
                }
                Err(Error::NotAcquired { last_error }) => {
                    let waited = started.elapsed();
                    if waited >= timeout {
                        return (generation, Err(Error::Timeout { waited, last_error }));
                    }
                    inner = wait(&shared.changed, inner, timeout - waited);
                }
                Err(error) => return (generation, Err(error)),
            }
        }
    }

    /// How long connections and [`get_credentials`](Self::get_credentials) wait for the
    /// first token.
    pub fn first_token_timeout(&self) -> Duration {
        self.first_token_timeout
    }

    /// Counts the credential changes so far; it moves when connections should
    /// re-authenticate.
    pub fn generation(&self) -> u64 {
        self.owner.shared.generation.load(Ordering::Acquire)
    }

    /// Asks for a new token at once, for example after Redis answered `WRONGPASS`.
    /// Concurrent calls cause one request.
    pub fn force_refresh(&self) {
        let shared = &self.owner.shared;
        shared.lock().manager.force_refresh(SystemTime::now());
        shared.wake.notify_one();
    }

    /// Returns when the current token is due for refresh, or `None` before the first
    /// token. The renewal thread requests a new token then, or later while a retry
    /// delay runs.
    pub fn refresh_at(&self) -> Option<SystemTime> {
        self.owner.shared.lock().manager.refresh_at()
    }

    /// Returns credentials newer than those of `rejected`, the generation whose token
    /// Redis rejected, waiting up to the first-token timeout.
    ///
    /// Forces a refresh unless the generation has already moved, so connections that meet
    /// the same rejection together cause one token request. Returns `None` when no newer
    /// credentials arrive in time: a token the server rejected is not sent again.
    pub(crate) fn credentials_after_rejection(&self, rejected: u64) -> Option<(u64, Credentials)> {
        let shared = &self.owner.shared;
        if shared.generation.load(Ordering::Acquire) == rejected {
            self.force_refresh();
        }
        let started = Instant::now();
        let mut inner = shared.lock();
        loop {
            let generation = shared.generation.load(Ordering::Acquire);
            if generation != rejected {
                let credentials = inner.manager.credentials(SystemTime::now()).ok()?;
                return Some((generation, credentials.clone()));
            }
            let waited = started.elapsed();
            let failed = matches!(inner.manager.state(SystemTime::now()), State::Failed);
            if waited >= self.first_token_timeout || inner.shutdown || failed {
                return None;
            }
            inner = wait(&shared.changed, inner, self.first_token_timeout - waited);
        }
    }

    /// Subscribes to credential changes.
    pub fn subscribe(&self) -> Subscription {
        Subscription {
            provider: self.clone(),
            seen: self.generation(),
        }
    }

    /// The name of the token source, such as `client secret`.
    pub fn source_name(&self) -> &str {
        &self.owner.shared.source_name
    }
}

impl fmt::Debug for EntraIdProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EntraIdProvider")
            .field("source", &self.source_name())
            .field("generation", &self.generation())
            .finish_non_exhaustive()
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.wake.notify_one();
        self.shared.changed.notify_all();
        if let Some(thread) = self.thread.take() {
            // The thread exits at its next wake-up; an in-flight request ends within
            // its timeout.
            let _ = thread.join();
        }
        debug!("token renewal stopped");
    }
}

/// Receives credential changes with latest-value semantics: a subscriber that looks
/// rarely sees only the newest credentials, and never holds up renewal.
pub struct Subscription {
    provider: EntraIdProvider,
    seen: u64,
}

impl Subscription {
    /// Waits up to `timeout` for credentials newer than the last ones seen.
    ///
    /// Returns `None` on timeout, or when the newest credentials have already expired.
    pub fn next_timeout(&mut self, timeout: Duration) -> Option<Credentials> {
        let shared = &self.provider.owner.shared;
        let started = Instant::now();
        let mut inner = shared.lock();
        loop {
            let generation = shared.generation.load(Ordering::Acquire);
            if generation != self.seen {
                self.seen = generation;
                return inner.manager.credentials(SystemTime::now()).ok().cloned();
            }
            let waited = started.elapsed();
            if waited >= timeout || inner.shutdown {
                return None;
            }
            inner = wait(&shared.changed, inner, timeout - waited);
        }
    }

    /// Returns the newest credentials if they changed since the last look, without waiting.
    pub fn try_next(&mut self) -> Option<Credentials> {
        self.next_timeout(Duration::ZERO)
    }
}

fn wait<'a>(
    condvar: &Condvar,
    guard: MutexGuard<'a, Inner>,
    timeout: Duration,
) -> MutexGuard<'a, Inner> {
    match condvar.wait_timeout(guard, timeout) {
        Ok((guard, _)) => guard,
        Err(poisoned) => poisoned.into_inner().0,
    }
}

/// Runs the renewal loop: it sleeps until the manager's next deadline and holds no lock while
/// a request is in flight.
fn run(shared: &Shared, source: &dyn TokenSource) {
    let agent = http::agent();
    let mut inner = shared.lock();
    while !inner.shutdown {
        let now = SystemTime::now();
        let action = inner.manager.poll(now);
        publish_events(shared, &mut inner);
        match action {
            Action::RequestToken => {
                drop(inner);
                let outcome = run_exchange_guarded(&agent, source);
                inner = shared.lock();
                inner.manager.handle_response(SystemTime::now(), outcome);
                publish_events(shared, &mut inner);
            }
            Action::WaitUntil(deadline) => {
                let delay = deadline.duration_since(now).unwrap_or_default();
                inner = wait(&shared.wake, inner, delay);
            }
            Action::AwaitResponse | Action::Idle => {
                inner = match shared.wake.wait(inner) {
                    Ok(guard) => guard,
                    Err(poisoned) => poisoned.into_inner(),
                };
            }
        }
    }
}

/// Runs one token attempt, turning a panic in the token source (a parser bug, or a custom
/// source) into a transient error, so the renewal thread and its retries survive it.
fn run_exchange_guarded(agent: &ureq::Agent, source: &dyn TokenSource) -> Result<Token, Error> {
    let attempt = std::panic::catch_unwind(AssertUnwindSafe(|| steps::run_exchange(agent, source)));
    attempt.unwrap_or_else(|_| {
        warn!("the {} token source panicked; retrying", source.name());
        Err(Error::Io {
            operation: format!("run the {} token source", source.name()),
            kind: std::io::ErrorKind::Other,
            reason: "it panicked; the panic message went to standard error".to_owned(),
        })
    })
}

fn publish_events(shared: &Shared, inner: &mut Inner) {
    let mut notify = false;
    while let Some(event) = inner.manager.poll_event() {
        match event {
            Event::CredentialsChanged(_) => {
                shared.generation.fetch_add(1, Ordering::AcqRel);
                notify = true;
            }
            Event::Failed(_) | Event::Expired => notify = true,
            _ => {}
        }
    }
    if notify {
        shared.changed.notify_all();
    }
}
