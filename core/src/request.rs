//! What a durable handler receives.

use std::fmt;

use bytes::Bytes;
use http::{HeaderMap, Method, Uri, request::Parts};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::event::{EmitError, EventStage};
use crate::key::IdempotencyKey;
use crate::store::Scope;

/// A request that claimed its idempotency key, handed to the route's handler.
///
/// Events emitted here are staged: they are stored with the response in one commit and
/// published only after that commit succeeds. A handler that fails publishes nothing.
pub struct DurableRequest {
    parts: Parts,
    body: Bytes,
    key: IdempotencyKey,
    scope: Scope,
    stage: EventStage,
}

impl DurableRequest {
    pub(crate) fn new(
        parts: Parts,
        body: Bytes,
        key: IdempotencyKey,
        scope: Scope,
        stage: EventStage,
    ) -> Self {
        Self {
            parts,
            body,
            key,
            scope,
            stage,
        }
    }

    /// The request method.
    pub fn method(&self) -> &Method {
        &self.parts.method
    }

    /// The request URI.
    pub fn uri(&self) -> &Uri {
        &self.parts.uri
    }

    /// The request headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.parts.headers
    }

    /// The request's extensions, where adapters and middleware leave typed values.
    pub fn extensions(&self) -> &http::Extensions {
        &self.parts.extensions
    }

    /// The raw body bytes.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The idempotency key, unquoted.
    pub fn idempotency_key(&self) -> &IdempotencyKey {
        &self.key
    }

    /// The scope this request's record lives in.
    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// The body parsed as a JSON document.
    pub fn json(&self) -> Result<serde_json::Value, BodyError> {
        self.json_as()
    }

    /// The body deserialized as `T` from JSON.
    pub fn json_as<T: DeserializeOwned>(&self) -> Result<T, BodyError> {
        serde_json::from_slice(&self.body).map_err(|e| BodyError(e.to_string()))
    }

    /// Stages an event for every connected client.
    pub fn emit(&self, kind: &str, payload: impl Serialize) -> Result<(), EmitError> {
        self.stage.stage(None, kind, payload)
    }

    /// Stages an event for the members of `room`.
    pub fn emit_to(
        &self,
        room: &str,
        kind: &str,
        payload: impl Serialize,
    ) -> Result<(), EmitError> {
        self.stage.stage(Some(room), kind, payload)
    }

    /// A handle that stages events for this request, for code that does not hold the
    /// request itself.
    pub fn emitter(&self) -> Emitter {
        Emitter {
            stage: self.stage.clone(),
        }
    }
}

impl fmt::Debug for DurableRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DurableRequest")
            .field("method", &self.parts.method)
            .field("uri", &self.parts.uri)
            .field("key", &self.key)
            .field("scope", &self.scope)
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// Stages events for one durable request; cheap to clone.
#[derive(Clone)]
pub struct Emitter {
    stage: EventStage,
}

impl Emitter {
    /// Stages an event for every connected client.
    pub fn emit(&self, kind: &str, payload: impl Serialize) -> Result<(), EmitError> {
        self.stage.stage(None, kind, payload)
    }

    /// Stages an event for the members of `room`.
    pub fn emit_to(
        &self,
        room: &str,
        kind: &str,
        payload: impl Serialize,
    ) -> Result<(), EmitError> {
        self.stage.stage(Some(room), kind, payload)
    }
}

impl fmt::Debug for Emitter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Emitter")
    }
}

/// The body is not the JSON the handler asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BodyError(String);

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "request body is not valid JSON: {}", self.0)
    }
}

impl std::error::Error for BodyError {}
