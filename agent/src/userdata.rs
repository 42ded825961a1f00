//! User-data: which part of it is berth's, read within bounds.
//!
//! On EC2, user-data is shared: cloud-init, Ignition, nodeadm, EC2Launch and berth may all be
//! handed the same launch template. berth takes only what is addressed to it and leaves the rest,
//! with a note in the log and in `status`, the way those tools do:
//!
//! | user-data | what berth does |
//! |---|---|
//! | gzip (`1f 8b`), as cloud-init and nodeadm accept | decompressed, then read again by this table |
//! | a YAML mapping (no `#` directive on the first line) | berth's configuration, unknown keys refused |
//! | `#cloud-config` | its top-level `berth:` mapping is berth's configuration; without one, left to cloud-init |
//! | MIME multi-part | only parts of type [`BERTH_CONTENT_TYPE`] (as nodeadm reads `application/node.eks.aws`), in order |
//! | `#!` scripts, `#cloud-boothook`, `#include`, `#cloud-config-archive`, `#part-handler`, jinja templates, Ignition JSON, EC2Launch `<powershell>`, a YAML scalar or list, binary data | ignored |
//!
//! User-data often carries passwords, keys and tokens (cloud-init's `chpasswd`, a script's
//! `export TOKEN=`), so no error or note quotes it: they name the problem and its line and column.
//!
//! Bounds, each checked before any YAML parser sees the text:
//! - [`MAX_RAW_BYTES`]: EC2 refuses user-data over 16 KiB before base64 ("User data is limited to
//!   16 KB, in raw form, before it is base64-encoded", EC2 User Guide, "Run commands when you
//!   launch an EC2 instance with user data input"); more can only come from elsewhere.
//! - [`MAX_DECOMPRESSED_BYTES`]: gzip compresses YAML about 4 to 10 times; 16 times the raw bound
//!   leaves room for any real document and stops a decompression bomb after 256 KiB of output.
//! - [`MAX_DEPTH`]: berth's configuration is two levels deep and cloud-config documents rarely
//!   pass six. YAML parsers load the whole event stream before they check depth, and nesting
//!   tens of thousands deep takes them seconds to minutes; a linear pre-scan refuses it first.
//! - [`MAX_NODES`]: a YAML parser keeps every event of a document in memory, about 160 bytes
//!   each, so 256 KiB of tiny flow items costs 22 MiB over the agent's own 8 MiB. The same
//!   pre-scan counts collections, entries and keys (block scalars, where scripts and file
//!   contents live, count as one) and refuses a document with more, which keeps the agent's peak
//!   RSS within its 20 MiB goal on any user-data; real configuration has hundreds.

use std::io::Read;

use crate::config::{truncate_value, ConfigError, Layer};

/// EC2's limit on user-data, before base64 (see the module docs).
pub const MAX_RAW_BYTES: usize = 16 * 1024;
/// The most gzip'd user-data (or a gzip'd berth part) may expand to.
pub const MAX_DECOMPRESSED_BYTES: usize = 256 * 1024;
/// The deepest nesting of mappings, sequences and flow collections berth parses.
pub const MAX_DEPTH: usize = 64;
/// The most YAML nodes (collections, entries, keys) a user-data document may hold; see the
/// module docs.
pub const MAX_NODES: usize = 32 * 1024;
/// The most MIME parts (nested multi-parts included) berth walks.
pub const MAX_PARTS: usize = 64;
/// The MIME content type of berth's part of multi-part user-data.
pub const BERTH_CONTENT_TYPE: &str = "application/x-berth-config";

