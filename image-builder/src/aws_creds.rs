//! Where `berth-image ami` finds AWS credentials: the standard sources, in the order the AWS
//! CLI and SDKs use them.
//!
//! 1. The environment: `AWS_ACCESS_KEY_ID` + `AWS_SECRET_ACCESS_KEY` (+ `AWS_SESSION_TOKEN`).
//! 2. The shared credentials file (`AWS_SHARED_CREDENTIALS_FILE`, default
//!    `~/.aws/credentials`), profile `AWS_PROFILE` (default `default`).
//! 3. The instance role, through IMDSv2 (berth-ec2's [`ImdsClient`]), unless
//!    `AWS_EC2_METADATA_DISABLED=true`.
//!
//! A source that is present but broken (a key id without its secret, a named profile missing
//! from the file) is an error, not a reason to fall through to the next: silently using other
//! credentials than the ones the user configured would upload to the wrong account.
//!
//! Not for: SSO, `credential_process`, `role_arn` profiles or web identity (berth-image does not
//! assume roles; run it under credentials that already have the rights). Nothing here logs a
//! secret or a token.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::kind::{Classified, Kind};
use berth_ec2::{Credentials, ImdsClient, ImdsError};

/// Credentials that expire are resolved again when they expire within this margin: one
/// PutSnapshotBlock retried under its full policy fits well inside it.
const REFRESH_BEFORE: Duration = Duration::from_secs(5 * 60);

/// Which source the credentials came from (shown in logs; never the secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Environment,
    SharedFile { path: PathBuf, profile: String },
    InstanceRole,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Environment => write!(f, "the environment (AWS_ACCESS_KEY_ID)"),
            Source::SharedFile { path, profile } => {
                write!(f, "profile `{profile}` of {}", path.display())
            }
            Source::InstanceRole => write!(f, "the instance role (IMDS)"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CredsError {
    #[error("{set} is set but {missing} is not: set both, or neither")]
    PartialEnv {
        set: &'static str,
        missing: &'static str,
    },
    #[error("cannot read the shared credentials file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} line {line}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("profile `{profile}` (AWS_PROFILE) is not in {path}")]
    NoProfile { path: PathBuf, profile: String },
    #[error("profile `{profile}` in {path} has no {field}")]
    ProfileField {
        path: PathBuf,
        profile: String,
        field: &'static str,
    },
    #[error("cannot get the instance role's credentials from IMDS: {0}")]
    Imds(#[from] ImdsError),
    #[error(
        "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, write {path} \
         (or point AWS_SHARED_CREDENTIALS_FILE at one), or run on an instance with a role"
    )]
    None { path: String },
}

impl Classified for CredsError {
    fn kind(&self) -> Kind {
        match self {
            // Credentials are looked for after the input was accepted; without them the upload fails.
            CredsError::PartialEnv { .. }
            | CredsError::ReadFile { .. }
            | CredsError::Parse { .. }
            | CredsError::NoProfile { .. }
            | CredsError::ProfileField { .. }
            | CredsError::Imds(_)
            | CredsError::None { .. } => Kind::Failed,
        }
    }
}

/// What the chain reads from the process: the environment and the home directory. A trait-free
/// struct so tests give their own.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub vars: BTreeMap<String, String>,
    pub home: Option<PathBuf>,
}

