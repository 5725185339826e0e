//! The console's request extractors: an address's parts and a form's fields, read as the API reads
//! them (the same body limits, the same stable codes), and refused with the console's own page
//! rather than the web framework's plain-text wording.

use super::layout;
use crate::http::body;
use crate::http::error::ApiError;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::response::Response;
use orchestrator_proto::ErrorCode;
use serde::de::DeserializeOwned;
use std::collections::HashMap;

/// The address's parameters, like axum's `Path`; one that cannot be read (not UTF-8, not a
/// number where one is expected) is 400 `malformed_request`.
pub struct At<T>(pub T);

impl<T, S> FromRequestParts<S> for At<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(At(value)),
            Err(e) => Err(layout::unreadable(
                "Not an address the console knows",
                &ApiError::wire(
                    ErrorCode::MalformedRequest,
                    format!("cannot read {}: {}", parts.uri.path(), e.body_text()),
                ),
            )),
        }
    }
}

/// A form's fields (`application/x-www-form-urlencoded`, at most the API's body limit, within its
/// time limit): 415 for another content type, 413 for a larger body.
pub struct Fields(pub HashMap<String, String>);

impl<S: Send + Sync> FromRequest<S> for Fields {
    type Rejection = Response;

    async fn from_request(req: Request, _: &S) -> Result<Self, Response> {
        let (parts, body) = req.into_parts();
        body::form(&parts.headers, body)
            .await
            .map(Fields)
            .map_err(|e| layout::unreadable("The form could not be read", &e))
    }
}
