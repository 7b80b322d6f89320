//! `metalbus-agent simulate`: N virtual agents in one process, for load and fault tests.
//! Each runs the real daemon code (MQTT, birth and Will, the durable outbox, receipts,
//! command de-duplication, the reconnect policy) over an invented host and a job runner
//! that only emits events. Their reconnect jitter is drawn from the seed and the node id,
//! so a run repeats its spread and no two agents draw alike.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use metalbus_protocol::command::{Command, CommandId, CommandKind, JobKind};
use metalbus_protocol::inventory::{CpuInfo, Disk, Inventory, MemoryInfo, Nic, OsInfo};
use metalbus_protocol::metrics::{MetricsSample, Usage};
use metalbus_protocol::report::JobStatus;
use metalbus_protocol::{NodeId, Timestamp};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::config::AgentConfig;
use crate::core::DeliveryStats;
use crate::daemon::{ConnectStats, Prepared};
use crate::host::Host;
use crate::jobs::{Ack, JobEvent, Jobs};

/// How a simulation runs.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Settings every virtual agent shares; `state_dir` is the parent of theirs.
    pub agent: AgentConfig,
    pub nodes: usize,
    /// Node ids are `{prefix}-0001`, `{prefix}-0002`, ...
    pub prefix: String,
    pub seed: u64,
    /// Progress events each install emits, and the pause between them.
    pub progress_events: u32,
    pub progress_every: Duration,
    /// Where to write delivery counters (JSON), every second and at the end.
    pub stats: Option<PathBuf>,
}

/// An invented machine: stable facts from the seed, noisy metrics.
struct SimHost {
    name: String,
    /// A locally administered MAC and a 10/8 address, unique per prefix and index.
    mac: String,
    ip: std::net::Ipv4Addr,
    boot_id: String,
    threads: u32,
    memory: u64,
    rng: Mutex<StdRng>,
}

impl Host for SimHost {
    fn hostname(&self) -> String {
        self.name.clone()
    }

    fn boot_id(&self) -> Option<String> {
        Some(self.boot_id.clone())
    }

    fn inventory(&self) -> Inventory {
        Inventory {
            hostname: Some(self.name.clone()),
            cpu: CpuInfo {
                model: Some("Simulated CPU".into()),
                vendor: Some("Metalbus".into()),
                sockets: Some(1),
                cores: Some(self.threads / 2),
                threads: Some(self.threads),
                arch: Some("x86_64".into()),
                mhz: Some(2400.0),
            },
            memory: MemoryInfo {
                total_bytes: Some(self.memory),
                swap_bytes: Some(0),
            },
            disks: vec![Disk {
                name: "vda".into(),
                model: Some("Simulated disk".into()),
                serial: None,
                wwn: None,
                size_bytes: Some(480_000_000_000),
                rotational: Some(false),
                removable: Some(false),
                transport: Some("virtio".into()),
            }],
            nics: vec![Nic {
                name: "eth0".into(),
                mac: Some(self.mac.clone()),
                speed_mbps: Some(10_000),
                carrier: Some(true),
                driver: Some("sim".into()),
                mtu: Some(1500),
                ipv4: vec![self.ip],
                ipv6: vec![],
            }],
            os: OsInfo {
                id: Some("sim".into()),
                name: Some("Simulated OS".into()),
                version: Some("1".into()),
                kernel: Some("6.1.0-sim".into()),
                boot_mode: None,
            },
            ..Inventory::default()
        }
    }

    fn metrics(&self) -> Option<MetricsSample> {
        let mut rng = self.rng.lock().ok()?;
        let used = rng.gen_range(self.memory / 10..self.memory / 2);
        Some(MetricsSample {
            ts: Timestamp::from(SystemTime::now()),
            cpu_percent: Some(rng.gen_range(0.0..100.0)),
            load: None,
            memory: Some(Usage {
                used_bytes: used,
                total_bytes: self.memory,
            }),
            swap: None,
            filesystems: None,
            network: None,
            disk_io: None,
            uptime_s: Some(3600),
            temperatures_c: None,
            outbox: None,
            node_id: None,
        })
    }
}

/// The simulated job that runs now: its command id, kind and task.
type RunningSim = (CommandId, JobKind, tokio::task::JoinHandle<()>);

/// A job runner that runs nothing: `started`, N `progress` events, `complete`.
struct SimJobs {
    events: mpsc::UnboundedSender<JobEvent>,
    running: Arc<Mutex<Option<RunningSim>>>,
    progress_events: u32,
    every: Duration,
}

