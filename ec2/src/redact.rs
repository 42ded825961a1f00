//! Text that came from a remote end, made safe to show.
//!
//! A hostile or broken server can put anything in an error document: in its `Code` and
//! `Message`, in its `<RequestID>`, as the root element's name, in a mismatched end tag that the
//! XML parser then quotes. Whatever of it reaches an error value reaches the log, `state.json`
//! and `berth-agent status`. So such text is only ever held as a [`RemoteText`], which can only
//! be built through [`RemoteText::new`]: every secret this process holds (role secret keys,
//! session tokens, IMDS session tokens, registered with [`hold`] the moment they are obtained)
//! is replaced, control characters are replaced, and the result is cut to
//! [`REMOTE_TEXT_MAX_BYTES`].

use std::fmt;
use std::sync::Mutex;

/// Longest remote text kept in an error value, in bytes (UTF-8, cut at a character boundary).
/// EC2 error codes are under 64 bytes and their messages a few hundred at most; 256 bytes keep
/// what a reader needs while a 60 MB `<RequestID>` cannot become a 60 MB log line.
pub const REMOTE_TEXT_MAX_BYTES: usize = 256;

/// Secrets shorter than this are not scrubbed: replacing every `a` of a message would say
/// nothing and hide the rest. Every AWS secret key (40), session token (hundreds) and IMDS
/// token (56) is far longer.
const MIN_SECRET_LEN: usize = 8;

/// How many secrets are remembered. Role credentials rotate every few hours and IMDS tokens
/// every six, so a long-running agent holds a handful at a time; the oldest are forgotten first.
const MAX_SECRETS: usize = 64;

const REDACTED: &str = "** redacted **";

static SECRETS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Remembers `secret` so that no [`RemoteText`] built from now on can contain it.
pub fn hold(secret: &str) {
    if secret.len() < MIN_SECRET_LEN {
        return;
    }
    let mut held = SECRETS.lock().unwrap_or_else(|p| p.into_inner());
    if held.iter().any(|s| s == secret) {
        return;
    }
    if held.len() >= MAX_SECRETS {
        held.remove(0);
    }
    held.push(secret.to_string());
}

/// `text` with every held secret replaced by `** redacted **`.
pub(crate) fn scrub(text: &str) -> String {
    let held = SECRETS.lock().unwrap_or_else(|p| p.into_inner());
    let mut out = text.to_string();
    for secret in held.iter() {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), REDACTED);
        }
    }
    out
}

/// Remote text, scrubbed of every held secret and bounded (see the module doc).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct RemoteText(String);

impl RemoteText {
    /// Scrubs, then replaces control characters, then bounds. Scrubbing comes first so that a
    /// secret straddling the cut is still removed whole.
    pub fn new(raw: &str) -> RemoteText {
        // A secret is shorter than 4 KiB; scrubbing a bounded prefix keeps the cost of a
        // 60 MB field proportional to what is kept.
        let window = floor_boundary(raw, REMOTE_TEXT_MAX_BYTES + 4096);
        let scrubbed = scrub(&raw[..window]);
        let clean: String = scrubbed
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let mut cut = floor_boundary(&clean, REMOTE_TEXT_MAX_BYTES);
        let mut text = clean[..cut].to_string();
        if cut < clean.len() || window < raw.len() {
            // Mark the cut, within the bound.
            cut = floor_boundary(&text, REMOTE_TEXT_MAX_BYTES - 3);
            text.truncate(cut);
            text.push_str("...");
        }
        RemoteText(text)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn floor_boundary(s: &str, max: usize) -> usize {
    if s.len() <= max {
        return s.len();
    }
    let mut i = max;
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

impl std::ops::Deref for RemoteText {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RemoteText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RemoteText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl PartialEq<str> for RemoteText {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for RemoteText {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_secrets_never_survive() {
        hold("SECRET-redact-test-0123456789");
        let t = RemoteText::new("code SECRET-redact-test-0123456789 end");
        assert_eq!(t.as_str(), "code ** redacted ** end");
        // Short values are not treated as secrets.
        hold("abc");
        assert_eq!(RemoteText::new("abc").as_str(), "abc");
    }

    #[test]
    fn bounded_and_single_line() {
        let t = RemoteText::new(&"é".repeat(100_000));
        assert!(
            t.as_str().len() <= REMOTE_TEXT_MAX_BYTES,
            "{}",
            t.as_str().len()
        );
        assert!(t.as_str().ends_with("..."));
        assert_eq!(RemoteText::new("a\nb\r\x1b[31m").as_str(), "a b  [31m");
    }

    #[test]
    fn a_secret_across_the_cut_is_removed_whole() {
        let secret = "STRADDLING-SECRET-abcdefghijklmnopqrstuvwxyz";
        hold(secret);
        let raw = format!("{}{secret}", "x".repeat(REMOTE_TEXT_MAX_BYTES - 10));
        let t = RemoteText::new(&raw);
        assert!(!t.as_str().contains("STRADDL"), "{t}");
    }
}
