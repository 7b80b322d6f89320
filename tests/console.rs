//! The web console in a real headless Chromium (Debian's chromium and chromium-driver),
//! against the real controller and simulated or real agents (issue 14): sign-in, the
//! fleet table with its counts, filter and search; live updates from the event stream;
//! the node page and its actions under seed 000 section 6.3's rules; a viewer's page.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use metalbus_e2e::{eventually, steps_dir, AgentProc, Browser, Controller, SimProc, ENTER, ESCAPE};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

/// How many rows the node table shows.
const ROWS: &str = "return document.querySelectorAll('#nodes tbody tr').length";

/// Picks `value` in the `<select>` with id `id`, as a user would (`""`: any).
async fn choose(browser: &Browser, id: &str, value: &str) {
    browser
        .run(
            "const s = document.getElementById(arguments[0]); s.value = arguments[1]; \
             s.dispatchEvent(new Event('change'));",
            json!([id, value]),
        )
        .await;
}

/// Opens the console and signs in with `token`; waits for the fleet page.
async fn sign_in(browser: &Browser, ctl: &Controller, token: &str, role: &str) {
    browser.open(&format!("{}/", ctl.api_base())).await;
    browser.type_into("#token", token).await;
    browser.click("#sign-in-form button[type=submit]").await;
    browser
        .wait_for(
            "the signed-in fleet page",
            &format!(
                "return document.getElementById('who').textContent.endsWith('({role})') \
                 && !document.getElementById('fleet').hidden"
            ),
            WAIT,
        )
        .await;
}

/// Records, on every change of the node page, its state, the action buttons shown
/// (`manage+` enabled, `manage-` disabled) and the status line, into `window.seen`.
const RECORD_NODE_PAGE: &str = "
    window.seen = [];
    const snap = () => {
      const $ = (id) => document.getElementById(id);
      const bar = $('actions');
      const buttons = [...bar.querySelectorAll('button')]
        .filter((b) => !bar.hidden && !b.hidden)
        .map((b) => b.dataset.action + (b.disabled ? '-' : '+'));
      const bar2 = document.querySelector('#job progress');
      const s = [$('node-state').textContent, buttons.join(' '), $('action-status').textContent,
        bar2 ? String(bar2.value) : ''].join('|');
      if (window.seen[window.seen.length - 1] !== s) window.seen.push(s);
    };
    new MutationObserver(snap).observe(document.getElementById('node'),
      { subtree: true, childList: true, characterData: true, attributes: true });
    snap();";

/// What `RECORD_NODE_PAGE` saw: (state, buttons, status, progress).
async fn seen(browser: &Browser) -> Vec<Snapshot> {
    let v = browser.run("return window.seen", json!([])).await;
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let parts: Vec<&str> = s.as_str().unwrap().split('|').collect();
            (
                parts[0].to_string(),
                parts[1].split_whitespace().map(str::to_string).collect(),
                parts[2].to_string(),
                parts[3].to_string(),
            )
        })
        .collect()
}

/// Seed 000 section 6.3, checked on every snapshot of the node page: Retry shows only
/// in the failed phases; in Managing and Unmanaging every button is disabled; an
/// unmanaged node offers Manage and not Unmanage; a managed one the reverse; a failed
/// install never has Manage enabled.
fn follows_seed_table(state: &str, buttons: &[String]) -> Result<(), String> {
    let shown = |a: &str| buttons.iter().any(|b| b.trim_end_matches(['+', '-']) == a);
    let enabled = |a: &str| buttons.iter().any(|b| b == &format!("{a}+"));
    let phase = match state {
        "registered" | "discovered" => "Unmanaged",
        "pending" | "installing" | "reprovision" => "Managing",
        "installed" | "active" | "migrating" => "Managed",
        "install_failed" => "ManagedFailed",
        "deprovisioning" => "Unmanaging",
        "deprovision_failed" => "UnmanagedFailed",
        _ => return Ok(()),
    };
    let failed = phase.ends_with("Failed");
    let ok = shown("retry") == failed
        && match phase {
            "Managing" | "Unmanaging" => buttons.iter().all(|b| b.ends_with('-')),
            "Unmanaged" => shown("manage") && !shown("unmanage"),
            "Managed" => shown("unmanage") && !shown("manage"),
            "ManagedFailed" => !enabled("manage") && !shown("unmanage"),
            _ => !enabled("unmanage") && !shown("manage"),
        };
    if ok {
        Ok(())
    } else {
        Err(format!("{state} ({phase}) shows {buttons:?}"))
    }
}

