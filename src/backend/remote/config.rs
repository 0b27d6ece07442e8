//! How to reach a server: its address, protocol, credentials, retries and timeouts.

use std::time::Duration;

use crate::error::{Error, Result};

use crate::c_enum::rust_side as c_enum;
include!("../../tables/protocol.rs");

impl Protocol {
    /// The protocol named `name` (any case); empty means OpenAI-compatible.
    pub fn parse(name: &str) -> Result<Self> {
        let name = name.to_ascii_lowercase();
        if name.is_empty() {
            return Ok(Self::OpenAi);
        }
        Self::from_name(&name).ok_or_else(|| {
            Error::invalid_argument(format!("unknown protocol '{name}': use 'openai' or 'maze'"))
        })
    }
}

/// How to reach the server.
#[derive(Debug, Clone)]
pub struct RemoteConfig {
    /// Base URL, e.g. `http://127.0.0.1:8000` (a trailing `/v1` is accepted).
    pub endpoint: String,
    pub api_key: Option<String>,
    /// Model name sent to OpenAI-compatible servers; `None` = the first the server lists.
    pub model: Option<String>,
    pub protocol: Protocol,
    /// Limit for requests that bring no timeout of their own; `None` = none.
    pub request_timeout: Option<Duration>,
    pub connect_timeout: Duration,
    /// Retries after a connect error, 429 or 5xx; 0 = none.
    pub max_retries: u32,
    /// First backoff; each retry doubles it (with jitter), up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl RemoteConfig {
    pub fn new(endpoint: impl Into<String>, protocol: Protocol) -> Self {
        Self {
            endpoint: endpoint.into(),
            api_key: None,
            model: None,
            protocol,
            request_timeout: None,
            connect_timeout: Duration::from_secs(10),
            max_retries: 3,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
        }
    }

    /// From `MAZE_ENDPOINT` (required), `MAZE_API_KEY`, `MAZE_MODEL`, `MAZE_PROTOCOL`
    /// (openai|maze), `MAZE_RETRIES` and `MAZE_TIMEOUT_MS`; `None` without `MAZE_ENDPOINT`.
    pub fn from_env() -> Option<Result<Self>> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// Like [`RemoteConfig::from_env`], reading variables through `var`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Option<Result<Self>> {
        let var = |name: &str| var(name).filter(|v| !v.is_empty());
        let endpoint = var("MAZE_ENDPOINT")?;
        let build = || -> Result<Self> {
            let protocol = Protocol::parse(&var("MAZE_PROTOCOL").unwrap_or_default())?;
            let mut config = Self::new(endpoint, protocol);
            config.api_key = var("MAZE_API_KEY");
            config.model = var("MAZE_MODEL");
            let number = |name: &str| -> Result<Option<u64>> {
                var(name)
                    .map(|v| {
                        v.parse::<u64>()
                            .map_err(|_| Error::invalid_argument(format!("{name}='{v}' is not a number")))
                    })
                    .transpose()
            };
            if let Some(n) = number("MAZE_RETRIES")? {
                config.max_retries = n.min(100) as u32;
            }
            config.request_timeout =
                number("MAZE_TIMEOUT_MS")?.filter(|&ms| ms > 0).map(Duration::from_millis);
            Ok(config)
        };
        Some(build())
    }

    pub(super) fn base_url(&self) -> Result<String> {
        let trimmed = self.endpoint.trim().trim_end_matches('/');
        let base = trimmed.strip_suffix("/v1").unwrap_or(trimmed);
        let url = reqwest::Url::parse(base).map_err(|e| {
            Error::invalid_argument(format!("endpoint '{}' is not a URL: {e}", self.endpoint))
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Error::invalid_argument(format!(
                "endpoint '{}' must be http:// or https://",
                self.endpoint
            )));
        }
        Ok(base.to_string())
    }
}
