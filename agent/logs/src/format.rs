//! Container log formats: CRI (containerd, CRI-O) with `P`/`F` partial lines, and docker
//! json-file with its 16 KiB splits; plus raw lines for host files.
//!
//! A [`Decoder`] takes physical lines (without the `\n`) with the file offset where each
//! starts, and returns logical lines. Partial lines are kept per stream (stdout and stderr
//! interleave) up to `max_bytes`; what is beyond is cut and the line flagged truncated,
//! never dropped. [`Decoder::pending_start`] says where the oldest unfinished line starts,
//! so a checkpoint never passes a line that was not shipped whole.

use std::time::SystemTime;

use serde::Deserialize;

use crate::time::parse_rfc3339;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
    fn index(self) -> usize {
        match self {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        }
    }
}

/// The on-disk format of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// `<RFC3339Nano> <stdout|stderr> <P|F> <msg>`.
    Cri,
    /// `{"log":"...","stream":"stdout","time":"..."}` per line.
    Docker,
    /// One line is one record (host files; a multiline rule may join them).
    Raw,
    /// CRI or docker, decided by the first line.
    Auto,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("CRI line: {0}")]
    Cri(&'static str),
    #[error("docker json line: {0}")]
    Docker(String),
}

/// One CRI line, borrowed from the input.
#[derive(Debug, PartialEq, Eq)]
pub struct CriLine<'a> {
    pub time: SystemTime,
    pub stream: Stream,
    pub partial: bool,
    pub msg: &'a [u8],
}

/// Parses `<time> <stream> <P|F>[:tags] <msg>`. (The tag field may carry more than P/F in
/// future CRI versions, separated by `:`; only the first is read.)
pub fn parse_cri(line: &[u8]) -> Result<CriLine<'_>, ParseError> {
    let sp1 = memchr::memchr(b' ', line).ok_or(ParseError::Cri("no space after the time"))?;
    let time = parse_rfc3339(&line[..sp1]).ok_or(ParseError::Cri("bad time"))?;
    let rest = &line[sp1 + 1..];
    let sp2 = memchr::memchr(b' ', rest).ok_or(ParseError::Cri("no space after the stream"))?;
    let stream = match &rest[..sp2] {
        b"stdout" => Stream::Stdout,
        b"stderr" => Stream::Stderr,
        _ => return Err(ParseError::Cri("stream is neither stdout nor stderr")),
    };
    let rest = &rest[sp2 + 1..];
    let (tags, msg) = match memchr::memchr(b' ', rest) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        // An empty F line may end right after the tag.
        None => (rest, &rest[rest.len()..]),
    };
    let tag = tags.split(|&b| b == b':').next().unwrap_or_default();
    let partial = match tag {
        b"P" => true,
        b"F" => false,
        _ => return Err(ParseError::Cri("tag is neither P nor F")),
    };
    Ok(CriLine {
        time,
        stream,
        partial,
        msg,
    })
}

#[derive(Deserialize)]
struct DockerJson<'a> {
    #[serde(borrow)]
    log: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    stream: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    time: Option<std::borrow::Cow<'a, str>>,
}

/// One docker json-file line.
#[derive(Debug, PartialEq, Eq)]
pub struct DockerLine {
    pub time: Option<SystemTime>,
    pub stream: Stream,
    /// The `log` field without its trailing `\n`.
    pub msg: String,
    /// No trailing `\n`: docker split a longer line here (every 16 KiB).
    pub partial: bool,
}

pub fn parse_docker(line: &[u8]) -> Result<DockerLine, ParseError> {
    let j: DockerJson<'_> =
        serde_json::from_slice(line).map_err(|e| ParseError::Docker(e.to_string()))?;
    let stream = match j.stream.as_deref() {
        Some("stderr") => Stream::Stderr,
        _ => Stream::Stdout,
    };
    let time = j.time.as_deref().and_then(|t| parse_rfc3339(t.as_bytes()));
    let mut msg = j.log.into_owned();
    let partial = !msg.ends_with('\n');
    if !partial {
        msg.pop();
        if msg.ends_with('\r') {
            msg.pop();
        }
    }
    Ok(DockerLine {
        time,
        stream,
        msg,
        partial,
    })
}

/// A logical line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    pub time: Option<SystemTime>,
    pub stream: Option<Stream>,
    pub body: String,
    /// Cut at the line limit.
    pub truncated: bool,
    /// Physical lines joined into this one (1 when not split).
    pub parts: u32,
    /// The physical line could not be parsed in the file's format; `body` is the raw line.
    pub unparsed: bool,
}

