//! `metalbus campaigns ...`: start one action over many nodes, follow it to its end,
//! list, show, pause, resume or cancel it. Building the request, judging a polled
//! campaign and drawing its progress are pure functions; the loop around them does the
//! HTTP and the writing.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant, SystemTime};

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Subcommand};
use metalbus_protocol::api::{Data, Page};
use metalbus_protocol::campaign::{
    AbortRules, CampaignAction, CampaignCounts, CampaignDetail, CampaignRequest, CampaignState,
    CampaignView, CampaignWithNodes, Outcome, Selector,
};
use metalbus_protocol::lifecycle::NodeState;
use metalbus_protocol::Timestamp;

use super::client::{encode_path_segment, ApiClient, ClientError, Method};
use metalbus_protocol::campaign::ABORT_RULE;

use super::{connect, json, render, Output};

/// How often `--wait` asks for the campaign.
const POLL: Duration = Duration::from_secs(1);
/// The width of the progress bar, in characters.
const BAR: usize = 20;

#[derive(Subcommand, Debug)]
pub enum CampaignsCommand {
    /// Start a campaign: one action over the nodes a selector picks, at most
    /// --max-concurrent in flight at once; an abort rule pauses it when too many fail.
    /// Prints the campaign, or with --wait follows it to its end.
    Create(CreateArgs),
    /// List campaigns (all pages), newest first.
    List {
        /// How to print the result.
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Output,
    },
    /// Show a campaign: its action, state, counts, selector and rollout, then the
    /// outcome of each of its nodes.
    Show {
        /// The campaign's id.
        #[arg(value_name = "ID")]
        id: String,
        /// Only the nodes with this outcome.
        #[arg(long, value_parser = one_of::<Outcome>(Outcome::ALL.map(Outcome::as_str)))]
        outcome: Option<Outcome>,
        /// How to print the result.
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Output,
    },
    /// Pause a running campaign: no node starts; those in flight finish.
    Pause(IdArgs),
    /// Resume a paused campaign; its abort rules count again from here.
    Resume(IdArgs),
    /// Cancel a campaign: no node starts any more; those in flight finish. A campaign
    /// an abort rule paused ends `aborted`, any other `cancelled`.
    Cancel(IdArgs),
}

/// `campaigns pause|resume|cancel ID`.
#[derive(Args, Debug)]
pub struct IdArgs {
    /// The campaign's id.
    #[arg(value_name = "ID")]
    id: String,
    /// How to print the result.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Output,
}

/// `campaigns create`: the action, the selector (filters, all of which must match, or
/// --node names), the rollout and the abort rules.
#[derive(Args, Debug)]
pub struct CreateArgs {
    /// What to do to each node.
    #[arg(long, value_parser = one_of::<CampaignAction>(CampaignAction::ALL.map(CampaignAction::as_str)))]
    action: CampaignAction,
    /// For --action manage: the plan to install with [default: the controller's
    /// default plan]
    #[arg(long)]
    plan: Option<String>,
    /// Only nodes with this label, KEY=VALUE or just KEY; repeat (or separate with
    /// commas) for more, all of which must match.
    #[arg(long = "label", value_name = "KEY[=VALUE]", value_delimiter = ',', value_parser = selector_label)]
    labels: Vec<String>,
    /// Only nodes in this state; repeat (or separate with commas) for any of several.
    #[arg(long = "state", value_name = "STATE", value_delimiter = ',', value_parser = one_of::<NodeState>(NodeState::ALL.map(NodeState::as_str)))]
    states: Vec<NodeState>,
    /// Only nodes in this group.
    #[arg(long)]
    group: Option<String>,
    /// Only nodes whose name, hostname, id, a MAC or an IP contains this text.
    #[arg(long)]
    search: Option<String>,
    /// Only online nodes (`--online true`) or offline ones (`--online false`).
    #[arg(long)]
    online: Option<bool>,
    /// This node, by name or id, instead of the filters; repeat for more.
    #[arg(long = "node", value_name = "NAME")]
    nodes: Vec<String>,
    /// At most this many nodes in flight at once.
    #[arg(long, value_name = "N")]
    max_concurrent: u32,
    /// At most this many nodes started in any minute [default: no limit]
    #[arg(long, value_name = "M")]
    max_per_minute: Option<u32>,
    /// Abort rule: pause when at least this share of the finished nodes failed (more
    /// than 0, at most 1; e.g. 0.2), once --abort-min-executed nodes have finished.
    #[arg(long, value_name = "R")]
    abort_failure_ratio: Option<f64>,
    /// For --abort-failure-ratio: judge the share only once this many nodes have
    /// finished [default: 1]
    #[arg(long, value_name = "N")]
    abort_min_executed: Option<u32>,
    /// Abort rule: pause when this many nodes have failed.
    #[arg(long, value_name = "N")]
    abort_max_failures: Option<u32>,
    /// With --action reprovision: force it, as `nodes transition --force` does (admin
    /// only).
    #[arg(long)]
    force: bool,
    /// Follow the campaign until it ends: exit 0 when it completes, 6 when it is
    /// aborted, cancelled or paused by an abort rule.
    #[arg(long)]
    wait: bool,
    /// Give up waiting after this long, e.g. 30m or 2h (exit 7); the campaign runs on.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = metalbus_link::duration::parse)]
    timeout: Duration,
    /// How to print the result.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Output,
}

