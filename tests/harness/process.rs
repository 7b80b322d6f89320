//! Child processes: the controller and agents, with logs captured to files.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use rustix::process::Signal;

use crate::{bin, eventually, Api};

fn spawn(name: &str, args: &[String], cwd: &Path, log: &Path) -> Child {
    spawn_with(name, args, cwd, log, &[])
}

/// [`spawn`], with extra environment variables (`NOTIFY_SOCKET`, say).
fn spawn_with(
    name: &str,
    args: &[String],
    cwd: &Path,
    log: &Path,
    env: &[(String, String)],
) -> Child {
    let out = File::create(log).unwrap();
    let err = out.try_clone().unwrap();
    Command::new(bin(name))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(cwd)
        .env("METALBUS_LOG", "info,metalbus=debug,metalbus_agent=debug")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap()
}

fn signal(child: &Child, sig: Signal) {
    rustix::process::kill_process(rustix::process::Pid::from_child(child), sig).unwrap();
}

/// Waits (bounded) for a child to exit.
fn wait_exit(child: &mut Child, timeout: Duration) -> ExitStatus {
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            start.elapsed() < timeout,
            "process {} did not exit",
            child.id()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn dump_log_if_panicking(what: &str, log: &Path) {
    if std::thread::panicking() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(80).collect();
        // The temp dir goes with the test; keep the whole log next to the binaries.
        let kept = std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.parent()?.join("e2e-logs")))
            .and_then(|dir| {
                std::fs::create_dir_all(&dir).ok()?;
                let name = log.file_name()?.to_string_lossy().to_string();
                let tmp = log.parent()?.file_name()?.to_string_lossy().to_string();
                let path = dir.join(format!("{tmp}-{name}"));
                std::fs::copy(log, &path).ok()?;
                Some(path)
            });
        eprintln!(
            "----- {what} log ({}; kept whole at {}) -----",
            log.display(),
            kept.map_or("-".into(), |p| p.display().to_string())
        );
        for line in tail.iter().rev() {
            eprintln!("{line}");
        }
    }
}

/// A running `metalbus serve`.
pub struct Controller {
    child: Option<Child>,
    pub dir: PathBuf,
    pub data_dir: PathBuf,
    pub mqtt_port: u16,
    pub http_port: u16,
    /// The API's base URL, from `listen.json` (`https://` when it serves TLS).
    pub api: String,
    /// The broker URL the controller uses (embedded or external).
    pub broker: String,
    pub log: PathBuf,
    extra: Vec<String>,
    env: Vec<(String, String)>,
    starts: u32,
}

