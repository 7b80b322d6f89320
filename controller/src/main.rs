//! `metalbus`: the controller daemon (`serve`) and the operator CLI. Flag parsing and
//! dispatch only.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use metalbus::cli::campaigns::CampaignsCommand;
use metalbus::cli::{self, ClientArgs, NodesCommand, TokensCommand};
use metalbus::config::{BrokerSection, ControllerConfig, ControllerFile, HttpSection, MqttSection};
use metalbus_link::LogFormat;

/// Metalbus: bare-metal host lifecycle. `serve` runs the controller; the other commands
/// talk to its HTTP API.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller: embedded MQTT broker, store, HTTP API.
    Serve(ServeArgs),
    /// Inspect and manage nodes.
    Nodes {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: NodesCommand,
    },
    /// Print a Mosquitto ACL file confining each node to its own topics (for an
    /// external broker).
    MqttAcl {
        /// MQTT topic prefix.
        #[arg(long, default_value = metalbus_protocol::DEFAULT_PREFIX)]
        prefix: String,
    },
    /// Print the mosquitto.conf lines for an external Mosquitto whose logins bind each
    /// client to its node: the controller keeps the password and ACL files in
    /// [broker] mosquitto_dir.
    MosquittoConfig {
        /// The controller's [broker] mosquitto_dir.
        #[arg(
            long,
            value_name = "DIR",
            default_value = "/var/lib/metalbus/mosquitto"
        )]
        dir: PathBuf,
    },
    /// Take a consistent copy of the whole store while the controller runs (admin
    /// token): nodes, history, events, commands, tokens, metrics history. Written to
    /// FILE (a new file, mode 0600) whole or not at all.
    Backup {
        #[command(flatten)]
        client: ClientArgs,
        /// Where to write the backup: a new file, or a directory (the file is then
        /// named after the time, metalbus-YYYYMMDDTHHMMSSZ.redb).
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Put a backup in place of the store in DIR. Stop the controller first; the store
    /// it replaces is kept as metalbus.redb.before-restore.
    Restore {
        /// The backup, from `metalbus backup`.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// The controller's data directory.
        #[arg(long, value_name = "DIR", default_value = "metalbus-data")]
        data_dir: PathBuf,
    },
    /// Run one action over many nodes (a campaign), with a rollout limit and abort
    /// rules; follow, pause, resume or cancel it.
    Campaigns {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: CampaignsCommand,
    },
    /// Manage API and enrollment tokens.
    Tokens {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: TokensCommand,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Config file (TOML).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory [default: ./metalbus-data]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Embedded MQTT broker address [default: 127.0.0.1:1883]
    #[arg(long, value_name = "ADDR")]
    mqtt_listen: Option<SocketAddr>,
    /// Use this external MQTT broker (mqtt://HOST:PORT or mqtts://HOST:PORT) instead of
    /// the embedded one.
    #[arg(long, value_name = "URL")]
    broker: Option<String>,
    /// PEM file of the CA that signs the external mqtts:// broker's certificate
    /// [default: the system's root certificates]
    #[arg(long, value_name = "FILE")]
    broker_ca: Option<PathBuf>,
    /// HTTP API address [default: 127.0.0.1:8088]
    #[arg(long, value_name = "ADDR")]
    http_listen: Option<SocketAddr>,
    /// Also run an agent for this host, so the controller manages its own machine.
    #[arg(long)]
    local_agent: bool,
    /// Serve the embedded broker over TLS (mqtts), with the [tls] certificate or one
    /// the controller issues from its own CA (DATA_DIR/tls/ca.pem).
    #[arg(long)]
    mqtt_tls: bool,
    /// Serve the HTTP API over TLS (https), with the same certificate.
    #[arg(long)]
    http_tls: bool,
    /// Allow a plain listener on a non-loopback address (anyone on the network can read
    /// it; a warning is logged at every start).
    #[arg(long)]
    insecure_plain: bool,
    /// Log format [default: text]
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
}

impl ServeArgs {
    fn resolve(self) -> anyhow::Result<ControllerConfig> {
        let mut cfg = ControllerConfig::default();
        if let Some(path) = &self.config {
            ControllerFile::load(path)?.apply(&mut cfg)?;
        }
        // Flags are the last layer: the same keys as the file.
        ControllerFile {
            data_dir: self.data_dir,
            log_format: self.log_format,
            mqtt: MqttSection {
                listen: self.mqtt_listen,
                prefix: None,
                tls: self.mqtt_tls.then_some(true),
                max_connections: None,
                max_monitors: None,
            },
            http: HttpSection {
                listen: self.http_listen,
                tls: self.http_tls.then_some(true),
                max_connections: None,
                max_event_streams: None,
            },
            broker: BrokerSection {
                url: self.broker,
                ca_file: self.broker_ca,
                mosquitto_dir: None,
                reload_command: None,
            },
            enroll: Default::default(),
            lifecycle: None,
            plans: None,
            events: None,
            wake: None,
            tls: None,
        }
        .apply(&mut cfg)?;
        cfg.local_agent = self.local_agent;
        cfg.insecure_plain = self.insecure_plain;
        Ok(cfg)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => match serve(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("metalbus: error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Nodes { client, command } => client_command(cli::nodes(client, command)),
        Command::Tokens { client, command } => client_command(cli::tokens(client, command)),
        Command::Campaigns { client, command } => {
            client_command(cli::campaigns::run(client, command))
        }
        Command::Backup { client, file } => client_command(cli::backup(client, file)),
        Command::Restore { file, data_dir } => {
            finish(metalbus::cli::backup::restore(&file, &data_dir))
        }
        Command::MosquittoConfig { dir } => {
            print!("{}", metalbus::mosquitto::config_text(&dir));
            ExitCode::SUCCESS
        }
        Command::MqttAcl { prefix } => match metalbus_protocol::topic::Topics::new(prefix) {
            Ok(topics) => {
                print!("{}", metalbus::acl::mosquitto_acl(&topics));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("metalbus: error: {e}");
                ExitCode::from(2)
            }
        },
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn client_command(
    fut: impl std::future::Future<Output = Result<String, cli::client::ClientError>>,
) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("metalbus: error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    finish(rt.block_on(fut))
}

/// Prints a client command's output, or its error on one line, and gives its exit code.
fn finish(result: Result<String, cli::client::ClientError>) -> ExitCode {
    match result {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("metalbus: error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let cfg = args.resolve()?;
    metalbus_link::init_logging(cfg.log_format, "info,rumqttd=off");
    metalbus_link::abort_on_panic();
    // The embedded broker holds a descriptor per connected client.
    let clients = if cfg.broker.is_none() {
        cfg.mqtt_max_connections as u64
    } else {
        0
    };
    metalbus_link::files::ensure_open_files(
        clients,
        "the open-file limit is below [mqtt] max_connections (LimitNOFILE= in the unit)",
    );
    runtime()?.block_on(async move {
        let signal = metalbus_link::shutdown_signal();
        let shutdown = async move {
            signal.await;
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        };
        metalbus::serve::run(cfg, shutdown, || {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        })
        .await
    })
}

/// The kept man pages and completions (`controller/debian/`) match this build's flags.
/// Built with the default features, as the package is (`--local-agent` included).
#[cfg(all(test, feature = "local-agent"))]
mod manuals {
    use clap::CommandFactory;
    use metalbus_manuals::Section;

    const SECTIONS: &[Section] = &[
        Section {
            title: "FILES",
            entries: &[
                (
                    "/etc/metalbus/controller.toml",
                    "The controller's configuration, read by `metalbus serve --config`. Unknown keys are an error.",
                ),
                (
                    "/var/lib/metalbus/",
                    "The data directory: the redb store (metalbus.redb), admin.token, enroll.token and identity.key (all 0600), and tls/ca.pem, the CA certificate clients check the controller's TLS with.",
                ),
                (
                    "/var/lib/metalbus-backups/",
                    "Where metalbus-backup.service (started nightly by metalbus-backup.timer, when enabled) writes its backups.",
                ),
                (
                    "/usr/share/metalbus/monitoring/",
                    "Prometheus alerting rules and a Grafana dashboard for the controller's /metrics.",
                ),
            ],
        },
        Section {
            title: "ENVIRONMENT",
            entries: &[
                ("METALBUS_API", "The API address for client commands (default http://127.0.0.1:8088)."),
                (
                    "METALBUS_TOKEN",
                    "The API token for client commands. Without it and --token, ./metalbus-data/admin.token, then /var/lib/metalbus/admin.token.",
                ),
                ("METALBUS_CA", "The CA certificate that signs an https:// API's certificate."),
                ("METALBUS_LOG", "The log level filter, for example debug."),
                ("NO_COLOR", "Set: no colour, even on a terminal."),
            ],
        },
        Section {
            title: "EXIT STATUS",
            entries: &[
                ("0", "Success."),
                ("1", "Failure (the controller could not start, or the API failed)."),
                ("2", "Usage: a bad flag, or no token."),
                ("3", "Not found."),
                ("4", "Refused by the API."),
                ("5", "The API cannot be reached."),
                ("6", "An awaited operation failed (--wait)."),
                ("7", "Waiting timed out."),
            ],
        },
        Section {
            title: "SEE ALSO",
            entries: &[(
                "",
                "metalbus-agent(1), systemctl(1); /usr/share/doc/metalbus/OPERATIONS.md for installing, enrolling hosts, backups, upgrades and alerts.",
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