impl CreateArgs {
    /// The request the flags ask for. Whether its parts go together (--plan with an
    /// action other than manage, filters with --node) is the API's to judge.
    pub fn request(&self) -> CampaignRequest {
        CampaignRequest {
            action: self.action,
            plan: self.plan.clone(),
            selector: Selector {
                label: self.labels.clone(),
                state: self.states.clone(),
                group: self.group.clone(),
                search: self.search.clone(),
                online: self.online,
                nodes: self.nodes.clone(),
            },
            max_concurrent: Some(self.max_concurrent),
            max_per_minute: self.max_per_minute,
            abort: AbortRules {
                failure_ratio: self.abort_failure_ratio,
                min_executed: self.abort_min_executed,
                max_failures: self.abort_max_failures,
            },
            force: self.force,
        }
    }
}

/// A flag value that must be one of `names`, parsed by its `FromStr`; the names show in
/// the help and the completions.
fn one_of<T>(names: impl IntoIterator<Item = &'static str>) -> impl TypedValueParser<Value = T>
where
    T: std::str::FromStr<Err = String> + Clone + Send + Sync + 'static,
{
    PossibleValuesParser::new(names).try_map(|s| s.parse::<T>())
}

/// A selector label, `key=value` or `key`, trimmed as the API trims label filters.
fn selector_label(s: &str) -> Result<String, String> {
    Ok(match metalbus_protocol::api::parse_label_filter(s)? {
        (k, Some(v)) => format!("{k}={v}"),
        (k, None) => k,
    })
}

/// What a polled campaign means for `--wait`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Still going, or paused by hand (it may be resumed).
    KeepWaiting,
    /// It completed: every node succeeded, failed or was skipped.
    Completed,
    /// It was aborted or cancelled, or an abort rule paused it.
    Failed,
}

pub fn verdict(state: CampaignState, reason: Option<&str>) -> Verdict {
    match state {
        CampaignState::Running => Verdict::KeepWaiting,
        CampaignState::Paused if reason.is_some_and(|r| r.starts_with(ABORT_RULE)) => {
            Verdict::Failed
        }
        CampaignState::Paused => Verdict::KeepWaiting,
        CampaignState::Completed => Verdict::Completed,
        CampaignState::Aborted | CampaignState::Cancelled => Verdict::Failed,
    }
}

/// `37/150 done, 2 failed, 1 skipped, 20 in flight (running)`.
pub fn progress_text(c: &CampaignCounts, state: CampaignState) -> String {
    format!(
        "{}/{} done, {} failed, {} skipped, {} in flight ({state})",
        c.done(),
        c.total,
        c.failed,
        c.skipped,
        c.in_flight
    )
}

/// The progress text after a bar of `width` characters, `#` for the nodes done.
pub fn progress_bar(c: &CampaignCounts, state: CampaignState, width: usize) -> String {
    let done = u64::from(c.done());
    let filled = match u64::from(c.total) {
        0 => width,
        total => usize::try_from(done.min(total) * width as u64 / total).unwrap_or(width),
    };
    format!(
        "[{}{}] {}",
        "#".repeat(filled),
        "-".repeat(width - filled),
        progress_text(c, state)
    )
}

