//! An SSH source (libssh2 through the `ssh2` crate): strict host-key checking against a
//! known_hosts file, agent or key-file authentication, a pool of sessions (one per worker,
//! each its own TCP connection) with reconnection, SFTP for listing and reading, and exec
//! for the remote lock probe. ssh2 is blocking: it runs on the copy workers' own threads,
//! never on the async runtime's.

pub mod config;
pub mod hostkey;
mod jump;
pub mod snapshot;
pub mod stream;

use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use ssh2::Session;

/// Where the source is, over SSH (`source.ssh`, resolved).
#[derive(Debug, Clone, Default, Serialize)]
pub struct SshSpec {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Remote user.
    pub user: String,
    /// Private key file (the plan's `identityFile`): the one key used.
    pub identity_file: Option<PathBuf>,
    /// Without `identity_file`: key files tried before the agent's keys, in order (the ssh
    /// config's `IdentityFile`s that exist; for a jump host, the plan's `identityFile` last).
    pub config_identities: Vec<PathBuf>,
    /// `IdentitiesOnly yes` in the ssh config: no agent key but those files.
    pub identities_only: bool,
    /// known_hosts file to check the host key against.
    pub known_hosts_file: PathBuf,
    /// Accept (and append) an unknown host's key: only when the plan says so.
    pub accept_new_host_key: bool,
    /// How apply reads files.
    pub read: ReadVia,
    /// The hosts gone through first, in order (`source.ssh.proxyJump`, or `ProxyJump` in the
    /// ssh config): each checked and authenticated like this one; none has jumps of its own.
    pub jumps: Vec<SshSpec>,
    /// The ssh config file that supplied some of this (see `from_config`).
    pub config: Option<PathBuf>,
    /// The keys of the ssh config that supplied something (`HostName`, `User`, ...).
    pub from_config: Vec<&'static str>,
    /// The name the plan gave (`source.ssh.host`), an alias where `HostName` replaced it.
    pub alias: Option<String>,
    /// Which part of the plan this host is, for messages (`source.ssh`, or
    /// `source.ssh.proxyJump hop ops@bastion`).
    pub role: String,
}

/// How apply reads the files of an SSH source (`source.ssh.read`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ReadVia {
    /// Through GNU tar on the host, one stream per worker ([`stream`]); SFTP where the host
    /// has no GNU tar 1.29+ or refuses exec, and for files the stream does not deliver.
    #[default]
    Tar,
    /// Through SFTP only.
    Sftp,
}

impl SshSpec {
    /// `user@host:port`, for messages.
    pub fn describe(&self) -> String {
        format!("{}@{}:{}", self.user, self.host, self.port)
    }

    /// How the host was reached and resolved, for plan's output: its alias, the jump
    /// hosts, what the ssh config supplied. Empty when the plan said it all.
    pub fn route(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if let Some(a) = self.alias.as_deref().filter(|a| *a != self.host) {
            notes.push(format!("alias {a}"));
        }
        if !self.jumps.is_empty() {
            let hops: Vec<String> = self.jumps.iter().map(|j| j.describe()).collect();
            notes.push(format!("via {}", hops.join(" -> ")));
        }
        if let Some(c) = &self.config {
            notes.push(format!(
                "from {}: {}",
                c.display(),
                self.from_config.join(", ")
            ));
        }
        notes
    }

    /// The plan field that gave this host's `key` (`host`, `port`, `identityFile`), for
    /// messages: `source.ssh.port`, or for a jump host `source.ssh.proxyJump (port of hop
    /// ops@bastion)`.
    fn field(&self, key: &str) -> String {
        match self.role.strip_prefix("source.ssh.proxyJump hop ") {
            Some(hop) => format!("source.ssh.proxyJump ({key} of hop {hop})"),
            None => format!("source.ssh.{key}"),
        }
    }
}

/// Why an SSH connection failed. Host-key refusals are kept apart: they are never retried.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// The host key is not the known one, or the host is unknown.
    #[error("{0}")]
    HostKey(String),
    /// Authentication failed.
    #[error("{0}")]
    Auth(String),
    /// The host name does not resolve: retrying will not change that.
    #[error("{0}")]
    Resolve(String),
    /// Anything else (network, protocol).
    #[error("{0}")]
    Connect(String),
}

