#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod credentials;
mod date;
mod entra;
mod error;
mod http;
mod managed_identity;
mod manager;
mod policy;
// Used only by the runtime adapters.
#[cfg_attr(not(feature = "blocking"), allow(dead_code))]
mod reply;
mod response;
mod secret;
mod source;
mod token;

pub use credentials::{Credentials, Username};
pub use entra::{AuthorityHost, ClientSecretCredential, DEFAULT_REQUEST_TIMEOUT, REDIS_SCOPE};
pub use error::{EndpointError, Error, TokenError};
pub use http::{HttpRequest, HttpResponse, Method, ServerCertificate};
pub use managed_identity::{HostingEnvironment, ManagedIdentityCredential, UserAssigned};
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
