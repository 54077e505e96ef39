#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod credentials;
mod entra;
mod error;
mod http;
mod manager;
mod policy;
mod response;
mod secret;
mod source;
mod token;

pub use credentials::{Credentials, Username};
pub use entra::{AuthorityHost, ClientSecretCredential, DEFAULT_REQUEST_TIMEOUT, REDIS_SCOPE};
pub use error::{EndpointError, Error, TokenError};
pub use http::{HttpRequest, HttpResponse, Method, ServerCertificate};
pub use manager::{Action, Event, State, TokenManager};
pub use policy::RefreshPolicy;
pub use response::{MAX_LIFETIME, parse_error_response, parse_token_response};
pub use secret::Secret;
pub use source::{
    Exchange, HttpTokenSource, Next, ProgramOutput, ProgramRequest, StaticToken, Step, StepOutput,
    TokenSource, unexpected_output,
};
pub use token::{Claims, Token};

#[cfg(feature = "blocking")]
#[path = "../runtimes/blocking/mod.rs"]
pub mod blocking;

#[cfg(any(feature = "smol", feature = "async-std"))]
#[path = "../runtimes/aio/mod.rs"]
pub mod aio;

#[cfg(feature = "smol")]
#[path = "../runtimes/smol/mod.rs"]
pub mod smol;

#[cfg(feature = "async-std")]
#[path = "../runtimes/async-std/mod.rs"]
pub mod async_std;

#[cfg(any(feature = "blocking", feature = "smol", feature = "async-std"))]
#[path = "../runtimes/io/mod.rs"]
mod io;
