//! The mock token endpoint served by a plain HTTP/1.1 loop on a std thread.
//!
//! httpmock serves on a tokio runtime of its own. Tests and examples of the smol and
//! async-std adapters use this front end instead, so their processes run no tokio
//! runtime at all.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use super::token_endpoint::{Issued, Issuer, credential_for, token_path};
use redis_entraid::ClientSecretCredential;

/// The largest request body read; token requests are a few hundred bytes.
const MAX_BODY: usize = 64 * 1024;

/// A token endpoint on a free loopback port; it stops when dropped.
pub struct PlainTokenEndpoint {
    issuer: Arc<Issuer>,
    address: SocketAddr,
    stop: Arc<AtomicBool>,
    server: Option<JoinHandle<()>>,
}

impl PlainTokenEndpoint {
    /// Starts an endpoint that issues tokens valid for `lifetime`; with `redis_url`, the
    /// server accepts each token until it expires (see `TokenEndpoint::start`).
    pub fn start(lifetime: Duration, redis_url: Option<String>) -> Self {
        let issuer = Issuer::start(lifetime, redis_url);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let address = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let server = {
            let (issuer, stop) = (Arc::clone(&issuer), Arc::clone(&stop));
            std::thread::spawn(move || serve(&listener, &issuer, &stop))
        };
        PlainTokenEndpoint {
            issuer,
            address,
            stop,
            server: Some(server),
        }
    }

    /// Returns the endpoint's URL, such as `http://127.0.0.1:41234`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Returns a client-secret credential pointed at this endpoint.
    pub fn credential(&self) -> ClientSecretCredential {
        credential_for(&self.base_url())
    }

    /// Returns all tokens issued so far, oldest first.
    pub fn issued(&self) -> Vec<Issued> {
        self.issuer.issued()
    }

    /// Counts the token requests served.
    pub fn requests(&self) -> u64 {
        self.issuer.requests()
    }

    /// When each token request arrived, oldest first.
    pub fn request_times(&self) -> Vec<std::time::Instant> {
        self.issuer.request_times()
    }

    /// See [`Issuer::set_down`].
    pub fn set_down(&self, down: bool) {
        self.issuer.set_down(down);
    }

    /// See [`Issuer::repeat_last_token`].
    pub fn repeat_last_token(&self, repeat: bool) {
        self.issuer.repeat_last_token(repeat);
    }

    /// See [`Issuer::fail_every`].
    pub fn fail_every(&self, n: u64) {
        self.issuer.fail_every(n);
    }

    /// See [`Issuer::failures`].
    pub fn failures(&self) -> u64 {
        self.issuer.failures()
    }

    /// Adds the valid tokens to a restarted server's ACL; see [`Issuer::restore_acl`].
    pub fn restore_acl(&self) {
        self.issuer.restore_acl();
    }
}

impl Drop for PlainTokenEndpoint {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Unblock accept() so the loop reads the flag.
        let _ = TcpStream::connect(self.address);
        if let Some(server) = self.server.take() {
            let _ = server.join();
        }
    }
}

/// Serves one request per connection, one connection at a time.
fn serve(listener: &TcpListener, issuer: &Issuer, stop: &AtomicBool) {
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        if let Ok(stream) = stream {
            // A client that breaks off mid-request only loses its own response.
            let _ = respond(stream, issuer);
        }
    }
}

fn respond(stream: TcpStream, issuer: &Issuer) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream);

    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut content_length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            content_length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; content_length.min(MAX_BODY)];
    reader.read_exact(&mut body)?;

    let expected = format!("POST {} ", token_path());
    let (status, body) = if request_line.starts_with(&expected) {
        match issuer.issue() {
            (200, body) => ("200 OK", body),
            (_, body) => ("503 Service Unavailable", body),
        }
    } else {
        ("404 Not Found", r#"{"error":"not_found"}"#.to_owned())
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    reader.into_inner().write_all(response.as_bytes())
}

/// A loopback port that accepts TCP connections (the kernel completes the handshake)
/// but never reads or responds; it closes when dropped.
pub struct SilentEndpoint {
    listener: TcpListener,
}

impl SilentEndpoint {
    /// Binds a free loopback port.
    pub fn start() -> Self {
        SilentEndpoint {
            listener: TcpListener::bind("127.0.0.1:0").expect("bind a loopback port"),
        }
    }

    /// Returns a client-secret credential pointed at this endpoint.
    pub fn credential(&self) -> ClientSecretCredential {
        let address = self.listener.local_addr().unwrap();
        credential_for(&format!("http://{address}"))
    }
}
