//! The CLI's HTTP client: finds the API and the token, sends requests, and turns API
//! errors into one-line messages.

use std::path::{Path, PathBuf};
use std::time::Duration;

use metalbus_protocol::api::{Data, ErrorBody, NodeView, Page, Pagination};

pub use reqwest::Method;
use serde::de::DeserializeOwned;

/// Why a CLI command failed; each maps to an exit code scripts can rely on.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot reach the Metalbus API at {url}: {source}")]
    Unreachable { url: String, source: reqwest::Error },
    #[error("{message} ({code}, HTTP {status})")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("unexpected answer from {url}: {why}")]
    Protocol { url: String, why: String },
    /// `--wait`: the operation ended `failed`, `rejected` or `expired`.
    #[error("{0}")]
    OperationFailed(String),
    /// `--wait`: no final status within the timeout.
    #[error("{0}")]
    WaitTimedOut(String),
}

impl ClientError {
    /// 2 usage, 3 not found, 4 refused by the API, 5 API unreachable, 6 the awaited
    /// operation failed, 7 waiting for it timed out, 1 anything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Usage(_) => 2,
            ClientError::Api { status: 404, .. } => 3,
            ClientError::Api { status, .. } if *status < 500 => 4,
            ClientError::Unreachable { .. } => 5,
            ClientError::OperationFailed(_) => 6,
            ClientError::WaitTimedOut(_) => 7,
            ClientError::Api { .. } | ClientError::Protocol { .. } => 1,
        }
    }
}

/// Where the admin token is looked for, in order, after `--token` and `METALBUS_TOKEN`.
/// Where the controller's own CA certificate is looked for, in order.
pub fn ca_files() -> Vec<PathBuf> {
    vec![
        PathBuf::from("metalbus-data/tls/ca.pem"),
        PathBuf::from("/var/lib/metalbus/tls/ca.pem"),
    ]
}

pub fn token_files() -> Vec<PathBuf> {
    vec![
        PathBuf::from("metalbus-data/admin.token"),
        PathBuf::from("/var/lib/metalbus/admin.token"),
    ]
}

/// The token from the flag, else the environment, else the first readable token file.
pub fn find_token(
    flag: Option<String>,
    env: Option<String>,
    files: &[PathBuf],
) -> Result<String, ClientError> {
    if let Some(t) = flag.or(env).filter(|t| !t.trim().is_empty()) {
        return Ok(t.trim().to_string());
    }
    for f in files {
        if let Ok(t) = std::fs::read_to_string(f) {
            if !t.trim().is_empty() {
                return Ok(t.trim().to_string());
            }
        }
    }
    let tried: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    Err(ClientError::Usage(format!(
        "no API token: pass --token, set METALBUS_TOKEN, or run where {} is readable",
        tried.join(" or ")
    )))
}

