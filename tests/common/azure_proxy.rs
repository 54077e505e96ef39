//! A RESP-aware TCP proxy in front of `redis-server` that enforces token expiry as Azure
//! Cache for Redis does.
//!
//! It reads the JWT in every `AUTH [user] token` and `HELLO … AUTH user token`:
//!
//! - the proxy itself rejects a token whose `exp` has passed with `-WRONGPASS …`, and the
//!   command never reaches the server;
//! - after a successful authentication the connection is tied to that token's `exp`, and
//!   the proxy closes the connection when `exp` passes without a newer successful `AUTH`;
//! - a connection that has not authenticated gets `-NOAUTH …` for any other command, so a
//!   command that succeeds proves that an authentication preceded it.
//!
//! Everything else is forwarded unchanged in both directions, RESP3 pushes included. An
//! `AUTH` on a RESP2 connection in subscribe mode reaches the server, which rejects it
//! with `-ERR Can't execute 'auth' …`, so such a connection is closed at expiry as on
//! Azure. The proxy matches replies to commands to see whether an `AUTH` succeeded:
//! every command expects one reply, except `(P|S)(UN)SUBSCRIBE`, whose confirmations are
//! recognised by their shape like pub/sub messages.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis_entraid::Claims;

/// The reply of Azure and of Redis to an `AUTH` with a wrong or expired password.
pub const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";

/// The forms in which servers reject credentials.
pub const WRONGPASS_FORMS: [&str; 3] = [
    WRONGPASS,
    "ERR WRONGPASS invalid username-password pair",
    "ERR invalid username-password pair",
];

/// The reply to a command that the user's ACL does not allow.
pub const NOPERM: &str = "NOPERM User 11111111-2222-3333-4444-555555555555 has no \
                          permissions to run the 'set' command";

/// The reply to a command on a connection that has not authenticated.
const NOAUTH: &str = "NOAUTH Authentication required.";

/// How often the proxy looks for connections whose token has expired.
const EXPIRY_CHECK_INTERVAL: Duration = Duration::from_millis(20);

/// Commands whose replies arrive as pub/sub confirmations instead of one reply each.
const SUBSCRIPTION_COMMANDS: [&str; 6] = [
    "SUBSCRIBE",
    "PSUBSCRIBE",
    "SSUBSCRIBE",
    "UNSUBSCRIBE",
    "PUNSUBSCRIBE",
    "SUNSUBSCRIBE",
];

/// The first element of RESP2 arrays that are pub/sub traffic rather than replies.
const PUBSUB_KINDS: [&[u8]; 9] = [
    b"message",
    b"pmessage",
    b"smessage",
    b"subscribe",
    b"psubscribe",
    b"ssubscribe",
    b"unsubscribe",
    b"punsubscribe",
    b"sunsubscribe",
];

