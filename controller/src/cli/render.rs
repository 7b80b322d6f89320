//! Text rendering for the CLI: the node table and the node detail page.

use std::fmt::Write;

use metalbus_protocol::api::{History, NodeView, TokenView};
use metalbus_protocol::campaign::{
    AbortRules, CampaignCounts, CampaignState, CampaignView, CampaignWithNodes, Outcome, Selector,
};
use metalbus_protocol::event::Events;
use metalbus_protocol::Timestamp;

/// Agent-supplied text with control characters replaced, so a hostile hostname cannot
/// drive the operator's terminal.
pub fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// "12s ago", "5m ago", "3h ago", "2d ago"; "-" when unknown.
pub fn ago(then: Option<Timestamp>, now: Timestamp) -> String {
    let Some(then) = then else {
        return "-".into();
    };
    let s = now.seconds_since(then);
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86_399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |x| format!("{x:.1}"))
}

fn online(n: &NodeView) -> String {
    match (n.online, n.offline_reason) {
        (true, _) => "yes".into(),
        (false, Some(r)) => format!("no ({r})"),
        (false, None) => "no".into(),
    }
}

/// Whether to colour the output: only on a terminal, and never with `NO_COLOR` set or
/// `TERM=dumb` (https://no-color.org).
pub fn colour() -> bool {
    use std::io::IsTerminal;
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        std::io::stdout().is_terminal()
            && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
            && std::env::var("TERM").map_or(true, |t| t != "dumb")
    })
}

/// The ANSI colour a state is shown in: green when done, red when failed, yellow
/// while work runs, dim when retired.
pub fn state_colour(state: &str) -> Option<&'static str> {
    match state {
        "active" | "installed" => Some("32"),
        "install_failed" | "deprovision_failed" | "error" => Some("31"),
        "pending" | "installing" | "deprovisioning" | "migrating" => Some("33"),
        "discovered" | "registered" => Some("36"),
        "retired" => Some("2"),
        _ => None,
    }
}

/// `text` in `code` when colour is on.
pub fn paint(text: &str, code: Option<&str>) -> String {
    match code {
        Some(code) if colour() => format!("\x1b[{code}m{text}\x1b[0m"),
        _ => text.to_string(),
    }
}

/// Aligned columns; the last column is not padded.
pub fn table(rows: &[Vec<String>]) -> String {
    styled_table(rows, |_, _| None)
}