struct Pending {
    start: u64,
    time: Option<SystemTime>,
    body: Vec<u8>,
    truncated: bool,
    parts: u32,
}

/// Reassembles partial lines. See the module documentation.
pub struct Decoder {
    format: Format,
    max_bytes: usize,
    pending: [Option<Pending>; 2],
}

fn append_capped(buf: &mut Vec<u8>, more: &[u8], max: usize, truncated: &mut bool) {
    let room = max.saturating_sub(buf.len());
    if more.len() > room {
        *truncated = true;
    }
    buf.extend_from_slice(&more[..more.len().min(room)]);
}

/// Lossy UTF-8 without copying when the bytes are valid. A cut in the middle of a
/// character (at the line limit) loses that character only.
fn to_string(b: Vec<u8>) -> String {
    match String::from_utf8(b) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

impl Decoder {
    pub fn new(format: Format, max_bytes: usize) -> Self {
        Decoder {
            format,
            max_bytes: max_bytes.max(1),
            pending: [None, None],
        }
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// Forgets partial lines (after a rewind or a truncation of the file).
    pub fn reset(&mut self) {
        self.pending = [None, None];
    }

    /// The file offset where the oldest unfinished logical line starts.
    pub fn pending_start(&self) -> Option<u64> {
        self.pending.iter().flatten().map(|p| p.start).min()
    }

    /// Partial lines kept (0..=2).
    pub fn pending_count(&self) -> usize {
        self.pending.iter().flatten().count()
    }

    /// Feeds one physical line that starts at file offset `start`. `cut` says the tailer
    /// already cut this physical line at its limit.
    pub fn push(&mut self, raw: &[u8], start: u64, cut: bool) -> Option<Line> {
        if self.format == Format::Auto {
            self.format = if raw.first() == Some(&b'{') {
                Format::Docker
            } else {
                Format::Cri
            };
        }
        match self.format {
            Format::Cri => match parse_cri(raw) {
                Ok(l) => self.join(l.stream, Some(l.time), l.msg, l.partial, start, cut),
                Err(_) => Some(self.unparsed(raw, cut)),
            },
            Format::Docker => match parse_docker(raw) {
                Ok(l) => {
                    let msg = l.msg.into_bytes();
                    self.join(l.stream, l.time, &msg, l.partial, start, cut)
                }
                Err(_) => Some(self.unparsed(raw, cut)),
            },
            Format::Raw | Format::Auto => {
                let mut t = cut;
                let mut body = Vec::with_capacity(raw.len().min(self.max_bytes));
                let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
                append_capped(&mut body, raw, self.max_bytes, &mut t);
                Some(Line {
                    time: None,
                    stream: None,
                    body: to_string(body),
                    truncated: t,
                    parts: 1,
                    unparsed: false,
                })
            }
        }
    }

    fn unparsed(&self, raw: &[u8], cut: bool) -> Line {
        let mut t = cut;
        let mut body = Vec::new();
        append_capped(&mut body, raw, self.max_bytes, &mut t);
        Line {
            time: None,
            stream: None,
            body: to_string(body),
            truncated: t,
            parts: 1,
            unparsed: true,
        }
    }

    fn join(
        &mut self,
        stream: Stream,
        time: Option<SystemTime>,
        msg: &[u8],
        partial: bool,
        start: u64,
        cut: bool,
    ) -> Option<Line> {
        let slot = &mut self.pending[stream.index()];
        let p = slot.get_or_insert_with(|| Pending {
            start,
            time,
            body: Vec::new(),
            truncated: false,
            parts: 0,
        });
        p.parts += 1;
        p.truncated |= cut;
        append_capped(&mut p.body, msg, self.max_bytes, &mut p.truncated);
        if partial {
            return None;
        }
        let p = slot.take()?;
        Some(Line {
            time: p.time,
            stream: Some(stream),
            body: to_string(p.body),
            truncated: p.truncated,
            parts: p.parts,
            unparsed: false,
        })
    }

    /// Ends the unfinished lines (the file is gone or idle past the flush timeout): they
    /// are shipped as they are.
    pub fn flush(&mut self) -> Vec<Line> {
        let mut out = Vec::new();
        for (i, slot) in self.pending.iter_mut().enumerate() {
            if let Some(p) = slot.take() {
                out.push(Line {
                    time: p.time,
                    stream: Some(if i == 0 {
                        Stream::Stdout
                    } else {
                        Stream::Stderr
                    }),
                    body: to_string(p.body),
                    truncated: p.truncated,
                    parts: p.parts,
                    unparsed: false,
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn cri_full_and_partial() {
        let l = parse_cri(b"2024-05-01T10:00:00.000000001Z stdout F hello world").unwrap();
        assert_eq!(l.stream, Stream::Stdout);
        assert!(!l.partial);
        assert_eq!(l.msg, b"hello world");
        assert_eq!(l.time, UNIX_EPOCH + Duration::new(1_714_557_600, 1));
        let l = parse_cri(b"2024-05-01T10:00:00Z stderr P part").unwrap();
        assert!(l.partial);
        assert_eq!(l.stream, Stream::Stderr);
        let l = parse_cri(b"2024-05-01T10:00:00Z stdout F").unwrap();
        assert_eq!(l.msg, b"");
        let l = parse_cri(b"2024-05-01T10:00:00Z stdout F:x y").unwrap();
        assert_eq!(l.msg, b"y");
        assert!(parse_cri(b"2024-05-01T10:00:00Z stdin F x").is_err());
        assert!(parse_cri(b"2024-05-01T10:00:00Z stdout Q x").is_err());
        assert!(parse_cri(b"garbage").is_err());
    }

    #[test]
    fn cri_reassembles_per_stream() {
        let mut d = Decoder::new(Format::Cri, 1000);
        assert_eq!(d.push(b"2024-05-01T10:00:00Z stdout P ab", 0, false), None);
        assert_eq!(d.pending_start(), Some(0));
        let e = d
            .push(b"2024-05-01T10:00:01Z stderr F err", 40, false)
            .unwrap();
        assert_eq!(e.body, "err");
        assert_eq!(d.pending_start(), Some(0));
        assert_eq!(d.push(b"2024-05-01T10:00:02Z stdout P cd", 80, false), None);
        let l = d
            .push(b"2024-05-01T10:00:03Z stdout F ef", 120, false)
            .unwrap();
        assert_eq!(l.body, "abcdef");
        assert_eq!(l.parts, 3);
        assert_eq!(l.stream, Some(Stream::Stdout));
        assert_eq!(l.time, parse_rfc3339(b"2024-05-01T10:00:00Z"));
        assert_eq!(d.pending_start(), None);
    }

    #[test]
    fn over_the_limit_is_truncated_and_flagged() {
        let mut d = Decoder::new(Format::Cri, 5);
        assert_eq!(d.push(b"2024-05-01T10:00:00Z stdout P abc", 0, false), None);
        let l = d
            .push(b"2024-05-01T10:00:00Z stdout F defgh", 0, false)
            .unwrap();
        assert_eq!(l.body, "abcde");
        assert!(l.truncated);
        let l = d
            .push(b"2024-05-01T10:00:00Z stdout F abc", 0, false)
            .unwrap();
        assert!(!l.truncated);
    }

    #[test]
    fn docker_joins_16k_splits() {
        let big = "x".repeat(16 * 1024);
        let mut d = Decoder::new(Format::Auto, 1 << 20);
        let p1 = format!(r#"{{"log":"{big}","stream":"stdout","time":"2024-05-01T10:00:00.5Z"}}"#);
        let p2 = r#"{"log":"tail\n","stream":"stdout","time":"2024-05-01T10:00:00.6Z"}"#;
        assert_eq!(d.push(p1.as_bytes(), 0, false), None);
        let l = d.push(p2.as_bytes(), 100, false).unwrap();
        assert_eq!(d.format(), Format::Docker);
        assert_eq!(l.body.len(), 16 * 1024 + 4);
        assert!(l.body.ends_with("xtail"));
        assert_eq!(l.parts, 2);
        let l = d
            .push(br#"{"log":"a \"q\" \u00e9\n","stream":"stderr"}"#, 0, false)
            .unwrap();
        assert_eq!(l.body, "a \"q\" é");
        assert_eq!(l.stream, Some(Stream::Stderr));
        assert_eq!(l.time, None);
    }

    #[test]
    fn unparsable_lines_are_kept_raw() {
        let mut d = Decoder::new(Format::Cri, 100);
        let l = d.push(b"not a cri line", 0, false).unwrap();
        assert!(l.unparsed);
        assert_eq!(l.body, "not a cri line");
        let mut d = Decoder::new(Format::Docker, 100);
        assert!(d.push(b"{\"log\":", 0, true).unwrap().unparsed);
    }

    #[test]
    fn flush_ships_unfinished_lines() {
        let mut d = Decoder::new(Format::Cri, 100);
        d.push(b"2024-05-01T10:00:00Z stderr P half", 7, false);
        let out = d.flush();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].body, "half");
        assert_eq!(d.pending_start(), None);
    }

    fn cri_split(msg: &str, chunk: usize, stream: &str) -> Vec<String> {
        let b = msg.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        loop {
            let end = (i + chunk).min(b.len());
            let last = end == b.len();
            out.push(format!(
                "2024-05-01T10:00:00.123Z {stream} {} {}",
                if last { "F" } else { "P" },
                std::str::from_utf8(&b[i..end]).unwrap()
            ));
            if last {
                return out;
            }
            i = end;
        }
    }

    proptest! {
        #[test]
        fn cri_split_and_joined_gives_the_line_back(msg in "[a-zA-Z0-9 ]{0,300}", chunk in 1usize..50) {
            let mut d = Decoder::new(Format::Cri, 10_000);
            let parts = cri_split(&msg, chunk, "stdout");
            let n = parts.len();
            let mut got = None;
            for (i, p) in parts.iter().enumerate() {
                let r = d.push(p.as_bytes(), 0, false);
                if i + 1 < n { prop_assert!(r.is_none()); } else { got = r; }
            }
            let got = got.unwrap();
            prop_assert_eq!(got.body, msg);
            prop_assert_eq!(got.parts as usize, n);
            prop_assert!(!got.truncated);
        }

        #[test]
        fn docker_split_and_joined_gives_the_line_back(msg in "[a-zA-Z0-9 é\"\\\\]{0,200}", chunk in 1usize..40) {
            let chars: Vec<char> = msg.chars().collect();
            let mut d = Decoder::new(Format::Docker, 10_000);
            let mut got = None;
            let pieces: Vec<String> = chars.chunks(chunk).map(|c| c.iter().collect()).collect();
            let pieces = if pieces.is_empty() { vec![String::new()] } else { pieces };
            for (i, p) in pieces.iter().enumerate() {
                let mut log = p.clone();
                if i + 1 == pieces.len() { log.push('\n'); }
                let j = serde_json::json!({"log": log, "stream": "stdout", "time": "2024-05-01T10:00:00Z"});
                got = d.push(j.to_string().as_bytes(), 0, false);
                if i + 1 < pieces.len() { prop_assert!(got.is_none()); }
            }
            prop_assert_eq!(got.unwrap().body, msg);
        }

        #[test]
        fn cri_parser_never_panics(b in proptest::collection::vec(any::<u8>(), 0..120)) {
            let _ = parse_cri(&b);
            let mut d = Decoder::new(Format::Auto, 16);
            let _ = d.push(&b, 0, false);
        }

        #[test]
        fn cri_parser_never_panics_on_near_valid(prefix in "20[0-9]{2}-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-5][0-9](\\.[0-9]{0,12})?(Z|[+-][0-9]{2}:[0-9]{2})?", s in "(stdout|stderr|x)?", t in "(P|F|PF)?", m in ".{0,20}") {
            let line = format!("{prefix} {s} {t} {m}");
            let mut d = Decoder::new(Format::Cri, 8);
            if let Some(l) = d.push(line.as_bytes(), 0, false) {
                prop_assert!(l.body.len() <= 8 + 3);
            }
        }

        #[test]
        fn docker_parser_never_panics(b in proptest::collection::vec(any::<u8>(), 0..120)) {
            let _ = parse_docker(&b);
        }

        #[test]
        fn body_never_exceeds_the_limit(parts in proptest::collection::vec("[a-z]{0,30}", 1..10), max in 1usize..64) {
            let mut d = Decoder::new(Format::Cri, max);
            let n = parts.len();
            for (i, p) in parts.iter().enumerate() {
                let tag = if i + 1 == n { "F" } else { "P" };
                if let Some(l) = d.push(format!("2024-05-01T10:00:00Z stdout {tag} {p}").as_bytes(), 0, false) {
                    prop_assert!(l.body.len() <= max);
                    let total: usize = parts.iter().map(|p| p.len()).sum();
                    prop_assert_eq!(l.truncated, total > max);
                }
            }
        }
    }
}
