//! Server-sent events, parsed incrementally from the bytes of a response body.

use crate::error::{Error, ErrorKind, Result};

/// One event: its name (`event:` field, if any) and its data (`data:` lines joined by \n).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

/// Splits a byte stream into events. Refuses a stream that grows past `max_event_bytes`
/// without ending an event: that is not an event stream.
pub struct SseParser {
    buf: Vec<u8>,
    max_event_bytes: usize,
}

impl SseParser {
    pub fn new(max_event_bytes: usize) -> Self {
        Self { buf: Vec::new(), max_event_bytes }
    }

    /// Adds bytes and returns the events they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>> {
        self.buf.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some((end, sep)) = find_blank_line(&self.buf) {
            let block: Vec<u8> = self.buf.drain(..end + sep).collect();
            let text = std::str::from_utf8(&block[..end])
                .map_err(|e| Error::new(ErrorKind::Backend, format!("the event stream is not UTF-8: {e}")))?;
            if let Some(event) = parse_block(text) {
                events.push(event);
            }
        }
        if self.buf.len() > self.max_event_bytes {
            return Err(Error::new(
                ErrorKind::Backend,
                format!(
                    "the server sent {} bytes without ending an event: not an event stream",
                    self.buf.len()
                ),
            ));
        }
        Ok(events)
    }

    /// Bytes received that no complete event holds yet.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// Position and length of the first blank line (\n\n, \r\n\r\n or \r\r).
fn find_blank_line(buf: &[u8]) -> Option<(usize, usize)> {
    for i in 0..buf.len() {
        for sep in [&b"\r\n\r\n"[..], b"\n\n", b"\r\r"] {
            if buf[i..].starts_with(sep) {
                return Some((i, sep.len()));
            }
        }
    }
    None
}

fn parse_block(block: &str) -> Option<SseEvent> {
    let mut event = None;
    let mut data: Option<String> = None;
    for line in block.lines() {
        if line.starts_with(':') {
            continue; // comment, e.g. keep-alive
        }
        let (field, value) =
            line.split_once(':').map(|(f, v)| (f, v.strip_prefix(' ').unwrap_or(v))).unwrap_or((line, ""));
        match field {
            "event" => event = Some(value.to_string()),
            "data" => match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(value.to_string()),
            },
            _ => {}
        }
    }
    data.map(|data| SseEvent { event, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks_and_line_endings() {
        let mut p = SseParser::new(1 << 20);
        assert!(p.push(b"data: {\"te").unwrap().is_empty());
        let events = p
            .push(b"xt\": 1}\n\n: keep-alive\n\nevent: result\r\ndata: a\r\ndata: b\r\n\r\ndata: [DONE]\n\n")
            .unwrap();
        assert_eq!(
            events,
            vec![
                SseEvent { event: None, data: "{\"text\": 1}".into() },
                SseEvent { event: Some("result".into()), data: "a\nb".into() },
                SseEvent { event: None, data: "[DONE]".into() },
            ]
        );
        assert_eq!(p.pending(), 0);
    }

    #[test]
    fn garbage_is_refused() {
        let mut p = SseParser::new(64);
        let err = p.push(&[b'x'; 100]).unwrap_err();
        assert!(err.message().contains("not an event stream"), "{err}");
        let mut p = SseParser::new(64);
        assert!(p.push(b"data: \xff\xfe\n\n").is_err());
    }
}