impl Controller {
    /// Starts a controller with its data in `dir/metalbus-data`, on ports it picks
    /// itself (port 0), read back from `listen.json`.
    /// Runs the real `metalbus` CLI against this controller from its dir, so that it
    /// finds the admin token by itself: `args`, then `--api`.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(bin("metalbus"))
            .args(args)
            .args(["--api", &self.api_base()])
            .current_dir(&self.dir)
            .env_remove("METALBUS_TOKEN")
            .output()
            .unwrap()
    }

    /// Sends `request` as it is on a fresh HTTP connection; the status line of the
    /// answer ("" when the server closed without one).
    pub async fn raw_status(&self, request: &[u8]) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.http_port))
            .await
            .unwrap();
        // The server may answer and close before it has read everything.
        let _ = s.write_all(request).await;
        let mut buf = vec![0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        String::from_utf8_lossy(&buf[..n])
            .lines()
            .next()
            .unwrap_or("")
            .to_string()
    }

    /// A POST of `body` to `path` as it is (not necessarily JSON), with the admin token.
    pub fn raw_post(&self, path: &str, body: &str) -> Vec<u8> {
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.token(),
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body.as_bytes());
        request
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The sum of the `/metrics` series whose lines start with `name`: a family, or one
    /// series with its labels.
    pub async fn metric(&self, name: &str) -> Result<u64, String> {
        let text = self.api().get_text("/metrics").await?;
        Ok(text
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64)
    }

    /// Its resident memory now, in KiB, from `/proc` (`None` once it has exited).
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// The config most tests install with: a default plan `quick`, one demo step of
    /// `seconds`.
    pub fn quick_plan(seconds: &str) -> String {
        format!(
            "[plans.quick]\ndefault = true\nsteps = [ {{ name = \"q\", script = \"demo-step\", args = {{ seconds = \"{seconds}\" }}, timeout_s = 30 }} ]\n"
        )
    }

    /// A controller whose config file (`dir/controller.toml`) holds `config`, with `extra`
    /// flags after `--config`.
    pub async fn with_config(dir: &Path, config: &str, extra: &[&str]) -> Controller {
        let path = dir.join("controller.toml");
        std::fs::write(&path, config).unwrap();
        let mut args = vec!["--config", path.to_str().unwrap()];
        args.extend_from_slice(extra);
        Controller::start(dir, &args).await
    }

    pub async fn start(dir: &Path, extra: &[&str]) -> Controller {
        Self::start_with_env(dir, extra, &[]).await
    }

    /// [`Controller::start`], with extra environment variables for each start.
    pub async fn start_with_env(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Controller {
        let mut c = Controller {
            child: None,
            dir: dir.to_path_buf(),
            data_dir: dir.join("metalbus-data"),
            mqtt_port: 0,
            http_port: 0,
            api: String::new(),
            broker: String::new(),
            log: PathBuf::new(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            starts: 0,
        };
        c.launch().await;
        c
    }

    async fn launch(&mut self) {
        self.starts += 1;
        self.log = self.dir.join(format!("controller-{}.log", self.starts));
        let mut args = vec![
            "serve".to_string(),
            // Relative to the controller's working dir (`dir`), like the README's default
            // `./metalbus-data`: nothing may depend on the data dir being absolute.
            "--data-dir".into(),
            "metalbus-data".into(),
            "--mqtt-listen".into(),
            format!("127.0.0.1:{}", self.mqtt_port),
            "--http-listen".into(),
            format!("127.0.0.1:{}", self.http_port),
        ];
        args.extend(self.extra.iter().cloned());
        let listen = self.data_dir.join("listen.json");
        let _ = std::fs::remove_file(&listen);
        self.child = Some(spawn_with(
            "metalbus", &args, &self.dir, &self.log, &self.env,
        ));
        let bound: serde_json::Value = eventually(
            Duration::from_secs(20),
            "the controller to write listen.json",
            || {
                let listen = listen.clone();
                async move {
                    let text = std::fs::read_to_string(&listen).map_err(|e| e.to_string())?;
                    serde_json::from_str(&text).map_err(|e| e.to_string())
                }
            },
        )
        .await;
        let port = |key: &str| -> Option<u16> {
            let addr: std::net::SocketAddr = bound[key].as_str()?.parse().ok()?;
            Some(addr.port())
        };
        self.broker = bound["broker"].as_str().unwrap().to_string();
        self.mqtt_port = port("mqtt")
            .unwrap_or_else(|| self.broker.rsplit(':').next().unwrap().parse().unwrap());
        self.http_port = port("http").unwrap();
        self.api = bound["api"].as_str().unwrap().to_string();
        let url = format!("{}/readyz", self.api);
        let http = crate::api::http_client(&self.data_dir);
        eventually(
            Duration::from_secs(20),
            "the controller to be ready",
            || {
                let http = http.clone();
                let url = url.clone();
                async move {
                    match http.get(&url).send().await {
                        Ok(r) if r.status().is_success() => Ok(()),
                        Ok(r) => Err(format!("HTTP {}", r.status())),
                        Err(e) => Err(e.to_string()),
                    }
                }
            },
        )
        .await;
    }

    pub fn broker_url(&self) -> String {
        self.broker.clone()
    }

    pub fn api_base(&self) -> String {
        self.api.clone()
    }

    /// The admin token the controller generated on first start.
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("admin.token"))
            .unwrap()
            .trim()
            .to_string()
    }

    pub fn api(&self) -> Api {
        Api::with_client(
            &self.api_base(),
            Some(self.token()),
            crate::api::http_client(&self.data_dir),
        )
    }

    /// SIGTERM, and the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        signal(&child, Signal::TERM);
        wait_exit(&mut child, Duration::from_secs(20))
    }

    /// SIGKILL: no clean stop, nothing flushed.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().unwrap();
        signal(&child, Signal::KILL);
        wait_exit(&mut child, Duration::from_secs(10));
    }

    /// Starts again on the same data dir and ports.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the controller first");
        self.launch().await;
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        dump_log_if_panicking("controller", &self.log);
    }
}