/// The proxy; it stops and closes every connection when dropped.
pub struct AzureProxy {
    port: u16,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

struct Shared {
    upstream: SocketAddr,
    stop: AtomicBool,
    connections: Mutex<Vec<Arc<Connection>>>,
    /// Error lines (without `-`) that the proxy sends in reply to the next authentications.
    auth_rejections: Mutex<VecDeque<String>>,
    /// Error lines (without `-`) that the proxy sends in reply to the next other commands.
    command_rejections: Mutex<VecDeque<String>>,
    /// Close the connection that sends the next authentication, without forwarding it.
    close_on_next_auth: AtomicBool,
    closed_at_expiry: AtomicU64,
    expired_tokens: AtomicU64,
}

/// One proxied client connection.
struct Connection {
    client: TcpStream,
    server: TcpStream,
    /// The username and the token's `exp` of each `AUTH` and `HELLO … AUTH` received from
    /// the client; `default` when `AUTH` names no user, and 0 for a token that is not a JWT.
    authentications: Mutex<Vec<(String, u64)>>,
    state: Mutex<ConnectionState>,
}

struct ConnectionState {
    /// The `exp` of the token that last authenticated the connection, Unix seconds.
    expires_at: Option<u64>,
    /// The `exp` of a valid token whose `AUTH` reply has not arrived yet. It keeps the
    /// connection open, as a server that has received the `AUTH` would.
    auth_in_flight: Option<u64>,
    /// Replies owed to the client, oldest first.
    pending: VecDeque<Pending>,
    subscribed: bool,
    closed: bool,
}

/// What the proxy does with one client command.
enum Route {
    /// Forward it, queueing the entry for its reply if it has one.
    Forward(Option<Pending>),
    /// The proxy queued its own reply.
    Answered,
    /// Close the connection without answering.
    Close,
}

enum Pending {
    /// Forward the server's next reply; for an authentication, the token's `exp`.
    Reply { auth_exp: Option<u64> },
    /// Send this reply from the proxy once every earlier reply has been sent.
    Injected(Vec<u8>),
}

impl AzureProxy {
    /// Starts a proxy on a free loopback port in front of `127.0.0.1:upstream_port`.
    pub fn start(upstream_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            upstream: SocketAddr::from(([127, 0, 0, 1], upstream_port)),
            stop: AtomicBool::new(false),
            connections: Mutex::new(Vec::new()),
            auth_rejections: Mutex::new(VecDeque::new()),
            command_rejections: Mutex::new(VecDeque::new()),
            close_on_next_auth: AtomicBool::new(false),
            closed_at_expiry: AtomicU64::new(0),
            expired_tokens: AtomicU64::new(0),
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || accept_loop(&listener, &shared))
        };
        let expirer = {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || expiry_loop(&shared))
        };
        AzureProxy {
            port,
            shared,
            threads: vec![acceptor, expirer],
        }
    }

    /// Returns the URL for client connections, without credentials.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Answers the next `AUTH` (or `HELLO … AUTH`) with `-{error}` instead of forwarding
    /// it. Each call rejects one more.
    pub fn reject_next_auth(&self, error: &str) {
        lock(&self.shared.auth_rejections).push_back(error.to_owned());
    }

    /// Answers the next command other than `AUTH`, `HELLO` and the subscription commands
    /// with `-{error}` instead of forwarding it. Each call rejects one more.
    pub fn reject_next_command(&self, error: &str) {
        lock(&self.shared.command_rejections).push_back(error.to_owned());
    }

    /// Closes the connection that sends the next `AUTH` or `HELLO … AUTH`, so its sender
    /// gets an I/O error.
    pub fn close_on_next_auth(&self) {
        self.shared.close_on_next_auth.store(true, Ordering::SeqCst);
    }

    /// Counts the client connections accepted so far.
    pub fn connections(&self) -> usize {
        lock(&self.shared.connections).len()
    }

    /// Counts the `AUTH` and `HELLO … AUTH` commands of each connection, oldest first.
    pub fn authentications(&self) -> Vec<usize> {
        self.token_expiries().iter().map(Vec::len).collect()
    }

    /// Lists, per connection (oldest first), the `exp` of the token in each `AUTH` and
    /// `HELLO … AUTH` it sent, 0 for a token that is not a JWT.
    pub fn token_expiries(&self) -> Vec<Vec<u64>> {
        lock(&self.shared.connections)
            .iter()
            .map(|c| {
                lock(&c.authentications)
                    .iter()
                    .map(|(_, exp)| *exp)
                    .collect()
            })
            .collect()
    }

    /// Lists the username of every `AUTH` and `HELLO … AUTH` of every connection.
    pub fn usernames(&self) -> Vec<String> {
        lock(&self.shared.connections)
            .iter()
            .flat_map(|c| lock(&c.authentications).clone())
            .map(|(username, _)| username)
            .collect()
    }

    /// Counts the authentications rejected because their token had expired.
    pub fn expired_tokens(&self) -> u64 {
        self.shared.expired_tokens.load(Ordering::SeqCst)
    }

    /// Counts the connections closed because their token expired.
    pub fn closed_at_expiry(&self) -> u64 {
        self.shared.closed_at_expiry.load(Ordering::SeqCst)
    }

    /// Counts the connections that are still open.
    pub fn open_connections(&self) -> usize {
        lock(&self.shared.connections)
            .iter()
            .filter(|c| !lock(&c.state).closed)
            .count()
    }

    /// Closes every open connection, as a server restart or failover does.
    pub fn close_all(&self) {
        for connection in lock(&self.shared.connections).iter() {
            connection.close();
        }
    }
}

