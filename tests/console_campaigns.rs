//! The web console's campaign pages (issue 16) in a real headless Chromium (Debian's
//! chromium and chromium-driver), against the real controller and simulated agents:
//! a rollout followed live to `completed` from the event stream, with no reload; Pause,
//! Resume and Cancel (through the dialog, keyboard and all) from the page; a viewer's
//! page without buttons; markup in a reason, a user name and an address shown as text.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use metalbus_e2e::{Api, Browser, Controller, SimProc, ENTER, ESCAPE};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);

/// A token name of markup (and multibyte text): it becomes a campaign's `created_by`
/// and, through Pause and Cancel, its `reason`.
const HOSTILE: &str = "<img src=x onerror=\"window.pwned=1\"><b>op</b>Ω€";

/// Opens the console and signs in with `token`; waits for the fleet page, and for the
/// stream's badge to start with `live` ("live", or "not live" while it polls).
async fn sign_in(browser: &Browser, ctl: &Controller, token: &str, role: &str, live: &str) {
    browser.open(&format!("{}/", ctl.api_base())).await;
    browser.type_into("#token", token).await;
    browser.click("#sign-in-form button[type=submit]").await;
    browser
        .wait_for(
            &format!("the signed-in fleet page, {live}"),
            &format!(
                "return document.getElementById('who').textContent.endsWith('({role})') \
                 && !document.getElementById('fleet').hidden \
                 && document.getElementById('live').textContent.startsWith({})",
                json!(live)
            ),
            WAIT,
        )
        .await;
}

