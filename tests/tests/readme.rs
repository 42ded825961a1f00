//! The command-line synopses in the READMEs against the binaries' `--help`: every flag a
//! synopsis shows exists, and every flag `--help` lists is in the synopsis. Needs no root.
//!
//! The synopses read:
//! - README.md: the code block after `## berth-agent`, one line per subcommand
//!   (`berth-agent run [--once] ...`) with indented continuation lines.
//! - image-builder/README.md: each `### \`berth-image SUB ...\`` heading of its reference, with
//!   the indented option block below it (the option column, before the description), plus the
//!   block under "Every subcommand also takes", which applies to every subcommand.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use berth_e2e::agent::{bin, workspace};

type Flags = BTreeSet<String>;

/// Every `--flag` token in `text`.
fn flags_in(text: &str) -> Flags {
    let mut out = Flags::new();
    let mut rest = text;
    while let Some(i) = rest.find("--") {
        let tail = &rest[i + 2..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        // `--` preceded by a letter is not a flag (`a--b`), nor is a bare `--`.
        let standalone = i == 0 || !rest.as_bytes()[i - 1].is_ascii_alphanumeric();
        if standalone && name.starts_with(|c: char| c.is_ascii_lowercase()) {
            out.insert(format!("--{name}"));
        }
        rest = &tail[end..];
    }
    out
}

/// The long flags of a clap `--help` output's option lines (the first flag of each line that
/// starts with an option, after an optional short one), `--help` itself excluded.
fn help_flags(help: &str) -> Flags {
    help.lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let l = match l.strip_prefix('-') {
                Some(r) if !r.starts_with('-') => r.split_once(", ").map(|(_, r)| r)?,
                _ => l,
            };
            let name = l.strip_prefix("--")?;
            let end = name
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .unwrap_or(name.len());
            Some(format!("--{}", &name[..end]))
        })
        .filter(|f| f != "--help")
        .collect()
}

fn help_of(binary: &Path, sub: &str) -> String {
    let out = Command::new(binary)
        .args([sub, "--help"])
        .output()
        .expect("the binary runs");
    assert!(
        out.status.success(),
        "{} {sub} --help exited with {}",
        binary.display(),
        out.status
    );
    String::from_utf8(out.stdout).expect("--help is UTF-8")
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(workspace().join(relative))
        .unwrap_or_else(|e| panic!("reading {relative}: {e}"))
}

/// README.md's berth-agent synopsis: subcommand → flags.
fn agent_synopsis(readme: &str) -> BTreeMap<String, Flags> {
    let section = readme
        .split_once("\n## berth-agent\n")
        .expect("README.md has a `## berth-agent` section")
        .1;
    let block = section
        .split_once("```\n")
        .and_then(|(_, b)| b.split_once("\n```"))
        .expect("the berth-agent section opens with a code block")
        .0;
    let mut out: BTreeMap<String, Flags> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in block.lines() {
        if let Some(rest) = line.strip_prefix("berth-agent ") {
            let sub = rest
                .split_whitespace()
                .next()
                .expect("a subcommand")
                .to_string();
            out.entry(sub.clone()).or_default().extend(flags_in(rest));
            current = Some(sub);
        } else if line.starts_with(' ') {
            let sub = current
                .as_ref()
                .expect("a continuation follows a subcommand line");
            out.get_mut(sub).expect("seen").extend(flags_in(line));
        } else {
            assert!(line.trim().is_empty(), "unexpected synopsis line {line:?}");
        }
    }
    out
}

/// The option column of an indented option block's lines: the line with its 4-space indent
/// removed, up to the first run of three spaces; continuation lines (indented further) have none.
fn option_column(line: &str) -> Option<&str> {
    let l = line.strip_prefix("    ")?;
    if l.starts_with(' ') {
        return None;
    }
    Some(l.split("   ").next().unwrap_or(l))
}

/// The indented block that follows `from` (blank lines before it skipped), as flags.
fn option_block(from: &str) -> Flags {
    let mut flags = Flags::new();
    let mut started = false;
    for line in from.lines() {
        if line.trim().is_empty() {
            if started {
                break;
            }
            continue;
        }
        if !line.starts_with("    ") {
            break;
        }
        started = true;
        if let Some(col) = option_column(line) {
            flags.extend(flags_in(col));
        }
    }
    flags
}

