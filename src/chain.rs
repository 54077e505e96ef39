//! A chain of credentials that uses the first one available, like the Azure SDKs'
//! `DefaultAzureCredential`.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use log::debug;

use crate::azure_cli::AzureCliCredential;
use crate::entra::REDIS_SCOPE;
use crate::environment::EnvironmentCredential;
use crate::error::Error;
use crate::managed_identity::{HostingEnvironment, ManagedIdentityCredential, UserAssigned};
use crate::source::{Exchange, Next, StepOutput, TokenSource};
use crate::workload::WorkloadIdentityCredential;

const NAME: &str = "chained";

/// The value of `selected` before any credential succeeded.
const NONE_SELECTED: usize = usize::MAX;

/// The credential kinds a chain built from the environment can hold, in chain order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Environment,
    WorkloadIdentity,
    ManagedIdentity,
    AzureCli,
}

const ALL: &[Kind] = &[
    Kind::Environment,
    Kind::WorkloadIdentity,
    Kind::ManagedIdentity,
    Kind::AzureCli,
];

/// Settings for [`ChainedCredential::from_env_with`].
#[derive(Clone, Debug)]
pub struct ChainOptions {
    scope: String,
    azure_cli: AzureCliCredential,
}

impl Default for ChainOptions {
    fn default() -> Self {
        ChainOptions {
            scope: REDIS_SCOPE.to_owned(),
            azure_cli: AzureCliCredential::new(),
        }
    }
}

impl ChainOptions {
    /// Requests `scope` from every credential instead of
    /// `https://redis.azure.com/.default`.
    ///
    /// The scope is checked as an Azure CLI argument: ASCII letters, digits and `.-_:/`
    /// only, and no leading `-`.
    pub fn with_scope(mut self, scope: &str) -> Result<Self, Error> {
        self.azure_cli = self.azure_cli.with_scope(scope)?;
        self.scope = scope.to_owned();
        Ok(self)
    }

    /// Ends the chain with this Azure CLI credential, for example one with a local time
    /// zone, a tenant or another program. The chain requests its own scope through it.
    pub fn with_azure_cli(mut self, credential: AzureCliCredential) -> Self {
        self.azure_cli = credential;
        self
    }
}

/// Tries its credentials in order and uses the first that returns a token.
///
/// An exchange moves on to the next credential only when one returns
/// [`Error::CredentialUnavailable`] (not configured, not installed, not logged in). Any
/// other error stops it and is returned as [`Error::ChainFailed`], which lists the
/// credentials tried before. When every credential is unavailable, the exchange returns
/// [`Error::CredentialUnavailable`] listing each reason. After the first token, every
/// later exchange uses only the credential that returned it.
///
/// [`from_env`](Self::from_env) builds the chain that the Azure SDKs'
/// `DefaultAzureCredential` tries; [`new`](Self::new) takes any sources.
#[derive(Clone)]
pub struct ChainedCredential {
    chain: Arc<Chain>,
}

struct Chain {
    entries: Vec<Box<dyn TokenSource>>,
    /// The index of the credential that returned the first token, or `NONE_SELECTED`.
    selected: AtomicUsize,
}

impl ChainedCredential {
    /// Creates a chain that tries `entries` in order.
    pub fn new(entries: Vec<Box<dyn TokenSource>>) -> Self {
        ChainedCredential {
            chain: Arc::new(Chain {
                entries,
                selected: AtomicUsize::new(NONE_SELECTED),
            }),
        }
    }

