//! The in-memory registry: users, tokens, functions and endpoints. They are immutable or
//! rarely written, so every request is authenticated and resolved here, without a read
//! from disk. Writes go to the store first and enter the registry once committed.

use crate::store::{EndpointRow, FunctionRow, RegistrySnapshot};
use bytes::Bytes;
use scifaas_protocol::time::Micros;
use scifaas_protocol::{EndpointId, FunctionId, FunctionSpec};
use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// SHA-256 of a token: the only form in which a token is kept.
pub(crate) type TokenHash = [u8; 32];

/// A user of the service.
#[derive(Debug)]
pub(crate) struct User {
    pub name: Arc<str>,
    pub is_admin: bool,
}

/// A registered function, with the spec sent to agents prebuilt.
#[derive(Debug)]
pub(crate) struct Function {
    pub owner: Arc<str>,
    pub description: Option<String>,
    pub created_at: Micros,
    pub spec: FunctionSpec,
}

/// A registered endpoint.
#[derive(Debug)]
pub(crate) struct Endpoint {
    pub id: EndpointId,
    pub owner: Arc<str>,
    pub name: String,
    pub created_at: Micros,
}

#[derive(Default)]
struct Inner {
    users: HashMap<Arc<str>, Arc<User>>,
    tokens: HashMap<TokenHash, Arc<User>>,
    functions: HashMap<FunctionId, Arc<Function>>,
    /// owner -> function name -> the latest function registered under that name.
    function_names: HashMap<Arc<str>, HashMap<String, FunctionId>>,
    endpoints: HashMap<EndpointId, Arc<Endpoint>>,
    /// owner -> endpoint name -> id.
    endpoint_names: HashMap<Arc<str>, HashMap<String, EndpointId>>,
    agent_tokens: HashMap<TokenHash, EndpointId>,
}

/// The registry; shared by every request handler and agent link.
#[derive(Default)]
pub(crate) struct Registry {
    inner: RwLock<Inner>,
}