/// Aligned columns, each cell (but the header row) coloured by `style(column, text)`;
/// widths count the text, not the colour codes.
pub fn styled_table(
    rows: &[Vec<String>],
    style: impl Fn(usize, &str) -> Option<&'static str>,
) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (r, row) in rows.iter().enumerate() {
        let mut line = String::new();
        let row: Vec<String> = row.iter().map(|c| clean(c)).collect();
        for (c, cell) in row.iter().enumerate() {
            let code = if r == 0 { None } else { style(c, cell) };
            if c + 1 == row.len() {
                line.push_str(&paint(cell, code));
            } else {
                let pad = widths[c].saturating_sub(cell.chars().count());
                let _ = write!(line, "{}{:pad$}  ", paint(cell, code), "");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

pub fn node_table(nodes: &[NodeView], now: Timestamp) -> String {
    let mut rows = vec![
        ["NAME", "STATE", "ONLINE", "CPU%", "MEM%", "LAST SEEN", "ID"]
            .map(String::from)
            .to_vec(),
    ];
    for n in nodes {
        rows.push(vec![
            n.name.clone(),
            n.state.to_string(),
            online(n),
            pct(n.usage.cpu_percentage),
            pct(n.usage.memory_percentage),
            ago(n.last_seen_at, now),
            n.id.to_string(),
        ]);
    }
    let mut out = styled_table(&rows, |c, text| match c {
        1 => state_colour(text),
        2 if text.starts_with("no") => Some("31"),
        _ => None,
    });
    let _ = writeln!(out, "{} node(s)", nodes.len());
    out
}

fn opt<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "-".into(), ToString::to_string)
}

pub fn node_detail(n: &NodeView, now: Timestamp) -> String {
    let s = &n.specs;
    let u = &n.usage;
    let mut rows: Vec<Vec<String>> = vec![
        vec!["Name:".into(), n.name.clone()],
        vec!["ID:".into(), n.id.to_string()],
        vec!["State:".into(), format!("{} ({})", n.state, n.phase)],
        vec![
            "Since:".into(),
            format!(
                "{} ({})",
                n.state_changed_at,
                ago(Some(n.state_changed_at), now)
            ),
        ],
        vec!["Online:".into(), online(n)],
        vec!["Last seen:".into(), ago(n.last_seen_at, now)],
        vec!["Hostname:".into(), opt(&n.hostname)],
        vec!["Agent:".into(), opt(&n.agent_version)],
        vec!["Version:".into(), n.version.to_string()],
    ];
    if let Some(p) = &n.progress {
        rows.push(vec![
            "Progress:".into(),
            format!(
                "{}% {} {}",
                p.percent,
                p.step.as_deref().unwrap_or(""),
                p.message.as_deref().unwrap_or("")
            )
            .trim_end()
            .to_string(),
        ]);
    }
    if let Some(e) = &n.last_install_error {
        rows.push(vec!["Last error:".into(), e.clone()]);
    }
    rows.extend([
        vec![
            "System:".into(),
            format!(
                "{} {} (serial {})",
                opt(&s.vendor),
                opt(&s.model),
                opt(&s.serial_number)
            ),
        ],
        vec![
            "CPU:".into(),
            format!(
                "{} — {} cores, {} threads, {}",
                opt(&s.cpu_model),
                opt(&s.cpu_cores),
                opt(&s.cpu_threads),
                opt(&s.architecture)
            ),
        ],
        vec!["Memory:".into(), format!("{} GiB", opt(&s.memory_gb))],
        vec!["Storage:".into(), format!("{} GB", opt(&s.storage_gb))],
        vec!["MACs:".into(), list(&n.mac_addresses)],
        vec!["IPs:".into(), list(&n.ip_addresses)],
        vec![
            "Usage:".into(),
            format!(
                "cpu {}%  mem {}%  disk {}%  net in {} / out {} Mbps",
                pct(u.cpu_percentage),
                pct(u.memory_percentage),
                pct(u.storage_percentage),
                pct(u.network_in_mbps),
                pct(u.network_out_mbps)
            ),
        ],
    ]);
    table(&rows)
}

/// The audit log, newest first.
/// `tokens list`: one row per token, never a secret.
pub fn tokens(list: &[TokenView], now: Timestamp) -> String {
    let mut rows = vec![
        ["NAME", "KIND", "ROLE", "CREATED", "EXPIRES", "USES", "NODE"]
            .map(String::from)
            .to_vec(),
    ];
    for t in list {
        let uses = match (t.uses, t.max_uses) {
            (Some(u), Some(max)) => format!("{u}/{max}"),
            (Some(u), None) => u.to_string(),
            _ => "-".into(),
        };
        let expires = match t.expires_at {
            Some(at) if at <= now => format!("{at} (expired)"),
            Some(at) => at.to_string(),
            None => "never".into(),
        };
        rows.push(vec![
            t.name.clone(),
            t.kind.to_string(),
            t.role.map_or("-".into(), |r| r.to_string()),
            ago(Some(t.created_at), now),
            expires,
            uses,
            t.node.as_ref().map_or("-".into(), |n| n.to_string()),
        ]);
    }
    table(&rows)
}

pub fn history(h: &History, now: Timestamp) -> String {
    let mut rows = vec![["WHEN", "FROM", "TO", "BY", "USER", "COMMENT / DETAILS"]
        .map(String::from)
        .to_vec()];
    for e in &h.data {
        let details = match (&e.comment, &e.metadata) {
            (Some(c), Some(m)) => format!("{c} {m}"),
            (Some(c), None) => c.clone(),
            (None, Some(m)) => m.to_string(),
            (None, None) => String::new(),
        };
        rows.push(vec![
            format!("{} ({})", e.created_at, ago(Some(e.created_at), now)),
            e.from_state.to_string(),
            e.to_state.to_string(),
            e.triggered_by.to_string(),
            e.user.clone().unwrap_or_else(|| "-".into()),
            details,
        ]);
    }
    let mut out = table(&rows);
    let _ = writeln!(out, "{} of {} entries", h.data.len(), h.total);
    out
}

/// Node events, newest first.
pub fn events(e: &Events, now: Timestamp) -> String {
    if e.data.is_empty() {
        return "no events\n".into();
    }
    let mut rows = vec![
        ["LAST SEEN", "TYPE", "REASON", "COUNT", "SOURCE", "MESSAGE"]
            .map(String::from)
            .to_vec(),
    ];
    for ev in &e.data {
        let first = if ev.count > 1 {
            format!(" (first {})", ago(Some(ev.first_timestamp), now))
        } else {
            String::new()
        };
        rows.push(vec![
            ago(Some(ev.last_timestamp), now),
            ev.kind.as_str().to_string(),
            ev.reason.to_string(),
            ev.count.to_string(),
            ev.source.as_str().to_string(),
            format!("{}{first}", ev.message),
        ]);
    }
    table(&rows)
}

/// The ANSI colour a campaign state is shown in.
pub fn campaign_state_colour(state: CampaignState) -> Option<&'static str> {
    match state {
        CampaignState::Running => Some("33"),
        CampaignState::Paused => Some("36"),
        CampaignState::Completed => Some("32"),
        CampaignState::Aborted | CampaignState::Cancelled => Some("31"),
    }
}