/// image-builder/README.md's synopses: subcommand → flags (the common ones included).
fn image_synopsis(readme: &str) -> BTreeMap<String, Flags> {
    let common_at = readme
        .find("Every subcommand also takes:\n")
        .expect("image-builder/README.md lists the options every subcommand takes");
    let common = option_block(readme[common_at..].split_once('\n').expect("a line").1);
    let mut out = BTreeMap::new();
    let mut rest = readme;
    while let Some(i) = rest.find("\n### `berth-image ") {
        let heading_start = &rest[i + "\n### `berth-image ".len()..];
        let (heading, body) = heading_start.split_once('\n').expect("a heading line");
        let sub = heading
            .split_whitespace()
            .next()
            .expect("a subcommand")
            .trim_end_matches('`')
            .to_string();
        let mut flags = flags_in(heading);
        flags.extend(option_block(body));
        flags.extend(common.iter().cloned());
        out.insert(sub, flags);
        rest = body;
    }
    out
}

/// The subcommands clap lists in `binary --help`.
fn subcommands(binary: &Path) -> BTreeSet<String> {
    let out = Command::new(binary)
        .arg("--help")
        .output()
        .expect("the binary runs");
    let help = String::from_utf8(out.stdout).expect("UTF-8");
    let commands = help
        .split_once("Commands:\n")
        .expect("--help lists the commands")
        .1;
    commands
        .lines()
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

/// Compares each synopsis with `--help`; returns every difference, worded for the README's
/// editor.
fn differences(readme: &str, binary: &Path, synopsis: &BTreeMap<String, Flags>) -> Vec<String> {
    let mut problems = Vec::new();
    let commands = subcommands(binary);
    let documented: BTreeSet<String> = synopsis.keys().cloned().collect();
    for missing in commands.difference(&documented) {
        problems.push(format!(
            "{readme}: no synopsis for the subcommand `{missing}`"
        ));
    }
    for extra in documented.difference(&commands) {
        problems.push(format!(
            "{readme}: a synopsis for `{extra}`, which is no subcommand"
        ));
    }
    for (sub, readme_flags) in synopsis {
        if !commands.contains(sub) {
            continue;
        }
        let help = help_flags(&help_of(binary, sub));
        assert!(
            !help.is_empty(),
            "`{sub} --help` lists no flag: the parser is wrong"
        );
        for f in readme_flags.difference(&help) {
            problems.push(format!("{readme}: `{sub} {f}` is not in `{sub} --help`"));
        }
        for f in help.difference(readme_flags) {
            problems.push(format!(
                "{readme}: `{sub} --help` has {f}, missing from the synopsis"
            ));
        }
    }
    problems
}

#[test]
fn agent_synopsis_matches_help() {
    let synopsis = agent_synopsis(&read("README.md"));
    for sub in ["run", "plan", "status"] {
        assert!(
            synopsis.contains_key(sub),
            "README.md has no `berth-agent {sub}` line"
        );
    }
    let problems = differences("README.md", &bin("berth-agent"), &synopsis);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn image_synopsis_matches_help() {
    let synopsis = image_synopsis(&read("image-builder/README.md"));
    let problems = differences("image-builder/README.md", &bin("berth-image"), &synopsis);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The parsers themselves: a flag added to `--help` or dropped from a synopsis is seen.
#[test]
fn the_parsers_see_a_drift() {
    let help = "Usage: x run [OPTIONS]\n\nOptions:\n      --root <ROOT>  Prefix\n  \
                -q, --quiet  No output, unlike `--verbose`\n      --new-flag\n          \
                Long help line mentioning --other\n  -h, --help  Print help\n";
    let expected: Flags = ["--root", "--quiet", "--new-flag"]
        .map(String::from)
        .into_iter()
        .collect();
    assert_eq!(help_flags(help), expected);

    let readme = "# x\n\n## berth-agent\n\n```\nberth-agent run    [--once] [--root DIR]\n                   [--imds-endpoint URL]...\nberth-agent status [--format text|json]\n```\n";
    let s = agent_synopsis(readme);
    assert_eq!(
        s["run"],
        ["--once", "--root", "--imds-endpoint"]
            .map(String::from)
            .into_iter()
            .collect()
    );
    assert_eq!(s["status"], ["--format".to_string()].into_iter().collect());

    let image = "Every subcommand also takes:\n\n    -v, --verbose          log more\n\n\
                 ### `berth-image inspect --repo REPO REF`\n\ntext\n\n\
                 ### `berth-image ami --disk DISK`\n\n    --tag K=V              a tag, unlike `--nothing`\n                           \
                 continued --not-a-flag\n    --a X, --b Y   both\n\nProse --ignored.\n";
    let s = image_synopsis(image);
    let set = |v: &[&str]| v.iter().map(|f| f.to_string()).collect::<Flags>();
    assert_eq!(s["inspect"], set(&["--repo", "--verbose"]));
    assert_eq!(
        s["ami"],
        set(&["--disk", "--tag", "--a", "--b", "--verbose"])
    );
}
