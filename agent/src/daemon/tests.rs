//! The daemon against a fake broker on loopback that leaves some CONNECTs unanswered:
//! what a timed-out attempt may and may not leave behind.

use std::time::Instant;

use metalbus_link::Backoff;
use metalbus_protocol::command::{Command, CommandId, JobKind};
use metalbus_protocol::inventory::Inventory;
use metalbus_protocol::metrics::MetricsSample;
use metalbus_protocol::report::JobStatus;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::jobs::Ack;
use crate::outbox::AgentStore;

struct QuietHost;

impl Host for QuietHost {
    fn hostname(&self) -> String {
        "host-1".into()
    }
    fn boot_id(&self) -> Option<String> {
        Some("boot-1".into())
    }
    fn inventory(&self) -> Inventory {
        Inventory::default()
    }
    fn metrics(&self) -> Option<MetricsSample> {
        None
    }
}

struct NoJobs;

impl Jobs for NoJobs {
    fn handle(&mut self, _: &Command) -> Ack {
        Ack::no("no jobs here")
    }
    fn running(&self) -> Option<CommandId> {
        None
    }
}

/// What the fake broker does with one connection.
#[derive(Debug, Clone, Copy)]
enum Answer {
    /// Reads the CONNECT and never answers it.
    Silent,
    /// Accepts it and drops it once a report has come.
    UntilReport,
    /// Accepts it.
    Accept,
    /// Answers the CONNECT with these bytes instead of a CONNACK, then reads on.
    Hostile(&'static [u8]),
}

/// What the fake broker saw on one connection (numbered from 1).
#[derive(Debug)]
enum Seen {
    Connect {
        at: Instant,
        client_id: String,
        will: Value,
    },
    Publish {
        topic: String,
        payload: Value,
    },
}

/// The first byte of the next packet and its body, `None` at the end of the stream.
async fn next_packet(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(u8, Vec<u8>)> {
    loop {
        // The remaining length: up to four bytes of seven bits each.
        let mut len = 0usize;
        for i in 0..4 {
            let Some(b) = buf.get(1 + i) else { break };
            len |= usize::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                let start = 2 + i;
                if buf.len() >= start + len {
                    let body = buf[start..start + len].to_vec();
                    let first = buf[0];
                    buf.drain(..start + len);
                    return Some((first, body));
                }
                break;
            }
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A length-prefixed field at `at`, and the offset after it.
fn field(body: &[u8], at: usize) -> (&[u8], usize) {
    let n = usize::from(u16::from_be_bytes([body[at], body[at + 1]]));
    (&body[at + 2..at + 2 + n], at + 2 + n)
}

/// One connection of the fake broker: MQTT 3.1.1, just enough for the agent.
async fn serve(
    mut stream: TcpStream,
    answer: Answer,
    n: usize,
    seen: mpsc::UnboundedSender<(usize, Seen)>,
) {
    let mut buf = Vec::new();
    while let Some((first, body)) = next_packet(&mut stream, &mut buf).await {
        let reply: Vec<u8> = match first >> 4 {
            // CONNECT: protocol name, level, flags, keep-alive, client id, Will.
            1 => {
                let (_, at) = field(&body, 0);
                let flags = body[at + 1];
                let (client_id, at) = field(&body, at + 4);
                let will = if flags & 0x04 != 0 {
                    let (_, at) = field(&body, at);
                    serde_json::from_slice(field(&body, at).0).unwrap()
                } else {
                    Value::Null
                };
                let at = Instant::now();
                let client_id = String::from_utf8_lossy(client_id).into_owned();
                let _ = seen.send((
                    n,
                    Seen::Connect {
                        at,
                        client_id,
                        will,
                    },
                ));
                match answer {
                    Answer::Silent => continue,
                    Answer::UntilReport | Answer::Accept => vec![0x20, 2, 0, 0],
                    Answer::Hostile(bytes) => bytes.to_vec(),
                }
            }
            3 => {
                let (topic, mut at) = field(&body, 0);
                let topic = String::from_utf8_lossy(topic).into_owned();
                let mut puback = Vec::new();
                if (first >> 1) & 3 > 0 {
                    puback = vec![0x40, 2, body[at], body[at + 1]];
                    at += 2;
                }
                let payload = serde_json::from_slice(&body[at..]).unwrap_or(Value::Null);
                let report = topic.ends_with("/reports");
                let _ = seen.send((n, Seen::Publish { topic, payload }));
                if report && matches!(answer, Answer::UntilReport) {
                    return;
                }
                puback
            }
            // SUBSCRIBE, one filter: granted at QoS 1.
            8 => vec![0x90, 3, body[0], body[1], 1],
            12 => vec![0xd0, 0],
            _ => continue,
        };
        if stream.write_all(&reply).await.is_err() {
            return;
        }
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Agent `n1`, enrolled, for a broker on loopback `port`, with its state in `dir`:
/// CONNACK waits of 1 s (rumqttc's least), then 2 s; short pauses. Also the way to hand
/// it job events.
fn agent_on(port: u16, dir: &std::path::Path) -> (Prepared, mpsc::UnboundedSender<JobEvent>) {
    let node = NodeId::new("n1").unwrap();
    let cred = Credential {
        node_id: node.clone(),
        key: NodeKey::from_bytes([5; 32]),
        identity: [4; 32],
    };
    credential::save(dir, &cred).unwrap();
    let cfg = AgentConfig {
        broker: format!("mqtt://127.0.0.1:{port}").parse().unwrap(),
        state_dir: dir.to_path_buf(),
        node_id: Some("n1".into()),
        ..AgentConfig::default()
    };
    let endpoint = Endpoint::new(cfg.broker.clone(), None).unwrap();
    let (events, job_events) = mpsc::unbounded_channel();
    let host = Arc::new(QuietHost);
    let mut agent = Prepared::new(cfg, endpoint, node, host, Box::new(NoJobs), job_events).unwrap();
    agent.link.reconnect = Reconnect::new(
        Backoff::new(ms(20), ms(100)),
        Duration::from_secs(1),
        Duration::from_secs(2),
        ms(100),
    );
    (agent, events)
}

/// Starts the fake broker: connection `i` (from 1) gets `script[i - 1]`.
fn fake_broker(
    listener: TcpListener,
    script: Vec<Answer>,
) -> mpsc::UnboundedReceiver<(usize, Seen)> {
    let (seen_tx, seen) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        for (i, answer) in script.into_iter().enumerate() {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(serve(stream, answer, i + 1, seen_tx.clone()));
        }
    });
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_out_connects_lose_nothing_and_repeat_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // Attempt 1 times out, 2 connects and is lost, 3 times out, 4 connects.
    let script = vec![
        Answer::Silent,
        Answer::UntilReport,
        Answer::Silent,
        Answer::Accept,
    ];
    let mut seen = fake_broker(listener, script);

    let (mut agent, events) = agent_on(port, dir.path());
    agent.seed_reconnect(1);
    let stats = agent.connect_stats();
    // A job event before any connection: report 1 waits in the outbox.
    events
        .send(JobEvent {
            command_id: CommandId::new("job-1").unwrap(),
            job: JobKind::Install,
            status: JobStatus::Started,
            progress: Some(0),
            step: None,
            message: None,
            error: None,
        })
        .unwrap();
    let (stop, shutdown) = watch::channel(false);
    let started = Instant::now();
    let running = tokio::spawn(agent.run(shutdown));

    let mut log = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some((n, s)) = seen.recv().await {
            let last =
                n == 4 && matches!(&s, Seen::Publish { topic, .. } if topic.ends_with("/reports"));
            log.push((n, s));
            if last {
                break;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("connection 4 never sent its report; saw {log:#?}"));
    stop.send(true).unwrap();
    running.await.unwrap().unwrap();
    println!("four attempts in {:?}", started.elapsed());

    // Every attempt had its own `conn`, in order, with a Will that names it.
    let connects: Vec<(usize, &str, &Value, Instant)> = log
        .iter()
        .filter_map(|(n, s)| match s {
            Seen::Connect {
                at,
                client_id,
                will,
            } => Some((*n, client_id.as_str(), will, *at)),
            Seen::Publish { .. } => None,
        })
        .collect();
    let ids: Vec<(usize, &str)> = connects.iter().map(|(n, id, _, _)| (*n, *id)).collect();
    assert_eq!(
        ids,
        [(1, "n1-c1"), (2, "n1-c2"), (3, "n1-c3"), (4, "n1-c4")]
    );
    for (n, _, will, _) in &connects {
        assert_eq!(will["conn"], *n as u64, "{will}");
        assert_eq!(
            (&will["online"], &will["reason"]),
            (&Value::Bool(false), &Value::from("lost"))
        );
    }
    // Each unanswered CONNECT was waited for, the policy's first wait (1 s) at least
    // (the growth and the reset are the policy's own tests). The times are when the
    // fake broker read each CONNECT: on a loaded machine the first read can come late
    // and shorten the gap it sees, hence the 200 ms of slack (a CI run failed at 1 s).
    let waited = Duration::from_millis(800);
    assert!(connects[1].3 - connects[0].3 >= waited, "{connects:?}");
    assert!(connects[3].3 - connects[2].3 >= waited, "{connects:?}");
    // Nothing was sent on a connection that was not accepted; each accepted one got
    // its birth, then the unreceipted report 1, once.
    let publishes = |conn: usize, kind: &str| -> Vec<&Value> {
        log.iter()
            .filter_map(|(n, s)| match s {
                Seen::Publish { topic, payload } if *n == conn && topic.ends_with(kind) => {
                    Some(payload)
                }
                _ => None,
            })
            .collect()
    };
    for conn in [1, 3] {
        assert!(log
            .iter()
            .all(|(n, s)| *n != conn || matches!(s, Seen::Connect { .. })));
    }
    let mut sessions = Vec::new();
    for conn in [2, 4] {
        let births = publishes(conn, "/status");
        assert_eq!(births.len(), 1, "{births:?}");
        assert_eq!(
            (&births[0]["online"], &births[0]["conn"]),
            (&Value::Bool(true), &Value::from(conn))
        );
        let reports = publishes(conn, "/reports");
        let seqs: Vec<&Value> = reports.iter().map(|r| &r["seq"]).collect();
        assert_eq!(seqs, [&Value::from(1)], "connection {conn}");
        assert_eq!(reports[0]["command_id"], "job-1");
        sessions.push(reports[0]["session"].clone());
    }
    assert_eq!(sessions[0], sessions[1]);
    // The counter on disk only grew, and the counters say what happened.
    assert_eq!(AgentStore::open(dir.path()).unwrap().conn().unwrap(), 4);
    let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
    assert_eq!(
        (
            count(&stats.attempts),
            count(&stats.connected),
            count(&stats.timeouts)
        ),
        (4, 2, 2)
    );
}

/// A broker that answers CONNECT with anything but a CONNACK: garbage, a refusal, a
/// message before the CONNACK, a packet claiming 256 MB. Each attempt ends without a
/// panic and without sending anything, the agent keeps trying, each time with a new
/// `conn`, and the first real broker gets its birth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_broker_gets_nothing_and_the_agent_keeps_trying() {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hostile: [&'static [u8]; 5] = [
        &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        // CONNACK 5, not authorized (a forged "your credential is revoked").
        &[0x20, 2, 0, 5],
        // A PUBLISH on the node's commands topic before any CONNACK.
        b"\x30\x1e\x00\x18metalbus/v1/nodes/n1/cmds{}\x00\x00",
        // A CONNACK whose remaining length claims 256 MB.
        &[0x20, 0xff, 0xff, 0xff, 0x7f],
        // A CONNACK too short to hold a return code, multibyte junk after it.
        "\u{20}\u{1}\0€".as_bytes(),
    ];
    let mut script: Vec<Answer> = hostile.iter().map(|b| Answer::Hostile(b)).collect();
    script.push(Answer::Accept);
    let mut seen = fake_broker(listener, script);
    let (mut agent, _events) = agent_on(port, dir.path());
    agent.seed_reconnect(2);
    let stats = agent.connect_stats();
    let (stop, shutdown) = watch::channel(false);
    let running = tokio::spawn(agent.run(shutdown));

    let last = hostile.len() + 1;
    let mut log = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some((n, s)) = seen.recv().await {
            let birth = n == last
                && matches!(&s, Seen::Publish { topic, .. } if topic.ends_with("/status"));
            log.push((n, s));
            if birth {
                break;
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        let seen: Vec<(usize, String)> = log
            .iter()
            .map(|(n, s)| match s {
                Seen::Connect { client_id, .. } => (*n, format!("CONNECT {client_id}")),
                Seen::Publish { topic, .. } => (*n, format!("PUBLISH {topic}")),
            })
            .collect();
        panic!("no birth after the hostile answers; saw {seen:?}")
    });
    stop.send(true).unwrap();
    running.await.unwrap().unwrap();

    // One CONNECT per hostile answer, each with its own client id, and nothing else.
    for n in 1..last {
        let on_it: Vec<&Seen> = log
            .iter()
            .filter(|(c, _)| *c == n)
            .map(|(_, s)| s)
            .collect();
        assert_eq!(on_it.len(), 1, "connection {n}: {on_it:?}");
        assert!(
            matches!(on_it[0], Seen::Connect { client_id, .. } if *client_id == format!("n1-c{n}")),
            "connection {n}: {on_it:?}"
        );
    }
    let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
    assert_eq!(count(&stats.attempts), last as u64);
    assert_eq!(count(&stats.connected), 1);
}
