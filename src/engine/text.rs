//! Token bytes → text deltas, cut on UTF-8 boundaries, with stop sequences held back until they
//! are ruled out (so a caller never sees part of a stop sequence).

/// Incremental detokenizer for one generation.
pub struct TextAssembler {
    stops: Vec<String>,
    /// Bytes of an incomplete UTF-8 character.
    partial: Vec<u8>,
    /// Text that might be the start of a stop sequence.
    held: String,
}

/// What one token added.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Delta {
    /// Text now safe to deliver (may be empty).
    pub text: String,
    /// A stop sequence completed; `text` ends right before it.
    pub stopped: bool,
}

impl TextAssembler {
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            partial: Vec::new(),
            held: String::new(),
        }
    }

    pub fn push(&mut self, bytes: &[u8]) -> Delta {
        self.partial.extend_from_slice(bytes);
        let complete = complete_utf8_prefix(&self.partial);
        let chunk = String::from_utf8_lossy(&self.partial[..complete]).into_owned();
        self.partial.drain(..complete);
        self.held.push_str(&chunk);
        self.release()
    }

    /// Everything still held at the end of generation (an incomplete character becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        if !self.partial.is_empty() {
            let rest = String::from_utf8_lossy(&self.partial).into_owned();
            self.partial.clear();
            self.held.push_str(&rest);
        }
        if let Some(at) = self.first_stop() {
            self.held.truncate(at);
        }
        std::mem::take(&mut self.held)
    }

    fn first_stop(&self) -> Option<usize> {
        self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min()
    }

    fn release(&mut self) -> Delta {
        if let Some(at) = self.first_stop() {
            self.held.truncate(at);
            return Delta { text: std::mem::take(&mut self.held), stopped: true };
        }
        // Keep the longest tail that is a proper prefix of some stop sequence.
        let keep = self.stops.iter().map(|s| longest_suffix_prefix(&self.held, s)).max().unwrap_or(0);
        let cut = self.held.len() - keep;
        let text = self.held[..cut].to_string();
        self.held.drain(..cut);
        Delta { text, stopped: false }
    }
}

/// Length of the longest suffix of `text` that is a proper prefix of `stop`, on char boundaries.
fn longest_suffix_prefix(text: &str, stop: &str) -> usize {
    let max = text.len().min(stop.len().saturating_sub(1));
    (1..=max)
        .rev()
        .find(|&n| {
            text.is_char_boundary(text.len() - n)
                && stop.as_bytes().starts_with(&text.as_bytes()[text.len() - n..])
        })
        .unwrap_or(0)
}

/// How many leading bytes form complete characters. Invalid bytes count as complete (they become
/// U+FFFD) so that garbage never stalls a stream; only a valid but unfinished tail waits.
fn complete_utf8_prefix(bytes: &[u8]) -> usize {
    match std::str::from_utf8(bytes) {
        Ok(_) => bytes.len(),
        Err(e) => match e.error_len() {
            // Unfinished character at the end: wait for more bytes.
            None => e.valid_up_to(),
            // Invalid sequence: let the lossy conversion replace it, then look further.
            Some(bad) => {
                let after = e.valid_up_to() + bad;
                after + complete_utf8_prefix(&bytes[after..])
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multibyte_character_split_across_tokens_is_held_back() {
        let mut a = TextAssembler::new(vec![]);
        let crab = "🦀".as_bytes();
        assert_eq!(a.push(b"hi ").text, "hi ");
        assert_eq!(a.push(&crab[..1]).text, "");
        assert_eq!(a.push(&crab[1..3]).text, "");
        assert_eq!(a.push(&crab[3..]).text, "🦀");
        assert_eq!(a.finish(), "");
    }

    #[test]
    fn invalid_bytes_do_not_stall_the_stream() {
        let mut a = TextAssembler::new(vec![]);
        assert_eq!(a.push(&[0xff, b'a']).text, "\u{fffd}a");
    }

    #[test]
    fn stop_sequence_across_tokens_is_never_shown() {
        let mut a = TextAssembler::new(vec!["\nUser:".into()]);
        assert_eq!(a.push(b"Hello"), Delta { text: "Hello".into(), stopped: false });
        assert_eq!(a.push(b"\nUs"), Delta { text: "".into(), stopped: false });
        assert_eq!(a.push(b"er: hi"), Delta { text: "".into(), stopped: true });
    }

    #[test]
    fn held_text_is_released_when_the_stop_is_ruled_out() {
        let mut a = TextAssembler::new(vec!["END".into()]);
        assert_eq!(a.push(b"the E").text, "the ");
        assert_eq!(a.push(b"ND").text, "");
        let mut b = TextAssembler::new(vec!["END".into()]);
        assert_eq!(b.push(b"the E").text, "the ");
        assert_eq!(b.push(b"gg").text, "Egg");
    }

    #[test]
    fn finish_flushes_held_text_and_incomplete_bytes() {
        let mut a = TextAssembler::new(vec!["STOP".into()]);
        assert_eq!(a.push(b"x ST").text, "x ");
        assert_eq!(a.finish(), "ST");
        let mut b = TextAssembler::new(vec![]);
        b.push(&"é".as_bytes()[..1]);
        assert_eq!(b.finish(), "\u{fffd}");
    }
}
