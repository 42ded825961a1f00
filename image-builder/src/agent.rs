//! The agent binary that gets baked in: checked to be an executable ELF before
//! anything touches the repository, and asked for its version.

use crate::kind::{Classified, Kind};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long `AGENT --version` may take. The agent answers `--version` from
/// clap without touching the network; anything slower is not our agent.
const VERSION_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("agent {path}: cannot read it: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("agent {path}: not a regular file; pass the berth-agent binary itself")]
    NotRegular { path: PathBuf },
    #[error("agent {path}: not executable (mode {mode:04o}); chmod +x it, or pass the built berth-agent binary")]
    NotExecutable { path: PathBuf, mode: u32 },
    #[error("agent {path}: not an ELF executable (starts with {magic:02x?}, expected 7f 45 4c 46); pass the built berth-agent binary, not a script")]
    NotElf { path: PathBuf, magic: Vec<u8> },
}

impl Classified for AgentError {
    fn kind(&self) -> Kind {
        match self {
            AgentError::Read { .. }
            | AgentError::NotRegular { .. }
            | AgentError::NotExecutable { .. }
            | AgentError::NotElf { .. } => Kind::Refused,
        }
    }
}

/// A validated agent binary.
#[derive(Debug, Clone)]
pub struct Agent {
    pub bytes: Vec<u8>,
    pub sha256: String,
}

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";

/// Reads `path` and checks it is a regular, executable ELF file.
pub fn load(path: &Path) -> Result<Agent, AgentError> {
    let read_err = |source| AgentError::Read {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    if !meta.is_file() {
        return Err(AgentError::NotRegular {
            path: path.to_owned(),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o111 == 0 {
        return Err(AgentError::NotExecutable {
            path: path.to_owned(),
            mode,
        });
    }
    let bytes = std::fs::read(path).map_err(read_err)?;
    check_elf(path, &bytes)?;
    let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
    Ok(Agent { bytes, sha256 })
}

fn check_elf(path: &Path, bytes: &[u8]) -> Result<(), AgentError> {
    if bytes.len() < ELF_MAGIC.len() || &bytes[..4] != ELF_MAGIC {
        return Err(AgentError::NotElf {
            path: path.to_owned(),
            magic: bytes.iter().take(4).copied().collect(),
        });
    }
    Ok(())
}

/// Parses the first line of `berth-agent --version` ("berth-agent 0.1.0").
pub(crate) fn parse_version_output(out: &str) -> Option<String> {
    let line = out.lines().next()?.trim();
    let mut words = line.split_whitespace();
    let name = words.next()?;
    let version = words.next()?;
    if name != "berth-agent" || words.next().is_some() {
        return None;
    }
    let ok = version
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+' | '_'));
    ok.then(|| version.to_owned())
}

/// Asks the agent binary for its version. Returns `None` when it cannot run
/// here (another architecture), is slow, or does not answer like berth-agent;
/// the caller then needs `--agent-version`.
pub(crate) fn probe_version(path: &Path) -> Option<String> {
    let mut child = Command::new(path)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .env_clear()
        .spawn()
        .map_err(|e| log::info!("agent {}: cannot run it for --version: {e}", path.display()))
        .ok()?;
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => break,
            Ok(Some(status)) => {
                log::info!("agent {} --version exited with {status}", path.display());
                return None;
            }
            Ok(None) if start.elapsed() < VERSION_PROBE_TIMEOUT => {
                std::thread::sleep(Duration::from_millis(10))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                log::warn!("agent {} --version did not answer in time", path.display());
                return None;
            }
        }
    }
    let mut out = String::new();
    child.stdout.take()?.read_to_string(&mut out).ok()?;
    parse_version_output(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_output_is_parsed_strictly() {
        assert_eq!(
            parse_version_output("berth-agent 0.1.0\n").as_deref(),
            Some("0.1.0")
        );
        assert_eq!(parse_version_output("true (GNU coreutils) 9.1"), None);
        assert_eq!(parse_version_output("berth-agent 0.1.0 extra"), None);
        assert_eq!(parse_version_output("berth-agent 0.1;rm"), None);
        assert_eq!(parse_version_output(""), None);
    }

    #[test]
    fn elf_magic_is_required() {
        let p = Path::new("x");
        assert!(check_elf(p, b"\x7fELF\x02\x01").is_ok());
        let err = check_elf(p, b"#!/bin/sh\n").unwrap_err();
        assert!(err.to_string().contains("not an ELF"), "{err}");
        assert!(check_elf(p, b"\x7fE").is_err());
    }
}
