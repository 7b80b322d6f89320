//! `metalbus-agent`: flag parsing and dispatch only; the work lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::{Parser, Subcommand};
use metalbus_agent::collectors::{inventory, metrics::MetricsCollector};
use metalbus_agent::config::{AgentConfig, AgentFile, LogFormat, DEFAULT_CONFIG};
use metalbus_agent::daemon::Agent;
use metalbus_protocol::Timestamp;

/// The Metalbus agent: reports this host's inventory, metrics and job progress over MQTT.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent daemon (normally under systemd).
    Run(RunArgs),
    /// Print this host's hardware inventory as JSON and exit.
    Inventory {
        /// Read /sys, /proc and /etc under this directory instead of /.
        #[arg(long, value_name = "DIR", default_value = "/")]
        root: PathBuf,
    },
    /// Run N virtual agents in this process (real MQTT, outbox and protocol code;
    /// invented hosts and jobs), for load and fault tests.
    Simulate(SimArgs),
    /// Print one metrics sample as JSON and exit (takes about half a second).
    Metrics {
        /// Read /sys, /proc and /etc under this directory instead of /.
        #[arg(long, value_name = "DIR", default_value = "/")]
        root: PathBuf,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Config file (TOML). Default: /etc/metalbus/agent.toml, if it exists.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// MQTT broker, mqtt://HOST:PORT or mqtts://HOST:PORT [default: mqtt://127.0.0.1:1883]
    #[arg(long, value_name = "URL")]
    broker: Option<String>,
    /// PEM file of the CA that signs an mqtts:// broker's certificate [default: the
    /// system's root certificates]
    #[arg(long, value_name = "FILE")]
    broker_ca: Option<PathBuf>,
    /// This node's id; derived from DMI, machine-id or MAC when not set.
    #[arg(long, value_name = "ID")]
    node_id: Option<String>,
    /// Where the agent keeps its state [default: /var/lib/metalbus-agent]
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// The only directory job scripts are run from [default: /etc/metalbus/steps.d]
    #[arg(long, value_name = "DIR")]
    steps_dir: Option<PathBuf>,
    /// How often to publish metrics, e.g. 15s [default: 15s]
    #[arg(long, value_name = "DURATION", value_parser = metalbus_link::duration::parse)]
    metrics_interval: Option<Duration>,
    /// Send unreceipted reports again after this long [default: 5s]
    #[arg(long, value_name = "DURATION", value_parser = metalbus_link::duration::parse)]
    resend_after: Option<Duration>,
    /// MQTT topic prefix [default: metalbus/v1]
    #[arg(long, value_name = "PREFIX")]
    prefix: Option<String>,
    /// Read /sys, /proc and /etc under this directory instead of / [default: /]
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Log format [default: text]
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// Program and arguments run for a reboot command (no shell), e.g.
    /// `--reboot-command /usr/local/sbin/reboot-host --now` [default: systemctl reboot]
    #[arg(long, value_name = "ARGV", num_args = 1..)]
    reboot_command: Option<Vec<String>>,
    /// Program and arguments run for a poweroff command [default: systemctl poweroff]
    #[arg(long, value_name = "ARGV", num_args = 1..)]
    poweroff_command: Option<Vec<String>>,
    #[command(flatten)]
    enroll: EnrollArgs,
}

/// How an agent that is not enrolled yet gets its token (`run` and `simulate` alike).
#[derive(clap::Args)]
struct EnrollArgs {
    /// Enrollment token file (the controller's DATA_DIR/enroll.token, or one from
    /// `metalbus tokens create --enroll`). Needed only until the node is enrolled;
    /// `simulate` enrolls every virtual agent with it once.
    #[arg(long, value_name = "FILE")]
    enroll_token_file: Option<PathBuf>,
    /// Enrollment token (MB1:...). Prefer --enroll-token-file: a flag shows in `ps`.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "METALBUS_ENROLL_TOKEN",
        hide_env_values = true
    )]
    enroll_token: Option<String>,
}

#[derive(clap::Args)]
struct SimArgs {
    /// How many virtual agents.
    #[arg(long)]
    nodes: usize,
    /// MQTT broker, mqtt://HOST:PORT or mqtts://HOST:PORT
    #[arg(long, value_name = "URL")]
    broker: String,
    /// PEM file of the CA that signs an mqtts:// broker's certificate [default: the
    /// system's root certificates]
    #[arg(long, value_name = "FILE")]
    broker_ca: Option<PathBuf>,
    /// Metrics interval of every virtual agent.
    #[arg(long, value_name = "DURATION", value_parser = metalbus_link::duration::parse, default_value = "15s")]
    metrics_interval: Duration,
    /// Seed for the invented hosts.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Parent of the agents' state dirs (each agent's outbox lives there).
    #[arg(long, value_name = "DIR", default_value = "metalbus-sim")]
    state_dir: PathBuf,
    /// Node ids are PREFIX-0001, PREFIX-0002, ...
    #[arg(long, default_value = "sim")]
    prefix: String,
    /// Progress events each simulated install emits.
    #[arg(long, default_value_t = 50)]
    progress_events: u32,
    /// Pause between two progress events.
    #[arg(long, value_name = "DURATION", value_parser = metalbus_link::duration::parse, default_value = "100ms")]
    progress_every: Duration,
    /// Send unreceipted reports again after this long.
    #[arg(long, value_name = "DURATION", value_parser = metalbus_link::duration::parse, default_value = "5s")]
    resend_after: Duration,
    /// Write delivery counters per node (JSON) to this file, every second and at exit.
    #[arg(long, value_name = "FILE")]
    stats: Option<PathBuf>,
    /// MQTT topic prefix.
    #[arg(long, default_value = metalbus_protocol::DEFAULT_PREFIX)]
    topic_prefix: String,
    #[command(flatten)]
    enroll: EnrollArgs,
}

