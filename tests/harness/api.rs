//! A small HTTP client for the Metalbus API, returning raw JSON so tests check the wire
//! shape, not our own types.

use serde_json::Value;

#[derive(Clone)]
pub struct Api {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

/// An HTTP client that trusts the controller's own CA (`DATA_DIR/tls/ca.pem`) when the
/// controller made one, as the CLI does.
pub fn http_client(data_dir: &std::path::Path) -> reqwest::Client {
    crate::install_crypto_provider();
    let ca = data_dir.join("tls").join("ca.pem");
    match std::fs::read(&ca) {
        Ok(pem) => reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&pem).unwrap()])
            .build()
            .unwrap(),
        Err(_) => reqwest::Client::new(),
    }
}

impl Api {
    pub fn new(base: &str, token: Option<String>) -> Api {
        crate::install_crypto_provider();
        Self::with_client(base, token, reqwest::Client::new())
    }

    /// With a client of the caller's (one that trusts a test CA, say).
    pub fn with_client(base: &str, token: Option<String>, http: reqwest::Client) -> Api {
        Api {
            base: base.to_string(),
            token,
            http,
        }
    }

    /// The same API with another (or no) token.
    pub fn with_token(&self, token: Option<&str>) -> Api {
        Api {
            token: token.map(str::to_string),
            ..self.clone()
        }
    }

    /// GET `path`: the status and the JSON body (Null when the body is not JSON).
    pub async fn get(&self, path: &str) -> Result<(u16, Value), String> {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| e.to_string())?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    /// Any request with an optional JSON body: the status and the JSON answer.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), String> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| e.to_string())?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    pub async fn post(&self, path: &str, body: Option<Value>) -> Result<(u16, Value), String> {
        self.send(reqwest::Method::POST, path, body).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> Result<(u16, Value), String> {
        self.send(reqwest::Method::PATCH, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Result<(u16, Value), String> {
        self.send(reqwest::Method::DELETE, path, None).await
    }

    /// A node's history, oldest first, as (from, to, triggered_by).
    pub async fn transitions(&self, key: &str) -> Result<Vec<(String, String, String)>, String> {
        let (status, body) = self
            .get(&format!("/api/v1/nodes/{key}/history?limit=200"))
            .await?;
        if status != 200 {
            return Err(format!("HTTP {status}: {body}"));
        }
        let mut out: Vec<(String, String, String)> = body["data"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|e| {
                let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
                (s("from_state"), s("to_state"), s("triggered_by"))
            })
            .collect();
        out.reverse();
        Ok(out)
    }

    /// Waits until the node is in `state`, failing fast if it lands in `fail_on`.
    pub async fn wait_state(&self, key: &str, state: &str, timeout: std::time::Duration) -> Value {
        crate::eventually(timeout, &format!("{key} to be {state}"), || {
            let api = self.clone();
            let key = key.to_string();
            let state = state.to_string();
            async move {
                let n = api.node(&key).await?;
                if n["state"] == state.as_str() {
                    Ok(n)
                } else {
                    Err(format!("state {} ({})", n["state"], n))
                }
            }
        })
        .await
    }

    /// GET `path` as text (for `/metrics`).
    /// Waits (bounded) until node `key` is online, or offline, as `online` says.
    pub async fn wait_online(&self, key: &str, online: bool, timeout: std::time::Duration) {
        let what = format!("{key} online = {online}");
        crate::eventually(timeout, &what, || {
            let api = self.clone();
            async move {
                let n = api.node(key).await?;
                (n["online"] == online).then_some(()).ok_or(n.to_string())
            }
        })
        .await;
    }

    pub async fn get_text(&self, path: &str) -> Result<String, String> {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        resp.text().await.map_err(|e| e.to_string())
    }

    /// GETs each `path` and requires a 400 with `Primus.00002` and a message; returns
    /// the bodies.
    pub async fn expect_bad_requests(&self, paths: &[String]) -> Vec<Value> {
        let mut bodies = Vec::new();
        for path in paths {
            let (status, body) = self.get(path).await.unwrap_or((0, Value::Null));
            assert_eq!(status, 400, "{path}: {body}");
            assert_eq!(body["errorCode"], "Primus.00002", "{path}: {body}");
            assert!(
                body["errorMessage"].as_str().is_some_and(|m| !m.is_empty()),
                "{path}: {body}"
            );
            bodies.push(body);
        }
        bodies
    }

    /// Every node, across all pages.
    pub async fn nodes(&self) -> Result<Vec<Value>, String> {
        let mut all = Vec::new();
        let mut page = 1;
        loop {
            let (status, body) = self
                .get(&format!("/api/v1/nodes?page={page}&per_page=100"))
                .await?;
            if status != 200 {
                return Err(format!("HTTP {status}: {body}"));
            }
            all.extend(body["data"].as_array().cloned().unwrap_or_default());
            if page >= body["pagination"]["pages"].as_u64().unwrap_or(0) {
                return Ok(all);
            }
            page += 1;
        }
    }

    /// One node's `data`, or an error naming the status.
    /// A new API token named `name` with `role` (through this client's token, an
    /// admin's); the secret, shown once.
    pub async fn create_token(&self, name: &str, role: &str) -> String {
        let (status, body) = self
            .post(
                "/api/v1/tokens",
                Some(serde_json::json!({"name": name, "role": role})),
            )
            .await
            .unwrap();
        assert_eq!(status, 201, "{body}");
        body["data"]["token"].as_str().unwrap().to_string()
    }

    pub async fn node(&self, key: &str) -> Result<Value, String> {
        let (status, body) = self.get(&format!("/api/v1/nodes/{key}")).await?;
        if status == 200 {
            Ok(body["data"].clone())
        } else {
            Err(format!("HTTP {status}: {body}"))
        }
    }
}

/// Campaigns (issue 16), for the tests that run them.
impl Api {
    /// Waits until every one of `ids` is `discovered`.
    pub async fn wait_discovered(&self, ids: &[String], timeout: std::time::Duration) {
        let want: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
        crate::eventually(timeout, "every node discovered", || {
            let want = want.clone();
            async move {
                let nodes = self.nodes().await?;
                let ready = nodes
                    .iter()
                    .filter(|n| {
                        n["state"] == "discovered" && want.contains(n["id"].as_str().unwrap_or(""))
                    })
                    .count();
                if ready == want.len() {
                    Ok(())
                } else {
                    Err(format!("{ready} of {} discovered", want.len()))
                }
            }
        })
        .await;
    }

    /// `POST /api/v1/campaigns`, which must answer 201; the campaign.
    pub async fn create_campaign(&self, request: Value) -> Value {
        let (status, body) = self
            .post("/api/v1/campaigns", Some(request.clone()))
            .await
            .unwrap();
        assert_eq!(status, 201, "creating {request}: {body}");
        let id = body["data"]["id"].as_str().unwrap_or_default();
        assert!(!id.is_empty(), "no id in {body}");
        body["data"].clone()
    }

    /// The campaign (with the first page of its nodes), or why not.
    pub async fn campaign(&self, id: &str) -> Result<Value, String> {
        let (status, body) = self.get(&format!("/api/v1/campaigns/{id}")).await?;
        if status == 200 {
            Ok(body["data"].clone())
        } else {
            Err(format!("HTTP {status}: {body}"))
        }
    }
}
