//! The multiline rule of host files: a line matching `start` begins a record; other lines
//! are appended to the current one, up to `max_lines` lines and `max_bytes` bytes (then the
//! record is cut and flagged truncated at the byte limit), and a record with no new line
//! for `timeout` is shipped as it is.

use std::time::{Duration, Instant};

use regex::Regex;

use crate::format::Line;

pub struct Multiline {
    start: Regex,
    max_lines: usize,
    max_bytes: usize,
    timeout: Duration,
    cur: Option<(Line, u64, Instant)>,
}

impl Multiline {
    pub fn new(start: Regex, max_lines: usize, max_bytes: usize, timeout: Duration) -> Self {
        Multiline {
            start,
            max_lines: max_lines.max(1),
            max_bytes: max_bytes.max(1),
            timeout,
            cur: None,
        }
    }

    /// Offset where the record being assembled starts.
    pub fn pending_start(&self) -> Option<u64> {
        self.cur.as_ref().map(|c| c.1)
    }

    pub fn reset(&mut self) {
        self.cur = None;
    }

    /// Feeds one line starting at `start`; returns the records it completes (0, 1 or 2).
    pub fn push(&mut self, line: Line, start: u64, now: Instant, out: &mut Vec<Line>) {
        let begins = self.start.is_match(&line.body);
        match &mut self.cur {
            Some((cur, _, at)) if !begins => {
                let room = self.max_bytes.saturating_sub(cur.body.len() + 1);
                if line.body.len() > room {
                    cur.truncated = true;
                }
                if room > 0 {
                    cur.body.push('\n');
                    let mut cut = line.body.len().min(room);
                    while !line.body.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    cur.body.push_str(&line.body[..cut]);
                }
                cur.truncated |= line.truncated;
                cur.parts += 1;
                *at = now;
                if cur.parts as usize >= self.max_lines {
                    out.extend(self.cur.take().map(|c| c.0));
                }
            }
            _ => {
                out.extend(self.cur.take().map(|c| c.0));
                if self.max_lines == 1 {
                    out.push(line);
                } else {
                    self.cur = Some((line, start, now));
                }
            }
        }
    }

    /// Ships a record that waited past the timeout (or, with `force`, any).
    pub fn flush(&mut self, now: Instant, force: bool, out: &mut Vec<Line>) {
        if let Some((_, _, at)) = &self.cur {
            if force || now.duration_since(*at) >= self.timeout {
                out.extend(self.cur.take().map(|c| c.0));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(s: &str) -> Line {
        Line {
            time: None,
            stream: None,
            body: s.into(),
            truncated: false,
            parts: 1,
            unparsed: false,
        }
    }

    #[test]
    fn joins_continuation_lines() {
        let t = Instant::now();
        let mut m = Multiline::new(
            Regex::new(r"^\d{4}-").unwrap(),
            3,
            40,
            Duration::from_secs(1),
        );
        let mut out = Vec::new();
        m.push(l("2024-01-01 boom"), 0, t, &mut out);
        m.push(l("  at a"), 16, t, &mut out);
        assert!(out.is_empty());
        assert_eq!(m.pending_start(), Some(0));
        m.push(l("2024-01-01 next"), 30, t, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].body, "2024-01-01 boom\n  at a");
        assert_eq!(out[0].parts, 2);
        // max_lines
        m.push(l("  at b"), 40, t, &mut out);
        m.push(l("  at c"), 50, t, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].body, "2024-01-01 next\n  at b\n  at c");
        // timeout
        m.push(l("2024-01-02 x"), 60, t, &mut out);
        m.flush(t, false, &mut out);
        assert_eq!(out.len(), 2);
        m.flush(t + Duration::from_secs(2), false, &mut out);
        assert_eq!(out.len(), 3);
        // max_bytes
        m.push(l("2024-01-03 y"), 70, t, &mut out);
        m.push(l(&"z".repeat(100)), 80, t, &mut out);
        m.flush(t, true, &mut out);
        assert!(out[3].truncated);
        assert_eq!(out[3].body.len(), 40);
    }
}
