//! Strict host-key checking against a known_hosts file, as OpenSSH does it, and key-file
//! inspection.
//!
//! The lines that name the host are read before the handshake ([`KnownHost::read`]): plain
//! names and patterns (`*`, `?`, `!`), `[host]:port` for a port other than 22, and hashed
//! `|1|` names. The client then asks first for the host-key algorithms of the key types
//! recorded there ([`KnownHost::algorithm_preference`]), so a host with several host keys
//! offers one that can be checked. After the handshake the offered key must be recorded
//! ([`check`]): a recorded key of the same type that differs is a mismatch; keys of other
//! types only are not (the host offered none of their types), and are refused with a message
//! that says so. `@revoked` keys are refused; `@cert-authority` lines are skipped (host
//! certificates are not used). Lines that cannot be parsed are skipped, as OpenSSH does.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use ssh2::{HashType, KnownHostFileKind, KnownHostKeyFormat, MethodType, Session};

use super::{SshError, SshSpec};

/// The offered key's SHA-256 fingerprint, as `ssh-keygen -l` prints it.
pub fn fingerprint(sess: &Session) -> String {
    sess.host_key_hash(HashType::Sha256)
        .map(|h| {
            format!(
                "SHA256:{}",
                base64::engine::general_purpose::STANDARD_NO_PAD.encode(h)
            )
        })
        .unwrap_or_else(|| "(unknown)".into())
}

/// The name known_hosts records a host under: `host`, or `[host]:port` for a port other than
/// 22; in lower case, as OpenSSH looks it up.
pub fn known_name(host: &str, port: u16) -> String {
    let host = host.to_ascii_lowercase();
    if port == 22 {
        host
    } else {
        format!("[{host}]:{port}")
    }
}

/// One key that a known_hosts file records for the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// Line number, from 1.
    pub line: usize,
    /// The line is marked `@revoked`: this key must never be accepted.
    pub revoked: bool,
    /// The key type, as the key names itself (`ssh-ed25519`, `ecdsa-sha2-nistp256`, `ssh-rsa`).
    pub key_type: String,
    /// The public key (SSH wire format).
    pub key: Vec<u8>,
    /// The line's first 100 characters, for messages.
    pub text: String,
}

/// What a known_hosts file (`source.ssh.knownHostsFile`) records for one host.
#[derive(Debug, Clone)]
pub struct KnownHost {
    file: PathBuf,
    name: String,
    exists: bool,
    keys: Vec<Recorded>,
}

/// How an offered host key compares with what known_hosts records.
#[derive(Debug, PartialEq, Eq)]
enum Verdict<'a> {
    /// A recorded key, not revoked.
    Match,
    /// Marked `@revoked` on this line.
    Revoked(&'a Recorded),
    /// This line holds another key of the same type.
    Mismatch(&'a Recorded),
    /// Keys of other types only are recorded.
    OtherTypes,
    /// Nothing is recorded for the host.
    Unknown,
}

impl KnownHost {
    /// Reads the keys `spec.known_hosts_file` records for `spec.host` and `spec.port`. A
    /// missing file records nothing.
    pub fn read(spec: &SshSpec) -> Result<KnownHost, SshError> {
        let file = spec.known_hosts_file.clone();
        let name = known_name(&spec.host, spec.port);
        let (exists, text) = match std::fs::read(&file) {
            Ok(bytes) => (true, String::from_utf8_lossy(&bytes).into_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (false, String::new()),
            Err(e) => {
                return Err(SshError::HostKey(format!(
                    "cannot read known_hosts file {} (source.ssh.knownHostsFile): {e}; check that this user may read it",
                    file.display()
                )));
            }
        };
        let keys = parse(&text, &name);
        Ok(KnownHost {
            file,
            name,
            exists,
            keys,
        })
    }

    /// The key types recorded for the host (revoked keys aside), each once, in file order.
    fn types(&self) -> Vec<&str> {
        let mut types: Vec<&str> = Vec::new();
        for r in self.keys.iter().filter(|r| !r.revoked) {
            if !types.contains(&r.key_type.as_str()) {
                types.push(&r.key_type);
            }
        }
        types
    }

    /// Host-key algorithms to ask for, from `supported` (libssh2's, in its order): those for
    /// the key types recorded for the host first, then the others, so that an unknown host
    /// still connects (OpenSSH orders them so). Certificate algorithms are left out: a host
    /// certificate is not checked against known_hosts' keys.
    pub fn algorithm_preference<'a>(&self, supported: &[&'a str]) -> Vec<&'a str> {
        let types = self.types();
        let (mut known, others): (Vec<&str>, Vec<&str>) = supported
            .iter()
            .copied()
            .filter(|a| !a.contains("-cert-"))
            .partition(|a| types.contains(&key_type_of(a)));
        known.extend(others);
        known
    }

    /// How the offered key `key` compares with the recorded ones.
    fn judge(&self, key: &[u8]) -> Verdict<'_> {
        if let Some(r) = self.keys.iter().find(|r| r.revoked && r.key == key) {
            return Verdict::Revoked(r);
        }
        if self.keys.iter().any(|r| !r.revoked && r.key == key) {
            return Verdict::Match;
        }
        let offered = blob_type(key);
        if let Some(r) = self
            .keys
            .iter()
            .find(|r| !r.revoked && Some(r.key_type.as_str()) == offered)
        {
            return Verdict::Mismatch(r);
        }
        if self.types().is_empty() {
            Verdict::Unknown
        } else {
            Verdict::OtherTypes
        }
    }
}

