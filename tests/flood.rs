//! A flood of malformed, oversized and random MQTT traffic from 50 clients against the
//! embedded broker (issue 12): the controller stays up, its memory stays under
//! [`RSS_BOUND_MIB`], and a real agent installs during the flood and another after it.
//!
//! CI runs it for [`CI_SECONDS`]; the soak is the same test for five minutes:
//!
//! ```text
//! METALBUS_FLOOD_SECS=300 cargo test --release -p metalbus-e2e --test flood -- --nocapture
//! ```
//!
//! The clients, in turn by index:
//! - **garbage**: random bytes instead of a CONNECT, or a CONNECT cut short;
//! - **forger**: a node's user name with a wrong password;
//! - **hostile node** (enrolled, so its messages reach ingest): junk, unsealed and
//!   sealed, on its own topics, retained or not, up to 1.2 MB; impossible births and
//!   reports; now and then a topic it may not use (the door closes it; it reconnects);
//! - **deaf monitor**: a viewer subscribed to everything that never reads;
//! - **enrolling**: junk enrollment requests, retained, for random node ids.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metalbus_e2e::{enroll_node, steps_dir, AgentProc, Controller};
use metalbus_protocol::proof::{self, NodeKey};
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long the flood lasts in CI (`METALBUS_FLOOD_SECS` overrides).
const CI_SECONDS: u64 = 20;
const CLIENTS: usize = 50;
/// Hostile nodes with a real credential (the clients of that kind share them).
const HOSTILE_NODES: usize = 10;
/// A message per client about this often.
const PACE: Duration = Duration::from_millis(40);
/// The controller's resident memory may not pass this during the flood. At rest it is
/// about 30 MiB; the embedded broker's per-topic logs are bounded (docs/LIMITS.md), and
/// the retained store holds at most two bounded messages per node.
const RSS_BOUND_MIB: u64 = 400;
const WAIT: Duration = Duration::from_secs(90);

#[derive(Default)]
struct Tally {
    connects: AtomicU64,
    messages: AtomicU64,
    bytes: AtomicU64,
    closed: AtomicU64,
}

fn mqtt_str(s: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&u16::try_from(s.len()).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(&s[..s.len().min(usize::from(u16::MAX))]);
}

fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut n = body.len();
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

fn connect(client_id: &str, user: &str, password: &str) -> Vec<u8> {
    let mut body = Vec::new();
    mqtt_str(b"MQTT", &mut body);
    body.push(4);
    body.push(0b1100_0010);
    body.extend_from_slice(&30u16.to_be_bytes());
    mqtt_str(client_id.as_bytes(), &mut body);
    mqtt_str(user.as_bytes(), &mut body);
    mqtt_str(password.as_bytes(), &mut body);
    frame(0x10, &body)
}

fn publish(topic: &str, payload: &[u8], qos1: bool, retain: bool, pkid: u16) -> Vec<u8> {
    let mut body = Vec::new();
    mqtt_str(topic.as_bytes(), &mut body);
    if qos1 {
        body.extend_from_slice(&pkid.max(1).to_be_bytes());
    }
    body.extend_from_slice(payload);
    frame(0x30 | (u8::from(qos1) << 1) | u8::from(retain), &body)
}

fn subscribe_all() -> Vec<u8> {
    let mut body = 1u16.to_be_bytes().to_vec();
    mqtt_str(b"metalbus/v1/#", &mut body);
    body.push(1);
    frame(0x82, &body)
}

/// A message a hostile node might send: (topic kind, payload, sealed, retained).
fn junk(rng: &mut rand::rngs::StdRng) -> (&'static str, Vec<u8>, bool, bool) {
    const KINDS: [&str; 4] = ["status", "inventory", "metrics", "reports"];
    let kind = KINDS[rng.gen_range(0..KINDS.len())];
    let retain = matches!(kind, "status" | "inventory") && rng.gen_bool(0.5);
    let payload: Vec<u8> = match rng.gen_range(0..10) {
        0 => (0..rng.gen_range(0..2_000)).map(|_| rng.gen()).collect(),
        // Oversized: over the 256 KiB ingest bound, some of it multibyte.
        1 if rng.gen_bool(0.15) => {
            let n = rng.gen_range(300_000..1_200_000);
            format!("{{\"pad\":\"{}\"}}", "€".repeat(n / 3)).into_bytes()
        }
        2 => format!(
            r#"{{"online":true,"conn":{},"session":"{}","agent_version":"x","hostname":"{}","boot_id":null,"metrics_interval_s":{},"ts":"2026-01-01T00:00:00Z"}}"#,
            rng.gen::<u64>(),
            "s".repeat(rng.gen_range(0..300)),
            "w€b".repeat(rng.gen_range(0..100)),
            rng.gen::<u32>(),
        )
        .into_bytes(),
        3 => format!(
            r#"{{"session":"o1","seq":{},"ts":"2026-01-01T00:00:00Z","kind":"ack","command_id":"{}","accepted":false,"reason":"{}"}}"#,
            rng.gen_range(1..u64::MAX),
            "c".repeat(rng.gen_range(1..200)),
            "r".repeat(rng.gen_range(0..20_000)),
        )
        .into_bytes(),
        4 => format!(
            r#"{{"ts":"2026-01-01T00:00:00Z","cpu_percent":{},"memory_used_bytes":-1}}"#,
            rng.gen::<f64>() * 1e300
        )
        .into_bytes(),
        _ => format!(
            r#"{{"x":{},"nested":{}}}"#,
            rng.gen::<i64>(),
            "[".repeat(rng.gen_range(0..200))
        )
        .into_bytes(),
    };
    let sealed = rng.gen_bool(0.7);
    (kind, payload, sealed, retain)
}

