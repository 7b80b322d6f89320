//! The web console in a real headless Chromium (Debian's chromium and chromium-driver),
//! against the real controller and simulated agents: sign-in, the fleet table, its
//! counts, filter and search (issue 14).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use metalbus_e2e::{Browser, Controller, SimProc};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

/// How many rows the node table shows.
const ROWS: &str = "return document.querySelectorAll('#nodes tbody tr').length";

/// Picks `state` in the state filter, as a user would (`""`: any).
async fn choose_state(browser: &Browser, state: &str) {
    browser
        .run(
            "const s = document.getElementById('state'); s.value = arguments[0]; \
             s.dispatchEvent(new Event('change'));",
            json!([state]),
        )
        .await;
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
    choose_state(&browser, "active").await;
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
    choose_state(&browser, "").await;
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
    choose_state(&browser, "").await;
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

    let errors = browser.console_errors().await;
    // The wrong token's 401 is the browser's own network log line, not the page's.
    let page_errors: Vec<&String> = errors.iter().filter(|e| !e.contains("401")).collect();
    assert!(page_errors.is_empty(), "console errors: {page_errors:?}");
}
