//! Tokens and who they authenticate.
//!
//! A token is 32 random bytes in hex. Only its SHA-256 is stored; the in-memory registry
//! maps hashes to users, so authenticating a request is one hash and one map lookup.
//! The admin user and its token are made on the first start; the token is written to
//! `DATA_DIR/admin-token` (mode 0600) and that file is reused on later starts.

use crate::app::App;
use crate::error::ApiError;
use crate::registry::{Registry, TokenHash, User};
use crate::store::{Store, StoreError, TokenRow, UserRow};
use anyhow::Context;
use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use scifaas_protocol::time::now_micros;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The user created on first start, the only one that may create tokens.
pub(crate) const ADMIN_USER: &str = "admin";

/// The file in the data directory holding the admin token.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";

/// A fresh token: 32 random bytes, hex.
pub(crate) fn mint_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness for a token: {e}"))?;
    Ok(hex::encode(bytes))
}

/// The form in which a token is kept.
pub(crate) fn token_hash(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

/// The token of an `Authorization: Bearer TOKEN` header.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Result<&str, ApiError> {
    let missing = || ApiError::Unauthorized("missing header `Authorization: Bearer TOKEN`".into());
    let value = headers.get(AUTHORIZATION).ok_or_else(missing)?;
    let value = value.to_str().map_err(|_| missing())?;
    let (scheme, token) = value.split_once(' ').ok_or_else(missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(missing());
    }
    Ok(token.trim())
}

/// The authenticated caller of a request.
pub(crate) struct AuthUser(pub Arc<User>);

impl FromRequestParts<Arc<App>> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let token = bearer_token(&parts.headers)?;
        app.registry
            .user_by_token(&token_hash(token))
            .map(Self)
            .ok_or_else(|| ApiError::Unauthorized("invalid token".into()))
    }
}

/// Makes sure the admin user exists and holds the token in `DATA_DIR/admin-token`;
/// returns the token and the file's path.
pub(crate) async fn bootstrap_admin(
    data_dir: &Path,
    store: &Store,
    registry: &Registry,
) -> anyhow::Result<(String, PathBuf)> {
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    if registry.user(ADMIN_USER).is_none() {
        store
            .create_user(UserRow {
                name: ADMIN_USER.into(),
                is_admin: true,
                created_at: now_micros(),
            })
            .await
            .context("creating the admin user")?;
        registry.add_user(ADMIN_USER, true);
    }
    if let Some(token) = read_token_file(&path)? {
        let hash = token_hash(&token);
        if registry.token_belongs_to(&hash, ADMIN_USER) {
            return Ok((token, path));
        }
        if registry.user_by_token(&hash).is_none() {
            // The file outlived its database: keep the token the admin already uses.
            add_token(store, registry, &token, ADMIN_USER).await?;
            return Ok((token, path));
        }
        tracing::warn!(path = %path.display(), "the admin-token file holds another user's token; replacing it");
    }
    let token = mint_token()?;
    add_token(store, registry, &token, ADMIN_USER).await?;
    write_private(&path, &token)?;
    tracing::info!(path = %path.display(), "created the admin token");
    Ok((token, path))
}

/// Stores a token for `user` and lets it authenticate.
pub(crate) async fn add_token(
    store: &Store,
    registry: &Registry,
    token: &str,
    user: &str,
) -> Result<(), StoreError> {
    let hash = token_hash(token);
    store
        .add_token(TokenRow {
            hash: hex::encode(hash),
            user: user.to_owned(),
            created_at: now_micros(),
        })
        .await?;
    registry.add_token(hash, user);
    Ok(())
}

/// The token in `path`, if the file exists and holds one.
fn read_token_file(path: &Path) -> anyhow::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let token = text.trim();
            if token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit()) {
                Ok(Some(token.to_owned()))
            } else {
                tracing::warn!(path = %path.display(), "ignoring an admin-token file that holds no token");
                Ok(None)
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes a secret readable by its owner only; a reader never sees a half-written file.
fn write_private(path: &Path, secret: &str) -> anyhow::Result<()> {
    let partial = path.with_extension("partial");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&partial)
        .with_context(|| format!("creating {}", partial.display()))?;
    // The mode above applies only when the file is created; a leftover may have another.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(format!("{secret}\n").as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&partial, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn tokens_are_64_hex_digits_and_hash_stably() {
        let token = mint_token().unwrap();
        assert_eq!(token.len(), 64);
        assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(token, mint_token().unwrap());
        assert_eq!(token_hash(&token), token_hash(&token));
    }

    #[test]
    fn bearer_header_is_parsed_strictly() {
        let mut headers = HeaderMap::new();
        assert!(bearer_token(&headers).is_err());
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert!(bearer_token(&headers).is_err());
        headers.insert(AUTHORIZATION, HeaderValue::from_static("bearer abc"));
        assert_eq!(bearer_token(&headers).unwrap(), "abc");
    }
}