/// A connected, authenticated session, and its SFTP channel once one is needed.
pub struct Conn {
    /// The session (for exec).
    pub sess: Session,
    /// Its SFTP subsystem (for listing and reading), started on first use: every
    /// subsystem and command costs the host a run of the login shell's startup files, and
    /// a connection that only runs commands (the snapshot, a tar stream) needs none.
    sftp: std::sync::OnceLock<ssh2::Sftp>,
    /// The host, for messages.
    host: String,
}

impl Conn {
    /// The connection's SFTP channel, started now if it is not yet.
    pub fn sftp(&self) -> io::Result<&ssh2::Sftp> {
        if let Some(s) = self.sftp.get() {
            return Ok(s);
        }
        let s = self.sess.sftp().map_err(|e| {
            io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!(
                    "{}: cannot start SFTP: {e}; the source needs the sftp subsystem enabled in sshd",
                    self.host
                ),
            )
        })?;
        Ok(self.sftp.get_or_init(|| s))
    }
}

/// Connects, checks the host key, authenticates. Nothing is read from the source before
/// the host key has been accepted. SFTP starts when first used ([`Conn::sftp`]).
pub fn open_conn(spec: &SshSpec) -> Result<Conn, SshError> {
    let sess = connect(spec)?;
    Ok(Conn {
        sess,
        sftp: std::sync::OnceLock::new(),
        host: spec.describe(),
    })
}

/// Connects, checks the host key, authenticates. Nothing is read from the source before
/// the host key has been accepted. With jump hosts: to the first over TCP, then to each
/// next through a forwarded connection of the one before ([`jump`]), every host's key
/// checked and every hop authenticated as the source is.
pub fn connect(spec: &SshSpec) -> Result<Session, SshError> {
    let Some((first, rest)) = spec.jumps.split_first() else {
        return connect_to(spec, &resolve(spec)?);
    };
    let on_hop = |hop: &SshSpec, e: SshError| {
        let say = |m: String| format!("jump host {}: {m}", hop.describe());
        match e {
            SshError::HostKey(m) => SshError::HostKey(say(m)),
            SshError::Auth(m) => SshError::Auth(say(m)),
            SshError::Resolve(m) => SshError::Resolve(say(m)),
            SshError::Connect(m) => SshError::Connect(say(m)),
        }
    };
    let dup_err = |e: io::Error| SshError::Connect(format!("cannot duplicate a socket: {e}"));
    let tcp = resolve(first)
        .and_then(|addrs| tcp_connect(first, &addrs))
        .map_err(|e| on_hop(first, e))?;
    // Each session's socket, kept to wait on when its jump relays (the session owns the
    // original).
    let mut wire: std::os::fd::OwnedFd = tcp.try_clone().map_err(dup_err)?.into();
    let mut via = start(first, tcp.into()).map_err(|e| on_hop(first, e))?;
    let mut via_spec = first;
    for next in rest.iter().chain(std::iter::once(spec)) {
        let far = jump::forward(via, wire, via_spec, next)?;
        wire = far.try_clone().map_err(dup_err)?.into();
        via = start(next, far.into()).map_err(|e| {
            if std::ptr::eq(next, spec) {
                e
            } else {
                on_hop(next, e)
            }
        })?;
        via_spec = next;
    }
    Ok(via)
}

/// The addresses of `source.ssh.host`, in the resolver's order. A name that does not
/// resolve is [`SshError::Resolve`].
pub fn resolve(spec: &SshSpec) -> Result<Vec<SocketAddr>, SshError> {
    let addrs: Vec<SocketAddr> = (spec.host.as_str(), spec.port)
        .to_socket_addrs()
        .map_err(|e| {
            // EAI_AGAIN ("Temporary failure in name resolution", glibc's text in the C locale
            // Rust runs getaddrinfo in) is a resolver hiccup: a connection error, retried.
            if e.to_string().contains("Temporary failure") {
                SshError::Connect(format!(
                    "cannot resolve {} {} for now ({e})",
                    spec.field("host"),
                    spec.host
                ))
            } else {
                SshError::Resolve(format!(
                    "{} {} does not resolve ({e}): check the name, or give the address",
                    spec.field("host"),
                    spec.host
                ))
            }
        })?
        .collect();
    if addrs.is_empty() {
        return Err(SshError::Resolve(format!(
            "{} {} does not resolve to any address: check the name, or give the address",
            spec.field("host"),
            spec.host
        )));
    }
    Ok(addrs)
}

/// [`connect`] to the host at `addrs` (resolved from `spec.host`, which the host key is
/// checked for): each address in turn until one accepts the TCP connection, as OpenSSH
/// does (a name with an IPv6 and an IPv4 address, sshd listening on one of them).
pub fn connect_to(spec: &SshSpec, addrs: &[SocketAddr]) -> Result<Session, SshError> {
    start(spec, tcp_connect(spec, addrs)?.into())
}

