//! `kill -9` of a real agent in the middle of a job: on restart the agent kills what is
//! left of the job, reports it failed ("agent restarted during job"), and the controller's
//! retry logic takes over until the node is installed.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use metalbus_e2e::{eventually, process_with_env, steps_dir, AgentProc, Controller};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_job_reports_the_failure_and_the_install_is_retried() {
    let tmp = tempfile::tempdir().unwrap();
    let ctl = Controller::with_config(
        tmp.path(),
        r#"
[lifecycle]
retry_backoff = "300ms"
resend_after = "1s"
[plans.slow]
default = true
steps = [ { name = "image", script = "demo-step", args = { seconds = "4" }, timeout_s = 60 } ]
"#,
        &[],
    )
    .await;
    let api = ctl.api();
    let steps = steps_dir(tmp.path(), &[]);
    let args = [
        "--steps-dir",
        steps.to_str().unwrap(),
        "--resend-after",
        "1s",
    ];
    let mut agent = AgentProc::start_with(tmp.path(), &ctl.broker_url(), "crashy-1", &args);
    api.wait_state("crashy-1", "discovered", Duration::from_secs(30))
        .await;
    api.post("/api/v1/nodes/crashy-1/manage", None)
        .await
        .unwrap();
    let running = eventually(Duration::from_secs(30), "the job running", || {
        let api = api.clone();
        async move {
            let n = api.node("crashy-1").await?;
            if n["state"] == "installing" && n["progress"]["percent"].as_u64() > Some(0) {
                Ok(n)
            } else {
                Err(n.to_string())
            }
        }
    })
    .await;
    let old = running["job"]["command_id"].as_str().unwrap().to_string();
    let marker = format!("MB_COMMAND_ID={old}");

    agent.kill9();
    // Outside systemd (whose KillMode handles it) the step outlives a kill -9 ...
    assert!(
        process_with_env(&marker),
        "the orphaned step is still running"
    );
    let mut agent = AgentProc::start_with(tmp.path(), &ctl.broker_url(), "crashy-1", &args);
    // ... until the restarted agent kills what is left of the job.
    eventually(Duration::from_secs(10), "the orphaned step gone", || {
        let marker = marker.clone();
        async move {
            if process_with_env(&marker) {
                Err("still running".to_string())
            } else {
                Ok(())
            }
        }
    })
    .await;
    let failed = eventually(Duration::from_secs(30), "the failure recorded", || {
        let api = api.clone();
        async move {
            let n = api.node("crashy-1").await?;
            if n["install_attempts"].as_u64() >= Some(1) {
                Ok(n)
            } else {
                Err(n.to_string())
            }
        }
    })
    .await;
    assert_eq!(failed["last_install_error"], "agent restarted during job");
    let done = api
        .wait_state("crashy-1", "active", Duration::from_secs(60))
        .await;
    assert_eq!(done["install_attempts"], 0);
    let h = api.transitions("crashy-1").await.unwrap();
    assert_eq!(h.len(), 4, "{h:?}");
    assert!(ctl.log_text().contains("InstallRetry"));
    assert!(agent.terminate().success());
}
