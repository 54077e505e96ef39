//! Builds the token source the way the library's users do, and acquires one token.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use redis_entraid::blocking::EntraIdProvider;

use crate::args::CredentialOptions;
use crate::explain;
use crate::failure::Failure;
use redis_entraid::{
    AzureCliCredential, ChainOptions, ChainedCredential, Claims, ClientSecretCredential,
    Credentials, Error, Exchange, TokenError, TokenSource, Username,
};

/// The credential a command uses: the chain, or one kind chosen with `--credential`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Chain,
    Environment,
    ClientSecret,
    ClientCertificate,
    WorkloadIdentity,
    ManagedIdentity,
    AzureCli,
}

impl Kind {
    /// The `--credential` values, in the order `--help` lists them.
    pub const NAMES: &[(&str, &str)] = &[
        (
            "chain",
            "environment, workload identity, managed identity, then Azure CLI, narrowed by \
             AZURE_TOKEN_CREDENTIALS (default)",
        ),
        (
            "environment",
            "the environment credential alone (AZURE_TOKEN_CREDENTIALS=EnvironmentCredential)",
        ),
        (
            "client-secret",
            "a service principal with AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_CLIENT_SECRET",
        ),
        (
            "client-certificate",
            "a service principal with AZURE_TENANT_ID, AZURE_CLIENT_ID, \
             AZURE_CLIENT_CERTIFICATE_PATH",
        ),
        (
            "workload-identity",
            "AKS workload identity alone (AZURE_TOKEN_CREDENTIALS=WorkloadIdentityCredential)",
        ),
        (
            "managed-identity",
            "managed identity alone, without the chain's short IMDS probe \
             (AZURE_TOKEN_CREDENTIALS=ManagedIdentityCredential)",
        ),
        (
            "azure-cli",
            "the Azure CLI alone (AZURE_TOKEN_CREDENTIALS=AzureCliCredential)",
        ),
    ];

    /// Parses a `--credential` value.
    pub fn parse(name: &str) -> Option<Kind> {
        Some(match name {
            "chain" => Kind::Chain,
            "environment" => Kind::Environment,
            "client-secret" => Kind::ClientSecret,
            "client-certificate" => Kind::ClientCertificate,
            "workload-identity" => Kind::WorkloadIdentity,
            "managed-identity" => Kind::ManagedIdentity,
            "azure-cli" => Kind::AzureCli,
            _ => return None,
        })
    }

    /// Returns the `AZURE_TOKEN_CREDENTIALS` value that narrows the chain to this kind,
    /// for the kinds the chain contains.
    fn chain_selection(self) -> Option<&'static str> {
        match self {
            Kind::Environment => Some("EnvironmentCredential"),
            Kind::WorkloadIdentity => Some("WorkloadIdentityCredential"),
            Kind::ManagedIdentity => Some("ManagedIdentityCredential"),
            Kind::AzureCli => Some("AzureCliCredential"),
            Kind::Chain | Kind::ClientSecret | Kind::ClientCertificate => None,
        }
    }
}

/// A token source built from the process environment.
pub struct Source {
    source: Arc<dyn TokenSource>,
    /// The chain, kept to read which credential it selected.
    chain: Option<ChainedCredential>,
}

impl Source {
    /// Builds the source for `kind` from the process environment.
    ///
    /// The kinds the chain contains are built as the chain narrowed by
    /// `AZURE_TOKEN_CREDENTIALS`, so they read the environment exactly as a program using
    /// `ChainedCredential::from_env` does.
    pub fn from_env(kind: Kind) -> Result<Source, Error> {
        Self::from_lookup(kind, |name| std::env::var(name).ok())
    }

    fn from_lookup(kind: Kind, lookup: impl Fn(&str) -> Option<String>) -> Result<Source, Error> {
        match kind {
            Kind::ClientSecret => Ok(Self::single(ClientSecretCredential::from_env(lookup)?)),
            Kind::ClientCertificate => client_certificate(lookup),
            _ => {
                let selection = kind.chain_selection();
                let narrowed = |name: &str| match (name, selection) {
                    ("AZURE_TOKEN_CREDENTIALS", Some(value)) => Some(value.to_owned()),
                    _ => lookup(name),
                };
                let options = ChainOptions::default()
                    .with_azure_cli(AzureCliCredential::new().with_system_time_zone());
                let chain = ChainedCredential::from_env_with(narrowed, options)?;
                Ok(Source {
                    source: Arc::new(chain.clone()),
                    chain: Some(chain),
                })
            }
        }
    }

