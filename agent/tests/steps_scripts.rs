//! The shipped step scripts (`systemd/steps.d/`), run for real: `demo-step`, and
//! `write-image` against a small HTTP server on loopback, writing to a file (and, when the
//! tests run as root with loop devices available, to a loop block device).

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{kill_process_group, Pid, Signal};

/// How long one script run may take before it is killed and the test fails.
const RUN_LIMIT: Duration = Duration::from_secs(30);

fn script(name: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../systemd/steps.d/")).join(name)
}

struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Ran {
    /// The percents of the PROGRESS lines, in order.
    fn percents(&self) -> Vec<u32> {
        self.stdout
            .lines()
            .filter_map(|l| l.strip_prefix("PROGRESS "))
            .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
            .collect()
    }

    /// The last line of stderr: what the agent shows as the error.
    fn reason(&self) -> &str {
        self.stderr.trim_end().lines().last().unwrap_or("")
    }
}

/// Runs a step script the way the agent does: `MB_ARG_<NAME>` for each arg, the job
/// variables, its own process group. The whole group is killed past `RUN_LIMIT`.
fn run(name: &str, args: &[(&str, &str)], tmpdir: Option<&Path>) -> Ran {
    let mut cmd = Command::new(script(name));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("MB_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("MB_NODE_ID", "node-test")
        .env("MB_JOB", "install")
        .env("MB_STEP", "step")
        .env("MB_COMMAND_ID", "c-test");
    for (k, v) in args {
        cmd.env(format!("MB_ARG_{}", k.to_ascii_uppercase()), v);
    }
    if let Some(dir) = tmpdir {
        cmd.env("TMPDIR", dir);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > RUN_LIMIT {
            let group = i32::try_from(child.id()).ok().and_then(Pid::from_raw);
            if let Some(group) = group {
                let _ = kill_process_group(group, Signal::KILL);
            }
            let _ = child.wait();
            panic!("{name} ran for over {RUN_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ran {
        code: status.code(),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

#[test]
fn demo_step_reports_increasing_progress_to_100() {
    let started = Instant::now();
    let ran = run(
        "demo-step",
        &[("seconds", "0.3"), ("message", "testing")],
        None,
    );
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let p = ran.percents();
    assert!(p.len() >= 5, "{p:?}");
    assert!(p.windows(2).all(|w| w[0] < w[1]), "{p:?}");
    assert_eq!(p.last(), Some(&100));
    assert!(
        ran.stdout.contains("PROGRESS 10 testing (1/10)"),
        "{}",
        ran.stdout
    );
    assert!(ran.stdout.trim_end().ends_with("PROGRESS 100 done"));
    assert!(started.elapsed() >= Duration::from_millis(250), "it sleeps");
}

#[test]
fn demo_step_fails_its_first_two_runs_then_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let counter = dir.path().join("count");
    let args = [
        ("seconds", "0.1"),
        ("fail_times", "2"),
        ("counter_file", counter.to_str().unwrap()),
    ];
    for k in 1..=2 {
        let ran = run("demo-step", &args, None);
        assert_eq!(ran.code, Some(1), "run {k}: {}", ran.stderr);
        assert_eq!(
            ran.reason(),
            format!("demo-step: simulated failure {k}/2"),
            "run {k}"
        );
    }
    let ran = run("demo-step", &args, None);
    assert_eq!(ran.code, Some(0), "run 3: {}", ran.stderr);
    assert_eq!(ran.percents().last(), Some(&100));
    assert_eq!(std::fs::read_to_string(&counter).unwrap().trim(), "3");
}

#[test]
fn demo_step_fails_always_when_asked() {
    let ran = run("demo-step", &[("fail", "always")], None);
    assert_eq!(ran.code, Some(1));
    assert!(ran.reason().contains("simulated failure"), "{}", ran.stderr);
}

#[test]
fn demo_step_refuses_bad_arguments() {
    let ran = run("demo-step", &[("seconds", "abc")], None);
    assert_eq!(ran.code, Some(2));
    assert!(
        ran.reason().contains("MB_ARG_SECONDS must be a number") && ran.reason().contains("abc"),
        "{}",
        ran.stderr
    );
    assert!(ran.percents().is_empty());
    let ran = run("demo-step", &[("fail_times", "2")], None);
    assert_eq!(ran.code, Some(2));
    assert!(
        ran.reason().contains("MB_ARG_COUNTER_FILE"),
        "{}",
        ran.stderr
    );
    let ran = run("demo-step", &[("fail", "sometimes")], None);
    assert_eq!(ran.code, Some(2));
}

/// Serves `body` at `/image.raw` (GET and HEAD, with Content-Length) until the test
/// process ends, in 256 KiB pieces 20 ms apart so the download takes a moment; 404
/// anywhere else. One connection at a time, closed after each response.
fn serve(body: Vec<u8>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let Ok(read_half) = stream.try_clone() else {
                continue;
            };
            let mut reader = BufReader::new(read_half);
            let mut request = String::new();
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
                    break;
                }
            }
            let mut parts = request.split_whitespace();
            let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            if path != "/image.raw" || !matches!(method, "GET" | "HEAD") {
                let _ = stream.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                continue;
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            if method == "GET" {
                for piece in body.chunks(256 * 1024) {
                    if stream.write_all(piece).is_err() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    });
    format!("http://{addr}")
}

/// Pseudo-random bytes (xorshift), so the image is not all zeros.
fn image(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// sha256 of `bytes`, by `sha256sum` on a copy in `dir`.
fn sha256(dir: &Path, bytes: &[u8]) -> String {
    let f = dir.join("expected.raw");
    std::fs::write(&f, bytes).unwrap();
    let out = Command::new("sha256sum").arg(&f).output().unwrap();
    assert!(out.status.success());
    std::fs::remove_file(&f).unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// A temporary directory to use as the script's TMPDIR, to check it cleans up.
fn scratch(dir: &Path) -> PathBuf {
    let tmp = dir.join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    tmp
}

fn assert_empty(dir: &Path) {
    let left: Vec<_> = std::fs::read_dir(dir).unwrap().collect();
    assert!(left.is_empty(), "temporary files left behind: {left:?}");
}

fn write_image(url: &str, sha: &str, target: &Path, tmp: &Path) -> Ran {
    run(
        "write-image",
        &[
            ("url", url),
            ("sha256", sha),
            ("target", target.to_str().unwrap()),
        ],
        Some(tmp),
    )
}

#[test]
fn write_image_downloads_verifies_and_writes_a_file_target() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = scratch(dir.path());
    let bytes = image(9 * 1024 * 1024 + 123);
    let sum = sha256(dir.path(), &bytes);
    let url = format!("{}/image.raw", serve(bytes.clone()));
    let target = dir.path().join("disk.img");
    // A target file that is longer than the image is truncated, not left with a tail.
    std::fs::write(&target, vec![0xaa; 12 * 1024 * 1024]).unwrap();

    let ran = write_image(&url, &sum.to_uppercase(), &target, &tmp);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert!(
        std::fs::read(&target).unwrap() == bytes,
        "the target holds the image"
    );
    let p = ran.percents();
    assert!(
        p.windows(2).all(|w| w[0] <= w[1]),
        "progress never goes back: {p:?}"
    );
    assert!(p.iter().all(|&n| n <= 100), "{p:?}");
    assert!(p.contains(&60) && p.contains(&70), "{p:?}");
    assert!(
        p.iter().any(|&n| n > 0 && n < 60),
        "download progress: {p:?}"
    );
    assert!(
        p.iter().any(|&n| n > 70 && n < 100),
        "write progress: {p:?}"
    );
    assert!(
        ran.stdout
            .trim_end()
            .ends_with("PROGRESS 100 image written"),
        "{}",
        ran.stdout
    );
    assert_empty(&tmp);
}

#[test]
fn write_image_refuses_a_wrong_sha256_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = scratch(dir.path());
    let bytes = image(300_000);
    let url = format!("{}/image.raw", serve(bytes.clone()));
    let got = sha256(dir.path(), &bytes);
    let wrong = "0".repeat(64);

    let target = dir.path().join("disk.img");
    let ran = write_image(&url, &wrong, &target, &tmp);
    assert_eq!(ran.code, Some(4), "{}", ran.stderr);
    assert_eq!(
        ran.reason(),
        format!("write-image: sha256 mismatch: expected {wrong}, got {got}")
    );
    assert!(!target.exists(), "nothing is created on a mismatch");
    assert_eq!(ran.percents().last(), Some(&60), "{}", ran.stdout);
    assert_empty(&tmp);

    // An existing target is left as it was.
    std::fs::write(&target, b"keep me").unwrap();
    let ran = write_image(&url, &wrong, &target, &tmp);
    assert_eq!(ran.code, Some(4), "{}", ran.stderr);
    assert_eq!(std::fs::read(&target).unwrap(), b"keep me");
    assert_empty(&tmp);
}

#[test]
fn write_image_reports_a_404_as_download_failed() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = scratch(dir.path());
    let url = format!("{}/nope.raw", serve(image(10)));
    let target = dir.path().join("disk.img");

    // What a run killed by the agent's timeout (SIGKILL) left behind is removed by the
    // next run; the work directory of a run still alive (this test's pid) is not.
    let mut gone = Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    let stale = tmp.join("write-image.stale1");
    std::fs::create_dir(&stale).unwrap();
    std::fs::write(stale.join("pid"), gone.id().to_string()).unwrap();
    std::fs::write(stale.join("image"), b"half a download").unwrap();
    let alive = tmp.join("write-image.alive1");
    std::fs::create_dir(&alive).unwrap();
    std::fs::write(alive.join("pid"), std::process::id().to_string()).unwrap();

    let ran = write_image(&url, &"a".repeat(64), &target, &tmp);
    assert_eq!(ran.code, Some(5), "{}", ran.stderr);
    assert!(
        ran.reason().starts_with("write-image: download failed:") && ran.reason().contains("404"),
        "{}",
        ran.stderr
    );
    assert!(!target.exists());
    assert!(!stale.exists(), "a dead run's download is removed");
    std::fs::remove_dir_all(&alive).unwrap();
    assert_empty(&tmp);
}

#[test]
fn write_image_reports_a_refused_connection_as_download_failed() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = scratch(dir.path());
    // A port that was just free: nothing listens there any more.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/image.raw");
    let target = dir.path().join("disk.img");
    let ran = write_image(&url, &"a".repeat(64), &target, &tmp);
    assert_eq!(ran.code, Some(5), "{}", ran.stderr);
    assert!(
        ran.reason().starts_with("write-image: download failed:"),
        "{}",
        ran.stderr
    );
    assert!(!target.exists());
    assert_empty(&tmp);
}

#[test]
fn write_image_refuses_missing_or_malformed_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = scratch(dir.path());
    let sum = "a".repeat(64);
    let url = "http://127.0.0.1:9/image.raw";
    let file = dir.path().join("disk.img");
    let file = file.to_str().unwrap();
    let cases: [(&[(&str, &str)], &str); 9] = [
        (
            &[("url", url), ("sha256", &sum)],
            "MB_ARG_TARGET is required",
        ),
        (
            &[("sha256", &sum), ("target", file)],
            "MB_ARG_URL is required",
        ),
        (
            &[("url", url), ("target", file)],
            "MB_ARG_SHA256 is required",
        ),
        (
            &[("url", "ftp://x/y"), ("sha256", &sum), ("target", file)],
            "MB_ARG_URL must be an http",
        ),
        (
            &[("url", url), ("sha256", "abc123"), ("target", file)],
            "MB_ARG_SHA256 must be 64 hex digits",
        ),
        (
            &[("url", url), ("sha256", &"g".repeat(64)), ("target", file)],
            "MB_ARG_SHA256 must be 64 hex digits",
        ),
        (
            &[
                ("url", url),
                ("sha256", &sum),
                ("target", "/dev/metalbus-no-such-disk"),
            ],
            "is not a block device",
        ),
        (
            &[
                ("url", url),
                ("sha256", &sum),
                ("target", "/no/such/dir/disk.img"),
            ],
            "does not exist",
        ),
        (
            &[
                ("url", url),
                ("sha256", &sum),
                ("target", dir.path().to_str().unwrap()),
            ],
            "neither a block device nor a regular file",
        ),
    ];
    for (args, why) in cases {
        let ran = run("write-image", args, Some(&tmp));
        assert_eq!(ran.code, Some(2), "{args:?}: {}", ran.stderr);
        assert!(ran.reason().contains(why), "{args:?}: {}", ran.stderr);
        assert!(ran.percents().is_empty(), "{args:?}: nothing was started");
    }
    assert!(!Path::new("/dev/metalbus-no-such-disk").exists());
    assert_empty(&tmp);
}

