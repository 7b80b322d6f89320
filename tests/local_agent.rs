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
    let table = Command::new(bin("metalbus"))
        .args(["nodes", "list", "--api", &ctl.api_base()])
        .current_dir(tmp.path())
        .env_remove("METALBUS_TOKEN")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.starts_with("NAME"), "{text}");
    assert!(
        text.contains(&name) && text.contains("discovered"),
        "{text}"
    );
    let show = Command::new(bin("metalbus"))
        .args(["nodes", "show", &name, "--api", &ctl.api_base()])
        .current_dir(tmp.path())
        .env_remove("METALBUS_TOKEN")
        .output()
        .unwrap();
    assert!(show.status.success());
    assert!(String::from_utf8_lossy(&show.stdout).contains("Memory:"));

    // A missing node: exit code 3 and a one-line error.
    let missing = Command::new(bin("metalbus"))
        .args(["nodes", "show", "no-such-node", "--api", &ctl.api_base()])
        .current_dir(tmp.path())
        .env_remove("METALBUS_TOKEN")
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(3));
    let err = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("node not found") && err.contains("Primus.00005"),
        "{err}"
    );
}
