//! The redaction rule applied to every text that enters an incident bundle (event bodies
//! and attributes, trigger reasons, Alertmanager labels and annotations):
//!
//! 1. attributes named `cmdline`, `command_line`, `args`, `argv` keep only their first word
//!    (the program); attributes named `env`, `environ`, `environment` are dropped;
//! 2. `Bearer <token>` / `Basic <token>` become `Bearer [REDACTED]`;
//! 3. `<key>=<value>`, `<key>: <value>` and `--<key> <value>` where the key contains
//!    `pass`, `secret`, `token`, `apikey`/`api_key`/`api-key`, `auth`, `credential`,
//!    `private_key`, `session`, `cookie` or `signature` (any case) keep the key and
//!    replace the value with `[REDACTED]`;
//! 4. user information in URLs (`scheme://user:password@host`) becomes
//!    `scheme://[REDACTED]@host`.

use std::sync::OnceLock;

use regex::Regex;

pub const REDACTED: &str = "[REDACTED]";

fn patterns() -> &'static [(Regex, &'static str); 4] {
    static P: OnceLock<[(Regex, &'static str); 4]> = OnceLock::new();
    P.get_or_init(|| {
        let key = r"[A-Za-z0-9_.-]*(?i:pass|secret|token|api[_-]?key|auth|credential|private[_-]?key|session|cookie|signature)[A-Za-z0-9_.-]*";
        [
            (
                Regex::new(r"(?i)(?P<k>\b(?:bearer|basic))\s+[A-Za-z0-9._~+/=-]+")
                    .expect("valid regex"),
                "${k} [REDACTED]",
            ),
            (
                Regex::new(&format!(r#"(?P<k>{key})(?P<s>\s*[=:]\s*)(?P<v>"[^"]*"|'[^']*'|[^\s,;&"']+)"#))
                    .expect("valid regex"),
                "${k}${s}[REDACTED]",
            ),
            (
                Regex::new(&format!(r"(?P<k>--?{key})(?P<s>\s+)(?P<v>[^\s-][^\s]*)"))
                    .expect("valid regex"),
                "${k}${s}[REDACTED]",
            ),
            (
                Regex::new(r"(?P<k>[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@]+@").expect("valid regex"),
                "${k}[REDACTED]@",
            ),
        ]
    })
}

/// Applies rules 2–4 to a text, in that order.
pub fn text(s: &str) -> String {
    let mut out = s.to_string();
    for (re, rep) in patterns() {
        if re.is_match(&out) {
            out = re.replace_all(&out, *rep).into_owned();
        }
    }
    out
}

/// Applies rule 1 (by attribute name), then the text rules. `None`: drop the attribute.
pub fn attribute(key: &str, value: &str) -> Option<String> {
    match key.to_ascii_lowercase().as_str() {
        "env" | "environ" | "environment" => None,
        "cmdline" | "command_line" | "args" | "argv" => Some(text(
            value
                .split(|c: char| c.is_whitespace() || c == '\0')
                .find(|w| !w.is_empty())
                .unwrap_or(""),
        )),
        _ => Some(text(value)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_documented_cases() {
        assert_eq!(text("db password=hunter2 ok"), "db password=[REDACTED] ok");
        assert_eq!(text("API_KEY: abc123"), "API_KEY: [REDACTED]");
        assert_eq!(
            text("run --token s3cr3t --port 80"),
            "run --token [REDACTED] --port 80"
        );
        assert_eq!(
            text("Authorization: Bearer xyz.abc"),
            "Authorization: [REDACTED] [REDACTED]"
        );
        assert_eq!(
            text("curl https://bob:pw@example.com/x"),
            "curl https://[REDACTED]@example.com/x"
        );
        assert_eq!(text("nothing to see, port=80"), "nothing to see, port=80");
        assert_eq!(
            attribute("cmdline", "/bin/app --password x"),
            Some("/bin/app".into())
        );
        assert_eq!(attribute("environ", "A=1"), None);
        assert_eq!(attribute("pid", "42"), Some("42".into()));
    }

    proptest! {
        #[test]
        fn secret_values_never_survive(
            key in "(password|secret|token|api_key|AUTH|session_id)",
            sep in "(=|: | = )",
            val in "[A-Za-z0-9]{6,20}",
            pre in "[a-z ]{0,10}",
        ) {
            let s = format!("{pre} {key}{sep}{val} tail");
            let r = text(&s);
            prop_assert!(!r.contains(&val), "{} -> {}", s, r);
            prop_assert!(r.contains(REDACTED));
        }

        #[test]
        fn never_panics(s in ".{0,200}") {
            let _ = text(&s);
            let _ = attribute("cmdline", &s);
        }
    }
}
