//! `redis-entraid watch`: a long-lived connection that shows renewals and
//! re-authentications as they happen.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use clap::ArgMatches;
use redis::{ConnectionLike, Value};
use redis_entraid::Error;
use redis_entraid::blocking::{EntraConnection, EntraIdProvider};

use crate::args::{self, CredentialOptions};
use crate::explain::{self, RedisStep};
use crate::failure::{Category, Failure};
use crate::format;
use crate::redis_steps::{self, Target};
use crate::source;
use crate::token::check_usable;

/// The maximum sleep between two checks of the stop flag and the status line.
const SLICE: Duration = Duration::from_millis(250);

/// The number of failed commands printed; later ones are only counted.
const PRINTED_FAILURES: u64 = 10;

/// The exit status after a second Ctrl-C, which ends the process without a summary:
/// 128 plus the number of SIGINT, as shells report a process ended by it.
const SECOND_SIGNAL_EXIT: i32 = 130;

pub fn run(matches: &ArgMatches) -> Result<(), Failure> {
    let options = CredentialOptions::from_matches(matches);
    // clap requires --host for this command.
    let target = args::target(matches).expect("--host is required");
    let interval = args::seconds(matches, "interval");
    let duration = matches.get_one::<Duration>("duration").copied();
    let stop = stop_flag();

    let (_, acquired) = source::acquire_from_options(&options)?;
    check_usable(&acquired)?;
    let username = acquired.credentials.username().to_owned();
    let connection = redis_steps::open(&target, &acquired.provider, &username)?.value;

    let mut watch = Watch {
        output: Output::new(),
        started: Instant::now(),
        provider: acquired.provider.clone(),
        connection,
        username,
        target: target.clone(),
        stats: Stats::default(),
        expiry_reported: false,
    };
    watch.event(&format!(
        "watching {} as {} with the {} credential: PING every {}; {}",
        target.describe(),
        watch.username,
        acquired.credential,
        format::duration(interval),
        match duration {
            Some(d) => format!("stopping after {}", format::duration(d)),
            None => "Ctrl-C stops".to_owned(),
        }
    ));
    watch.event(&format!(
        "token expires {}, refresh {}",
        format::relative(acquired.credentials.expires_on(), SystemTime::now()),
        refresh_text(acquired.refresh_at)
    ));
    let interrupted = watch.run(interval, duration, &stop);
    if interrupted {
        watch.event("stopped by Ctrl-C or SIGTERM");
    }
    watch.summary();
    watch.result()
}

/// Sets a flag on SIGINT (Ctrl-C) and SIGTERM; a second signal ends the process at once.
///
/// When the handlers cannot be installed, watch still runs, and Ctrl-C ends it without
/// a summary.
fn stop_flag() -> Arc<AtomicBool> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let flag = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM] {
        // Handlers run in registration order, so the shutdown check finds the flag set
        // only when a second signal arrives.
        let installed = signal_hook::flag::register_conditional_shutdown(
            signal,
            SECOND_SIGNAL_EXIT,
            Arc::clone(&flag),
        )
        .and_then(|_| signal_hook::flag::register(signal, Arc::clone(&flag)));
        if let Err(error) = installed {
            eprintln!(
                "warning: cannot handle signal {signal} ({error}); Ctrl-C will end watch \
                 without a summary"
            );
        }
    }
    flag
}

fn refresh_text(refresh_at: Option<SystemTime>) -> String {
    match refresh_at {
        Some(at) => format::relative(at, SystemTime::now()),
        None => "not scheduled".to_owned(),
    }
}

#[derive(Default)]
struct Stats {
    ok: u64,
    failed: u64,
    /// Failures since the last success.
    failing: u64,
    renewals: u64,
    reauthentications: u64,
    reconnections: u64,
    total_latency: Duration,
    max_latency: Duration,
    last_latency: Option<Duration>,
}

struct Watch {
    output: Output,
    started: Instant,
    provider: EntraIdProvider,
    connection: EntraConnection,
    username: String,
    target: Target,
    stats: Stats,
    expiry_reported: bool,
}

impl Watch {
    /// Runs commands until `duration` passes or `stop` is set; returns true when `stop`
    /// ended it.
    fn run(&mut self, interval: Duration, duration: Option<Duration>, stop: &AtomicBool) -> bool {
        let mut subscription = self.provider.subscribe();
        let mut next_command = Instant::now();
        loop {
            if stop.load(Ordering::SeqCst) {
                return true;
            }
            let now = Instant::now();
            if duration.is_some_and(|d| now.duration_since(self.started) >= d) {
                return false;
            }
            if now >= next_command {
                self.ping();
                // After a slow command, the next one starts an interval later instead of
                // catching up with a burst.
                next_command = (next_command + interval).max(Instant::now());
                if !self.output.terminal {
                    let status = self.status();
                    self.output.line(&status);
                }
            }
            self.check_expiry();
            if self.output.terminal {
                let status = self.status();
                self.output.status(&status);
            }
            let mut wait = SLICE.min(next_command.saturating_duration_since(Instant::now()));
            if let Some(d) = duration {
                wait = wait.min(d.saturating_sub(self.started.elapsed()));
            }
            // Waiting on the subscription wakes up for a renewal at once.
            if subscription.next_timeout(wait).is_some() {
                self.renewed();
            }
        }
    }