impl SimJobs {
    fn event(
        command_id: &CommandId,
        job: JobKind,
        status: JobStatus,
        progress: Option<u8>,
    ) -> JobEvent {
        JobEvent {
            command_id: command_id.clone(),
            job,
            status,
            progress,
            step: Some("simulated".into()),
            message: None,
            error: None,
        }
    }
}

impl Jobs for SimJobs {
    fn handle(&mut self, cmd: &Command) -> Ack {
        let mut running = match self.running.lock() {
            Ok(r) => r,
            Err(_) => {
                return Ack {
                    accepted: false,
                    reason: Some("job runner broken".into()),
                }
            }
        };
        if let CommandKind::Cancel = cmd.kind {
            if let Some((id, job, task)) = running.take() {
                task.abort();
                let _ = self.events.send(JobEvent {
                    error: Some(format!("cancelled by command {}", cmd.command_id)),
                    ..SimJobs::event(&id, job, JobStatus::Failed, None)
                });
            }
            return Ack {
                accepted: true,
                reason: None,
            };
        }
        let Some(job) = cmd.kind.job() else {
            return Ack {
                accepted: false,
                reason: Some(format!("{} is not simulated", cmd.kind)),
            };
        };
        if let Some((id, _, task)) = running.as_ref() {
            if !task.is_finished() {
                return Ack {
                    accepted: false,
                    reason: Some(format!("a job is already running: {id}")),
                };
            }
        }
        let events = self.events.clone();
        let id = cmd.command_id.clone();
        let (n, every) = match job {
            JobKind::Install => (self.progress_events, self.every),
            JobKind::Deprovision => (2, self.every),
        };
        let slot = self.running.clone();
        let _ = events.send(SimJobs::event(&id, job, JobStatus::Started, Some(0)));
        let task = tokio::spawn({
            let id = id.clone();
            async move {
                for i in 1..=n {
                    tokio::time::sleep(every).await;
                    let pct = u8::try_from(u64::from(i) * 100 / u64::from(n.max(1))).unwrap_or(100);
                    let _ = events.send(SimJobs::event(
                        &id,
                        job,
                        JobStatus::Progress,
                        Some(pct.min(99)),
                    ));
                }
                if let Ok(mut r) = slot.lock() {
                    *r = None;
                }
                let _ = events.send(SimJobs::event(&id, job, JobStatus::Complete, Some(100)));
            }
        });
        *running = Some((id, job, task));
        Ack {
            accepted: true,
            reason: None,
        }
    }

    fn running(&self) -> Option<CommandId> {
        self.running
            .lock()
            .ok()?
            .as_ref()
            .filter(|(_, _, t)| !t.is_finished())
            .map(|(id, _, _)| id.clone())
    }
}

/// Delivery counters of one virtual agent, as written to the stats file.
#[derive(Debug, Serialize)]
pub struct NodeStats {
    pub last_seq: u64,
    pub sent: u64,
    pub resent: u64,
    pub receipted: u64,
    pub pending: u64,
    /// Connection attempts; beyond the first, each is a reconnect.
    pub attempts: u64,
    /// Attempts the broker accepted.
    pub connects: u64,
    /// Attempts given up for want of a CONNACK within the wait.
    pub timeouts: u64,
}

/// One virtual agent's live counters.
type Counters = (Arc<DeliveryStats>, Arc<ConnectStats>);

fn snapshot(all: &BTreeMap<String, Counters>) -> BTreeMap<String, NodeStats> {
    all.iter()
        .map(|(id, (s, c))| {
            (
                id.clone(),
                NodeStats {
                    last_seq: s.last_seq.load(Ordering::Relaxed),
                    sent: s.sent.load(Ordering::Relaxed),
                    resent: s.resent.load(Ordering::Relaxed),
                    receipted: s.receipted.load(Ordering::Relaxed),
                    pending: s.pending.load(Ordering::Relaxed),
                    attempts: c.attempts.load(Ordering::Relaxed),
                    connects: c.connected.load(Ordering::Relaxed),
                    timeouts: c.timeouts.load(Ordering::Relaxed),
                },
            )
        })
        .collect()
}