/// The ANSI colour a campaign node's outcome is shown in.
pub fn outcome_colour(outcome: Outcome) -> Option<&'static str> {
    match outcome {
        Outcome::Pending => None,
        Outcome::InFlight => Some("33"),
        Outcome::Succeeded => Some("32"),
        Outcome::Failed => Some("31"),
        Outcome::Skipped => Some("2"),
    }
}

fn campaign_counts(c: &CampaignCounts) -> String {
    format!(
        "{} nodes: {} succeeded, {} failed, {} skipped, {} in flight, {} pending",
        c.total, c.succeeded, c.failed, c.skipped, c.in_flight, c.pending
    )
}

/// One campaign on one line: `c1 reboot: running; 150 nodes: ...`, and its reason.
/// Never coloured: it is also the message of a failed `--wait`, on stderr.
pub fn campaign_line(c: &CampaignView) -> String {
    let mut line = format!(
        "campaign {} {}: {}; {}",
        clean(&c.id),
        c.action,
        c.state,
        campaign_counts(&c.counts)
    );
    if let Some(r) = &c.reason {
        let _ = write!(line, " ({})", clean(r));
    }
    line
}

/// `campaigns list`.
pub fn campaign_table(list: &[CampaignView], now: Timestamp) -> String {
    let mut rows = vec![[
        "ID",
        "ACTION",
        "STATE",
        "TOTAL",
        "DONE",
        "FAILED",
        "IN FLIGHT",
        "CREATED",
    ]
    .map(String::from)
    .to_vec()];
    for c in list {
        rows.push(vec![
            c.id.clone(),
            c.action.to_string(),
            c.state.to_string(),
            c.counts.total.to_string(),
            c.counts.done().to_string(),
            c.counts.failed.to_string(),
            c.counts.in_flight.to_string(),
            ago(Some(c.created_at), now),
        ]);
    }
    let mut out = styled_table(&rows, |c, text| match c {
        2 => text.parse().ok().and_then(campaign_state_colour),
        5 if text != "0" => Some("31"),
        _ => None,
    });
    let _ = writeln!(out, "{} campaign(s)", list.len());
    out
}

/// How many node names the selector line of `campaigns show` lists.
const SHOWN_NODES: usize = 10;

fn selector(s: &Selector) -> String {
    let mut parts = Vec::new();
    if !s.label.is_empty() {
        parts.push(format!("labels {}", s.label.join(", ")));
    }
    if !s.state.is_empty() {
        let states: Vec<&str> = s.state.iter().map(|s| s.as_str()).collect();
        parts.push(format!("states {}", states.join(", ")));
    }
    if let Some(g) = &s.group {
        parts.push(format!("group {g}"));
    }
    if let Some(t) = &s.search {
        parts.push(format!("search {t:?}"));
    }
    if let Some(o) = s.online {
        parts.push(if o { "online" } else { "offline" }.into());
    }
    if !s.nodes.is_empty() {
        let mut names = s.nodes[..s.nodes.len().min(SHOWN_NODES)].join(", ");
        if s.nodes.len() > SHOWN_NODES {
            let _ = write!(names, " and {} more", s.nodes.len() - SHOWN_NODES);
        }
        parts.push(format!("nodes {names}"));
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join("; ")
    }
}

