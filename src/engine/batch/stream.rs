//! Text on its way to a requester: held back while its end could be the start of a stop
//! string, cut before the first stop string found.

use super::TokenLogprob;

/// Text not sent yet, with the log-probabilities of the tokens whose text starts in it.
pub(super) struct Pending {
    stops: Vec<String>,
    text: String,
    /// Each token's log-probabilities, with the byte offset in `text` where its text starts.
    logprobs: Vec<(usize, TokenLogprob)>,
}

/// What may be sent now.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Release {
    pub text: String,
    pub logprobs: Vec<TokenLogprob>,
    /// The stop string that ended the text, when one did.
    pub stop: Option<String>,
}

impl Pending {
    /// Empty stop strings are left out: they would stop before any text.
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            text: String::new(),
            logprobs: Vec::new(),
        }
    }

    /// Adds a token's text and says what can be sent; after a `stop`, nothing more is.
    pub fn push(&mut self, text: &str, logprob: Option<TokenLogprob>) -> Release {
        let start = self.text.len();
        self.text.push_str(text);
        if let Some(logprob) = logprob {
            self.logprobs.push((start, logprob));
        }
        // Text sent earlier never ends with the start of a stop string, so a stop string
        // can only begin in what is pending.
        let found = self
            .stops
            .iter()
            .filter_map(|stop| self.text.find(stop.as_str()).map(|at| (at, stop)))
            .min_by_key(|(at, _)| *at);
        if let Some((at, stop)) = found {
            let stop = stop.clone();
            let mut release = self.release(at);
            release.stop = Some(stop);
            self.text.clear();
            self.logprobs.clear();
            return release;
        }
        let held = self.possible_stop_start();
        self.release(self.text.len() - held)
    }

    /// Everything pending (generation ended for another reason).
    pub fn flush(&mut self) -> Release {
        self.release(self.text.len())
    }

    /// The longest end of the text that is the start of a stop string.
    fn possible_stop_start(&self) -> usize {
        self.stops
            .iter()
            .flat_map(|stop| {
                (1..stop.len())
                    .rev()
                    .filter(|&n| stop.is_char_boundary(n) && self.text.ends_with(&stop[..n]))
                    .take(1)
            })
            .max()
            .unwrap_or(0)
    }

    /// Takes the first `n` bytes and the log-probabilities of the tokens starting in them
    /// (all of them when everything goes).
    fn release(&mut self, n: usize) -> Release {
        let all = n == self.text.len();
        let text: String = self.text.drain(..n).collect();
        let keep = if all {
            self.logprobs.len()
        } else {
            self.logprobs.iter().take_while(|(start, _)| *start < n).count()
        };
        let logprobs = self.logprobs.drain(..keep).map(|(_, l)| l).collect();
        for (start, _) in &mut self.logprobs {
            *start -= n;
        }
        Release {
            text,
            logprobs,
            stop: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(stops: &[&str]) -> Pending {
        Pending::new(&stops.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    fn texts(p: &mut Pending, pieces: &[&str]) -> (String, Option<String>) {
        let mut out = String::new();
        for piece in pieces {
            let release = p.push(piece, None);
            out.push_str(&release.text);
            if release.stop.is_some() {
                return (out, release.stop);
            }
        }
        out.push_str(&p.flush().text);
        (out, None)
    }

    #[test]
    fn a_stop_string_split_across_tokens_is_cut_with_what_follows() {
        let mut p = pending(&["STOP"]);
        assert_eq!(p.push("abc S", None).text, "abc ");
        assert_eq!(p.push("T", None).text, "");
        let release = p.push("OPxyz", None);
        assert_eq!((release.text.as_str(), release.stop.as_deref()), ("", Some("STOP")));
    }

    #[test]
    fn held_text_that_is_no_stop_string_is_sent_later() {
        let mut p = pending(&["STOP"]);
        assert_eq!(texts(&mut p, &["a S", "TO", "x", "y"]), ("a STOxy".to_owned(), None));
        let mut p = pending(&["STOP"]);
        assert_eq!(texts(&mut p, &["a ST"]), ("a ST".to_owned(), None));
    }

    #[test]
    fn the_earliest_stop_string_wins() {
        let mut p = pending(&["world", "lo w"]);
        assert_eq!(
            texts(&mut p, &["hello world"]),
            ("hel".to_owned(), Some("lo w".to_owned()))
        );
    }

    #[test]
    fn multibyte_stop_strings_hold_whole_characters() {
        let mut p = pending(&["你好"]);
        assert_eq!(p.push("a你", None).text, "a");
        assert_eq!(p.push("们", None).text, "你们");
    }

    #[test]
    fn logprobs_go_with_the_text_their_token_starts_in() {
        let lp = |t: &str| TokenLogprob {
            text: t.to_owned(),
            logprob: -1.0,
            top: Vec::new(),
        };
        let mut p = pending(&["XY"]);
        let first = p.push("aX", Some(lp("aX")));
        assert_eq!((first.text.as_str(), first.logprobs.len()), ("a", 1));
        let second = p.push("b", Some(lp("b")));
        assert_eq!((second.text.as_str(), second.logprobs), ("Xb", vec![lp("b")]));
        assert_eq!(p.flush(), Release::default());
    }
}
