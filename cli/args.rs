//! The command line: commands, options and their help.

use std::time::Duration;

use clap::builder::PossibleValue;
use clap::{Arg, ArgAction, ArgMatches, Command, value_parser};

use crate::failure::EXIT_STATUS_HELP;
use crate::redis_steps::Target;
use crate::source::Kind;

const ABOUT: &str = "Shows and diagnoses Microsoft Entra ID authentication to Azure Cache for \
    Redis and Azure Managed Redis, with the credentials and connection type of the \
    redis-entraid crate";

const ENVIRONMENT_HELP: &str = "\
Credentials come from the environment variables the Azure SDKs read: AZURE_TENANT_ID,
AZURE_CLIENT_ID, AZURE_CLIENT_SECRET, AZURE_CLIENT_CERTIFICATE_PATH,
AZURE_FEDERATED_TOKEN_FILE, AZURE_AUTHORITY_HOST, AZURE_TOKEN_CREDENTIALS and the
managed-identity variables of the Azure host. Tokens and secrets are never printed,
except the token with `token --show-token`.";

/// Builds the command line parser.
pub fn command() -> Command {
    Command::new("redis-entraid")
        .version(env!("CARGO_PKG_VERSION"))
        .about(ABOUT)
        .after_help(format!("{ENVIRONMENT_HELP}\n\n{EXIT_STATUS_HELP}"))
        .subcommand_required(true)
        .arg_required_else_help(true)
        .subcommand(token_command())
        .subcommand(ping_command())
        .subcommand(watch_command())
        .subcommand(doctor_command())
}

fn token_command() -> Command {
    Command::new("token")
        .about("Acquire a token and print its credential, claims, expiry and refresh time")
        .after_help(EXIT_STATUS_HELP)
        .args(credential_args())
        .arg(
            Arg::new("format")
                .long("format")
                .value_name("FORMAT")
                .value_parser(["text", "json"])
                .default_value("text")
                .help(
                    "Output format; json prints one object with credential, oid, tid, aud, \
                     app_id, iat, exp, expires_on and refresh_on (times in Unix seconds)",
                ),
        )
        .arg(
            Arg::new("show-token")
                .long("show-token")
                .action(ArgAction::SetTrue)
                .help("Also print the access token itself, which is a secret"),
        )
}

fn ping_command() -> Command {
    Command::new("ping")
        .about(
            "Connect to Redis, authenticate as the token's oid, run PING and DBSIZE, and \
             print the time of each step",
        )
        .after_help(EXIT_STATUS_HELP)
        .args(credential_args())
        .args(redis_args(true))
}

fn watch_command() -> Command {
    Command::new("watch")
        .about(
            "Stay connected, run PING every few seconds, and show token renewals and \
             re-authentications with the remaining token lifetime; Ctrl-C stops it with a \
             summary",
        )
        .after_help(format!(
            "Exits with status 5 when any command failed.\n\n{EXIT_STATUS_HELP}"
        ))
        .args(credential_args())
        .args(redis_args(true))
        .arg(
            Arg::new("interval")
                .long("interval")
                .value_name("SECONDS")
                .value_parser(parse_seconds)
                .default_value("5")
                .help("Time between two commands, in seconds"),
        )
        .arg(
            Arg::new("duration")
                .long("duration")
                .value_name("SECONDS")
                .value_parser(parse_seconds)
                .help("Stop after this many seconds instead of waiting for Ctrl-C"),
        )
}

fn doctor_command() -> Command {
    Command::new("doctor")
        .about(
            "Check the environment, the token and (with --host) the Redis connection, and \
             explain each failure with its fix",
        )
        .after_help(format!(
            "The exit status is that of the first failed check.\n\n{EXIT_STATUS_HELP}"
        ))
        .args(credential_args())
        .args(redis_args(false))
}

fn credential_args() -> Vec<Arg> {
    let kinds: Vec<PossibleValue> = Kind::NAMES
        .iter()
        .map(|(name, help)| PossibleValue::new(*name).help(*help))
        .collect();
    vec![
        Arg::new("credential")
            .long("credential")
            .value_name("KIND")
            .value_parser(kinds)
            .default_value("chain")
            .help("Credential to use instead of the chain"),
        Arg::new("token-timeout")
            .long("token-timeout")
            .value_name("SECONDS")
            .value_parser(parse_seconds)
            .default_value("30")
            .help(
                "Time to wait for the first token, in seconds; transient errors are \
                 retried until then",
            ),
    ]
}

fn redis_args(host_required: bool) -> Vec<Arg> {
    vec![
        Arg::new("host")
            .long("host")
            .value_name("HOST")
            .required(host_required)
            .help("Redis host name, such as my-cache.redis.cache.windows.net"),
        Arg::new("port")
            .long("port")
            .value_name("PORT")
            .value_parser(value_parser!(u16).range(1..))
            .help("Redis port [default: 6380, or 6379 with --no-tls]"),
        Arg::new("no-tls")
            .long("no-tls")
            .action(ArgAction::SetTrue)
            .help(
                "Connect over plain TCP, for a local redis-server without TLS; Azure caches \
                 accept only TLS",
            ),
        Arg::new("connect-timeout")
            .long("connect-timeout")
            .value_name("SECONDS")
            .value_parser(parse_seconds)
            .default_value("10")
            .help("Time limit for connecting, TLS, authentication and each reply, in seconds"),
    ]
}

/// Parses a positive number of seconds, such as `5` or `0.5`.
fn parse_seconds(value: &str) -> Result<Duration, String> {
    let seconds: f64 = value
        .parse()
        .map_err(|_| format!("`{value}` is not a number of seconds"))?;
    if seconds.is_nan() || seconds <= 0.0 {
        return Err(format!("`{value}` must be more than 0 seconds"));
    }
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("`{value}` seconds is too long"))
}

/// The credential options of a command.
pub struct CredentialOptions {
    pub kind: Kind,
    pub token_timeout: Duration,
}

impl CredentialOptions {
    pub fn from_matches(matches: &ArgMatches) -> Self {
        let name = matches
            .get_one::<String>("credential")
            .map_or("chain", String::as_str);
        CredentialOptions {
            // clap accepts only the names in `Kind::NAMES`.
            kind: Kind::parse(name).unwrap_or(Kind::Chain),
            token_timeout: seconds(matches, "token-timeout"),
        }
    }
}

/// Reads the Redis target, or `None` when `--host` is absent.
pub fn target(matches: &ArgMatches) -> Option<Target> {
    let host = matches.get_one::<String>("host")?.clone();
    let tls = !matches.get_flag("no-tls");
    let default_port = if tls { 6380 } else { 6379 };
    Some(Target {
        host,
        port: matches
            .get_one::<u16>("port")
            .copied()
            .unwrap_or(default_port),
        tls,
        connect_timeout: seconds(matches, "connect-timeout"),
    })
}

/// Reads a seconds option that has a default or was checked as present.
pub fn seconds(matches: &ArgMatches, name: &str) -> Duration {
    matches
        .get_one::<Duration>(name)
        .copied()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_definition_is_valid() {
        command().debug_assert();
    }

    #[test]
    fn seconds_must_be_positive() {
        assert_eq!(parse_seconds("0.5"), Ok(Duration::from_millis(500)));
        assert!(parse_seconds("0").is_err());
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("NaN").is_err());
        assert!(parse_seconds("soon").is_err());
    }

    #[test]
    fn every_kind_name_parses() {
        for (name, _) in Kind::NAMES {
            assert!(Kind::parse(name).is_some(), "{name}");
        }
    }
}
