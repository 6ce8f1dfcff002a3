//! A private OpenSSH `sshd` on 127.0.0.1 (Debian's openssh-server) with a generated host key
//! and an authorized test key, for the SSH source's tests; stopped (by its PID) when dropped.

use super::free_port;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A private sshd and the files a client needs.
pub struct Sshd {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub child: Child,
}

pub fn keygen(path: &Path, passphrase: &str) {
    keygen_type(path, "ed25519", passphrase);
}

/// An SSH key pair of type `kind` (`ed25519`, `ecdsa`, `rsa`) at `path` and `path.pub`.
pub fn keygen_type(path: &Path, kind: &str, passphrase: &str) {
    let st = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            kind,
            "-N",
            passphrase,
            "-C",
            "promigrate-test",
            "-f",
        ])
        .arg(path)
        .status()
        .unwrap();
    assert!(st.success(), "ssh-keygen failed");
}

impl Sshd {
    pub fn start() -> Sshd {
        Self::start_with("")
    }

    /// An sshd with `extra` lines in its configuration.
    pub fn start_with(extra: &str) -> Sshd {
        Self::start_keys(&["ed25519"], extra)
    }

    /// An sshd with a host key of each type in `kinds` (the first in `host_key`, the others
    /// in `host_key_<type>`) and `extra` lines in its configuration; its `known_hosts` holds
    /// the first key only.
    pub fn start_keys(kinds: &[&str], extra: &str) -> Sshd {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut host_keys = String::new();
        for (i, kind) in kinds.iter().enumerate() {
            let name = if i == 0 {
                "host_key".to_string()
            } else {
                format!("host_key_{kind}")
            };
            keygen_type(&d.join(&name), kind, "");
            host_keys.push_str(&format!("HostKey {}\n", d.join(&name).display()));
        }
        keygen(&d.join("client_key"), "");
        std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).unwrap();
        std::fs::create_dir_all("/run/sshd").unwrap(); // privilege separation directory
        let port = free_port();
        // `extra` may name its own SFTP server (sshd refuses a second Subsystem line).
        let sftp = if extra.contains("Subsystem sftp ") {
            ""
        } else {
            "Subsystem sftp /usr/lib/openssh/sftp-server\n"
        };
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\n{host_keys}PidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nUsePAM no\n\
             StrictModes no\nPermitRootLogin yes\n{sftp}{extra}\
             LogLevel ERROR\n",
            d = d.display()
        );
        std::fs::write(d.join("sshd_config"), config).unwrap();
        let child = listen(d, port);
        let s = Sshd { dir, port, child };
        // A known_hosts with the host key under [127.0.0.1]:port, hashed like OpenSSH does.
        let kh = format!(
            "[127.0.0.1]:{port} {}\n",
            public_key(&s.path("host_key.pub"))
        );
        std::fs::write(s.path("known_hosts"), kh).unwrap();
        hash_known_hosts(&s.path("known_hosts"));
        s
    }

    /// Starts the listener again (after the test stopped it), with the same keys and port.
    pub fn restart(&mut self) {
        self.child = listen(self.dir.path(), self.port);
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `yaml` (a plan) with its local `source:` at `path` read through this sshd instead, as
    /// root with the key file `key` (in this sshd's dir), trusting `known_hosts`.
    pub fn through(&self, yaml: &str, path: &Path, key: &str, known_hosts: &Path) -> String {
        let local = format!("source:\n  path: {}\n", path.display());
        assert!(yaml.contains(&local), "plan template changed");
        yaml.replace(
            &local,
            &format!(
                "{local}  ssh:\n    host: 127.0.0.1\n    port: {}\n    user: root\n    identityFile: {}\n    knownHostsFile: {}\n",
                self.port,
                self.path(key).display(),
                known_hosts.display()
            ),
        )
    }

    /// How `plan` shows a source at `path` read through this sshd.
    pub fn shown(&self, path: &Path) -> String {
        format!("source  root@127.0.0.1:{}:{}", self.port, path.display())
    }

    /// The SHA-256 fingerprint of a public key file, as `ssh-keygen -l` prints it.
    pub fn fingerprint(&self, pubkey: &str) -> String {
        let out = Command::new("ssh-keygen")
            .arg("-lf")
            .arg(self.path(pubkey))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_string()
    }

    /// PIDs of the sshd processes serving connections (children of the listener).
    pub fn connection_pids(&self) -> Vec<u32> {
        let out = Command::new("pgrep")
            .arg("-P")
            .arg(self.child.id().to_string())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

/// The `type base64` part of a public key file (without its comment).
pub fn public_key(pub_file: &Path) -> String {
    std::fs::read_to_string(pub_file)
        .unwrap()
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Hashes the host names of a known_hosts file in place, as OpenSSH's HashKnownHosts does.
pub fn hash_known_hosts(file: &Path) {
    let st = Command::new("ssh-keygen")
        .args(["-q", "-H", "-f"])
        .arg(file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
}

/// Runs sshd with the configuration in `dir` until it accepts connections on `port`.
pub fn listen(dir: &Path, port: u16) -> Child {
    let child = Command::new("/usr/sbin/sshd")
        .args(["-D", "-f"])
        .arg(dir.join("sshd_config"))
        // The log in a file (the first LogLevel of the configuration counts: `extra` may
        // set one before the default ERROR).
        .arg("-E")
        .arg(dir.join("sshd.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start /usr/sbin/sshd (Debian's openssh-server; see scripts/deps.sh)");
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "sshd did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

impl Drop for Sshd {
    fn drop(&mut self) {
        for pid in self.connection_pids() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
