//! Controller configuration: built-in defaults, then the TOML file, then flags
//! (STYLE rule 8). Unknown keys are refused with their name.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use metalbus_link::BrokerUrl;
use metalbus_link::{duration, LogFormat};
use metalbus_protocol::command::{Plan, Step};
use metalbus_protocol::lifecycle::NodeState;
use serde::Deserialize;

/// The controller's settings, fully resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct ControllerConfig {
    pub data_dir: PathBuf,
    /// Where the embedded MQTT broker listens.
    pub mqtt_listen: SocketAddr,
    /// An external broker to use instead of the embedded one.
    pub broker: Option<BrokerUrl>,
    /// PEM file of the CA that signs the external `mqtts://` broker's certificate; the
    /// system's roots when unset.
    pub broker_ca: Option<PathBuf>,
    /// MQTT topic prefix.
    pub prefix: String,
    pub http_listen: SocketAddr,
    pub log_format: LogFormat,
    /// Also run an agent for this host inside the controller.
    pub local_agent: bool,
    pub lifecycle: Lifecycle,
    /// Install plans by name; never empty (the built-in `demo` plan when none is set).
    pub plans: BTreeMap<String, PlanConfig>,
    pub events: EventRetention,
    pub wake: Wake,
    /// Serve the embedded broker over TLS.
    pub mqtt_tls: bool,
    /// Serve the HTTP API over TLS.
    pub http_tls: bool,
    /// HTTP connections open at once (`[http] max_connections`).
    pub http_max_connections: usize,
    /// Event streams (`/api/v1/events/stream`) open at once (`[http] max_event_streams`).
    pub http_max_event_streams: usize,
    /// Clients of the embedded broker connected at once (`[mqtt] max_connections`).
    pub mqtt_max_connections: usize,
    /// Of those, monitors (viewer or operator tokens) at once (`[mqtt] max_monitors`):
    /// each costs a session in rumqttd's router, which is sized for them.
    pub mqtt_max_monitors: usize,
    /// Enrolled nodes no operator has taken on yet (`[enroll] max_waiting_nodes`).
    pub max_waiting_nodes: usize,
    /// The certificate both serve; issued by the controller's own CA when unset.
    pub tls: TlsFiles,
    /// Allow a plain (non-TLS) listener on an address other than loopback.
    pub insecure_plain: bool,
    /// Keep Mosquitto's password and ACL files in this dir (external broker only).
    pub mosquitto_dir: Option<PathBuf>,
    /// Run after each change of those files.
    pub mosquitto_reload: Vec<String>,
}

/// `[tls]`: the certificate the embedded broker and the API serve.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsFiles {
    /// PEM certificate chain (the server's certificate first); with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Extra DNS names or IP addresses for the certificate the controller issues itself
    /// (it always covers localhost, loopback, this host's name and the listen addresses).
    pub names: Vec<String>,
}

/// `[wake]`: where Wake-on-LAN packets go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Wake {
    /// The one address magic packets are sent to (UDP, broadcast allowed); typically
    /// the broadcast address of the nodes' network, port 9.
    pub broadcast: SocketAddr,
}

impl Default for Wake {
    fn default() -> Self {
        Self {
            broadcast: SocketAddr::from(([255, 255, 255, 255], 9)),
        }
    }
}

/// `[events]`: how many node events are kept, and how long.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventRetention {
    /// Most events kept per node; the oldest go first.
    pub max_per_node: u32,
    /// Most of those with one reason (a flood of one kind cannot push out the others);
    /// the oldest of that reason goes first.
    pub max_per_reason: u32,
    /// Events not repeated for this long are dropped.
    #[serde(with = "duration")]
    pub max_age: Duration,
}

impl Default for EventRetention {
    fn default() -> Self {
        Self {
            max_per_node: 200,
            max_per_reason: 50,
            max_age: Duration::from_secs(14 * 24 * 3600),
        }
    }
}