impl Drop for AzureProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wakes the acceptor, which then reads the stop flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        self.close_all();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        let Ok(server) = TcpStream::connect(shared.upstream) else {
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let connection = Arc::new(Connection {
            client,
            server,
            authentications: Mutex::new(Vec::new()),
            state: Mutex::new(ConnectionState {
                expires_at: None,
                auth_in_flight: None,
                pending: VecDeque::new(),
                subscribed: false,
                closed: false,
            }),
        });
        lock(&shared.connections).push(Arc::clone(&connection));
        let upstream = Arc::clone(&connection);
        let shared_for_client = Arc::clone(shared);
        std::thread::spawn(move || upstream.client_to_server(&shared_for_client));
        std::thread::spawn(move || connection.server_to_client());
    }
}

fn expiry_loop(shared: &Shared) {
    while !shared.stop.load(Ordering::SeqCst) {
        let now = unix_now();
        for connection in lock(&shared.connections).iter() {
            let expired = {
                let state = lock(&connection.state);
                let deadline = state.expires_at.max(state.auth_in_flight);
                !state.closed && deadline.is_some_and(|exp| now >= exp as f64)
            };
            if expired {
                // Counted first, so a client that notices the close can read the count.
                shared.closed_at_expiry.fetch_add(1, Ordering::SeqCst);
                connection.close();
            }
        }
        std::thread::sleep(EXPIRY_CHECK_INTERVAL);
    }
}

impl Connection {
    fn close(&self) {
        lock(&self.state).closed = true;
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.server.shutdown(Shutdown::Both);
    }

