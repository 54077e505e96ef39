//! The token lifecycle state machine, driven by the caller's clock.

use std::collections::VecDeque;
use std::time::SystemTime;

use log::{debug, trace, warn};

use crate::credentials::{Credentials, Username};
use crate::error::Error;
use crate::policy::RefreshPolicy;
use crate::token::Token;

/// The phase of the token lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum State {
    /// No token yet: a request is in flight or waiting for its retry time.
    Acquiring,
    /// A token is valid and its refresh time has not come.
    Valid,
    /// A token is still valid, but its refresh time has passed; requests go on.
    RefreshDue,
    /// The last token expired before a new one arrived; requests go on.
    Expired,
    /// The first token could not be obtained because of a permanent error. Only
    /// [`TokenManager::force_refresh`] starts another attempt.
    Failed,
}

/// The next thing the driver must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Action {
    /// Send one token request now and report its outcome to
    /// [`TokenManager::handle_response`].
    RequestToken,
    /// Call [`TokenManager::poll`] again at this time, or earlier after any other input.
    WaitUntil(SystemTime),
    /// A request is in flight; wait for its outcome.
    AwaitResponse,
    /// Nothing is scheduled; wait for [`TokenManager::force_refresh`].
    Idle,
}

/// Something the driver should pass on to its users.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// New credentials are in effect; connections should re-authenticate.
    CredentialsChanged(Credentials),
    /// A request failed, and another follows at `retry_at`. `token_valid` tells whether
    /// the current credentials still work.
    RefreshFailed {
        /// The failure.
        error: Error,
        /// When the next attempt starts.
        retry_at: SystemTime,
        /// Whether the current credentials are still valid.
        token_valid: bool,
    },
    /// The current credentials expired before new ones arrived.
    Expired,
    /// The first token could not be obtained because of a permanent error.
    Failed(Error),
}

struct Current {
    credentials: Credentials,
    refresh_at: SystemTime,
}

/// The token lifecycle: acquiring, valid, refresh-due, expired.
///
/// It performs no I/O and reads no clock. A driver runs this loop:
///
/// 1. call [`poll`](Self::poll) with the current time;
/// 2. on [`Action::RequestToken`], send the request and pass the outcome to
///    [`handle_response`](Self::handle_response);
/// 3. drain [`poll_event`](Self::poll_event) and pass events on;
/// 4. on [`Action::WaitUntil`], sleep until that time or until another input arrives.
///
/// It keeps at most one request in flight, never hands out expired credentials, retries
/// with capped exponential backoff while a token is valid and after it expires, and
/// publishes new credentials only when a token moves the expiry forward.
pub struct TokenManager {
    policy: RefreshPolicy,
    username: Username,
    current: Option<Current>,
    in_flight: bool,
    forced: bool,
    failures: u32,
    next_attempt: Option<SystemTime>,
    last_error: Option<Error>,
    fatal: Option<Error>,
    expiry_reported: bool,
    events: VecDeque<Event>,
    rng: u64,
}

impl TokenManager {
    /// Creates a manager. `seed` drives the retry jitter; pass a random value in
    /// production and a fixed one in tests.
    pub fn new(policy: RefreshPolicy, username: Username, seed: u64) -> Self {
        TokenManager {
            policy,
            username,
            current: None,
            in_flight: false,
            forced: false,
            failures: 0,
            next_attempt: None,
            last_error: None,
            fatal: None,
            expiry_reported: false,
            events: VecDeque::new(),
            rng: seed,
        }
    }

    /// Decides what to do at `now`. Returning [`Action::RequestToken`] marks a request as
    /// in flight, so call it only when you will send one.
    pub fn poll(&mut self, now: SystemTime) -> Action {
        if self.in_flight {
            return Action::AwaitResponse;
        }
        if self.fatal.is_some() && !self.forced {
            return Action::Idle;
        }
        let expiry = self.current.as_ref().map(|c| c.credentials.expires_on());
        if let Some(expires_on) = expiry
            && now >= expires_on
            && !self.expiry_reported
        {
            self.expiry_reported = true;
            warn!("token expired before a new one arrived; retries continue");
            self.events.push_back(Event::Expired);
        }
        let due = self.next_request_at(now);
        if due <= now {
            self.in_flight = true;
            debug!("requesting a token (state {:?})", self.state(now));
            return Action::RequestToken;
        }
        match expiry {
            Some(expires_on) if !self.expiry_reported => Action::WaitUntil(due.min(expires_on)),
            _ => Action::WaitUntil(due),
        }
    }

    fn next_request_at(&self, now: SystemTime) -> SystemTime {
        let scheduled = match &self.current {
            _ if self.forced => now,
            Some(current) => current.refresh_at,
            None => now,
        };
        match self.next_attempt {
            Some(retry_at) => scheduled.max(retry_at),
            None => scheduled,
        }
    }

    /// Feeds in the outcome of the request started by [`Action::RequestToken`],
    /// received at `now`.
    pub fn handle_response(&mut self, now: SystemTime, outcome: Result<Token, Error>) {
        self.in_flight = false;
        let forced = std::mem::take(&mut self.forced);
        match outcome.and_then(|token| self.accept(now, &token, forced)) {
            Ok(Some(current)) => self.install(current),
            Ok(None) => self.schedule_retry(now, None),
            Err(error) if self.current.is_none() && !error.is_transient() => {
                debug!("first token request failed permanently: {error}");
                self.fatal = Some(error.clone());
                self.last_error = Some(error.clone());
                self.events.push_back(Event::Failed(error));
            }
            Err(error) => {
                // A transient error on a forced attempt after a permanent failure ends the
                // Failed state, so the retry that schedule_retry announces really happens.
                self.fatal = None;
                self.schedule_retry(now, Some(error));
            }
        }
    }

