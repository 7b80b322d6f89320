//! Text rendering for the CLI: the node table and the node detail page.

use std::fmt::Write;

use metalbus_protocol::api::{History, NodeView, TokenView};
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

    #[test]
    fn table_aligns_columns() {
        let rows = vec![
            vec!["A".to_string(), "BB".into(), "C".into()],
            vec!["long".to_string(), "x".into(), "y".into()],
        ];
        assert_eq!(table(&rows), "A     BB  C\nlong  x   y\n");
    }
}