/// The key type a host-key algorithm signs with (`rsa-sha2-512` is an `ssh-rsa` key).
fn key_type_of(algorithm: &str) -> &str {
    match algorithm {
        "rsa-sha2-256" | "rsa-sha2-512" => "ssh-rsa",
        a => a,
    }
}

/// The type a public key in SSH wire format names itself with (its first string).
fn blob_type(blob: &[u8]) -> Option<&str> {
    let len = u32::from_be_bytes(blob.get(..4)?.try_into().ok()?) as usize;
    std::str::from_utf8(blob.get(4..4usize.checked_add(len)?)?).ok()
}

/// The keys known_hosts `text` records for the host `name` (as [`known_name`] spells it).
fn parse(text: &str, name: &str) -> Vec<Recorded> {
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let Some(mut hosts) = fields.next() else {
            continue;
        };
        let revoked = hosts == "@revoked";
        if hosts.starts_with('@') {
            // `@cert-authority` (host certificates are not used) or a marker OpenSSH does
            // not know either: skipped.
            if !revoked {
                continue;
            }
            let Some(h) = fields.next() else { continue };
            hosts = h;
        }
        let (Some(kind), Some(b64)) = (fields.next(), fields.next()) else {
            continue;
        };
        if !host_matches(hosts, name) {
            continue;
        }
        let Ok(key) = base64::engine::general_purpose::STANDARD.decode(b64) else {
            tracing::debug!("known_hosts line {} skipped: its key is not base64", i + 1);
            continue;
        };
        if blob_type(&key) != Some(kind) {
            tracing::debug!(
                "known_hosts line {} skipped: its key is not of type {kind}",
                i + 1
            );
            continue;
        }
        keys.push(Recorded {
            line: i + 1,
            revoked,
            key_type: kind.to_string(),
            key,
            text: line.chars().take(100).collect(),
        });
    }
    keys
}

/// Whether a known_hosts host field names `name`: a hashed name (`|1|salt|hash`, the
/// HMAC-SHA1 of the name keyed with the salt), or comma-separated patterns, where a
/// matching `!pattern` excludes the host whatever else matches (OpenSSH's rules).
fn host_matches(field: &str, name: &str) -> bool {
    if let Some(rest) = field.strip_prefix("|1|") {
        let b64 = &base64::engine::general_purpose::STANDARD;
        let Some((salt, hash)) = rest.split_once('|') else {
            return false;
        };
        let (Ok(salt), Ok(hash)) = (b64.decode(salt), b64.decode(hash)) else {
            return false;
        };
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &salt);
        return ring::hmac::verify(&key, name.as_bytes(), &hash).is_ok();
    }
    let mut matched = false;
    for pattern in field.split(',') {
        let (negated, pattern) = match pattern.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, pattern),
        };
        if wildcard_match(pattern.to_ascii_lowercase().as_bytes(), name.as_bytes()) {
            if negated {
                return false;
            }
            matched = true;
        }
    }
    matched
}

