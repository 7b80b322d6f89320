//! A real headless Chromium, driven over WebDriver (W3C, JSON over HTTP) through
//! Debian's `chromedriver`, for the web console's tests. Only what the tests use: open a
//! page, find elements, type, click, run a script, read the browser's console, and a
//! screenshot when a wait fails (saved under `target/test-screenshots/`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The key W3C WebDriver names an element reference by.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
/// W3C WebDriver key codes, for [`Browser::press`].
pub const ENTER: &str = "\u{E007}";
pub const ESCAPE: &str = "\u{E00C}";

pub struct Browser {
    driver: Child,
    base: String,
    http: reqwest::Client,
    /// Where screenshots of failed waits go.
    shots: PathBuf,
}

impl Browser {
    /// Starts chromedriver on a free loopback port and a headless Chromium session,
    /// 1280 px wide (`width`).
    pub async fn start(dir: &Path, width: u32) -> Browser {
        let port = super::process::free_port();
        let log = std::fs::File::create(dir.join("chromedriver.log")).unwrap();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("chromedriver (Debian: apt-get install chromium chromium-driver)");
        let mut browser = Browser {
            driver,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
            shots: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-screenshots"),
        };
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-dev-shm-usage", "--no-first-run",
                    format!("--window-size={width},900"),
                    format!("--user-data-dir={}", dir.join("chromium").display())],
            },
        }}});
        let started = Instant::now();
        // chromedriver needs a moment to listen.
        let session = loop {
            match browser.call("POST", "/session", Some(caps.clone())).await {
                Ok(v) => break v["sessionId"].as_str().unwrap().to_string(),
                Err(e) if started.elapsed() > Duration::from_secs(20) => {
                    panic!("no browser session: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        browser.base = format!("{}/session/{session}", browser.base);
        browser
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let url = format!("{}{path}", self.base);
        let req = match method {
            "GET" => self.http.get(&url),
            "DELETE" => self.http.delete(&url),
            _ => self.http.post(&url).json(&body.unwrap_or(json!({}))),
        };
        let res = req.send().await.map_err(|e| e.to_string())?;
        let status = res.status();
        let v: Value = res.json().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("{status}: {}", v["value"]));
        }
        Ok(v["value"].clone())
    }

    pub async fn open(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url })))
            .await
            .unwrap();
    }

    /// The element `css` selects (the first one).
    pub async fn find(&self, css: &str) -> String {
        let v = self
            .call(
                "POST",
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"));
        v[ELEMENT].as_str().unwrap().to_string()
    }

    /// Types `text` into the element `css` selects, as a user would.
    pub async fn type_into(&self, css: &str, text: &str) {
        let el = self.find(css).await;
        self.call(
            "POST",
            &format!("/element/{el}/value"),
            Some(json!({ "text": text })),
        )
        .await
        .unwrap();
    }

    /// Presses `key` (a W3C key code such as [`ENTER`] or [`ESCAPE`], or text) on the
    /// element `css` selects, which gets the focus first: what a keyboard user does.
    pub async fn press(&self, css: &str, key: &str) {
        let el = self.find(css).await;
        self.call(
            "POST",
            &format!("/element/{el}/value"),
            Some(json!({ "text": key })),
        )
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"));
    }

    /// Sets the window to `width` x `height` CSS pixels (a phone: 390 x 844).
    pub async fn resize(&self, width: u32, height: u32) {
        self.call(
            "POST",
            "/window/rect",
            Some(json!({ "width": width, "height": height })),
        )
        .await
        .unwrap();
    }

    pub async fn click(&self, css: &str) {
        let el = self.find(css).await;
        self.call("POST", &format!("/element/{el}/click"), None)
            .await
            .unwrap();
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page.
    pub async fn run(&self, script: &str, args: Value) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
        .await
        .unwrap_or_else(|e| panic!("{script}: {e}"))
    }

    /// Waits until `script` returns `true`; on a timeout saves a screenshot named
    /// after `what` and fails with what the script last returned.
    pub async fn wait_for(&self, what: &str, script: &str, within: Duration) {
        let started = Instant::now();
        loop {
            let v = self.run(script, json!([])).await;
            if v == Value::Bool(true) {
                return;
            }
            if started.elapsed() > within {
                let shot = self.screenshot(what).await;
                panic!(
                    "timed out after {within:?} waiting for {what}; last: {v}; screenshot: {shot}"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Saves a screenshot of the page as `target/test-screenshots/{name}.png`.
    pub async fn screenshot(&self, name: &str) -> String {
        let Ok(png) = self.call("GET", "/screenshot", None).await else {
            return "none (the browser did not answer)".into();
        };
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap_or(""))
            .unwrap_or_default();
        let _ = std::fs::create_dir_all(&self.shots);
        let safe: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let path = self.shots.join(format!("{safe}.png"));
        match std::fs::write(&path, bytes) {
            Ok(()) => path.display().to_string(),
            Err(e) => format!("not saved: {e}"),
        }
    }

    /// Waits until the console's badge says its event stream is `live` again.
    pub async fn wait_live(&self, within: Duration) {
        self.wait_for(
            "the stream again",
            "return document.getElementById('live').textContent === 'live'",
            within,
        )
        .await;
    }

    /// Asserts the page logged no error but those containing `expected` (a refusal the
    /// test provoked, say).
    pub async fn assert_no_console_errors_but(&self, expected: &str) {
        let errors: Vec<String> = self
            .console_errors()
            .await
            .into_iter()
            .filter(|e| !e.contains(expected))
            .collect();
        assert!(errors.is_empty(), "console errors: {errors:?}");
    }

    /// What the page logged at level SEVERE (errors) since the last call.
    pub async fn console_errors(&self) -> Vec<String> {
        let logs = self
            .call("POST", "/se/log", Some(json!({"type": "browser"})))
            .await
            .unwrap_or(Value::Null);
        logs.as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["level"] == "SEVERE")
            .map(|e| e["message"].as_str().unwrap_or("").to_string())
            .collect()
    }
}

impl Browser {
    /// One WebDriver call on the session with a plain blocking request (for `Drop`,
    /// where no runtime may be at hand); the response body, if it came.
    fn blocking(&self, method: &str, path: &str) -> Option<Vec<u8>> {
        use std::io::{Read, Write};
        let rest = self.base.strip_prefix("http://")?;
        let (host, session) = rest.split_once('/')?;
        let mut s = std::net::TcpStream::connect(host).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        let req = format!(
            "{method} /{session}{path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).ok()?;
        let mut all = Vec::new();
        let _ = s.read_to_end(&mut all);
        let at = all.windows(4).position(|w| w == b"\r\n\r\n")?;
        Some(all[at + 4..].to_vec())
    }
}

impl Drop for Browser {
    /// Ends the session (which closes Chromium) with a plain blocking request, then
    /// stops chromedriver.
    /// A test that fails anywhere (not only in [`Browser::wait_for`]) leaves a screenshot
    /// of the page, named after the test thread.
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(answer) = self.blocking("GET", "/screenshot") {
                let name = std::thread::current()
                    .name()
                    .unwrap_or("browser")
                    .replace("::", "-");
                let png = serde_json::from_slice::<Value>(&answer)
                    .ok()
                    .and_then(|v| v["value"].as_str().map(str::to_string))
                    .unwrap_or_default();
                use base64::Engine as _;
                if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(png) {
                    let _ = std::fs::create_dir_all(&self.shots);
                    let path = self.shots.join(format!("{name}-at-failure.png"));
                    if std::fs::write(&path, bytes).is_ok() {
                        eprintln!("screenshot of the page: {}", path.display());
                    }
                }
            }
        }
        self.blocking("DELETE", "");
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