impl Env {
    /// The real process environment.
    pub fn process() -> Env {
        Env {
            vars: std::env::vars()
                .filter(|(k, _)| k.starts_with("AWS_") || k == "HOME")
                .collect(),
            home: std::env::var_os("HOME").map(PathBuf::from),
        }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn credentials_file(&self) -> Option<PathBuf> {
        match self.get("AWS_SHARED_CREDENTIALS_FILE") {
            Some(p) => Some(expand_home(p, self.home.as_deref())),
            None => self.home.as_ref().map(|h| h.join(".aws/credentials")),
        }
    }
}

fn expand_home(p: &str, home: Option<&Path>) -> PathBuf {
    match (p.strip_prefix("~/"), home) {
        (Some(rest), Some(home)) => home.join(rest),
        _ => PathBuf::from(p),
    }
}

/// The first two sources, which need no network: `Ok(None)` when neither is configured.
pub(crate) fn from_env_or_file(env: &Env) -> Result<Option<(Credentials, Source)>, CredsError> {
    match (
        env.get("AWS_ACCESS_KEY_ID"),
        env.get("AWS_SECRET_ACCESS_KEY"),
    ) {
        (Some(id), Some(secret)) => {
            return Ok(Some((
                Credentials {
                    access_key_id: id.into(),
                    secret_access_key: secret.into(),
                    session_token: env.get("AWS_SESSION_TOKEN").map(str::to_string),
                    expiration: None,
                },
                Source::Environment,
            )))
        }
        (Some(_), None) => {
            return Err(CredsError::PartialEnv {
                set: "AWS_ACCESS_KEY_ID",
                missing: "AWS_SECRET_ACCESS_KEY",
            })
        }
        (None, Some(_)) => {
            return Err(CredsError::PartialEnv {
                set: "AWS_SECRET_ACCESS_KEY",
                missing: "AWS_ACCESS_KEY_ID",
            })
        }
        (None, None) => {}
    }
    let Some(path) = env.credentials_file() else {
        return Ok(None);
    };
    let explicit_profile = env.get("AWS_PROFILE");
    let profile = explicit_profile.unwrap_or("default").to_string();
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        // No file is "not configured" unless the user named a profile or a file.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if explicit_profile.is_some() || env.get("AWS_SHARED_CREDENTIALS_FILE").is_some() {
                return Err(CredsError::ReadFile { path, source: e });
            }
            return Ok(None);
        }
        Err(e) => return Err(CredsError::ReadFile { path, source: e }),
    };
    let profiles = parse_ini(&text).map_err(|(line, message)| CredsError::Parse {
        path: path.clone(),
        line,
        message,
    })?;
    let Some(section) = profiles.get(&profile) else {
        if explicit_profile.is_some() {
            return Err(CredsError::NoProfile { path, profile });
        }
        return Ok(None);
    };
    let field = |name: &'static str| {
        section
            .get(name)
            .filter(|v| !v.is_empty())
            .cloned()
            .ok_or_else(|| CredsError::ProfileField {
                path: path.clone(),
                profile: profile.clone(),
                field: name,
            })
    };
    let creds = Credentials {
        access_key_id: field("aws_access_key_id")?,
        secret_access_key: field("aws_secret_access_key")?,
        session_token: section
            .get("aws_session_token")
            .filter(|v| !v.is_empty())
            .cloned(),
        expiration: None,
    };
    Ok(Some((creds, Source::SharedFile { path, profile })))
}

/// The INI dialect of `~/.aws/credentials`: `[profile]` sections, `key = value` lines, `#` and
/// `;` comments. Errors are `(line, message)`.
fn parse_ini(text: &str) -> Result<BTreeMap<String, BTreeMap<String, String>>, (usize, String)> {
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            let name = rest
                .strip_suffix(']')
                .ok_or((n + 1, "a section header must end with `]`".to_string()))?
                .trim();
            // The config file's `[profile NAME]` spelling is accepted here too.
            let name = name.strip_prefix("profile ").unwrap_or(name).trim();
            out.entry(name.to_string()).or_default();
            current = Some(name.to_string());
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .ok_or((n + 1, "expected `key = value`".to_string()))?;
        let Some(section) = &current else {
            return Err((n + 1, "a key outside any [profile] section".to_string()));
        };
        out.entry(section.clone())
            .or_default()
            .insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
    }
    Ok(out)
}

/// Credentials for the whole run: resolved once, and refreshed from IMDS before they expire
/// when they came from the instance role.
pub struct Provider {
    env: Env,
    imds: Option<ImdsClient>,
    current: tokio::sync::Mutex<Option<(Credentials, Source)>>,
}

impl Provider {
    /// `imds`: the client for the third source; `None` skips it (tests, or no instance).
    pub fn new(env: Env, imds: Option<ImdsClient>) -> Provider {
        Provider {
            env,
            imds,
            current: tokio::sync::Mutex::new(None),
        }
    }

    /// The credentials to sign with now, and where they came from.
    pub async fn get(&self) -> Result<(Credentials, Source), CredsError> {
        let mut current = self.current.lock().await;
        if let Some((c, s)) = &*current {
            let fresh = c.expiration.is_none_or(|exp| {
                exp.duration_since(SystemTime::now()).unwrap_or_default() > REFRESH_BEFORE
            });
            if fresh {
                return Ok((c.clone(), s.clone()));
            }
        }
        let resolved = self.resolve().await?;
        log::info!("AWS credentials from {}", resolved.1);
        *current = Some(resolved.clone());
        Ok(resolved)
    }

    async fn resolve(&self) -> Result<(Credentials, Source), CredsError> {
        if let Some(found) = from_env_or_file(&self.env)? {
            return Ok(found);
        }
        let disabled = self
            .env
            .get("AWS_EC2_METADATA_DISABLED")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        if let (Some(imds), false) = (&self.imds, disabled) {
            // The client caches the role's credentials and refetches them near expiry.
            if let Some(c) = imds.credentials().await? {
                return Ok((c, Source::InstanceRole));
            }
        }
        Err(CredsError::None {
            path: self
                .env
                .credentials_file()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "~/.aws/credentials".into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)], home: Option<&Path>) -> Env {
        Env {
            vars: vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            home: home.map(Path::to_path_buf),
        }
    }