    /// Builds the chain from the environment, read through `lookup` (pass
    /// `|name| std::env::var(name).ok()`), with the default [`ChainOptions`].
    ///
    /// The chain is the environment credential ([`EnvironmentCredential`]), then
    /// workload identity ([`WorkloadIdentityCredential`]), then managed identity, then the
    /// Azure CLI ([`AzureCliCredential`]). `AZURE_TOKEN_CREDENTIALS` narrows it: `dev`
    /// keeps the Azure CLI, `prod` keeps the first three, and a credential name keeps
    /// that one (`EnvironmentCredential`, `WorkloadIdentityCredential`,
    /// `ManagedIdentityCredential` or `AzureCliCredential`). The value is trimmed and
    /// compared without case. Another value is an [`Error::Config`].
    ///
    /// A credential whose variables are not set is kept as an entry that returns
    /// [`Error::CredentialUnavailable`]; one whose variables are invalid is kept as an
    /// entry that returns the [`Error::Config`], which stops the chain when reached.
    pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        Self::from_env_with(lookup, ChainOptions::default())
    }

    /// Like [`from_env`](Self::from_env), with `options`.
    pub fn from_env_with(
        lookup: impl Fn(&str) -> Option<String>,
        options: ChainOptions,
    ) -> Result<Self, Error> {
        let kinds = selection(lookup("AZURE_TOKEN_CREDENTIALS"))?;
        // Python's DefaultAzureCredential skips the short IMDS probe when managed
        // identity was selected alone, because then it is known to be wanted.
        let probe = kinds.len() > 1;
        let mut entries: Vec<Box<dyn TokenSource>> = Vec::new();
        for kind in kinds {
            let entry = match kind {
                Kind::Environment => built(
                    "environment",
                    EnvironmentCredential::from_env(&lookup).map(|c| c.with_scope(&options.scope)),
                ),
                Kind::WorkloadIdentity => built(
                    "workload identity",
                    WorkloadIdentityCredential::from_env(&lookup)
                        .map(|c| c.with_scope(&options.scope)),
                ),
                Kind::ManagedIdentity => managed_identity(&lookup, &options.scope, probe),
                Kind::AzureCli => Box::new(options.azure_cli.clone().with_scope(&options.scope)?),
            };
            entries.push(entry);
        }
        Ok(Self::new(entries))
    }

    /// Returns the names of the credentials, in chain order.
    pub fn names(&self) -> Vec<&str> {
        self.chain
            .entries
            .iter()
            .map(|entry| entry.name())
            .collect()
    }

    /// Returns the name of the credential that returned the first token, if any has.
    pub fn selected(&self) -> Option<&str> {
        let index = self.chain.selected.load(Ordering::Acquire);
        self.chain.entries.get(index).map(|entry| entry.name())
    }
}

/// Parses `AZURE_TOKEN_CREDENTIALS` into the credential kinds to try.
fn selection(value: Option<String>) -> Result<Vec<Kind>, Error> {
    let value = value.unwrap_or_default();
    let kinds: &[Kind] = match value.trim().to_ascii_lowercase().as_str() {
        "" => ALL,
        "dev" => &[Kind::AzureCli],
        "prod" => &[
            Kind::Environment,
            Kind::WorkloadIdentity,
            Kind::ManagedIdentity,
        ],
        "environmentcredential" => &[Kind::Environment],
        "workloadidentitycredential" => &[Kind::WorkloadIdentity],
        "managedidentitycredential" => &[Kind::ManagedIdentity],
        "azureclicredential" => &[Kind::AzureCli],
        _ => {
            return Err(Error::config(
                "AZURE_TOKEN_CREDENTIALS",
                format!(
                    "`{value}` is not supported; use `dev`, `prod`, `EnvironmentCredential`, \
                     `WorkloadIdentityCredential`, `ManagedIdentityCredential` or \
                     `AzureCliCredential`, or leave it unset"
                ),
            ));
        }
    };
    Ok(kinds.to_vec())
}

/// Turns the result of building a credential into a chain entry. A credential that
/// could not be built becomes an entry that returns the reason at each exchange.
fn built<T: TokenSource>(name: &str, result: Result<T, Error>) -> Box<dyn TokenSource> {
    match result {
        Ok(credential) => Box::new(credential),
        Err(error) => {
            debug!("{name} credential not built from the environment: {error}");
            Box::new(Unusable {
                name: name.to_owned(),
                error,
            })
        }
    }
}

