//! The systemd watchdog (issue 15): the real binaries, started as systemd would start
//! them with `WatchdogSec=` (`NOTIFY_SOCKET` and `WATCHDOG_USEC`), send `WATCHDOG=1`
//! while their loop turns. Freezing the controller's engine thread alone (ptrace stops
//! one thread; the HTTP API and the broker go on) stops the notifications, and they come
//! back when it thaws. The same for the agent, every thread but the feeder's stopped.

#![allow(clippy::unwrap_used)]

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, Instant};

use metalbus_e2e::{AgentProc, Controller};
use nix::sys::ptrace;
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;

/// The watchdog period the tests ask for: notifications every second, and none once
/// the loop has not turned for 1.5 s.
const PERIOD_USEC: &str = "3000000";

/// The notification socket systemd would listen on.
fn notify_socket(dir: &Path) -> UnixDatagram {
    let sock = UnixDatagram::bind(dir.join("notify.sock")).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    sock
}

/// The notifications that arrive within `window`.
fn listen(sock: &UnixDatagram, window: Duration) -> Vec<String> {
    let until = Instant::now() + window;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < until {
        if let Ok(n) = sock.recv(&mut buf) {
            got.extend(
                String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .map(str::to_string),
            );
        }
    }
    got
}

fn watchdogs(messages: &[String]) -> usize {
    messages.iter().filter(|m| *m == "WATCHDOG=1").count()
}

/// The threads of process `pid` whose name does (`named`) or does not start with `name`.
fn threads(pid: u32, name: &str, named: bool) -> Vec<i32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| {
            let t = t.ok()?;
            let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
            (comm.starts_with(name) == named)
                .then(|| t.file_name().to_str()?.parse().ok())
                .flatten()
        })
        .collect()
}

/// Threads of a child process stopped with ptrace (the others run on). They run again
/// when this is dropped, on a failed assertion too: a traced thread that nobody
/// detaches would keep its killed process a zombie and the test waiting for it.
/// Made and dropped on the test's own thread, which is their tracer.
struct Frozen(Vec<Pid>);

impl Frozen {
    fn new(tids: &[i32]) -> Frozen {
        let mut frozen = Frozen(Vec::new());
        for &tid in tids {
            let tid = Pid::from_raw(tid);
            ptrace::seize(tid, ptrace::Options::empty())
                .unwrap_or_else(|e| panic!("seize {tid}: {e}"));
            frozen.0.push(tid);
            ptrace::interrupt(tid).unwrap();
        }
        frozen
    }
}

impl Drop for Frozen {
    /// Waits for the stop that `new` asked for, then detaches.
    fn drop(&mut self) {
        for &tid in &self.0 {
            let _ = waitpid(tid, Some(WaitPidFlag::__WALL));
            let _ = ptrace::detach(tid, None);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_engine_stops_the_watchdog_and_the_api_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let sock = notify_socket(tmp.path());
    let path = tmp.path().join("notify.sock");
    let ctl = Controller::start_with_env(
        tmp.path(),
        &[],
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", PERIOD_USEC),
        ],
    )
    .await;
    let before = listen(&sock, Duration::from_secs(4));
    assert!(before.contains(&"READY=1".to_string()), "{before:?}");
    assert!(watchdogs(&before) >= 2, "{before:?}");

    let engine = threads(ctl.pid(), "metalbus-engine", true);
    assert_eq!(engine.len(), 1, "the engine thread");
    let stopped = Frozen::new(&engine);
    // What was on its way, and the 1.5 s the feeder waits before it gives up.
    listen(&sock, Duration::from_secs(2));
    let frozen = listen(&sock, Duration::from_secs(4));
    assert_eq!(
        watchdogs(&frozen),
        0,
        "fed while the engine was frozen: {frozen:?}"
    );
    // Only the engine stopped: the HTTP API still answers.
    let health = reqwest::get(format!("{}/healthz", ctl.api_base()))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let log = std::fs::read_to_string(&ctl.log).unwrap();
    assert!(log.contains("not feeding the watchdog"), "{log}");

    drop(stopped);
    let after = listen(&sock, Duration::from_secs(3));
    assert!(watchdogs(&after) >= 1, "not fed after the thaw: {after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_agent_runtime_stops_the_watchdog() {
    let tmp = tempfile::tempdir().unwrap();
    let ctl = Controller::start(tmp.path(), &[]).await;
    let sock = notify_socket(tmp.path());
    let path = tmp.path().join("notify.sock");
    let agent = AgentProc::start_with_env(
        tmp.path(),
        &ctl.broker_url(),
        "wd-1",
        Path::new("/dev/null"),
        &[],
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", PERIOD_USEC),
        ],
    );
    ctl.api()
        .wait_online("wd-1", true, Duration::from_secs(30))
        .await;
    let before = listen(&sock, Duration::from_secs(3));
    assert!(watchdogs(&before) >= 2, "{before:?}");

    // The agent's loop runs on its main thread and its runtime's workers: every
    // thread but the watchdog's own stops, as in a hang of the whole loop.
    let runtime = threads(agent.pid(), "metalbus-watchd", false);
    assert!(runtime.len() >= 2, "{runtime:?}");
    let stopped = Frozen::new(&runtime);
    listen(&sock, Duration::from_secs(2));
    let frozen = listen(&sock, Duration::from_secs(4));
    assert_eq!(watchdogs(&frozen), 0, "fed while frozen: {frozen:?}");
    drop(stopped);
    let after = listen(&sock, Duration::from_secs(3));
    assert!(watchdogs(&after) >= 1, "not fed after the thaw: {after:?}");
}
