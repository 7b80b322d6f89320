//! End-to-end test harness: starts the real `metalbus` and `metalbus-agent` binaries on
//! free loopback ports with temp data dirs, and gives tests an API client and an
//! independent MQTT watcher.
//!
//! The controller binds port 0 and reports its ports in `listen.json`, so tests never
//! race for a port.
//!
//! The binaries are the ones `cargo test --workspace` builds next to this test (the
//! agent and controller packages have integration tests, so cargo builds their bins).
//! On a failing test, each process's log is printed.

#![allow(clippy::unwrap_used)]

mod api;
mod browser;
mod mqtt;
mod process;
mod snapshot;

pub use api::Api;
pub use browser::{Browser, ENTER, ESCAPE};
pub use mqtt::{Message, Watcher};
pub use process::{fleet_token_file, node_key, AgentProc, Controller, Mosquitto, SimProc, TestPki};
pub use snapshot::{lasting, snapshot};

/// Enrolls `node_id` with the controller's fleet token over MQTT, as an agent does, and
/// returns its node key: for tests that speak for a node without running an agent.
pub async fn enroll_node(ctl: &Controller, node_id: &str) -> metalbus_protocol::proof::NodeKey {
    let token: metalbus_protocol::enroll::EnrollToken =
        std::fs::read_to_string(fleet_token_file(&ctl.dir))
            .unwrap()
            .parse()
            .unwrap();
    let endpoint =
        metalbus_link::Endpoint::pinned(ctl.broker_url().parse().unwrap(), None, token.anchor)
            .unwrap();
    let node = metalbus_protocol::NodeId::new(node_id).unwrap();
    let (_tx, mut rx) = tokio::sync::watch::channel(false);
    let done = tokio::time::timeout(
        Duration::from_secs(30),
        metalbus_link::enroll::enroll(
            &endpoint,
            &metalbus_protocol::topic::Topics::default(),
            &node,
            node_id,
            &token,
            &mut rx,
        ),
    )
    .await
    .expect("enrollment did not finish in 30 s")
    .expect("enrollment stopped");
    done.key
}

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Path of a workspace binary, next to the running test's `deps/` directory.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace`, which builds it",
        path.display()
    );
    let built = std::fs::metadata(&path).and_then(|m| m.modified()).unwrap();
    // Cargo's dep-info next to the binary lists exactly the sources it was built from.
    let deps = std::fs::read_to_string(dir.join(format!("{name}.d"))).unwrap_or_default();
    let sources = deps.split_once(": ").map_or("", |(_, list)| list);
    for source in sources.split_whitespace().map(Path::new) {
        let newer = std::fs::metadata(source)
            .and_then(|m| m.modified())
            .is_ok_and(|m| m > built);
        if newer {
            panic!(
                "{} is older than {}: run `cargo test --workspace` (or `cargo build --workspace`) so the tests use the current code",
                path.display(),
                source.display()
            );
        }
    }
    path
}

/// reqwest is built without a bundled TLS provider; install ring once per process.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A steps dir for agents: the repo's scripts (`systemd/steps.d/`), plus `extra`
/// (name, body) test scripts, all executable.
pub fn steps_dir(dir: &std::path::Path, extra: &[(&str, &str)]) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let steps = dir.join("steps.d");
    std::fs::create_dir_all(&steps).unwrap();
    let repo = concat!(env!("CARGO_MANIFEST_DIR"), "/../systemd/steps.d");
    for entry in std::fs::read_dir(repo).unwrap() {
        let entry = entry.unwrap();
        if entry.path().extension().is_some() {
            continue; // README.md
        }
        std::fs::copy(entry.path(), steps.join(entry.file_name())).unwrap();
    }
    for (name, body) in extra {
        std::fs::write(steps.join(name), body).unwrap();
    }
    for entry in std::fs::read_dir(&steps).unwrap() {
        let p = entry.unwrap().path();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    steps
}

/// Whether any process has `marker` in its command line.
pub fn process_with(marker: &str) -> bool {
    any_process(|pid| {
        std::fs::read(pid.join("cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker))
    })
}

/// Whether any process has `marker` (e.g. `MB_COMMAND_ID=c-…`) in its environment.
pub fn process_with_env(marker: &str) -> bool {
    any_process(|pid| {
        std::fs::read(pid.join("environ"))
            .is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv == marker.as_bytes()))
    })
}

/// Whether `test` holds for any `/proc/<pid>` directory.
fn any_process(test: impl Fn(&Path) -> bool) -> bool {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|c| c.is_ascii_digit())
        })
        .any(|e| test(&e.path()))
}

/// What `nproc` prints: the CPUs this process may run on.
pub fn nproc() -> u64 {
    let out = std::process::Command::new("nproc").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Polls `probe` every 100 ms until it returns `Some`, or panics after `timeout` with
/// `what` and the last observation.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        match probe().await {
            Ok(v) => return v,
            Err(last) if start.elapsed() >= timeout => {
                panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Runs `tests/tools/{script}` (a reference validator) on `input`; its stdout, or
/// why it failed. The Python comes from `METALBUS_TEST_PYTHON`, else `target/ci-venv`
/// (made by `.ci/run`; see tests/tools/README.md).
pub fn run_tool(script: &str, input: &[u8]) -> Result<String, String> {
    use std::io::Write;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = std::env::var_os("METALBUS_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/ci-venv/bin/python"));
    let mut child = std::process::Command::new(&python)
        .arg(root.join("tests/tools").join(script))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| {
            format!(
                "cannot run {}: {e}; install the test tools (tests/tools/README.md)",
                python.display()
            )
        })?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    stdin.write_all(input).map_err(|e| e.to_string())?;
    drop(stdin);
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("ModuleNotFoundError") {
        return Err(format!(
            "{script} needs its Python modules; install the test tools (tests/tools/README.md): {stderr}"
        ));
    }
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{script} failed: {stderr}"))
    }
}

/// A copy of the agent's VM fixture tree (`agent/tests/fixtures/virtio-vm`) at
/// `dir/name`, for an agent's `--root`: a host whose files a test may change (hostname,
/// MAC, boot id).
pub fn fixture_root(dir: &Path, name: &str) -> PathBuf {
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../agent/tests/fixtures/virtio-vm"
    );
    let root = dir.join(name);
    let ok = std::process::Command::new("cp")
        .args(["-a", fixture])
        .arg(&root)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "copying the fixture tree to {}", root.display());
    root
}
