//! A small HTTP client for the Metalbus API, returning raw JSON so tests check the wire
//! shape, not our own types.

use serde_json::Value;

#[derive(Clone)]
pub struct Api {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Api {
    pub fn new(base: &str, token: Option<String>) -> Api {
        crate::install_crypto_provider();
        Api {
            base: base.to_string(),
            token,
            http: reqwest::Client::new(),
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

    /// GET `path` as text (for `/metrics`).
    pub async fn get_text(&self, path: &str) -> Result<String, String> {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        resp.text().await.map_err(|e| e.to_string())
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
    pub async fn node(&self, key: &str) -> Result<Value, String> {
        let (status, body) = self.get(&format!("/api/v1/nodes/{key}")).await?;
        if status == 200 {
            Ok(body["data"].clone())
        } else {
            Err(format!("HTTP {status}: {body}"))
        }
    }
}