/// Reads and drops whatever the server sends until the connection ends.
fn drain(mut rd: tokio::net::tcp::OwnedReadHalf) {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        while matches!(rd.read(&mut buf).await, Ok(n) if n > 0) {}
    });
}

/// What every client knows: where to go, the logins it may use, and when to stop.
struct Flood {
    port: u16,
    /// Hostile nodes' ids and keys.
    keys: Vec<(String, NodeKey)>,
    /// The fleet token's MQTT login.
    fleet: (String, String),
    admin: String,
    tally: Tally,
    until: Instant,
}

async fn one_session(index: usize, flood: &Flood, rng: &mut rand::rngs::StdRng) {
    let Flood {
        port,
        keys,
        fleet,
        admin,
        tally,
        until,
    } = flood;
    let (port, until) = (*port, *until);
    let Ok(stream) = TcpStream::connect(("127.0.0.1", port)).await else {
        return;
    };
    tally.connects.fetch_add(1, Ordering::Relaxed);
    let (rd, mut wr) = stream.into_split();
    let kind = index % 5;
    let hello = match kind {
        0 => {
            let n = rng.gen_range(1..5_000);
            let mut bytes: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
            if rng.gen_bool(0.5) {
                // A CONNECT cut short.
                bytes = connect("cut", "n1", "x");
                bytes.truncate(rng.gen_range(1..bytes.len()));
            }
            let _ = wr.write_all(&bytes).await;
            tally.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            drain(rd);
            tokio::time::sleep(PACE).await;
            return;
        }
        1 => connect(&format!("forger-{index}"), &keys[0].0, "not-the-password"),
        2 => {
            let (id, key) = &keys[index % keys.len()];
            connect(&format!("hostile-{index}"), id, &key.broker_password())
        }
        3 => connect(&format!("deaf-{index}"), "viewer", admin),
        _ => connect(&format!("enrolling-{index}"), &fleet.0, &fleet.1),
    };
    if wr.write_all(&hello).await.is_err() {
        return;
    }
    if kind == 3 {
        // Subscribes to everything and never reads a byte.
        let _ = wr.write_all(&subscribe_all()).await;
        tokio::time::sleep(
            Duration::from_secs(5).min(until.saturating_duration_since(Instant::now())),
        )
        .await;
        drop(rd);
        return;
    }
    drain(rd);
    let mut pkid = 1u16;
    while Instant::now() < until {
        let packet = match kind {
            2 => {
                let (id, key) = &keys[index % keys.len()];
                let (k, payload, sealed, retain) = junk(rng);
                let topic = if rng.gen_bool(0.01) {
                    // Another node's topic: the door closes the connection.
                    format!("metalbus/v1/nodes/h-other/{k}")
                } else {
                    format!("metalbus/v1/nodes/{id}/{k}")
                };
                let body = if sealed {
                    proof::seal(key, &topic, &payload).unwrap_or(payload)
                } else {
                    payload
                };
                publish(&topic, &body, rng.gen_bool(0.5), retain, pkid)
            }
            1 => connect("again", "x", "y"),
            _ => {
                let id = format!("e{}", rng.gen_range(0..100_000));
                let junk: Vec<u8> = (0..rng.gen_range(0..3_000)).map(|_| rng.gen()).collect();
                publish(
                    &format!("metalbus/v1/nodes/{id}/enroll"),
                    &junk,
                    true,
                    true,
                    pkid,
                )
            }
        };
        pkid = pkid.wrapping_add(1).max(1);
        if wr.write_all(&packet).await.is_err() {
            tally.closed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        tally.messages.fetch_add(1, Ordering::Relaxed);
        tally
            .bytes
            .fetch_add(packet.len() as u64, Ordering::Relaxed);
        tokio::time::sleep(PACE).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_hostile_clients_neither_stop_the_controller_nor_an_install() {
    let seconds = std::env::var("METALBUS_FLOOD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(CI_SECONDS);
    let tmp = tempfile::tempdir().unwrap();
    let ctl = Controller::with_config(tmp.path(), &Controller::quick_plan("1"), &[]).await;
    let api = ctl.api();
    let steps = steps_dir(tmp.path(), &[]);
    let steps = ["--steps-dir", steps.to_str().unwrap()];
    let _during = AgentProc::start_with(tmp.path(), &ctl.broker_url(), "real-during", &steps);
    let _after = AgentProc::start_with(tmp.path(), &ctl.broker_url(), "real-after", &steps);
    api.wait_state("real-during", "discovered", WAIT).await;
    api.wait_state("real-after", "discovered", WAIT).await;
    let mut keys = Vec::new();
    for i in 0..HOSTILE_NODES {
        let id = format!("h{i}");
        keys.push((id.clone(), enroll_node(&ctl, &id).await));
    }
    let token: metalbus_protocol::enroll::EnrollToken =
        std::fs::read_to_string(metalbus_e2e::fleet_token_file(&ctl.dir))
            .unwrap()
            .parse()
            .unwrap();
    let fleet = (
        format!(
            "{}{}",
            metalbus_protocol::enroll::ENROLL_USER_PREFIX,
            token.id
        ),
        token.broker_password(),
    );
    let at_rest = ctl.rss_kib().unwrap();

    let started = Instant::now();
    let flood = Arc::new(Flood {
        port: ctl.mqtt_port,
        keys,
        fleet,
        admin: ctl.token(),
        tally: Tally::default(),
        until: started + Duration::from_secs(seconds),
    });
    let mut clients = Vec::new();
    for index in 0..CLIENTS {
        let flood = flood.clone();
        clients.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(index as u64);
            while Instant::now() < flood.until {
                one_session(index, &flood, &mut rng).await;
            }
        }));
    }
    let tally = &flood.tally;

    // Memory, sampled through the flood and the installs.
    let peak = Arc::new(AtomicU64::new(at_rest));
    let sampler = {
        let (peak, pid) = (peak.clone(), ctl.pid());
        tokio::spawn(async move {
            loop {
                let status =
                    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                let rss = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                    .unwrap_or(0);
                peak.fetch_max(rss, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };

    // An install during the flood.
    tokio::time::sleep(Duration::from_secs(seconds.min(5) / 2)).await;
    let (status, body) = api
        .post("/api/v1/nodes/real-during/manage", None)
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    api.wait_state("real-during", "active", WAIT).await;
    let during = started.elapsed();

    for c in clients {
        c.await.unwrap();
    }
    let flood = started.elapsed();
    // And one after it.
    let (status, body) = api
        .post("/api/v1/nodes/real-after/manage", None)
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    api.wait_state("real-after", "active", WAIT).await;
    sampler.abort();

    let peak_mib = peak.load(Ordering::Relaxed) / 1024;
    let rejected = ctl
        .metric("metalbus_ingest_rejected_total")
        .await
        .unwrap_or_default();
    let retained_cut = ctl
        .metric("metalbus_limit_hits_total{limit=\"retained_size\"}")
        .await
        .unwrap_or_default();
    println!(
        "flood: {seconds} s, {CLIENTS} clients, {} connections, {} messages, {} MB sent; \
         {} writes hit a closed connection; controller refused {rejected} at ingest, kept \
         {retained_cut} oversized retained publishes unretained; RSS {} MiB at rest, peak \
         {peak_mib} MiB (bound {RSS_BOUND_MIB}); install during the flood active after {:.1} s, \
         flood over after {:.1} s",
        tally.connects.load(Ordering::Relaxed),
        tally.messages.load(Ordering::Relaxed),
        tally.bytes.load(Ordering::Relaxed) / 1_000_000,
        tally.closed.load(Ordering::Relaxed),
        at_rest / 1024,
        during.as_secs_f64(),
        flood.as_secs_f64(),
    );
    assert!(
        peak_mib < RSS_BOUND_MIB,
        "controller RSS peaked at {peak_mib} MiB"
    );
    assert!(
        during < flood,
        "the install finished only after the flood: {during:?} vs {flood:?}"
    );
    // The flood reached the controller's own checks, and the front door's.
    assert!(rejected > 0, "nothing reached ingest");
    assert!(retained_cut > 0, "no retained publish was over its bound");
    let (status, _) = api.get("/readyz").await.unwrap();
    assert_eq!(status, 200);
}