    const FILE: &str = "# berth test\n[default]\naws_access_key_id = AKIDFILE\naws_secret_access_key = filesecret\n\n[profile ci]\nAWS_ACCESS_KEY_ID=AKIDCI\naws_secret_access_key=cisecret\naws_session_token = citoken\n[broken]\naws_access_key_id = AKIDB\n";

    fn home_with_file() -> tempfile::TempDir {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir(home.path().join(".aws")).unwrap();
        std::fs::write(home.path().join(".aws/credentials"), FILE).unwrap();
        home
    }

    #[test]
    fn environment_comes_first() {
        let home = home_with_file();
        let e = env(
            &[
                ("AWS_ACCESS_KEY_ID", "AKIDENV"),
                ("AWS_SECRET_ACCESS_KEY", "envsecret"),
                ("AWS_SESSION_TOKEN", "envtoken"),
                ("AWS_PROFILE", "ci"),
            ],
            Some(home.path()),
        );
        let (c, s) = from_env_or_file(&e).unwrap().unwrap();
        assert_eq!(s, Source::Environment);
        assert_eq!(c.access_key_id, "AKIDENV");
        assert_eq!(c.session_token.as_deref(), Some("envtoken"));
    }

    #[test]
    fn then_the_file_default_profile() {
        let home = home_with_file();
        let (c, s) = from_env_or_file(&env(&[], Some(home.path())))
            .unwrap()
            .unwrap();
        assert_eq!(c.access_key_id, "AKIDFILE");
        assert_eq!(c.secret_access_key, "filesecret");
        assert_eq!(c.session_token, None);
        assert!(matches!(s, Source::SharedFile { ref profile, .. } if profile == "default"));
    }

    #[test]
    fn aws_profile_picks_the_section_and_keys_are_case_insensitive() {
        let home = home_with_file();
        let (c, _) = from_env_or_file(&env(&[("AWS_PROFILE", "ci")], Some(home.path())))
            .unwrap()
            .unwrap();
        assert_eq!(c.access_key_id, "AKIDCI");
        assert_eq!(c.session_token.as_deref(), Some("citoken"));
    }

    #[test]
    fn shared_credentials_file_variable_overrides_home() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("creds");
        std::fs::write(
            &file,
            "[default]\naws_access_key_id=AKIDX\naws_secret_access_key=x\n",
        )
        .unwrap();
        let home = home_with_file();
        let e = env(
            &[("AWS_SHARED_CREDENTIALS_FILE", file.to_str().unwrap())],
            Some(home.path()),
        );
        assert_eq!(
            from_env_or_file(&e).unwrap().unwrap().0.access_key_id,
            "AKIDX"
        );
    }

    #[test]
    fn broken_sources_are_errors_not_fallthroughs() {
        let home = home_with_file();
        let partial = env(&[("AWS_ACCESS_KEY_ID", "AKID")], Some(home.path()));
        assert!(matches!(
            from_env_or_file(&partial),
            Err(CredsError::PartialEnv { .. })
        ));
        let missing = env(&[("AWS_PROFILE", "nope")], Some(home.path()));
        let err = from_env_or_file(&missing).unwrap_err();
        assert!(err.to_string().contains("`nope`"), "{err}");
        let broken = env(&[("AWS_PROFILE", "broken")], Some(home.path()));
        let err = from_env_or_file(&broken).unwrap_err();
        assert!(err.to_string().contains("aws_secret_access_key"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(".aws")).unwrap();
        std::fs::write(dir.path().join(".aws/credentials"), "[default\n").unwrap();
        let err = from_env_or_file(&env(&[], Some(dir.path()))).unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
    }

    #[test]
    fn nothing_configured_is_none() {
        let home = tempfile::tempdir().unwrap();
        assert!(from_env_or_file(&env(&[], Some(home.path())))
            .unwrap()
            .is_none());
        assert!(from_env_or_file(&env(&[], None)).unwrap().is_none());
    }

    #[tokio::test]
    async fn provider_without_any_source_names_the_options() {
        let home = tempfile::tempdir().unwrap();
        let p = Provider::new(env(&[], Some(home.path())), None);
        let err = p.get().await.unwrap_err();
        assert!(err.to_string().contains("AWS_ACCESS_KEY_ID"), "{err}");
    }
}
