//! The operator CLI (`metalbus nodes ...`). It talks to the HTTP API only, never to the
//! store (DESIGN section 1).

pub mod client;
pub mod render;

use std::time::SystemTime;

use clap::{Args, Subcommand, ValueEnum};
use metalbus_protocol::Timestamp;

use client::{find_token, token_files, ApiClient, ClientError};

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
    /// List nodes (all pages).
    List {
        /// Only nodes in this state (e.g. discovered, installing, active).
        #[arg(long)]
        state: Option<String>,
        /// Only nodes whose name, id or hostname contains this text.
        #[arg(long)]
        search: Option<String>,
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Output,
    },
    /// Show one node, by id or name.
    Show {
        node: String,
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Output,
    },
}

/// Runs a `nodes` subcommand; returns what to print.
pub async fn nodes(args: ClientArgs, cmd: NodesCommand) -> Result<String, ClientError> {
    let token = find_token(
        args.token,
        std::env::var("METALBUS_TOKEN").ok(),
        &token_files(),
    )?;
    let api = ApiClient::new(&args.api, token)?;
    let now = Timestamp::from(SystemTime::now());
    match cmd {
        NodesCommand::List {
            state,
            search,
            output,
        } => {
            let nodes = api.all_nodes(state.as_deref(), search.as_deref()).await?;
            Ok(match output {
                Output::Table => render::node_table(&nodes, now),
                Output::Json => json(&nodes),
            })
        }
        NodesCommand::Show { node, output } => {
            let n = api.node(&node).await?;
            Ok(match output {
                Output::Table => render::node_detail(&n, now),
                Output::Json => json(&n),
            })
        }
    }
}

fn json(v: &impl serde::Serialize) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s
}
