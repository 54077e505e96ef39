#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod azure_cli;
mod chain;
mod credentials;
mod date;
mod entra;
mod environment;
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
mod workload;

pub use azure_cli::{AzureCliCredential, DEFAULT_CLI_TIMEOUT};
pub use chain::{ChainOptions, ChainedCredential};
#[cfg(feature = "certificate")]
mod certificate;
#[cfg(feature = "certificate")]
pub use certificate::{ASSERTION_LIFETIME, ClientCertificate, ClientCertificateCredential};

pub use credentials::{Credentials, Username};
pub use entra::{AuthorityHost, ClientSecretCredential, DEFAULT_REQUEST_TIMEOUT, REDIS_SCOPE};
pub use environment::EnvironmentCredential;
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
pub use workload::{MAX_ASSERTION_LEN, WorkloadIdentityCredential};

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

#[cfg(any(feature = "blocking", feature = "smol", feature = "async-std"))]
#[path = "../runtimes/replies.rs"]
mod replies;