    /// Reads commands from the client, answers rejected ones itself and forwards the rest.
    fn client_to_server(&self, shared: &Shared) {
        let mut client = &self.client;
        let mut server = &self.server;
        let mut buffer = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let read = match client.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(read) => read,
            };
            buffer.extend_from_slice(&chunk[..read]);
            let mut forward = Vec::new();
            let mut state = lock(&self.state);
            while let Some((args, len)) = parse_command(&buffer) {
                let raw: Vec<u8> = buffer.drain(..len).collect();
                match self.route(shared, &mut state, &args) {
                    Route::Forward(pending) => {
                        state.pending.extend(pending);
                        forward.extend_from_slice(&raw);
                    }
                    Route::Answered => {}
                    Route::Close => {
                        drop(state);
                        self.close();
                        return;
                    }
                }
            }
            // Entries are queued before the commands go out, so no reply can arrive
            // before the entry that matches it.
            self.flush_injected(&mut state);
            drop(state);
            if !forward.is_empty() && server.write_all(&forward).is_err() {
                break;
            }
        }
        self.close();
    }

    /// Decides what happens to one command.
    fn route(&self, shared: &Shared, state: &mut ConnectionState, args: &[Vec<u8>]) -> Route {
        let name = args
            .first()
            .map(|a| String::from_utf8_lossy(a).to_ascii_uppercase())
            .unwrap_or_default();
        if SUBSCRIPTION_COMMANDS.contains(&name.as_str()) {
            if name.ends_with("SUBSCRIBE") && !name.contains("UNSUB") {
                state.subscribed = true;
            }
            return Route::Forward(None);
        }
        if let Some((username, token)) = auth_arguments(&name, args) {
            return self.route_authentication(shared, state, username, token);
        }
        if name == "HELLO" || name == "QUIT" {
            return Route::Forward(Some(Pending::Reply { auth_exp: None }));
        }
        let rejection = lock(&shared.command_rejections).pop_front();
        let authenticated = state.expires_at.is_some() || state.auth_in_flight.is_some();
        let reply = match rejection {
            Some(error) => error,
            None if !authenticated => NOAUTH.to_owned(),
            None => return Route::Forward(Some(Pending::Reply { auth_exp: None })),
        };
        state
            .pending
            .push_back(Pending::Injected(error_line(&reply)));
        Route::Answered
    }

    fn route_authentication(
        &self,
        shared: &Shared,
        state: &mut ConnectionState,
        username: String,
        token: &[u8],
    ) -> Route {
        let exp = Claims::from_jwt(&String::from_utf8_lossy(token))
            .ok()
            .and_then(|claims| claims.exp)
            .map(|exp| exp.max(0) as u64);
        lock(&self.authentications).push((username, exp.unwrap_or(0)));
        // A token that is not a JWT never expires here.
        let deadline = exp.unwrap_or(u64::MAX);
        if shared.close_on_next_auth.swap(false, Ordering::SeqCst) {
            return Route::Close;
        }
        if let Some(error) = lock(&shared.auth_rejections).pop_front() {
            state
                .pending
                .push_back(Pending::Injected(error_line(&error)));
            return Route::Answered;
        }
        if exp.is_some_and(|exp| unix_now() >= exp as f64) {
            shared.expired_tokens.fetch_add(1, Ordering::SeqCst);
            state
                .pending
                .push_back(Pending::Injected(error_line(WRONGPASS)));
            return Route::Answered;
        }
        state.auth_in_flight = state.auth_in_flight.max(Some(deadline));
        Route::Forward(Some(Pending::Reply {
            auth_exp: Some(deadline),
        }))
    }

    /// Forwards server replies and pushes, and records successful authentications.
    fn server_to_client(&self) {
        let mut server = &self.server;
        let mut buffer = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let read = match server.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(read) => read,
            };
            buffer.extend_from_slice(&chunk[..read]);
            let mut state = lock(&self.state);
            while let Some(len) = value_len(&buffer) {
                let value: Vec<u8> = buffer.drain(..len).collect();
                if !is_out_of_band(&value, state.subscribed) {
                    self.flush_injected(&mut state);
                    if let Some(Pending::Reply { auth_exp }) = state.pending.pop_front() {
                        record_authentication(&mut state, auth_exp, &value);
                    }
                }
                // A failed write means the client is gone; the next read ends the loop.
                let _ = (&self.client).write_all(&value);
            }
            self.flush_injected(&mut state);
        }
        self.close();
    }

    /// Sends the proxy's own replies that are next in line.
    fn flush_injected(&self, state: &mut ConnectionState) {
        while let Some(Pending::Injected(_)) = state.pending.front() {
            let Some(Pending::Injected(reply)) = state.pending.pop_front() else {
                unreachable!("the front entry was just matched as injected");
            };
            let _ = (&self.client).write_all(&reply);
        }
    }
}

fn record_authentication(state: &mut ConnectionState, auth_exp: Option<u64>, reply: &[u8]) {
    let Some(exp) = auth_exp else { return };
    if state.auth_in_flight == Some(exp) {
        state.auth_in_flight = None;
    }
    // A RESP2 `-` or RESP3 `!` error means the server rejected the authentication.
    if !matches!(reply.first(), Some(b'-' | b'!')) {
        state.expires_at = Some(exp);
    }
}

fn error_line(error: &str) -> Vec<u8> {
    format!("-{error}\r\n").into_bytes()
}

