//! The `metalbus` binary's start-up and CLI failure paths: every failure is one clear
//! line and a documented exit code.

#![allow(clippy::unwrap_used)]

use std::net::TcpListener;
use std::process::{Command, Output};

fn metalbus(args: &[&str], cwd: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_metalbus"))
        .args(args)
        .current_dir(cwd)
        .env_remove("METALBUS_TOKEN")
        .env_remove("METALBUS_API")
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn help_explains_the_commands() {
    let dir = tempfile::tempdir().unwrap();
    let out = metalbus(&["--help"], dir.path());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("serve") && text.contains("nodes"), "{text}");
    let out = metalbus(&["serve", "--help"], dir.path());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--data-dir",
        "--mqtt-listen",
        "--http-listen",
        "--local-agent",
        "--log-format",
    ] {
        assert!(text.contains(flag), "serve --help lacks {flag}");
    }
}

#[test]
fn a_config_typo_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[http]\nlisten_on = \"127.0.0.1:1\"\n").unwrap();
    let out = metalbus(&["serve", "--config", cfg.to_str().unwrap()], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("listen_on"), "{}", stderr(&out));
}

#[test]
fn a_busy_port_is_a_clear_start_up_error() {
    let dir = tempfile::tempdir().unwrap();
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let out = metalbus(
        &[
            "serve",
            "--data-dir",
            "d",
            "--mqtt-listen",
            &format!("127.0.0.1:{port}"),
            "--http-listen",
            "127.0.0.1:0",
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("cannot listen for MQTT on 127.0.0.1:{port}")),
        "{err}"
    );
}

#[test]
fn client_errors_have_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    // No token anywhere: usage error, exit 2.
    let out = metalbus(&["nodes", "list"], dir.path());
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("no API token"));
    // Nothing listening: exit 5.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let api = format!("http://127.0.0.1:{closed}");
    let out = metalbus(
        &["nodes", "list", "--api", &api, "--token", "t"],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot reach the Metalbus API"));
    assert_eq!(stderr(&out).trim().lines().count(), 1);
}
