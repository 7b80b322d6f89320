//! The operator CLI (`metalbus nodes ...`). It talks to the HTTP API only, never to the
//! store (DESIGN section 1).

pub mod backup;
pub mod campaigns;
pub mod chart;
pub mod client;
pub mod render;
pub mod watch;

use std::path::PathBuf;
use std::time::SystemTime;

use clap::{Args, Subcommand, ValueEnum};
use metalbus_protocol::api::{
    Changed, Data, History, MetricsPeriod, NodeMetrics, NodeRevoked, NodeView, Operation,
    OperationStarted, Registered, RetryResponse, Role, TokenCreated, TokenKind, TokenRequest,
    TokenView,
};
use metalbus_protocol::event::Events;
use metalbus_protocol::lifecycle::NodeState;
use metalbus_protocol::Timestamp;

use client::{
    encode_path_segment, find_token, node_path, token_files, ApiClient, ClientError, Method,
};

/// Flags every client command takes.
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// Base URL of the Metalbus API.
    #[arg(
        long,
        global = true,
        env = "METALBUS_API",
        default_value = "http://127.0.0.1:8088"
    )]
    pub api: String,
    /// API token. Default: METALBUS_TOKEN, then ./metalbus-data/admin.token, then
    /// /var/lib/metalbus/admin.token.
    #[arg(long, global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// PEM CA certificate that signs an https:// API's certificate. Default: METALBUS_CA,
    /// then ./metalbus-data/tls/ca.pem, then /var/lib/metalbus/tls/ca.pem (the
    /// controller's own CA), then the system's roots.
    #[arg(long, global = true, value_name = "FILE", env = "METALBUS_CA")]
    pub ca: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum, Default, PartialEq, Eq)]
pub enum Output {
    /// Aligned text for people.
    #[default]
    Table,
    /// JSON for scripts.
    Json,
}

#[derive(Subcommand, Debug)]
pub enum NodesCommand {
    /// List nodes (all pages), by name; every filter given must match.
    List {
        /// Only nodes in this state, or these states separated by commas
        /// (e.g. installing,pending).
        #[arg(long)]
        state: Option<String>,
        /// Only nodes in this phase (e.g. Managed, ManagedFailed).
        #[arg(long)]
        phase: Option<String>,
        /// Only online nodes (`--online true`) or offline ones (`--online false`).
        #[arg(long)]
        online: Option<bool>,
        /// Only nodes whose name, hostname, id, a MAC or an IP contains this text.
        #[arg(long)]
        search: Option<String>,
        /// Only nodes with this label, KEY=VALUE or just KEY; repeat for more.
        #[arg(long = "label", value_name = "KEY[=VALUE]")]
        labels: Vec<String>,
        /// Only nodes in this group.
        #[arg(long)]
        group: Option<String>,
        /// How to print the result.
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Output,
    },
    /// Follow state and progress changes live (from the API's event stream), starting
    /// with the current table; with -o json, one JSON object per line. Runs until
    /// interrupted.
    Watch {
        /// Only these nodes (ids or names); all nodes when none are given.
        nodes: Vec<String>,
        /// How to print the result.
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Output,
    },
    /// Show one node, by id or name, with the progress of a running job.
    Show {
        node: String,
        /// How to print the result.
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Output,
    },
    /// Pre-register a node before its agent runs: the first new agent that matches
    /// (by MAC, then IP, then hostname prefix) takes its name, labels and group.
    Register {
        /// The node's name.
        name: String,
        /// A MAC address of one of its NICs (aa:bb:cc:dd:ee:ff).
        #[arg(long)]
        mac: Option<String>,
        /// One of its IP addresses.
        #[arg(long)]
        ip: Option<String>,
        /// Its hostname, or a prefix of it (`web` matches `web-01`, not `webby`).
        #[arg(long)]
        hostname: Option<String>,
        /// A label, KEY=VALUE; repeat for more.
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// The group it belongs to.
        #[arg(long)]
        group: Option<String>,
        /// Also print a one-use enrollment token for exactly this host (admin): the
        /// agent that enrolls with it claims this registration.
        #[arg(long)]
        enroll_token: bool,
        /// How to print the result.
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Output,
    },
    /// Install a discovered node with a plan (the default plan if none is named).
    Manage {
        node: String,
        /// The plan to install with (`demo`, or one of the controller's [plans]).
        #[arg(long)]
        plan: Option<String>,
        /// How to print the result.
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Output,
    },
    /// Deprovision an installed or active node; it returns to `discovered`.
    Unmanage {
        node: String,
        /// How to print the result.
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Output,
    },
    /// Revoke a node's credential (admin): its agent is disconnected at once and must
    /// enroll again with a token made after this.
    Revoke {
        node: String,
        /// How to print the result.
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Output,
    },
    /// Retry a failed install or deprovision (install_failed / deprovision_failed).
    Retry {
        node: String,
        /// How to print the result.
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Output,
    },
    /// Deprovision and retire a node; with --force, retire it at once.
    Retire {
        node: String,
        /// Retire at once, without deprovisioning (admin only).
        #[arg(long)]
        force: bool,
        /// How to print the result.
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Output,
    },
    /// Move a node to STATE (any admin transition of docs/LIFECYCLE.md).
    Transition {
        node: String,
        state: String,
        /// Why: kept in the node's history with the transition.
        #[arg(long)]
        comment: Option<String>,
        /// Reset the counters and allow overrides (admin only).
        #[arg(long)]
        force: bool,
        /// How to print the result.
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Output,
    },
    /// Reboot a node: its agent runs its `reboot_command`. Prints the operation id.
    Reboot(OperationArgs),
    /// Power a node off: its agent runs its `poweroff_command`.
    Poweroff(OperationArgs),
    /// Send Wake-on-LAN packets to a node's MAC addresses.
    Wake(OperationArgs),
    /// A node's state changes, newest first.
    History {
        node: String,
        /// At most this many entries, newest first.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Skip this many of the newest entries first (paging).
        #[arg(long, default_value_t = 0)]
        offset: u64,
        /// How to print the result.
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Output,
    },
    /// A node's events (online, offline, install progress, warnings), newest first;
    /// repeats are counted, not listed again.
    Events {
        node: String,
        /// Only Normal or only Warning events.
        #[arg(long = "type", value_name = "TYPE")]
        kind: Option<String>,
        /// Only events from `controller` or `agent`.
        #[arg(long)]
        source: Option<String>,
        /// Only events seen within this long (e.g. 30m, 1h, 7d) or since an RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// At most this many events.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// How to print the result.
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Output,
    },
    /// A node's cpu, memory, storage and network over a period: current, average and
    /// peak, with a sparkline.
    Metrics {
        node: String,
        /// 5m, 1h, 6h, 24h or 7d.
        #[arg(long, default_value = "1h", value_parser = str::parse::<MetricsPeriod>)]
        period: MetricsPeriod,
        /// How to print the result.
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Output,
    },
}