impl Registry {
    /// Builds the registry from what the store holds.
    pub(crate) fn load(snapshot: RegistrySnapshot) -> Self {
        let registry = Self::default();
        for user in snapshot.users {
            registry.add_user(&user.name, user.is_admin);
        }
        for token in snapshot.tokens {
            match parse_hash(&token.hash) {
                Some(hash) => registry.add_token(hash, &token.user),
                None => tracing::warn!(user = token.user, "skipping a malformed token hash"),
            }
        }
        for function in snapshot.functions {
            registry.add_function(function);
        }
        for endpoint in snapshot.endpoints {
            match parse_hash(&endpoint.agent_token_hash) {
                Some(hash) => {
                    registry.add_endpoint(endpoint, hash);
                }
                None => tracing::warn!(
                    name = endpoint.name,
                    "skipping an endpoint with a malformed token hash"
                ),
            }
        }
        registry
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        // A panic elsewhere while holding the lock leaves the maps consistent (every
        // write is a single insert), so a poisoned lock is still usable.
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The user, creating it in memory if new; returns it.
    pub(crate) fn add_user(&self, name: &str, is_admin: bool) -> Arc<User> {
        let mut inner = self.write();
        if let Some(user) = inner.users.get(name) {
            return user.clone();
        }
        let user = Arc::new(User {
            name: Arc::from(name),
            is_admin,
        });
        inner.users.insert(user.name.clone(), user.clone());
        user
    }

    pub(crate) fn user(&self, name: &str) -> Option<Arc<User>> {
        self.read().users.get(name).cloned()
    }

    /// Lets a token authenticate as `user` (which must already be known).
    pub(crate) fn add_token(&self, hash: TokenHash, user: &str) {
        let mut inner = self.write();
        match inner.users.get(user).cloned() {
            Some(user) => {
                inner.tokens.insert(hash, user);
            }
            None => tracing::warn!(user, "a token for an unknown user is ignored"),
        }
    }

    /// Who a token authenticates, if anyone.
    pub(crate) fn user_by_token(&self, hash: &TokenHash) -> Option<Arc<User>> {
        self.read().tokens.get(hash).cloned()
    }

    /// Whether `user` holds this token.
    pub(crate) fn token_belongs_to(&self, hash: &TokenHash, user: &str) -> bool {
        self.read()
            .tokens
            .get(hash)
            .is_some_and(|holder| &*holder.name == user)
    }

    pub(crate) fn add_function(&self, row: FunctionRow) -> Arc<Function> {
        let mut inner = self.write();
        let owner = interned(&inner, &row.owner);
        let function = Arc::new(Function {
            owner: owner.clone(),
            description: row.description,
            created_at: row.created_at,
            spec: FunctionSpec {
                id: row.id,
                hash: row.hash,
                name: row.name,
                source: Bytes::from(row.source),
                container: row.container,
            },
        });
        inner
            .function_names
            .entry(owner)
            .or_default()
            .insert(function.spec.name.clone(), row.id);
        inner.functions.insert(row.id, function.clone());
        function
    }

    /// `owner`'s function named by `key`: its id, or else its name (the latest function
    /// registered under that name). Another user's function is not found.
    pub(crate) fn function(&self, owner: &str, key: &str) -> Option<Arc<Function>> {
        let inner = self.read();
        let id = match key.parse::<FunctionId>() {
            Ok(id) => id,
            Err(_) => *inner.function_names.get(owner)?.get(key)?,
        };
        inner
            .functions
            .get(&id)
            .filter(|f| &*f.owner == owner)
            .cloned()
    }

    /// Any function by id; for agents, whose tasks were checked when submitted.
    pub(crate) fn function_by_id(&self, id: FunctionId) -> Option<Arc<Function>> {
        self.read().functions.get(&id).cloned()
    }

    pub(crate) fn add_endpoint(&self, row: EndpointRow, agent_token: TokenHash) -> Arc<Endpoint> {
        let mut inner = self.write();
        let owner = interned(&inner, &row.owner);
        let endpoint = Arc::new(Endpoint {
            id: row.id,
            owner: owner.clone(),
            name: row.name,
            created_at: row.created_at,
        });
        inner
            .endpoint_names
            .entry(owner)
            .or_default()
            .insert(endpoint.name.clone(), row.id);
        inner.agent_tokens.insert(agent_token, row.id);
        inner.endpoints.insert(row.id, endpoint.clone());
        endpoint
    }

    /// `owner`'s endpoint named by `key`: its name, or else its id.
    pub(crate) fn endpoint(&self, owner: &str, key: &str) -> Option<Arc<Endpoint>> {
        let inner = self.read();
        let by_name = inner
            .endpoint_names
            .get(owner)
            .and_then(|names| names.get(key));
        let id = match by_name {
            Some(id) => *id,
            None => key.parse::<EndpointId>().ok()?,
        };
        inner
            .endpoints
            .get(&id)
            .filter(|ep| &*ep.owner == owner)
            .cloned()
    }

    /// Whether `owner` has an endpoint of this name.
    pub(crate) fn has_endpoint_named(&self, owner: &str, name: &str) -> bool {
        self.read()
            .endpoint_names
            .get(owner)
            .is_some_and(|names| names.contains_key(name))
    }

    /// `owner`'s endpoints, oldest first.
    pub(crate) fn endpoints_of(&self, owner: &str) -> Vec<Arc<Endpoint>> {
        let inner = self.read();
        let mut endpoints: Vec<_> = inner
            .endpoint_names
            .get(owner)
            .into_iter()
            .flat_map(|names| names.values())
            .filter_map(|id| inner.endpoints.get(id).cloned())
            .collect();
        endpoints.sort_by(|a, b| (a.created_at, &a.name).cmp(&(b.created_at, &b.name)));
        endpoints
    }

    /// The endpoint an agent token belongs to.
    pub(crate) fn endpoint_by_agent_token(&self, hash: &TokenHash) -> Option<Arc<Endpoint>> {
        let inner = self.read();
        let id = inner.agent_tokens.get(hash)?;
        inner.endpoints.get(id).cloned()
    }
}

/// The owner's name shared with its user record, so that each row does not hold a copy.
fn interned(inner: &Inner, owner: &str) -> Arc<str> {
    inner
        .users
        .get(owner)
        .map(|user| user.name.clone())
        .unwrap_or_else(|| Arc::from(owner))
}

/// Parses a hex SHA-256 as stored.
pub(crate) fn parse_hash(hex_hash: &str) -> Option<TokenHash> {
    let mut hash = [0u8; 32];
    hex::decode_to_slice(hex_hash, &mut hash).ok()?;
    Some(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn function(owner: &str, name: &str, at: Micros) -> FunctionRow {
        FunctionRow {
            id: FunctionId::new(),
            owner: owner.into(),
            name: name.into(),
            source: format!("def {name}(x): return x"),
            description: None,
            hash: "h".into(),
            container: None,
            created_at: at,
        }
    }

    #[test]
    fn functions_resolve_by_id_or_latest_name_for_their_owner_only() {
        let registry = Registry::default();
        registry.add_user("alice", false);
        let first = registry.add_function(function("alice", "double", 1));
        let second = registry.add_function(function("alice", "double", 2));
        let id = first.spec.id.to_string();
        assert_eq!(
            registry.function("alice", &id).unwrap().spec.id,
            first.spec.id
        );
        assert_eq!(
            registry.function("alice", "double").unwrap().spec.id,
            second.spec.id
        );
        assert!(registry.function("bob", &id).is_none());
        assert!(registry.function("bob", "double").is_none());
    }

    #[test]
    fn endpoints_resolve_by_name_or_id_for_their_owner_only() {
        let registry = Registry::default();
        let row = EndpointRow {
            id: EndpointId::new(),
            owner: "alice".into(),
            name: "laptop".into(),
            agent_token_hash: String::new(),
            created_at: 1,
        };
        let endpoint = registry.add_endpoint(row, [7; 32]);
        assert_eq!(
            registry.endpoint("alice", "laptop").unwrap().id,
            endpoint.id
        );
        assert_eq!(
            registry
                .endpoint("alice", &endpoint.id.to_string())
                .unwrap()
                .id,
            endpoint.id
        );
        assert!(registry.endpoint("bob", "laptop").is_none());
        assert!(registry.endpoint("bob", &endpoint.id.to_string()).is_none());
        assert_eq!(
            registry.endpoint_by_agent_token(&[7; 32]).unwrap().id,
            endpoint.id
        );
        assert!(registry.has_endpoint_named("alice", "laptop"));
    }
}
