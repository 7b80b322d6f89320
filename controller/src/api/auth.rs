//! Bearer-token authentication: token generation, hashing, and the request check.
//!
//! Only SHA-256 hashes of tokens are stored (DESIGN section 9). On first start the
//! controller writes a generated admin token to `DATA_DIR/admin.token` with mode 0600.

use std::path::Path;

use anyhow::Context;
use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use metalbus_protocol::api::Role;
use redb::Durability;

use super::error::ApiError;
use super::AppState;
use crate::store::{Store, TokenRecord};

/// Who is calling; put into request extensions by [`require_token`].
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

/// A new random token: `mb_` and 64 hex digits (256 bits).
pub fn generate_token() -> String {
    format!("mb_{}", crate::security::random_secret())
}

/// Lower-case hex SHA-256 of the token: the store key.
pub fn token_hash(token: &str) -> String {
    metalbus_protocol::proof::hex(
        ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref(),
    )
}

/// A new token (shown once), its hash (the store key) and its record.
pub fn new_token(
    name: &str,
    role: Role,
    now: metalbus_protocol::Timestamp,
) -> (String, String, TokenRecord) {
    let token = generate_token();
    let hash = token_hash(&token);
    let record = TokenRecord {
        name: name.to_string(),
        role,
        created_at: now,
    };
    (token, hash, record)
}

/// On first start (no `admin.token` file), creates an admin token and writes the file
/// with mode 0600. Returns true when a new token was made. A later start without the
/// file makes a new one and revokes the old token named `admin`. When the file exists but the
/// store does not know its token (the store was deleted or restored from elsewhere), the
/// file's token is registered again: the file, readable only by the controller's user,
/// is the root of trust.
pub fn ensure_admin_token(
    store: &mut Store,
    data_dir: &Path,
    now: metalbus_protocol::Timestamp,
) -> anyhow::Result<bool> {
    let path = data_dir.join("admin.token");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            crate::security::private_file(&path)?;
            let token = text.trim();
            anyhow::ensure!(
                !token.is_empty(),
                "{} is empty; delete it to have a new admin token generated",
                path.display()
            );
            let hash = token_hash(token);
            if store.token(&hash)?.is_none() {
                let record = TokenRecord {
                    name: "admin".into(),
                    role: Role::Admin,
                    created_at: now,
                };
                store.write(Durability::Immediate, |tx| tx.put_token(&hash, &record))?;
                tracing::warn!(path = %path.display(), "the store did not know the admin token in the token file; registered it again");
            }
            return Ok(false);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    // A deleted file means a new admin token: the one it held (named `admin`) ends in the
    // same commit, so deleting the file and restarting rotates it.
    let old: Vec<String> = store
        .tokens()?
        .into_iter()
        .filter(|(_, r)| r.name == "admin")
        .map(|(hash, _)| hash)
        .collect();
    let (token, hash, record) = new_token("admin", Role::Admin, now);
    store.write(Durability::Immediate, |tx| {
        for old in &old {
            tx.delete_token(old)?;
        }
        tx.put_token(&hash, &record)
    })?;
    crate::security::write_private(&path, format!("{token}\n").as_bytes())?;
    if !old.is_empty() {
        tracing::warn!(path = %path.display(), "the admin token file was missing: made a new admin token; the old one no longer works");
    }
    Ok(true)
}

/// Middleware: refuses requests without a valid bearer token (401), and records the
/// caller for handlers.
pub async fn require_token(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let header = req
        .headers()
        .get(AUTHORIZATION)
        .ok_or(ApiError::Unauthorized(
            "missing bearer token: send 'Authorization: Bearer <token>'",
        ))?;
    let token = header
        .to_str()
        .ok()
        .and_then(|h| h.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .filter(|t| !t.is_empty())
        .ok_or(ApiError::Unauthorized(
            "malformed Authorization header: expected 'Bearer <token>'",
        ))?;
    let record = state
        .store
        .token(&token_hash(token))?
        .ok_or(ApiError::Unauthorized("invalid token"))?;
    req.extensions_mut().insert(Caller {
        name: record.name,
        role: record.role,
    });
    Ok(next.run(req).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hashes_are_sha256_hex() {
        let a = generate_token();
        let b = generate_token();
        assert_ne!(a, b);
        assert!(a.starts_with("mb_") && a.len() == 67, "{a}");
        // sha256("abc"), a published test vector.
        assert_eq!(
            token_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn admin_token_file_is_private_and_made_once() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::in_memory(Default::default()).unwrap();
        let now = metalbus_protocol::Timestamp::from_unix_millis(0);
        assert!(ensure_admin_token(&mut store, dir.path(), now).unwrap());
        assert!(!ensure_admin_token(&mut store, dir.path(), now).unwrap());
        let path = dir.path().join("admin.token");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let token = std::fs::read_to_string(&path).unwrap();
        let rec = store.token(&token_hash(token.trim())).unwrap().unwrap();
        assert_eq!(rec.role, Role::Admin);

        // A fresh store with the old file: the file's token is registered again.
        let mut fresh = Store::in_memory(Default::default()).unwrap();
        assert!(!ensure_admin_token(&mut fresh, dir.path(), now).unwrap());
        assert!(fresh.token(&token_hash(token.trim())).unwrap().is_some());

        // The file deleted: a new token, and the old one no longer works. Other tokens,
        // admin ones included, are kept.
        let (_, other, record) = new_token("admin-2027", Role::Admin, now);
        store
            .write(Durability::Immediate, |tx| tx.put_token(&other, &record))
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(ensure_admin_token(&mut store, dir.path(), now).unwrap());
        let new = std::fs::read_to_string(&path).unwrap();
        assert_ne!(new, token);
        assert!(store.token(&token_hash(token.trim())).unwrap().is_none());
        assert!(store.token(&token_hash(new.trim())).unwrap().is_some());
        assert!(store.token(&other).unwrap().is_some());
        assert_eq!(store.tokens().unwrap().len(), 2);
    }
}
