//! `metalbus nodes watch`: a live view of state and progress changes, read from the
//! API's Server-Sent Events stream (`GET /api/v1/events/stream`).

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use metalbus_protocol::api::AuditEntry;
use metalbus_protocol::controller::NodeStateMessage;
use metalbus_protocol::event::NodeEvent;
use metalbus_protocol::{NodeId, Timestamp};
use serde::Deserialize;

use super::client::{ApiClient, ClientError};
use super::render::{clean, paint, state_colour, table};
use super::Output;

/// The server sends a keep-alive comment every 15 s; this long without a byte means the
/// connection is dead.
const SILENCE: Duration = Duration::from_secs(45);

/// Splits a byte stream into SSE messages: `(event, data)` pairs.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    event: String,
    data: Vec<String>,
}

impl SseParser {
    /// Feeds bytes; returns the messages they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for &b in bytes {
            if b != b'\n' {
                self.line.push(b);
                continue;
            }
            let line = String::from_utf8_lossy(&self.line)
                .trim_end_matches('\r')
                .to_string();
            self.line.clear();
            if line.is_empty() {
                if !self.data.is_empty() {
                    let event = std::mem::take(&mut self.event);
                    let name = if event.is_empty() {
                        "message".to_string()
                    } else {
                        event
                    };
                    out.push((name, self.data.join("\n")));
                    self.data.clear();
                }
                self.event.clear();
            } else if line.starts_with(':') {
                // A comment (keep-alive).
            } else {
                let (field, value) = line.split_once(':').unwrap_or((&line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "event" => self.event = value.to_string(),
                    "data" => self.data.push(value.to_string()),
                    _ => {}
                }
            }
        }
        out
    }
}

#[derive(Deserialize)]
struct Tagged {
    node_id: NodeId,
    event: NodeEvent,
}

#[derive(Deserialize)]
struct Removed {
    node_id: NodeId,
}

/// What the watch prints, kept apart from the I/O so that it can be tested.
pub struct Watch {
    output: Output,
    /// Only these nodes (ids or names); all when empty.
    only: Vec<String>,
    /// The newest state of each node, to print only what changed.
    seen: HashMap<NodeId, NodeStateMessage>,
    ready: bool,
}

fn clock(t: Timestamp) -> String {
    // RFC 3339 `YYYY-MM-DDTHH:MM:SS...`: the time of day, UTC.
    t.to_string().get(11..19).unwrap_or("").to_string()
}

impl Watch {
    pub fn new(output: Output, only: Vec<String>) -> Self {
        Self {
            output,
            only,
            seen: HashMap::new(),
            ready: false,
        }
    }

    fn wanted(&self, id: &NodeId) -> bool {
        self.only.is_empty()
            || self
                .only
                .iter()
                .any(|k| k == id.as_str() || self.seen.get(id).is_some_and(|s| &s.name == k))
    }

    fn name(&self, id: &NodeId) -> String {
        self.seen
            .get(id)
            .map_or_else(|| id.to_string(), |s| s.name.clone())
    }

