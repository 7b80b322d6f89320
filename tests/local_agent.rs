//! The README's "see it work" command: `metalbus serve --local-agent` with every default
//! but the ports, then the real CLI finds the token by itself and shows this machine.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use metalbus_e2e::{bin, eventually, Controller};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_agent_shows_this_machine_within_five_seconds() {
    let tmp = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let ctl = Controller::start(tmp.path(), &["--local-agent"]).await;
    let api_url = ctl.api_base();
    let cwd = tmp.path().to_path_buf();
    // The CLI runs where the controller did, so ./metalbus-data/admin.token is its token.
    let node = eventually(
        Duration::from_secs(5),
        "this machine in `metalbus nodes list`",
        || {
            let api_url = api_url.clone();
            let cwd = cwd.clone();
            async move {
                let out = Command::new(bin("metalbus"))
                    .args(["nodes", "list", "-o", "json", "--api", &api_url])
                    .current_dir(&cwd)
                    .env_remove("METALBUS_TOKEN")
                    .output()
                    .map_err(|e| e.to_string())?;
                if !out.status.success() {
                    return Err(String::from_utf8_lossy(&out.stderr).into_owned());
                }
                let nodes: Vec<serde_json::Value> =
                    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
                nodes
                    .into_iter()
                    .find(|n| n["specs"]["cpu_threads"].as_u64().is_some())
                    .ok_or_else(|| "no node with inventory yet".to_string())
            }
        },
    )
    .await;
    let took = started.elapsed();
    println!("local agent visible in the CLI {took:?} after start");
    assert!(
        took < Duration::from_secs(5),
        "took {took:?}, the budget is 5 s"
    );
    let nproc = metalbus_e2e::nproc();
    assert_eq!(node["specs"]["cpu_threads"].as_u64(), Some(nproc));
    assert_eq!(node["state"], "discovered");
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kb: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    let gib = node["specs"]["memory_gb"].as_f64().unwrap();
    assert!((gib - kb / 1024.0 / 1024.0).abs() < 0.01, "memory_gb {gib}");

    // The table form, and `show` by name.
    let name = node["name"].as_str().unwrap().to_string();
    let table = ctl.cli(&["nodes", "list"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.starts_with("NAME"), "{text}");
    assert!(
        text.contains(&name) && text.contains("discovered"),
        "{text}"
    );
    let show = ctl.cli(&["nodes", "show", &name]);
    assert!(show.status.success());
    assert!(String::from_utf8_lossy(&show.stdout).contains("Memory:"));

    // A missing node: exit code 3 and a one-line error.
    let missing = ctl.cli(&["nodes", "show", "no-such-node"]);
    assert_eq!(missing.status.code(), Some(3));
    let err = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("node not found") && err.contains("Primus.00005"),
        "{err}"
    );
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_tour_installs_this_machine_with_the_demo_plan_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let ctl = Controller::start(tmp.path(), &["--local-agent"]).await;
    let api = ctl.api();
    let node = eventually(Duration::from_secs(10), "the local node", || {
        let api = api.clone();
        async move {
            api.nodes()
                .await?
                .into_iter()
                .next()
                .ok_or_else(|| "no node yet".to_string())
        }
    })
    .await;
    let name = node["name"].as_str().unwrap().to_string();

    let plans = ctl.cli(&["nodes", "manage", &name]);
    assert!(
        plans.status.success(),
        "{}",
        String::from_utf8_lossy(&plans.stderr)
    );
    assert_eq!(
        stdout(&plans).trim(),
        format!("{name}: Node transitioned to pending")
    );

    // `nodes show` prints the progress of the running job.
    eventually(Duration::from_secs(20), "progress in `nodes show`", || {
        let out = stdout(&ctl.cli(&["nodes", "show", &name]));
        async move {
            if out.contains("installing") && out.contains("Progress:") && out.contains("(demo)") {
                Ok(())
            } else {
                Err(out)
            }
        }
    })
    .await;
    api.wait_state(&name, "active", Duration::from_secs(30))
        .await;
    let list = stdout(&ctl.cli(&["nodes", "list", "--state", "active"]));
    assert!(list.contains(&name), "{list}");
    let history = stdout(&ctl.cli(&["nodes", "history", &name]));
    assert!(history.contains("4 of 4 entries"), "{history}");
    for by in ["admin", "node_report", "system"] {
        assert!(history.contains(by), "{history}");
    }

    // A transition the table does not allow: exit 4 and the valid targets.
    let refused = ctl.cli(&["nodes", "transition", &name, "pending"]);
    assert_eq!(refused.status.code(), Some(4));
    let err = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(
        err.contains("valid targets: reprovision, migrating, deprovisioning"),
        "{err}"
    );
    let moved = ctl.cli(&[
        "nodes",
        "transition",
        &name,
        "migrating",
        "--comment",
        "rack move",
    ]);
    assert!(moved.status.success());
    let back = ctl.cli(&["nodes", "transition", &name, "active", "-o", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&back.stdout).unwrap();
    assert_eq!(json["state"], "active");

    // Tokens: created once, then usable with their role.
    let created = ctl.cli(&["tokens", "create", "--name", "dash", "--role", "viewer"]);
    assert!(created.status.success());
    let token = stdout(&created).trim().to_string();
    assert!(token.starts_with("mb_"), "{token}");
    let as_viewer = Command::new(bin("metalbus"))
        .args([
            "nodes",
            "retry",
            &name,
            "--api",
            &ctl.api_base(),
            "--token",
            &token,
        ])
        .output()
        .unwrap();
    assert_eq!(as_viewer.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&as_viewer.stderr).contains("Forbidden"));

    // Retire at once.
    let retired = ctl.cli(&["nodes", "retire", &name, "--force"]);
    assert!(
        retired.status.success(),
        "{}",
        String::from_utf8_lossy(&retired.stderr)
    );
    assert!(stdout(&retired).contains("Node retired"));
    let (_, plans) = api.get("/api/v1/plans").await.unwrap();
    assert_eq!(plans["data"][0]["name"], "demo");
    assert_eq!(plans["data"][0]["default"], true);

    // Step 5: a second "host", exactly as the README runs it (from the same directory,
    // with the fleet enrollment token the controller wrote).
    let steps = concat!(env!("CARGO_MANIFEST_DIR"), "/../systemd/steps.d");
    let state = tmp.path().join("demo-2");
    let log = std::fs::File::create(tmp.path().join("demo-2.log")).unwrap();
    let mut second = Command::new(bin("metalbus-agent"))
        .args([
            "run",
            "--config",
            "/dev/null",
            "--broker",
            &ctl.broker_url(),
        ])
        .args([
            "--node-id",
            "demo-2",
            "--state-dir",
            state.to_str().unwrap(),
        ])
        .args([
            "--steps-dir",
            steps,
            "--enroll-token-file",
            "metalbus-data/enroll.token",
        ])
        .current_dir(tmp.path())
        .env_remove("METALBUS_ENROLL_TOKEN")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    eventually(Duration::from_secs(20), "demo-2 in `nodes list`", || {
        let out = stdout(&ctl.cli(&["nodes", "list"]));
        async move { out.contains("demo-2").then_some(()).ok_or(out) }
    })
    .await;
    assert!(
        state.join("credential.json").exists(),
        "it keeps its node key"
    );
    let _ = second.kill();
    let _ = second.wait();
}