/// What `--wait` writes to stderr as the campaign moves: on a terminal one line redrawn
/// in place, elsewhere a line each time the counts or the state change.
pub struct Progress {
    terminal: bool,
    last: Option<(CampaignCounts, CampaignState)>,
}

impl Progress {
    pub fn new(terminal: bool) -> Self {
        Self {
            terminal,
            last: None,
        }
    }

    /// The text to write for a polled campaign; empty when nothing changed.
    pub fn update(&mut self, c: &CampaignView) -> String {
        let now = (c.counts, c.state);
        if self.last == Some(now) {
            return String::new();
        }
        self.last = Some(now);
        if self.terminal {
            format!("\r{}\x1b[K", progress_bar(&c.counts, c.state, BAR))
        } else {
            format!("{}\n", progress_text(&c.counts, c.state))
        }
    }

    /// The text that ends the progress, so what follows starts on a line of its own.
    pub fn finish(&mut self) -> String {
        if self.terminal && self.last.take().is_some() {
            "\n".into()
        } else {
            String::new()
        }
    }

    /// A note between progress lines (a failed poll); the bar is drawn again after it.
    pub fn note(&mut self, text: &str) -> String {
        format!("{}{text}\n", self.finish())
    }
}

/// A poll error worth trying again while waiting: the controller restarting or busy.
fn transient(e: &ClientError) -> bool {
    match e {
        ClientError::Unreachable { .. } => true,
        ClientError::Api { status, .. } => *status >= 500,
        ClientError::Usage(_)
        | ClientError::Protocol { .. }
        | ClientError::OperationFailed(_)
        | ClientError::WaitTimedOut(_) => false,
    }
}

fn campaign_path(id: &str, rest: &str) -> String {
    format!("/api/v1/campaigns/{}{rest}", encode_path_segment(id))
}

/// Runs a `campaigns` subcommand; returns what to print.
pub async fn run(args: super::ClientArgs, cmd: CampaignsCommand) -> Result<String, ClientError> {
    let api = connect(args)?;
    let now = Timestamp::from(SystemTime::now());
    match cmd {
        CampaignsCommand::Create(args) => create(&api, args).await,
        CampaignsCommand::List { output } => {
            let mut list = all_campaigns(&api).await?;
            list.sort_by(|a, b| {
                b.created_at
                    .cmp(&a.created_at)
                    .then_with(|| b.id.cmp(&a.id))
            });
            Ok(match output {
                Output::Table => render::campaign_table(&list, now),
                Output::Json => json(&list),
            })
        }
        CampaignsCommand::Show {
            id,
            outcome,
            output,
        } => {
            let c = with_all_nodes(&api, &id, outcome).await?;
            Ok(match output {
                Output::Table => render::campaign_detail(&c, outcome, now),
                Output::Json => json(&c),
            })
        }
        CampaignsCommand::Pause(args) => change(&api, "/pause", args).await,
        CampaignsCommand::Resume(args) => change(&api, "/resume", args).await,
        CampaignsCommand::Cancel(args) => change(&api, "/cancel", args).await,
    }
}

/// `campaigns pause|resume|cancel`: the campaign as it is afterwards.
async fn change(api: &ApiClient, what: &str, args: IdArgs) -> Result<String, ClientError> {
    let c: Data<CampaignView> = api
        .send(Method::POST, &campaign_path(&args.id, what), &[], None)
        .await?;
    Ok(print_one(&c.data, args.output))
}

fn print_one(c: &CampaignView, output: Output) -> String {
    match output {
        Output::Table => format!("{}\n", render::campaign_line(c)),
        Output::Json => json(c),
    }
}

async fn create(api: &ApiClient, args: CreateArgs) -> Result<String, ClientError> {
    let body =
        serde_json::to_value(args.request()).map_err(|e| ClientError::Usage(e.to_string()))?;
    let created: Data<CampaignView> = api
        .send(Method::POST, "/api/v1/campaigns", &[], Some(body))
        .await?;
    if !args.wait {
        return Ok(print_one(&created.data, args.output));
    }
    let end = follow(api, created.data, args.timeout).await?;
    Ok(print_one(&end, args.output))
}