/// A loop device over a file, detached (and unmounted) on drop.
struct Loop {
    dev: String,
    mounted: Option<PathBuf>,
}

impl Loop {
    /// `None` (the test is skipped) unless running as root with loop devices available.
    fn attach(backing: &Path) -> Option<Loop> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let uid = status.lines().find(|l| l.starts_with("Uid:"))?;
        if uid.split_whitespace().nth(1) != Some("0") {
            return None;
        }
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(backing)
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (out.status.success() && dev.starts_with("/dev/")).then_some(Loop { dev, mounted: None })
    }

    fn mount(&mut self, at: &Path) -> bool {
        let quiet = |c: &mut Command| c.stdout(Stdio::null()).stderr(Stdio::null()).status();
        let made = quiet(Command::new("mkfs.ext4").args(["-q", "-F", &self.dev]));
        if !made.is_ok_and(|s| s.success()) {
            return false;
        }
        let mounted = quiet(Command::new("mount").arg(&self.dev).arg(at));
        if mounted.is_ok_and(|s| s.success()) {
            self.mounted = Some(at.to_path_buf());
        }
        self.mounted.is_some()
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        if let Some(at) = self.mounted.take() {
            let _ = Command::new("umount").arg(at).status();
        }
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

#[test]
fn write_image_writes_a_block_device_and_refuses_a_mounted_one() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = scratch(dir.path());
    let backing = dir.path().join("backing.img");
    std::fs::write(&backing, vec![0u8; 16 * 1024 * 1024]).unwrap();
    let Some(mut dev) = Loop::attach(&backing) else {
        eprintln!("skipped: needs root and a free loop device");
        return;
    };
    let target = PathBuf::from(&dev.dev);

    // Too big for the device: refused before anything is downloaded or written.
    let big = image(17 * 1024 * 1024);
    let big_url = format!("{}/image.raw", serve(big.clone()));
    let ran = write_image(&big_url, &sha256(dir.path(), &big), &target, &tmp);
    assert_eq!(ran.code, Some(6), "{}", ran.stderr);
    assert!(ran.reason().contains("larger than"), "{}", ran.stderr);

    let bytes = image(5 * 1024 * 1024 + 7);
    let url = format!("{}/image.raw", serve(bytes.clone()));
    let ran = write_image(&url, &sha256(dir.path(), &bytes), &target, &tmp);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(ran.percents().last(), Some(&100));
    assert_empty(&tmp);
    // The loop driver has passed the fsync'ed writes on to the backing file.
    let written = std::fs::read(&backing).unwrap();
    assert!(
        written[..bytes.len()] == bytes[..],
        "the device holds the image"
    );
    assert!(written[bytes.len()..].iter().all(|&b| b == 0));

    // Mounted: refused before the download. The 404 address is a safety net: were the
    // check to miss, the run would fail with 5 and still write nothing.
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    if dev.mount(&mnt) {
        let nowhere = format!("{}/nope.raw", serve(Vec::new()));
        let ran = write_image(&nowhere, &"a".repeat(64), &target, &tmp);
        assert_eq!(ran.code, Some(3), "{}", ran.stderr);
        assert!(ran.reason().contains("is in use"), "{}", ran.stderr);
        assert!(ran.percents().is_empty());
    } else {
        eprintln!("skipped the mounted case: mkfs.ext4 or mount is unavailable");
    }
}
