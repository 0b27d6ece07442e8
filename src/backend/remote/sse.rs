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

    fn events(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut p = SseParser::new(1 << 10);
        chunks.iter().flat_map(|c| p.push(c).unwrap()).collect()
    }

    fn data(text: &str) -> SseEvent {
        SseEvent { event: None, data: text.into() }
    }

    #[test]
    fn blocks_without_data_are_no_events_and_unknown_fields_are_ignored() {
        assert_eq!(events(&[b": ping\n\n", b"event: result\n\n", b"\n\n"]), []);
        assert_eq!(events(&[b"id: 3\nretry: 10\nfoo: bar\ndata: d\n\n"]), [data("d")]);
    }

    #[test]
    fn field_values_lose_one_leading_space_only() {
        let got = events(&[b"data\n\ndata:tight\n\ndata:  two\n\ndata: a: b\n\n"]);
        assert_eq!(got, [data(""), data("tight"), data(" two"), data("a: b")]);
        let named = events(&[b"event:result\ndata: {}\n\n"]);
        assert_eq!(named, [SseEvent { event: Some("result".into()), data: "{}".into() }]);
    }

    #[test]
    fn characters_and_blank_lines_split_across_chunks_reassemble() {
        let text = "data: h\u{e9}llo \u{1f980}\n\n".as_bytes();
        for cut in 1..text.len() {
            assert_eq!(events(&[&text[..cut], &text[cut..]]), [data("h\u{e9}llo \u{1f980}")], "cut at {cut}");
        }
        assert_eq!(events(&[b"data: a\r\n\r", b"\n"]), [data("a")]);
        assert_eq!(events(&[b"data: a\r\rdata: b\r\r"]), [data("a"), data("b")]);
    }

    #[test]
    fn the_size_limit_applies_to_an_unfinished_event_only() {
        let mut p = SseParser::new(32);
        let event = b"data: twenty bytes long\n\n";
        for _ in 0..10 {
            assert_eq!(p.push(event).unwrap().len(), 1, "complete events of any total size pass");
        }
        assert!(p.push(b"data: 0123456789").unwrap().is_empty());
        assert_eq!(p.pending(), 16);
        let err = p.push(b"0123456789012345678").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Backend);
        assert!(err.message().contains("35 bytes without ending an event"), "{err}");
    }
}
