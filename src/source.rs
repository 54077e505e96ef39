//! The interface between a credential kind and the token manager.

use std::time::SystemTime;

use crate::error::Error;
use crate::http::{HttpRequest, HttpResponse};
use crate::token::Token;

/// A source of tokens that talks HTTP: it builds a request and parses the response, and
/// an adapter sends the request in between.
///
/// Implement it to plug in a token source of your own; the adapters drive any
/// implementation the same way.
pub trait TokenSource: Send + Sync + 'static {
    /// A short name for logs and diagnostics, such as `client secret`.
    fn name(&self) -> &str;

    /// Builds the next token request. Called once per attempt, so a source may put a
    /// fresh value (an assertion, a nonce) in each.
    fn token_request(&self, now: SystemTime) -> Result<HttpRequest, Error>;

    /// Parses the response to a request built by [`TokenSource::token_request`],
    /// received at `now`.
    fn parse_response(&self, response: &HttpResponse, now: SystemTime) -> Result<Token, Error>;
}
