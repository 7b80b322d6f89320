//! Pre-registration and matching end to end (DESIGN section 8): 10 real agents, each with
//! its own hostname and MAC (a fixture root per agent), start at once against 10
//! registrations that share a hostname prefix; each record is claimed exactly once. One
//! registration is claimed by MAC with its name, labels and group. A registration no
//! agent claims times out into `error` with `DiscoveryTimeout`. Bad registrations are
//! refused with clear errors; the CLI registers too.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use metalbus_e2e::{eventually, fixture_root, AgentProc, Api, Controller};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);

/// A copy of the agent's VM fixture tree with this host's hostname and eth0 MAC.
fn host_root(dir: &Path, hostname: &str, mac: &str) -> PathBuf {
    let root = fixture_root(dir, &format!("root-{hostname}"));
    std::fs::write(
        root.join("proc/sys/kernel/hostname"),
        format!("{hostname}\n"),
    )
    .unwrap();
    std::fs::write(
        root.join("sys/devices/pci0000:00/0000:00:03.0/virtio2/net/eth0/address"),
        format!("{mac}\n"),
    )
    .unwrap();
    root
}

fn agent(dir: &Path, ctl: &Controller, id: &str, hostname: &str, mac: &str) -> AgentProc {
    let root = host_root(dir, hostname, mac);
    AgentProc::start_with(
        dir,
        &ctl.broker_url(),
        id,
        &["--root", root.to_str().unwrap()],
    )
}