/// Why user-data was refused. Every variant is bad input (exit 3): nothing on the host changes.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum UserDataError {
    #[error(
        "user-data is {bytes} bytes; berth reads at most {limit} (EC2's limit before base64); \
         shorten it, or gzip it"
    )]
    TooLarge { bytes: usize, limit: usize },
    #[error(
        "{source_name}: gzip content expands past {limit} bytes (the bound on decompressed \
         user-data); send a smaller document"
    )]
    Bomb { source_name: String, limit: usize },
    #[error("{source_name}: the gzip stream is damaged ({message}); compress it again with gzip")]
    Gzip {
        source_name: String,
        message: String,
    },
    #[error(
        "{source_name} line {line}, column {column}: nested more than {limit} levels deep; \
         berth's configuration is two levels deep, flatten the document"
    )]
    TooDeep {
        source_name: String,
        line: usize,
        column: usize,
        limit: usize,
    },
    #[error(
        "user-data: the MIME multi-part document has more than {limit} parts; berth reads at \
         most {limit}"
    )]
    TooManyParts { limit: usize },
    #[error(
        "{source_name}: more than {limit} YAML nodes (collections, entries and keys) by line \
         {line}; berth's configuration has a few dozen: move bulk data out of user-data"
    )]
    TooManyNodes {
        source_name: String,
        line: usize,
        limit: usize,
    },
    #[error("user-data: the MIME multi-part document cannot be read ({message}); check its boundaries and encodings")]
    Mime { message: String },
    #[error(
        "{source_name}: not UTF-8 text (byte {offset}); write berth's configuration as UTF-8 YAML"
    )]
    NotText { source_name: String, offset: usize },
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// What user-data holds for berth.
#[derive(Debug, Default)]
pub struct UserData {
    /// berth's configuration layers, lowest first, each named for errors (`user-data`,
    /// `user-data part 2`).
    pub layers: Vec<(String, Layer)>,
    /// What was left to other tools, one sentence each, never quoting the content.
    pub notes: Vec<String>,
}

/// Reads raw user-data (as IMDS serves it) into berth's layers and notes for the rest.
pub fn read(raw: &[u8]) -> Result<UserData, UserDataError> {
    if raw.len() > MAX_RAW_BYTES {
        return Err(UserDataError::TooLarge {
            bytes: raw.len(),
            limit: MAX_RAW_BYTES,
        });
    }
    let mut out = UserData::default();
    let bytes = gunzip_if_gzip("user-data", raw)?;
    read_document(&bytes, &mut out)?;
    Ok(out)
}

fn is_gzip(b: &[u8]) -> bool {
    b.starts_with(&[0x1f, 0x8b])
}

/// Decompresses gzip (one layer, as cloud-init does), refusing output past the bound.
fn gunzip_if_gzip<'a>(
    source_name: &str,
    raw: &'a [u8],
) -> Result<std::borrow::Cow<'a, [u8]>, UserDataError> {
    if !is_gzip(raw) {
        return Ok(std::borrow::Cow::Borrowed(raw));
    }
    let mut out = Vec::new();
    let limit = MAX_DECOMPRESSED_BYTES;
    flate2::read::MultiGzDecoder::new(raw)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| UserDataError::Gzip {
            source_name: source_name.to_string(),
            message: e.kind().to_string(),
        })?;
    if out.len() > limit {
        return Err(UserDataError::Bomb {
            source_name: source_name.to_string(),
            limit,
        });
    }
    Ok(std::borrow::Cow::Owned(out))
}

/// The kinds of user-data that are for other tools, by their first line.
const OTHERS: &[(&str, &str)] = &[
    (
        "#cloud-config-archive",
        "a cloud-config archive (#cloud-config-archive)",
    ),
    (
        "#cloud-config-jsonp",
        "a cloud-config JSON patch (#cloud-config-jsonp)",
    ),
    ("#cloud-boothook", "a cloud-init boothook (#cloud-boothook)"),
    ("#include", "a cloud-init include list (#include)"),
    ("#part-handler", "a cloud-init part handler (#part-handler)"),
    ("#upstart-job", "an upstart job (#upstart-job)"),
    (
        "## template: jinja",
        "a jinja-templated cloud-init document",
    ),
    ("#!", "a script (#!)"),
    ("<powershell>", "an EC2Launch PowerShell script"),
    ("<script>", "an EC2Launch batch script"),
    ("<persist>", "an EC2Launch document"),
    ("version: 1.1", "an EC2Launch v2 task document"),
];

fn read_document(bytes: &[u8], out: &mut UserData) -> Result<(), UserDataError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    if looks_like_mime(bytes) {
        return read_mime(bytes, out);
    }
    let Ok(text) = std::str::from_utf8(bytes) else {
        out.notes.push(format!(
            "user-data is binary ({} bytes), not berth's configuration; left to other tools",
            bytes.len()
        ));
        return Ok(());
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let first_line = text.lines().next().unwrap_or("").trim_end();
    for (prefix, what) in OTHERS {
        if first_line.starts_with(prefix) {
            out.notes.push(format!(
                "user-data is {what}, not berth's configuration; left to cloud-init or the tool \
                 it is for"
            ));
            return Ok(());
        }
    }
    if first_line.starts_with("#cloud-config") {
        return read_cloud_config("user-data", text, out);
    }
    check_depth("user-data", text)?;
    if is_ignition(text) {
        out.notes.push(
            "user-data is an Ignition config, not berth's configuration; left to Ignition"
                .to_string(),
        );
        return Ok(());
    }
    read_berth_yaml("user-data", text, out)
}