/// `[lifecycle]`: retry and activation policy.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Lifecycle {
    pub max_install_attempts: u32,
    /// Wait before resending a failed install; doubles with each attempt.
    #[serde(with = "duration")]
    pub retry_backoff: Duration,
    pub auto_activate: bool,
    /// The plan deprovisioning runs; none means an empty plan that completes at once.
    pub deprovision_plan: Option<String>,
    /// How long a command stays valid for the agent.
    #[serde(with = "duration")]
    pub command_ttl: Duration,
    /// Unacknowledged commands are published again this often (DESIGN section 4).
    #[serde(with = "duration")]
    pub resend_after: Duration,
    /// Recovery attempts for a stuck node before it moves to its failure state.
    pub max_recovery_attempts: u32,
    /// How long a node may stay in a state without progress (DESIGN 7.3).
    pub timeouts: Timeouts,
}

/// `[lifecycle.timeouts]`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// A pre-registered node whose agent never appears goes to `error`.
    #[serde(with = "duration")]
    pub registered: Duration,
    /// The install command sent, the job not started.
    #[serde(with = "duration")]
    pub pending: Duration,
    /// Without a job report (any report resets it).
    #[serde(with = "duration")]
    pub installing: Duration,
    #[serde(with = "duration")]
    pub deprovisioning: Duration,
    #[serde(with = "duration")]
    pub migrating: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        let min = |m: u64| Duration::from_secs(m * 60);
        Self {
            registered: min(15),
            pending: min(10),
            installing: min(60),
            deprovisioning: min(30),
            migrating: min(60),
        }
    }
}

impl Timeouts {
    /// The timeout of `state`, if it has one.
    pub fn of(&self, state: NodeState) -> Option<Duration> {
        match state {
            NodeState::Registered => Some(self.registered),
            NodeState::Pending => Some(self.pending),
            NodeState::Installing => Some(self.installing),
            NodeState::Deprovisioning => Some(self.deprovisioning),
            NodeState::Migrating => Some(self.migrating),
            _ => None,
        }
    }
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self {
            max_install_attempts: 3,
            retry_backoff: Duration::from_secs(30),
            auto_activate: true,
            deprovision_plan: None,
            command_ttl: Duration::from_secs(3600),
            resend_after: Duration::from_secs(5),
            max_recovery_attempts: 3,
            timeouts: Timeouts::default(),
        }
    }
}

/// `[plans.NAME]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanConfig {
    /// `manage` without a plan uses the default one.
    #[serde(default)]
    pub default: bool,
    #[serde(default)]
    pub reboot_after: bool,
    pub steps: Vec<Step>,
}

impl PlanConfig {
    pub fn plan(&self, name: &str) -> Plan {
        Plan {
            name: name.to_string(),
            steps: self.steps.clone(),
            reboot_after: self.reboot_after,
        }
    }
}

/// The plan used when the config names none: harmless `demo-step` runs that only sleep
/// and print progress (about 6 s in all).
pub fn demo_plans() -> BTreeMap<String, PlanConfig> {
    let step = |name: &str, seconds: &str, message: &str| Step {
        name: name.to_string(),
        script: "demo-step".to_string(),
        args: BTreeMap::from([
            ("seconds".to_string(), seconds.to_string()),
            ("message".to_string(), message.to_string()),
        ]),
        timeout_s: 60,
    };
    BTreeMap::from([(
        "demo".to_string(),
        PlanConfig {
            default: true,
            reboot_after: false,
            steps: vec![
                step("partition", "1", "partitioning (demo)"),
                step("image", "3", "writing image (demo)"),
                step("configure", "2", "configuring (demo)"),
            ],
        },
    )])
}

impl ControllerConfig {
    /// The plan `manage` uses: `name`, or the default one.
    pub fn pick_plan(&self, name: Option<&str>) -> Result<Plan, String> {
        let known = || self.plans.keys().cloned().collect::<Vec<_>>().join(", ");
        match name {
            Some(n) => self
                .plans
                .get(n)
                .map(|p| p.plan(n))
                .ok_or_else(|| format!("unknown plan '{n}'; configured plans: {}", known())),
            None => self
                .plans
                .iter()
                .find(|(_, p)| p.default)
                .or_else(|| {
                    (self.plans.len() == 1)
                        .then(|| self.plans.iter().next())
                        .flatten()
                })
                .map(|(n, p)| p.plan(n))
                .ok_or_else(|| format!("no default plan; name one of: {}", known())),
        }
    }