/// A running `metalbus-agent run`.
pub struct AgentProc {
    child: Option<Child>,
    pub node_id: String,
    /// Its state dir (outbox, credential).
    pub state: PathBuf,
    pub log: PathBuf,
}

/// Where a controller started on `dir` keeps its fleet enrollment token.
pub fn fleet_token_file(dir: &Path) -> PathBuf {
    dir.join("metalbus-data").join("enroll.token")
}

/// Adds `--enroll-token-file` with the fleet token of the controller on `dir` unless
/// the caller chose a token (or none exists yet).
fn enroll_with_fleet_token(dir: &Path, args: &mut Vec<String>) {
    let chosen = args.iter().any(|a| a.starts_with("--enroll-token"));
    let token = fleet_token_file(dir);
    if !chosen && token.exists() {
        args.push("--enroll-token-file".into());
        args.push(token.display().to_string());
    }
}

/// The node key stored in an agent's state dir.
pub fn node_key(state: &Path) -> metalbus_protocol::proof::NodeKey {
    let text = std::fs::read_to_string(state.join("credential.json"))
        .unwrap_or_else(|e| panic!("no credential in {}: {e}", state.display()));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    metalbus_protocol::proof::NodeKey::from_hex(v["key"].as_str().unwrap()).unwrap()
}

impl AgentProc {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Starts an agent with state in `dir/agent-<id>` and a 1 s metrics interval.
    pub fn start(dir: &Path, broker: &str, node_id: &str) -> AgentProc {
        Self::start_with(dir, broker, node_id, &[])
    }

    /// The same, with extra flags (e.g. `--steps-dir`).
    pub fn start_with(dir: &Path, broker: &str, node_id: &str, extra: &[&str]) -> AgentProc {
        Self::start_configured(dir, broker, node_id, Path::new("/dev/null"), extra)
    }

    /// The same, with an agent config file (for keys no flag sets, e.g.
    /// `reboot_command = []`).
    pub fn start_configured(
        dir: &Path,
        broker: &str,
        node_id: &str,
        config: &Path,
        extra: &[&str],
    ) -> AgentProc {
        Self::start_with_env(dir, broker, node_id, config, extra, &[])
    }

    /// [`AgentProc::start_configured`], with extra environment variables.
    pub fn start_with_env(
        dir: &Path,
        broker: &str,
        node_id: &str,
        config: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> AgentProc {
        let state = dir.join(format!("agent-{node_id}"));
        let log = dir.join(format!("agent-{node_id}.log"));
        let config = config.display().to_string();
        let mut args: Vec<String> = [
            "run",
            "--config",
            &config,
            "--broker",
            broker,
            "--node-id",
            node_id,
            "--state-dir",
            &state.display().to_string(),
            "--metrics-interval",
            "1s",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(extra.iter().map(|s| s.to_string()))
        .collect();
        enroll_with_fleet_token(dir, &mut args);
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        AgentProc {
            child: Some(spawn_with("metalbus-agent", &args, dir, &log, &env)),
            node_id: node_id.to_string(),
            state,
            log,
        }
    }

    /// The node key it enrolled with (from its state dir), to forge nothing: tests use
    /// it to send what this node may send.
    pub fn key(&self) -> metalbus_protocol::proof::NodeKey {
        node_key(&self.state)
    }

    /// SIGKILL: no clean stop, the broker fires the Will.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().unwrap();
        signal(&child, Signal::KILL);
        wait_exit(&mut child, Duration::from_secs(5));
    }

    /// SIGTERM, and the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        signal(&child, Signal::TERM);
        wait_exit(&mut child, Duration::from_secs(10))
    }

