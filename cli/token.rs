//! `redis-entraid token`: acquires a token and prints what matters about it.

use std::time::SystemTime;

use clap::ArgMatches;
use serde_json::{Value, json};

use crate::args::CredentialOptions;
use crate::explain;
use crate::failure::Failure;
use crate::format;
use crate::source::{self, Acquired};

pub fn run(matches: &ArgMatches) -> Result<(), Failure> {
    let options = CredentialOptions::from_matches(matches);
    let show_token = matches.get_flag("show-token");
    let (source, acquired) = source::acquire_from_options(&options)?;
    let json = matches.get_one::<String>("format").map(String::as_str) == Some("json");
    if json {
        println!("{}", to_json(&acquired, show_token));
    } else {
        print_text(&acquired, source.chain_names(), show_token);
    }
    check_usable(&acquired)
}

/// Fails for a token Redis would not accept: one without `oid`, or for another audience.
pub fn check_usable(acquired: &Acquired) -> Result<(), Failure> {
    if !acquired.has_oid() {
        return Err(explain::missing_oid());
    }
    if !explain::is_redis_audience(&acquired.claims.aud) {
        return Err(explain::wrong_audience(&acquired.claims.aud));
    }
    Ok(())
}

fn to_json(acquired: &Acquired, show_token: bool) -> Value {
    let claims = &acquired.claims;
    let audience = match claims.aud.as_slice() {
        [] => Value::Null,
        [one] => json!(one),
        many => json!(many),
    };
    let mut object = json!({
        "credential": acquired.credential,
        "oid": claims.oid,
        "tid": claims.tid,
        "aud": audience,
        "app_id": claims.app_id,
        "iat": claims.iat,
        "exp": claims.exp,
        "expires_on": format::unix_seconds(acquired.credentials.expires_on()),
        "refresh_on": acquired.refresh_at.map(format::unix_seconds),
        "acquired_ms": (acquired.elapsed.as_secs_f64() * 1000.0 * 10.0).round() / 10.0,
    });
    if show_token {
        object["access_token"] = json!(acquired.credentials.password());
    }
    object
}

fn print_text(acquired: &Acquired, chain: Option<Vec<String>>, show_token: bool) {
    let claims = &acquired.claims;
    let missing = "(missing)".to_owned();
    let credential = match chain {
        Some(names) => format!("{} (chain: {})", acquired.credential, names.join(", ")),
        None => acquired.credential.clone(),
    };
    let audience = if claims.aud.is_empty() {
        missing.clone()
    } else {
        claims.aud.join(", ")
    };
    println!("credential   {credential}");
    println!("oid          {}", claims.oid.as_ref().unwrap_or(&missing));
    println!("tid          {}", claims.tid.as_ref().unwrap_or(&missing));
    println!("aud          {audience}");
    println!(
        "app id       {}",
        claims.app_id.as_ref().unwrap_or(&missing)
    );

    if let Some(iat) = claims.iat {
        println!("issued       {} (iat {iat})", format::utc(iat));
    }
    if let Some(exp) = claims.exp {
        println!("exp          {} (exp {exp})", format::utc(exp));
    }
    let now = SystemTime::now();
    let expires_on = acquired.credentials.expires_on();
    println!("expires      {}", when(expires_on, now));
    if let Some(refresh_at) = acquired.refresh_at {
        println!("refresh      {}", when(refresh_at, now));
    }
    println!("acquired in  {}", format::millis(acquired.elapsed));

    if show_token {
        println!("token        {}", acquired.credentials.password());
    }
}

/// Formats a time as UTC and relative to `now`: `2026-01-01T00:00:00Z, in 59 min 58 s`.
fn when(time: SystemTime, now: SystemTime) -> String {
    format!(
        "{}, {}",
        format::utc(format::unix_seconds(time)),
        format::relative(time, now)
    )
}