/// A YAML document that is berth's own format, unless its root is not a mapping.
fn read_berth_yaml(source: &str, text: &str, out: &mut UserData) -> Result<(), UserDataError> {
    match Layer::root_kind(source, text)? {
        RootKind::Mapping => {
            out.layers
                .push((source.to_string(), Layer::parse(source, text)?));
        }
        RootKind::Empty => {}
        RootKind::Other(kind) => out.notes.push(format!(
            "{source} is a YAML {kind}, not berth's configuration (a mapping); left to other tools"
        )),
    }
    Ok(())
}

/// What a YAML document's root is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootKind {
    Empty,
    Mapping,
    Other(&'static str),
}

fn read_cloud_config(source: &str, text: &str, out: &mut UserData) -> Result<(), UserDataError> {
    check_depth(source, text)?;
    // berth's section is at the top level: a line `berth:` at column 1.
    let has_section = text
        .lines()
        .any(|l| l.starts_with("berth:") || l.starts_with("\"berth\":"));
    match Layer::parse_cloud_config(source, text) {
        Ok(Some(layer)) => {
            out.layers
                .push((format!("{source} (#cloud-config, berth:)"), layer));
            out.notes.push(format!(
                "{source} is #cloud-config: berth read its `berth:` section and left the rest to \
                 cloud-init"
            ));
        }
        Ok(None) => out.notes.push(format!(
            "{source} is #cloud-config without a `berth:` section; left to cloud-init"
        )),
        Err(e) if has_section => return Err(e.into()),
        Err(e) => out.notes.push(format!(
            "{source} is #cloud-config that berth cannot read ({e}); it has no `berth:` section, \
             so it is left to cloud-init"
        )),
    }
    Ok(())
}

fn is_ignition(text: &str) -> bool {
    text.trim_start().starts_with('{')
        && serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text)
            .is_ok_and(|m| m.contains_key("ignition"))
}

/// cloud-init reads user-data as MIME when it starts with a `Content-Type:` header or names a
/// `MIME-Version:` near its start.
fn looks_like_mime(bytes: &[u8]) -> bool {
    let head = &bytes[..bytes.len().min(4096)];
    let lower = head.to_ascii_lowercase();
    lower.starts_with(b"content-type:")
        || lower.starts_with(b"mime-version:")
        || (lower.windows(13).any(|w| w == b"mime-version:")
            && lower.windows(13).any(|w| w == b"content-type:"))
}

fn read_mime(bytes: &[u8], out: &mut UserData) -> Result<(), UserDataError> {
    // Every multi-part needs a boundary parameter: counting them bounds the parts before
    // the recursive parser runs.
    let lower = bytes.to_ascii_lowercase();
    let boundaries = lower.windows(9).filter(|w| w == b"boundary=").count();
    if boundaries > MAX_PARTS {
        return Err(UserDataError::TooManyParts { limit: MAX_PARTS });
    }
    let mail = match mailparse::parse_mail(bytes) {
        Ok(m) => m,
        // A document that names no berth part is not berth's to refuse.
        Err(e)
            if !lower
                .windows(BERTH_CONTENT_TYPE.len())
                .any(|w| w == BERTH_CONTENT_TYPE.as_bytes()) =>
        {
            out.notes.push(format!(
                "user-data is MIME that berth cannot read ({}) and names no {BERTH_CONTENT_TYPE} \
                 part; left to cloud-init",
                truncate_value(&e.to_string())
            ));
            return Ok(());
        }
        Err(e) => {
            return Err(UserDataError::Mime {
                message: truncate_value(&e.to_string()),
            })
        }
    };
    let mut leaves = Vec::new();
    collect_leaves(&mail, &mut leaves);
    if leaves.len() > MAX_PARTS {
        return Err(UserDataError::TooManyParts { limit: MAX_PARTS });
    }
    for (i, part) in leaves.iter().enumerate() {
        let n = i + 1;
        let ctype = safe_content_type(&part.ctype.mimetype);
        if part.ctype.mimetype != BERTH_CONTENT_TYPE {
            out.notes.push(format!(
                "user-data part {n} ({ctype}) is not berth's ({BERTH_CONTENT_TYPE}); left to \
                 cloud-init or the tool it is for"
            ));
            continue;
        }
        let source = format!("user-data part {n}");
        let body = part.get_body_raw().map_err(|e| UserDataError::Mime {
            message: format!("part {n}: {}", truncate_value(&e.to_string())),
        })?;
        let body = gunzip_if_gzip(&source, &body)?;
        let text = std::str::from_utf8(&body).map_err(|e| UserDataError::NotText {
            source_name: source.clone(),
            offset: e.valid_up_to(),
        })?;
        check_depth(&source, text)?;
        match Layer::root_kind(&source, text)? {
            RootKind::Mapping => out
                .layers
                .push((source.clone(), Layer::parse(&source, text)?)),
            RootKind::Empty => {}
            RootKind::Other(kind) => {
                return Err(UserDataError::Config(ConfigError::Syntax {
                    source_name: source,
                    location: String::new(),
                    message: format!(
                        "a YAML {kind}; berth's part holds a mapping of its configuration keys"
                    ),
                }))
            }
        }
    }
    Ok(())
}

