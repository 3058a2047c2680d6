//! [`Browser`]: a headless Chromium driven over WebDriver (`chromedriver`),
//! for the web console's tests. The W3C WebDriver protocol is plain JSON
//! over HTTP, so this is a few requests, not a client library.
//!
//! Chromium and chromedriver come from the distribution's packages
//! (`./scripts/install-chromium.sh`); `$CHROME_BIN` and `$CHROMEDRIVER`
//! point elsewhere. The driver runs in a process group of its own, which
//! is killed with the handle, browser included.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep};

/// The WebDriver key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

#[derive(Debug)]
pub struct Browser {
    driver: Child,
    http: reqwest::Client,
    base: String,
    session: String,
}

/// The first of `names` found as an executable on `PATH`.
fn on_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

fn binary(var: &str, names: &[&str]) -> PathBuf {
    std::env::var_os(var)
        .map(PathBuf::from)
        .or_else(|| on_path(names))
        .unwrap_or_else(|| {
            panic!(
                "the console test needs {} (or ${var}): install Chromium and chromedriver with ./scripts/install-chromium.sh",
                names[0]
            )
        })
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session.
    pub async fn start() -> Browser {
        let chrome = binary(
            "CHROME_BIN",
            &["chromium", "chromium-browser", "google-chrome"],
        );
        let driver_bin = binary("CHROMEDRIVER", &["chromedriver"]);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            // Test support: a machine that cannot bind loopback fails the test here.
            .expect("a free port for chromedriver");
        let driver = Command::new(&driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", driver_bin.display()));
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = http
                .get(format!("{base}/status"))
                .send()
                .await
                .ok()
                .and_then(|r| r.status().is_success().then_some(()));
            if ready.is_some() {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not come up");
            sleep(Duration::from_millis(100)).await;
        }
        let mut browser = Browser {
            driver,
            http,
            base,
            session: String::new(),
        };
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chrome,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1200"],
            },
        }}});
        let created = browser.send("POST", "/session", Some(caps)).await;
        browser.session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {created}"))
            .to_string();
        browser
    }

    /// A WebDriver command; its `value`. A WebDriver error fails the test.
    async fn send(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.try_send(method, path, body)
            .await
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"))
    }

    /// A WebDriver command; its `value`, or the WebDriver error's code and
    /// message.
    async fn try_send(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let url = format!("{}{path}", self.base);
        let req = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self
                .http
                .post(url)
                .header("content-type", "application/json")
                .body(body.unwrap_or_else(|| json!({})).to_string()),
        };
        let reply = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let text = reply.text().await.unwrap_or_default();
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("WebDriver {method} {path} answered {text:?}: {e}"));
        let value = v["value"].clone();
        match value.get("error").and_then(Value::as_str) {
            Some(err) => Err(format!(
                "{err}: {}",
                value["message"].as_str().unwrap_or("")
            )),
            None => Ok(value),
        }
    }

    fn at(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    pub async fn goto(&self, url: &str) {
        self.send("POST", &self.at("/url"), Some(json!({"url": url})))
            .await;
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page.
    pub async fn script(&self, script: &str, args: Value) -> Value {
        self.send(
            "POST",
            &self.at("/execute/sync"),
            Some(json!({"script": script, "args": args})),
        )
        .await
    }

    /// Waits until `script` returns something other than null, false or
    /// an empty string, and returns that.
    pub async fn wait_until(
        &self,
        what: &str,
        script: &str,
        args: Value,
        limit: Duration,
    ) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let v = self.script(script, args.clone()).await;
            let done = match &v {
                Value::Null | Value::Bool(false) => false,
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if done {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "waited {limit:?} for {what}; the page shows: {}",
                self.script("return document.body.innerText", json!([]))
                    .await
                    .as_str()
                    .unwrap_or("")
            );
            sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for an element matching `css`, and returns its text.
    pub async fn wait_for(&self, css: &str, limit: Duration) -> String {
        let v = self
            .wait_until(
                &format!("an element {css}"),
                "const e = document.querySelector(arguments[0]); return e ? (e.innerText || ' ') : null;",
                json!([css]),
                limit,
            )
            .await;
        v.as_str().unwrap_or_default().to_string()
    }

    /// Whether an element matches `css` now.
    pub async fn has(&self, css: &str) -> bool {
        self.script(
            "return document.querySelector(arguments[0]) !== null;",
            json!([css]),
        )
        .await
            == Value::Bool(true)
    }

    async fn element(&self, css: &str) -> String {
        let v = self
            .send(
                "POST",
                &self.at("/element"),
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_string()
    }

    /// Clicks the element matching `css`, as a person would. An element
    /// the page replaced between finding and clicking it (a live update)
    /// is found again.
    pub async fn click(&self, css: &str) {
        for _ in 0..50 {
            let id = self.element(css).await;
            match self
                .try_send("POST", &self.at(&format!("/element/{id}/click")), None)
                .await
            {
                Ok(_) => return,
                Err(e) if e.starts_with("stale element reference") => {
                    sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("click {css}: {e}"),
            }
        }
        panic!("click {css}: the element kept being replaced");
    }

    /// Types `text` into the element matching `css`, in place of what it
    /// held.
    pub async fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css).await;
        self.send("POST", &self.at(&format!("/element/{id}/clear")), None)
            .await;
        self.send(
            "POST",
            &self.at(&format!("/element/{id}/value")),
            Some(json!({"text": text})),
        )
        .await;
    }

    /// The page as a PNG.
    pub async fn screenshot(&self) -> Vec<u8> {
        use base64::Engine;
        let v = self.send("GET", &self.at("/screenshot"), None).await;
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_default())
            // WebDriver sends screenshots as base64; anything else fails the test.
            .expect("a base64 screenshot")
    }

    /// Ends the session (the browser quits) and the driver.
    pub async fn close(mut self) {
        self.send("DELETE", &self.at(""), None).await;
        let _ = self.driver.kill().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The browser is the driver's child, in the driver's group.
        if let Some(pid) = self.driver.id() {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}