/// OpenSSH's pattern match: `*` stands for any run of characters, `?` for one.
fn wildcard_match(pattern: &[u8], s: &[u8]) -> bool {
    match pattern.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|i| wildcard_match(rest, &s[i..])),
        Some((b'?', rest)) => s
            .split_first()
            .is_some_and(|(_, t)| wildcard_match(rest, t)),
        Some((c, rest)) => s
            .split_first()
            .is_some_and(|(d, t)| d == c && wildcard_match(rest, t)),
    }
}

/// `ssh-keyscan -t` for a key type, where it has a name for it.
fn keyscan_type(key_type: &str) -> Option<&'static str> {
    match key_type {
        "ssh-ed25519" => Some("ed25519"),
        "ssh-rsa" => Some("rsa"),
        "ssh-dss" => Some("dsa"),
        t if t.starts_with("ecdsa-sha2-") => Some("ecdsa"),
        _ => None,
    }
}

/// Accepts the session's host key only if `known` records it. An unknown host is refused
/// unless the plan sets `acceptNewHostKey: true` (then the key is appended). A mismatch (a
/// recorded key of the same type that differs) and a revoked key are always refused, naming
/// the line; so is a host that offered none of the recorded key types, without calling it a
/// mismatch.
pub fn check(sess: &Session, spec: &SshSpec, known: &KnownHost) -> Result<(), SshError> {
    let (key, key_type) = sess
        .host_key()
        .ok_or_else(|| SshError::HostKey("the server offered no host key".into()))?;
    let key = key.to_vec();
    let offered = blob_type(&key).unwrap_or("unknown type").to_string();
    let fp = fingerprint(sess);
    let file = known.file.display();
    let name = &known.name;
    let host = &spec.host;
    match known.judge(&key) {
        Verdict::Match => Ok(()),
        Verdict::Revoked(r) => Err(SshError::HostKey(format!(
            "REVOKED HOST KEY for {name}: the server offered {fp} ({offered}), which {file} line {} marks @revoked. Nothing was read. Do not use this key: once the host has a new one, verify it out of band and record it in {file}",
            r.line
        ))),
        Verdict::Mismatch(r) => Err(SshError::HostKey(format!(
            "HOST KEY MISMATCH for {name}: the server offered {fp} ({offered}), but {file} line {} holds another key for it: {}. Someone may be intercepting the connection, or the host was reinstalled. Nothing was read. If the change is expected, verify the new fingerprint out of band and replace that entry (ssh-keygen -R '{name}' -f {file})",
            r.line, r.text
        ))),
        Verdict::OtherTypes => {
            let types = known.types();
            let lines: Vec<String> = known
                .keys
                .iter()
                .filter(|r| !r.revoked)
                .map(|r| r.line.to_string())
                .collect();
            let supported = sess.supported_algs(MethodType::HostKey).unwrap_or_default();
            let usable = supported.iter().any(|a| types.contains(&key_type_of(a)));
            let why = if usable {
                "promigrate asked for those types first, and the server offered none of them"
                    .to_string()
            } else {
                let algorithms: Vec<&str> = supported
                    .iter()
                    .copied()
                    .filter(|a| !a.contains("-cert-"))
                    .collect();
                format!(
                    "promigrate cannot use those types (it can use {})",
                    algorithms.join(", ")
                )
            };
            Err(SshError::HostKey(format!(
                "NO RECORDED HOST KEY TYPE for {name}: {file} records only {} keys for it (line{} {}), but the server offered {fp} ({offered}): {why}. This is not a mismatch with a recorded key, and the recorded entries may well be right: keep them. Nothing was read. Verify {fp} out of band (ssh-keygen -lf on the host's {offered} host key), then add it (ssh-keyscan{} -p {} {host} >> {file}); source.ssh.acceptNewHostKey does not add a key for a host that known_hosts already records",
                types.join(", "),
                if lines.len() == 1 { "" } else { "s" },
                lines.join(", "),
                keyscan_type(&offered).map_or(String::new(), |t| format!(" -t {t}")),
                spec.port,
            )))
        }
        Verdict::Unknown if spec.accept_new_host_key => {
            let format = match key_type {
                ssh2::HostKeyType::Rsa => KnownHostKeyFormat::SshRsa,
                ssh2::HostKeyType::Dss => KnownHostKeyFormat::SshDss,
                ssh2::HostKeyType::Ecdsa256 => KnownHostKeyFormat::Ecdsa256,
                ssh2::HostKeyType::Ecdsa384 => KnownHostKeyFormat::Ecdsa384,
                ssh2::HostKeyType::Ecdsa521 => KnownHostKeyFormat::Ecdsa521,
                ssh2::HostKeyType::Ed25519 => KnownHostKeyFormat::Ed25519,
                ssh2::HostKeyType::Unknown => KnownHostKeyFormat::Unknown,
            };
            let mut fresh = sess
                .known_hosts()
                .map_err(|e| SshError::HostKey(format!("cannot record the host key: {e}")))?;
            fresh
                .add(name, &key, "added by promigrate (acceptNewHostKey)", format)
                .map_err(|e| SshError::HostKey(format!("cannot record the host key: {e}")))?;
            let mut text = String::new();
            for h in fresh.iter().map_err(|e| SshError::HostKey(e.to_string()))? {
                if let Ok(line) = fresh.write_string(&h, KnownHostFileKind::OpenSSH) {
                    text.push_str(line.trim_end());
                    text.push('\n');
                }
            }
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&known.file)
                .and_then(|mut f| f.write_all(text.as_bytes()))
                .map_err(|e| {
                    SshError::HostKey(format!(
                        "cannot append the host key of {name} to {file}: {e}"
                    ))
                })?;
            tracing::warn!(
                "accepted the new host key {fp} of {name} (source.ssh.acceptNewHostKey) and added it to {file}"
            );
            Ok(())
        }
        Verdict::Unknown => Err(SshError::HostKey(format!(
            "UNKNOWN HOST {name}: {file} has no key for it{}; the server offered {fp} ({offered}). Nothing was read. Verify that fingerprint out of band, then add the key (ssh-keyscan -p {} {host} >> {file}), or set source.ssh.acceptNewHostKey: true for this one run",
            if known.exists {
                ""
            } else {
                " (the file does not exist)"
            },
            spec.port,
        ))),
    }
}

