//! The agent's systemd units and their enablement, as files in the commit.
//!
//! Enablement is baked twice on purpose: the preset file makes a later
//! `systemctl preset-all` agree with us, and the `.wants/` symlinks in
//! `/usr/lib/systemd/system` make the units run on an image that never gets
//! a preset pass (an OSTree deploy copies `/usr` as is).

use crate::kind::{Classified, Kind};
use crate::overlay::{Node, Overlay, PathError, PRESET_DIR, UNIT_DIR};

/// The agent's units from `configs/systemd/`, built into berth-image; `--units DIR` overrides
/// them. One unit does first boot, the upgrade reboot and the reconcile (see its header).
pub const EMBEDDED: &[(&str, &str)] = &[
    (
        "berth-agent.service",
        include_str!("../../configs/systemd/berth-agent.service"),
    ),
    (
        "50-berth.preset",
        include_str!("../../configs/systemd/50-berth.preset"),
    ),
];

const UNIT_SUFFIXES: &[&str] = &[
    ".service", ".socket", ".timer", ".path", ".target", ".mount",
];

#[derive(Debug, thiserror::Error)]
pub enum UnitError {
    #[error("units: {name}: not a unit (.service, .socket, .timer, .path, .target, .mount) nor a .preset file")]
    UnknownKind { name: String },
    #[error("units: {name}: not valid UTF-8")]
    NotUtf8 { name: String },
    #[error("units: {name} line {line}: {what}")]
    Syntax {
        name: String,
        line: usize,
        what: String,
    },
    #[error("units: no .preset file among the units, so nothing says which units to enable")]
    NoPreset,
    #[error("units: the preset enables nothing among {units:?}; the agent would never run")]
    NothingEnabled { units: Vec<String> },
    #[error(transparent)]
    Path(#[from] PathError),
}

impl Classified for UnitError {
    fn kind(&self) -> Kind {
        match self {
            UnitError::UnknownKind { .. }
            | UnitError::NotUtf8 { .. }
            | UnitError::Syntax { .. }
            | UnitError::NoPreset
            | UnitError::NothingEnabled { .. } => Kind::Refused,
            UnitError::Path(e) => e.kind(),
        }
    }
}

/// One unit as berth bakes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitPlan {
    pub name: String,
    pub enabled: bool,
    /// Targets whose `.wants/` (or `.requires/`) directory links to it.
    pub wanted_by: Vec<String>,
    pub required_by: Vec<String>,
}

/// Adds the units, presets and enablement symlinks to `overlay`.
/// `files` are (file name, content) pairs, in any order.
pub fn plan(
    files: &[(String, Vec<u8>)],
    overlay: &mut Overlay,
) -> Result<Vec<UnitPlan>, UnitError> {
    let mut units = Vec::new();
    let mut presets = Vec::new();
    for (name, data) in files {
        let text =
            std::str::from_utf8(data).map_err(|_| UnitError::NotUtf8 { name: name.clone() })?;
        if name.contains('/') || name.starts_with('.') {
            return Err(UnitError::UnknownKind { name: name.clone() });
        }
        if name.ends_with(".preset") {
            presets.push((name.clone(), parse_preset(name, text)?));
            overlay.insert(
                &format!("{PRESET_DIR}/{name}"),
                Node::File {
                    data: data.clone(),
                    mode: 0o644,
                },
                &format!("preset {name}"),
            )?;
        } else if UNIT_SUFFIXES.iter().any(|s| name.ends_with(s)) {
            units.push((name.clone(), parse_install(name, text)?));
            overlay.insert(
                &format!("{UNIT_DIR}/{name}"),
                Node::File {
                    data: data.clone(),
                    mode: 0o644,
                },
                &format!("unit {name}"),
            )?;
        } else {
            return Err(UnitError::UnknownKind { name: name.clone() });
        }
    }
    if presets.is_empty() {
        return Err(UnitError::NoPreset);
    }
    // systemd reads presets in lexical order of file name, first match wins.
    presets.sort_by(|a, b| a.0.cmp(&b.0));
    units.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = Vec::new();
    for (name, (wanted_by, required_by)) in units {
        let enabled = presets
            .iter()
            .flat_map(|(_, rules)| rules.iter())
            .find(|(_, pattern)| glob_match(pattern, &name))
            .map(|(enable, _)| *enable)
            .unwrap_or(false);
        if enabled {
            for (targets, dir) in [(&wanted_by, "wants"), (&required_by, "requires")] {
                for t in targets {
                    overlay.insert(
                        &format!("{UNIT_DIR}/{t}.{dir}/{name}"),
                        Node::Symlink {
                            target: format!("../{name}"),
                        },
                        &format!("enablement of {name}"),
                    )?;
                }
            }
        }
        out.push(UnitPlan {
            name,
            enabled,
            wanted_by,
            required_by,
        });
    }
    if !out.iter().any(|u| u.enabled) {
        return Err(UnitError::NothingEnabled {
            units: out.into_iter().map(|u| u.name).collect(),
        });
    }
    Ok(out)
}

