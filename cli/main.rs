//! `redis-entraid`: shows and diagnoses Microsoft Entra ID authentication to Azure
//! Redis, through the crate's own credential chain and blocking connection type.
//!
//! Built by the `cli` feature: `cargo install redis-entraid --features cli`. The
//! commands are `token`, `ping`, `watch` and `doctor`; `--help` describes each, and
//! `failure.rs` defines the exit statuses.

mod args;
mod doctor;
mod explain;
mod failure;
mod format;
mod ping;
mod redis_steps;
mod source;
mod token;
mod watch;

use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    // clap prints help and usage errors itself, and exits with 0 and 2.
    let matches = args::command().get_matches();
    let result = match matches.subcommand() {
        Some(("token", sub)) => token::run(sub),
        Some(("ping", sub)) => ping::run(sub),
        Some(("watch", sub)) => watch::run(sub),
        Some(("doctor", sub)) => doctor::run(sub),
        // `subcommand_required` makes clap reject a command line without one.
        _ => unreachable!("clap accepts only the commands above"),
    };
    let _ = std::io::stdout().flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            failure.print();
            ExitCode::from(failure.category.exit_code())
        }
    }
}