/// Whether a private key file is protected by a passphrase (PEM `ENCRYPTED`, or an OpenSSH
/// key whose cipher is not `none`).
pub fn key_is_encrypted(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    if text.contains("ENCRYPTED") {
        return true;
    }
    let body: String = text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(body.trim()) else {
        return false;
    };
    const MAGIC: &[u8] = b"openssh-key-v1\0";
    let Some(rest) = raw.strip_prefix(MAGIC) else {
        return false;
    };
    let Some(len) = rest
        .get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    else {
        return false;
    };
    rest.get(4..4 + len).is_some_and(|cipher| cipher != b"none")
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED25519: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOqvy8aZSRpXI+Jhq+sgyaqNUox+rvxHqu+Sjm+6oe0O";
    const ED25519_OTHER: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJnPu0Fc2TCANNUziwnzhfUWZ2A0oWOfjuG1Yxt1fhsa";
    const ECDSA: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBAUlQokbtyOAnQn8TF3AcLvSSOY8js2cHD8hKmG5zIGFiqNmZxEEXEKhCIs5fiA9ex5ZbAWXQQ8ItMpVLWFnXa4=";
    const RSA: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDF+IZqSfm/T6RsnzcaEsAjC7ui0uavnUofrw8DDL0ELim72VxQSsEF9L520RGg18C16SQRBArXJr+Cgx+3SdPSvN/civZn2MIOxFeHeTBsvxmVF6yGuj/azQgWzsAq0qzzPUq97467l4LCcIw42XGpHrUdIDw+KP+91UXt1RckYw==";
    /// What `Session::supported_algs(MethodType::HostKey)` gives with the libssh2 that ssh2
    /// builds (no SHA-1 `ssh-rsa`, no DSA), in its order.
    const SUPPORTED: &[&str] = &[
        "ssh-ed25519-cert-v01@openssh.com",
        "ecdsa-sha2-nistp256-cert-v01@openssh.com",
        "ecdsa-sha2-nistp384-cert-v01@openssh.com",
        "ecdsa-sha2-nistp521-cert-v01@openssh.com",
        "rsa-sha2-512-cert-v01@openssh.com",
        "rsa-sha2-256-cert-v01@openssh.com",
        "ssh-ed25519",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "rsa-sha2-512",
        "rsa-sha2-256",
    ];

    fn blob(key: &str) -> Vec<u8> {
        let b64 = key.split_whitespace().nth(1).unwrap();
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap()
    }

    fn known(text: &str, name: &str) -> KnownHost {
        KnownHost {
            file: PathBuf::from("/known_hosts"),
            name: name.to_string(),
            exists: true,
            keys: parse(text, name),
        }
    }

    fn lines(text: &str, name: &str) -> Vec<usize> {
        parse(text, name).iter().map(|r| r.line).collect()
    }

    #[test]
    fn known_name_brackets_other_ports_and_lowers_case() {
        assert_eq!(known_name("Prom.Example.org", 22), "prom.example.org");
        assert_eq!(known_name("10.0.0.5", 2222), "[10.0.0.5]:2222");
    }

    #[test]
    fn plain_names_ports_comments_and_bad_lines() {
        let text = format!(
            "# comment\n\n   \nprom.example.org {ED25519} a comment\n\
             other.example.org {ECDSA}\n\
             [prom.example.org]:2222 {RSA}\n\
             other.example.org,PROM.example.org {ECDSA}\r\n\
             prom.example.org ssh-ed25519 !!notbase64!!\n\
             prom.example.org ssh-rsa {}\n\
             prom.example.org\n",
            ED25519.split_whitespace().nth(1).unwrap()
        );
        // Port 22: the plain name, in any case, in a list; not the bracketed entry, not a
        // line whose key is not base64 or not of the type it claims, not a truncated line.
        assert_eq!(lines(&text, "prom.example.org"), vec![4, 7]);
        assert_eq!(lines(&text, "[prom.example.org]:2222"), vec![6]);
        let keys = parse(&text, "prom.example.org");
        assert_eq!(keys[0].key_type, "ssh-ed25519");
        assert_eq!(keys[0].key, blob(ED25519));
        assert_eq!(keys[1].key_type, "ecdsa-sha2-nistp256");
        assert!(!keys[0].revoked);
    }

    #[test]
    fn hashed_names_match_by_hmac_sha1() {
        // Written by `ssh-keygen -H` from `[db.example.org]:2222 …` and `prom.example.org …`.
        let text = format!(
            "|1|nFAeLpFW273JJx7jvexNvquEWDo=|4ckbPiq0PA029X4VI8Ke64vmEE0= {ED25519}\n\
             |1|2jv6RF5kp/qfiYdgnhQ0m0d5GWU=|zHaI0HcM6HAValGFYNJMqIUjorY= {ECDSA}\n\
             |1|garbage {ECDSA}\n"
        );
        assert_eq!(lines(&text, "[db.example.org]:2222"), vec![1]);
        assert_eq!(lines(&text, "prom.example.org"), vec![2]);
        assert!(lines(&text, "db.example.org").is_empty());
        assert!(lines(&text, "[prom.example.org]:2222").is_empty());
    }

    #[test]
    fn patterns_and_negation() {
        let text = format!(
            "*.example.org,!secret.example.org {ED25519}\n\
             prom?.example.org {ECDSA}\n\
             [10.0.0.*]:2222 {RSA}\n"
        );
        assert_eq!(lines(&text, "prom.example.org"), vec![1]);
        assert_eq!(lines(&text, "prom1.example.org"), vec![1, 2]);
        assert!(lines(&text, "secret.example.org").is_empty());
        assert!(lines(&text, "example.org").is_empty());
        assert_eq!(lines(&text, "[10.0.0.7]:2222"), vec![3]);
        assert!(lines(&text, "[10.0.0.7]:22").is_empty());
    }

    #[test]
    fn markers_revoked_kept_cert_authority_and_unknown_skipped() {
        let text = format!(
            "@revoked prom.example.org {ED25519}\n\
             @cert-authority *.example.org {ECDSA}\n\
             @unheard-of prom.example.org {RSA}\n\
             @revoked\n"
        );
        let keys = parse(&text, "prom.example.org");
        assert_eq!(keys.len(), 1, "{keys:?}");
        assert!(keys[0].revoked);
        assert_eq!(keys[0].line, 1);
    }

    #[test]
    fn the_offered_key_is_judged_against_keys_of_its_own_type() {
        let name = "prom.example.org";
        let kh = known(&format!("{name} {ECDSA}\n{name} {RSA}\n"), name);
        assert_eq!(kh.judge(&blob(ECDSA)), Verdict::Match);
        assert_eq!(kh.judge(&blob(RSA)), Verdict::Match);
        // Only keys of other types recorded: not a mismatch.
        assert_eq!(kh.judge(&blob(ED25519)), Verdict::OtherTypes);

        let kh = known(&format!("{name} {ECDSA}\n{name} {ED25519_OTHER}\n"), name);
        match kh.judge(&blob(ED25519)) {
            Verdict::Mismatch(r) => assert_eq!(r.line, 2),
            v => panic!("{v:?}"),
        }

        let kh = known(
            &format!("@revoked {name} {ED25519}\n{name} {ED25519}\n"),
            name,
        );
        match kh.judge(&blob(ED25519)) {
            Verdict::Revoked(r) => assert_eq!(r.line, 1),
            v => panic!("{v:?}"),
        }
        // A revoked key alone records nothing usable for the host.
        let kh = known(&format!("@revoked {name} {ED25519_OTHER}\n"), name);
        assert_eq!(kh.judge(&blob(ED25519)), Verdict::Unknown);
        assert_eq!(known("", name).judge(&blob(ED25519)), Verdict::Unknown);
    }

    #[test]
    fn recorded_key_types_are_asked_for_first_then_the_rest_without_certificates() {
        let name = "[prom.example.org]:2222";
        let all = [
            "ssh-ed25519",
            "ecdsa-sha2-nistp256",
            "ecdsa-sha2-nistp384",
            "ecdsa-sha2-nistp521",
            "rsa-sha2-512",
            "rsa-sha2-256",
        ];
        // Unknown host: libssh2's order, certificates left out.
        assert_eq!(known("", name).algorithm_preference(SUPPORTED), all);
        let kh = known(&format!("{name} {ECDSA}\n"), name);
        assert_eq!(
            kh.algorithm_preference(SUPPORTED),
            [
                "ecdsa-sha2-nistp256",
                "ssh-ed25519",
                "ecdsa-sha2-nistp384",
                "ecdsa-sha2-nistp521",
                "rsa-sha2-512",
                "rsa-sha2-256",
            ]
        );
        // An RSA key serves both RSA algorithms; several types keep libssh2's order.
        let kh = known(&format!("{name} {RSA}\n{name} {ED25519}\n"), name);
        assert_eq!(
            kh.algorithm_preference(SUPPORTED),
            [
                "ssh-ed25519",
                "rsa-sha2-512",
                "rsa-sha2-256",
                "ecdsa-sha2-nistp256",
                "ecdsa-sha2-nistp384",
                "ecdsa-sha2-nistp521",
            ]
        );
        // A revoked key's type is not asked for.
        let kh = known(&format!("@revoked {name} {ECDSA}\n"), name);
        assert_eq!(kh.algorithm_preference(SUPPORTED), all);
    }
}