/// Returns the username and token of `AUTH [user] token` or
/// `HELLO protover AUTH user token …`.
fn auth_arguments<'a>(name: &str, args: &'a [Vec<u8>]) -> Option<(String, &'a [u8])> {
    let (user, token) = match (name, args) {
        ("AUTH", [_, token]) => (&b"default"[..], token),
        ("AUTH", [_, user, token, ..]) => (user.as_slice(), token),
        ("HELLO", _) => {
            let at = args.iter().position(|a| a.eq_ignore_ascii_case(b"AUTH"))?;
            (args.get(at + 1)?.as_slice(), args.get(at + 2)?)
        }
        _ => return None,
    };
    Some((String::from_utf8_lossy(user).into_owned(), token.as_slice()))
}

/// Returns true for a RESP3 push, or a RESP2 pub/sub message or confirmation on a
/// connection that has subscribed: values that answer no single command.
fn is_out_of_band(value: &[u8], subscribed: bool) -> bool {
    if value.first() == Some(&b'>') {
        return true;
    }
    if !subscribed || value.first() != Some(&b'*') {
        return false;
    }
    let Some(header_end) = find_crlf(value, 0) else {
        return false;
    };
    let rest = &value[header_end + 2..];
    let Some(line_end) = find_crlf(rest, 0) else {
        return false;
    };
    if rest.first() != Some(&b'$') {
        return false;
    }
    let Some(len) = parse_int(&rest[1..line_end]).and_then(|n| usize::try_from(n).ok()) else {
        return false;
    };
    let kind = rest.get(line_end + 2..line_end + 2 + len);
    kind.is_some_and(|kind| PUBSUB_KINDS.iter().any(|k| kind.eq_ignore_ascii_case(k)))
}

/// Parses one client command, a RESP array of bulk strings, or an inline command line.
/// Returns its arguments and length, or `None` while it is incomplete.
fn parse_command(buffer: &[u8]) -> Option<(Vec<Vec<u8>>, usize)> {
    let line_end = find_crlf(buffer, 0)?;
    if buffer.first() != Some(&b'*') {
        let args = buffer[..line_end]
            .split(|b| *b == b' ')
            .filter(|a| !a.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        return Some((args, line_end + 2));
    }
    let count = parse_int(&buffer[1..line_end])?;
    let mut at = line_end + 2;
    let mut args = Vec::new();
    for _ in 0..count.max(0) {
        let end = find_crlf(buffer, at)?;
        let len = usize::try_from(parse_int(buffer.get(at + 1..end)?)?).ok()?;
        let start = end + 2;
        args.push(buffer.get(start..start + len)?.to_vec());
        at = start + len + 2;
        if buffer.len() < at {
            return None;
        }
    }
    Some((args, at))
}

/// Returns the length of the complete RESP2 or RESP3 value at the start of `buffer`, or
/// `None` while it is incomplete.
fn value_len(buffer: &[u8]) -> Option<usize> {
    let line_end = find_crlf(buffer, 0)?;
    let after_line = line_end + 2;
    match buffer.first()? {
        b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => Some(after_line),
        b'$' | b'=' | b'!' => {
            let len = parse_int(&buffer[1..line_end])?;
            if len < 0 {
                return Some(after_line);
            }
            let end = after_line + len as usize + 2;
            (buffer.len() >= end).then_some(end)
        }
        kind @ (b'*' | b'~' | b'>' | b'%' | b'|') => {
            let count = parse_int(&buffer[1..line_end])?;
            let elements = if matches!(kind, b'%' | b'|') {
                count * 2
            } else {
                count
            };
            let mut at = after_line;
            for _ in 0..elements.max(0) {
                at += value_len(&buffer[at..])?;
            }
            // An attribute is followed by the value it describes.
            if *kind == b'|' {
                at += value_len(&buffer[at..])?;
            }
            Some(at)
        }
        _ => Some(after_line),
    }
}

fn find_crlf(buffer: &[u8], from: usize) -> Option<usize> {
    buffer
        .get(from..)?
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|p| p + from)
}

fn parse_int(digits: &[u8]) -> Option<i64> {
    std::str::from_utf8(digits).ok()?.parse().ok()
}