/// `POST /api/v1/campaigns`, which must answer 201; the campaign's id.
async fn create(api: &Api, request: Value) -> String {
    api.create_campaign(request).await["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The campaign as the API shows it (with the first page of its nodes).
async fn campaign(api: &Api, id: &str) -> Value {
    api.campaign(id).await.unwrap()
}

/// What the campaign page shows: the state, reason, and which of Pause, Resume and
/// Cancel are there.
const PAGE: &str = "
    const $ = (id) => document.getElementById(id);
    const bar = $('campaign-actions');
    const buttons = [...bar.querySelectorAll('button')]
      .filter((b) => !bar.hidden && !b.hidden).map((b) => b.dataset.campaignAction);
    return [$('campaign-state').textContent, $('campaign-reason').textContent, buttons.join(' ')];";

/// Waits until the campaign page shows `state` with `buttons` (space-separated).
async fn wait_page(browser: &Browser, what: &str, state: &str, buttons: &str) {
    browser
        .wait_for(
            what,
            &format!(
                "const [state, , buttons] = (() => {{ {PAGE} }})(); \
                 return state === {} && buttons === {}",
                json!(state),
                json!(buttons)
            ),
            WAIT,
        )
        .await;
}

/// Records every change of the campaign page (state, progress bar, its text) into
/// `window.campSeen`, and sets `window.noReload`, which a reload would lose.
const RECORD: &str = "
    window.noReload = true; window.campSeen = [];
    const snap = () => {
      const $ = (id) => document.getElementById(id);
      if ($('campaign').hidden || !$('campaign-state').textContent) return;
      const s = [$('campaign-state').textContent, $('campaign-progress').value,
        $('campaign-done').textContent].join('|');
      if (window.campSeen[window.campSeen.length - 1] !== s) window.campSeen.push(s);
    };
    new MutationObserver(snap).observe(document.getElementById('campaign'),
      { subtree: true, childList: true, characterData: true, attributes: true });
    snap();";

/// What `RECORD` saw, and the progress bar's values in it; fails if the page reloaded
/// or the bar ever went back.
async fn recorded(browser: &Browser) -> (Vec<String>, Vec<u32>) {
    let seen = browser
        .run("return [window.noReload, window.campSeen]", json!([]))
        .await;
    assert_eq!(seen[0], json!(true), "the page reloaded");
    let seen: Vec<String> = serde_json::from_value(seen[1].clone()).unwrap();
    let progress: Vec<u32> = seen
        .iter()
        .map(|s| s.split('|').nth(1).unwrap().parse().unwrap())
        .collect();
    assert!(
        progress.windows(2).all(|w| w[1] >= w[0]),
        "the bar went back: {seen:?}"
    );
    (seen, progress)
}

/// Picks `value` in the `<select>` with id `id`, as a user would.
async fn choose(browser: &Browser, id: &str, value: &str) {
    browser
        .run(
            "const s = document.getElementById(arguments[0]); s.value = arguments[1]; \
             s.dispatchEvent(new Event('change'));",
            json!([id, value]),
        )
        .await;
}

/// 30 simulated nodes, a `manage` campaign over them with `max_concurrent` 5, created by
/// another client while the console shows the campaign list: the new row appears, and
/// the campaign page, reached from it, shows the progress bar moving, the counts and
/// `completed`, all from the event stream without a reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_shows_live_on_the_campaign_pages_until_completed() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let ctl = Controller::with_config(tmp.path(), &Controller::quick_plan("1"), &[]).await;
    let api = ctl.api();
    // Simulated installs of 2 s: 8 progress events 250 ms apart.
    let (_sim, ids) = SimProc::discovered(
        &ctl,
        30,
        "roll",
        &["--progress-events", "8", "--progress-every", "250ms"],
    )
    .await;

    let browser = Browser::start(tmp.path(), 1280).await;
    sign_in(&browser, &ctl, &ctl.token(), "admin", "live").await;
    browser.click("#nav-campaigns").await;
    browser
        .wait_for(
            "the empty campaign list",
            "return !document.getElementById('campaigns').hidden \
             && !document.getElementById('campaigns-empty').hidden \
             && document.getElementById('nav-campaigns').getAttribute('aria-current') === 'page'",
            WAIT,
        )
        .await;
    browser.run(RECORD, json!([])).await;

    let id = create(
        &api,
        json!({"action": "manage", "plan": "quick", "selector": {"nodes": ids},
               "max_concurrent": 5}),
    )
    .await;
    let row = format!("#campaign-list tr[data-campaign=\"{id}\"]");
    browser
        .wait_for(
            "the new campaign's row, running",
            &format!(
                "const row = document.querySelector({}); \
                 return !!row && row.cells[1].textContent === 'manage (plan quick)' \
                 && row.cells[2].textContent === 'running' \
                 && document.getElementById('campaigns-empty').hidden",
                json!(row)
            ),
            WAIT,
        )
        .await;
    browser.click(&format!("{row} a")).await;
    browser
        .wait_for(
            "the campaign page, running",
            &format!(
                "return document.getElementById('campaign-title').textContent === {} \
                 && document.getElementById('campaign-state').textContent === 'running' \
                 && document.querySelectorAll('#campaign-nodes tbody tr').length === 30",
                json!(format!("Campaign {id}"))
            ),
            WAIT,
        )
        .await;
    // Mid-way, for the README: the bar part-filled, nodes in flight, Pause and Cancel.
    browser
        .wait_for(
            "the campaign a third of the way",
            "const bar = document.getElementById('campaign-progress'); \
             return bar.value >= 10 && document.getElementById('campaign-state').textContent === 'running'",
            WAIT,
        )
        .await;
    browser.resize(1280, 1100).await;
    // The README's picture (docs/img/console-campaign.png) is a copy of this one, made by
    // hand: a test does not write into the source tree.
    browser.screenshot("console-campaign").await;
    browser.resize(1280, 900).await;

    browser
        .wait_for(
            "the campaign to complete on the page",
            "const $ = (id) => document.getElementById(id); \
             const rows = [...document.querySelectorAll('#campaign-nodes tbody tr')]; \
             return $('campaign-state').textContent === 'completed' \
             && $('campaign-progress').value === 30 \
             && $('campaign-done').textContent === '30 of 30 nodes done (100 %)' \
             && $('campaign-counts').textContent.includes('succeeded: 30') \
             && $('campaign-counts').textContent.includes('in flight: 0') \
             && rows.length === 30 && rows.every(r => r.cells[1].textContent === 'succeeded') \
             && $('campaign-actions').hidden",
            WAIT,
        )
        .await;
    let (seen, progress) = recorded(&browser).await;
    let between: HashSet<u32> = progress
        .iter()
        .copied()
        .filter(|p| *p > 0 && *p < 30)
        .collect();
    assert!(
        between.len() >= 3,
        "the bar did not move step by step: {seen:?}"
    );
    assert!(seen.first().unwrap().starts_with("running|"), "{seen:?}");
    assert!(
        seen.last().unwrap().starts_with("completed|30|"),
        "{seen:?}"
    );
    let c = campaign(&api, &id).await;
    assert_eq!(c["state"], "completed", "{c}");
    assert_eq!(c["counts"]["succeeded"], 30, "{c}");

    // The outcome filter: no failure; every node succeeded.
    choose(&browser, "campaign-outcome", "failed").await;
    browser
        .wait_for(
            "no failed node",
            "return document.querySelectorAll('#campaign-nodes tbody tr').length === 0 \
             && document.getElementById('campaign-nodes-page').textContent === 'page 1 of 1 (0 nodes)'",
            WAIT,
        )
        .await;
    choose(&browser, "campaign-outcome", "succeeded").await;
    browser
        .wait_for(
            "the succeeded nodes",
            "return document.querySelectorAll('#campaign-nodes tbody tr').length === 30 \
             && document.getElementById('campaign-nodes-page').textContent === 'page 1 of 1 (30 nodes)'",
            WAIT,
        )
        .await;

    // Back to the list from the header: the row says the same.
    browser.click("#nav-campaigns").await;
    browser
        .wait_for(
            "the list's row, completed",
            &format!(
                "const row = document.querySelector({}); \
                 return !!row && row.cells[2].textContent === 'completed' \
                 && row.cells[3].textContent.trim() === '30/30' \
                 && row.cells[3].querySelector('progress').value === 30 \
                 && row.cells[4].textContent === '0' && row.cells[5].textContent === '0'",
                json!(row)
            ),
            WAIT,
        )
        .await;
    browser.screenshot("console-campaigns").await;
    let reloaded = browser.run("return window.noReload", json!([])).await;
    assert_eq!(reloaded, json!(true), "the page reloaded");

    // A phone's width: the campaign page is no wider than the screen.
    browser.resize(390, 844).await;
    browser.click(&format!("{row} a")).await;
    browser
        .wait_for(
            "the phone layout",
            "return document.getElementById('campaign-state').textContent === 'completed' \
             && document.documentElement.scrollWidth <= window.innerWidth + 1",
            WAIT,
        )
        .await;
    browser.screenshot("console-campaign-phone").await;
    let errors = browser.console_errors().await;
    assert!(errors.is_empty(), "console errors: {errors:?}");
    eprintln!(
        "live rollout test: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// An operator (whose token name is markup) pauses, resumes and cancels a running
/// campaign from its page: the page and the API follow, Escape leaves the dialog without
/// cancelling, Enter confirms. The reasons and the creator are shown as text, and so is
/// an address of markup. A viewer sees the campaigns but no button.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_and_cancel_from_the_page_and_a_viewer_gets_no_buttons() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let ctl = Controller::with_config(tmp.path(), &Controller::quick_plan("1"), &[]).await;
    let api = ctl.api();
    // Simulated installs of 3 s; one at a time: the campaign runs for half a minute.
    let (_sim, ids) = SimProc::discovered(
        &ctl,
        10,
        "slow",
        &["--progress-events", "10", "--progress-every", "300ms"],
    )
    .await;
    let operator = api.create_token(HOSTILE, "operator").await;
    let viewer = api.create_token("glass", "viewer").await;
    let as_operator = api.with_token(Some(&operator));
    let id = create(
        &as_operator,
        json!({"action": "manage", "selector": {"nodes": ids}, "max_concurrent": 1}),
    )
    .await;

    let browser = Browser::start(tmp.path(), 1280).await;
    sign_in(&browser, &ctl, &operator, "operator", "live").await;
    browser
        .open(&format!("{}/#/campaigns/{id}", ctl.api_base()))
        .await;
    wait_page(&browser, "the running campaign", "running", "pause cancel").await;
    browser.run("window.noReload = true", json!([])).await;
    let creator = browser
        .run(
            "const dt = [...document.querySelectorAll('#campaign-facts dt')] \
               .find(d => d.textContent === 'Created by'); \
             return dt.nextElementSibling.textContent",
            json!([]),
        )
        .await;
    assert_eq!(creator, json!(HOSTILE));

    // Pause: the page and the API say paused, by the operator (as text).
    browser
        .click("#campaign-actions button[data-campaign-action=pause]")
        .await;
    wait_page(&browser, "the campaign paused", "paused", "resume cancel").await;
    let page = browser.run(PAGE, json!([])).await;
    assert_eq!(page[1], json!(format!("paused by {HOSTILE}")), "{page}");
    let c = campaign(&api, &id).await;
    assert_eq!(c["state"], "paused", "{c}");
    assert_eq!(c["reason"], json!(format!("paused by {HOSTILE}")), "{c}");

    // Resume, with the keyboard.
    browser
        .press(
            "#campaign-actions button[data-campaign-action=resume]",
            ENTER,
        )
        .await;
    wait_page(
        &browser,
        "the campaign running again",
        "running",
        "pause cancel",
    )
    .await;
    let c = campaign(&api, &id).await;
    assert_eq!(c["state"], "running", "{c}");
    assert!(c["reason"].is_null(), "{c}");

    // Cancel asks first: Escape leaves it running.
    browser
        .click("#campaign-actions button[data-campaign-action=cancel]")
        .await;
    browser
        .wait_for(
            "the confirmation dialog",
            &format!(
                "return document.getElementById('confirm').open \
                 && document.activeElement.id === 'confirm-cancel' \
                 && document.getElementById('confirm-text').textContent.startsWith({})",
                json!(format!("Cancel campaign {id}?"))
            ),
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
    let c = campaign(&api, &id).await;
    assert_eq!(c["state"], "running", "{c}");

    // Cancel, confirmed with Enter: cancelled, no buttons, the pending nodes skipped.
    browser
        .click("#campaign-actions button[data-campaign-action=cancel]")
        .await;
    browser
        .wait_for(
            "the confirmation dialog again",
            "return document.getElementById('confirm').open",
            WAIT,
        )
        .await;
    browser.press("#confirm-ok", ENTER).await;
    wait_page(&browser, "the campaign cancelled", "cancelled", "").await;
    let page = browser.run(PAGE, json!([])).await;
    assert_eq!(page[1], json!(format!("cancelled by {HOSTILE}")), "{page}");
    let c = campaign(&api, &id).await;
    assert_eq!(c["state"], "cancelled", "{c}");
    let skipped = c["counts"]["skipped"].as_u64().unwrap();
    assert!(skipped >= 1, "{c}");
    choose(&browser, "campaign-outcome", "skipped").await;
    browser
        .wait_for(
            "the skipped nodes, with why",
            &format!(
                "const rows = [...document.querySelectorAll('#campaign-nodes tbody tr')]; \
                 return rows.length === {skipped} && rows.every(r => r.cells[1].textContent === 'skipped' \
                 && r.cells[2].textContent === 'the campaign was cancelled before this node started')"
            ),
            WAIT,
        )
        .await;
    browser.screenshot("console-campaign-cancelled").await;
    // Markup in the reason and the creator ran nothing and made no element.
    let injected = browser
        .run(
            "return [window.pwned === undefined, window.noReload === true, \
             document.querySelectorAll('#campaign img, #campaign b, #confirm img').length]",
            json!([]),
        )
        .await;
    assert_eq!(injected, json!([true, true, 0]));

    // An address of markup: the API's 404, as text, and the address as the title's text.
    browser
        .open(&format!(
            "{}/#/campaigns/%3Cimg%20src%3Dx%20onerror%3Dwindow.pwned%3D3%3E%E2%82%AC",
            ctl.api_base()
        ))
        .await;
    browser
        .wait_for(
            "the unknown campaign's message",
            "return document.getElementById('campaign-error').textContent === 'campaign not found' \
             && document.getElementById('campaign-title').textContent === 'Campaign <img src=x onerror=window.pwned=3>€' \
             && document.getElementById('campaign-actions').hidden \
             && window.pwned === undefined && document.querySelectorAll('#campaign img').length === 0",
            WAIT,
        )
        .await;

    // A second campaign, held paused: the viewer sees it and its list, with no button.
    let other: Vec<String> = campaign_nodes_skipped(&api, &id).await;
    let second = create(
        &as_operator,
        json!({"action": "manage", "selector": {"nodes": other}, "max_concurrent": 1}),
    )
    .await;
    let (status, body) = as_operator
        .post(&format!("/api/v1/campaigns/{second}/pause"), None)
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    browser.click("#sign-out").await;
    sign_in(&browser, &ctl, &viewer, "viewer", "live").await;
    browser.click("#nav-campaigns").await;
    browser
        .wait_for(
            "both campaigns in the viewer's list, newest first",
            &format!(
                "const rows = [...document.querySelectorAll('#campaign-list tbody tr')]; \
                 return rows.map(r => r.dataset.campaign + ' ' + r.cells[2].textContent).join(',') === {}",
                json!(format!("{second} paused,{id} cancelled"))
            ),
            WAIT,
        )
        .await;
    browser
        .click(&format!("#campaign-list tr[data-campaign=\"{second}\"] a"))
        .await;
    wait_page(
        &browser,
        "the paused campaign, without buttons",
        "paused",
        "",
    )
    .await;
    let buttons = browser
        .run(
            "return [document.getElementById('campaign-actions').hidden, \
             [...document.querySelectorAll('#campaign-actions button')].every(b => b.hidden), \
             document.querySelectorAll('#campaigns button:not([id]), #campaign-list button').length]",
            json!([]),
        )
        .await;
    assert_eq!(buttons, json!([true, true, 0]));
    // Forged from the viewer's page, a resume is refused and changes nothing.
    let raw = browser
        .run(
            "return fetch('/api/v1/campaigns/' + arguments[0] + '/resume', { method: 'POST', \
               headers: { Authorization: 'Bearer ' + sessionStorage.getItem('metalbus.token') } }) \
             .then(r => r.status)",
            json!([second]),
        )
        .await;
    assert_eq!(raw, json!(403));
    assert_eq!(campaign(&api, &second).await["state"], "paused");

    let errors: Vec<String> = browser
        .console_errors()
        .await
        .into_iter()
        .filter(|e| !e.contains("status of 404") && !e.contains("status of 403"))
        .collect();
    assert!(errors.is_empty(), "console errors: {errors:?}");
    eprintln!(
        "pause/resume/cancel test: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// The ids of the nodes `id` skipped.
async fn campaign_nodes_skipped(api: &Api, id: &str) -> Vec<String> {
    let (status, body) = api
        .get(&format!(
            "/api/v1/campaigns/{id}?outcome=skipped&per_page=100"
        ))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    body["data"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node"].as_str().unwrap().to_string())
        .collect()
}

/// Without the event stream (another client holds the only one), the campaign page polls
/// every 3 s: a campaign still reaches `completed` on it, with no reload; when the
/// stream frees, the page goes live by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_stream_the_campaign_page_polls_to_completed() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let config = format!(
        "[http]\nmax_event_streams = 1\n\n{}",
        Controller::quick_plan("1")
    );
    let ctl = Controller::with_config(tmp.path(), &config, &[]).await;
    let api = ctl.api();
    let (_sim, ids) = SimProc::discovered(
        &ctl,
        6,
        "poll",
        &["--progress-events", "5", "--progress-every", "250ms"],
    )
    .await;
    // Another client holds the only stream.
    let held = reqwest::Client::new()
        .get(format!("{}/api/v1/events/stream", ctl.api_base()))
        .bearer_auth(ctl.token())
        .send()
        .await
        .unwrap();
    assert_eq!(held.status(), 200);

    let browser = Browser::start(tmp.path(), 1280).await;
    sign_in(&browser, &ctl, &ctl.token(), "admin", "not live").await;
    let id = create(
        &api,
        json!({"action": "manage", "selector": {"nodes": ids}, "max_concurrent": 1}),
    )
    .await;
    browser.click("#nav-campaigns").await;
    let row = format!("#campaign-list tr[data-campaign=\"{id}\"] a");
    browser
        .wait_for(
            "the campaign's row",
            &format!("return !!document.querySelector({})", json!(row)),
            WAIT,
        )
        .await;
    browser.run(RECORD, json!([])).await;
    browser.click(&row).await;
    browser
        .wait_for(
            "the campaign to complete on the polled page",
            "const $ = (id) => document.getElementById(id); \
             return $('campaign-state').textContent === 'completed' \
             && $('campaign-done').textContent === '6 of 6 nodes done (100 %)' \
             && [...document.querySelectorAll('#campaign-nodes tbody tr')] \
                  .filter(r => r.cells[1].textContent === 'succeeded').length === 6 \
             && $('live').textContent.startsWith('not live')",
            WAIT,
        )
        .await;
    let (seen, _) = recorded(&browser).await;
    assert!(seen.first().unwrap().starts_with("running|"), "{seen:?}");

    drop(held);
    browser.wait_live(WAIT).await;
    browser.assert_no_console_errors_but("status of 503").await;
    eprintln!("polling test: {:.1} s", started.elapsed().as_secs_f64());
}
