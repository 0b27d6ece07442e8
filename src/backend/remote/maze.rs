//! The Maze half of the remote backend: maze-server's own routes (`/maze/v1/*`), which carry
//! every constraint kind and tools (their format included), stream tool-call pieces apart from
//! text, and send back the server's exact result, its calls and validation included.

use serde_json::Value;

use super::sse::SseEvent;
use super::{preview, Inner, Run, Step};
use crate::engine::{GenerateOptions, Prompt};
use crate::error::{Error, ErrorKind, Result};
use crate::protocol::maze::{self as proto, ErrorBody, GenerateRequest, GenerateResponse, StreamPiece};

impl Inner {
    pub(super) fn maze_health(&self) -> Result<()> {
        self.get_json::<proto::Health>(proto::HEALTH_PATH).map(|_| ())
    }

    pub(super) fn maze_models(&self) -> Result<Vec<String>> {
        Ok(self.get_json::<proto::Models>(proto::MODELS_PATH)?.models.into_iter().map(|m| m.name).collect())
    }
}

/// The route and body of a generate request: the Maze protocol carries every option, and the
/// model when the caller named one (a maze-server may serve several).
pub(super) fn request_body(
    prompt: &Prompt,
    opts: &GenerateOptions,
    model: Option<&str>,
) -> (&'static str, Value) {
    let request =
        GenerateRequest { model: model.map(str::to_string), ..GenerateRequest::new(prompt, opts, true) };
    (proto::GENERATE_PATH, serde_json::to_value(request).expect("serializable"))
}

impl Run {
    pub(super) fn maze_event(&mut self, event: SseEvent, opts: &GenerateOptions) -> Result<Step> {
        let invalid = |e: serde_json::Error| {
            Error::new(
                ErrorKind::Backend,
                format!("invalid event from the server ({e}): {}", preview(event.data.as_bytes())),
            )
        };
        match event.event.as_deref() {
            None | Some("message") => {
                match serde_json::from_str::<StreamPiece>(&event.data).map_err(invalid)? {
                    StreamPiece::Text { text } => Ok(Step::Events(vec![self.piece(text)])),
                    call => Ok(Step::Events(vec![self.call_piece(call.into())])),
                }
            }
            Some("result") => {
                let response: GenerateResponse = serde_json::from_str(&event.data).map_err(invalid)?;
                Ok(Step::Done(Box::new(response.into_result(opts))))
            }
            Some("error") => {
                Err(serde_json::from_str::<ErrorBody>(&event.data).map_err(invalid)?.error.into())
            }
            Some(_) => Ok(Step::Continue),
        }
    }
}
