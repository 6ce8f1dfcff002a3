//! A stand-in `prometheus` for the source-version tests (tests/version.rs, tests/ssh.rs).

/// A stand-in `prometheus` (C, built here with gcc). As a "server" (`fake <file>`) it opens
/// the file for writing, makes itself non-dumpable (`prctl(PR_SET_DUMPABLE, 0)`: the files
/// in its /proc/<pid> are then root's, whatever its user), says `ready` and sleeps; asked
/// `--version` it writes its ids and environment to `marker` and says it is 9.9.9.
pub const FAKE_PROMETHEUS: &str = r#"
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>
extern char **environ;
int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--version") == 0) {
        FILE *f = fopen(MARKER, "w");
        if (f) {
            fprintf(f, "uid=%d euid=%d\n", (int)getuid(), (int)geteuid());
            for (char **e = environ; *e; e++) fprintf(f, "%s\n", *e);
            fclose(f);
        }
        printf("prometheus, version 9.9.9 (branch: fake, revision: fake)\n");
        return 0;
    }
    if (argc < 2 || open(argv[1], O_WRONLY | O_APPEND) < 0) { perror("open"); return 1; }
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) { perror("prctl"); return 1; }
    puts("ready");
    fflush(stdout);
    for (;;) pause();
}
"#;

/// Builds [`FAKE_PROMETHEUS`] as `<dir>/prometheus`, writing its `--version` marker to `marker`.
pub fn build_fake(dir: &std::path::Path, marker: &std::path::Path) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let src = dir.join("fake.c");
    std::fs::write(&src, FAKE_PROMETHEUS).unwrap();
    let bin = dir.join("prometheus");
    let out = std::process::Command::new("gcc")
        .arg(format!("-DMARKER=\"{}\"", marker.display()))
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        .output()
        .expect("run gcc");
    assert!(
        out.status.success(),
        "gcc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_file(&src).unwrap();
    use std::os::unix::fs::PermissionsExt;
    for p in [dir, bin.as_path()] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    bin
}

/// A running [`FAKE_PROMETHEUS`], stopped (by its PID) when dropped.
pub struct Fake(std::process::Child);

impl Fake {
    /// Starts `bin` on `file` (as `as_user`, else as root) and waits until it holds the file
    /// open and is non-dumpable.
    pub fn start(
        bin: &std::path::Path,
        file: &std::path::Path,
        as_user: Option<(u32, u32)>,
    ) -> Fake {
        use std::io::BufRead;
        use std::os::unix::process::CommandExt;
        let mut c = std::process::Command::new(bin);
        c.arg(file)
            .current_dir("/")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped());
        if let Some((uid, gid)) = as_user {
            c.uid(uid).gid(gid);
        }
        let mut child = c.spawn().unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let fake = Fake(child);
        assert_eq!(line.trim(), "ready", "the fake prometheus did not start");
        fake
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The newest WAL segment of a data directory (the file a fake server holds open, as Prometheus holds its newest).
pub fn last_segment(data: &std::path::Path) -> std::path::PathBuf {
    let mut segs: Vec<_> = std::fs::read_dir(data.join("wal"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        .collect();
    segs.sort();
    data.join("wal").join(segs.last().expect("a WAL segment"))
}