    fn ping(&mut self) {
        let was_open = self.connection.is_open();
        let authentications = self.connection.authentications();
        let started = Instant::now();
        // A server that stops replying fails PING after --connect-timeout. The next PING
        // opens a new connection.
        let result = redis::cmd("PING").query::<Value>(&mut self.connection);
        let elapsed = started.elapsed();
        if self.connection.authentications() > authentications {
            if was_open {
                self.stats.reauthentications += 1;
                self.event("re-authenticated: sent AUTH with the new token before PING");
            } else {
                self.stats.reconnections += 1;
                self.event(&format!(
                    "reconnected and authenticated as {}",
                    self.username
                ));
            }
        }
        match result {
            Ok(_) => {
                if self.stats.failing > 0 {
                    let failing = self.stats.failing;
                    self.event(&format!("PING succeeded again after {failing} failed"));
                }
                self.stats.ok += 1;
                self.stats.failing = 0;
                self.stats.total_latency += elapsed;
                self.stats.max_latency = self.stats.max_latency.max(elapsed);
                self.stats.last_latency = Some(elapsed);
            }
            Err(error) => {
                self.stats.failed += 1;
                self.stats.failing += 1;
                self.stats.last_latency = None;
                if self.stats.failed <= PRINTED_FAILURES {
                    let failure = explain::redis_error(
                        RedisStep::Command("PING"),
                        &error,
                        &self.username,
                        self.target.tls,
                    );
                    self.event(&format!("PING failed: {}", failure.render("           ")));
                }
                if self.stats.failed == PRINTED_FAILURES {
                    self.event("further failures are counted, not printed");
                }
            }
        }
    }

    fn renewed(&mut self) {
        self.stats.renewals += 1;
        self.expiry_reported = false;
        let now = SystemTime::now();
        let expires = match self.provider.get_credentials_timeout(Duration::ZERO) {
            Ok(credentials) => format::relative(credentials.expires_on(), now),
            Err(_) => "unknown".to_owned(),
        };
        self.event(&format!(
            "token renewed: expires {expires}, refresh {}",
            refresh_text(self.provider.refresh_at())
        ));
    }

    /// Reports once when the token expired before a new one arrived.
    fn check_expiry(&mut self) {
        if self.expiry_reported {
            return;
        }
        if let Err(Error::TokenExpired { last_error, .. }) =
            self.provider.get_credentials_timeout(Duration::ZERO)
        {
            self.expiry_reported = true;
            let cause = last_error.map_or(String::new(), |e| format!(" (last error: {e})"));
            self.event(&format!(
                "token expired before a new one arrived; renewal retries continue{cause}"
            ));
        }
    }

    fn status(&self) -> String {
        let now = SystemTime::now();
        let lifetime = match self.provider.get_credentials_timeout(Duration::ZERO) {
            Ok(credentials) => format!(
                "token expires {}",
                format::relative(credentials.expires_on(), now)
            ),
            Err(_) => "token expired".to_owned(),
        };
        let latency = match self.stats.last_latency {
            Some(latency) => format!("last PING {}", format::millis(latency)),
            None => "last PING failed".to_owned(),
        };
        format!(
            "{lifetime}, refresh {} | {latency} | ok {}, failed {} | renewals {}, \
             re-authentications {}, reconnections {}",
            refresh_text(self.provider.refresh_at()),
            self.stats.ok,
            self.stats.failed,
            self.stats.renewals,
            self.stats.reauthentications,
            self.stats.reconnections
        )
    }

    fn summary(&mut self) {
        let stats = &self.stats;
        let latency = if stats.ok > 0 {
            let average = stats.total_latency / u32::try_from(stats.ok).unwrap_or(u32::MAX);
            format!(
                " ({} average, {} max)",
                format::millis(average),
                format::millis(stats.max_latency)
            )
        } else {
            String::new()
        };
        let text = format!(
            "summary: {:.1} s, PING {} ok and {} failed{latency}, renewals {}, \
             re-authentications {}, reconnections {}",
            self.started.elapsed().as_secs_f64(),
            stats.ok,
            stats.failed,
            stats.renewals,
            stats.reauthentications,
            stats.reconnections
        );
        self.output.line(&text);
    }

    fn result(&self) -> Result<(), Failure> {
        if self.stats.failed == 0 {
            return Ok(());
        }
        Err(Failure::new(
            Category::Redis,
            format!(
                "{} of {} commands failed",
                self.stats.failed,
                self.stats.failed + self.stats.ok
            ),
            format!(
                "read the failures above; `redis-entraid doctor {}` checks each step",
                self.target.command_line()
            ),
        ))
    }

    fn event(&mut self, text: &str) {
        let stamp = format!("[{:7.1}s]", self.started.elapsed().as_secs_f64());
        self.output.line(&format!("{stamp} {text}"));
    }
}

/// Standard output with an optional live status line, drawn only on a terminal.
struct Output {
    terminal: bool,
    status_shown: bool,
}

impl Output {
    fn new() -> Self {
        Output {
            terminal: std::io::stdout().is_terminal(),
            status_shown: false,
        }
    }

    /// Prints a line above the status line.
    fn line(&mut self, text: &str) {
        let mut stdout = std::io::stdout().lock();
        if self.status_shown {
            // Carriage return and "erase line" remove the status line before the text.
            let _ = write!(stdout, "\r\x1b[2K");
            self.status_shown = false;
        }
        let _ = writeln!(stdout, "{text}");
        let _ = stdout.flush();
    }

    /// Replaces the status line.
    fn status(&mut self, text: &str) {
        let mut stdout = std::io::stdout().lock();
        let _ = write!(stdout, "\r\x1b[2K{text}");
        let _ = stdout.flush();
        self.status_shown = true;
    }
}
