//! Counters for `GET /metrics`, in the Prometheus text format.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::result::GenerationResult;

#[derive(Default)]
pub struct Metrics {
    responses: Mutex<BTreeMap<(String, u16), u64>>,
    generations_running: AtomicU64,
    generations_total: AtomicU64,
    prompt_tokens: AtomicU64,
    generated_tokens: AtomicU64,
}

impl Metrics {
    pub(crate) fn count_response(&self, route: &str, status: u16) {
        *self
            .responses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((route.to_string(), status))
            .or_default() += 1;
    }

    pub(crate) fn generation_started(&self) {
        self.generations_running.fetch_add(1, Ordering::Relaxed);
        self.generations_total.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn generation_ended(&self) {
        self.generations_running.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn count_tokens(&self, r: &GenerationResult) {
        self.prompt_tokens.fetch_add(r.stats.prompt_tokens as u64, Ordering::Relaxed);
        self.generated_tokens.fetch_add(r.stats.generated_tokens as u64, Ordering::Relaxed);
    }

    pub fn render(&self, free_slots: usize, max_concurrent: usize) -> String {
        let mut out = String::new();
        out.push_str("# HELP maze_http_responses_total HTTP responses by route and status.\n# TYPE maze_http_responses_total counter\n");
        for ((route, status), n) in self.responses.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            out.push_str(&format!(
                "maze_http_responses_total{{route=\"{route}\",status=\"{status}\"}} {n}\n"
            ));
        }
        let gauge = |out: &mut String, name: &str, kind: &str, help: &str, value: u64| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"));
        };
        gauge(
            &mut out,
            "maze_generations_running",
            "gauge",
            "Generations in progress.",
            self.generations_running.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "maze_generations_total",
            "counter",
            "Generations started.",
            self.generations_total.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "maze_prompt_tokens_total",
            "counter",
            "Prompt tokens of finished generations.",
            self.prompt_tokens.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "maze_generated_tokens_total",
            "counter",
            "Tokens generated.",
            self.generated_tokens.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "maze_concurrency_limit",
            "gauge",
            "Generations allowed at once.",
            max_concurrent as u64,
        );
        gauge(&mut out, "maze_concurrency_free", "gauge", "Free generation slots.", free_slots as u64);
        out
    }
}

/// Per model: whether it is loaded, and how often it has been.
pub(crate) fn render_models(out: &mut String, models: &[(String, bool, u64)]) {
    out.push_str("# HELP maze_model_loaded Whether the model is loaded (1) or not (0).\n# TYPE maze_model_loaded gauge\n");
    for (name, loaded, _) in models {
        out.push_str(&format!("maze_model_loaded{{model=\"{}\"}} {}\n", label(name), u8::from(*loaded)));
    }
    out.push_str(
        "# HELP maze_model_loads_total Times the model was loaded.\n# TYPE maze_model_loads_total counter\n",
    );
    for (name, _, loads) in models {
        out.push_str(&format!("maze_model_loads_total{{model=\"{}\"}} {loads}\n", label(name)));
    }
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