/// The TCP connection of [`connect_to`].
fn tcp_connect(spec: &SshSpec, addrs: &[SocketAddr]) -> Result<TcpStream, SshError> {
    let mut refused = Vec::new();
    let tcp = addrs
        .iter()
        .find_map(
            |addr| match TcpStream::connect_timeout(addr, Duration::from_secs(10)) {
                Ok(tcp) => Some(tcp),
                Err(e) => {
                    tracing::debug!("{}: {addr}: {e}", spec.describe());
                    refused.push(format!("{addr}: {e}"));
                    None
                }
            },
        )
        .ok_or_else(|| {
            SshError::Connect(format!(
                "cannot connect to {} ({}); is sshd running there and the port ({}) right?",
                spec.describe(),
                refused.join("; "),
                spec.field("port")
            ))
        })?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// An SSH session with `spec`'s host over `wire` (a TCP connection, or a jump host's
/// forwarded one): the handshake, the host-key check, the authentication.
fn start(spec: &SshSpec, wire: std::os::fd::OwnedFd) -> Result<Session, SshError> {
    let mut sess = Session::new()
        .map_err(|e| SshError::Connect(format!("cannot start an SSH session: {e}")))?;
    sess.set_tcp_stream(wire);
    sess.set_timeout(60_000);
    // Cipher order by what libssh2 costs in CPU per byte, measured here (1.1 GiB over one
    // connection: aes128-ctr 4.65 s user, chacha20-poly1305 4.31 s, aes128-gcm 6.47 s,
    // aes256-gcm 7.78 s); the rest stay as fallbacks for old servers.
    for m in [ssh2::MethodType::CryptCs, ssh2::MethodType::CryptSc] {
        let _ = sess.method_pref(
            m,
            "aes128-ctr,chacha20-poly1305@openssh.com,aes256-ctr,aes192-ctr,aes128-gcm@openssh.com,aes256-gcm@openssh.com",
        );
    }
    // Before the handshake: the host-key algorithms of the key types known_hosts records
    // for this host come first, so that a host with several host keys offers a checkable one.
    let known = hostkey::KnownHost::read(spec)?;
    if let Ok(supported) = sess.supported_algs(ssh2::MethodType::HostKey) {
        let prefs = known.algorithm_preference(&supported).join(",");
        sess.method_pref(ssh2::MethodType::HostKey, &prefs)
            .map_err(|e| {
                SshError::Connect(format!(
                    "cannot set the host-key algorithms ({prefs}) for {}: {e}",
                    spec.describe()
                ))
            })?;
    }
    sess.handshake().map_err(|e| {
        SshError::Connect(format!(
            "SSH handshake with {} failed: {e}",
            spec.describe()
        ))
    })?;
    tracing::debug!(
        cipher = sess.methods(ssh2::MethodType::CryptSc).unwrap_or("?"),
        mac = sess.methods(ssh2::MethodType::MacSc).unwrap_or("?"),
        kex = sess.methods(ssh2::MethodType::Kex).unwrap_or("?"),
        hostkey = sess.methods(ssh2::MethodType::HostKey).unwrap_or("?"),
        "SSH session to {}",
        spec.describe()
    );
    hostkey::check(&sess, spec, &known)?;
    authenticate(&sess, spec)?;
    sess.set_keepalive(true, 15);
    Ok(sess)
}

fn authenticate(sess: &Session, spec: &SshSpec) -> Result<(), SshError> {
    let who = spec.describe();
    match &spec.identity_file {
        Some(key) => {
            if hostkey::key_is_encrypted(key) {
                // An agent holding the key can still do it.
                if sess.userauth_agent(&spec.user).is_ok() && sess.authenticated() {
                    return Ok(());
                }
                return Err(SshError::Auth(format!(
                    "identity file {} is encrypted and no ssh-agent holds it: run `ssh-add {}` (with SSH_AUTH_SOCK set) or use an unencrypted deploy key",
                    key.display(),
                    key.display()
                )));
            }
            sess.userauth_pubkey_file(&spec.user, None, key, None)
                .map_err(|e| {
                    SshError::Auth(format!(
                        "{who} refused the key {} ({}): {}; check that its public key is in ~{}/.ssh/authorized_keys there",
                        key.display(),
                        spec.field("identityFile"),
                        e.message(),
                        spec.user
                    ))
                })?;
        }
        None => {
            // As OpenSSH: the agent's keys that are the config's IdentityFiles (by their
            // public key, `<file>.pub` or a `.pub` named itself), then the config's key
            // files in order, then, unless the config says IdentitiesOnly, the agent's other
            // keys. The keys the config names come first: an agent with many keys would
            // otherwise use up sshd's MaxAuthTries before them.
            let mut tried = Vec::new();
            let wanted: Vec<Vec<u8>> = spec
                .config_identities
                .iter()
                .filter_map(|k| public_blob(k))
                .collect();
            let (agent, agent_keys) = match agent_identities(sess) {
                Ok((a, ids)) => (Some(a), ids),
                Err(e) => {
                    tried.push(format!("ssh-agent: {e}"));
                    (None, Vec::new())
                }
            };
            let (named, others): (Vec<_>, Vec<_>) = agent_keys
                .into_iter()
                .partition(|id| wanted.iter().any(|w| w.as_slice() == id.blob()));
            let by_agent = |ids: &[ssh2::PublicKey], tried: &mut Vec<String>| {
                let Some(agent) = &agent else { return false };
                for id in ids {
                    match agent.userauth(&spec.user, id) {
                        Ok(()) if sess.authenticated() => return true,
                        _ => tried.push(format!("the agent's key {} was refused", id.comment())),
                    }
                }
                false
            };
            if by_agent(&named, &mut tried) {
                return Ok(());
            }
            for key in &spec.config_identities {
                if key.extension().is_some_and(|e| e == "pub") {
                    continue; // a public key only: for the agent's keys above
                }
                if hostkey::key_is_encrypted(key) {
                    tried.push(format!(
                        "{} is encrypted and no agent offered it (ssh-add it)",
                        key.display()
                    ));
                    continue;
                }
                match sess.userauth_pubkey_file(&spec.user, None, key, None) {
                    Ok(()) if sess.authenticated() => return Ok(()),
                    Ok(()) => tried.push(format!("{} was refused", key.display())),
                    Err(e) => tried.push(format!("{}: {}", key.display(), e.message())),
                }
            }
            if !spec.identities_only && by_agent(&others, &mut tried) {
                return Ok(());
            }
            if tried.is_empty() {
                tried.push(if spec.identities_only {
                    "IdentitiesOnly, and no IdentityFile of the ssh config names a usable key here"
                        .to_string()
                } else {
                    "the ssh-agent holds no key".to_string()
                });
            }
            return Err(SshError::Auth(format!(
                "{who} accepted no key ({}): set {}, or ssh-add the key to a running ssh-agent (SSH_AUTH_SOCK)",
                tried.join("; "),
                spec.field("identityFile")
            )));
        }
    }
    if sess.authenticated() {
        Ok(())
    } else {
        Err(SshError::Auth(format!("{who}: authentication failed")))
    }
}

/// The ssh-agent, connected, and its keys (an error: no agent).
fn agent_identities(sess: &Session) -> Result<(ssh2::Agent, Vec<ssh2::PublicKey>), String> {
    let mut agent = sess.agent().map_err(|e| e.message().to_string())?;
    agent.connect().map_err(|e| e.message().to_string())?;
    agent
        .list_identities()
        .map_err(|e| e.message().to_string())?;
    let ids = agent.identities().map_err(|e| e.message().to_string())?;
    Ok((agent, ids))
}

/// The public key blob of key file `key`: from `<key>.pub`, or `key` itself when it is the
/// `.pub` file (`type base64 comment`).
fn public_blob(key: &Path) -> Option<Vec<u8>> {
    use base64::Engine;
    let pub_file = if key.extension().is_some_and(|e| e == "pub") {
        key.to_path_buf()
    } else {
        let mut p = key.as_os_str().to_owned();
        p.push(".pub");
        PathBuf::from(p)
    };
    let text = std::fs::read_to_string(pub_file).ok()?;
    let b64 = text.split_whitespace().nth(1)?;
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

/// Runs a command on the remote host; returns its exit status and stdout.
pub fn exec(sess: &Session, command: &str) -> io::Result<(i32, String)> {
    let mut ch = sess.channel_session().map_err(io::Error::other)?;
    ch.exec(command).map_err(io::Error::other)?;
    let mut out = String::new();
    ch.read_to_string(&mut out)?;
    ch.wait_close().map_err(io::Error::other)?;
    let status = ch.exit_status().map_err(io::Error::other)?;
    Ok((status, out))
}

/// Quotes a path for a POSIX shell.
pub fn shell_quote(p: &Path) -> String {
    format!("'{}'", p.to_string_lossy().replace('\'', r"'\''"))
}

/// A pool of connected sessions to one host: each copy worker takes one (and so gets its own
/// TCP connection), gives it back when done. A dropped connection is replaced, with backoff.
pub struct Pool {
    spec: SshSpec,
    idle: Mutex<Vec<Conn>>,
    /// Connection attempts before giving up, per request.
    pub attempts: u32,
}

impl Pool {
    /// A pool that connects lazily.
    pub fn new(spec: SshSpec) -> Pool {
        Pool {
            spec,
            idle: Mutex::new(Vec::new()),
            attempts: 5,
        }
    }

    /// The host.
    pub fn spec(&self) -> &SshSpec {
        &self.spec
    }

    /// A connection: an idle one (unless `fresh`), or a new one.
    pub fn take(&self, fresh: bool) -> Result<Conn, SshError> {
        if !fresh && let Some(s) = self.idle.lock().ok().and_then(|mut v| v.pop()) {
            return Ok(s);
        }
        open_conn(&self.spec)
    }

    /// Drops every idle connection: after one connection failed, the others opened at the
    /// same time are likely gone too, and a retry must not spend an attempt on them.
    pub fn discard_idle(&self) {
        if let Ok(mut v) = self.idle.lock() {
            v.clear();
        }
    }

    /// Gives a healthy connection back.
    pub fn give(&self, s: Conn) {
        if let Ok(mut v) = self.idle.lock() {
            v.push(s);
        }
    }

    /// Runs `f` with a session, reconnecting with backoff (1, 2, 4, … s) when the connection
    /// fails. Host-key and authentication failures are not retried. `f` must be safe to run
    /// again from the start.
    pub fn with<T>(&self, what: &str, mut f: impl FnMut(&Conn) -> io::Result<T>) -> io::Result<T> {
        let r = crate::retry::with_backoff(
            self.attempts,
            is_connection_error,
            |e, wait, next| {
                tracing::warn!(
                    "{what}: SSH connection to {} failed ({e}); reconnecting in {}s (attempt {}/{})",
                    self.spec.describe(),
                    wait.as_secs(),
                    next + 1,
                    self.attempts
                )
            },
            |attempt| {
                let sess = self.take_or_refuse(attempt > 0)?;
                match f(&sess) {
                    Ok(v) => {
                        self.give(sess);
                        Ok(v)
                    }
                    // Not a connection problem: the session is fine, the answer is final.
                    Err(e) if !is_connection_error(&e) => {
                        self.give(sess);
                        Err(e)
                    }
                    Err(e) => {
                        self.discard_idle(); // the session is dropped, and its idle siblings
                        Err(e)
                    }
                }
            },
        );
        r.map_err(|failed| {
            failed.into_io(|last| {
                format!(
                    "{what}: gave up after {} attempts to reach {}: {last}; rerun to resume (completed files are kept)",
                    self.attempts,
                    self.spec.describe(),
                )
            })
        })
    }
}

impl Pool {
    /// [`Pool::take`] with the error as `io::Error`: host-key and authentication refusals
    /// are `PermissionDenied`, a name that does not resolve `InvalidInput` (neither is
    /// retried), the rest `ConnectionRefused`.
    pub fn take_or_refuse(&self, fresh: bool) -> io::Result<Conn> {
        self.take(fresh).map_err(|e| match e {
            SshError::HostKey(_) | SshError::Auth(_) => {
                io::Error::new(io::ErrorKind::PermissionDenied, e)
            }
            SshError::Resolve(_) => io::Error::new(io::ErrorKind::InvalidInput, e),
            SshError::Connect(_) => io::Error::new(io::ErrorKind::ConnectionRefused, e),
        })
    }
}

/// Whether an error means the connection is gone (as opposed to a missing file, say).
pub fn is_connection_error(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    if let Some(ssh) = e.get_ref().and_then(|e| e.downcast_ref::<SshError>()) {
        return matches!(ssh, SshError::Connect(_));
    }
    match e.kind() {
        NotFound | PermissionDenied | InvalidData | InvalidInput => false,
        ConnectionReset | ConnectionAborted | BrokenPipe | TimedOut | UnexpectedEof
        | ConnectionRefused | NotConnected => true,
        _ => {
            // libssh2 errors arrive as `Other` with the session error inside.
            let s = e.to_string();
            !s.contains("no such file") && !s.contains("No such file")
        }
    }
}