/// Reads `WantedBy=` and `RequiredBy=` from the `[Install]` section.
fn parse_install(name: &str, text: &str) -> Result<(Vec<String>, Vec<String>), UnitError> {
    let mut section = String::new();
    let mut wanted = Vec::new();
    let mut required = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') {
            if !line.ends_with(']') {
                return Err(UnitError::Syntax {
                    name: name.into(),
                    line: i + 1,
                    what: format!("unterminated section header `{line}`"),
                });
            }
            section = line[1..line.len() - 1].to_owned();
            continue;
        }
        if section != "Install" {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(UnitError::Syntax {
                name: name.into(),
                line: i + 1,
                what: format!("expected KEY=VALUE, found `{line}`"),
            });
        };
        let list = match key.trim() {
            "WantedBy" => &mut wanted,
            "RequiredBy" => &mut required,
            _ => continue,
        };
        for target in value.split_whitespace() {
            if !UNIT_SUFFIXES.iter().any(|s| target.ends_with(s)) || target.contains('/') {
                return Err(UnitError::Syntax {
                    name: name.into(),
                    line: i + 1,
                    what: format!("`{target}` is not a unit name"),
                });
            }
            list.push(target.to_owned());
        }
    }
    Ok((wanted, required))
}

/// Parses `enable PATTERN` / `disable PATTERN` lines.
fn parse_preset(name: &str, text: &str) -> Result<Vec<(bool, String)>, UnitError> {
    let mut rules = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let mut words = line.split_whitespace();
        let verb = words.next().unwrap_or_default();
        let pattern = words.next();
        let enable = match (verb, pattern) {
            ("enable", Some(_)) => true,
            ("disable", Some(_)) => false,
            _ => {
                return Err(UnitError::Syntax {
                    name: name.into(),
                    line: i + 1,
                    what: format!("expected `enable UNIT` or `disable UNIT`, found `{line}`"),
                })
            }
        };
        rules.push((enable, pattern.unwrap_or_default().to_owned()));
    }
    Ok(rules)
}

/// fnmatch-style `*` and `?`, as systemd presets use.
fn glob_match(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], n) || (!n.is_empty() && go(p, &n[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn embedded() -> Vec<(String, Vec<u8>)> {
        EMBEDDED
            .iter()
            .map(|(n, c)| (n.to_string(), c.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn embedded_units_are_enabled_with_wants_links() {
        let mut o = Overlay::new();
        let plans = plan(&embedded(), &mut o).unwrap();
        assert!(plans
            .iter()
            .all(|p| p.enabled && p.wanted_by == ["multi-user.target"]));
        assert_eq!(
            o.get("/usr/lib/systemd/system/multi-user.target.wants/berth-agent.service"),
            Some(&Node::Symlink {
                target: "../berth-agent.service".into()
            })
        );
        assert!(o
            .get("/usr/lib/systemd/system-preset/50-berth.preset")
            .is_some());
        assert!(o
            .get("/usr/lib/systemd/system/berth-agent.service")
            .is_some());
    }

    #[test]
    fn first_preset_match_wins_and_disabled_units_get_no_links() {
        let files = vec![
            (
                "a.service".to_string(),
                b"[Install]\nWantedBy=multi-user.target\n".to_vec(),
            ),
            (
                "b.service".to_string(),
                b"[Install]\nRequiredBy=x.target y.target\n".to_vec(),
            ),
            (
                "10-x.preset".to_string(),
                b"disable a.service\nenable *.service\n".to_vec(),
            ),
        ];
        let mut o = Overlay::new();
        let plans = plan(&files, &mut o).unwrap();
        assert!(!plans[0].enabled);
        assert!(plans[1].enabled);
        assert!(o
            .get("/usr/lib/systemd/system/multi-user.target.wants/a.service")
            .is_none());
        assert!(o
            .get("/usr/lib/systemd/system/y.target.requires/b.service")
            .is_some());
    }

    #[test]
    fn bad_inputs_name_the_file_and_line() {
        let mut o = Overlay::new();
        let files = vec![("x.conf".to_string(), b"".to_vec())];
        assert!(matches!(
            plan(&files, &mut o),
            Err(UnitError::UnknownKind { .. })
        ));
        let files = vec![
            (
                "a.service".to_string(),
                b"[Install]\nWantedBy=../etc\n".to_vec(),
            ),
            ("1.preset".to_string(), b"enable a.service\n".to_vec()),
        ];
        let err = plan(&files, &mut o).unwrap_err().to_string();
        assert!(err.contains("a.service line 2"), "{err}");
        let files = vec![(
            "a.service".to_string(),
            b"[Install]\nWantedBy=m.target\n".to_vec(),
        )];
        assert!(matches!(plan(&files, &mut o), Err(UnitError::NoPreset)));
    }

    #[test]
    fn glob() {
        assert!(glob_match("berth-*.service", "berth-agent.service"));
        assert!(glob_match("*", "x"));
        assert!(!glob_match("a?c", "ac"));
    }
}