    /// The lines one SSE message prints (empty for most), given the time it arrived.
    pub fn on_message(
        &mut self,
        event: &str,
        data: &str,
        now: Timestamp,
    ) -> Result<String, String> {
        let bad = |e: serde_json::Error| format!("bad {event} message from the stream: {e}");
        if self.output == Output::Json {
            let data: serde_json::Value = serde_json::from_str(data).map_err(bad)?;
            if let Some(id) = data.get("id").or_else(|| data.get("node_id")) {
                let id = id.as_str().and_then(|s| NodeId::new(s).ok());
                if event == "state" {
                    if let Ok(s) = serde_json::from_value::<NodeStateMessage>(data.clone()) {
                        self.seen.insert(s.id.clone(), s);
                    }
                }
                if id.is_some_and(|id| !self.wanted(&id)) {
                    return Ok(String::new());
                }
            }
            let line = serde_json::json!({ "type": event, "data": data });
            return Ok(format!("{line}\n"));
        }
        match event {
            "state" => {
                let s: NodeStateMessage = serde_json::from_str(data).map_err(bad)?;
                let before = self.seen.insert(s.id.clone(), s.clone());
                if !self.ready || !self.wanted(&s.id) {
                    return Ok(String::new());
                }
                Ok(state_line(before.as_ref(), &s, now))
            }
            "ready" => {
                self.ready = true;
                let mut states: Vec<&NodeStateMessage> =
                    self.seen.values().filter(|s| self.wanted(&s.id)).collect();
                states.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.id.cmp(&b.id)));
                let mut rows = vec!["NAME STATE PROGRESS ONLINE ID"
                    .split(' ')
                    .map(String::from)
                    .collect::<Vec<_>>()];
                for s in &states {
                    rows.push(vec![
                        s.name.clone(),
                        s.state.to_string(),
                        progress(s),
                        if s.online { "yes" } else { "no" }.into(),
                        s.id.to_string(),
                    ]);
                }
                Ok(format!(
                    "{}watching {} node(s); changes follow (Ctrl-C to stop)\n",
                    table(&rows),
                    states.len()
                ))
            }
            "transition" => {
                let t: AuditEntry = serde_json::from_str(data).map_err(bad)?;
                if !self.wanted(&t.node_id) {
                    return Ok(String::new());
                }
                let mut line = format!(
                    "{}  {}  {} -> {}  by {}",
                    clock(t.created_at),
                    clean(&self.name(&t.node_id)),
                    t.from_state,
                    paint(t.to_state.as_str(), state_colour(t.to_state.as_str())),
                    t.triggered_by
                );
                if let Some(c) = &t.comment {
                    line.push_str(&format!("  ({})", clean(c)));
                }
                line.push('\n');
                Ok(line)
            }
            "event" => {
                let e: Tagged = serde_json::from_str(data).map_err(bad)?;
                if !self.wanted(&e.node_id) || e.event.kind.as_str() != "Warning" {
                    return Ok(String::new());
                }
                Ok(format!(
                    "{}  {}  {} {}: {}\n",
                    clock(e.event.last_timestamp),
                    clean(&self.name(&e.node_id)),
                    paint("Warning", Some("31")),
                    e.event.reason,
                    clean(&e.event.message)
                ))
            }
            "removed" => {
                let r: Removed = serde_json::from_str(data).map_err(bad)?;
                let name = self.name(&r.node_id);
                let wanted = self.wanted(&r.node_id);
                self.seen.remove(&r.node_id);
                Ok(if wanted {
                    format!("{}  {}  removed\n", clock(now), clean(&name))
                } else {
                    String::new()
                })
            }
            "lagged" => Ok(format!(
                "{}  (too slow: missed {} change(s); run `nodes list` to resync)\n",
                clock(now),
                serde_json::from_str::<serde_json::Value>(data)
                    .ok()
                    .and_then(|v| v["missed"].as_u64())
                    .unwrap_or(0)
            )),
            _ => Ok(String::new()),
        }
    }
}

fn progress(s: &NodeStateMessage) -> String {
    match &s.progress {
        Some(p) => {
            let mut out = format!("{}%", p.percent);
            if let Some(step) = &p.step {
                out.push_str(&format!(" {step}"));
            }
            if let Some(m) = &p.message {
                out.push_str(&format!(": {m}"));
            }
            out
        }
        None => "-".into(),
    }
}

/// A state message as a line: what changed since the node's previous one (transitions
/// print their own line, so a state change alone prints nothing here).
fn state_line(before: Option<&NodeStateMessage>, s: &NodeStateMessage, now: Timestamp) -> String {
    let name = clean(&s.name);
    let Some(b) = before else {
        return format!(
            "{}  {}  new node ({})\n",
            clock(now),
            name,
            paint(s.state.as_str(), state_colour(s.state.as_str()))
        );
    };
    let mut out = String::new();
    if b.online != s.online {
        let (word, code) = if s.online {
            ("online", "32")
        } else {
            ("offline", "31")
        };
        out.push_str(&format!(
            "{}  {}  {}\n",
            clock(now),
            name,
            paint(word, Some(code))
        ));
    }
    if s.progress != b.progress && s.progress.is_some() {
        out.push_str(&format!(
            "{}  {}  {} {}\n",
            clock(now),
            name,
            s.state,
            clean(&progress(s))
        ));
    }
    if s.name != b.name {
        out.push_str(&format!(
            "{}  {}  renamed from {}\n",
            clock(now),
            name,
            clean(&b.name)
        ));
    }
    out
}

