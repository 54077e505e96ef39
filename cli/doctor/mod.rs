//! `redis-entraid doctor`: runs every step and explains each failure with its fix.

mod environment;

use std::time::{Duration, SystemTime};

use clap::ArgMatches;

use crate::args::{self, CredentialOptions};
use crate::explain;
use crate::failure::{Category, Failure};
use crate::format;
use crate::redis_steps::{self, Target};
use crate::source::{self, Acquired, Source};

/// Azure's guidance is to re-authenticate at least this long before a token expires, so
/// a shorter lifetime leaves no time for renewal.
const RENEWAL_MARGIN: Duration = Duration::from_secs(180);

/// The result of one check.
pub enum Check {
    Ok(String),
    /// A problem that does not stop authentication, with its fix.
    Warn(Failure),
    Fail(Failure),
    /// A check that could not run, and why.
    Skip(String),
}

/// Prints checks as they finish and remembers the first failure.
struct Report {
    problems: usize,
    warnings: usize,
    first: Option<Category>,
}

impl Report {
    fn section(&self, title: &str) {
        println!("\n{title}");
    }

    fn record(&mut self, check: Check) {
        const INDENT: &str = "        ";
        match check {
            Check::Ok(text) => println!("  ok    {text}"),
            Check::Warn(failure) => {
                self.warnings += 1;
                println!("  warn  {}", failure.render(INDENT));
            }
            Check::Fail(failure) => {
                self.problems += 1;
                self.first.get_or_insert(failure.category);
                println!("  FAIL  {}", failure.render(INDENT));
            }
            Check::Skip(text) => println!("  skip  {text}"),
        }
    }

    /// Records `result` and returns its value when it succeeded.
    fn step<T>(&mut self, result: Result<T, Failure>, ok: impl FnOnce(&T) -> String) -> Option<T> {
        match result {
            Ok(value) => {
                self.record(Check::Ok(ok(&value)));
                Some(value)
            }
            Err(failure) => {
                self.record(Check::Fail(failure));
                None
            }
        }
    }
}

pub fn run(matches: &ArgMatches) -> Result<(), Failure> {
    let options = CredentialOptions::from_matches(matches);
    let target = args::target(matches);
    let mut report = Report {
        problems: 0,
        warnings: 0,
        first: None,
    };
    println!("redis-entraid doctor: Microsoft Entra ID authentication for Redis");

    report.section("environment");
    let lookup = |name: &str| std::env::var(name).ok();
    let exists = |path: &std::path::Path| path.exists();
    for check in environment::check(&lookup, &exists, options.kind) {
        report.record(check);
    }

    report.section("token");
    let acquired = check_token(&mut report, &options);

    match &target {
        Some(target) => report.section(&format!("redis {}", target.describe())),
        None => report.section("redis"),
    }
    match (acquired, &target) {
        (_, None) => report.record(Check::Skip(
            "no --host given; pass --host (and --port, --no-tls) to check Redis".to_owned(),
        )),
        (None, Some(_)) => report.record(Check::Skip(
            "needs a token that Redis can accept; fix the token first".to_owned(),
        )),
        (Some(acquired), Some(target)) => check_redis(&mut report, target, &acquired),
    }

    println!();
    match report.first {
        None if report.warnings > 0 => {
            println!("no problems found, {} warnings", report.warnings);
            Ok(())
        }
        None => {
            println!("no problems found");
            Ok(())
        }
        Some(category) => Err(Failure::new(
            category,
            format!(
                "doctor found {} {}",
                report.problems,
                if report.problems == 1 {
                    "problem"
                } else {
                    "problems"
                }
            ),
            "apply the fixes above and run doctor again",
        )),
    }
}