/// `nodes reboot|poweroff|wake NODE`.
#[derive(Args, Debug)]
pub struct OperationArgs {
    node: String,
    /// Wait until the operation succeeds or fails (exit 6 when it fails or expires).
    #[arg(long)]
    wait: bool,
    /// Give up waiting after this long, e.g. 30s or 5m (exit 7).
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = metalbus_link::duration::parse)]
    timeout: std::time::Duration,
    /// How to print the result.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Output,
}

#[derive(Subcommand, Debug)]
pub enum TokensCommand {
    /// Create a token; it is printed once. An API token (--role) is stored as a hash; an
    /// enrollment token (--enroll) lets agents enroll (metalbus-agent run
    /// --enroll-token-file FILE), limited by --ttl, --uses and --node.
    Create {
        /// Unique among all tokens. For --enroll: lower-case letters, digits, . _ -
        #[arg(long)]
        name: String,
        /// viewer (reads), operator (manage, retry, ...), or admin (everything).
        #[arg(long, value_parser = str::parse::<Role>, required_unless_present = "enroll", conflicts_with = "enroll")]
        role: Option<Role>,
        /// An enrollment token instead of an API token.
        #[arg(long)]
        enroll: bool,
        /// How long the enrollment token is valid, e.g. 24h [default: forever]
        #[arg(long, value_name = "DURATION", requires = "enroll", value_parser = metalbus_link::duration::parse)]
        ttl: Option<std::time::Duration>,
        /// How many nodes the enrollment token may enroll [default: unlimited]
        #[arg(long, value_name = "N", requires = "enroll")]
        uses: Option<u32>,
        /// The one node id the enrollment token may enroll.
        #[arg(long, value_name = "NODE_ID", requires = "enroll")]
        node: Option<String>,
        /// How to print the result.
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Output,
    },
    /// List API and enrollment tokens (never their secrets).
    List {
        /// How to print the result.
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Output,
    },
    /// Revoke a token by name: it stops working at once.
    Revoke { name: String },
}

