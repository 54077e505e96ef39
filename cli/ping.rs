//! `redis-entraid ping`: one authenticated round trip, with the time of each step.

use std::time::SystemTime;

use clap::ArgMatches;

use crate::args::{self, CredentialOptions};
use crate::failure::Failure;
use crate::format;
use crate::redis_steps::{self, Target};
use crate::source::{self, Acquired};
use crate::token::check_usable;

pub fn run(matches: &ArgMatches) -> Result<(), Failure> {
    let options = CredentialOptions::from_matches(matches);
    // clap requires --host for this command.
    let target = args::target(matches).expect("--host is required");
    let (_, acquired) = source::acquire_from_options(&options)?;
    print_step(
        "token",
        acquired.elapsed,
        &format!(
            "{} credential, oid {}, expires {}",
            acquired.credential,
            acquired.claims.oid.as_deref().unwrap_or("(missing)"),
            format::relative(acquired.credentials.expires_on(), SystemTime::now())
        ),
    );
    check_usable(&acquired)?;
    run_steps(&target, &acquired)
}

fn run_steps(target: &Target, acquired: &Acquired) -> Result<(), Failure> {
    let username = acquired.credentials.username();
    let resolved = redis_steps::resolve(target)?;
    let addresses: Vec<String> = resolved.value.iter().map(ToString::to_string).collect();
    print_step("resolve", resolved.elapsed, &addresses.join(", "));

    let connected = redis_steps::tcp_connect(target, &resolved.value)?;
    print_step(
        "tcp",
        connected.elapsed,
        &format!("connected to {}", connected.value),
    );

    let opened = redis_steps::open(target, &acquired.provider, username)?;
    let transport = if target.tls {
        "over TLS"
    } else {
        "without TLS (--no-tls)"
    };
    print_step(
        "auth",
        opened.elapsed,
        &format!("connected {transport} and authenticated as {username}"),
    );
    let mut connection = opened.value;

    for name in ["PING", "DBSIZE"] {
        let reply = redis_steps::command(&mut connection, name, username, target.tls)?;
        let text = redis_steps::reply_text(&reply.value);
        let text = if name == "DBSIZE" {
            format!("{text} keys")
        } else {
            text
        };
        print_step(name, reply.elapsed, &text);
    }
    Ok(())
}

fn print_step(name: &str, elapsed: std::time::Duration, text: &str) {
    println!("{name:<9} {:>9}  {text}", format::millis(elapsed));
}