    /// Checks a token and maps it to credentials. `Ok(None)` means the token does not move
    /// the expiry forward and changes nothing. After a forced refresh, a different token
    /// with the same expiry is taken too: the server rejected the current one, and
    /// endpoints issue tokens with whole-second expiries.
    fn accept(
        &self,
        now: SystemTime,
        token: &Token,
        forced: bool,
    ) -> Result<Option<Current>, Error> {
        if token.expires_on() <= now {
            return Err(Error::InvalidResponse {
                status: 200,
                reason: "the token had already expired when it arrived; check the clock".to_owned(),
            });
        }
        let credentials = self.username.credentials_for(token)?;
        if let Some(current) = &self.current
            && !moves_forward(&current.credentials, token, forced)
        {
            debug!("token does not expire later than the current one; keeping the current one");
            return Ok(None);
        }
        let refresh_at = self
            .policy
            .refresh_at(now, token.expires_on(), token.refresh_on());
        trace!(
            "token valid for {:?}, refresh in {:?}",
            token.expires_on().duration_since(now).unwrap_or_default(),
            refresh_at.duration_since(now).unwrap_or_default()
        );
        Ok(Some(Current {
            credentials,
            refresh_at,
        }))
    }

    fn install(&mut self, current: Current) {
        debug!("new token in effect for {}", current.credentials.username());
        self.events
            .push_back(Event::CredentialsChanged(current.credentials.clone()));
        self.current = Some(current);
        self.failures = 0;
        self.next_attempt = None;
        self.last_error = None;
        self.fatal = None;
        self.expiry_reported = false;
    }

    /// Schedules the next attempt after a failure, or after a token that changed nothing
    /// (`error` is `None`).
    fn schedule_retry(&mut self, now: SystemTime, error: Option<Error>) {
        self.failures = self.failures.saturating_add(1);
        let retry_after = error.as_ref().and_then(Error::retry_after);
        let unit = self.next_unit();
        let delay = self.policy.retry_delay(self.failures, retry_after, unit);
        let retry_at = now + delay;
        self.next_attempt = Some(retry_at);
        let Some(error) = error else {
            return;
        };
        let token_valid = self
            .current
            .as_ref()
            .is_some_and(|c| !c.credentials.is_expired(now));
        if token_valid {
            warn!(
                "token refresh failed, retrying in {:.1} s: {error}",
                delay.as_secs_f64()
            );
        } else {
            debug!(
                "token request failed, retrying in {:.1} s: {error}",
                delay.as_secs_f64()
            );
        }
        self.last_error = Some(error.clone());
        self.events.push_back(Event::RefreshFailed {
            error,
            retry_at,
            token_valid,
        });
    }

    /// Asks for a new token as soon as possible, for example after Redis answered
    /// `WRONGPASS`. Calls while a request is in flight or already forced coalesce into
    /// one request; a pending retry delay is still honoured.
    pub fn force_refresh(&mut self, now: SystemTime) {
        if self.in_flight || self.forced {
            return;
        }
        debug!("forced token refresh (state {:?})", self.state(now));
        self.forced = true;
        if self.fatal.is_some() {
            self.next_attempt = None;
        }
    }

    /// Returns the next event for users of the driver.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Returns the credentials to use at `now`, or why there are none.
    ///
    /// Expired credentials are never returned.
    pub fn credentials(&self, now: SystemTime) -> Result<&Credentials, Error> {
        if let Some(error) = &self.fatal {
            return Err(error.clone());
        }
        match &self.current {
            Some(current) if !current.credentials.is_expired(now) => Ok(&current.credentials),
            Some(current) => Err(Error::TokenExpired {
                expired_at: current.credentials.expires_on(),
                last_error: self.last_error.clone().map(Box::new),
            }),
            None => Err(self.not_yet_error()),
        }
    }

    fn not_yet_error(&self) -> Error {
        Error::NotAcquired {
            last_error: self.last_error.clone().map(Box::new),
        }
    }

    /// The most recent failure, cleared when a token arrives.
    pub fn last_error(&self) -> Option<&Error> {
        self.last_error.as_ref()
    }

    /// When the current token is due for refresh, if there is one.
    pub fn refresh_at(&self) -> Option<SystemTime> {
        self.current.as_ref().map(|c| c.refresh_at)
    }

    /// Returns the lifecycle state at `now`.
    pub fn state(&self, now: SystemTime) -> State {
        if self.fatal.is_some() {
            return State::Failed;
        }
        match &self.current {
            None => State::Acquiring,
            Some(c) if c.credentials.is_expired(now) => State::Expired,
            Some(c) if now >= c.refresh_at || self.forced => State::RefreshDue,
            Some(_) => State::Valid,
        }
    }

    /// A uniform value in `[0, 1)` from a SplitMix64 generator, for jitter.
    fn next_unit(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Returns true when `token` should replace `current`: it expires later, or, after a
/// forced refresh, it is a different token that expires at the same time.
fn moves_forward(current: &Credentials, token: &Token, forced: bool) -> bool {
    let (old, new) = (current.expires_on(), token.expires_on());
    new > old
        || (forced && new == old && token.access_token().expose_secret() != current.password())
}