/// Runs a `tokens` subcommand.
pub async fn tokens(args: ClientArgs, cmd: TokensCommand) -> Result<String, ClientError> {
    let api = connect(args)?;
    match cmd {
        TokensCommand::Create {
            name,
            role,
            enroll,
            ttl,
            uses,
            node,
            output,
        } => {
            let body = serde_json::to_value(TokenRequest {
                name,
                role,
                kind: enroll.then_some(TokenKind::Enroll),
                ttl_s: ttl.map(|t| t.as_secs().max(1)),
                uses,
                node,
            })
            .map_err(|e| ClientError::Usage(e.to_string()))?;
            let created: Data<TokenCreated> = api
                .send(Method::POST, "/api/v1/tokens", &[], Some(body))
                .await?;
            Ok(match output {
                Output::Table => format!("{}\n", created.data.token),
                Output::Json => json(&created.data),
            })
        }
        TokensCommand::List { output } => {
            let list: Data<Vec<TokenView>> = api.get("/api/v1/tokens", &[]).await?;
            Ok(match output {
                Output::Table => {
                    render::tokens(&list.data, Timestamp::from(std::time::SystemTime::now()))
                }
                Output::Json => json(&list.data),
            })
        }
        TokensCommand::Revoke { name } => {
            let path = format!("/api/v1/tokens/{}", encode_path_segment(&name));
            let () = api.send(Method::DELETE, &path, &[], None).await?;
            Ok(format!("token {name} revoked\n"))
        }
    }
}

fn connect(args: ClientArgs) -> Result<ApiClient, ClientError> {
    let token = find_token(
        args.token,
        std::env::var("METALBUS_TOKEN").ok(),
        &token_files(),
    )?;
    ApiClient::new(&args.api, token, args.ca.as_deref())
}

/// Prints a changed node: its message, or the JSON of the node.
fn changed(c: Changed<NodeView>, output: Output) -> String {
    match output {
        Output::Table => format!("{}: {}\n", c.data.name, c.message),
        Output::Json => json(&c.data),
    }
}

/// Runs a `nodes` subcommand; returns what to print.
pub async fn nodes(args: ClientArgs, cmd: NodesCommand) -> Result<String, ClientError> {
    let api = connect(args)?;
    let now = Timestamp::from(SystemTime::now());
    match cmd {
        NodesCommand::List {
            state,
            phase,
            online,
            search,
            labels,
            group,
            output,
        } => {
            let mut q: Vec<(&str, String)> = Vec::new();
            q.extend(state.map(|s| ("state", s)));
            q.extend(phase.map(|s| ("phase", s)));
            q.extend(online.map(|o| ("online", o.to_string())));
            q.extend(search.map(|s| ("search", s)));
            if !labels.is_empty() {
                q.push(("label", labels.join(",")));
            }
            q.extend(group.map(|s| ("group", s)));
            let nodes = api.all_nodes(&q).await?;
            Ok(match output {
                Output::Table => render::node_table(&nodes, now),
                Output::Json => json(&nodes),
            })
        }
        NodesCommand::Watch { nodes, output } => watch::run(&api, output, nodes).await,
        NodesCommand::Show { node, output } => {
            let n = api.node(&node).await?;
            Ok(match output {
                Output::Table => render::node_detail(&n, now),
                Output::Json => json(&n),
            })
        }
        NodesCommand::Register {
            name,
            mac,
            ip,
            hostname,
            labels,
            group,
            enroll_token,
            output,
        } => {
            let labels: std::collections::BTreeMap<String, String> = labels.into_iter().collect();
            let body = serde_json::json!({
                "name": name, "mac": mac, "ip": ip, "hostname": hostname,
                "labels": labels, "group": group, "enroll_token": enroll_token,
            });
            let d: Registered = api
                .send(Method::POST, "/api/v1/nodes", &[], Some(body))
                .await?;
            Ok(match output {
                Output::Table => {
                    let mut out = format!(
                        "{}: registered as {} (state {}); waiting for its agent\n",
                        d.data.name, d.data.id, d.data.state
                    );
                    if let Some(token) = &d.enroll_token {
                        out.push_str(&format!(
                            "enrollment token for this host only (one use):\n{token}\n"
                        ));
                    }
                    out
                }
                Output::Json => json(&d),
            })
        }
        NodesCommand::Manage { node, plan, output } => {
            let body = serde_json::json!({ "plan": plan });
            let c: Changed<NodeView> = api
                .send(Method::POST, &node_path(&node, "/manage"), &[], Some(body))
                .await?;
            Ok(changed(c, output))
        }
        NodesCommand::Unmanage { node, output } => {
            let c: Changed<NodeView> = api
                .send(Method::POST, &node_path(&node, "/unmanage"), &[], None)
                .await?;
            Ok(changed(c, output))
        }
        NodesCommand::Revoke { node, output } => {
            let r: Data<NodeRevoked> = api
                .send(Method::POST, &node_path(&node, "/revoke"), &[], None)
                .await?;
            Ok(match output {
                Output::Table => format!("{}\n", r.data.message),
                Output::Json => json(&r.data),
            })
        }
        NodesCommand::Retry { node, output } => {
            let r: RetryResponse = api
                .send(Method::POST, &node_path(&node, "/retry"), &[], None)
                .await?;
            Ok(match output {
                Output::Table => format!(
                    "{}: {} ({} -> {}, {} -> {})\n",
                    r.node_id,
                    r.message,
                    r.previous_state,
                    r.current_state,
                    r.previous_phase,
                    r.current_phase
                ),
                Output::Json => json(&r),
            })
        }
        NodesCommand::Retire {
            node,
            force,
            output,
        } => {
            let q = [("force", force.to_string())];
            let c: Changed<NodeView> = api
                .send(Method::DELETE, &node_path(&node, ""), &q, None)
                .await?;
            Ok(changed(c, output))
        }
        NodesCommand::Transition {
            node,
            state,
            comment,
            force,
            output,
        } => {
            let state: NodeState = state.parse().map_err(ClientError::Usage)?;
            let body = serde_json::json!({ "state": state, "comment": comment, "force": force });
            let c: Changed<NodeView> = api
                .send(Method::PATCH, &node_path(&node, "/state"), &[], Some(body))
                .await?;
            Ok(changed(c, output))
        }
        NodesCommand::Events {
            node,
            kind,
            source,
            since,
            limit,
            output,
        } => {
            let mut q = vec![("limit", limit.to_string())];
            q.extend(kind.map(|k| ("type", k)));
            q.extend(source.map(|s| ("source", s)));
            q.extend(since.map(|s| ("since", s)));
            let e: Events = api
                .send(Method::GET, &node_path(&node, "/events"), &q, None)
                .await?;
            Ok(match output {
                Output::Table => render::events(&e, now),
                Output::Json => json(&e),
            })
        }
        NodesCommand::Reboot(args) => operation(&api, "reboot", args).await,
        NodesCommand::Poweroff(args) => operation(&api, "poweroff", args).await,
        NodesCommand::Wake(args) => operation(&api, "wake", args).await,
        NodesCommand::Metrics {
            node,
            period,
            output,
        } => {
            let q = [("period", period.to_string())];
            let m: Data<NodeMetrics> = api
                .send(Method::GET, &node_path(&node, "/metrics"), &q, None)
                .await?;
            Ok(match output {
                Output::Table => chart::metrics(&m.data, now),
                Output::Json => json(&m),
            })
        }
        NodesCommand::History {
            node,
            limit,
            offset,
            output,
        } => {
            let q = [("limit", limit.to_string()), ("offset", offset.to_string())];
            let h: History = api
                .send(Method::GET, &node_path(&node, "/history"), &q, None)
                .await?;
            Ok(match output {
                Output::Table => render::history(&h, now),
                Output::Json => json(&h),
            })
        }
    }
}