    fn single(source: impl TokenSource) -> Source {
        Source {
            source: Arc::new(source),
            chain: None,
        }
    }

    /// Returns the name of the credential that returned the token, such as `environment`,
    /// or the source's own name before any token.
    pub fn credential(&self) -> String {
        match self.chain.as_ref().and_then(ChainedCredential::selected) {
            Some(selected) => selected.to_owned(),
            None => self.source.name().to_owned(),
        }
    }

    /// Returns the chain's credentials in order, or `None` for a single credential.
    pub fn chain_names(&self) -> Option<Vec<String>> {
        let chain = self.chain.as_ref()?;
        Some(chain.names().into_iter().map(str::to_owned).collect())
    }

    fn shared(&self) -> SharedSource {
        SharedSource(Arc::clone(&self.source))
    }
}

#[cfg(feature = "certificate")]
fn client_certificate(lookup: impl Fn(&str) -> Option<String>) -> Result<Source, Error> {
    let credential = redis_entraid::ClientCertificateCredential::from_env(lookup)?;
    Ok(Source::single(credential))
}

#[cfg(not(feature = "certificate"))]
fn client_certificate(_lookup: impl Fn(&str) -> Option<String>) -> Result<Source, Error> {
    Err(Error::CredentialUnavailable {
        credential: "client certificate".to_owned(),
        reason: "this redis-entraid was built without the `certificate` feature; install \
                 it with `--features cli,certificate`"
            .to_owned(),
    })
}

/// Lets several providers share one source, so the chain's selection carries over.
struct SharedSource(Arc<dyn TokenSource>);

impl TokenSource for SharedSource {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn exchange(&self) -> Box<dyn Exchange> {
        self.0.exchange()
    }
}

/// The Redis username given to a provider that only inspects a token without `oid`.
/// It is never sent: commands stop when the claims have no `oid`.
const NO_OID: &str = "(no oid)";

/// A token obtained through a running provider.
pub struct Acquired {
    /// The provider, which keeps the token fresh for connections.
    pub provider: EntraIdProvider,
    /// The username and token of the first token.
    pub credentials: Credentials,
    /// The token's decoded claims.
    pub claims: Claims,
    /// The credential that returned the token, such as `environment`.
    pub credential: String,
    /// How long the first token took.
    pub elapsed: Duration,
    /// When the provider will refresh the token.
    pub refresh_at: Option<SystemTime>,
}

impl Acquired {
    /// Returns true when the provider authenticates as the token's `oid`, which is the
    /// case unless the token has none.
    pub fn has_oid(&self) -> bool {
        self.claims.oid.is_some()
    }
}

/// Starts a provider for `source` and waits up to `timeout` for its first token.
///
/// The provider uses the token's `oid` as the Redis username, as the library does by
/// default. When the token has no `oid`, a second provider fetches a token only to show
/// its claims; [`Acquired::has_oid`] is then false.
pub fn acquire(source: &Source, timeout: Duration) -> Result<Acquired, Error> {
    match acquire_as(source, Username::ObjectId, timeout) {
        Err(Error::InvalidToken(TokenError::MissingObjectId)) => {
            acquire_as(source, Username::Fixed(NO_OID.to_owned()), timeout)
        }
        result => result,
    }
}

fn acquire_as(source: &Source, username: Username, timeout: Duration) -> Result<Acquired, Error> {
    let started = Instant::now();
    let provider = EntraIdProvider::builder(source.shared())
        .username(username)
        .first_token_timeout(timeout)
        .start();
    let credentials = match provider.get_credentials() {
        Ok(credentials) => credentials,
        Err(error) => {
            // Dropping a provider waits for its renewal thread, which may be inside a
            // token request for up to the request timeout (10 s). The command is about to
            // exit, so the thread is left to end with the process.
            std::mem::forget(provider);
            return Err(error);
        }
    };
    let elapsed = started.elapsed();
    let claims = Claims::from_jwt(credentials.password())?;
    Ok(Acquired {
        refresh_at: provider.refresh_at(),
        provider,
        credentials,
        claims,
        credential: source.credential(),
        elapsed,
    })
}

/// Builds the source the options select and acquires its first token, explaining any
/// failure.
pub fn acquire_from_options(options: &CredentialOptions) -> Result<(Source, Acquired), Failure> {
    let timeout = options.token_timeout;
    let source = Source::from_env(options.kind).map_err(|e| explain::token_error(&e, timeout))?;
    let acquired = acquire(&source, timeout).map_err(|e| explain::token_error(&e, timeout))?;
    Ok((source, acquired))
}