    /// The plan deprovisioning runs.
    pub fn deprovision_plan(&self) -> Plan {
        match &self.lifecycle.deprovision_plan {
            Some(name) => self
                .plans
                .get(name)
                .map(|p| p.plan(name))
                .unwrap_or_else(|| Plan {
                    name: name.clone(),
                    steps: Vec::new(),
                    reboot_after: false,
                }),
            None => Plan {
                name: "deprovision".into(),
                steps: Vec::new(),
                reboot_after: false,
            },
        }
    }

    /// Checks what parses but cannot work.
    pub fn check(&self) -> anyhow::Result<()> {
        let t = &self.lifecycle.timeouts;
        for (name, d) in [
            ("registered", t.registered),
            ("pending", t.pending),
            ("installing", t.installing),
            ("deprovisioning", t.deprovisioning),
            ("migrating", t.migrating),
        ] {
            anyhow::ensure!(
                d >= Duration::from_secs(1),
                "lifecycle.timeouts.{name} must be at least 1s"
            );
        }
        anyhow::ensure!(
            self.events.max_per_node >= 1,
            "events.max_per_node must be at least 1"
        );
        anyhow::ensure!(
            self.events.max_per_reason >= 1,
            "events.max_per_reason must be at least 1"
        );
        anyhow::ensure!(
            self.events.max_age >= Duration::from_secs(60),
            "events.max_age must be at least 1m"
        );
        anyhow::ensure!(
            self.tls.cert_file.is_some() == self.tls.key_file.is_some(),
            "tls.cert_file and tls.key_file go together"
        );
        for (what, addr, tls, flag) in [
            (
                "MQTT",
                self.mqtt_listen,
                self.mqtt_tls,
                "[mqtt] tls = true (--mqtt-tls)",
            ),
            (
                "HTTP",
                self.http_listen,
                self.http_tls,
                "[http] tls = true (--http-tls)",
            ),
        ] {
            let embedded = what == "HTTP" || self.broker.is_none();
            anyhow::ensure!(
                !embedded || tls || addr.ip().is_loopback() || self.insecure_plain,
                "refusing to serve plain {what} on {addr}, which is not a loopback address: \
                 set {flag}, or pass --insecure-plain to accept that anyone on the network \
                 can read it"
            );
        }
        anyhow::ensure!(
            self.mosquitto_dir.is_none() || self.broker.is_some(),
            "broker.mosquitto_dir is for an external Mosquitto; set broker.url (--broker) too"
        );
        anyhow::ensure!(
            self.broker_ca.is_none() || self.broker.is_some(),
            "broker.ca_file (--broker-ca) is for an external mqtts:// broker; set broker.url (--broker) too"
        );
        let l = &self.lifecycle;
        for (name, d, least) in [
            ("resend_after", l.resend_after, Duration::from_millis(100)),
            ("command_ttl", l.command_ttl, Duration::from_secs(1)),
        ] {
            // Zero would resend every command on every engine tick, or expire it at once.
            anyhow::ensure!(d >= least, "lifecycle.{name} must be at least {least:?}");
        }
        anyhow::ensure!(
            self.lifecycle.max_install_attempts >= 1,
            "lifecycle.max_install_attempts must be at least 1"
        );
        let defaults: Vec<&String> = self
            .plans
            .iter()
            .filter(|(_, p)| p.default)
            .map(|(n, _)| n)
            .collect();
        anyhow::ensure!(
            defaults.len() <= 1,
            "more than one plan has default = true: {defaults:?}"
        );
        for (name, p) in &self.plans {
            p.plan(name)
                .validate()
                .with_context(|| format!("in [plans.{name}]"))?;
        }
        if let Some(name) = &self.lifecycle.deprovision_plan {
            anyhow::ensure!(
                self.plans.contains_key(name),
                "lifecycle.deprovision_plan names an unknown plan '{name}'"
            );
        }
        Ok(())
    }
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("metalbus-data"),
            mqtt_listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
            broker: None,
            broker_ca: None,
            prefix: metalbus_protocol::DEFAULT_PREFIX.to_string(),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 8088)),
            log_format: LogFormat::Text,
            local_agent: false,
            lifecycle: Lifecycle::default(),
            plans: demo_plans(),
            events: EventRetention::default(),
            wake: Wake::default(),
            mqtt_tls: false,
            http_tls: false,
            http_max_connections: crate::api::MAX_CONNECTIONS,
            http_max_event_streams: crate::api::MAX_EVENT_STREAMS,
            max_waiting_nodes: MAX_WAITING_NODES,
            mqtt_max_connections: MQTT_MAX_CONNECTIONS,
            mqtt_max_monitors: MQTT_MAX_MONITORS,
            tls: TlsFiles::default(),
            insecure_plain: false,
            mosquitto_dir: None,
            mosquitto_reload: Vec::new(),
        }
    }
}