    /// SIGSTOP: the agent hangs with its connection open, so no Will fires.
    pub fn freeze(&self) {
        signal(self.child.as_ref().unwrap(), Signal::STOP);
    }

    /// SIGCONT after [`AgentProc::freeze`].
    pub fn thaw(&self) {
        signal(self.child.as_ref().unwrap(), Signal::CONT);
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        dump_log_if_panicking(&format!("agent {}", self.node_id), &self.log);
    }
}

/// A running `metalbus-agent simulate`.
pub struct SimProc {
    child: Option<Child>,
    pub stats: PathBuf,
    pub log: PathBuf,
}

impl SimProc {
    /// Starts `nodes` virtual agents with ids `prefix-0001`..., state under `dir/sim`.
    pub fn start(dir: &Path, broker: &str, nodes: usize, prefix: &str, extra: &[&str]) -> SimProc {
        let stats = dir.join(format!("{prefix}-stats.json"));
        let log = dir.join(format!("{prefix}-simulate.log"));
        let mut args: Vec<String> = [
            "simulate",
            "--nodes",
            &nodes.to_string(),
            "--broker",
            broker,
            "--prefix",
            prefix,
            "--state-dir",
            &dir.join("sim").display().to_string(),
            "--stats",
            &stats.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // Metrics every second unless `extra` says otherwise.
        if !extra.contains(&"--metrics-interval") {
            args.extend(["--metrics-interval".to_string(), "1s".to_string()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        enroll_with_fleet_token(dir, &mut args);
        SimProc {
            child: Some(spawn("metalbus-agent", &args, dir, &log)),
            stats,
            log,
        }
    }

    /// `nodes` virtual agents on `ctl`'s broker (with `extra` flags, e.g. how their
    /// installs progress), once every one is `discovered`; and their ids.
    pub async fn discovered(
        ctl: &Controller,
        nodes: usize,
        prefix: &str,
        extra: &[&str],
    ) -> (SimProc, Vec<String>) {
        let sim = SimProc::start(&ctl.dir, &ctl.broker_url(), nodes, prefix, extra);
        let ids: Vec<String> = (1..=nodes).map(|i| format!("{prefix}-{i:04}")).collect();
        ctl.api()
            .wait_discovered(&ids, Duration::from_secs(120))
            .await;
        (sim, ids)
    }

    /// The per-node delivery counters written by the simulation.
    pub fn stats(&self) -> serde_json::Value {
        std::fs::read_to_string(&self.stats)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    /// Counters written after this call, so they include everything that happened
    /// before it (the file is rewritten once a second).
    pub async fn fresh_stats(&self) -> serde_json::Value {
        let asked = std::time::SystemTime::now();
        let start = std::time::Instant::now();
        loop {
            let newer = std::fs::metadata(&self.stats)
                .and_then(|m| m.modified())
                .is_ok_and(|m| m > asked);
            if newer {
                return self.stats();
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the simulator stopped writing {}",
                self.stats.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, and the exit status (the stats file is final afterwards).
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        signal(&child, Signal::TERM);
        wait_exit(&mut child, Duration::from_secs(30))
    }
}

impl Drop for SimProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        dump_log_if_panicking("simulate", &self.log);
    }
}

/// A Mosquitto broker on a loopback port, with a config file of its own.
pub struct Mosquitto {
    child: Option<Child>,
    pub port: u16,
    /// The TLS listener's port, when started with [`Mosquitto::start_tls`].
    pub tls_port: Option<u16>,
    conf: PathBuf,
    pub log: PathBuf,
    dir: PathBuf,
}

impl Mosquitto {
    /// Starts `mosquitto` on a free loopback port; `extra` is appended to its config.
    pub fn start(dir: &Path, extra: &str) -> Mosquitto {
        let port = free_port();
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\n{}{}persistence false\nlog_dest stdout\nmax_packet_size 8388608\n{extra}\n",
                // Anonymous clients are welcome unless `extra` says otherwise.
                if extra.contains("allow_anonymous") { "" } else { "allow_anonymous true\n" },
                // Mosquitto started as root drops to its own user, which cannot read the
                // files of a private temp dir (a password file, a key); keep it root.
                if rustix::process::geteuid().is_root() && !extra.contains("user root") {
                    "user root\n"
                } else {
                    ""
                }
            ),
        )
        .unwrap();
        let mut m = Mosquitto {
            child: None,
            port,
            tls_port: None,
            conf,
            log: dir.join("mosquitto.log"),
            dir: dir.to_path_buf(),
        };
        m.launch();
        m
    }

    /// The same, plus a TLS listener on a second free loopback port that presents
    /// `pki`'s server certificate (for 127.0.0.1).
    pub fn start_tls(dir: &Path, pki: &TestPki) -> Mosquitto {
        let tls_port = free_port();
        let mut m = Self::start(
            dir,
            &format!(
                // Mosquitto started as root reads the key after dropping to its own
                // user, which cannot enter the private temp dir; keep it as it is.
                "{}listener {tls_port} 127.0.0.1\ncertfile {}\nkeyfile {}\n",
                if rustix::process::geteuid().is_root() {
                    "user root\n"
                } else {
                    ""
                },
                pki.server_cert.display(),
                pki.server_key.display()
            ),
        );
        m.tls_port = Some(tls_port);
        let start = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", tls_port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "mosquitto's TLS listener did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        m
    }

    /// `mqtts://127.0.0.1:PORT` of the TLS listener.
    pub fn tls_url(&self) -> String {
        format!(
            "mqtts://127.0.0.1:{}",
            self.tls_port.expect("started with start_tls")
        )
    }

    fn launch(&mut self) {
        let out = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let err = out.try_clone().unwrap();
        let child = Command::new("mosquitto")
            .args(["-c", self.conf.to_str().unwrap()])
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("mosquitto is not installed (apt-get install mosquitto)");
        self.child = Some(child);
        let start = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "mosquitto did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Its process id (for a reload with SIGHUP).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Stops the broker (SIGKILL: a crash, everything in it is gone).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(&c, Signal::KILL);
            wait_exit(&mut c, Duration::from_secs(10));
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop it first");
        self.launch();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        dump_log_if_panicking("mosquitto", &self.log);
    }
}

pub(crate) fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A throwaway certificate authority and a server certificate it signed for 127.0.0.1,
/// made with the `openssl` command (P-256 keys, valid for two days).
pub struct TestPki {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl TestPki {
    /// Writes `<name>-ca.pem`, `<name>-server.pem` and `<name>-server.key` into `dir`.
    pub fn generate(dir: &Path, name: &str) -> TestPki {
        let p = |f: &str| dir.join(format!("{name}-{f}"));
        let ext = p("server.ext");
        std::fs::write(
            &ext,
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .unwrap();
        let s = |path: PathBuf| path.display().to_string();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        openssl(
            dir,
            &[
                &["req", "-x509"][..],
                &ec[..],
                &[
                    "-keyout",
                    &s(p("ca.key")),
                    "-out",
                    &s(p("ca.pem")),
                    "-days",
                    "2",
                    "-subj",
                    &format!("/CN=metalbus test CA {name}"),
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign,cRLSign",
                ][..],
            ]
            .concat(),
        );
        openssl(
            dir,
            &[
                &["req"][..],
                &ec[..],
                &[
                    "-keyout",
                    &s(p("server.key")),
                    "-out",
                    &s(p("server.csr")),
                    "-subj",
                    "/CN=127.0.0.1",
                ][..],
            ]
            .concat(),
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &s(p("server.csr")),
                "-CA",
                &s(p("ca.pem")),
                "-CAkey",
                &s(p("ca.key")),
                "-CAcreateserial",
                "-out",
                &s(p("server.pem")),
                "-days",
                "2",
                "-extfile",
                &s(ext),
            ],
        );
        TestPki {
            ca_cert: p("ca.pem"),
            server_cert: p("server.pem"),
            server_key: p("server.key"),
        }
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is not installed (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}