/// One snapshot of the node page: (state, buttons, status line, progress).
type Snapshot = (String, Vec<String>, String, String);

/// Runs `action` from the node page's toolbar, as a user would: the click, then Enter
/// on the dialog's Confirm. Waits until the node is `until`, with `outcome` on the status
/// line after "In progress...". Returns the dialog's question and what the page showed
/// on the way, each snapshot checked against seed 000's table.
async fn act(
    browser: &Browser,
    action: &str,
    until: &str,
    outcome: &str,
) -> (String, Vec<Snapshot>) {
    browser.run(RECORD_NODE_PAGE, json!([])).await;
    browser
        .click(&format!("#actions button[data-action={action}]"))
        .await;
    browser
        .wait_for(
            "the confirmation dialog",
            "return document.getElementById('confirm').open",
            WAIT,
        )
        .await;
    let question = browser
        .run(
            "return document.getElementById('confirm-text').textContent",
            json!([]),
        )
        .await;
    browser.press("#confirm-ok", ENTER).await;
    browser
        .wait_for(
            &format!("{action} to end in {until}"),
            &format!(
                "return window.seen.some(s => s.split('|')[2] === 'In progress...') \
                 && document.getElementById('node-state').textContent === {} \
                 && document.getElementById('action-status').textContent === {}",
                json!(until),
                json!(outcome)
            ),
            WAIT,
        )
        .await;
    let page = seen(browser).await;
    for (state, buttons, _, _) in &page {
        follows_seed_table(state, buttons).unwrap();
    }
    (question.as_str().unwrap().to_string(), page)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_signs_in_and_the_fleet_page_lists_filters_and_searches() {
    let tmp = tempfile::tempdir().unwrap();
    let ctl = Controller::with_config(tmp.path(), "", &[]).await;
    let api = ctl.api();
    let _sim = SimProc::start(tmp.path(), &ctl.broker_url(), 3, "web", &[]);
    let ids = ["web-0001", "web-0002", "web-0003"];
    for id in ids {
        api.wait_state(id, "discovered", WAIT).await;
    }
    let (status, _) = api
        .post("/api/v1/nodes/web-0002/manage", None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    api.wait_state("web-0002", "active", WAIT).await;

    // The page and its assets: no token needed, a strict policy, and a wrong path is
    // still the API's JSON 404.
    let base = ctl.api_base();
    let page = reqwest::get(format!("{base}/")).await.unwrap();
    assert_eq!(page.status(), 200);
    let header = |name: &str| {
        page.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    assert!(header("content-type").starts_with("text/html"));
    assert!(header("content-security-policy").contains("script-src 'self'"));
    assert!(!header("content-security-policy").contains("unsafe"));
    let script = reqwest::get(format!("{base}/console.js")).await.unwrap();
    assert!(script.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    let missing = reqwest::get(format!("{base}/console.js%00.html"))
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let body: serde_json::Value = missing.json().await.unwrap();
    assert!(body["errorMessage"].is_string(), "{body}");

    let browser = Browser::start(tmp.path(), 1280).await;
    browser.open(&format!("{}/", ctl.api_base())).await;

    // A wrong token is refused with a message, and nothing of the fleet shows.
    browser.type_into("#token", "mb_not_a_token").await;
    browser.click("#sign-in-form button[type=submit]").await;
    browser
        .wait_for(
            "the refusal of a wrong token",
            "return document.getElementById('sign-in-error').textContent.includes('not valid') \
             && document.getElementById('fleet').hidden",
            WAIT,
        )
        .await;

    // A token no HTTP header can carry (not Latin-1): refused with a message, no crash.
    browser.type_into("#token", "токен-€-🔑").await;
    browser.click("#sign-in-form button[type=submit]").await;
    browser
        .wait_for(
            "the refusal of a token that is not Latin-1",
            "const e = document.getElementById('sign-in-error').textContent; \
             return e.length > 0 && !e.includes('not valid') && document.getElementById('fleet').hidden",
            WAIT,
        )
        .await;

    // The admin token: every node, with the counts by state.
    browser.type_into("#token", &ctl.token()).await;
    browser.click("#sign-in-form button[type=submit]").await;
    browser
        .wait_for("three rows", &format!("{ROWS} === 3"), WAIT)
        .await;
    browser
        .wait_for(
            "the counts by state",
            "const t = document.getElementById('counts').textContent; \
             return t.includes('total: 3') && t.includes('active: 1') && t.includes('discovered: 2')",
            WAIT,
        )
        .await;
    let names = browser
        .run(
            "return [...document.querySelectorAll('#nodes tbody tr')].map(r => r.dataset.node)",
            json!([]),
        )
        .await;
    assert_eq!(names, json!(ids));

    // Filter by state: only the installed node.
    choose(&browser, "state", "active").await;
    browser
        .wait_for(
            "the state filter",
            &format!(
                "{ROWS} === 1 && document.querySelector('#nodes tbody tr').dataset.node === 'web-0002'"
            ),
            WAIT,
        )
        .await;

    // Back to every state, then a search by name narrows to one.
    choose(&browser, "state", "").await;
    browser
        .wait_for("every state again", &format!("{ROWS} === 3"), WAIT)
        .await;
    browser.type_into("#search", "web-0003").await;
    browser
        .wait_for(
            "the search",
            &format!(
                "{ROWS} === 1 && document.querySelector('#nodes tbody tr').dataset.node === 'web-0003'"
            ),
            WAIT,
        )
        .await;

    // The token lives in the tab's session: a reload keeps the operator signed in.
    browser.open(&format!("{}/", ctl.api_base())).await;
    browser
        .wait_for("the fleet after a reload", &format!("{ROWS} === 3"), WAIT)
        .await;

    // Text from the API is shown as text: label values may hold anything printable,
    // markup and multibyte included, and none of it runs or becomes an element.
    let hostile = "<img src=x onerror=\"window.pwned=1\"><script>window.pwned=2</script>Ωé€🔑";
    let (status, body) = api
        .patch(
            "/api/v1/nodes/web-0001",
            json!({"labels": {"rack": hostile}}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    choose(&browser, "state", "").await;
    browser
        .wait_for(
            "the hostile label, as text",
            &format!(
                "const row = document.querySelector('#nodes tr[data-node=\"web-0001\"]'); \
                 return !!row && row.cells[8].textContent === 'rack=' + {}",
                json!(hostile)
            ),
            WAIT,
        )
        .await;
    let injected = browser
        .run(
            "return [window.pwned === undefined, \
             document.querySelectorAll('#nodes img, #nodes script').length]",
            json!([]),
        )
        .await;
    assert_eq!(injected, json!([true, 0]));

    // The API's other filters: phase, online, label (typed), and a label the API
    // refuses, whose message shows.
    choose(&browser, "phase", "Managed").await;
    browser
        .wait_for(
            "the phase filter",
            &format!(
                "{ROWS} === 1 && document.querySelector('#nodes tbody tr').dataset.node === 'web-0002'"
            ),
            WAIT,
        )
        .await;
    choose(&browser, "phase", "").await;
    choose(&browser, "online", "false").await;
    browser
        .wait_for("the online filter", &format!("{ROWS} === 0"), WAIT)
        .await;
    choose(&browser, "online", "").await;
    browser.type_into("#label", "rack").await;
    browser
        .wait_for(
            "the label filter",
            &format!(
                "{ROWS} === 1 && document.querySelector('#nodes tbody tr').dataset.node === 'web-0001'"
            ),
            WAIT,
        )
        .await;
    browser
        .run("document.getElementById('label').value = ''", json!([]))
        .await;
    browser.type_into("#label", "=x").await;
    browser
        .wait_for(
            "the API's refusal of a bad label",
            "return document.getElementById('fleet-error').textContent === \
             'label \"=x\" must be key=value or key'",
            WAIT,
        )
        .await;

    // A node address of markup, path tricks and multibyte text: the API's 404 message,
    // shown as text, and nothing else happens.
    browser
        .open(&format!(
            "{}/#/nodes/%3Cimg%20src%3Dx%20onerror%3Dwindow.pwned%3D3%3E%2F..%2F..%2Ftokens%E2%82%AC",
            ctl.api_base()
        ))
        .await;
    browser
        .wait_for(
            "the unknown node's message",
            "return document.getElementById('node-error').textContent === 'node not found' \
             && document.getElementById('actions').hidden && window.pwned === undefined \
             && document.querySelectorAll('#node img').length === 0",
            WAIT,
        )
        .await;

    let errors = browser.console_errors().await;
    // The wrong token's 401, the bad label's 400 and the unknown node's 404 are the
    // browser's own network log lines, not the page's; the unknown node is asked for
    // once.
    let not_found = errors.iter().filter(|e| e.contains("404")).count();
    assert_eq!(not_found, 1, "{errors:?}");
    let page_errors: Vec<&String> = errors
        .iter()
        .filter(|e| {
            !["400", "401", "404"]
                .iter()
                .any(|code| e.contains(&format!("status of {code}")))
        })
        .collect();
    assert!(page_errors.is_empty(), "console errors: {page_errors:?}");
}

/// The fleet row and the node page follow an install live, from the event stream, with
/// no reload; the node page's Manage and Unmanage run through the confirmation dialog
/// with the keyboard and end in "Operation successful".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installs_show_live_on_the_fleet_row_and_the_node_page() {
    let tmp = tempfile::tempdir().unwrap();
    let ctl = Controller::with_config(tmp.path(), "", &[]).await;
    let api = ctl.api();
    // Simulated installs: 20 progress events 150 ms apart, 3 s each.
    let _sim = SimProc::start(
        tmp.path(),
        &ctl.broker_url(),
        2,
        "live",
        &["--progress-events", "20", "--progress-every", "150ms"],
    );
    for (id, rack) in [("live-0001", "r1"), ("live-0002", "r2")] {
        api.wait_state(id, "discovered", WAIT).await;
        let (status, body) = api
            .patch(
                &format!("/api/v1/nodes/{id}"),
                json!({"labels": {"rack": rack}, "group": "batch-a"}),
            )
            .await
            .unwrap();
        assert_eq!(status, 200, "{body}");
    }
    let browser = Browser::start(tmp.path(), 1280).await;
    sign_in(&browser, &ctl, &ctl.token(), "admin").await;
    browser
        .wait_for(
            "the stream",
            "return document.getElementById('live').textContent === 'live'",
            WAIT,
        )
        .await;

    // The fleet row: record what it shows while another client manages the node.
    browser
        .run(
            "window.noReload = true; window.rowSeen = [];
             const snap = () => {
               const row = document.querySelector('#nodes tr[data-node=\"live-0001\"]');
               if (!row) return;
               const bar = row.cells[6].querySelector('progress');
               const s = row.cells[1].textContent + '|' + (bar ? bar.value : '');
               if (window.rowSeen[window.rowSeen.length - 1] !== s) window.rowSeen.push(s);
             };
             new MutationObserver(snap).observe(document.getElementById('nodes'),
               { subtree: true, childList: true, characterData: true, attributes: true });
             snap();",
            json!([]),
        )
        .await;
    let (status, body) = api
        .post("/api/v1/nodes/live-0001/manage", None)
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    browser
        .wait_for(
            "the row's progress bar",
            "const bar = document.querySelector('#nodes tr[data-node=\"live-0001\"] progress'); \
             return !!bar && bar.value >= 20",
            WAIT,
        )
        .await;
    browser.run("window.scrollTo(0, 0)", json!([])).await;
    browser.screenshot("console-fleet").await;
    browser
        .wait_for(
            "the row to show active",
            "const row = document.querySelector('#nodes tr[data-node=\"live-0001\"]'); \
             return !!row && row.cells[1].textContent === 'active'",
            WAIT,
        )
        .await;
    let row_seen = browser
        .run("return [window.noReload, window.rowSeen]", json!([]))
        .await;
    assert_eq!(row_seen[0], json!(true), "the page reloaded");
    let row_seen: Vec<String> = serde_json::from_value(row_seen[1].clone()).unwrap();
    let progress: Vec<u32> = row_seen
        .iter()
        .filter_map(|s| s.strip_prefix("installing|"))
        .filter_map(|p| p.parse().ok())
        .collect();
    assert!(
        progress.iter().any(|p| *p > 0 && *p < 100) && progress.windows(2).any(|w| w[1] > w[0]),
        "the row showed no moving progress: {row_seen:?}"
    );
    browser
        .wait_for(
            "the counts to follow",
            "return document.getElementById('counts').textContent.includes('active: 1')",
            WAIT,
        )
        .await;

    // The node page, reached from its link in the table.
    browser.click("#nodes tr[data-node=\"live-0002\"] a").await;
    browser
        .wait_for(
            "the node page",
            "return document.getElementById('node-title').textContent === 'live-0002' \
             && !document.getElementById('actions').hidden \
             && document.querySelectorAll('#charts svg polyline').length >= 4",
            WAIT,
        )
        .await;
    browser.run(RECORD_NODE_PAGE, json!([])).await;

    // Escape cancels the dialog and nothing happens.
    browser.click("#actions button[data-action=manage]").await;
    browser
        .wait_for(
            "the confirmation dialog",
            "return document.getElementById('confirm').open && \
             document.activeElement.id === 'confirm-cancel'",
            WAIT,
        )
        .await;
    browser.press("#confirm-cancel", ESCAPE).await;
    browser
        .wait_for(
            "the dialog to close",
            "return !document.getElementById('confirm').open",
            WAIT,
        )
        .await;
    let (_, n) = api.get("/api/v1/nodes/live-0002").await.unwrap();
    assert_eq!(n["data"]["state"], "discovered");

    // Manage, confirmed with the keyboard.
    let (question, page) = act(&browser, "manage", "active", "Operation successful").await;
    assert!(question.contains("overwritten"), "{question}");
    assert!(
        page.iter()
            .any(|(state, _, status, _)| state == "installing" && status == "In progress..."),
        "no 'In progress...' while installing: {page:?}"
    );
    assert!(
        page.iter().any(|(state, _, _, p)| state == "installing"
            && p.parse::<u32>().is_ok_and(|p| p > 0 && p < 100)),
        "the page showed no progress: {page:?}"
    );
    // History and events followed too, newest first.
    browser
        .wait_for(
            "the history",
            "const rows = [...document.querySelectorAll('#history tbody tr')]; \
             return rows.length === 4 && rows[0].cells[2].textContent === 'active' \
             && rows[3].cells[1].textContent === 'discovered'",
            WAIT,
        )
        .await;
    browser
        .wait_for(
            "the events",
            "return [...document.querySelectorAll('#events tbody tr')] \
             .some(r => r.cells[2].textContent === 'InstallStarted')",
            WAIT,
        )
        .await;
    // Event filters: only the agent's own events.
    browser
        .run(
            "const s = document.getElementById('event-source'); s.value = 'agent'; \
             s.dispatchEvent(new Event('change'));",
            json!([]),
        )
        .await;
    browser
        .wait_for(
            "the source filter",
            "const rows = [...document.querySelectorAll('#events tbody tr')]; \
             return rows.length > 0 && rows.every(r => r.cells[4].textContent === 'agent')",
            WAIT,
        )
        .await;
    // A metrics period, chosen with the keyboard.
    browser
        .press("#periods button[data-period='5m']", ENTER)
        .await;
    browser
        .wait_for(
            "the 5-minute period",
            "return document.querySelector('#periods button[data-period=\"5m\"]') \
             .getAttribute('aria-checked') === 'true' \
             && document.querySelectorAll('#charts figure').length === 4",
            WAIT,
        )
        .await;
    browser.resize(1280, 1700).await;
    browser.run("window.scrollTo(0, 0)", json!([])).await;
    browser.screenshot("console-node").await;
    browser.resize(1280, 900).await;

    // Unmanage: through Unmanaging back to discovered.
    let (_, page) = act(&browser, "unmanage", "discovered", "Operation successful").await;
    assert!(
        page.iter()
            .any(|(state, _, _, _)| state == "deprovisioning"),
        "{page:?}"
    );

    // A phone's width: nothing wider than the screen, the actions still there.
    browser.resize(390, 844).await;
    browser
        .wait_for(
            "the phone layout",
            "return document.documentElement.scrollWidth <= window.innerWidth + 1 \
             && document.querySelector('#actions button[data-action=manage]').getBoundingClientRect().width > 0",
            WAIT,
        )
        .await;
    browser.screenshot("console-node-phone").await;
    let errors = browser.console_errors().await;
    assert!(errors.is_empty(), "console errors: {errors:?}");
}

/// A plan that always fails: Retry appears only when the attempts have run out, then
/// "In progress..." and the failure again; the buttons follow seed 000's table throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_install_offers_retry_only_when_it_has_failed() {
    let tmp = tempfile::tempdir().unwrap();
    let config = r#"
[lifecycle]
max_install_attempts = 2
retry_backoff = "300ms"

[plans.doomed]
default = true
steps = [
  { name = "warmup", script = "demo-step", args = { seconds = "0.5" }, timeout_s = 30 },
  { name = "doomed", script = "demo-step", args = { fail = "always" }, timeout_s = 30 },
]
"#;
    let ctl = Controller::with_config(tmp.path(), config, &[]).await;
    let api = ctl.api();
    let steps = steps_dir(
        tmp.path(),
        &[
            ("fake-reboot", "#!/bin/sh\nexit 0\n"),
            (
                "fake-poweroff",
                "#!/bin/sh\necho 'no power today' >&2\nexit 3\n",
            ),
        ],
    );
    let _agent = AgentProc::start_with(
        tmp.path(),
        &ctl.broker_url(),
        "doomed-1",
        &[
            "--steps-dir",
            steps.to_str().unwrap(),
            "--reboot-command",
            steps.join("fake-reboot").to_str().unwrap(),
            "--poweroff-command",
            steps.join("fake-poweroff").to_str().unwrap(),
        ],
    );
    api.wait_state("doomed-1", "discovered", WAIT).await;

    let browser = Browser::start(tmp.path(), 1280).await;
    sign_in(&browser, &ctl, &ctl.token(), "admin").await;
    browser
        .open(&format!("{}/#/nodes/doomed-1", ctl.api_base()))
        .await;
    browser
        .wait_for(
            "the node page",
            "return document.getElementById('node-state').textContent === 'discovered' \
             && !document.getElementById('actions').hidden",
            WAIT,
        )
        .await;
    browser.run(RECORD_NODE_PAGE, json!([])).await;
    let first = seen(&browser).await;
    let buttons = &first.last().unwrap().1;
    for b in ["manage+", "reboot+", "poweroff+", "wake-", "retire+"] {
        assert!(buttons.contains(&b.to_string()), "{b} in {buttons:?}");
    }
    assert!(
        !buttons
            .iter()
            .any(|b| b.starts_with("retry") || b.starts_with("unmanage")),
        "{buttons:?}"
    );

    // Reboot and Power off: each followed to what became of its operation.
    for (action, ends) in [
        ("reboot", "Reboot (operation c-"),
        ("poweroff", "Power off (operation c-"),
    ] {
        browser
            .click(&format!("#actions button[data-action={action}]"))
            .await;
        browser.press("#confirm-ok", ENTER).await;
        let settled = if action == "reboot" {
            "): succeeded"
        } else {
            "): failed"
        };
        browser
            .wait_for(
                &format!("the {action} operation to settle"),
                &format!(
                    "const t = document.getElementById('action-status').textContent; \
                     return t.startsWith({}) && t.includes({})",
                    json!(ends),
                    json!(settled)
                ),
                WAIT,
            )
            .await;
    }

    let (_, page) = act(
        &browser,
        "manage",
        "install_failed",
        "Operation failed, please retry",
    )
    .await;
    assert!(
        page.iter()
            .any(|(state, _, status, _)| state == "installing" && status == "In progress..."),
        "{page:?}"
    );
    // Retry appeared only once the attempts ran out.
    for (state, buttons, _, _) in &page {
        if buttons.iter().any(|b| b.starts_with("retry")) {
            assert_eq!(state, "install_failed", "{page:?}");
        }
    }
    assert!(
        page.last().unwrap().1.contains(&"retry+".to_string()),
        "{page:?}"
    );
    browser.screenshot("console-node-failed").await;

    // Retry: the seed's question, then "In progress...", then the failure again.
    let (question, page) = act(
        &browser,
        "retry",
        "install_failed",
        "Operation failed, please retry",
    )
    .await;
    assert_eq!(
        question,
        "Are you sure you want to retry the manage/unmanage operation?"
    );
    assert!(
        page.iter()
            .any(|(state, _, _, _)| state == "pending" || state == "installing"),
        "{page:?}"
    );
    let (_, history) = api
        .get("/api/v1/nodes/doomed-1/history?limit=200")
        .await
        .unwrap();
    let retried = history["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["from_state"] == "install_failed" && e["to_state"] == "pending")
        .count();
    assert_eq!(retried, 1, "{history}");
    let errors = browser.console_errors().await;
    assert!(errors.is_empty(), "console errors: {errors:?}");
}

/// A viewer's console has no action buttons anywhere; a request forged from the page
/// with the viewer's token is refused with the seed's message and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_sees_no_actions_and_a_forged_one_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let ctl = Controller::with_config(tmp.path(), "", &[]).await;
    let api = ctl.api();
    let _sim = SimProc::start(tmp.path(), &ctl.broker_url(), 1, "view", &[]);
    api.wait_state("view-0001", "discovered", WAIT).await;
    let viewer = api.create_token("glass", "viewer").await;

    let browser = Browser::start(tmp.path(), 1280).await;
    sign_in(&browser, &ctl, &viewer, "viewer").await;
    browser
        .wait_for(
            "the node row",
            "return !!document.querySelector('#nodes tr[data-node=\"view-0001\"]')",
            WAIT,
        )
        .await;
    let fleet_buttons = browser
        .run(
            "return document.querySelectorAll('#fleet table button').length",
            json!([]),
        )
        .await;
    assert_eq!(fleet_buttons, json!(0));
    browser.click("#nodes tr[data-node=\"view-0001\"] a").await;
    browser
        .wait_for(
            "the node page, without actions",
            "return document.getElementById('node-title').textContent === 'view-0001' \
             && document.getElementById('node-state').textContent === 'discovered' \
             && document.getElementById('actions').hidden \
             && [...document.querySelectorAll('#actions button')].every(b => b.hidden)",
            WAIT,
        )
        .await;

    // Forged: the page's own Manage button, unhidden by hand, and a raw fetch.
    browser
        .run(
            "const bar = document.getElementById('actions'); bar.hidden = false; \
             const b = bar.querySelector('button[data-action=manage]'); \
             b.hidden = false; b.disabled = false;",
            json!([]),
        )
        .await;
    browser.click("#actions button[data-action=manage]").await;
    browser.click("#confirm-ok").await;
    browser
        .wait_for(
            "the refusal on the page",
            "return document.getElementById('action-error').textContent === 'Forbidden'",
            WAIT,
        )
        .await;
    let raw = browser
        .run(
            "return fetch('/api/v1/nodes/view-0001/retry', { method: 'POST', headers: \
               { Authorization: 'Bearer ' + sessionStorage.getItem('metalbus.token') } }) \
             .then(r => r.json().then(b => [r.status, b]))",
            json!([]),
        )
        .await;
    assert_eq!(
        raw,
        json!([403, {"errorCode": "Primus.00004", "errorMessage": "Forbidden"}])
    );
    let (_, n) = api.get("/api/v1/nodes/view-0001").await.unwrap();
    assert_eq!(n["data"]["state"], "discovered");
    let (_, history) = api.get("/api/v1/nodes/view-0001/history").await.unwrap();
    assert_eq!(history["total"], 0, "{history}");
    let errors: Vec<String> = browser
        .console_errors()
        .await
        .into_iter()
        .filter(|e| !e.contains("403"))
        .collect();
    assert!(errors.is_empty(), "console errors: {errors:?}");
}

/// The benchmark figure of issue 14: the fleet page's first render with 10,000
/// simulated nodes (`METALBUS_CONSOLE_NODES` to change). Not part of `cargo test`: run
/// it on an idle machine, with release binaries, and read the table it prints:
/// `cargo build --release -p metalbus -p metalbus-agent &&
///  cargo test --release --test console -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: 10,000 simulated agents"]
async fn bench_first_fleet_page_with_10000_nodes() {
    let nodes: usize = std::env::var("METALBUS_CONSOLE_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let tmp = tempfile::tempdir().unwrap();
    let ctl = Controller::with_config(tmp.path(), "", &[]).await;
    // Several simulators: one process would need a file descriptor per agent and more.
    let per = 2_500;
    let _sims: Vec<SimProc> = (0..nodes.div_ceil(per))
        .map(|i| {
            let seed = (i + 1).to_string();
            SimProc::start(
                tmp.path(),
                &ctl.broker_url(),
                per.min(nodes - i * per),
                &format!("big{i}"),
                &["--metrics-interval", "15s", "--seed", &seed],
            )
        })
        .collect();
    let api = ctl.api();
    eventually(Duration::from_secs(300), "every node online", || {
        let api = &api;
        async move {
            let (_, usage) = api.get("/api/v1/usage").await?;
            let online = usage["data"]["summary"]["online_nodes"]
                .as_u64()
                .unwrap_or(0);
            if online as usize >= nodes {
                Ok(())
            } else {
                Err(format!("{online} online"))
            }
        }
    })
    .await;

    let browser = Browser::start(tmp.path(), 1280).await;
    sign_in(&browser, &ctl, &ctl.token(), "admin").await;
    let mut rows = Vec::new();
    for _ in 0..7 {
        // A fresh load of the signed-in page: HTML, scripts, whoami, usage and the
        // first 50 rows; the stream's snapshot of every node comes after.
        browser.open(&format!("{}/", ctl.api_base())).await;
        browser
            .wait_for(
                "the first page and the stream's snapshot",
                "return !!window.firstFleetRender && !!window.streamReady \
                 && document.querySelectorAll('#nodes tbody tr').length === 50",
                Duration::from_secs(60),
            )
            .await;
        let t = browser
            .run(
                "const nav = performance.getEntriesByType('navigation')[0]; \
                 return [window.firstFleetRender, window.streamReady, nav.domContentLoadedEventEnd]",
                json!([]),
            )
            .await;
        rows.push([
            t[0].as_f64().unwrap(),
            t[1].as_f64().unwrap(),
            t[2].as_f64().unwrap(),
        ]);
    }
    // The first load warms the browser's and the controller's caches: drop it.
    rows.remove(0);
    let median = |i: usize| {
        let mut v: Vec<f64> = rows.iter().map(|r| r[i]).collect();
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[v.len() - 1])
    };
    println!(
        "\nfleet page with {nodes} nodes, {} loads (ms from navigation start):",
        rows.len()
    );
    println!("| | median | worst |\n|---|---|---|");
    for (i, what) in [
        (2, "page and scripts loaded"),
        (0, "first 50 rows rendered"),
        (1, "stream snapshot of every node read"),
    ] {
        let (m, w) = median(i);
        println!("| {what} | {m:.0} | {w:.0} |");
    }
    let errors = browser.console_errors().await;
    assert!(errors.is_empty(), "console errors: {errors:?}");
}

/// Without the event stream (every slot taken) the console polls every 3 s: an install
/// and a retirement still end in "Operation successful"; when a slot frees, the page
/// goes live again by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_stream_the_console_polls_and_then_goes_live_again() {
    let tmp = tempfile::tempdir().unwrap();
    let ctl = Controller::with_config(tmp.path(), "[http]\nmax_event_streams = 1\n", &[]).await;
    let api = ctl.api();
    let _sim = SimProc::start(
        tmp.path(),
        &ctl.broker_url(),
        1,
        "poll",
        &["--progress-events", "10", "--progress-every", "200ms"],
    );
    api.wait_state("poll-0001", "discovered", WAIT).await;
    // Another client holds the only stream.
    let held = reqwest::Client::new()
        .get(format!("{}/api/v1/events/stream", ctl.api_base()))
        .bearer_auth(ctl.token())
        .send()
        .await
        .unwrap();
    assert_eq!(held.status(), 200);

    let browser = Browser::start(tmp.path(), 1280).await;
    sign_in(&browser, &ctl, &ctl.token(), "admin").await;
    browser
        .open(&format!("{}/#/nodes/poll-0001", ctl.api_base()))
        .await;
    browser
        .wait_for(
            "the page, polling",
            "return document.getElementById('live').textContent.startsWith('not live') \
             && document.getElementById('node-state').textContent === 'discovered'",
            WAIT,
        )
        .await;
    act(&browser, "manage", "active", "Operation successful").await;
    let (question, _) = act(&browser, "retire", "retired", "Operation successful").await;
    assert!(question.contains("cannot be undone"), "{question}");
    browser
        .wait_for(
            "no actions on a retired node",
            "return document.getElementById('actions').hidden",
            WAIT,
        )
        .await;

    drop(held);
    browser.wait_live(WAIT).await;
    browser.assert_no_console_errors_but("503").await;
}
