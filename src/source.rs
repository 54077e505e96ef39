//! The interface between a credential kind and the drivers that perform its I/O.
//!
//! A token attempt is an [`Exchange`]: a small state machine that asks its driver for one
//! [`Step`] at a time (send this HTTP request, read this file, run this program) and turns
//! the outputs into a token or a classified error. Drivers perform the steps; the
//! exchanges decide everything.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use crate::error::Error;
use crate::http::{HttpRequest, HttpResponse};
use crate::token::Token;

/// One piece of I/O an exchange needs.
#[derive(Debug)]
#[non_exhaustive]
pub enum Step {
    /// Send this request; the output is [`StepOutput::Http`], whatever the status.
    Http(HttpRequest),
    /// Read this file, failing if it is longer than `max_len` bytes; the output is
    /// [`StepOutput::File`].
    ReadFile {
        /// The file to read; symbolic links are followed at each read.
        path: PathBuf,
        /// The largest accepted size in bytes.
        max_len: u64,
    },
    /// Run this program without a shell; the output is [`StepOutput::Program`].
    Run(ProgramRequest),
}

/// A program to run, with its arguments and a time limit.
#[derive(Clone, PartialEq, Eq)]
pub struct ProgramRequest {
    /// The program: a name looked up on `PATH`, or a path to the program.
    pub program: String,
    /// The arguments, passed as they are.
    pub args: Vec<String>,
    /// The time after which the program is killed.
    pub timeout: Duration,
}

impl fmt::Debug for ProgramRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProgramRequest")
            .field("program", &self.program)
            .field("args", &self.args)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The output of a [`Step`].
#[derive(Debug)]
#[non_exhaustive]
pub enum StepOutput {
    /// The response to [`Step::Http`].
    Http(HttpResponse),
    /// The contents of the file of [`Step::ReadFile`].
    File(Vec<u8>),
    /// The result of [`Step::Run`].
    Program(ProgramOutput),
}

/// The exit code and output of a finished program.
#[derive(Clone)]
pub struct ProgramOutput {
    /// The exit code, or `None` when a signal ended the program.
    pub exit_code: Option<i32>,
    /// Standard output, which may contain a token.
    pub stdout: Vec<u8>,
    /// Standard error.
    pub stderr: Vec<u8>,
}

impl fmt::Debug for ProgramOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProgramOutput")
            .field("exit_code", &self.exit_code)
            .field("stdout_len", &self.stdout.len())
            .field("stderr_len", &self.stderr.len())
            .finish()
    }
}

/// The next thing an exchange needs: a step to perform, or its final outcome.
#[derive(Debug)]
pub enum Next {
    /// Perform this step and pass its output to [`Exchange::resume`].
    Step(Step),
    /// The attempt is over.
    Done(Result<Token, Error>),
}

/// One token attempt in progress.
pub trait Exchange: Send {
    /// Returns the first step, or the outcome when the attempt needs no I/O.
    fn start(&mut self, now: SystemTime) -> Next;

    /// Takes the output of the last step, received at `now`, and returns the next one.
    /// A failed step (a transport error, an unreadable file) is passed as `Err`.
    fn resume(&mut self, now: SystemTime, output: Result<StepOutput, Error>) -> Next;
}

