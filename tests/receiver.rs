//! The receiver protocol against the real binary: `promigrate receive` started as a child
//! process, driven over its stdin/stdout as a pod's exec stream would carry it; and plan,
//! apply and verify through such a receiver (`PROMIGRATE_RECEIVER_COMMAND`).

mod common;

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use promigrate::fsutil::MTime;
use promigrate::perms::Owner;
use promigrate::remote::client::Receiver;
use promigrate::remote::frame;
use promigrate::remote::msg::Request;
use promigrate::volume::Times;

const OWNER: Owner = Owner {
    uid: 1000,
    gid: 2000,
};

/// A receiver process and the driver's connection to it.
struct Running {
    child: Child,
    rx: Receiver,
}

/// `promigrate receive`, with `args` after it, its stdin, stdout and stderr piped.
fn spawn_receiver(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_promigrate"))
        .arg("receive")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promigrate receive")
}

fn start() -> Running {
    let mut child = spawn_receiver(&[]);
    let out = child.stdout.take().unwrap();
    let inp = child.stdin.take().unwrap();
    let rx = Receiver::connect("a test receiver", Box::new(out), Box::new(inp))
        .expect("receiver says hello");
    Running { child, rx }
}

/// A volume: `mount`, with the TSDB directory `db` below it.
fn volume() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let mount = d.path().join("vol");
    let root = mount.join("db");
    std::fs::create_dir_all(&root).unwrap();
    (d, mount, root)
}

fn content(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 251) as u8).collect()
}

fn wait_exit(mut child: Child) -> (std::process::ExitStatus, String) {
    let mut err = String::new();
    let st = child.wait().unwrap();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (st, err)
}

#[test]
fn a_file_is_staged_written_finished_and_renamed_through_the_receiver() {
    let (_d, mount, root) = volume();
    let Running { child, rx } = start();
    rx.open(mount.clone(), root.clone(), OWNER, false).unwrap();
    rx.call(&Request::Lock).unwrap();
    rx.call(&Request::MakeDirs {
        rel: ".promigrate-staging/01ABC/chunks".into(),
    })
    .unwrap();
    let data = content(9 << 20); // more than one data frame
    let h = rx
        .create(".promigrate-staging/01ABC/chunks/000001", false)
        .unwrap();
    assert_eq!(h.offset, 0);
    rx.write_at(h.id, 0, &data).unwrap();
    let mtime = MTime {
        sec: 1_700_000_000,
        nsec: 123_000_000,
    };
    rx.finish(h, 0o100644, Some(Times::both(mtime)), true)
        .unwrap();
    rx.call(&Request::Rename {
        from: ".promigrate-staging/01ABC".into(),
        to: "01ABC".into(),
    })
    .unwrap();
    let e = rx.stat("01ABC/chunks/000001").unwrap();
    assert!(e.is_file && e.size == data.len() as u64);
    assert_eq!((e.uid, e.gid, e.mtime), (1000, 2000, mtime));
    assert_eq!(
        e.mode & 0o7777,
        promigrate::perms::file_mode_from(0o100644) & 0o7777
    );
    let names = rx.list("01ABC/chunks").unwrap();
    assert_eq!(names, vec![std::ffi::OsString::from("000001")]);
    // What the receiver says is what is on the volume.
    let p = root.join("01ABC/chunks/000001");
    assert_eq!(std::fs::read(&p).unwrap(), data);
    assert_eq!(std::fs::metadata(&p).unwrap().uid(), 1000);
    drop(rx);
    let (st, err) = wait_exit(child);
    assert!(
        st.success(),
        "the receiver ends cleanly with its stream: {err}"
    );
}

/// `promigrate receive --listen` and the port and token it says on its stdout.
fn spawn_listening() -> (
    Child,
    std::io::BufReader<std::process::ChildStdout>,
    u16,
    String,
) {
    use std::io::BufRead;
    let mut child = spawn_receiver(&["--listen"]);
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let (port, token) = promigrate::k8s::handshake::parse_listening(&line)
        .unwrap_or_else(|| panic!("not a listening line: {line:?}"));
    (child, out, port, token)
}

/// A connection's writing half that ends the stream when dropped (the reading half, a clone,
/// keeps the socket open).
struct ShutOnDrop(std::net::TcpStream);