pub struct ApiClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl ApiClient {
    /// A client of `base` with `token`. An `https://` API's certificate is checked
    /// against `ca`, else the controller's own CA file when one is found here, else the
    /// system's roots.
    pub fn new(base: &str, token: String, ca: Option<&Path>) -> Result<Self, ClientError> {
        metalbus_link::install_crypto_provider();
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(30));
        if base.starts_with("https://") {
            let found = ca
                .map(Path::to_path_buf)
                .or_else(|| ca_files().into_iter().find(|p| p.exists()));
            if let Some(path) = found {
                let pem = std::fs::read(&path).map_err(|e| {
                    ClientError::Usage(format!("cannot read the CA file {}: {e}", path.display()))
                })?;
                let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| {
                    ClientError::Usage(format!("{} is not a PEM certificate: {e}", path.display()))
                })?;
                builder = builder.tls_certs_only([cert]);
            }
        } else {
            // Plain http: no TLS, so no trust roots. Without this the builder loads the
            // system's roots anyway, and fails on a box without ca-certificates.
            builder = builder.tls_certs_only([]);
        }
        let http = builder.build().map_err(|e| {
            let mut text = format!("cannot build the HTTP client: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                text.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            ClientError::Usage(text)
        })?;
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            token,
            http,
        })
    }

    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, ClientError> {
        self.send(reqwest::Method::GET, path, query, None).await
    }

    /// Sends a request and decodes the answer, or the API's error.
    pub async fn send<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<serde_json::Value>,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut req = self
            .http
            .request(method, &url)
            .bearer_auth(&self.token)
            .query(query);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req
            .send()
            .await
            .map_err(|source| ClientError::Unreachable {
                url: self.base.clone(),
                source,
            })?;
        let status = resp.status().as_u16();
        let bytes = resp
            .bytes()
            .await
            .map_err(|source| ClientError::Unreachable {
                url: self.base.clone(),
                source,
            })?;
        if !(200..300).contains(&status) {
            return Err(api_error(status, &bytes));
        }
        // 204 No Content: nothing to decode (read as JSON null, i.e. `()`).
        let bytes = if bytes.is_empty() {
            b"null"[..].into()
        } else {
            bytes
        };
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol {
            url,
            why: e.to_string(),
        })
    }

    /// Opens a long-lived streaming GET (Server-Sent Events): no overall time limit,
    /// the caller watches for silence instead.
    pub async fn open_stream(&self, path: &str) -> Result<reqwest::Response, ClientError> {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .header("accept", "text/event-stream")
            .timeout(Duration::from_secs(10 * 365 * 86_400))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = resp.status().as_u16();
        if !(200..300).contains(&status) {
            let bytes = resp.bytes().await.map_err(|e| self.unreachable(e))?;
            return Err(api_error(status, &bytes));
        }
        Ok(resp)
    }

    pub fn unreachable(&self, source: reqwest::Error) -> ClientError {
        ClientError::Unreachable {
            url: self.base.clone(),
            source,
        }
    }

    pub fn protocol_error(&self, why: String) -> ClientError {
        ClientError::Protocol {
            url: self.base.clone(),
            why,
        }
    }

    /// Every node the filters (`(name, value)` query pairs) select, page by page.
    pub async fn all_nodes(
        &self,
        filters: &[(&str, String)],
    ) -> Result<Vec<NodeView>, ClientError> {
        self.all_pages("/api/v1/nodes", filters, |p: Page<NodeView>| {
            (p.data, p.pagination)
        })
        .await
    }

    /// Every item of the paged list at `path` with `query`, 100 a page: `items` takes a
    /// page's items and its pagination out of the answer.
    pub async fn all_pages<P: DeserializeOwned, T>(
        &self,
        path: &str,
        query: &[(&str, String)],
        mut items: impl FnMut(P) -> (Vec<T>, Pagination),
    ) -> Result<Vec<T>, ClientError> {
        let mut out = Vec::new();
        let mut page = 1u32;
        loop {
            let mut q = vec![("page", page.to_string()), ("per_page", "100".to_string())];
            q.extend(query.iter().cloned());
            let (data, pagination) = items(self.get(path, &q).await?);
            out.extend(data);
            if u64::from(page) >= pagination.pages {
                return Ok(out);
            }
            page += 1;
        }
    }

    pub async fn node(&self, key: &str) -> Result<NodeView, ClientError> {
        let d: Data<NodeView> = self.get(&node_path(key, ""), &[]).await?;
        Ok(d.data)
    }
}

/// The API's `{errorCode, errorMessage}`, or the start of whatever else came.
fn api_error(status: u16, bytes: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(b) => ClientError::Api {
            status,
            code: b.error_code,
            message: b.error_message,
        },
        Err(_) => ClientError::Api {
            status,
            code: "-".into(),
            message: String::from_utf8_lossy(bytes).chars().take(200).collect(),
        },
    }
}

/// `/api/v1/nodes/{key}{rest}`, with the key escaped.
pub fn node_path(key: &str, rest: &str) -> String {
    format!("/api/v1/nodes/{}{rest}", encode_path_segment(key))
}

/// Percent-encodes everything but unreserved characters, so a node name can't change the
/// path.
pub fn encode_path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_precedence_is_flag_env_then_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("admin.token");
        std::fs::write(&file, "from-file\n").unwrap();
        let files = vec![dir.path().join("missing"), file];
        assert_eq!(
            find_token(Some("f".into()), Some("e".into()), &files).unwrap(),
            "f"
        );
        assert_eq!(find_token(None, Some("e".into()), &files).unwrap(), "e");
        assert_eq!(find_token(None, None, &files).unwrap(), "from-file");
        let err = find_token(None, None, &[dir.path().join("missing")]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn exit_codes_are_stable() {
        let api = |status| ClientError::Api {
            status,
            code: "c".into(),
            message: "m".into(),
        };
        assert_eq!(api(404).exit_code(), 3);
        assert_eq!(api(401).exit_code(), 4);
        assert_eq!(api(409).exit_code(), 4);
        assert_eq!(api(500).exit_code(), 1);
        assert_eq!(ClientError::OperationFailed("x".into()).exit_code(), 6);
        assert_eq!(ClientError::WaitTimedOut("x".into()).exit_code(), 7);
    }

    #[test]
    fn path_segments_are_escaped() {
        assert_eq!(encode_path_segment("web-01.x"), "web-01.x");
        assert_eq!(encode_path_segment("a/b c"), "a%2Fb%20c");
    }
}