/// The seed of one agent's reconnect jitter: the run's seed and the node id (so two
/// simulations with different prefixes draw apart), FNV-1a folded.
fn reconnect_seed(seed: u64, id: &NodeId) -> u64 {
    id.as_str()
        .bytes()
        .fold(seed ^ 0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
}

fn write_stats(path: &PathBuf, all: &BTreeMap<String, Counters>) {
    let tmp = path.with_extension("tmp");
    let body = serde_json::to_vec_pretty(&snapshot(all)).unwrap_or_default();
    if std::fs::write(&tmp, body)
        .and_then(|()| std::fs::rename(&tmp, path))
        .is_err()
    {
        warn!(path = %path.display(), "cannot write the stats file");
    }
}

/// Runs the virtual agents until `shutdown` turns true.
pub async fn run(cfg: SimConfig, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut tasks = Vec::new();
    let mut stats = BTreeMap::new();
    // Every virtual agent trusts the same controller: the token's, or the one the first
    // agent enrolled with.
    let first = cfg.agent.state_dir.join(format!("{}-0001", cfg.prefix));
    let endpoint = crate::daemon::endpoint(&cfg.agent, &first)?;
    // One byte from the prefix, so that two simulations with different prefixes get
    // different addresses.
    let tag = cfg
        .prefix
        .bytes()
        .fold(0u8, |h, b| h.wrapping_mul(31).wrapping_add(b));
    for i in 1..=cfg.nodes {
        let id = NodeId::new(format!("{}-{i:04}", cfg.prefix))?;
        let [_, _, hi, lo] = u32::try_from(i).unwrap_or(u32::MAX).to_be_bytes();
        let host = Arc::new(SimHost {
            name: id.to_string(),
            mac: format!("02:4d:42:{tag:02x}:{hi:02x}:{lo:02x}"),
            ip: std::net::Ipv4Addr::new(10, tag, hi, lo),
            boot_id: format!("{:032x}", rng.gen::<u128>()),
            threads: 2 << rng.gen_range(1..6),
            memory: (8u64 << rng.gen_range(0..5)) * 1024 * 1024 * 1024,
            rng: Mutex::new(StdRng::seed_from_u64(rng.gen())),
        });
        let (events, job_events) = mpsc::unbounded_channel();
        let jobs = SimJobs {
            events,
            running: Arc::new(Mutex::new(None)),
            progress_events: cfg.progress_events,
            every: cfg.progress_every,
        };
        let mut agent_cfg = cfg.agent.clone();
        agent_cfg.state_dir = cfg.agent.state_dir.join(id.as_str());
        agent_cfg.node_id = Some(id.to_string());
        let mut agent = Prepared::new(
            agent_cfg,
            endpoint.clone(),
            id.clone(),
            host,
            Box::new(jobs),
            job_events,
        )?;
        agent.seed_reconnect(reconnect_seed(cfg.seed, &id));
        stats.insert(id.to_string(), (agent.stats(), agent.connect_stats()));
        tasks.push(tokio::spawn(agent.run(shutdown.clone())));
    }
    info!(nodes = cfg.nodes, broker = %cfg.agent.broker, "simulated agents started");
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut stop = shutdown.clone();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Some(path) = &cfg.stats {
                    write_stats(path, &stats);
                }
            }
            _ = stop.changed() => break,
        }
    }
    for t in tasks {
        match t.await {
            Ok(Err(e)) => warn!(error = %e, "a simulated agent stopped with an error"),
            Err(e) => warn!(error = %e, "a simulated agent task failed"),
            Ok(Ok(())) => {}
        }
    }
    if let Some(path) = &cfg.stats {
        write_stats(path, &stats);
    }
    let snap = snapshot(&stats);
    let sum = |f: fn(&NodeStats) -> u64| snap.values().map(f).sum::<u64>();
    info!(
        reports = sum(|s| s.last_seq),
        sent = sum(|s| s.sent),
        resent = sum(|s| s.resent),
        pending = sum(|s| s.pending),
        attempts = sum(|s| s.attempts),
        timeouts = sum(|s| s.timeouts),
        "simulation stopped"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_agent_of_two_simulations_draws_its_own_jitter_and_the_same_each_run() {
        let mut seeds = std::collections::BTreeSet::new();
        for prefix in ["a", "b"] {
            for i in 1..=5_000 {
                let id = NodeId::new(format!("{prefix}-{i:04}")).unwrap();
                assert_eq!(reconnect_seed(7, &id), reconnect_seed(7, &id));
                seeds.insert(reconnect_seed(7, &id));
            }
        }
        assert_eq!(seeds.len(), 10_000);
        let id = NodeId::new("a-0001").unwrap();
        assert_ne!(reconnect_seed(7, &id), reconnect_seed(8, &id));
    }
}
