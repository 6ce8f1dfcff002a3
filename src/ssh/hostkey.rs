//! Strict host-key checking against a known_hosts file (OpenSSH format, `[host]:port`
//! and hashed entries included, as libssh2 reads them), and key-file inspection.

use std::io::Write;
use std::path::Path;

use base64::Engine;
use ssh2::{CheckResult, HashType, KnownHostFileKind, KnownHostKeyFormat, Session};

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

/// Accepts the session's host key only if `known_hosts_file` has it for this host and port.
/// An unknown host is refused unless the plan sets `acceptNewHostKey: true` (then the key is
/// appended). A mismatch is always refused, naming the line that disagrees.
pub fn check(sess: &Session, spec: &SshSpec) -> Result<(), SshError> {
    let (key, key_type) = sess
        .host_key()
        .ok_or_else(|| SshError::HostKey("the server offered no host key".into()))?;
    let key = key.to_vec();
    let fp = fingerprint(sess);
    let file = &spec.known_hosts_file;
    let host = &spec.host;
    let name = if spec.port == 22 {
        host.clone()
    } else {
        format!("[{host}]:{}", spec.port)
    };
    let mut kh = sess
        .known_hosts()
        .map_err(|e| SshError::HostKey(format!("cannot check host keys: {e}")))?;
    let exists = file.is_file();
    if exists {
        kh.read_file(file, KnownHostFileKind::OpenSSH)
            .map_err(|e| {
                SshError::HostKey(format!(
                    "cannot read known_hosts file {} (source.ssh.knownHostsFile): {}",
                    file.display(),
                    e.message()
                ))
            })?;
    }
    match kh.check_port(host, spec.port, &key) {
        CheckResult::Match => Ok(()),
        CheckResult::Mismatch => {
            let line = disagreeing_line(sess, file, host, spec.port, &key);
            Err(SshError::HostKey(format!(
                "HOST KEY MISMATCH for {name}: the server offered {fp} ({key_type:?}), but {}{}. Someone may be intercepting the connection, or the host was reinstalled. Nothing was read. If the change is expected, verify the new fingerprint out of band and replace that entry (ssh-keygen -R '{name}' -f {})",
                file.display(),
                line.map_or(
                    " holds another key for it".to_string(),
                    |(n, text)| format!(" line {n} holds another key for it: {text}")
                ),
                file.display()
            )))
        }
        CheckResult::NotFound if spec.accept_new_host_key => {
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
                .add(
                    &name,
                    &key,
                    "added by promigrate (acceptNewHostKey)",
                    format,
                )
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
                .open(file)
                .and_then(|mut f| f.write_all(text.as_bytes()))
                .map_err(|e| {
                    SshError::HostKey(format!(
                        "cannot append the host key of {name} to {}: {e}",
                        file.display()
                    ))
                })?;
            tracing::warn!(
                "accepted the new host key {fp} of {name} (source.ssh.acceptNewHostKey) and added it to {}",
                file.display()
            );
            Ok(())
        }
        CheckResult::NotFound => Err(SshError::HostKey(format!(
            "UNKNOWN HOST {name}: {} has no key for it{}; the server offered {fp} ({key_type:?}). Nothing was read. Verify that fingerprint out of band, then add the key (ssh-keyscan -p {} {host} >> {}), or set source.ssh.acceptNewHostKey: true for this one run",
            file.display(),
            if exists {
                ""
            } else {
                " (the file does not exist)"
            },
            spec.port,
            file.display()
        ))),
        CheckResult::Failure => Err(SshError::HostKey(format!(
            "cannot check the host key of {name} against {}",
            file.display()
        ))),
    }
}

/// The known_hosts line (number, text) that names this host with another key.
fn disagreeing_line(
    sess: &Session,
    file: &Path,
    host: &str,
    port: u16,
    key: &[u8],
) -> Option<(usize, String)> {
    let text = std::fs::read_to_string(file).ok()?;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let mut one = sess.known_hosts().ok()?;
        if one.read_str(t, KnownHostFileKind::OpenSSH).is_err() {
            continue;
        }
        if matches!(one.check_port(host, port, key), CheckResult::Mismatch) {
            let shown: String = t.chars().take(100).collect();
            return Some((i + 1, shown));
        }
    }
    None
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