/// Polls a campaign until [`verdict`] says it is over, drawing its progress on stderr.
/// Ok when it completed; OperationFailed when it failed; WaitTimedOut after `timeout`.
async fn follow(
    api: &ApiClient,
    start: CampaignView,
    timeout: Duration,
) -> Result<CampaignView, ClientError> {
    let path = campaign_path(&start.id, "");
    let query = [("per_page", "1".to_string())];
    let deadline = Instant::now() + timeout;
    let mut progress = Progress::new(std::io::stderr().is_terminal());
    let mut view = start;
    let mut poll_error: Option<ClientError> = None;
    loop {
        if poll_error.is_none() {
            to_stderr(&progress.update(&view));
        }
        match verdict(view.state, view.reason.as_deref()) {
            Verdict::KeepWaiting => {}
            Verdict::Completed => {
                to_stderr(&progress.finish());
                return Ok(view);
            }
            Verdict::Failed => {
                to_stderr(&progress.finish());
                let mut why = render::campaign_line(&view);
                if view.counts.failed > 0 {
                    why.push_str(&format!(
                        "; see `metalbus campaigns show {} --outcome failed`",
                        render::clean(&view.id)
                    ));
                }
                return Err(ClientError::OperationFailed(why));
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            to_stderr(&progress.finish());
            let mut why = format!(
                "{} after waiting {}",
                render::campaign_line(&view),
                humantime::format_duration(timeout)
            );
            if let Some(e) = poll_error {
                why.push_str(&format!(" (the last poll failed: {e})"));
            }
            return Err(ClientError::WaitTimedOut(why));
        }
        tokio::time::sleep(POLL.min(left)).await;
        match api.get::<CampaignDetail>(&path, &query).await {
            Ok(d) => {
                view = d.data.campaign;
                poll_error = None;
            }
            Err(e) if transient(&e) => {
                if poll_error.is_none() {
                    to_stderr(&progress.note(&format!(
                        "metalbus: cannot poll the campaign, trying again: {e}"
                    )));
                }
                poll_error = Some(e);
            }
            Err(e) => {
                to_stderr(&progress.finish());
                return Err(e);
            }
        }
    }
}

/// Progress goes to stderr, so stdout holds only the result; a closed stderr is no
/// reason to stop waiting.
fn to_stderr(text: &str) {
    if !text.is_empty() {
        let mut err = std::io::stderr();
        let _ = err.write_all(text.as_bytes()).and_then(|()| err.flush());
    }
}

/// Every campaign, page by page.
async fn all_campaigns(api: &ApiClient) -> Result<Vec<CampaignView>, ClientError> {
    api.all_pages("/api/v1/campaigns", &[], |p: Page<CampaignView>| {
        (p.data, p.pagination)
    })
    .await
}

/// A campaign with all its nodes (those with `outcome`, when given), page by page.
async fn with_all_nodes(
    api: &ApiClient,
    id: &str,
    outcome: Option<Outcome>,
) -> Result<CampaignWithNodes, ClientError> {
    let query: Vec<(&str, String)> = outcome
        .map(|o| ("outcome", o.to_string()))
        .into_iter()
        .collect();
    let mut campaign = None;
    let nodes = api
        .all_pages(&campaign_path(id, ""), &query, |d: CampaignDetail| {
            campaign = Some(d.data.campaign);
            (d.data.nodes, d.pagination)
        })
        .await?;
    let campaign =
        campaign.ok_or_else(|| api.protocol_error("no campaign in the answer".into()))?;
    Ok(CampaignWithNodes { campaign, nodes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        command: CampaignsCommand,
    }

    fn create(args: &[&str]) -> Result<CreateArgs, clap::Error> {
        let argv = ["metalbus", "create"].iter().chain(args);
        match Cli::try_parse_from(argv)?.command {
            CampaignsCommand::Create(c) => Ok(c),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn the_flags_build_the_request() {
        let args = create(&[
            "--action",
            "manage",
            "--plan",
            "demo",
            "--label",
            "rack=r1",
            "--label",
            " env = prod ,gpu",
            "--state",
            "discovered,install_failed",
            "--state",
            "installed",
            "--group",
            "web",
            "--search",
            "node-",
            "--online",
            "true",
            "--max-concurrent",
            "20",
            "--max-per-minute",
            "120",
            "--abort-failure-ratio",
            "0.2",
            "--abort-min-executed",
            "10",
            "--abort-max-failures",
            "5",
        ])
        .unwrap();
        assert!(!args.wait);
        assert_eq!(args.timeout, Duration::from_secs(3600));
        let req = args.request();
        assert_eq!(
            req,
            CampaignRequest {
                action: CampaignAction::Manage,
                plan: Some("demo".into()),
                selector: Selector {
                    label: vec!["rack=r1".into(), "env=prod".into(), "gpu".into()],
                    state: vec![
                        NodeState::Discovered,
                        NodeState::InstallFailed,
                        NodeState::Installed
                    ],
                    group: Some("web".into()),
                    search: Some("node-".into()),
                    online: Some(true),
                    nodes: vec![],
                },
                max_concurrent: Some(20),
                max_per_minute: Some(120),
                abort: AbortRules {
                    failure_ratio: Some(0.2),
                    min_executed: Some(10),
                    max_failures: Some(5),
                },
                force: false,
            }
        );
        req.check().unwrap();
        // What goes on the wire reads back as the same request.
        let wire = serde_json::to_string(&req).unwrap();
        assert_eq!(serde_json::from_str::<CampaignRequest>(&wire).unwrap(), req);
    }

    #[test]
    fn node_lists_force_and_wait_are_taken_as_given() {
        let args = create(&[
            "--action",
            "reprovision",
            "--node",
            "web-01",
            "--node",
            "web-02",
            "--max-concurrent",
            "1",
            "--force",
            "--wait",
            "--timeout",
            "90s",
            "-o",
            "json",
        ])
        .unwrap();
        assert!(args.wait);
        assert_eq!(args.timeout, Duration::from_secs(90));
        assert_eq!(args.output, Output::Json);
        let req = args.request();
        assert_eq!(req.selector.nodes, ["web-01", "web-02"]);
        assert!(!req.selector.has_filters());
        assert!(req.force);
        assert_eq!(req.abort, AbortRules::default());
        // Combinations are the API's to refuse: the request is built as asked.
        let req = create(&[
            "--action",
            "reboot",
            "--plan",
            "demo",
            "--max-concurrent",
            "5",
        ])
        .unwrap()
        .request();
        assert_eq!(req.plan.as_deref(), Some("demo"));
        assert!(req.check().unwrap_err().contains("plan is for manage"));
    }

    #[test]
    fn bad_flags_are_usage_errors() {
        for args in [
            &["--action", "explode", "--max-concurrent", "1"][..],
            &["--action", "manage"],
            &[
                "--action",
                "manage",
                "--max-concurrent",
                "1",
                "--label",
                "=x",
            ],
            &["--action", "manage", "--max-concurrent", "1", "--label", ""],
            &[
                "--action",
                "manage",
                "--max-concurrent",
                "1",
                "--state",
                "nirvana",
            ],
            &[
                "--action",
                "manage",
                "--max-concurrent",
                "1",
                "--online",
                "maybe",
            ],
            &[
                "--action",
                "manage",
                "--max-concurrent",
                "1",
                "--timeout",
                "soon",
            ],
        ] {
            let err = create(args)
                .err()
                .unwrap_or_else(|| panic!("{args:?} parsed"));
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn labels_are_key_value_or_key() {
        assert_eq!(selector_label("rack=r1").unwrap(), "rack=r1");
        assert_eq!(selector_label(" rack = r1 ").unwrap(), "rack=r1");
        assert_eq!(selector_label("gpu").unwrap(), "gpu");
        assert_eq!(selector_label("empty=").unwrap(), "empty=");
        assert!(selector_label("=r1").is_err());
        assert!(selector_label(" ").is_err());
    }

    fn counts(
        total: u32,
        succeeded: u32,
        failed: u32,
        skipped: u32,
        in_flight: u32,
    ) -> CampaignCounts {
        CampaignCounts {
            total,
            pending: total - succeeded - failed - skipped - in_flight,
            in_flight,
            succeeded,
            failed,
            skipped,
        }
    }

    #[test]
    fn the_progress_line_counts_what_is_done() {
        let c = counts(150, 34, 2, 1, 20);
        assert_eq!(
            progress_text(&c, CampaignState::Running),
            "37/150 done, 2 failed, 1 skipped, 20 in flight (running)"
        );
        assert_eq!(
            progress_bar(&c, CampaignState::Running, 10),
            "[##--------] 37/150 done, 2 failed, 1 skipped, 20 in flight (running)"
        );
        assert_eq!(
            progress_bar(&counts(4, 2, 0, 0, 2), CampaignState::Paused, 10),
            "[#####-----] 2/4 done, 0 failed, 0 skipped, 2 in flight (paused)"
        );
        assert_eq!(
            progress_bar(&counts(3, 1, 1, 1, 0), CampaignState::Completed, 4),
            "[####] 3/3 done, 1 failed, 1 skipped, 0 in flight (completed)"
        );
        // No nodes: nothing left to do.
        assert_eq!(
            progress_bar(&CampaignCounts::default(), CampaignState::Completed, 4),
            "[####] 0/0 done, 0 failed, 0 skipped, 0 in flight (completed)"
        );
    }

    #[test]
    fn the_wait_ends_completed_or_failed_and_waits_through_a_pause_by_hand() {
        use CampaignState::*;
        let rule = Some("abort rule: 3 nodes failed (max_failures 3)");
        for (state, reason, want) in [
            (Running, None, Verdict::KeepWaiting),
            (Paused, None, Verdict::KeepWaiting),
            (Paused, Some("paused by admin"), Verdict::KeepWaiting),
            (Paused, rule, Verdict::Failed),
            (Completed, None, Verdict::Completed),
            (Aborted, rule, Verdict::Failed),
            (Cancelled, None, Verdict::Failed),
            (Cancelled, Some("cancelled by admin"), Verdict::Failed),
        ] {
            assert_eq!(verdict(state, reason), want, "{state} {reason:?}");
        }
    }

    fn view(c: CampaignCounts, state: CampaignState) -> CampaignView {
        let at = Timestamp::parse("2026-01-01T10:00:00Z").unwrap();
        CampaignView {
            id: "c1".into(),
            action: CampaignAction::Reboot,
            plan: None,
            force: false,
            selector: Selector::default(),
            max_concurrent: 10,
            max_per_minute: None,
            abort: AbortRules::default(),
            state,
            reason: None,
            counts: c,
            created_by: None,
            created_at: at,
            updated_at: at,
            finished_at: None,
        }
    }

    #[test]
    fn without_a_terminal_a_line_is_printed_only_when_something_changed() {
        let mut p = Progress::new(false);
        let v = view(counts(4, 0, 0, 0, 2), CampaignState::Running);
        assert_eq!(
            p.update(&v),
            "0/4 done, 0 failed, 0 skipped, 2 in flight (running)\n"
        );
        assert_eq!(p.update(&v), "");
        let v = view(counts(4, 1, 0, 0, 2), CampaignState::Running);
        assert!(p.update(&v).starts_with("1/4 done"));
        let v = view(counts(4, 1, 0, 0, 2), CampaignState::Paused);
        assert!(p.update(&v).ends_with("(paused)\n"));
        assert_eq!(p.finish(), "");
    }

    #[test]
    fn on_a_terminal_the_bar_is_redrawn_in_place_and_ended_with_a_newline() {
        let mut p = Progress::new(true);
        assert_eq!(p.finish(), "", "nothing drawn, nothing to end");
        let v = view(counts(4, 2, 0, 0, 2), CampaignState::Running);
        let line = p.update(&v);
        assert!(
            line.starts_with("\r[##########----------] 2/4 done"),
            "{line:?}"
        );
        assert!(line.ends_with("\x1b[K"), "{line:?}");
        assert_eq!(p.update(&v), "");
        assert_eq!(p.note("retrying"), "\nretrying\n");
        // After a note the bar is drawn again, even unchanged.
        assert!(p.update(&v).starts_with('\r'));
        assert_eq!(p.finish(), "\n");
    }

    #[test]
    fn only_an_unreachable_or_failing_controller_is_polled_again() {
        let api = |status| ClientError::Api {
            status,
            code: "c".into(),
            message: "m".into(),
        };
        assert!(transient(&api(503)));
        assert!(!transient(&api(404)));
        assert!(!transient(&api(401)));
    }

    #[test]
    fn campaign_ids_are_one_path_segment() {
        assert_eq!(
            campaign_path("c-1", "/pause"),
            "/api/v1/campaigns/c-1/pause"
        );
        assert_eq!(
            campaign_path("../nodes", ""),
            "/api/v1/campaigns/..%2Fnodes"
        );
    }
}