/// The file's keys, every one optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerFile {
    pub data_dir: Option<PathBuf>,
    pub log_format: Option<LogFormat>,
    #[serde(default)]
    pub mqtt: MqttSection,
    #[serde(default)]
    pub http: HttpSection,
    #[serde(default)]
    pub broker: BrokerSection,
    #[serde(default)]
    pub enroll: EnrollSection,
    pub lifecycle: Option<Lifecycle>,
    pub plans: Option<BTreeMap<String, PlanConfig>>,
    pub events: Option<EventRetention>,
    pub wake: Option<Wake>,
    pub tls: Option<TlsFiles>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSection {
    pub listen: Option<SocketAddr>,
    pub prefix: Option<String>,
    /// Serve the embedded broker over TLS (`[tls]`).
    pub tls: Option<bool>,
    /// Clients connected at once; more are closed at once.
    pub max_connections: Option<usize>,
    /// Monitors (token logins) connected at once; more are refused at CONNECT.
    pub max_monitors: Option<usize>,
}

/// `[broker]`: an external broker (Mosquitto, EMQX, ...) instead of the embedded one.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerSection {
    /// `mqtt://HOST:PORT` or `mqtts://HOST:PORT`.
    pub url: Option<String>,
    /// PEM file of the CA that signs the broker's certificate (`mqtts://` only).
    pub ca_file: Option<PathBuf>,
    /// Keep a Mosquitto password file and ACL file here, in step with the nodes'
    /// credentials (`metalbus mosquitto-config` prints the Mosquitto side).
    pub mosquitto_dir: Option<PathBuf>,
    /// Run after each change of those files, e.g. `["systemctl", "reload", "mosquitto"]`.
    pub reload_command: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    pub listen: Option<SocketAddr>,
    /// Serve the API over TLS (`[tls]`).
    pub tls: Option<bool>,
    /// HTTP connections open at once; more wait until one closes.
    pub max_connections: Option<usize>,
    /// Event streams open at once; more are refused with 503.
    pub max_event_streams: Option<usize>,
}

/// `[enroll]`: what enrollment may create.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollSection {
    /// Enrolled nodes no operator has taken on yet (still `discovered`, not claimed by a
    /// registration); enrollment is refused beyond it.
    pub max_waiting_nodes: Option<usize>,
}

/// Default of `[mqtt] max_connections`: a rack room of agents and its monitors. The
/// unit's `LimitNOFILE` leaves room for it.
pub const MQTT_MAX_CONNECTIONS: usize = 20_000;

/// Default of `[mqtt] max_monitors`: dashboards, `mosquitto_sub` sessions and
/// integrations, not agents (they share one router session, DECISIONS §70). rumqttd
/// sets aside about 1.7 KB per session it may hold at start (18 MB when it was sized
/// for every client, DECISIONS §71).
pub const MQTT_MAX_MONITORS: usize = 1_000;

/// Default of `[enroll] max_waiting_nodes`: the embedded broker's connection cap, so a
/// whole rack room can enroll at once but a leaked multi-use token cannot grow the
/// store without bound.
pub const MAX_WAITING_NODES: usize = 20_000;

