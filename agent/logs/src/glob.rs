//! Path globs (`*` and `?` within a path component, `**` across components, `[...]`
//! classes) compiled to regular expressions, and a bounded directory walk that finds
//! the files they match.

use std::path::{Path, PathBuf};

use regex::Regex;

#[derive(Debug, thiserror::Error)]
#[error("glob {pattern:?}: {reason}")]
pub struct GlobError {
    pub pattern: String,
    pub reason: String,
}

#[derive(Clone, Debug)]
pub struct Glob {
    pattern: String,
    re: Regex,
    /// The longest leading directory without wildcards: where the walk starts.
    base: PathBuf,
    /// Components below `base` the walk descends (None with `**`).
    depth: Option<usize>,
}

impl Glob {
    pub fn new(pattern: &str) -> Result<Glob, GlobError> {
        let err = |reason: &str| GlobError {
            pattern: pattern.to_string(),
            reason: reason.to_string(),
        };
        if !pattern.starts_with('/') {
            return Err(err("must be an absolute path"));
        }
        let mut re = String::from("^");
        let chars: Vec<char> = pattern.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            match c {
                '*' if chars.get(i + 1) == Some(&'*') => {
                    re.push_str(".*");
                    i += 1;
                    // `**/` also matches zero directories.
                    if chars.get(i + 1) == Some(&'/') {
                        re.push_str("/?");
                        i += 1;
                    }
                }
                '*' => re.push_str("[^/]*"),
                '?' => re.push_str("[^/]"),
                '[' => {
                    let end = chars[i..]
                        .iter()
                        .position(|&c| c == ']')
                        .ok_or_else(|| err("unclosed '['"))?;
                    let class: String = chars[i + 1..i + end].iter().collect();
                    let class = class
                        .strip_prefix('!')
                        .map_or(class.clone(), |c| format!("^{c}"));
                    re.push('[');
                    re.push_str(&class.replace('\\', "\\\\"));
                    re.push(']');
                    i += end;
                }
                c => re.push_str(&regex::escape(&c.to_string())),
            }
            i += 1;
        }
        re.push('$');
        let re = Regex::new(&re).map_err(|e| err(&e.to_string()))?;
        let comps: Vec<&str> = pattern.split('/').collect();
        let lit = comps
            .iter()
            .position(|c| c.contains(['*', '?', '[']))
            .unwrap_or(comps.len() - 1);
        let base: PathBuf = comps[..lit].join("/").into();
        let base = if base.as_os_str().is_empty() {
            PathBuf::from("/")
        } else {
            base
        };
        let depth = if pattern.contains("**") {
            None
        } else {
            Some(comps.len() - lit)
        };
        Ok(Glob {
            pattern: pattern.to_string(),
            re,
            base,
            depth,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    pub fn matches(&self, p: &Path) -> bool {
        p.to_str().is_some_and(|s| self.re.is_match(s))
    }

    /// The same glob re-rooted under `root` (the host root).
    pub fn under(&self, root: &Path) -> Result<Glob, GlobError> {
        if root == Path::new("/") {
            return Ok(self.clone());
        }
        let r = root.to_string_lossy();
        let r = r.trim_end_matches('/');
        // Escape glob characters of the root itself.
        let mut esc = String::new();
        for c in r.chars() {
            if matches!(c, '*' | '?' | '[') {
                esc.push('[');
                esc.push(c);
                esc.push(']');
            } else {
                esc.push(c);
            }
        }
        Glob::new(&format!("{esc}{}", self.pattern))
    }

    /// Regular files (symlinks followed only when `follow_links`) matching the glob, at most
    /// `max` of them (then `truncated` is set).
    pub fn walk(&self, follow_links: bool, max: usize, out: &mut Vec<PathBuf>) -> bool {
        let mut stack = vec![(self.base.clone(), 0usize)];
        let depth = self.depth.unwrap_or(16);
        while let Some((dir, d)) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in rd.flatten() {
                let p = e.path();
                let Ok(ft) = e.file_type() else { continue };
                let (is_dir, is_file) = if ft.is_symlink() {
                    if !follow_links {
                        continue;
                    }
                    match std::fs::metadata(&p) {
                        Ok(m) => (false, m.is_file()),
                        Err(_) => continue,
                    }
                } else {
                    (ft.is_dir(), ft.is_file())
                };
                if is_dir && d + 1 < depth {
                    stack.push((p, d + 1));
                } else if is_file && self.matches(&p) {
                    if out.len() >= max {
                        return true;
                    }
                    out.push(p);
                }
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_like_a_shell() {
        let g = Glob::new("/var/log/pods/*/*/*.log").unwrap();
        assert!(g.matches(Path::new("/var/log/pods/ns_p_u/c/0.log")));
        assert!(!g.matches(Path::new("/var/log/pods/ns_p_u/c/0.log.20240101-000000")));
        assert!(!g.matches(Path::new("/var/log/pods/ns_p_u/c/d/0.log")));
        let g = Glob::new("/var/log/**/*.log").unwrap();
        assert!(g.matches(Path::new("/var/log/a.log")));
        assert!(g.matches(Path::new("/var/log/x/y/a.log")));
        let g = Glob::new("/var/log/sys?og").unwrap();
        assert!(g.matches(Path::new("/var/log/syslog")));
        let g = Glob::new("/var/log/[a-c].log").unwrap();
        assert!(g.matches(Path::new("/var/log/b.log")));
        assert!(!g.matches(Path::new("/var/log/d.log")));
        assert!(Glob::new("var/log").is_err());
        assert!(Glob::new("/var/[log").is_err());
    }

    #[test]
    fn walks_under_a_root() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("var/log/pods/ns_p_u/c");
        std::fs::create_dir_all(&base).unwrap();
        std::fs::write(base.join("0.log"), b"x").unwrap();
        std::fs::write(base.join("0.log.1"), b"x").unwrap();
        let g = Glob::new("/var/log/pods/*/*/*.log")
            .unwrap()
            .under(d.path())
            .unwrap();
        let mut out = Vec::new();
        assert!(!g.walk(false, 10, &mut out));
        assert_eq!(out, vec![base.join("0.log")]);
        let mut out = Vec::new();
        assert!(g.walk(false, 0, &mut out));
    }
}