fn rollout(c: &CampaignView) -> String {
    let mut out = format!("at most {} in flight", c.max_concurrent);
    if let Some(m) = c.max_per_minute {
        let _ = write!(out, ", {m} started per minute");
    }
    out
}

fn abort_rules(a: &AbortRules) -> String {
    let mut rules = Vec::new();
    if let Some(r) = a.failure_ratio {
        rules.push(format!(
            "pause when {r} of the finished nodes failed, after {} finished",
            a.min_executed.unwrap_or(1).max(1)
        ));
    }
    if let Some(m) = a.max_failures {
        rules.push(format!("pause when {m} nodes failed"));
    }
    if rules.is_empty() {
        "none".into()
    } else {
        rules.join("; ")
    }
}

fn when(at: Timestamp, now: Timestamp) -> String {
    format!("{at} ({})", ago(Some(at), now))
}

/// `campaigns show`: the campaign, then its nodes (those with `outcome`, when asked).
pub fn campaign_detail(c: &CampaignWithNodes, outcome: Option<Outcome>, now: Timestamp) -> String {
    let n = &c.campaign;
    let mut action = n.action.to_string();
    if let Some(p) = &n.plan {
        let _ = write!(action, " (plan {p})");
    }
    if n.force {
        action.push_str(" (force)");
    }
    let mut state = paint(n.state.as_str(), campaign_state_colour(n.state));
    if let Some(r) = &n.reason {
        let _ = write!(state, ": {}", clean(r));
    }
    let mut created = when(n.created_at, now);
    if let Some(by) = &n.created_by {
        let _ = write!(created, " by {by}");
    }
    let mut head: Vec<(&str, String)> = vec![
        ("ID:", clean(&n.id)),
        ("Action:", clean(&action)),
        ("State:", state),
        ("Nodes:", campaign_counts(&n.counts)),
        ("Selector:", clean(&selector(&n.selector))),
        ("Rollout:", rollout(n)),
        ("Abort rules:", abort_rules(&n.abort)),
        ("Created:", clean(&created)),
        ("Updated:", when(n.updated_at, now)),
    ];
    if let Some(at) = n.finished_at {
        head.push(("Finished:", when(at, now)));
    }
    // Not `table`: it would clean the colour codes of the state away.
    let width = head.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in &head {
        let _ = writeln!(out, "{k:width$}  {v}");
    }
    out.push('\n');
    if c.nodes.is_empty() {
        let _ = match outcome {
            Some(o) => writeln!(out, "no {o} nodes"),
            None => writeln!(out, "no nodes"),
        };
        return out;
    }
    let mut rows = vec![["NODE", "OUTCOME", "MESSAGE", "STARTED", "FINISHED"]
        .map(String::from)
        .to_vec()];
    for node in &c.nodes {
        rows.push(vec![
            node.name.clone(),
            node.outcome.to_string(),
            node.message.clone().unwrap_or_else(|| "-".into()),
            ago(node.started_at, now),
            ago(node.finished_at, now),
        ]);
    }
    out.push_str(&styled_table(&rows, |c, text| match c {
        1 => text.parse().ok().and_then(outcome_colour),
        _ => None,
    }));
    let _ = writeln!(out, "{} node(s)", c.nodes.len());
    out
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ago_picks_a_readable_unit() {
        let now = Timestamp::from_unix_millis(10_000_000);
        let at =
            |secs_before: i64| Some(Timestamp::from_unix_millis(10_000_000 - secs_before * 1000));
        assert_eq!(ago(at(5), now), "5s ago");
        assert_eq!(ago(at(125), now), "2m ago");
        assert_eq!(ago(at(7300), now), "2h ago");
        assert_eq!(ago(at(200_000), now), "2d ago");
        assert_eq!(ago(None, now), "-");
    }

    #[test]
    fn control_characters_never_reach_the_terminal() {
        let rows = vec![vec!["evil\u{1b}[2Jhost".to_string(), "x".into()]];
        let out = table(&rows);
        assert!(!out.contains('\u{1b}'), "{out:?}");
        assert!(out.starts_with("evil?[2Jhost"));
    }

    /// The text without colour codes, which are there when the tests run on a terminal.
    fn plain(s: &str) -> String {
        let mut out = String::new();
        let mut rest = s;
        while let Some(at) = rest.find("\x1b[") {
            out.push_str(&rest[..at]);
            let after = &rest[at..];
            rest = after.find('m').map_or("", |m| &after[m + 1..]);
        }
        out.push_str(rest);
        out
    }

    fn campaign(now: Timestamp) -> CampaignView {
        CampaignView {
            id: "c7".into(),
            action: metalbus_protocol::campaign::CampaignAction::Manage,
            plan: Some("demo".into()),
            force: false,
            selector: Selector {
                nodes: (1..=12).map(|i| format!("n{i}")).collect(),
                ..Selector::default()
            },
            max_concurrent: 5,
            max_per_minute: Some(30),
            abort: AbortRules {
                failure_ratio: Some(0.5),
                min_executed: Some(4),
                max_failures: None,
            },
            state: CampaignState::Paused,
            reason: Some("abort rule: 2 of 4 finished nodes failed".into()),
            counts: CampaignCounts {
                total: 12,
                pending: 6,
                in_flight: 2,
                succeeded: 2,
                failed: 2,
                skipped: 0,
            },
            created_by: Some("admin".into()),
            created_at: now,
            updated_at: now,
            finished_at: None,
        }
    }

    #[test]
    fn campaigns_list_with_what_is_done_and_show_with_their_nodes() {
        let now = Timestamp::parse("2026-01-01T10:00:00Z").unwrap();
        let c = campaign(now);
        let list = plain(&campaign_table(std::slice::from_ref(&c), now));
        let lines: Vec<&str> = list.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["ID", "ACTION", "STATE", "TOTAL", "DONE", "FAILED", "IN", "FLIGHT", "CREATED"]
        );
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            ["c7", "manage", "paused", "12", "4", "2", "2", "0s", "ago"]
        );
        assert_eq!(lines[2], "1 campaign(s)");
        assert_eq!(
            plain(&campaign_line(&c)),
            "campaign c7 manage: paused; 12 nodes: 2 succeeded, 2 failed, 0 skipped, \
             2 in flight, 6 pending (abort rule: 2 of 4 finished nodes failed)"
        );

        let nodes = vec![metalbus_protocol::campaign::CampaignNodeView {
            node: metalbus_protocol::NodeId::new("n1").unwrap(),
            name: "web-01".into(),
            outcome: Outcome::Failed,
            message: Some("the install failed\u{1b}[2J".into()),
            started_at: Some(now),
            finished_at: None,
            operation_id: None,
        }];
        let detail = CampaignWithNodes { campaign: c, nodes };
        let out = plain(&campaign_detail(&detail, Some(Outcome::Failed), now));
        for want in [
            "Action:       manage (plan demo)\n",
            "State:        paused: abort rule: 2 of 4 finished nodes failed\n",
            "Selector:     nodes n1, n2, n3, n4, n5, n6, n7, n8, n9, n10 and 2 more\n",
            "Rollout:      at most 5 in flight, 30 started per minute\n",
            "Abort rules:  pause when 0.5 of the finished nodes failed, after 4 finished\n",
            "Created:      2026-01-01T10:00:00.000Z (0s ago) by admin\n",
            "1 node(s)\n",
        ] {
            assert!(out.contains(want), "{want:?} not in\n{out}");
        }
        let row = out.lines().find(|l| l.starts_with("web-01")).unwrap();
        assert!(
            row.contains("failed   the install failed?[2J  0s ago   -"),
            "{row}"
        );
        let none = CampaignWithNodes {
            nodes: vec![],
            ..detail
        };
        assert!(plain(&campaign_detail(&none, Some(Outcome::Failed), now))
            .ends_with("\nno failed nodes\n"));
    }

    #[test]
    fn table_aligns_columns() {
        let rows = vec![
            vec!["A".to_string(), "BB".into(), "C".into()],
            vec!["long".to_string(), "x".into(), "y".into()],
        ];
        assert_eq!(table(&rows), "A     BB  C\nlong  x   y\n");
    }
}