/// How long the chain waits for IMDS before deciding there is no managed identity, as
/// the Azure SDKs probe it with a short timeout so a chain off Azure does not hang.
const IMDS_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The managed-identity entry of a chain built from the environment.
///
/// It detects the hosting environment through `lookup`, uses a set `AZURE_CLIENT_ID` as
/// the user-assigned client id and requests `scope` without `/.default`. On IMDS, which
/// has no variable to show it exists, `probe` makes the first attempts use a short
/// timeout and report a transport failure as unavailable, so the chain moves on.
fn managed_identity(
    lookup: &impl Fn(&str) -> Option<String>,
    scope: &str,
    probe: bool,
) -> Box<dyn TokenSource> {
    let name = "managed identity";
    let mut credential =
        match ManagedIdentityCredential::from_env(lookup).and_then(|c| c.with_scope(scope)) {
            Ok(credential) => credential,
            Err(error) => return built::<ManagedIdentityCredential>(name, Err(error)),
        };
    if let Some(client_id) = lookup("AZURE_CLIENT_ID").filter(|v| !v.is_empty()) {
        match credential.with_user_assigned(UserAssigned::ClientId(client_id)) {
            Ok(assigned) => credential = assigned,
            Err(error) => return built::<ManagedIdentityCredential>(name, Err(error)),
        }
    }
    if !probe || credential.hosting_environment() != HostingEnvironment::Imds {
        return Box::new(credential);
    }
    Box::new(ImdsProbe {
        probe: credential.clone().with_request_timeout(IMDS_PROBE_TIMEOUT),
        full: credential,
        reached: Arc::new(AtomicBool::new(false)),
    })
}

/// IMDS behind a probe: until IMDS has answered once, attempts use a short timeout and a
/// transport failure means "no managed identity here".
struct ImdsProbe {
    probe: ManagedIdentityCredential,
    full: ManagedIdentityCredential,
    reached: Arc<AtomicBool>,
}

impl TokenSource for ImdsProbe {
    fn name(&self) -> &str {
        "managed identity"
    }

    fn exchange(&self) -> Box<dyn Exchange> {
        if self.reached.load(Ordering::Acquire) {
            return self.full.exchange();
        }
        Box::new(ProbeExchange {
            inner: self.probe.exchange(),
            reached: Arc::clone(&self.reached),
        })
    }
}

struct ProbeExchange {
    inner: Box<dyn Exchange>,
    reached: Arc<AtomicBool>,
}

impl ProbeExchange {
    fn check(&self, next: Next) -> Next {
        match next {
            Next::Done(Err(Error::Transport { reason, .. })) => {
                Next::Done(Err(Error::CredentialUnavailable {
                    credential: "managed identity".to_owned(),
                    reason: format!("no IMDS endpoint answered ({reason})"),
                }))
            }
            Next::Done(outcome) => {
                // Any answer, even an error, shows that IMDS is there.
                self.reached.store(true, Ordering::Release);
                Next::Done(outcome)
            }
            step => step,
        }
    }
}

impl Exchange for ProbeExchange {
    fn start(&mut self, now: SystemTime) -> Next {
        let next = self.inner.start(now);
        self.check(next)
    }

    fn resume(&mut self, now: SystemTime, output: Result<StepOutput, Error>) -> Next {
        let next = self.inner.resume(now, output);
        self.check(next)
    }
}

/// A credential that could not be built; each exchange returns why.
struct Unusable {
    name: String,
    error: Error,
}

impl TokenSource for Unusable {
    fn name(&self) -> &str {
        &self.name
    }

    fn exchange(&self) -> Box<dyn Exchange> {
        Box::new(Failing(Some(self.error.clone())))
    }
}

/// An exchange that ends at once with an error.
struct Failing(Option<Error>);

impl Exchange for Failing {
    fn start(&mut self, _now: SystemTime) -> Next {
        Next::Done(Err(self.0.take().unwrap_or_else(|| {
            Error::config("token source driver", "started an exchange twice")
        })))
    }

    fn resume(&mut self, now: SystemTime, _output: Result<StepOutput, Error>) -> Next {
        self.start(now)
    }
}

impl fmt::Debug for ChainedCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChainedCredential")
            .field("credentials", &self.names())
            .field("selected", &self.selected())
            .finish()
    }
}