impl Write for ShutOnDrop {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.write(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl Drop for ShutOnDrop {
    fn drop(&mut self) {
        let _ = self.0.shutdown(std::net::Shutdown::Write);
    }
}

/// [`wait_exit`], but a receiver still running after 30 s fails the test (and is killed).
fn wait_exit_within(mut child: Child, what: &str) -> (std::process::ExitStatus, String) {
    common::ended_within(&mut child, std::time::Duration::from_secs(30), || {
        format!("{what}: the receiver did not end within 30 s")
    });
    wait_exit(child)
}

/// Writes a file through `rx` and reads it back on the volume.
fn write_one_file(rx: &Receiver, mount: &Path, root: &Path) {
    rx.open(mount.to_path_buf(), root.to_path_buf(), OWNER, false)
        .unwrap();
    rx.call(&Request::Lock).unwrap();
    let data = content(3 << 20);
    let h = rx.create("f", false).unwrap();
    rx.write_at(h.id, 0, &data).unwrap();
    rx.finish(h, 0o100644, None, true).unwrap();
    assert_eq!(std::fs::read(root.join("f")).unwrap(), data);
}

#[test]
fn a_listening_receiver_serves_the_connection_that_brings_its_token() {
    use std::io::Read;
    let (_d, mount, root) = volume();
    let (child, _out, port, token) = spawn_listening();
    // A connection with another token is closed unanswered, and changes nothing.
    let mut wrong = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    wrong
        .set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    wrong
        .write_all(format!("{}\n", "0".repeat(32)).as_bytes())
        .unwrap();
    let mut answer = Vec::new();
    wrong.read_to_end(&mut answer).unwrap();
    assert!(answer.is_empty(), "a wrong token was answered: {answer:?}");
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    conn.write_all(format!("{token}\n").as_bytes()).unwrap();
    let mut ok = [0u8; 3];
    conn.read_exact(&mut ok).unwrap();
    assert_eq!(&ok[..], promigrate::k8s::handshake::ACCEPTED);
    conn.set_read_timeout(None).unwrap();
    // As the driver does once answered: its exec's stdin ends. That is not taken for a
    // choice: the connection was chosen before the answer. (Not a sure guard of that order:
    // the race it once had needed a thread held up between two lines.)
    let mut child = child;
    drop(child.stdin.take());
    let rx = Receiver::connect(
        "a listening receiver",
        Box::new(conn.try_clone().unwrap()),
        Box::new(ShutOnDrop(conn)),
    )
    .expect("receiver says hello on the connection");
    write_one_file(&rx, &mount, &root);
    drop(rx);
    let (st, err) = wait_exit_within(child, "connection closed");
    assert!(st.success(), "the receiver ends with its connection: {err}");
}

#[test]
fn a_listening_receiver_serves_stdin_and_stdout_when_the_driver_says_so() {
    let (_d, mount, root) = volume();
    use std::io::Read;
    let (mut child, out, port, token) = spawn_listening();
    let mut inp = child.stdin.take().unwrap();
    inp.write_all(promigrate::k8s::handshake::USE_STDIO)
        .unwrap();
    let rx = Receiver::connect("a listening receiver", Box::new(out), Box::new(inp))
        .expect("receiver says hello on stdout");
    write_one_file(&rx, &mount, &root);
    // Once the stream is chosen, a connection is closed unanswered, even with the token
    // (not kept open: the read ends, by EOF or a reset, well before its timeout).
    if let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) {
        let _ = c.write_all(format!("{token}\n").as_bytes());
        c.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut answer = Vec::new();
        match c.read_to_end(&mut answer) {
            Ok(_) => {}
            Err(e) => assert!(
                e.kind() == std::io::ErrorKind::ConnectionReset,
                "a connection after the choice was kept open: {e}"
            ),
        }
        assert!(answer.is_empty(), "answered after the choice: {answer:?}");
    }
    drop(rx);
    let (st, err) = wait_exit_within(child, "stdin closed");
    assert!(st.success(), "the receiver ends with its stdin: {err}");
}

#[test]
fn a_listening_receiver_whose_driver_says_something_else_ends_with_an_error() {
    let (mut child, _out, _port, _token) = spawn_listening();
    let mut inp = child.stdin.take().unwrap();
    inp.write_all(b"hello\n").unwrap();
    drop(inp);
    let (st, err) = wait_exit_within(child, "a wrong word");
    assert!(!st.success(), "{err}");
    assert!(err.contains("not a choice of stream"), "{err}");
}

#[test]
fn a_request_that_waits_does_not_hold_up_the_others_on_the_stream() {
    // A copy worker waiting for its file's fsync must not stop the other workers' requests:
    // here the wait is a read of a FIFO, which blocks in the receiver until a writer comes.
    let (_d, mount, root) = volume();
    let fifo = root.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    std::fs::write(root.join("other"), b"x").unwrap();
    let Running { child, rx } = start();
    rx.open(mount, root.clone(), OWNER, false).unwrap();
    let rx = std::sync::Arc::new(rx);
    let waiting = {
        let rx = rx.clone();
        std::thread::spawn(move || rx.call(&Request::Read { rel: "fifo".into() }))
    };
    let (tx, answered) = std::sync::mpsc::channel();
    {
        let rx = rx.clone();
        std::thread::spawn(move || {
            // After the read is surely on its way (the answer below is the assertion).
            std::thread::sleep(std::time::Duration::from_millis(300));
            let _ = tx.send(rx.stat("other"));
        });
    }
    // Generous: the stat takes milliseconds unless it waits behind the read.
    let got = answered.recv_timeout(std::time::Duration::from_secs(30));
    // Let the read end, whatever happened above.
    let mut w = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    w.write_all(b"fifo data").unwrap();
    drop(w);
    let read = waiting
        .join()
        .unwrap()
        .expect("the read of the FIFO is answered");
    assert!(
        matches!(read, promigrate::remote::msg::Answer::Bytes(ref b) if b == b"fifo data"),
        "{read:?}"
    );
    let e = got
        .expect("a stat answered while another request of the same stream waits")
        .unwrap();
    assert!(e.is_file && e.size == 1);
    drop(rx);
    assert!(wait_exit(child).0.success());
}

#[test]
fn files_written_by_several_threads_over_one_stream_end_byte_equal() {
    // The copy workers share the stream: their data frames and requests interleave.
    let (_d, mount, root) = volume();
    let Running { child, rx } = start();
    rx.open(mount, root.clone(), OWNER, false).unwrap();
    let rx = std::sync::Arc::new(rx);
    let workers: Vec<_> = (0..6)
        .map(|t| {
            let rx = rx.clone();
            std::thread::spawn(move || {
                (0..8)
                    .map(|i| {
                        let data: Vec<u8> = content(((t * 8 + i) * 37_000) % (5 << 20) + 1)
                            .into_iter()
                            .map(|b| b ^ (t * 8 + i) as u8)
                            .collect();
                        let name = format!("f{t}-{i}");
                        let h = rx.create(&name, false).unwrap();
                        // In pieces, so the frames of different files interleave.
                        for (k, piece) in data.chunks(300_000).enumerate() {
                            rx.write_at(h.id, (k * 300_000) as u64, piece).unwrap();
                        }
                        rx.finish(h, 0o100644, None, true).unwrap();
                        (name, data)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for w in workers {
        for (name, data) in w.join().unwrap() {
            assert_eq!(std::fs::read(root.join(&name)).unwrap(), data, "{name}");
        }
    }
    drop(rx);
    assert!(wait_exit(child).0.success());
}

#[test]
fn a_cut_stream_leaves_the_file_unfinished_and_a_resume_continues_at_its_offset() {
    let (_d, mount, root) = volume();
    let data = content(5 << 20);
    let half = 3 << 20;
    // First run: half the file, then the stream is cut inside a data frame (the driver
    // was killed while writing).
    {
        let mut child = spawn_receiver(&[]);
        let out = child.stdout.take().unwrap();
        let mut inp = child.stdin.take().unwrap();
        let (tx, rx_pipe) = std::sync::mpsc::channel::<Vec<u8>>();
        // The driver writes through a channel, so the test can cut the bytes it sends.
        let writer = std::thread::spawn(move || {
            for b in rx_pipe {
                if inp.write_all(&b).is_err() {
                    break;
                }
                let _ = inp.flush();
            }
        });
        struct Chan(std::sync::mpsc::Sender<Vec<u8>>);
        impl Write for Chan {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.send(b.to_vec()).map_err(std::io::Error::other)?;
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let rx = Receiver::connect("first", Box::new(out), Box::new(Chan(tx.clone()))).unwrap();
        rx.open(mount.clone(), root.clone(), OWNER, false).unwrap();
        let h = rx.create("wal.tmp", false).unwrap();
        rx.write_at(h.id, 0, &data[..half]).unwrap();
        // A request flushes the data before it; the reply says the receiver has it all.
        rx.stat("wal.tmp").unwrap();
        // Half a frame, then the end of the stream.
        let mut torn = Vec::new();
        frame::write_frame_parts(
            &mut torn,
            frame::Kind::Data,
            h.id,
            &[&(half as u64).to_le_bytes(), &data[half..]],
        )
        .unwrap();
        tx.send(torn[..torn.len() / 2].to_vec()).unwrap();
        drop(tx);
        drop(rx);
        writer.join().unwrap();
        let (st, err) = wait_exit(child);
        assert!(!st.success(), "a torn stream is an error");
        assert!(err.contains("cut inside a frame"), "{err}");
    }
    // Nothing of the torn frame was written, and the file is not finished.
    let p = root.join("wal.tmp");
    let meta = std::fs::metadata(&p).unwrap();
    assert_eq!(meta.len(), half as u64);
    assert_eq!(meta.mode() & 0o777, 0o600);
    assert_eq!(std::fs::read(&p).unwrap(), &data[..half]);

    // Second run: resume from what is there.
    let Running { child, rx } = start();
    rx.open(mount, root.clone(), OWNER, false).unwrap();
    let h = rx.create("wal.tmp", true).unwrap();
    assert_eq!(h.offset, half as u64, "resumes at what the file holds");
    rx.write_at(h.id, h.offset, &data[h.offset as usize..])
        .unwrap();
    rx.finish(h, 0o100644, None, true).unwrap();
    assert_eq!(
        std::fs::read(&p).unwrap(),
        data,
        "byte-equal after the resume"
    );
    drop(rx);
    assert!(wait_exit(child).0.success());
}

#[test]
fn the_receivers_errors_name_the_path_and_keep_their_kind() {
    let (_d, mount, root) = volume();
    let outside = mount.parent().unwrap().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("wal")).unwrap();
    let Running { child, rx } = start();
    // Before open: a clear refusal, not a crash.
    let e = rx.stat("x").unwrap_err();
    assert!(e.to_string().contains("open comes first"), "{e}");
    rx.open(mount.clone(), root.clone(), OWNER, false).unwrap();
    let e = rx.stat("missing").unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    // Never through a link.
    let e = rx.create("wal/00000001", false).unwrap_err();
    assert!(
        !outside.join("00000001").exists(),
        "nothing written through the link: {e}"
    );
    // A second driver's lock on the same directory is refused while the first holds it.
    rx.call(&Request::Lock).unwrap();
    let other = start();
    other
        .rx
        .open(mount.clone(), root.clone(), OWNER, false)
        .unwrap();
    let e = other.rx.call(&Request::Lock).unwrap_err();
    assert!(e.to_string().contains("another promigrate"), "{e}");
    drop(other.rx);
    assert!(wait_exit(other.child).0.success());
    drop(rx);
    assert!(wait_exit(child).0.success());
    assert!(Path::new(&root).exists());
}

#[test]
fn a_stream_that_is_not_a_receiver_is_named() {
    // What `kubectl exec` gives when the image has no promigrate where it was put.
    let mut child = Command::new("sh")
        .args(["-c", "echo 'sh: /tmp/promigrate: not found'; exit 127"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let inp = child.stdin.take().unwrap();
    let e = match Receiver::connect("pod monitoring/rx", Box::new(out), Box::new(inp)) {
        Ok(_) => panic!("connected to a shell"),
        Err(e) => e,
    };
    let _ = child.wait();
    let msg = e.to_string();
    assert!(
        msg.contains("pod monitoring/rx") && msg.contains("not found"),
        "{msg}"
    );
}

/// Runs promigrate on `ws` with every target reached through `promigrate receive`.
fn through_receiver(ws: &common::Workspace, args: &[&str]) -> (i32, String, String) {
    let mut c = ws.cmd(args);
    c.env(
        promigrate::remote::COMMAND_ENV,
        format!("exec {} receive", env!("CARGO_BIN_EXE_promigrate")),
    );
    common::run(c)
}

#[test]
fn plan_apply_and_verify_through_a_receiver_end_byte_equal() {
    let ws = common::Workspace::new();
    let (code, out, err) = through_receiver(&ws, &["plan"]);
    assert_eq!(code, 0, "plan: {out}\n{err}");
    assert!(
        out.contains("receiver 1"),
        "the target is named by its receiver: {out}"
    );
    // The dry run is the engine, recorded by the receiver: it lists writes, makes none.
    let (code, out, err) = through_receiver(&ws, &["apply", "--dry-run"]);
    assert_eq!(code, 0, "dry run: {out}\n{err}");
    assert!(
        out.contains("copy block"),
        "the dry run lists the copies: {out}"
    );
    assert!(
        common::files_below(&ws.mount).next().is_none(),
        "a dry run writes nothing"
    );
    let (code, out, err) = through_receiver(&ws, &["apply", "--yes"]);
    assert_eq!(code, 0, "apply: {out}\n{err}");
    let mut want = common::content_hashes(&ws.source);
    want.remove("queries.active"); // Prometheus's runtime file, never copied
    assert_eq!(common::content_hashes(&ws.target()), want, "byte-equal");
    for f in common::files_below(&ws.target()) {
        let md = f.1.metadata().unwrap();
        assert_eq!((md.uid(), md.gid()), (1000, 2000), "{}", f.0);
    }
    // A rerun has nothing to do; verify (deep: the checks run in the receiver) says go.
    let (code, out, err) = through_receiver(&ws, &["apply", "--yes"]);
    assert_eq!(code, 0, "rerun: {out}\n{err}");
    let (code, out, err) = through_receiver(&ws, &["verify", "--level", "deep"]);
    assert_eq!(code, 0, "verify: {out}\n{err}");
    // A flipped byte on the target is found by the receiver's hashes.
    let block = common::some_block(&ws.target());
    common::flip_byte_keeping_mtime(&block.join("index"), 100);
    let (code, out, _) = through_receiver(&ws, &["verify"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("content differs"), "{out}");
}

#[test]
fn an_apply_killed_mid_copy_through_a_receiver_is_resumed_by_a_rerun() {
    let ws = common::Workspace::new();
    let total: u64 = common::files_below(&ws.source)
        .map(|(_, e)| e.metadata().unwrap().len())
        .sum();
    // About 4 s of copying at this limit; killed after 1.5 s.
    let rate = format!("{}K", (total / 1024 / 4).max(8));
    let mut child = ws.cmd(&["apply", "--yes", "--bwlimit", &rate]);
    child.env(
        promigrate::remote::COMMAND_ENV,
        format!("exec {} receive", env!("CARGO_BIN_EXE_promigrate")),
    );
    let mut child = child
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "apply ended before the kill: the test would prove nothing"
    );
    child.kill().unwrap(); // SIGKILL: the receiver sees its stream end
    child.wait().unwrap();
    assert!(ws.target().exists(), "apply had not started writing");
    let mut want = common::content_hashes(&ws.source);
    want.remove("queries.active");
    assert_ne!(
        common::content_hashes(&ws.target()),
        want,
        "the kill came after the copy had finished: the test would prove nothing"
    );
    let (code, out, err) = through_receiver(&ws, &["apply", "--yes"]);
    assert_eq!(code, 0, "rerun: {out}\n{err}");
    assert_eq!(common::content_hashes(&ws.target()), want, "byte-equal");
    common::assert_no_temp_files(&ws.target(), "after the rerun");
    let (code, out, err) = through_receiver(&ws, &["verify"]);
    assert_eq!(code, 0, "verify: {out}\n{err}");
}

#[test]
fn a_second_ctrl_c_ends_an_apply_whose_receiver_does_not_answer() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let ws = common::Workspace::new();
    let total: u64 = common::files_below(&ws.source)
        .map(|(_, e)| e.metadata().unwrap().len())
        .sum();
    let rate = format!("{}K", (total / 1024 / 4).max(8));
    let pid_file = ws.dir.path().join("receiver.pid");
    let err_file = ws.dir.path().join("apply.err");
    let mut cmd = ws.cmd(&["apply", "--yes", "--bwlimit", &rate]);
    cmd.env(
        promigrate::remote::COMMAND_ENV,
        format!(
            "echo $$ > {}; exec {} receive",
            pid_file.display(),
            env!("CARGO_BIN_EXE_promigrate")
        ),
    );
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_file).unwrap())
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(&err_file).unwrap_or_default();
    let t = std::time::Instant::now();
    while !log().contains("apply: copying") {
        assert!(
            t.elapsed().as_secs() < 30,
            "apply did not start copying: {}",
            log()
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "apply ended: {}",
            log()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let receiver: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let receiver = Pid::from_raw(receiver);
    // The receiver stops answering (as one behind a stalled connection would).
    kill(receiver, Signal::SIGSTOP).unwrap();
    let driver = Pid::from_raw(child.id() as i32);
    kill(driver, Signal::SIGINT).unwrap();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let first = child.try_wait().unwrap();
    let second_ended = first.is_none() && {
        kill(driver, Signal::SIGINT).unwrap();
        let t = std::time::Instant::now();
        loop {
            if child.try_wait().unwrap().is_some() {
                break true;
            }
            if t.elapsed().as_secs() >= 20 {
                break false;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    // Whatever happened, nothing of this test stays running.
    let _ = kill(receiver, Signal::SIGKILL);
    let _ = kill(receiver, Signal::SIGCONT);
    let _ = child.kill();
    let status = child.wait().unwrap();
    assert!(
        first.is_none(),
        "the first Ctrl-C ended apply, with the receiver stopped: the test would prove nothing: {}",
        log()
    );
    assert!(second_ended, "a second Ctrl-C did not end apply: {}", log());
    assert_eq!(status.code(), Some(3), "{}", log());
    assert!(log().contains("second signal: ending at once"), "{}", log());
    // What was copied stays; a rerun ends byte-equal.
    let (code, out, err) = through_receiver(&ws, &["apply", "--yes"]);
    assert_eq!(code, 0, "rerun: {out}\n{err}");
    let mut want = common::content_hashes(&ws.source);
    want.remove("queries.active");
    assert_eq!(common::content_hashes(&ws.target()), want, "byte-equal");
}

#[test]
fn a_dry_run_through_a_receiver_reads_as_a_local_one() {
    let ws = common::Workspace::new();
    let (code, local, err) = ws.run(&["apply", "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    let (code, remote, err) = through_receiver(&ws, &["apply", "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    // The same list of changes; only the target's name differs.
    let changes = |out: &str| -> Vec<String> {
        out.lines()
            .filter(|l| l.trim_start().starts_with("- "))
            .map(String::from)
            .collect()
    };
    assert!(!changes(&local).is_empty(), "{local}");
    let remote = remote.replace("receiver 1:", "");
    assert_eq!(
        changes(&remote),
        changes(&local),
        "remote:\n{remote}\nlocal:\n{local}"
    );
}

#[test]
fn a_full_volume_behind_a_receiver_is_reported_as_full() {
    let ws = common::Workspace::new();
    let (_, plan) = ws.run_json(&["plan"]);
    let need = common::only(&plan)["stats"]["copy_bytes"].as_u64().unwrap();
    let _fs = common::Tmpfs::mount(&ws.mount, &format!("{}k", need / 1024 * 2 + 256));
    let mut c = ws.cmd(&[
        "apply",
        "--yes",
        "--bwlimit",
        &format!("{}K", need / 1024 / 4),
    ]);
    c.env(
        promigrate::remote::COMMAND_ENV,
        format!("exec {} receive", env!("CARGO_BIN_EXE_promigrate")),
    );
    let child = c
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Someone else fills the volume while apply runs.
    std::thread::sleep(std::time::Duration::from_millis(700));
    let _ = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", ws.mount.join("filler").display()))
        .arg("bs=4k")
        .stderr(Stdio::null())
        .status();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("target volume is full"), "{err}");
}

#[test]
fn a_target_inside_the_source_is_a_blocker_through_a_receiver_too() {
    let ws = common::Workspace::new();
    std::fs::write(&ws.plan, common::plan_yaml(&ws.source, &ws.source, "")).unwrap();
    let (code, out, _) = ws.run(&["plan"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("overlap"), "{out}");
    let (code, out, err) = through_receiver(&ws, &["plan"]);
    assert_eq!(code, 1, "a receiver on this host: {out}\n{err}");
    assert!(out.contains("overlap"), "{out}");
}
