//! `/tokenize` and `/detokenize`, shaped like llama-server's, with `model` to pick the model.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};

use super::http::{parse_body, ApiError};
use super::AppState;
use crate::error::ErrorKind;

pub const TOKENIZE_PATH: &str = "/tokenize";
pub const DETOKENIZE_PATH: &str = "/detokenize";

/// `POST /tokenize`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenizeRequest {
    #[serde(default)]
    model: Option<String>,
    content: String,
    /// Add the model's BOS/EOS as a prompt gets them (llama-server's default: no).
    #[serde(default)]
    add_special: bool,
    /// Read special-token text (`<|im_start|>`) as those tokens (llama-server's default: yes).
    #[serde(default = "yes")]
    parse_special: bool,
    /// Answer `[{"id", "piece"}]` instead of ids; a piece is a string when its bytes are UTF-8,
    /// else the list of its bytes.
    #[serde(default)]
    with_pieces: bool,
}

fn yes() -> bool {
    true
}

/// `POST /detokenize`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DetokenizeRequest {
    #[serde(default)]
    model: Option<String>,
    tokens: Vec<u32>,
}

/// Runs tokenizer work (time grows with the input) off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::Internal,
            format!("tokenizer task failed: {e}"),
        )
    })?
}

pub(crate) async fn tokenize(
    State(state): State<Arc<AppState>>,
    req: Request,
) -> Result<axum::Json<Value>, ApiError> {
    let request: TokenizeRequest = parse_body(&state, req).await?;
    let engine = state.models.lease(request.model.as_deref()).await?;
    blocking(move || {
        let ids = engine.tokenize(&request.content, request.add_special, request.parse_special)?;
        if !request.with_pieces {
            return Ok(axum::Json(json!({ "tokens": ids })));
        }
        let tokenizer = engine.local().map(|local| local.tokenizer());
        let mut tokens = Vec::with_capacity(ids.len());
        for id in ids {
            // The token's own bytes: a one-token decode would drop a leading space.
            let bytes = match tokenizer.and_then(|t| t.piece(id)) {
                Some(piece) => piece.to_vec(),
                None => engine.detokenize(&[id])?,
            };
            let piece = match String::from_utf8(bytes) {
                Ok(text) => Value::from(text),
                Err(e) => Value::from(e.into_bytes()),
            };
            tokens.push(json!({ "id": id, "piece": piece }));
        }
        Ok(axum::Json(json!({ "tokens": tokens })))
    })
    .await
}

pub(crate) async fn detokenize(
    State(state): State<Arc<AppState>>,
    req: Request,
) -> Result<axum::Json<Value>, ApiError> {
    let request: DetokenizeRequest = parse_body(&state, req).await?;
    let engine = state.models.lease(request.model.as_deref()).await?;
    blocking(move || {
        let bytes = engine.detokenize(&request.tokens)?;
        // Tokens may end inside a character: that part shows as U+FFFD, as in llama-server.
        Ok(axum::Json(json!({ "content": String::from_utf8_lossy(&bytes) })))
    })
    .await
}