impl TokenSource for ChainedCredential {
    fn name(&self) -> &str {
        NAME
    }

    fn exchange(&self) -> Box<dyn Exchange> {
        Box::new(ChainExchange {
            chain: Arc::clone(&self.chain),
            index: 0,
            sticky: false,
            current: None,
            unavailable: Vec::new(),
        })
    }
}

/// Runs the entries' exchanges one after another until one returns a token or fails.
struct ChainExchange {
    chain: Arc<Chain>,
    /// The entry whose exchange is running.
    index: usize,
    /// Whether the chain already selected the entry at `index`, so no other is tried.
    sticky: bool,
    current: Option<Box<dyn Exchange>>,
    /// The errors of the entries that were unavailable so far.
    unavailable: Vec<Error>,
}

impl ChainExchange {
    fn entry_name(&self) -> String {
        self.chain.entries[self.index].name().to_owned()
    }

    /// Starts the exchange of the entry at `index`, or returns `None` when none is left.
    fn start_entry(&mut self, now: SystemTime) -> Option<Next> {
        let entry = self.chain.entries.get(self.index)?;
        let mut exchange = entry.exchange();
        let next = exchange.start(now);
        self.current = Some(exchange);
        Some(next)
    }

    /// Starts the entry at `index` and passes its first outcome to `advance`.
    fn start_and_advance(&mut self, now: SystemTime) -> Next {
        match self.start_entry(now) {
            Some(next) => self.advance(now, next),
            None => {
                self.current = None;
                Next::Done(Err(self.all_unavailable()))
            }
        }
    }

    /// Passes steps through and decides what an entry's outcome means for the chain.
    /// Each unavailable entry starts the next one, so this recurses at most once per
    /// entry.
    fn advance(&mut self, now: SystemTime, next: Next) -> Next {
        match next {
            Next::Step(step) => Next::Step(step),
            Next::Done(Ok(token)) => {
                self.select();
                Next::Done(Ok(token))
            }
            Next::Done(Err(error @ Error::CredentialUnavailable { .. })) if !self.sticky => {
                debug!("credential chain: {error}; trying the next credential");
                self.unavailable.push(error);
                self.index += 1;
                self.start_and_advance(now)
            }
            Next::Done(Err(error)) => {
                self.current = None;
                Next::Done(Err(Error::ChainFailed {
                    credential: self.entry_name(),
                    error: Box::new(error),
                    unavailable: std::mem::take(&mut self.unavailable),
                }))
            }
        }
    }

    /// Makes the entry at `index` the chain's choice, unless another exchange of the
    /// same chain already chose one.
    fn select(&mut self) {
        self.current = None;
        if self.sticky {
            return;
        }
        let chosen = self.chain.selected.compare_exchange(
            NONE_SELECTED,
            self.index,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        if chosen.is_ok() {
            debug!("credential chain selected {}", self.entry_name());
        }
    }

    fn all_unavailable(&mut self) -> Error {
        let reason = if self.unavailable.is_empty() {
            "the chain has no credentials".to_owned()
        } else {
            let tried: Vec<String> = self.unavailable.iter().map(Error::to_string).collect();
            format!(
                "no credential in the chain is available ({})",
                tried.join("; ")
            )
        };
        Error::CredentialUnavailable {
            credential: NAME.to_owned(),
            reason,
        }
    }
}

impl Exchange for ChainExchange {
    fn start(&mut self, now: SystemTime) -> Next {
        let selected = self.chain.selected.load(Ordering::Acquire);
        self.sticky = selected < self.chain.entries.len();
        self.index = if self.sticky { selected } else { 0 };
        self.unavailable.clear();
        self.start_and_advance(now)
    }

    fn resume(&mut self, now: SystemTime, output: Result<StepOutput, Error>) -> Next {
        let Some(exchange) = self.current.as_mut() else {
            return Next::Done(Err(Error::config(
                "token source driver",
                "resumed an exchange that had finished",
            )));
        };
        let next = exchange.resume(now, output);
        self.advance(now, next)
    }
}

#[cfg(test)]
mod tests;
