//! The shipped step scripts (`systemd/steps.d/`), run for real: `demo-step` and
//! `write-image`, the latter against a small HTTP server on loopback, writing to a file.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn script(name: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../systemd/steps.d")).join(name)
}

/// Runs a script with `MB_ARG_*` variables, killing it after 60 s.
fn run(name: &str, args: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(script(name));
    for (k, v) in args {
        cmd.env(format!("MB_ARG_{}", k.to_ascii_uppercase()), v);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("{name} ran for over 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// The percents of the PROGRESS lines.
fn percents(out: &Output) -> Vec<u32> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("PROGRESS "))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn demo_step_sleeps_and_reports_progress_to_100() {
    let out = run("demo-step", &[("seconds", "0.3"), ("message", "testing")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let p = percents(&out);
    assert_eq!(p.last(), Some(&100));
    assert!(p.windows(2).all(|w| w[0] < w[1]), "{p:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("testing"));
}

#[test]
fn demo_step_fails_its_first_runs_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let counter = dir.path().join("count");
    let args = [
        ("seconds", "0.1"),
        ("fail_times", "2"),
        ("counter_file", counter.to_str().unwrap()),
    ];
    for k in 1..=2 {
        let out = run("demo-step", &args);
        assert_eq!(out.status.code(), Some(1));
        assert!(
            stderr(&out).contains(&format!("simulated failure {k}/2")),
            "{}",
            stderr(&out)
        );
    }
    assert!(run("demo-step", &args).status.success());
    let always = run("demo-step", &[("fail", "always")]);
    assert_eq!(always.status.code(), Some(1));
    let bad = run("demo-step", &[("seconds", "abc")]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("must be a number"));
}

/// Serves `body` at `/image.raw` (GET and HEAD) until the test ends; 404 elsewhere.
fn serve(body: Vec<u8>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
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
            if path != "/image.raw" {
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
                let _ = stream.write_all(&body);
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

fn sha256(dir: &Path, bytes: &[u8]) -> String {
    let f = dir.join("expected.raw");
    std::fs::write(&f, bytes).unwrap();
    let out = Command::new("sha256sum").arg(&f).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn write_image_downloads_verifies_and_writes_a_file_target() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = image(9 * 1024 * 1024 + 123);
    let sum = sha256(dir.path(), &bytes);
    let base = serve(bytes.clone());
    let target = dir.path().join("disk.img");
    let url = format!("{base}/image.raw");
    let out = run(
        "write-image",
        &[
            ("url", &url),
            ("sha256", &sum),
            ("target", target.to_str().unwrap()),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let mut written = Vec::new();
    std::fs::File::open(&target)
        .unwrap()
        .read_to_end(&mut written)
        .unwrap();
    assert!(written == bytes, "the target holds the image");
    let p = percents(&out);
    assert!(
        p.windows(2).all(|w| w[0] <= w[1]),
        "progress never goes back: {p:?}"
    );
    assert_eq!(p.last(), Some(&100));
    assert!(p.contains(&60) && p.contains(&70), "{p:?}");
}

#[test]
fn write_image_refuses_a_wrong_checksum_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let base = serve(image(100_000));
    let target = dir.path().join("disk.img");
    let url = format!("{base}/image.raw");
    let wrong = "0".repeat(64);
    let out = run(
        "write-image",
        &[
            ("url", &url),
            ("sha256", &wrong),
            ("target", target.to_str().unwrap()),
        ],
    );
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("sha256 mismatch"), "{}", stderr(&out));
    assert!(!target.exists(), "nothing written on a mismatch");
}

#[test]
fn write_image_reports_download_and_argument_errors() {
    let dir = tempfile::tempdir().unwrap();
    let base = serve(image(10));
    let target = dir.path().join("disk.img");
    let sum = "a".repeat(64);
    let missing = format!("{base}/nope.raw");
    let out = run(
        "write-image",
        &[
            ("url", &missing),
            ("sha256", &sum),
            ("target", target.to_str().unwrap()),
        ],
    );
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("download failed"));
    let out = run("write-image", &[("url", &missing), ("sha256", &sum)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("MB_ARG_TARGET is required"));
    let out = run(
        "write-image",
        &[("url", "ftp://x/y"), ("sha256", &sum), ("target", "/tmp/x")],
    );
    assert_eq!(out.status.code(), Some(2));
}
