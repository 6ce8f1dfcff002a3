//! An SSH source against a real OpenSSH `sshd` on 127.0.0.1 (Debian's openssh-server), with
//! a generated host key and an authorized test key. Each test starts its own sshd on a free
//! port and stops it (by its PID) when it ends.

mod common;

use common::fake_prometheus::Fake;
use common::sshd::*;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The workspace plan with `source.ssh` pointing at the sshd.
fn ssh_plan(ws: &Workspace, sshd: &Sshd, key: &str, known_hosts: &Path, extra: &str) {
    let yaml = sshd.through(
        &plan_yaml(&ws.source, &ws.mount, extra),
        &ws.source,
        key,
        known_hosts,
    );
    std::fs::write(&ws.plan, yaml).unwrap();
}

/// Sets `source.ssh.read` in the workspace plan.
fn set_read(ws: &Workspace, read: &str) {
    let yaml = std::fs::read_to_string(&ws.plan).unwrap();
    let (head, tail) = yaml.split_once("    knownHostsFile:").unwrap();
    std::fs::write(
        &ws.plan,
        format!("{head}    read: {read}\n    knownHostsFile:{tail}"),
    )
    .unwrap();
}

/// [`content_hashes`] without promigrate's own files (the apply lock).
fn file_hashes(dir: &Path) -> std::collections::BTreeMap<String, u128> {
    let mut h = content_hashes(dir);
    h.retain(|rel, _| !rel.contains(".promigrate"));
    h
}

/// What the target must hold after a full apply: the source's files, but for the ones
/// promigrate does not copy (`lock`, `queries.active`).
fn copied_hashes(ws: &Workspace) -> std::collections::BTreeMap<String, u128> {
    let mut want = file_hashes(&ws.source);
    want.retain(|k, _| k != "lock" && k != "queries.active");
    want
}

