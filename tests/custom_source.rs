//! Token sources written outside the crate, run by the blocking provider.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use httpmock::prelude::*;

use common::jwt::{OID, jwt, token_body};
use redis_entraid::blocking::EntraIdProvider;
use redis_entraid::{
    Error, HttpRequest, HttpResponse, HttpTokenSource, StaticToken, Token, parse_token_response,
};

/// A company token broker: `GET {url}` with an API key header returns an Entra-style
/// token body.
#[derive(Clone)]
struct TokenBroker {
    url: String,
    api_key: String,
}

impl HttpTokenSource for TokenBroker {
    fn name(&self) -> &str {
        "token broker"
    }

    fn token_request(&self, _now: SystemTime) -> Result<HttpRequest, Error> {
        Ok(HttpRequest::get(&self.url, Duration::from_secs(5))
            .with_header("X-Api-Key", &self.api_key))
    }

    fn parse_response(&self, response: &HttpResponse, now: SystemTime) -> Result<Token, Error> {
        parse_token_response(response, now)
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn http_source_of_user_is_driven() {
    let server = MockServer::start();
    let broker = server.mock(|when, then| {
        when.method(GET)
            .path("/redis-token")
            .header("x-api-key", "key-1");
        then.status(200)
            .body(token_body(&jwt(OID, unix_now() + 3600, 1), 3600));
    });
    let source = TokenBroker {
        url: server.url("/redis-token"),
        api_key: "key-1".to_owned(),
    };
    let provider = EntraIdProvider::new(source);
    let credentials = provider.get_credentials().expect("token from the broker");
    assert_eq!(credentials.username(), OID);
    assert_eq!(provider.source_name(), "token broker");
    broker.assert_calls(1);
}

#[test]
fn static_token_is_served() {
    let token = jwt(OID, unix_now() + 600, 1);
    let expires_on = UNIX_EPOCH + Duration::from_secs(unix_now() + 600);
    let provider = EntraIdProvider::new(StaticToken::new(Token::new(token.clone(), expires_on)));
    let credentials = provider.get_credentials().expect("the static token");
    assert_eq!(credentials.username(), OID);
    assert_eq!(credentials.password(), token);
    assert_eq!(credentials.expires_on(), expires_on);
}