async fn nodes(api: &Api) -> Vec<Value> {
    api.nodes().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_agents_at_once_claim_ten_registrations_each_once() {
    let tmp = tempfile::tempdir().unwrap();
    let ctl = Controller::start(tmp.path(), &[]).await;
    let api = ctl.api();
    for k in 1..=10 {
        let (status, body) = api
            .post(
                "/api/v1/nodes",
                Some(json!({"name": format!("rack1-{k:02}"), "hostname": "rack1",
                            "labels": {"rack": "r1"}, "group": "workers"})),
            )
            .await
            .unwrap();
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["data"]["state"], "registered", "{body}");
        assert_eq!(body["data"]["registration"]["hostname"], "rack1", "{body}");
    }
    let started = Instant::now();
    let agents: Vec<AgentProc> = (0..10)
        .map(|k| {
            agent(
                tmp.path(),
                &ctl,
                &format!("m-{k}"),
                &format!("rack1-node{k}"),
                &format!("02:fc:00:00:01:{k:02x}"),
            )
        })
        .collect();
    let all = eventually(WAIT, "ten agents to claim ten registrations", || {
        let api = api.clone();
        async move {
            let all = nodes(&api).await;
            let discovered = all.iter().filter(|n| n["state"] == "discovered").count();
            if discovered == 10 {
                Ok(all)
            } else {
                Err(format!("{discovered} discovered of {}", all.len()))
            }
        }
    })
    .await;
    println!(
        "10 agents matched 10 registrations in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(all.len(), 10, "no record left over: {all:?}");
    let names: BTreeSet<String> = all
        .iter()
        .map(|n| n["name"].as_str().unwrap().to_string())
        .collect();
    let expected: BTreeSet<String> = (1..=10).map(|k| format!("rack1-{k:02}")).collect();
    assert_eq!(names, expected, "each record claimed once, none twice");
    let ids: BTreeSet<String> = all
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_string())
        .collect();
    let agent_ids: BTreeSet<String> = agents.iter().map(|a| a.node_id.clone()).collect();
    assert_eq!(ids, agent_ids, "the agents keep their ids");
    for n in &all {
        assert_eq!(n["labels"]["rack"], "r1", "{n}");
        assert_eq!(n["group"], "workers", "{n}");
        let id = n["id"].as_str().unwrap();
        let (_, h) = api
            .get(&format!("/api/v1/nodes/{id}/history"))
            .await
            .unwrap();
        assert_eq!(h["total"], 1, "{h}");
        let e = &h["data"][0];
        assert_eq!(
            (&e["from_state"], &e["to_state"], &e["triggered_by"]),
            (&json!("registered"), &json!("discovered"), &json!("system")),
            "{h}"
        );
        assert!(
            e["comment"].as_str().unwrap().ends_with("by hostname"),
            "{h}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mac_wins_over_a_hostname_and_an_unclaimed_registration_times_out() {
    let tmp = tempfile::tempdir().unwrap();
    let ctl = Controller::with_config(
        tmp.path(),
        "[lifecycle.timeouts]\nregistered = \"4s\"\n",
        &[],
    )
    .await;
    let api = ctl.api();
    // A newer registration by hostname, an older one by MAC: the MAC wins.
    let reg = |body: Value| {
        let api = api.clone();
        async move {
            let (status, body) = api.post("/api/v1/nodes", Some(body)).await.unwrap();
            assert_eq!(status, 201, "{body}");
            body["data"]["id"].as_str().unwrap().to_string()
        }
    };
    reg(json!({"name": "db-main", "mac": "02-FC-00-00-02-01", "labels": {"role": "db"}})).await;
    let by_host = reg(json!({"name": "by-host", "hostname": "db"})).await;
    let _a = agent(tmp.path(), &ctl, "m-db", "db-1", "02:fc:00:00:02:01");
    let n = api.wait_state("m-db", "discovered", WAIT).await;
    assert_eq!(n["name"], "db-main", "{n}");
    assert_eq!(n["labels"]["role"], "db", "{n}");
    assert!(
        n["mac_addresses"]
            .as_array()
            .unwrap()
            .contains(&json!("02:fc:00:00:02:01")),
        "{n}"
    );
    let (status, _) = api.get("/api/v1/nodes/db-main").await.unwrap();
    assert_eq!(status, 200, "the name leads to the agent's node");

    // The hostname registration is left; its agent never comes: error, DiscoveryTimeout.
    let (status, left) = api.get(&format!("/api/v1/nodes/{by_host}")).await.unwrap();
    assert_eq!(status, 200, "{left}");
    assert_eq!(left["data"]["state"], "registered");
    let failed = api
        .wait_state(&by_host, "error", Duration::from_secs(20))
        .await;
    assert_eq!(failed["name"], "by-host");
    let (_, h) = api
        .get(&format!("/api/v1/nodes/{by_host}/history"))
        .await
        .unwrap();
    assert_eq!(
        h["data"][0]["metadata"]["reason"], "DiscoveryTimeout",
        "{h}"
    );
    let (_, evs) = api
        .get(&format!("/api/v1/nodes/{by_host}/events?type=Warning"))
        .await
        .unwrap();
    assert_eq!(evs["data"][0]["reason"], "DiscoveryTimeout", "{evs}");
    assert_eq!(
        evs["data"][0]["message"], "no agent matched this registration within 4s",
        "{evs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_registrations_are_refused_and_the_cli_registers() {
    let tmp = tempfile::tempdir().unwrap();
    let ctl = Controller::start(tmp.path(), &[]).await;
    let api = ctl.api();
    let cases = [
        (
            json!({"name": "x"}),
            400,
            "give at least one of mac, ip and hostname",
        ),
        (
            json!({"name": "x", "mac": "zz:00"}),
            400,
            "mac \"zz:00\" must be six hex pairs",
        ),
        (
            json!({"name": "x", "ip": "10.0.0.300"}),
            400,
            "is not an IPv4 or IPv6 address",
        ),
        (
            json!({"name": "x", "hostname": "-bad"}),
            400,
            "hostname \"-bad\" must be",
        ),
        (
            json!({"name": "bad name", "hostname": "h"}),
            400,
            "name \"bad name\" must be",
        ),
        (
            json!({"name": "x", "hostname": "h", "colour": "red"}),
            400,
            "unknown field",
        ),
        (json!({"hostname": "h"}), 400, "missing field `name`"),
    ];
    for (body, status, message) in cases {
        let (got, answer) = api.post("/api/v1/nodes", Some(body.clone())).await.unwrap();
        assert_eq!(got, status, "{body}: {answer}");
        assert_eq!(answer["errorCode"], "Primus.00002", "{body}: {answer}");
        assert!(
            answer["errorMessage"].as_str().unwrap().contains(message),
            "{body}: {answer}"
        );
    }

    // The CLI: register, then a second time with the same name (409, exit non-zero).
    let cli = |name: &str| {
        let mac = ["--mac", "02:fc:00:00:03:01"];
        ctl.cli(
            &[
                &["nodes", "register", name],
                &mac[..],
                &["--label", "rack=r9", "--group", "g"],
            ]
            .concat(),
        )
    };
    let out = cli("spare-1");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("spare-1: registered as reg-"), "{text}");
    let n = api.node("spare-1").await.unwrap();
    assert_eq!(n["state"], "registered");
    assert_eq!(n["registration"]["mac"], "02:fc:00:00:03:01");
    assert_eq!(n["labels"]["rack"], "r9");
    let again = cli("spare-1");
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("is taken by another node"), "{err}");

    // A viewer may not register.
    let (_, created) = api
        .post(
            "/api/v1/tokens",
            Some(json!({"name": "v", "role": "viewer"})),
        )
        .await
        .unwrap();
    let viewer = api.with_token(created["data"]["token"].as_str());
    let (status, _) = viewer
        .post("/api/v1/nodes", Some(json!({"name": "y", "hostname": "y"})))
        .await
        .unwrap();
    assert_eq!(status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registrations_own_token_claims_it_whatever_the_host_looks_like() {
    let tmp = tempfile::tempdir().unwrap();
    let ctl = Controller::start(tmp.path(), &[]).await;
    let api = ctl.api();
    // Hints this host does not match: only the token ties them together.
    let out = ctl.cli(&[
        "nodes",
        "register",
        "db-7",
        "--hostname",
        "db7",
        "--mac",
        "02:00:00:00:99:99",
        "--label",
        "role=db",
        "--enroll-token",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let token = text
        .lines()
        .find(|l| l.starts_with("MB1:"))
        .unwrap_or_else(|| panic!("no token in {text}"));
    let file = tmp.path().join("db-7.token");
    std::fs::write(&file, token).unwrap();
    let root = host_root(tmp.path(), "something-else", "02:00:00:00:11:11");
    let _host = AgentProc::start_with(
        tmp.path(),
        &ctl.broker_url(),
        "host-77",
        &[
            "--root",
            root.to_str().unwrap(),
            "--enroll-token-file",
            file.to_str().unwrap(),
        ],
    );
    let n = api.wait_state("host-77", "discovered", WAIT).await;
    assert_eq!(n["name"], "db-7", "{n}");
    assert_eq!(n["labels"]["role"], "db", "{n}");
    let (_, events) = api.get("/api/v1/nodes/host-77/events").await.unwrap();
    assert!(
        events["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["reason"] == "NodeMatched"
                && e["message"]
                    .as_str()
                    .unwrap()
                    .contains("by enrollment token")),
        "{events}"
    );
    // One use: a second host with the same token is refused.
    let other = tmp.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let second = AgentProc::start_with(
        &other,
        &ctl.broker_url(),
        "host-78",
        &["--enroll-token-file", file.to_str().unwrap()],
    );
    eventually(WAIT, "the second use refused", || {
        let log = second.log_text();
        async move { log.contains("has been used up").then_some(()).ok_or(log) }
    })
    .await;
    // Only an admin may ask for a token with a registration.
    let viewer = ctl.cli(&["tokens", "create", "--name", "ops", "--role", "operator"]);
    let op = String::from_utf8(viewer.stdout).unwrap().trim().to_string();
    let (status, _) = api
        .with_token(Some(&op))
        .post(
            "/api/v1/nodes",
            Some(json!({"name": "x-1", "hostname": "x", "enroll_token": true})),
        )
        .await
        .unwrap();
    assert_eq!(status, 403);
}