fn collect_leaves<'a>(
    m: &'a mailparse::ParsedMail<'a>,
    out: &mut Vec<&'a mailparse::ParsedMail<'a>>,
) {
    if m.subparts.is_empty() {
        out.push(m);
    } else {
        for p in &m.subparts {
            collect_leaves(p, out);
        }
    }
}

/// A content type as a note may show it: printable ASCII, truncated.
fn safe_content_type(t: &str) -> String {
    let clean: String = t
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(64)
        .collect();
    if clean.is_empty() {
        "no content type".to_string()
    } else {
        clean
    }
}

/// Refuses YAML (or JSON) nested deeper than [`MAX_DEPTH`] or holding more than [`MAX_NODES`]
/// nodes, in one linear pass.
///
/// Depth counts block levels (a stack of indentation columns, plus `- ` and `? ` indicators
/// opening nested collections on one line) and flow levels (`[`, `{` outside quotes and
/// comments). Block scalars (`|`, `>`) are skipped, so a script in a `write_files` entry does
/// not count. It can only over-count in odd documents (brackets in plain scalars), and the bound
/// is far above any real configuration.
pub fn check_depth(source: &str, text: &str) -> Result<(), UserDataError> {
    let too_deep = |line: usize, column: usize| UserDataError::TooDeep {
        source_name: source.to_string(),
        line,
        column,
        limit: MAX_DEPTH,
    };
    let too_many = |line: usize| UserDataError::TooManyNodes {
        source_name: source.to_string(),
        line,
        limit: MAX_NODES,
    };
    let mut indents: Vec<usize> = Vec::new();
    let mut flow = 0usize;
    // Collections, entries and keys seen so far, an upper estimate of the parser's events.
    let mut nodes = 0usize;
    // Inside a quoted scalar that spans lines: the quote character.
    let mut quote: Option<u8> = None;
    // Inside a block scalar: lines indented more than this column belong to it.
    let mut block_scalar: Option<usize> = None;
    for (ln, line) in text.split('\n').enumerate() {
        let b = line.as_bytes();
        let indent = b.iter().take_while(|&&c| c == b' ').count();
        let blank = b[indent..].iter().all(|c| c.is_ascii_whitespace());
        if let Some(parent) = block_scalar {
            if blank || indent > parent {
                continue;
            }
            block_scalar = None;
        }
        if blank && quote.is_none() {
            continue;
        }
        let mut i = 0;
        let mut line_depth = 0;
        if quote.is_none() && flow == 0 {
            if b[indent] == b'#' {
                continue;
            }
            while indents.last().is_some_and(|&top| top > indent) {
                indents.pop();
            }
            if indents.last() != Some(&indent) {
                indents.push(indent);
            }
            i = indent;
            // `- - x` and `? x` open a collection each on one line.
            while i + 1 < b.len() && matches!(b[i], b'-' | b'?') && b[i + 1] == b' ' {
                line_depth += 1;
                i += 2;
                while i < b.len() && b[i] == b' ' {
                    i += 1;
                }
            }
        }
        let base = indents.len() + line_depth;
        // A block line holds an entry or a key (plus the collections it opens).
        if quote.is_none() && flow == 0 {
            nodes += 1 + line_depth;
        }
        if nodes > MAX_NODES {
            return Err(too_many(ln + 1));
        }
        if base + flow > MAX_DEPTH {
            return Err(too_deep(ln + 1, i + 1));
        }
        let mut prev = b' ';
        while i < b.len() {
            let c = b[i];
            match quote {
                Some(q) => {
                    if q == b'"' && c == b'\\' {
                        i += 2;
                        continue;
                    }
                    if c == q {
                        if q == b'\'' && b.get(i + 1) == Some(&b'\'') {
                            i += 2;
                            continue;
                        }
                        quote = None;
                    }
                }
                None => match c {
                    b'#' if prev == b' ' || prev == b'\t' || i == 0 => break,
                    b'"' | b'\'' if matches!(prev, b' ' | b'\t' | b'[' | b'{' | b',' | b':') => {
                        quote = Some(c)
                    }
                    b'[' | b'{' | b',' => {
                        nodes += 1;
                        if nodes > MAX_NODES {
                            return Err(too_many(ln + 1));
                        }
                        if c != b',' {
                            flow += 1;
                            if base + flow > MAX_DEPTH {
                                return Err(too_deep(ln + 1, i + 1));
                            }
                        }
                    }
                    b']' | b'}' => flow = flow.saturating_sub(1),
                    _ => {}
                },
            }
            if !c.is_ascii_whitespace() || quote.is_none() {
                prev = c;
            }
            i += 1;
        }
        if quote.is_none() && flow == 0 {
            let t = line.trim_end();
            let t = t.split(" #").next().unwrap_or(t).trim_end();
            let indicator = t
                .trim_end_matches(|c: char| c.is_ascii_digit() || c == '-' || c == '+')
                .trim_end();
            if indicator.ends_with(": |")
                || indicator.ends_with(": >")
                || indicator.ends_with("- |")
                || indicator.ends_with("- >")
                || indicator == "|"
                || indicator == ">"
            {
                block_scalar = Some(indent);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn config(ud: &UserData) -> Config {
        Config::merge(ud.layers.iter().map(|(n, l)| (n.as_str(), l))).unwrap()
    }

    fn gzip(b: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn plain_yaml_is_berths_and_strict() {
        let ud = read(b"role: master\ncluster: seed\n").unwrap();
        assert_eq!(config(&ud).role, Some(crate::config::Role::Master));
        assert!(ud.notes.is_empty());
        let e = read(b"rol: master\n").unwrap_err().to_string();
        assert!(
            e.starts_with("user-data line 1, column 1: unknown key `rol`"),
            "{e}"
        );
    }

    #[test]
    fn gzip_is_read_and_bombs_refused() {
        let ud = read(&gzip(b"role: minion\n")).unwrap();
        assert_eq!(config(&ud).role, Some(crate::config::Role::Minion));
        let bomb = gzip(&vec![b' '; 10 * 1024 * 1024]);
        assert!(bomb.len() < MAX_RAW_BYTES, "{}", bomb.len());
        let e = read(&bomb).unwrap_err();
        assert!(matches!(e, UserDataError::Bomb { .. }), "{e}");
        let mut damaged = gzip(b"role: minion\n");
        damaged.truncate(12);
        assert!(matches!(read(&damaged), Err(UserDataError::Gzip { .. })));
    }

    #[test]
    fn cloud_config_contributes_its_berth_section_only() {
        let cc = "#cloud-config\npassword: atomic\nssh_pwauth: True\nchpasswd: { expire: False }\n\
                  ssh_authorized_keys:\n  - ssh-rsa AAAA user@host\n";
        let ud = read(cc.as_bytes()).unwrap();
        assert!(ud.layers.is_empty());
        assert_eq!(ud.notes.len(), 1, "{:?}", ud.notes);
        assert!(!ud.notes[0].contains("atomic"));
        let with = format!("{cc}berth:\n  role: master\n  poll: {{interval_seconds: 5}}\n");
        let ud = read(with.as_bytes()).unwrap();
        let c = config(&ud);
        assert_eq!(c.role, Some(crate::config::Role::Master));
        assert_eq!(c.poll.interval_seconds, 5.0);
        let bad = format!("{cc}berth:\n  rol: master\n");
        let e = read(bad.as_bytes()).unwrap_err().to_string();
        assert!(
            e.contains("line 8, column 3: unknown key `berth.rol`; did you mean `berth.role`?"),
            "{e}"
        );
    }

    #[test]
    fn other_formats_are_left_alone_without_quoting_them() {
        for doc in [
            "#!/bin/bash\necho secret-token > /root/x\n",
            "#cloud-boothook\n#!/bin/sh\necho secret-token\n",
            "#include\nhttps://example.invalid/secret-token\n",
            "#cloud-config-archive\n- type: text/x-shellscript\n  content: secret-token\n",
            "{\"ignition\": {\"version\": \"3.3.0\"}, \"passwd\": \"secret-token\"}",
            "<powershell>\n$secret = 'secret-token'\n</powershell>\n",
            "just a secret-token\n",
            "- secret-token\n",
        ] {
            let ud = read(doc.as_bytes()).unwrap();
            assert!(ud.layers.is_empty(), "{doc}");
            assert_eq!(ud.notes.len(), 1, "{doc}");
            assert!(!ud.notes[0].contains("secret-token"), "{}", ud.notes[0]);
        }
        let ud = read(&[0xff, 0xfe, 0x00, 0x01]).unwrap();
        assert!(ud.notes[0].contains("binary"));
        assert!(read(b"").unwrap().layers.is_empty());
    }

    #[test]
    fn mime_contributes_only_berths_parts() {
        let mime = "Content-Type: multipart/mixed; boundary=\"XX\"\nMIME-Version: 1.0\n\n\
                    --XX\nContent-Type: text/cloud-config\n\n#cloud-config\npassword: secret-token\n\
                    --XX\nContent-Type: application/x-berth-config\n\nrole: minion\n\
                    --XX\nContent-Type: text/x-shellscript\nContent-Transfer-Encoding: base64\n\n\
                    IyEvYmluL3NoCmVjaG8gaGkK\n--XX--\n";
        let ud = read(mime.as_bytes()).unwrap();
        assert_eq!(config(&ud).role, Some(crate::config::Role::Minion));
        assert_eq!(ud.notes.len(), 2, "{:?}", ud.notes);
        assert!(ud.notes[0].contains("part 1 (text/cloud-config)"));
        assert!(ud.notes[1].contains("part 3 (text/x-shellscript)"));
        let bad = mime.replace("role: minion", "rol: minion");
        let e = read(bad.as_bytes()).unwrap_err().to_string();
        assert!(
            e.starts_with("user-data part 2 line 1, column 1: unknown key `rol`"),
            "{e}"
        );
    }

    #[test]
    fn depth_is_bounded_before_parsing() {
        for doc in [
            format!("role: {}", "[".repeat(100_000)),
            "[".repeat(1 << 20),
            format!("a: {}", "{a: ".repeat(1000)),
            "- ".repeat(5000),
            (0..200)
                .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
                .collect::<String>(),
        ] {
            let e = check_depth("user-data", &doc).unwrap_err();
            assert!(matches!(e, UserDataError::TooDeep { .. }), "{e}");
            assert!(!e.to_string().contains("k1"), "{e}");
        }
        let cc = "#cloud-config\nwrite_files:\n  - path: /x\n    content: |\n      [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\n\
                  runcmd:\n  - [ sh, -c, 'echo \"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\"' ]\n";
        check_depth("user-data", cc).unwrap();
        check_depth("user-data", "a:\n  b:\n    c: [1, {d: [2]}]\n").unwrap();
    }

    #[test]
    fn node_count_is_bounded_but_block_scalars_are_one_node() {
        // Flat flow items: shallow, but each is an event the parser would keep.
        let items = |n: usize| format!("x: [{}]\n", vec!["1"; n].join(", "));
        check_depth("user-data", &items(MAX_NODES - 10)).unwrap();
        let e = check_depth("user-data", &items(MAX_NODES + 1)).unwrap_err();
        assert!(
            matches!(e, UserDataError::TooManyNodes { line: 1, .. }),
            "{e}"
        );
        // A block entry line `- x` counts two: its line and the `- ` indicator.
        let entries = |n: usize| format!("runcmd:\n{}", "  - true\n".repeat(n));
        check_depth("user-data", &entries(MAX_NODES / 2 - 10)).unwrap();
        let e = check_depth("user-data", &entries(MAX_NODES / 2 + 1)).unwrap_err();
        assert!(matches!(e, UserDataError::TooManyNodes { .. }), "{e}");
        // A file's content in a block scalar is one node however long: 200 KiB of commas.
        let big = format!(
            "#cloud-config\nwrite_files:\n  - path: /etc/x.csv\n    content: |\n{}berth:\n  role: minion\n",
            "      a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p\n".repeat(200 * 1024 / 38)
        );
        check_depth("user-data", &big).unwrap();
    }

    #[test]
    fn raw_size_is_bounded() {
        let e = read(&vec![b'a'; MAX_RAW_BYTES + 1]).unwrap_err();
        assert!(matches!(e, UserDataError::TooLarge { .. }));
    }
}