/// A source of tokens: each attempt is a new [`Exchange`].
///
/// Implement it to plug in a token source of your own; sources that need one HTTP
/// request per token can implement [`HttpTokenSource`] instead.
///
/// # Example
///
/// A source that reads a JWT which another process (a sidecar, a login helper) keeps up
/// to date in a file. The exchange requests a file read from its driver, and takes the
/// expiry from the token's `exp` claim. Here the exchange is driven by hand, as a unit
/// test would; `blocking::EntraIdProvider::new(source)` drives it for real.
///
/// ```
/// use std::path::PathBuf;
/// use std::time::SystemTime;
///
/// use redis_entraid::{
///     Claims, Error, Exchange, Next, Step, StepOutput, Token, TokenError, TokenSource,
///     unexpected_output,
/// };
///
/// struct TokenFile(PathBuf);
///
/// impl TokenSource for TokenFile {
///     fn name(&self) -> &str {
///         "token file"
///     }
///
///     fn exchange(&self) -> Box<dyn Exchange> {
///         Box::new(ReadTokenFile(self.0.clone()))
///     }
/// }
///
/// struct ReadTokenFile(PathBuf);
///
/// impl Exchange for ReadTokenFile {
///     fn start(&mut self, _now: SystemTime) -> Next {
///         let path = self.0.clone();
///         Next::Step(Step::ReadFile { path, max_len: 16 * 1024 })
///     }
///
///     fn resume(&mut self, _now: SystemTime, output: Result<StepOutput, Error>) -> Next {
///         Next::Done(match output {
///             Ok(StepOutput::File(contents)) => parse(&contents),
///             Ok(other) => Err(unexpected_output(&other)),
///             Err(error) => Err(error),
///         })
///     }
/// }
///
/// fn parse(contents: &[u8]) -> Result<Token, Error> {
///     let jwt = String::from_utf8_lossy(contents).trim().to_owned();
///     let expires_on = Claims::from_jwt(&jwt)?
///         .expires_at()
///         .ok_or(TokenError::InvalidClaim { claim: "exp" })?;
///     Ok(Token::new(jwt, expires_on))
/// }
///
/// let source = TokenFile("/run/secrets/redis-token".into());
/// let mut exchange = source.exchange();
/// let Next::Step(Step::ReadFile { path, .. }) = exchange.start(SystemTime::now()) else {
///     panic!("expected a file read");
/// };
/// assert_eq!(path, PathBuf::from("/run/secrets/redis-token"));
///
/// // An unsigned JWT for the object id 11111111-…, expiring in 2100.
/// let jwt = "e30.eyJvaWQiOiIxMTExMTExMS0yMjIyLTMzMzMtNDQ0NC01NTU1NTU1NTU1NTUiLCJleHAiOjQxMDI0NDQ4MDB9.c2ln";
/// let contents = Ok(StepOutput::File(format!("{jwt}\n").into_bytes()));
/// let Next::Done(Ok(token)) = exchange.resume(SystemTime::now(), contents) else {
///     panic!("expected a token");
/// };
/// assert_eq!(token.access_token().expose_secret(), jwt);
/// ```
pub trait TokenSource: Send + Sync + 'static {
    /// A short name for logs and diagnostics, such as `client secret`.
    fn name(&self) -> &str;

    /// Starts a token attempt.
    fn exchange(&self) -> Box<dyn Exchange>;
}

/// A token source that sends one HTTP request per token.
pub trait HttpTokenSource: Clone + Send + Sync + 'static {
    /// A short name for logs and diagnostics, such as `client secret`.
    fn name(&self) -> &str;

    /// Builds the next token request. Called once per attempt, so a source may put a
    /// fresh value (an assertion, a nonce) in each.
    fn token_request(&self, now: SystemTime) -> Result<HttpRequest, Error>;

    /// Parses the response to a request built by [`HttpTokenSource::token_request`],
    /// received at `now`.
    fn parse_response(&self, response: &HttpResponse, now: SystemTime) -> Result<Token, Error>;
}

impl<S: HttpTokenSource> TokenSource for S {
    fn name(&self) -> &str {
        HttpTokenSource::name(self)
    }

    fn exchange(&self) -> Box<dyn Exchange> {
        Box::new(SingleRequest(self.clone()))
    }
}

/// The exchange of an [`HttpTokenSource`]: one request, one response.
struct SingleRequest<S>(S);

impl<S: HttpTokenSource> Exchange for SingleRequest<S> {
    fn start(&mut self, now: SystemTime) -> Next {
        match self.0.token_request(now) {
            Ok(request) => Next::Step(Step::Http(request)),
            Err(error) => Next::Done(Err(error)),
        }
    }

    fn resume(&mut self, now: SystemTime, output: Result<StepOutput, Error>) -> Next {
        Next::Done(match output {
            Ok(StepOutput::Http(response)) => self.0.parse_response(&response, now),
            Ok(other) => Err(unexpected_output(&other)),
            Err(error) => Err(error),
        })
    }
}

/// Returns the error for a driver that returned the output of another kind of step.
pub fn unexpected_output(output: &StepOutput) -> Error {
    let kind = match output {
        StepOutput::Http(_) => "an HTTP response",
        StepOutput::File(_) => "file contents",
        StepOutput::Program(_) => "program output",
    };
    Error::config(
        "token source driver",
        format!("returned {kind} for another kind of step"),
    )
}

/// A fixed token, for tests and for tokens obtained elsewhere.
#[derive(Clone, Debug)]
pub struct StaticToken(Token);

impl StaticToken {
    /// Serves `token` on every attempt.
    pub fn new(token: Token) -> Self {
        StaticToken(token)
    }
}

impl TokenSource for StaticToken {
    fn name(&self) -> &str {
        "static token"
    }

    fn exchange(&self) -> Box<dyn Exchange> {
        Box::new(Ready(Some(self.0.clone())))
    }
}

struct Ready(Option<Token>);

impl Exchange for Ready {
    fn start(&mut self, _now: SystemTime) -> Next {
        match self.0.take() {
            Some(token) => Next::Done(Ok(token)),
            None => Next::Done(Err(Error::config(
                "static token",
                "the exchange was started twice",
            ))),
        }
    }

    fn resume(&mut self, now: SystemTime, _output: Result<StepOutput, Error>) -> Next {
        self.start(now)
    }
}