#[test]
fn plan_apply_verify_over_ssh_copies_a_real_tsdb_exactly() {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    ssh_plan(&ws, &sshd, "client_key", &sshd.path("known_hosts"), "");

    let (code, text, err) = ws.run(&["plan"]);
    assert_eq!(code, 0, "{text}\n{err}");
    assert!(text.contains(&sshd.shown(&ws.source)), "{text}");
    // No lock file on the source: over SSH promigrate cannot see its processes.
    assert!(
        text.contains("cannot see the processes of 127.0.0.1"),
        "{text}"
    );

    let (code, v) = ws.run_json(&["apply", "--yes", "--source-stopped"]);
    assert_eq!(code, 0, "{v}");
    assert!(
        only(&v)["apply"]["copied_files"].as_u64().unwrap() > 10,
        "{v}"
    );
    // By default every file came through the tar streams.
    assert_eq!(
        only(&v)["apply"]["streamed_files"],
        only(&v)["apply"]["copied_files"],
        "{v}"
    );
    // Everything except runtime files (lock, queries.active) arrived, byte for byte.
    assert_eq!(file_hashes(&ws.target()), copied_hashes(&ws));

    let (code, out, _) = ws.run(&["verify", "--level", "deep"]);
    assert_eq!(code, 0, "{out}");

    // While something holds the source's lock (as a running Prometheus does), the remote
    // probe (flock over an exec channel) sees it, and the final phase refuses.
    std::fs::write(ws.source.join("lock"), b"").unwrap();
    let holder = LockHolder::take(&ws.source.join("lock"), false);
    let (code, v) = ws.run_json(&["apply", "--yes", "--phase", "final"]);
    drop(holder);
    assert_eq!(code, 1, "{v}");
    assert!(
        v["refusal"]
            .as_str()
            .unwrap()
            .contains("is locked on 127.0.0.1"),
        "{v}"
    );
    std::fs::remove_file(ws.source.join("lock")).unwrap();
    // A rerun over SSH finds everything identical (SFTP times are whole seconds, and so are
    // the copies' times).
    let (code, v) = ws.run_json(&["apply", "--yes", "--source-stopped"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(only(&v)["apply"]["copied_files"], 0, "{v}");
}

#[test]
fn mismatched_host_key_is_refused_before_anything_is_read() {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    // known_hosts holds another key for [127.0.0.1]:port, on its second line.
    keygen(&sshd.path("other_host_key"), "");
    let other = std::fs::read_to_string(sshd.path("other_host_key.pub")).unwrap();
    let other = other
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    let kh = sshd.path("wrong_known_hosts");
    std::fs::write(
        &kh,
        format!("# a comment\n[127.0.0.1]:{} {other}\n", sshd.port),
    )
    .unwrap();
    // Hashed, as OpenSSH's HashKnownHosts writes it.
    hash_known_hosts(&kh);
    let text = std::fs::read_to_string(&kh).unwrap();
    assert!(
        text.contains("|1|") && !text.contains("127.0.0.1"),
        "{text}"
    );
    let line = text.lines().position(|l| l.starts_with("|1|")).unwrap() + 1;
    ssh_plan(&ws, &sshd, "client_key", &kh, "");
    for args in [vec!["plan"], vec!["apply", "--yes", "--source-stopped"]] {
        let (code, out, err) = ws.run(&args);
        assert_eq!(code, 3, "{out}\n{err}");
        assert!(err.contains("HOST KEY MISMATCH"), "{err}");
        assert!(
            err.contains(&sshd.fingerprint("host_key.pub")),
            "offered key shown: {err}"
        );
        assert!(
            err.contains(&format!("line {line} holds another key for it: |1|")),
            "the disagreeing line: {err}"
        );
    }
    assert!(!ws.target().exists(), "nothing may be written");
}

#[test]
fn unknown_host_is_refused_unless_the_plan_accepts_new_keys() {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    let kh = sshd.path("empty_known_hosts");
    std::fs::write(&kh, "").unwrap();
    ssh_plan(&ws, &sshd, "client_key", &kh, "");
    let (code, out, err) = ws.run(&["plan"]);
    assert_eq!(code, 3, "{out}\n{err}");
    assert!(err.contains("UNKNOWN HOST [127.0.0.1]:"), "{err}");
    assert!(err.contains(&sshd.fingerprint("host_key.pub")), "{err}");
    let (code, _, err) = ws.run(&["apply", "--yes", "--source-stopped"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("UNKNOWN HOST"), "{err}");
    assert!(!ws.target().exists(), "nothing may be written");
    assert_eq!(std::fs::read_to_string(&kh).unwrap(), "", "nothing added");

    // Explicit opt-in: the key is recorded, and then checked like any other.
    let yaml = std::fs::read_to_string(&ws.plan).unwrap().replace(
        "    knownHostsFile:",
        "    acceptNewHostKey: true\n    knownHostsFile:",
    );
    std::fs::write(&ws.plan, yaml).unwrap();
    let (code, out, err) = ws.run(&["plan"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        std::fs::read_to_string(&kh)
            .unwrap()
            .contains("ssh-ed25519")
    );
}

/// Issue 13: a host with host keys of several types, and a known_hosts that records one of
/// them (any one, plain or hashed): promigrate asks for the recorded type first, as OpenSSH
/// does, and connects. It used to take the server's ed25519 key and call it a mismatch.
#[test]
fn known_hosts_with_one_of_the_hosts_key_types_connects() {
    let kinds = ["ed25519", "ecdsa", "rsa"];
    let sshd = Sshd::start_keys(&kinds, "");
    let ws = Workspace::new();
    for kind in kinds {
        let file = if kind == "ed25519" {
            "host_key.pub".to_string()
        } else {
            format!("host_key_{kind}.pub")
        };
        let kh = sshd.path(&format!("{kind}_known_hosts"));
        std::fs::write(
            &kh,
            format!(
                "# only the {kind} key\n[127.0.0.1]:{} {}\n",
                sshd.port,
                public_key(&sshd.path(&file))
            ),
        )
        .unwrap();
        if kind == "rsa" {
            hash_known_hosts(&kh);
        }
        ssh_plan(&ws, &sshd, "client_key", &kh, "");
        let (code, out, err) = ws.run(&["plan"]);
        assert_eq!(
            code, 0,
            "known_hosts with the {kind} key only: {out}\n{err}"
        );
    }
}

/// A recorded key of the type the host offers that is not the offered key is still refused
/// before anything is read (and so is a key that known_hosts marks @revoked).
#[test]
fn another_key_of_the_recorded_type_is_still_a_mismatch() {
    let sshd = Sshd::start_keys(&["ed25519", "ecdsa"], "");
    let ws = Workspace::new();
    keygen_type(&sshd.path("other_ecdsa_key"), "ecdsa", "");
    let kh = sshd.path("wrong_known_hosts");
    std::fs::write(
        &kh,
        format!(
            "[127.0.0.1]:{} {}\n",
            sshd.port,
            public_key(&sshd.path("other_ecdsa_key.pub"))
        ),
    )
    .unwrap();
    ssh_plan(&ws, &sshd, "client_key", &kh, "");
    for args in [vec!["plan"], vec!["apply", "--yes", "--source-stopped"]] {
        let (code, out, err) = ws.run(&args);
        assert_eq!(code, 3, "{out}\n{err}");
        assert!(err.contains("HOST KEY MISMATCH"), "{err}");
        // The host was asked for its ECDSA key, the type known_hosts records.
        assert!(
            err.contains(&sshd.fingerprint("host_key_ecdsa.pub")),
            "offered key shown: {err}"
        );
        assert!(
            err.contains("line 1 holds another key for it"),
            "the disagreeing line: {err}"
        );
    }
    assert!(!ws.target().exists(), "nothing may be written");

    // The right key, but revoked.
    let real = public_key(&sshd.path("host_key_ecdsa.pub"));
    std::fs::write(
        &kh,
        format!(
            "@revoked [127.0.0.1]:{p} {real}\n[127.0.0.1]:{p} {real}\n",
            p = sshd.port
        ),
    )
    .unwrap();
    let (code, out, err) = ws.run(&["plan"]);
    assert_eq!(code, 3, "{out}\n{err}");
    assert!(err.contains("REVOKED HOST KEY"), "{err}");
    assert!(!ws.target().exists(), "nothing may be written");
}

/// A host that offers none of the key types known_hosts records for it is refused, but not
/// as a mismatch: the recorded key may well be right, and the message must not tell the
/// operator to delete it. acceptNewHostKey does not add the offered key either.
#[test]
fn a_host_offering_none_of_the_recorded_key_types_is_refused_without_blaming_the_key() {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    keygen_type(&sshd.path("ecdsa_key"), "ecdsa", "");
    let kh = sshd.path("ecdsa_known_hosts");
    let recorded = format!(
        "[127.0.0.1]:{} {}\n",
        sshd.port,
        public_key(&sshd.path("ecdsa_key.pub"))
    );
    std::fs::write(&kh, &recorded).unwrap();
    ssh_plan(&ws, &sshd, "client_key", &kh, "");
    for accept in [false, true] {
        if accept {
            let yaml = std::fs::read_to_string(&ws.plan).unwrap().replace(
                "    knownHostsFile:",
                "    acceptNewHostKey: true\n    knownHostsFile:",
            );
            std::fs::write(&ws.plan, yaml).unwrap();
        }
        let (code, out, err) = ws.run(&["plan"]);
        assert_eq!(code, 3, "{out}\n{err}");
        assert!(
            err.contains("only ecdsa-sha2-nistp256 keys") && err.contains("ssh-ed25519"),
            "names both types: {err}"
        );
        assert!(err.contains(&sshd.fingerprint("host_key.pub")), "{err}");
        assert!(
            !err.contains("MISMATCH")
                && !err.contains("intercepting")
                && !err.contains("ssh-keygen -R")
                && !err.contains("check that it exists"),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(&kh).unwrap(), recorded);
    }
    assert!(!ws.target().exists(), "nothing may be written");
}

#[test]
fn wrong_or_encrypted_key_gives_a_clear_auth_error() {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    keygen(&sshd.path("stranger_key"), "");
    ssh_plan(&ws, &sshd, "stranger_key", &sshd.path("known_hosts"), "");
    let (code, _, err) = ws.run(&["plan"]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("refused the key") && err.contains("stranger_key"),
        "{err}"
    );
    assert!(err.contains("authorized_keys"), "says what to do: {err}");

    keygen(&sshd.path("locked_key"), "secret passphrase");
    ssh_plan(&ws, &sshd, "locked_key", &sshd.path("known_hosts"), "");
    let (code, _, err) = Workspace::run(&ws, &["plan"]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("is encrypted and no ssh-agent holds it"),
        "{err}"
    );
    assert!(!err.contains("secret passphrase"));
}

/// The plan over `read: tar` (listing, meta.json and the cheap checks' reads from one
/// snapshot: a `find`, a `head`, a `tail` and a `tar`) is the plan over SFTP, damage found
/// in the prefetched bytes included.
#[test]
fn the_snapshot_plans_what_sftp_plans_and_finds_the_same_damage() {
    use std::io::{Seek, SeekFrom, Write};
    let sshd = Sshd::start();
    let ws = Workspace::new();
    // What the snapshot must hold, counted on the source: meta.json and tombstones whole, the
    // ends of each index and chunk segment (how many blocks promtool cuts depends on the clock).
    let (mut whole, mut ends) = (0, 0);
    for e in walkdir::WalkDir::new(&ws.source).min_depth(2).max_depth(3) {
        let e = e.unwrap();
        let rel = e
            .path()
            .strip_prefix(&ws.source)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let in_block = ws
            .source
            .join(rel.split('/').next().unwrap())
            .join("meta.json")
            .exists();
        if !in_block || !e.file_type().is_file() {
            continue;
        }
        match e.file_name().to_string_lossy().as_ref() {
            "meta.json" | "tombstones" => whole += 1,
            "index" => ends += 1,
            _ if rel.contains("/chunks/") => ends += 1,
            _ => {}
        }
    }
    assert!(whole >= 2 && ends >= 2, "the source has blocks");
    let want = format!("whole={whole} ends={ends}");
    let plan = |read: &str| {
        ssh_plan(&ws, &sshd, "client_key", &sshd.path("known_hosts"), "");
        set_read(&ws, read);
        let mut cmd = ws.cmd(&["plan", "--output", "json"]);
        cmd.env("RUST_LOG", "promigrate=debug");
        let (code, out, err) = run(cmd);
        // Only `read: tar` takes the snapshot, and it delivered everything the checks read.
        let snap = err.lines().find(|l| l.contains("source listed by find"));
        if read == "tar" {
            let snap = snap.unwrap_or_else(|| panic!("no snapshot: {err}"));
            assert!(snap.contains(&want), "{want}: {snap}");
        } else {
            assert!(snap.is_none(), "{err}");
        }
        let mut v: serde_json::Value = serde_json::from_str(&out).unwrap();
        // What changes between two runs: the time taken, and the target's free space and
        // inodes (other tests write to the same filesystem meanwhile).
        fn drop_volatile(v: &mut serde_json::Value) {
            match v {
                serde_json::Value::Object(m) => {
                    m.remove("duration_seconds");
                    m.remove("target_free_bytes");
                    m.remove("target_free_inodes");
                    m.values_mut().for_each(drop_volatile);
                }
                serde_json::Value::Array(a) => a.iter_mut().for_each(drop_volatile),
                _ => {}
            }
        }
        drop_volatile(&mut v);
        (code, v)
    };
    let (code, tar) = plan("tar");
    assert_eq!(code, 0, "{tar}");
    let (_, sftp) = plan("sftp");
    assert_eq!(tar, sftp);
    // Damage where only the prefetched bytes show it: the last byte of an index (its TOC
    // CRC) and the first of a chunk segment (its magic number).
    let block = some_block(&ws.source);
    let name = block.file_name().unwrap().to_string_lossy().into_owned();
    let flip = |path: &Path, from_end: bool| {
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let at = if from_end {
            f.metadata().unwrap().len() - 1
        } else {
            0
        };
        let mut b = [0u8];
        f.seek(SeekFrom::Start(at)).unwrap();
        std::io::Read::read_exact(&mut f, &mut b).unwrap();
        f.seek(SeekFrom::Start(at)).unwrap();
        f.write_all(&[b[0] ^ 0xff]).unwrap();
    };
    flip(&block.join("index"), true);
    flip(&block.join("chunks/000001"), false);
    let (code, tar) = plan("tar");
    assert_eq!(code, 1, "{tar}");
    let blockers = only(&tar)["blockers"].to_string();
    for want in [&name, "index", "TOC", "chunks/000001", "magic"] {
        assert!(blockers.contains(want), "{want} not in {blockers}");
    }
    let (_, sftp) = plan("sftp");
    assert_eq!(tar, sftp);
}

/// Issue 16: `apply --dry-run` from an SSH source (`read: tar`, the default) reads no file
/// content: no tar stream is started (one it never read would stall the run), and it lists
/// the same changes as a dry run from the same data on this host.
#[test]
fn a_dry_run_over_ssh_starts_no_tar_stream() {
    // The host's tar notes how it is run: the plan's snapshot runs it with the names to
    // read, a copy stream with `-T -` (the names come on its stdin).
    let bin = tempfile::tempdir().unwrap();
    let calls = bin.path().join("tar.calls");
    let tar = bin.path().join("tar");
    std::fs::write(
        &tar,
        format!(
            "#!/bin/sh\necho \"$*\" >>{}\nexec {} \"$@\"\n",
            calls.display(),
            which("tar").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&tar, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let sshd = Sshd::start_with(&format!(
        "SetEnv PATH={}:/usr/local/bin:/usr/bin:/bin\n",
        bin.path().display()
    ));
    let ws = Workspace::new();
    let (code, local) = ws.run_json(&["apply", "--yes", "--dry-run"]);
    assert_eq!(code, 0, "{local}");
    ssh_plan(&ws, &sshd, "client_key", &sshd.path("known_hosts"), "");
    set_read(&ws, "tar");
    let mut cmd = Command::new("timeout");
    cmd.arg("120")
        .arg(env!("CARGO_BIN_EXE_promigrate"))
        .args([
            "apply",
            "--yes",
            "--dry-run",
            "--source-stopped",
            "--output",
            "json",
        ])
        .arg("-f")
        .arg(&ws.plan)
        .env("RUST_LOG", "promigrate=debug");
    let (code, out, log) = run(cmd);
    assert_eq!(code, 0, "{out}\n{log}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let calls = std::fs::read_to_string(&calls).unwrap_or_default();
    assert!(!calls.is_empty(), "the snapshot runs the host's tar");
    assert!(
        !calls.contains(" -T -"),
        "a copy stream was started: {calls}"
    );
    assert_eq!(only(&v)["would"], only(&local)["would"], "{v}");
    assert_eq!(std::fs::read_dir(&ws.mount).unwrap().count(), 0);
}

#[test]
fn sftp_reads_and_a_host_without_exec_copy_the_same_without_tar() {
    // `read: sftp`, and a host that allows SFTP only (every command is refused), where the
    // default `read: tar` finds out and falls back.
    for (read, extra) in [("sftp", ""), ("tar", "ForceCommand internal-sftp\n")] {
        let sshd = Sshd::start_with(extra);
        let ws = Workspace::new();
        ssh_plan(&ws, &sshd, "client_key", &sshd.path("known_hosts"), "");
        set_read(&ws, read);
        let (code, out, log) = ws.run(&["apply", "--yes", "--source-stopped", "--output", "json"]);
        assert_eq!(code, 0, "{read} {extra}: {log}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert!(
            only(&v)["apply"]["copied_files"].as_u64().unwrap() > 10,
            "{v}"
        );
        assert_eq!(
            only(&v)["apply"]["streamed_files"],
            0,
            "{read} {extra}: {v}"
        );
        if !extra.is_empty() {
            assert!(log.contains("cannot stream files through tar"), "{log}");
        }
        assert_eq!(
            file_hashes(&ws.target()),
            copied_hashes(&ws),
            "{read} {extra}"
        );
    }
}

/// GNU tar, on a disk that fails to read a file part-way, writes "Read error at byte …" to
/// its stderr (after the name `-v` lists, before the next one), zeros for the rest of the
/// file, and goes on; the header's size and mtime are right. Simulated here for every first
/// chunk segment (a real read error needs a failing device): the host's `tar` is the real
/// GNU tar, without `-v`, piped through a filter that lists each member on stderr as tar
/// does and does the rest. The files of such a batch are copied again over SFTP, and the
/// copy is exact.
#[test]
fn a_file_tar_could_not_read_is_copied_again_over_sftp() {
    let bin = tempfile::tempdir().unwrap();
    let sshd = Sshd::start_with(&failing_tar(bin.path(), false, ""));
    let ws = Workspace::new();
    ssh_plan(&ws, &sshd, "client_key", &sshd.path("known_hosts"), "");
    let (code, out, log) = ws.run(&["apply", "--yes", "--source-stopped", "--output", "json"]);
    assert_eq!(code, 0, "{log}");
    assert!(
        log.contains("Read error at byte 0") && log.contains("copied again over SFTP"),
        "{log}"
    );
    // Only the batches (blocks) tar complained in were copied again, all of their files.
    let mut hit = (0, 0);
    for e in std::fs::read_dir(&ws.source).unwrap() {
        let block = e.unwrap().path();
        if block.join("chunks/000001").is_file() {
            hit.0 += 1;
            hit.1 += walkdir::WalkDir::new(&block)
                .into_iter()
                .filter(|e| e.as_ref().unwrap().file_type().is_file())
                .count() as u64;
        }
    }
    assert!(hit.0 > 0);
    assert_eq!(log.matches("cannot vouch for").count(), hit.0, "{log}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let copied = only(&v)["apply"]["copied_files"].as_u64().unwrap();
    assert_eq!(only(&v)["apply"]["streamed_files"], copied - hit.1, "{v}");
    assert_eq!(file_hashes(&ws.target()), copied_hashes(&ws));
    assert_eq!(ws.run(&["verify", "--level", "checksum"]).0, 0);
}

/// sshd configuration lines that give its sessions a `tar` (in `bin`) which is the real GNU
/// tar, without `-v`, piped through a filter that lists each member on stderr as `tar -v`
/// does, and for every first chunk segment says "Read error at byte 0" there, as GNU tar
/// does, and puts zeros in place of its data. With `quit`, the archive ends right after
/// that file (as when the connection drops).
fn failing_tar(bin: &Path, quit: bool, extra: &str) -> String {
    let filter = r#"
$| = 1;
my $quit = @ARGV && $ARGV[0] eq "quit";
my ($left, $bad) = (0, 0);
while (1) {
    my $b = "";
    while (length($b) < 512) {
        my $n = sysread(STDIN, $b, 512 - length($b), length($b));
        last if !$n;
    }
    last if $b eq "";
    if ($left > 0) {
        $left--;
        $b = "\0" x 512 if $bad;
        syswrite(STDOUT, $b);
        exit 0 if $bad && $quit && $left == 0;
        next;
    }
    if (length($b) == 512 && substr($b, 0, 1) ne "\0") {
        my $name = unpack("Z100", $b);
        $left = int((oct(unpack("Z12", substr($b, 124, 12))) + 511) / 512);
        $bad = $name =~ m{/chunks/000001$} ? 1 : 0;
        print STDERR "$name\n";
        print STDERR "tar: $name: Read error at byte 0, while reading 10240 bytes: Input/output error\n" if $bad;
    }
    syswrite(STDOUT, $b);
}
"#;
    std::fs::write(bin.join("filter.pl"), filter).unwrap();
    let script = format!(
        "#!/bin/sh\nfor a; do shift; [ \"$a\" = -cvf ] && a=-cf; set -- \"$@\" \"$a\"; done\n{} \"$@\" | perl {} {}\n",
        which("tar").display(),
        bin.join("filter.pl").display(),
        if quit { "quit" } else { "" }
    );
    let tar = bin.join("tar");
    std::fs::write(&tar, script).unwrap();
    std::fs::set_permissions(&tar, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    format!(
        "SetEnv PATH={}:/usr/local/bin:/usr/bin:/bin\n{extra}",
        bin.display()
    )
}

/// A run that stops after tar delivered a file and before it vouched for it (here: the
/// stream ends right after a file tar could not read, and SFTP, which would read it and the
/// rest of the batch, is refused) leaves staged files without the source's mtime: the next
/// run copies them again instead of taking them as complete.
#[test]
fn a_staged_file_tar_did_not_vouch_for_is_not_resumed() {
    let bin = tempfile::tempdir().unwrap();
    let broken = Sshd::start_with(&failing_tar(
        bin.path(),
        true,
        "Subsystem sftp /bin/false\n",
    ));
    let ws = Workspace::new();
    // Only blocks, whose checks the scan's snapshot answers without SFTP.
    for d in ["wal", "chunks_head"] {
        std::fs::remove_dir_all(ws.source.join(d)).unwrap();
    }
    ssh_plan(&ws, &broken, "client_key", &broken.path("known_hosts"), "");
    let (code, _, log) = ws.run(&["apply", "--yes", "--source-stopped"]);
    assert_ne!(code, 0, "{log}");
    let staged: Vec<PathBuf> = walkdir::WalkDir::new(ws.target().join(".promigrate-staging"))
        .into_iter()
        .map(|e| e.unwrap().into_path())
        .filter(|p| p.ends_with("chunks/000001"))
        .collect();
    assert!(!staged.is_empty(), "a zeroed segment is staged: {log}");
    drop(broken);
    let sshd = Sshd::start();
    ssh_plan(&ws, &sshd, "client_key", &sshd.path("known_hosts"), "");
    let (code, _, log) = ws.run(&["apply", "--yes", "--source-stopped"]);
    assert_eq!(code, 0, "{log}");
    assert_eq!(file_hashes(&ws.target()), copied_hashes(&ws));
}

/// Where `prog` is on PATH.
fn which(prog: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{prog} is not on PATH"))
}

#[test]
fn a_killed_connection_mid_copy_reconnects_and_resumes() {
    // Through the tar streams (the default), then SFTP only.
    killed_connection_mid_copy("tar", "the tar stream from 127.0.0.1 failed");
    killed_connection_mid_copy("sftp", "reconnecting");
}

/// A presync over SSH of 1 GiB of real blocks at `bwlimit` (slow enough for a test to
/// interrupt it mid-copy), with its log piped; returns once it has started copying.
fn copying_a_gib(ws: &Workspace, sshd: &Sshd, read: &str, bwlimit: &str) -> Child {
    let own = ws.source.clone();
    ssh_plan(ws, sshd, "client_key", &sshd.path("known_hosts"), "");
    set_read(ws, read);
    let yaml = std::fs::read_to_string(&ws.plan).unwrap().replace(
        &own.display().to_string(),
        &gib_fixture().display().to_string(),
    );
    std::fs::write(&ws.plan, yaml).unwrap();
    let child = ws
        .cmd(&["apply", "--yes", "--phase", "presync", "--bwlimit", bwlimit])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let staging = ws.target().join(".promigrate-staging");
    let start = Instant::now();
    while !staging.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "apply never started copying"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

fn killed_connection_mid_copy(read: &str, noticed: &str) {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    let child = copying_a_gib(&ws, &sshd, read, "100M");
    // Once data flows, kill every sshd process serving a connection.
    std::thread::sleep(Duration::from_millis(1500));
    let served = sshd.connection_pids();
    assert!(!served.is_empty(), "no sshd connection process to kill");
    for pid in &served {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(
        log.contains(noticed),
        "the drop was noticed ({read}): {log}"
    );

    // The source holds blocks only, so the presync copied everything: every byte equal.
    let (code, out, _) = ws.run(&["verify", "--level", "checksum"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("OK: the target matches the source."), "{out}");
}

#[test]
fn a_source_that_stays_unreachable_gives_up_with_a_resumable_state() {
    let mut sshd = Sshd::start();
    let ws = Workspace::new();
    let child = copying_a_gib(&ws, &sshd, "tar", "50M");
    std::thread::sleep(Duration::from_millis(1000));
    // The whole sshd goes away: listener and connections.
    for pid in sshd.connection_pids() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    sshd.child.kill().unwrap();
    sshd.child.wait().unwrap();
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{log}");
    assert!(log.contains("gave up after 5 attempts"), "{log}");
    assert!(log.contains("rerun to resume"), "{log}");

    // Resumable: the same sshd comes back, the rerun copies only what is missing, and every
    // byte is equal.
    sshd.restart();
    let (_, v) = ws.run_json(&["plan"]);
    let left = only(&v)["phases"]["presync"]["bytes"].as_u64().unwrap();
    assert!(left > 0, "the copy was not interrupted: {v}");
    let (code, v) = ws.run_json(&["apply", "--yes", "--phase", "presync"]);
    assert_eq!(code, 0, "{v}");
    let total = only(&v)["plan"]["stats"]["source_bytes"].as_u64().unwrap();
    let copied = only(&v)["apply"]["copied_bytes"].as_u64().unwrap();
    assert!(
        copied < total,
        "the rerun started over: {copied} of {total}"
    );
    let (code, out, _) = ws.run(&["verify", "--level", "checksum"]);
    assert_eq!(code, 0, "{out}");
}

/// Issue 13: source files dated before 1970 (negative seconds) over SSH. `read: tar` (GNU
/// find lists, tar copies) keeps the true time; SFTP (protocol 3) carries times as unsigned
/// 32-bit seconds, so with `read: sftp` the file arrives dated 2^32 s later (in 2096), and the
/// plan says so. Either way a rerun finds it identical (`=`, 0 B copied) instead of copying
/// it again forever.
#[test]
fn files_dated_before_1970_compare_identical_after_an_ssh_apply() {
    for read in ["tar", "sftp"] {
        let sshd = Sshd::start();
        let ws = Workspace::new();
        ssh_plan(&ws, &sshd, "client_key", &sshd.path("known_hosts"), "");
        set_read(&ws, read);
        let block = some_block(&ws.source);
        let name = block.file_name().unwrap().to_string_lossy().into_owned();
        for f in ["tombstones", "meta.json"] {
            date_before_1970(&block.join(f));
        }
        let (code, v) = ws.run_json(&["apply", "--yes", "--source-stopped"]);
        assert_eq!(code, 0, "{read}: {v}");
        let want = if read == "tar" {
            -315_619_200
        } else {
            -315_619_200 + (1i64 << 32)
        };
        for f in ["tombstones", "meta.json"] {
            let got = mtime_of(&ws.target().join(&name).join(f)).0;
            assert_eq!(got, want, "{read}: {f}");
        }
        let (code, text, err) = ws.run(&["plan"]);
        assert_eq!(code, 0, "{read}: {text}\n{err}");
        assert!(text.contains(&format!("  = {name}")), "{read}: {text}");
        assert!(text.contains("To copy: 0 B in 0 files"), "{read}: {text}");
        if read == "sftp" {
            assert!(text.contains("32-bit"), "{text}");
        }
        let (code, v) = ws.run_json(&["apply", "--yes", "--source-stopped"]);
        assert_eq!(code, 0, "{read}: {v}");
        assert_eq!(only(&v)["apply"]["copied_bytes"], 0, "{read}: {v}");
    }
}

/// The SshSpec of the sshd's host (127.0.0.1 and its port), as a plan would resolve it.
fn spec_of(sshd: &Sshd) -> promigrate::ssh::SshSpec {
    promigrate::ssh::SshSpec {
        host: "127.0.0.1".into(),
        port: sshd.port,
        user: "root".into(),
        identity_file: Some(sshd.path("client_key")),
        known_hosts_file: sshd.path("known_hosts"),
        accept_new_host_key: false,
        read: promigrate::ssh::ReadVia::Tar,
        ..Default::default()
    }
}

/// Issue 13: every address the host name resolves to is tried, in order, as OpenSSH does:
/// the first refuses (a closed port on 127.0.0.1), the second is the real sshd. (No name
/// here resolves to two loopback addresses, so the test gives the list itself.)
#[test]
fn every_resolved_address_is_tried_until_one_answers() {
    let sshd = Sshd::start();
    let spec = spec_of(&sshd);
    let closed: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let real: std::net::SocketAddr = format!("127.0.0.1:{}", sshd.port).parse().unwrap();
    let sess = promigrate::ssh::connect_to(&spec, &[closed, real])
        .unwrap_or_else(|e| panic!("the second address was not tried: {e}"));
    assert!(sess.authenticated());
    // Both refusing: the message names each address.
    let other: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let err = promigrate::ssh::connect_to(&spec, &[closed, other])
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains(&closed.to_string()) && err.contains(&other.to_string()),
        "{err}"
    );
}

/// Issue 13: a host name that does not resolve fails at once (not after 5 attempts and
/// 15 s of backoff), exit 3, naming source.ssh.host; `plan` reads only, so nothing about
/// resuming or rerunning apply.
#[test]
fn a_host_name_that_does_not_resolve_fails_at_once() {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    ssh_plan(&ws, &sshd, "client_key", &sshd.path("known_hosts"), "");
    let yaml = std::fs::read_to_string(&ws.plan)
        .unwrap()
        .replace("host: 127.0.0.1", "host: no-such-host.invalid");
    std::fs::write(&ws.plan, yaml).unwrap();
    for args in [&["plan"][..], &["apply", "--yes", "--source-stopped"]] {
        let t = Instant::now();
        let (code, out, err) = ws.run(args);
        let took = t.elapsed();
        assert_eq!(code, 3, "{args:?}: {out}\n{err}");
        assert!(
            took < Duration::from_secs(3),
            "{args:?} took {took:?} (the backoff sums to 15 s): {err}"
        );
        assert!(
            err.contains("source.ssh.host")
                && err.contains("no-such-host.invalid")
                && err.contains("does not resolve"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("attempt"), "{args:?}: retried: {err}");
        if args[0] == "plan" {
            for word in ["resume", "rerun"] {
                assert!(!err.contains(word), "{word}: {err}");
            }
        }
    }
}

/// The source's Prometheus version over SSH: the running server's own binary on the host
/// (3.16, found by the remote /proc scan and run as the server's user; PATH there has
/// Debian's 2.42), then, once it has
/// stopped, `prometheus --version` from the SSH user's PATH, with why the first way failed.
#[test]
fn the_source_version_over_ssh_is_the_running_binarys_then_paths() {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    ssh_plan(&ws, &sshd, "client_key", &sshd.path("known_hosts"), "");
    let flavor = PromFlavor {
        binary: Some(prom3_bin().join("prometheus")),
        ..PromFlavor::default()
    };
    // As another user than the SSH user (root): the binary runs as that user (setpriv).
    chown_tree(&ws.source, (RUN_AS_USER, FS_GROUP));
    let mut server = PromServer::start_flavor(
        &flavor,
        &ws.source,
        &ws.dir.path().join("prom"),
        Some((RUN_AS_USER, FS_GROUP)),
    );
    let (code, v) = ws.run_json(&["plan"]);
    server.stop();
    assert_eq!(code, 0, "{v}");
    let sv = &only(&v)["source_version"];
    assert_eq!(sv["version"], "3.16.0", "{sv}");
    assert_eq!(sv["via"], "running_binary", "{sv}");
    let how = sv["how"].as_str().unwrap();
    assert!(how.contains("binary on 127.0.0.1 (/proc/"), "{how}");

    let (code, v) = ws.run_json(&["plan"]);
    assert_eq!(code, 0, "{v}");
    let sv = &only(&v)["source_version"];
    assert_eq!(sv["version"], "2.42.0", "{sv}");
    assert_eq!(sv["via"], "path", "{sv}");
    let how = sv["how"].as_str().unwrap();
    assert!(
        how.contains("prometheus on the SSH user's PATH on 127.0.0.1"),
        "{how}"
    );
    let first = sv["tried"][0].as_str().unwrap();
    assert!(
        first.contains("no process on 127.0.0.1 has the WAL of") && first.contains("stopped"),
        "{first}"
    );

    let user_dir = ws.dir.path().join("userbin");
    std::fs::create_dir(&user_dir).unwrap();
    let marker = user_dir.join("marker");
    let bin = fake_prometheus::build_fake(&user_dir, &marker);
    chown_tree(&user_dir, (RUN_AS_USER, FS_GROUP));
    std::fs::set_permissions(
        &user_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let seg = fake_prometheus::last_segment(&ws.source);
    let take_marker = || {
        use std::os::unix::fs::MetadataExt;
        let owner = std::fs::metadata(&marker).ok()?.uid();
        let text = std::fs::read_to_string(&marker).unwrap();
        std::fs::remove_file(&marker).unwrap();
        Some((owner, text))
    };
    let clean = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

    // Non-dumpable, as the user: run (setpriv) as the user, with the fixed PATH alone.
    {
        let _fake = Fake::start(&bin, &seg, Some((RUN_AS_USER, FS_GROUP)));
        let (code, v) = ws.run_json(&["plan"]);
        assert_eq!(code, 0, "{v}");
        let sv = &only(&v)["source_version"];
        assert_eq!(sv["version"], "9.9.9", "{sv}");
        assert_eq!(sv["via"], "running_binary", "{sv}");
    }
    assert_eq!(
        take_marker(),
        Some((
            RUN_AS_USER,
            format!("uid={RUN_AS_USER} euid={RUN_AS_USER}\n{clean}\n")
        ))
    );

    // Root runs the user's binary: not run as root (the SSH user); PATH's 2.42 answers.
    {
        let _fake = Fake::start(&bin, &seg, None);
        let (code, v) = ws.run_json(&["plan"]);
        assert_eq!(code, 0, "{v}");
        let sv = &only(&v)["source_version"];
        assert_eq!(sv["via"], "path", "{sv}");
        let why = sv["tried"][0].as_str().unwrap();
        assert!(
            why.contains("on 127.0.0.1")
                && why.contains(&format!("{} belongs to uid {RUN_AS_USER}", bin.display()))
                && why.contains("not run as root"),
            "{why}"
        );
    }
    assert_eq!(take_marker(), None, "the user's binary ran as root");
}

/// A bastion: an sshd that only forwards (no shell, no command, no SFTP), logging at
/// DEBUG1 so that its forwardings can be read off its log, and allowing the connection
/// to `to` only. `client_key.pub` of `also` is authorized too (one deploy key for both).
fn bastion(to: &Sshd, forwarding: &str) -> Sshd {
    let jump = Sshd::start_with(&format!(
        "LogLevel DEBUG1\nAllowTcpForwarding {forwarding}\nPermitOpen 127.0.0.1:{}\n\
         PermitTTY no\nForceCommand /bin/false\nSubsystem sftp /bin/false\n",
        to.port
    ));
    let mut keys = std::fs::read_to_string(jump.path("authorized_keys")).unwrap();
    keys.push_str(&std::fs::read_to_string(to.path("client_key.pub")).unwrap());
    std::fs::write(jump.path("authorized_keys"), keys).unwrap();
    jump
}

/// One known_hosts file with the host keys of every sshd given.
fn known_hosts_of(dir: &Path, hosts: &[&Sshd]) -> PathBuf {
    let all: String = hosts
        .iter()
        .map(|h| std::fs::read_to_string(h.path("known_hosts")).unwrap())
        .collect();
    let kh = dir.join("known_hosts_all");
    std::fs::write(&kh, all).unwrap();
    kh
}

/// Sets `source.ssh.proxyJump` of the workspace plan (made by [`ssh_plan`]) to `hops`, and
/// reads no ssh config.
fn through(ws: &Workspace, hops: &str) {
    let yaml = std::fs::read_to_string(&ws.plan).unwrap().replace(
        "    knownHostsFile:",
        &format!("    proxyJump: {hops}\n    configFile: none\n    knownHostsFile:"),
    );
    std::fs::write(&ws.plan, yaml).unwrap();
}

/// Writes the workspace plan with a source reached as `host`, an alias of ssh config
/// `config`, which supplies everything else.
fn by_ssh_config(ws: &Workspace, host: &str, config: &Path) {
    let yaml = plan_yaml(&ws.source, &ws.mount, "").replace(
        &format!("source:\n  path: {}\n", ws.source.display()),
        &format!(
            "source:\n  path: {}\n  ssh:\n    host: {host}\n    configFile: {}\n",
            ws.source.display(),
            config.display()
        ),
    );
    assert!(
        yaml.contains(&format!("host: {host}")),
        "plan template changed"
    );
    std::fs::write(&ws.plan, yaml).unwrap();
}

/// A source sshd, a bastion in front of it (`AllowTcpForwarding forwarding`), and a
/// workspace whose plan reaches the source through the bastion, both host keys known.
fn behind_a_bastion(forwarding: &str) -> (Sshd, Sshd, Workspace) {
    let target = Sshd::start();
    let jump = bastion(&target, forwarding);
    let ws = Workspace::new();
    let kh = known_hosts_of(ws.dir.path(), &[&target, &jump]);
    ssh_plan(&ws, &target, "client_key", &kh, "");
    through(&ws, &format!("root@127.0.0.1:{}", jump.port));
    (target, jump, ws)
}

/// A full apply of the workspace (the source stopped) succeeds, the target holds the
/// source's files byte for byte, and deep verify passes.
fn apply_equal_and_deep_verified(ws: &Workspace) {
    let (code, v) = ws.run_json(&["apply", "--yes", "--source-stopped"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(file_hashes(&ws.target()), copied_hashes(ws));
    let (code, out, _) = ws.run(&["verify", "--level", "deep"]);
    assert_eq!(code, 0, "{out}");
}

/// Whether the bastion forwarded a connection to `port` (its DEBUG1 log says so).
fn forwarded_to(jump: &Sshd, port: u16) -> bool {
    std::fs::read_to_string(jump.path("sshd.log"))
        .unwrap_or_default()
        .contains(&format!("target 127.0.0.1 port {port}"))
}

/// Issue 18: `source.ssh.proxyJump` goes through a bastion that allows nothing but
/// forwarding: plan says the way, apply copies byte for byte, deep verify passes, and the
/// bastion's log shows the forwarded connections. The bastion's host key is checked like
/// the source's: a known_hosts without it stops everything before anything is read.
#[test]
fn a_source_behind_a_jump_host_is_copied_through_it_with_each_host_key_checked() {
    let (target, jump, ws) = behind_a_bastion("yes");

    let (code, text, err) = ws.run(&["plan"]);
    assert_eq!(code, 0, "{text}\n{err}");
    assert!(
        text.contains(&format!("via root@127.0.0.1:{}", jump.port)),
        "{text}"
    );
    assert!(
        forwarded_to(&jump, target.port),
        "plan did not go through the bastion"
    );
    let (code, v) = ws.run_json(&["plan"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(
        only(&v)["source_jumps"],
        serde_json::json!([format!("root@127.0.0.1:{}", jump.port)]),
        "{v}"
    );

    apply_equal_and_deep_verified(&ws);

    // The bastion's key unknown: refused, naming the bastion; nothing read or written.
    let ws2 = Workspace::new();
    let only_target = target.path("known_hosts");
    ssh_plan(&ws2, &target, "client_key", &only_target, "");
    through(&ws2, &format!("[\"root@127.0.0.1:{}\"]", jump.port));
    for args in [&["plan"][..], &["apply", "--yes", "--source-stopped"]] {
        let (code, out, err) = ws2.run(args);
        assert_eq!(code, 3, "{args:?}: {out}\n{err}");
        assert!(
            err.contains(&format!("jump host root@127.0.0.1:{}", jump.port))
                && err.contains("UNKNOWN HOST"),
            "{args:?}: {err}"
        );
    }
    assert!(!ws2.target().exists(), "nothing may be written");
}

/// Issue 18: a bastion that refuses to forward is named, with what to check, at once (a
/// refusal is not a dropped connection to retry).
#[test]
fn a_jump_host_that_refuses_to_forward_is_named_at_once() {
    let (_target, jump, ws) = behind_a_bastion("no");
    let t = Instant::now();
    let (code, out, err) = ws.run(&["plan"]);
    assert_eq!(code, 3, "{out}\n{err}");
    assert!(
        err.contains(&format!("jump host root@127.0.0.1:{}", jump.port))
            && err.contains("AllowTcpForwarding"),
        "{err}"
    );
    assert!(!err.contains("attempt"), "retried: {err}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
}

/// Issue 18: the source named by its `~/.ssh/config` alias: HostName, User, Port,
/// IdentityFile, UserKnownHostsFile and ProxyJump (itself an alias) come from the config,
/// and plan prints what it resolved; apply and deep verify go through the bastion.
#[test]
fn an_ssh_config_alias_supplies_the_host_its_settings_and_its_jump() {
    let target = Sshd::start();
    let jump = bastion(&target, "yes");
    let ws = Workspace::new();
    let kh = known_hosts_of(ws.dir.path(), &[&target, &jump]);
    let config = ws.dir.path().join("ssh_config");
    // A key the source does not know comes first: as with OpenSSH, the next is tried.
    let stranger = ws.dir.path().join("stranger_key");
    keygen(&stranger, "");
    std::fs::write(
        &config,
        format!(
            "Host vm1\n  HostName 127.0.0.1\n  Port {}\n  User root\n  IdentityFile {}\n  IdentityFile {}\n  ProxyJump bastion\n\
             Host bastion\n  HostName 127.0.0.1\n  Port {}\n  User root\n  IdentityFile {}\n\
             Host *\n  UserKnownHostsFile {}\n  ServerAliveInterval 30\n",
            target.port,
            stranger.display(),
            target.path("client_key").display(),
            jump.port,
            jump.path("client_key").display(),
            kh.display()
        ),
    )
    .unwrap();
    by_ssh_config(&ws, "vm1", &config);

    let (code, text, err) = ws.run(&["plan"]);
    assert_eq!(code, 0, "{text}\n{err}");
    for want in [
        format!("source  root@127.0.0.1:{}:", target.port),
        "alias vm1".to_string(),
        format!("via root@127.0.0.1:{}", jump.port),
        format!(
            "from {}: HostName, Port, User, IdentityFile, UserKnownHostsFile, ProxyJump",
            config.display()
        ),
    ] {
        assert!(text.contains(&want), "{want}: {text}");
    }
    assert!(
        forwarded_to(&jump, target.port),
        "plan did not go through the bastion"
    );
    let (code, v) = ws.run_json(&["plan"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(
        only(&v)["source_ssh_config"]["file"].as_str(),
        Some(config.to_str().unwrap()),
        "{v}"
    );

    apply_equal_and_deep_verified(&ws);
}

/// Issue 18 (review): `IdentitiesOnly yes` with an encrypted `IdentityFile` logs in with the
/// agent's copy of that key, as OpenSSH does (an agent of the test's own, on its own
/// socket; the key added with its passphrase through SSH_ASKPASS).
#[test]
fn identities_only_logs_in_with_the_agents_copy_of_the_named_key() {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    let dir = ws.dir.path();
    let key = dir.join("locked_key");
    keygen(&key, "secret phrase");
    let mut keys = std::fs::read_to_string(sshd.path("authorized_keys")).unwrap();
    keys.push_str(&std::fs::read_to_string(dir.join("locked_key.pub")).unwrap());
    std::fs::write(sshd.path("authorized_keys"), keys).unwrap();
    let sock = dir.join("agent.sock");
    let mut agent = Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&sock)
        .stdout(Stdio::null())
        .spawn()
        .expect("ssh-agent (openssh-client)");
    let start = Instant::now();
    while !sock.exists() {
        assert!(start.elapsed() < Duration::from_secs(10), "no agent socket");
        std::thread::sleep(Duration::from_millis(50));
    }
    let askpass = dir.join("askpass.sh");
    std::fs::write(&askpass, "#!/bin/sh\necho 'secret phrase'\n").unwrap();
    std::fs::set_permissions(
        &askpass,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let added = Command::new("ssh-add")
        .arg(&key)
        .env("SSH_AUTH_SOCK", &sock)
        .env("SSH_ASKPASS", &askpass)
        .env("SSH_ASKPASS_REQUIRE", "force")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(added.status.success(), "{added:?}");
    let config = dir.join("ssh_config");
    std::fs::write(
        &config,
        format!(
            "Host vm\n  HostName 127.0.0.1\n  Port {}\n  User root\n  IdentityFile {}\n  IdentitiesOnly yes\n  UserKnownHostsFile {}\n",
            sshd.port,
            key.display(),
            sshd.path("known_hosts").display()
        ),
    )
    .unwrap();
    by_ssh_config(&ws, "vm", &config);
    let mut c = ws.cmd(&["plan"]);
    c.env("SSH_AUTH_SOCK", &sock);
    let (code, out, err) = run(c);
    // Without the agent, the encrypted file alone cannot log in: named as such.
    let mut c = ws.cmd(&["plan"]);
    c.env_remove("SSH_AUTH_SOCK");
    let (code2, _, err2) = run(c);
    let _ = agent.kill();
    let _ = agent.wait();
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(code2, 3, "{err2}");
    assert!(err2.contains("locked_key is encrypted"), "{err2}");
}
