//! Reads what the user asked to layer (agent, units, profiles, config, extra
//! files) from disk into an [`Overlay`], validating all of it before the
//! repository is touched.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::agent::{self, AgentError};
use crate::kind::{Classified, Kind};
use crate::overlay::{Node, Overlay, PathError, AGENT_PATH, CONFIG_PATH, PROFILE_DIR};
use crate::units::{self, UnitError, UnitPlan};

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error(transparent)]
    Units(#[from] UnitError),
    #[error(transparent)]
    Path(#[from] PathError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("profiles {path}: no such profile directory; pass --profiles a directory of profiles such as configs/profiles")]
    ProfilesMissing { path: PathBuf },
    #[error("profiles {path}: holds no profile (a subdirectory with a {PROFILE_MANIFEST}); pass the directory of profiles such as configs/profiles, not a single profile or an empty one")]
    NoProfiles { path: PathBuf },
    #[error("profile {path}: no {PROFILE_MANIFEST}, so it is not a profile; remove the directory or add its manifest")]
    NoManifest { path: PathBuf },
    #[error("profile {path}: {detail}")]
    BadManifest { path: PathBuf, detail: String },
    #[error("profiles {path}: {what}; profiles hold only directories and regular files")]
    ProfileEntry { path: PathBuf, what: &'static str },
    #[error("config {path}: not valid YAML: {detail}")]
    ConfigYaml { path: PathBuf, detail: String },
    #[error("config {path}: must be a YAML mapping (key: value), like /etc/berth/config.yaml")]
    ConfigNotMapping { path: PathBuf },
    #[error("--add-file {arg}: expected SRC:DEST, with DEST an absolute path in the image")]
    AddFileSyntax { arg: String },
    #[error("--add-file {path}: not a regular file")]
    AddFileNotRegular { path: PathBuf },
    #[error("--agent-version {version}: only letters, digits and . - + _ are allowed")]
    AgentVersion { version: String },
}

impl Classified for InputError {
    fn kind(&self) -> Kind {
        match self {
            InputError::Agent(e) => e.kind(),
            InputError::Units(e) => e.kind(),
            InputError::Path(e) => e.kind(),
            // The inputs are the user's files: one that cannot be read is refused like a bad one.
            InputError::Io { .. }
            | InputError::ProfilesMissing { .. }
            | InputError::NoProfiles { .. }
            | InputError::NoManifest { .. }
            | InputError::BadManifest { .. }
            | InputError::ProfileEntry { .. }
            | InputError::ConfigYaml { .. }
            | InputError::ConfigNotMapping { .. }
            | InputError::AddFileSyntax { .. }
            | InputError::AddFileNotRegular { .. }
            | InputError::AgentVersion { .. } => Kind::Refused,
        }
    }
}

/// Every profile directory holds this manifest (see configs/profiles/).
pub(crate) const PROFILE_MANIFEST: &str = "profile.yaml";

/// What the user asked for, as given on the command line.
#[derive(Debug, Clone, Default)]
pub struct LayerRequest {
    pub agent: PathBuf,
    pub agent_version: Option<String>,
    /// `None`: the units embedded in berth-image.
    pub units: Option<PathBuf>,
    pub profiles: Option<PathBuf>,
    pub config: Option<PathBuf>,
    /// `(SRC, DEST)` pairs.
    pub add_files: Vec<(PathBuf, String)>,
}

/// The validated layer: the overlay plus the facts recorded in the commit.
#[derive(Debug, Clone)]
pub struct Layer {
    pub overlay: Overlay,
    pub agent_version: String,
    pub agent_sha256: String,
    pub units: Vec<UnitPlan>,
    pub profiles: Vec<String>,
}

/// Parses one `--add-file SRC:DEST`.
pub fn parse_add_file(arg: &str) -> Result<(PathBuf, String), InputError> {
    match arg.rsplit_once(':') {
        Some((src, dest)) if !src.is_empty() && dest.starts_with('/') => {
            Ok((PathBuf::from(src), dest.to_owned()))
        }
        _ => Err(InputError::AddFileSyntax { arg: arg.into() }),
    }
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> InputError + 'a {
    move |source| InputError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

pub fn load(req: &LayerRequest) -> Result<Layer, InputError> {
    let mut overlay = Overlay::new();

    let agent = agent::load(&req.agent)?;
    let agent_version = match &req.agent_version {
        Some(v) => {
            if v.is_empty() || !v.chars().all(|c| c.is_ascii_alphanumeric() || ".-+_".contains(c)) {
                return Err(InputError::AgentVersion { version: v.clone() });
            }
            v.clone()
        }
        None => agent::probe_version(&req.agent).unwrap_or_else(|| {
            log::warn!(
                "agent {}: could not learn its version from `--version`; recording `unknown` (pass --agent-version)",
                req.agent.display()
            );
            "unknown".to_owned()
        }),
    };
    overlay.insert(
        AGENT_PATH,
        Node::File {
            data: agent.bytes,
            mode: 0o755,
        },
        "--agent",
    )?;

    let unit_files = match &req.units {
        None => units::EMBEDDED
            .iter()
            .map(|(n, c)| (n.to_string(), c.as_bytes().to_vec()))
            .collect(),
        Some(dir) => read_flat_dir(dir)?,
    };
    let units = units::plan(&unit_files, &mut overlay)?;

    let mut profiles = Vec::new();
    if let Some(dir) = &req.profiles {
        profiles = load_profiles(dir, &mut overlay)?;
    }

    if let Some(path) = &req.config {
        let data = std::fs::read(path).map_err(io("config", path))?;
        check_config(path, &data)?;
        overlay.insert(CONFIG_PATH, Node::File { data, mode: 0o644 }, "--config")?;
    }

    for (src, dest) in &req.add_files {
        let meta = std::fs::metadata(src).map_err(io("--add-file", src))?;
        if !meta.is_file() {
            return Err(InputError::AddFileNotRegular { path: src.clone() });
        }
        let data = std::fs::read(src).map_err(io("--add-file", src))?;
        // Only the exec bit carries over: the builder's umask and owner never do.
        let mode = if meta.permissions().mode() & 0o111 != 0 {
            0o755
        } else {
            0o644
        };
        overlay.insert(
            dest,
            Node::File { data, mode },
            &format!("--add-file {}", src.display()),
        )?;
    }

    Ok(Layer {
        overlay,
        agent_version,
        agent_sha256: agent.sha256,
        units,
        profiles,
    })
}

fn check_config(path: &Path, data: &[u8]) -> Result<(), InputError> {
    let value: serde_norway::Value =
        serde_norway::from_slice(data).map_err(|e| InputError::ConfigYaml {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
    if !value.is_mapping() {
        return Err(InputError::ConfigNotMapping {
            path: path.to_owned(),
        });
    }
    Ok(())
}

/// Regular files directly inside `dir`, sorted by name.
fn read_flat_dir(dir: &Path) -> Result<Vec<(String, Vec<u8>)>, InputError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io("units", dir))? {
        let entry = entry.map_err(io("units", dir))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type().map_err(io("units", &path))?.is_dir() {
            continue;
        }
        out.push((name, std::fs::read(&path).map_err(io("units", &path))?));
    }
    out.sort();
    Ok(out)
}

/// Copies every profile under `dir` to `/usr/share/berth/profiles/<name>/`.
fn load_profiles(dir: &Path, overlay: &mut Overlay) -> Result<Vec<String>, InputError> {
    let meta = std::fs::metadata(dir).map_err(|_| InputError::ProfilesMissing {
        path: dir.to_owned(),
    })?;
    if !meta.is_dir() {
        return Err(InputError::ProfilesMissing {
            path: dir.to_owned(),
        });
    }
    let mut names = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(io("profiles", dir))?
        .collect::<Result<_, _>>()
        .map_err(io("profiles", dir))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let ft = entry.file_type().map_err(io("profiles", &path))?;
        if !ft.is_dir() {
            // README and the like next to the profiles are not profiles.
            log::info!("profiles: skipping {}: not a directory", path.display());
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        check_manifest(&path, &name)?;
        let mut one = Overlay::new();
        copy_tree(&path, &format!("{PROFILE_DIR}/{name}"), &mut one)?;
        for (p, n) in one.iter() {
            overlay.insert(p, n.clone(), &format!("profile {name}"))?;
        }
        names.push(name);
    }
    if names.is_empty() {
        return Err(InputError::NoProfiles {
            path: dir.to_owned(),
        });
    }
    Ok(names)
}

/// A profile has a manifest that is a YAML mapping; its `name`, when
/// given, is the directory's name (the agent finds profiles by name).
fn check_manifest(dir: &Path, name: &str) -> Result<(), InputError> {
    let path = dir.join(PROFILE_MANIFEST);
    if !path.is_file() {
        return Err(InputError::NoManifest {
            path: dir.to_owned(),
        });
    }
    let data = std::fs::read(&path).map_err(io("profile", &path))?;
    let bad = |detail: String| InputError::BadManifest {
        path: path.clone(),
        detail,
    };
    let value: serde_norway::Value =
        serde_norway::from_slice(&data).map_err(|e| bad(format!("not valid YAML: {e}")))?;
    let Some(map) = value.as_mapping() else {
        return Err(bad("must be a YAML mapping".into()));
    };
    match map.get("name") {
        None => Ok(()),
        Some(serde_norway::Value::String(n)) if n == name => Ok(()),
        Some(other) => Err(bad(format!(
            "name is {other:?} but the directory is {name:?}; the agent looks profiles up by directory name"
        ))),
    }
}

fn copy_tree(src: &Path, dest: &str, overlay: &mut Overlay) -> Result<(), InputError> {
    let mut entries: Vec<_> = std::fs::read_dir(src)
        .map_err(io("profiles", src))?
        .collect::<Result<_, _>>()
        .map_err(io("profiles", src))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let target = format!("{dest}/{name}");
        let ft = entry.file_type().map_err(io("profiles", &path))?;
        if ft.is_dir() {
            overlay.insert(&target, Node::Dir, "profiles")?;
            copy_tree(&path, &target, overlay)?;
        } else if ft.is_file() {
            let data = std::fs::read(&path).map_err(io("profiles", &path))?;
            overlay.insert(&target, Node::File { data, mode: 0o644 }, "profiles")?;
        } else {
            let what = if ft.is_symlink() {
                "is a symlink"
            } else {
                "is a special file"
            };
            return Err(InputError::ProfileEntry { path, what });
        }
    }
    Ok(())
}