/// Starts `what` (reboot, poweroff, wake) on a node; with `--wait`, polls the operation
/// until it reaches a final status.
async fn operation(
    api: &ApiClient,
    what: &str,
    args: OperationArgs,
) -> Result<String, ClientError> {
    let started: Data<OperationStarted> = api
        .send(
            Method::POST,
            &node_path(&args.node, &format!("/{what}")),
            &[],
            None,
        )
        .await?;
    let started = started.data;
    if !args.wait {
        return Ok(match args.output {
            Output::Table => format!(
                "{}: {what} operation {} {}\n",
                args.node, started.operation_id, started.status
            ),
            Output::Json => json(&started),
        });
    }
    let path = format!("/api/v1/operations/{}", started.operation_id);
    let deadline = std::time::Instant::now() + args.timeout;
    loop {
        let op: Data<Operation> = api.send(Method::GET, &path, &[], None).await?;
        let op = op.data;
        let line = || {
            format!(
                "{}: {what} operation {} {}{}",
                args.node,
                op.id,
                op.status,
                op.reason
                    .as_deref()
                    .map(|r| format!(": {}", render::clean(r)))
                    .unwrap_or_default()
            )
        };
        match op.status.outcome() {
            Some(true) => {
                return Ok(match args.output {
                    Output::Table => format!("{}\n", line()),
                    Output::Json => json(&op),
                })
            }
            Some(false) => return Err(ClientError::OperationFailed(line())),
            None => {}
        }
        if std::time::Instant::now() >= deadline {
            return Err(ClientError::WaitTimedOut(format!(
                "{} after waiting {}",
                line(),
                humantime::format_duration(args.timeout)
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("label {s:?} must be KEY=VALUE"))
}

fn json(v: &impl serde::Serialize) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s
}

/// `metalbus backup FILE`.
pub async fn backup(args: ClientArgs, file: std::path::PathBuf) -> Result<String, ClientError> {
    backup::backup(connect(args)?, file).await
}