fn simulate(args: SimArgs) -> anyhow::Result<()> {
    metalbus_link::init_logging(LogFormat::Text, "info");
    metalbus_link::abort_on_panic();
    let agent = AgentConfig {
        broker: args.broker.parse()?,
        broker_ca: args.broker_ca,
        state_dir: args.state_dir,
        metrics_interval: args.metrics_interval,
        resend_after: args.resend_after,
        prefix: args.topic_prefix,
        // Virtual agents must never power off the machine that runs them.
        reboot_command: Vec::new(),
        poweroff_command: Vec::new(),
        enroll_token: args.enroll.enroll_token,
        enroll_token_file: args.enroll.enroll_token_file,
        ..AgentConfig::default()
    };
    metalbus_agent::config::check(&agent)?;
    let cfg = metalbus_agent::simulate::SimConfig {
        agent,
        nodes: args.nodes,
        prefix: args.prefix,
        seed: args.seed,
        progress_events: args.progress_events,
        progress_every: args.progress_every,
        stats: args.stats,
    };
    // Two descriptors per virtual agent (its connection and its outbox file).
    metalbus_link::files::ensure_open_files(
        2 * cfg.nodes as u64 + 64,
        "the open-file limit is below two per virtual agent: run several simulators",
    );
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(async move {
            let signal = metalbus_link::shutdown_signal();
            let (tx, rx) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                signal.await;
                let _ = tx.send(true);
            });
            metalbus_agent::simulate::run(cfg, rx).await
        })
}

impl RunArgs {
    fn resolve(self) -> anyhow::Result<AgentConfig> {
        let mut cfg = AgentConfig::default();
        let (path, required) = match &self.config {
            Some(p) => (p.clone(), true),
            None => (PathBuf::from(DEFAULT_CONFIG), false),
        };
        AgentFile::load(&path, required)?.apply(&mut cfg)?;
        // Flags are the last layer: the same keys as the file.
        AgentFile {
            broker: self.broker,
            broker_ca: self.broker_ca,
            node_id: self.node_id,
            state_dir: self.state_dir,
            steps_dir: self.steps_dir,
            metrics_interval: self.metrics_interval,
            resend_after: self.resend_after,
            prefix: self.prefix,
            root: self.root,
            log_format: self.log_format,
            reboot_command: self.reboot_command,
            poweroff_command: self.poweroff_command,
            enroll_token_file: self.enroll.enroll_token_file,
        }
        .apply(&mut cfg)?;
        if self.enroll.enroll_token.is_some() {
            cfg.enroll_token = self.enroll.enroll_token;
        }
        Ok(cfg)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Simulate(args) => simulate(args),
        Command::Inventory { root } => print_json(&inventory::collect(&root)),
        Command::Metrics { root } => {
            let mut collector = MetricsCollector::new(&root);
            std::thread::sleep(Duration::from_millis(500));
            print_json(&collector.sample(Timestamp::from(SystemTime::now())))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("metalbus-agent: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let cfg = args.resolve()?;
    metalbus_link::init_logging(cfg.log_format, "info");
    metalbus_link::abort_on_panic();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let signal = metalbus_link::shutdown_signal();
        let agent = Agent::prepare(cfg)?;
        // Under systemd with `WatchdogSec=`: fed only while the agent's task runs.
        metalbus_link::watchdog::feed(agent.progress(), "agent");
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            signal.await;
            let _ = tx.send(true);
        });
        // Ready: identity resolved, state dir loaded, collectors primed. The broker may be
        // down; the agent keeps trying, which is normal operation, not a start failure.
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        let result = agent.run(rx).await;
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        result
    })
}

/// The kept man pages and completions (`agent/debian/`) match this build's flags.
#[cfg(test)]
mod manuals {
    use clap::CommandFactory;
    use metalbus_manuals::Section;

    const SECTIONS: &[Section] = &[
        Section {
            title: "FILES",
            entries: &[
                (
                    "/etc/metalbus/agent.toml",
                    "The agent's configuration, read by `metalbus-agent run --config`: the broker's address above all. Unknown keys are an error.",
                ),
                (
                    "/etc/metalbus/enroll.token",
                    "The enrollment token (0600 root), needed only until the agent has enrolled. The unit does not start until it, or the node's credential, exists.",
                ),
                (
                    "/etc/metalbus/steps.d/",
                    "The only directory install steps are run from.",
                ),
                (
                    "/var/lib/metalbus-agent/",
                    "The state directory: credential.json (the node key, 0600) and agent.redb (the outbox of reports not yet receipted, and the running job).",
                ),
            ],
        },
        Section {
            title: "ENVIRONMENT",
            entries: &[
                ("METALBUS_ENROLL_TOKEN", "The enrollment token, instead of a file."),
                ("METALBUS_LOG", "The log level filter, for example debug."),
            ],
        },
        Section {
            title: "SEE ALSO",
            entries: &[(
                "",
                "metalbus(1), systemctl(1); /usr/share/doc/metalbus-agent/ for the step scripts' contract.",
            )],
        },
    ];

    #[test]
    fn man_pages_and_completions_are_current() {
        metalbus_manuals::assert_current(
            super::Cli::command(),
            SECTIONS,
            env!("CARGO_MANIFEST_DIR"),
        );
    }
}