/// Acquires a token and checks its claims; returns it when Redis can accept it.
fn check_token(report: &mut Report, options: &CredentialOptions) -> Option<Acquired> {
    let timeout = options.token_timeout;
    let source = report.step(
        Source::from_env(options.kind).map_err(|e| explain::token_error(&e, timeout)),
        |source| match source.chain_names() {
            Some(names) => format!("credential chain: {}", names.join(", ")),
            None => format!("credential: {}", source.credential()),
        },
    )?;
    let acquired = report.step(
        source::acquire(&source, timeout).map_err(|e| explain::token_error(&e, timeout)),
        |acquired| {
            format!(
                "the {} credential returned a token in {}",
                acquired.credential,
                format::millis(acquired.elapsed)
            )
        },
    )?;
    let claims = &acquired.claims;
    let mut usable = true;
    match &claims.oid {
        Some(oid) => report.record(Check::Ok(format!("oid {oid}: the Redis username"))),
        None => {
            usable = false;
            report.record(Check::Fail(explain::missing_oid()));
        }
    }
    if explain::is_redis_audience(&claims.aud) {
        report.record(Check::Ok(format!(
            "aud {}: a token for Azure Redis",
            claims.aud.join(", ")
        )));
    } else {
        usable = false;
        report.record(Check::Fail(explain::wrong_audience(&claims.aud)));
    }
    let unknown = "(missing)".to_owned();
    report.record(Check::Ok(format!(
        "tid {}, app id {}",
        claims.tid.as_ref().unwrap_or(&unknown),
        claims.app_id.as_ref().unwrap_or(&unknown)
    )));
    check_lifetime(report, &acquired);
    usable.then_some(acquired)
}

fn check_lifetime(report: &mut Report, acquired: &Acquired) {
    let now = SystemTime::now();
    let expires_on = acquired.credentials.expires_on();
    let refresh = match acquired.refresh_at {
        Some(at) => format!(", refreshed {}", format::relative(at, now)),
        None => String::new(),
    };
    let text = format!("expires {}{refresh}", format::relative(expires_on, now));
    let remaining = expires_on.duration_since(now).unwrap_or_default();
    if remaining < RENEWAL_MARGIN {
        report.record(Check::Warn(Failure::new(
            Category::Identity,
            format!("the token {text}, less than the 3 minutes Azure asks to renew before expiry"),
            "check the system clock; an identity endpoint that caches tokens renews them only \
             shortly before expiry, which the library handles by retrying",
        )));
    } else {
        report.record(Check::Ok(text));
    }
}

fn check_redis(report: &mut Report, target: &Target, acquired: &Acquired) {
    let username = acquired.credentials.username();
    let skip = |report: &mut Report, after: &str| {
        report.record(Check::Skip(format!("PING and DBSIZE: need {after}")));
    };
    let Some(addresses) = report.step(redis_steps::resolve(target), |resolved| {
        let list: Vec<String> = resolved.value.iter().map(ToString::to_string).collect();
        format!(
            "resolve {}: {} ({})",
            target.host,
            list.join(", "),
            format::millis(resolved.elapsed)
        )
    }) else {
        return skip(report, "a resolved host");
    };
    let connected = report.step(redis_steps::tcp_connect(target, &addresses.value), |c| {
        format!(
            "TCP connection to {} ({})",
            c.value,
            format::millis(c.elapsed)
        )
    });
    if connected.is_none() {
        return skip(report, "a TCP connection");
    }
    let transport = if target.tls {
        "TLS handshake"
    } else {
        "plain TCP (--no-tls)"
    };
    let Some(opened) = report.step(
        redis_steps::open(target, &acquired.provider, username),
        |opened| {
            format!(
                "{transport} and AUTH as {username} ({})",
                format::millis(opened.elapsed)
            )
        },
    ) else {
        return skip(report, "an authenticated connection");
    };
    let mut connection = opened.value;
    for name in ["PING", "DBSIZE"] {
        report.step(
            redis_steps::command(&mut connection, name, username, target.tls),
            |reply| {
                format!(
                    "{name}: {} ({})",
                    redis_steps::reply_text(&reply.value),
                    format::millis(reply.elapsed)
                )
            },
        );
    }
}
