//! Performs the I/O steps of token exchanges for every adapter: HTTP requests with ureq,
//! file reads and programs. All of it blocks, so async adapters call it on a blocking
//! thread.

pub(crate) mod http;
mod pinned_tls;
pub(crate) mod steps;
