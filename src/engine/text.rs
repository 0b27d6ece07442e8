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

    /// Pushes `chunks` in order; the text delivered and whether a stop sequence completed.
    fn feed(stops: &[&str], chunks: &[&[u8]]) -> (String, bool) {
        let mut a = TextAssembler::new(stops.iter().map(|s| s.to_string()).collect());
        let mut text = String::new();
        for chunk in chunks {
            let delta = a.push(chunk);
            text.push_str(&delta.text);
            if delta.stopped {
                return (text, true);
            }
        }
        (text + &a.finish(), false)
    }

    #[test]
    fn a_stop_sequence_split_over_many_tokens_is_never_shown() {
        let (text, stopped) = feed(&["</answer>"], &[b"42<", b"/ans", b"w", b"er", b">tail"]);
        assert_eq!((text.as_str(), stopped), ("42", true));
    }

    #[test]
    fn the_earliest_of_overlapping_stops_wins() {
        assert_eq!(feed(&["bcd", "abc"], &[b"xa", b"b", b"cd"]), ("x".into(), true));
        // A shorter stop completes while a longer one is still possible: the text before it goes.
        assert_eq!(feed(&["END!", "D"], &[b"EN", b"D"]), ("EN".into(), true));
        // One stop inside another.
        assert_eq!(feed(&["abcd", "bc"], &[b"zab", b"cx"]), ("za".into(), true));
    }

    #[test]
    fn only_the_part_that_may_start_a_stop_is_held_back() {
        let mut a = TextAssembler::new(vec!["aab".into()]);
        assert_eq!(a.push(b"aa").text, "");
        assert_eq!(a.push(b"a").text, "a", "the first `a` can no longer start the stop");
        assert_eq!(a.push(b"b"), Delta { text: "".into(), stopped: true });
    }

    #[test]
    fn text_after_the_stop_in_the_same_token_is_dropped() {
        let mut a = TextAssembler::new(vec!["\n\n".into()]);
        assert_eq!(a.push(b"one\n\ntwo"), Delta { text: "one".into(), stopped: true });
        assert_eq!(a.finish(), "");
    }

    #[test]
    fn a_stop_at_the_very_start_gives_no_text() {
        assert_eq!(feed(&["Hi"], &[b"Hi there"]), ("".into(), true));
    }

    #[test]
    fn a_stop_made_of_a_character_split_across_tokens() {
        let e_acute = "é".as_bytes();
        let mut a = TextAssembler::new(vec!["é".into()]);
        assert_eq!(
            a.push(&[b"x".as_slice(), &e_acute[..1]].concat()).text,
            "x",
            "the lead byte alone is held"
        );
        assert_eq!(a.push(&e_acute[1..]), Delta { text: "".into(), stopped: true });
    }

    #[test]
    fn a_character_sharing_a_stops_lead_byte_is_released_once_complete() {
        // "è" and "é" share their first byte: it alone cannot rule the stop in or out.
        let e_grave = "è".as_bytes();
        let mut a = TextAssembler::new(vec!["é!".into()]);
        assert_eq!(a.push(&e_grave[..1]).text, "");
        assert_eq!(a.push(&e_grave[1..]).text, "è");
        // A stop that starts with a whole character is held while it may still complete.
        assert_eq!(a.push("é".as_bytes()).text, "");
        assert_eq!(a.push(b"?").text, "é?");
    }

    #[test]
    fn empty_stop_strings_are_ignored() {
        assert_eq!(feed(&[""], &[b"abc"]), ("abc".into(), false));
    }

    #[test]
    fn any_split_of_the_bytes_gives_the_same_text() {
        let cases: [(&str, &[&str], &str, bool); 4] = [
            ("héllo 🦀 wörld", &[], "héllo 🦀 wörld", false),
            ("héllo 🦀 wörld", &["🦀"], "héllo ", true),
            ("a→b→STOP→c", &["→STOP", "STOP→c"], "a→b", true),
            ("日本語のテキスト", &["テキ", "のテ"], "日本語", true),
        ];
        for (input, stops, expected, stops_early) in cases {
            let bytes = input.as_bytes();
            for i in 0..=bytes.len() {
                for j in i..=bytes.len() {
                    let chunks = [&bytes[..i], &bytes[i..j], &bytes[j..]];
                    let (text, stopped) = feed(stops, &chunks);
                    assert_eq!(
                        (text.as_str(), stopped),
                        (expected, stops_early),
                        "{input:?} cut at {i}, {j}"
                    );
                }
            }
        }
    }
}