impl ControllerFile {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("in config file {}", path.display()))
    }

    /// Lays the file's values over `cfg`.
    pub fn apply(self, cfg: &mut ControllerConfig) -> anyhow::Result<()> {
        if let Some(url) = &self.broker.url {
            cfg.broker = Some(url.parse()?);
        }
        set(&mut cfg.broker_ca, self.broker.ca_file.map(Some));
        set(&mut cfg.mosquitto_dir, self.broker.mosquitto_dir.map(Some));
        set(&mut cfg.mosquitto_reload, self.broker.reload_command);
        set(&mut cfg.data_dir, self.data_dir);
        set(&mut cfg.log_format, self.log_format);
        set(&mut cfg.mqtt_listen, self.mqtt.listen);
        set(&mut cfg.prefix, self.mqtt.prefix);
        set(&mut cfg.http_listen, self.http.listen);
        set(&mut cfg.lifecycle, self.lifecycle);
        set(&mut cfg.plans, self.plans.filter(|p| !p.is_empty()));
        set(&mut cfg.events, self.events);
        set(&mut cfg.wake, self.wake);
        set(&mut cfg.mqtt_tls, self.mqtt.tls);
        set(&mut cfg.http_tls, self.http.tls);
        if let Some(n) = self.http.max_connections {
            anyhow::ensure!(
                (1..=65_536).contains(&n),
                "[http] max_connections is {n}; it must be 1..=65536"
            );
            cfg.http_max_connections = n;
        }
        if let Some(n) = self.mqtt.max_connections {
            anyhow::ensure!(
                (1..=1_000_000).contains(&n),
                "[mqtt] max_connections is {n}; it must be 1..=1000000"
            );
            cfg.mqtt_max_connections = n;
        }
        if let Some(n) = self.mqtt.max_monitors {
            anyhow::ensure!(
                (1..=100_000).contains(&n),
                "[mqtt] max_monitors is {n}; it must be 1..=100000"
            );
            cfg.mqtt_max_monitors = n;
        }
        if let Some(n) = self.http.max_event_streams {
            anyhow::ensure!(
                (1..=65_536).contains(&n),
                "[http] max_event_streams is {n}; it must be 1..=65536"
            );
            cfg.http_max_event_streams = n;
        }
        if let Some(n) = self.enroll.max_waiting_nodes {
            anyhow::ensure!(
                n >= 1,
                "[enroll] max_waiting_nodes is 0; it must be at least 1"
            );
            cfg.max_waiting_nodes = n;
        }
        set(&mut cfg.tls, self.tls);
        Ok(())
    }
}

fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *slot = v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_example_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/controller.toml");
        let mut cfg = ControllerConfig::default();
        ControllerFile::load(&path)
            .unwrap()
            .apply(&mut cfg)
            .unwrap();
        assert_eq!(cfg.data_dir, PathBuf::from("/var/lib/metalbus"));
        assert_eq!(cfg.prefix, "metalbus/v1");
        cfg.check().unwrap();
        assert_eq!(cfg.pick_plan(None).unwrap().name, "demo");
    }

    #[test]
    fn lifecycle_and_plans_parse_with_durations() {
        let file: ControllerFile = toml::from_str(
            r#"
[lifecycle]
max_install_attempts = 5
retry_backoff = "500ms"
auto_activate = false
[plans.ubuntu]
default = true
steps = [ { name = "image", script = "write-image", args = { url = "http://x", sha256 = "ab" }, timeout_s = 1800 } ]
[plans.other]
steps = []
"#,
        )
        .unwrap();
        let mut cfg = ControllerConfig::default();
        file.apply(&mut cfg).unwrap();
        cfg.check().unwrap();
        assert_eq!(cfg.lifecycle.retry_backoff, Duration::from_millis(500));
        assert_eq!(cfg.lifecycle.max_install_attempts, 5);
        assert!(!cfg.lifecycle.auto_activate);
        assert_eq!(cfg.pick_plan(None).unwrap().name, "ubuntu");
        assert!(cfg.pick_plan(Some("other")).unwrap().steps.is_empty());
        let err = cfg.pick_plan(Some("nope")).unwrap_err();
        assert_eq!(err, "unknown plan 'nope'; configured plans: other, ubuntu");
        assert!(cfg.deprovision_plan().steps.is_empty());
    }

    #[test]
    fn timeouts_and_event_retention_parse_and_are_checked() {
        let file: ControllerFile = toml::from_str(
            r#"
[lifecycle]
max_recovery_attempts = 1
[lifecycle.timeouts]
installing = "3s"
registered = "2m"
[events]
max_per_node = 10
"#,
        )
        .unwrap();
        let mut cfg = ControllerConfig::default();
        file.apply(&mut cfg).unwrap();
        cfg.check().unwrap();
        let t = cfg.lifecycle.timeouts;
        assert_eq!(t.of(NodeState::Installing), Some(Duration::from_secs(3)));
        assert_eq!(t.of(NodeState::Registered), Some(Duration::from_secs(120)));
        assert_eq!(
            t.of(NodeState::Pending),
            Some(Duration::from_secs(600)),
            "default"
        );
        assert_eq!(t.of(NodeState::Active), None);
        assert_eq!(cfg.lifecycle.max_recovery_attempts, 1);
        assert_eq!(cfg.events.max_per_node, 10);
        assert_eq!(cfg.events.max_age, Duration::from_secs(14 * 24 * 3600));

        let mut zero = ControllerConfig::default();
        zero.lifecycle.timeouts.pending = Duration::ZERO;
        let err = zero.check().unwrap_err().to_string();
        assert_eq!(err, "lifecycle.timeouts.pending must be at least 1s");
        let unknown = toml::from_str::<ControllerFile>(
            "[lifecycle.timeouts]
installed = \"1m\"\n",
        );
        assert!(unknown
            .unwrap_err()
            .to_string()
            .contains("unknown field `installed`"));
    }

    #[test]
    fn zero_resend_and_ttl_are_refused() {
        for (key, value) in [("resend_after", "0s"), ("command_ttl", "0s")] {
            let text = format!("[lifecycle]\n{key} = \"{value}\"\n");
            let file: ControllerFile = toml::from_str(&text).unwrap();
            let mut cfg = ControllerConfig::default();
            file.apply(&mut cfg).unwrap();
            let err = cfg.check().unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        }
    }

    #[test]
    fn bad_plans_are_refused_with_the_plan_named() {
        let file: ControllerFile = toml::from_str(
            "[plans.p]\nsteps = [ { name = \"s\", script = \"../x\", timeout_s = 5 } ]\n",
        )
        .unwrap();
        let mut cfg = ControllerConfig::default();
        file.apply(&mut cfg).unwrap();
        let err = format!("{:#}", cfg.check().unwrap_err());
        assert!(err.contains("[plans.p]") && err.contains("../x"), "{err}");
        let err =
            toml::from_str::<ControllerFile>("[lifecycle]\nretry_backof = \"1s\"\n").unwrap_err();
        assert!(err.to_string().contains("retry_backof"), "{err}");
    }

    #[test]
    fn the_wake_address_defaults_to_broadcast_port_9_and_is_checked() {
        assert_eq!(
            ControllerConfig::default().wake.broadcast.to_string(),
            "255.255.255.255:9"
        );
        let file: ControllerFile =
            toml::from_str("[wake]\nbroadcast = \"10.0.255.255:7\"\n").unwrap();
        let mut cfg = ControllerConfig::default();
        file.apply(&mut cfg).unwrap();
        assert_eq!(cfg.wake.broadcast.to_string(), "10.0.255.255:7");
        let file: ControllerFile = toml::from_str("[wake]\n").unwrap();
        let mut cfg = ControllerConfig::default();
        file.apply(&mut cfg).unwrap();
        assert_eq!(
            cfg.wake.broadcast.port(),
            9,
            "an empty section keeps the default"
        );
        let err = toml::from_str::<ControllerFile>("[wake]\nbroadcast = \"10.0.255.255\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid socket address"), "{err}");
        let err = toml::from_str::<ControllerFile>("[wake]\nbroadcst = \"1.2.3.4:9\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("broadcst"), "{err}");
    }

    #[test]
    fn file_overrides_defaults_and_typos_are_named() {
        let file: ControllerFile = toml::from_str(
            "data_dir = \"/srv/mb\"\n[mqtt]\nlisten = \"0.0.0.0:1884\"\n[http]\nlisten = \"[::1]:9000\"\n",
        )
        .unwrap();
        let mut cfg = ControllerConfig::default();
        file.apply(&mut cfg).unwrap();
        assert_eq!(cfg.data_dir, PathBuf::from("/srv/mb"));
        assert_eq!(cfg.mqtt_listen.port(), 1884);
        assert_eq!(cfg.http_listen.to_string(), "[::1]:9000");

        let err = toml::from_str::<ControllerFile>("[http]\nlisten_addr = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("listen_addr"), "{err}");
        let err = toml::from_str::<ControllerFile>("[http]\nlisten = \"nope\"\n").unwrap_err();
        assert!(err.to_string().contains("invalid socket address"), "{err}");
    }
}