/// Follows the stream until it ends or fails, printing as it goes.
pub async fn run(
    api: &ApiClient,
    output: Output,
    only: Vec<String>,
) -> Result<String, ClientError> {
    let mut resp = api.open_stream("/api/v1/events/stream").await?;
    let mut parser = SseParser::default();
    let mut watch = Watch::new(output, only);
    let mut stdout = std::io::stdout();
    loop {
        let chunk = tokio::time::timeout(SILENCE, resp.chunk())
            .await
            .map_err(|_| {
                api.protocol_error(format!("the event stream was silent for {SILENCE:?}"))
            })?
            .map_err(|e| api.unreachable(e))?;
        let Some(chunk) = chunk else {
            return Err(api.protocol_error("the controller closed the event stream".into()));
        };
        for (event, data) in parser.feed(&chunk) {
            let now = Timestamp::from(std::time::SystemTime::now());
            let text = watch
                .on_message(&event, &data, now)
                .map_err(|why| api.protocol_error(why))?;
            if !text.is_empty() {
                // A closed stdout (`| head`) ends the watch quietly.
                if stdout
                    .write_all(text.as_bytes())
                    .and_then(|()| stdout.flush())
                    .is_err()
                {
                    return Ok(String::new());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_messages_split_across_chunks_and_lines() {
        let mut p = SseParser::default();
        assert!(p.feed(b": keep-alive\n\nevent: sta").is_empty());
        assert!(p.feed(b"te\r\ndata: {\"a\":").is_empty());
        let got = p.feed(b"1}\r\n\r\ndata: x\ndata: y\n\n");
        assert_eq!(
            got,
            [
                ("state".to_string(), "{\"a\":1}".to_string()),
                ("message".to_string(), "x\ny".to_string())
            ]
        );
    }

    fn state(id: &str, state: &str, percent: Option<u8>) -> String {
        let progress = percent.map(|p| serde_json::json!({ "percent": p, "step": "image" }));
        serde_json::json!({
            "id": id, "name": id, "state": state, "phase": "Managing", "version": 1,
            "since": "2026-01-01T00:00:00Z", "online": true, "install_attempts": 1,
            "last_error": null, "progress": progress,
        })
        .to_string()
    }

    #[test]
    fn the_table_view_prints_changes_of_the_nodes_asked_for() {
        let now = Timestamp::parse("2026-01-01T10:11:12Z").unwrap();
        let mut w = Watch::new(Output::Table, vec!["n1".into()]);
        assert_eq!(
            w.on_message("state", &state("n1", "discovered", None), now)
                .unwrap(),
            ""
        );
        assert_eq!(
            w.on_message("state", &state("n2", "discovered", None), now)
                .unwrap(),
            ""
        );
        let table = w.on_message("ready", "{\"nodes\":2}", now).unwrap();
        assert!(table.starts_with("NAME"), "{table}");
        assert!(table.contains("n1") && !table.contains("n2"), "{table}");
        let t = serde_json::json!({
            "id": "n1:1", "node_id": "n1", "from_state": "discovered", "to_state": "pending",
            "triggered_by": "admin", "user": null, "comment": null, "metadata": null,
            "created_at": "2026-01-01T10:11:12.345Z",
        });
        assert_eq!(
            w.on_message("transition", &t.to_string(), now).unwrap(),
            "10:11:12  n1  discovered -> pending  by admin\n"
        );
        assert_eq!(
            w.on_message("state", &state("n1", "installing", Some(40)), now)
                .unwrap(),
            "10:11:12  n1  installing 40% image\n"
        );
        // The same state again prints nothing; another node prints nothing.
        assert_eq!(
            w.on_message("state", &state("n1", "installing", Some(40)), now)
                .unwrap(),
            ""
        );
        assert_eq!(
            w.on_message("state", &state("n2", "installing", Some(9)), now)
                .unwrap(),
            ""
        );
        assert!(w.on_message("state", "{not json", now).is_err());
    }

    #[test]
    fn the_json_view_prints_every_message_of_the_nodes_asked_for() {
        let now = Timestamp::parse("2026-01-01T10:11:12Z").unwrap();
        let mut w = Watch::new(Output::Json, vec!["n1".into()]);
        let line = w
            .on_message("state", &state("n1", "discovered", None), now)
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["type"], "state");
        assert_eq!(v["data"]["id"], "n1");
        assert_eq!(
            w.on_message("state", &state("n2", "discovered", None), now)
                .unwrap(),
            ""
        );
        assert!(w
            .on_message("ready", "{\"nodes\":2}", now)
            .unwrap()
            .contains("ready"));
    }
}
