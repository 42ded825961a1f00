//! Profiles: which files, units and unit fixes a role gets, as data (`configs/profiles/NAME/`).
//!
//! A profile is a directory holding `profile.yaml` (the manifest) and `templates/`. The agent looks
//! for it under the host's `/etc/berth/profiles/`, then the image's `/usr/share/berth/profiles/`;
//! `legacy-2015` is also built into the binary so that an agent copied onto a bare host works.
//! A profile is validated as a whole when loaded: a bad manifest fails before anything is planned.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::Role;
use crate::plan::Mode;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    files: Vec<FileSpec>,
    #[serde(default)]
    unit_fixes: Vec<UnitFix>,
    roles: BTreeMap<String, RoleUnits>,
    #[serde(default)]
    inputs: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    etcd_cluster: Option<EtcdCluster>,
    #[serde(default)]
    kubernetes_cluster: Option<KubernetesCluster>,
}

/// A profile's Kubernetes tier through kubeadm, on top of its etcd tier (see `kube/`): a control
/// plane on every master as systemd units, minions joined with a bootstrap token.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KubernetesCluster {
    /// kubeadm's `kubernetesVersion` (`v1.20.2`), unless user-data sets `kubernetes.version`.
    pub version: String,
    /// Where kubeadm, kubectl and the control plane's binaries are.
    pub bin_dir: String,
    /// The name every node resolves to a live API server (the managed block of `/etc/hosts`
    /// points it at the master itself on a master, at a master that answers on a minion); it is
    /// kubeadm's `controlPlaneEndpoint`.
    pub api_name: String,
    /// The API server's secure port.
    pub api_port: u16,
    /// kubeadm's `networking.podSubnet`.
    pub pod_subnet: String,
}

/// A profile's etcd tier: every master is a member of one etcd cluster that the agent forms and
/// heals (see `etcd/`). Paths are on the host.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EtcdCluster {
    /// The `ETCD_*` environment file etcd.service reads.
    pub conf: String,
    /// Its template, a file name in templates/.
    pub template: String,
    pub unit: String,
    pub data_dir: String,
    /// Where the CA certificate, the member's certificates and keys go.
    pub pki_dir: String,
    /// The user etcd runs as: its keys are owned by it.
    pub user: String,
}

/// One rendered file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    pub path: String,
    pub template: String,
    pub roles: Vec<String>,
    /// "0644" when the manifest says nothing.
    #[serde(default)]
    pub mode: Mode,
}

/// A textual fix of a shipped unit, written to `/etc/systemd/system/UNIT`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UnitFix {
    pub unit: String,
    pub replace: Vec<Replace>,
    #[serde(default)]
    pub why: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Replace {
    pub from: String,
    pub to: String,
}

/// The units of one role, in the order they are acted on.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct RoleUnits {
    /// Restarted when an input changed (started otherwise), then enabled.
    #[serde(default)]
    pub run: Vec<String>,
    /// Stopped, then disabled.
    #[serde(default)]
    pub halt: Vec<String>,
}

/// A loaded, validated profile.
#[derive(Debug, Clone)]
pub struct Profile {
    pub name: String,
    pub description: String,
    /// Where it was loaded from (`built-in` for the embedded copy).
    pub origin: String,
    pub files: Vec<FileSpec>,
    pub unit_fixes: Vec<UnitFix>,
    pub roles: BTreeMap<Role, RoleUnits>,
    /// unit → the files it reads.
    pub inputs: BTreeMap<String, Vec<String>>,
    /// template name → source.
    pub templates: BTreeMap<String, String>,
    /// The etcd tier, for profiles whose masters form an etcd cluster.
    pub etcd: Option<EtcdCluster>,
    /// The Kubernetes tier through kubeadm; needs the etcd tier.
    pub kubernetes: Option<KubernetesCluster>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error(
        "profile `{name}` not found in {searched}; install it there, or set `profile:` to one \
         that exists (built in: legacy-2015, kubeadm)"
    )]
    NotFound { name: String, searched: String },
    #[error("profile {origin}: reading {path}: {source}")]
    Read {
        origin: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("profile {origin}: profile.yaml: {message}")]
    Manifest { origin: String, message: String },
}

/// The legacy-2015 profile as built into the binary, from `configs/profiles/legacy-2015/`.
const BUILTIN_LEGACY_2015: &[(&str, &str)] = &[
    (
        "profile.yaml",
        include_str!("../../configs/profiles/legacy-2015/profile.yaml"),
    ),
    (
        "templates/etcd.conf",
        include_str!("../../configs/profiles/legacy-2015/templates/etcd.conf"),
    ),
    (
        "templates/config",
        include_str!("../../configs/profiles/legacy-2015/templates/config"),
    ),
    (
        "templates/apiserver",
        include_str!("../../configs/profiles/legacy-2015/templates/apiserver"),
    ),
    (
        "templates/controller-manager",
        include_str!("../../configs/profiles/legacy-2015/templates/controller-manager"),
    ),
    (
        "templates/kubelet",
        include_str!("../../configs/profiles/legacy-2015/templates/kubelet"),
    ),
];

/// The directories searched for profiles, relative to the host root, most specific first.
pub const SEARCH_DIRS: &[&str] = &["etc/berth/profiles", "usr/share/berth/profiles"];

impl Profile {
    /// Finds `name` under `root`'s profile directories, else the built-in copy.
    pub fn find(root: &Path, name: &str) -> Result<Profile, ProfileError> {
        for dir in SEARCH_DIRS {
            let d = root.join(dir).join(name);
            if d.join("profile.yaml").is_file() {
                return Profile::load_dir(&d);
            }
        }
        if name == "legacy-2015" {
            return Profile::builtin();
        }
        if name == "kubeadm" {
            return Profile::builtin_kubeadm();
        }
        Err(ProfileError::NotFound {
            name: name.to_string(),
            searched: SEARCH_DIRS
                .iter()
                .map(|d| format!("/{d}"))
                .collect::<Vec<_>>()
                .join(" and "),
        })
    }

    pub fn builtin() -> Result<Profile, ProfileError> {
        let get = |p: &str| {
            BUILTIN_LEGACY_2015
                .iter()
                .find(|(n, _)| *n == p)
                .map(|(_, s)| s.to_string())
        };
        Profile::from_parts("built-in legacy-2015", &get("profile.yaml").unwrap(), |t| {
            get(&format!("templates/{t}"))
        })
    }

    /// The kubeadm profile as built into the binary, from `configs/profiles/kubeadm/`.
    pub fn builtin_kubeadm() -> Result<Profile, ProfileError> {
        Profile::from_parts(
            "built-in kubeadm",
            include_str!("../../configs/profiles/kubeadm/profile.yaml"),
            |t| {
                (t == "etcd.conf").then(|| {
                    include_str!("../../configs/profiles/kubeadm/templates/etcd.conf").to_string()
                })
            },
        )
    }

    /// Loads a profile directory: `profile.yaml` and the templates it names.
    pub fn load_dir(dir: &Path) -> Result<Profile, ProfileError> {
        let origin = dir.display().to_string();
        let read = |p: PathBuf| {
            std::fs::read_to_string(&p).map_err(|source| ProfileError::Read {
                origin: origin.clone(),
                path: p,
                source,
            })
        };
        let manifest = read(dir.join("profile.yaml"))?;
        Profile::from_parts(&origin, &manifest, |t| {
            std::fs::read_to_string(dir.join("templates").join(t)).ok()
        })
    }

    fn from_parts(
        origin: &str,
        manifest: &str,
        mut template: impl FnMut(&str) -> Option<String>,
    ) -> Result<Profile, ProfileError> {
        let bad = |message: String| ProfileError::Manifest {
            origin: origin.to_string(),
            message,
        };
        let m: Manifest = serde_norway::from_str(manifest).map_err(|e| bad(e.to_string()))?;
        let mut roles = BTreeMap::new();
        for (r, units) in m.roles {
            let role = Role::parse(&r)
                .ok_or_else(|| bad(format!("roles: unknown role `{r}` (master or minion)")))?;
            for u in units.run.iter().chain(&units.halt) {
                if !valid_unit_name(u) {
                    return Err(bad(format!("roles.{r}: `{u}` is not a unit name")));
                }
            }
            roles.insert(role, units);
        }
        let mut templates = BTreeMap::new();
        for f in &m.files {
            if !valid_abs_path(&f.path) {
                return Err(bad(format!(
                    "files: `{}` is not an absolute, normalized path",
                    f.path
                )));
            }
            for r in &f.roles {
                Role::parse(r)
                    .ok_or_else(|| bad(format!("files: {}: unknown role `{r}`", f.path)))?;
            }
            if f.template.contains('/') || f.template.starts_with('.') {
                return Err(bad(format!(
                    "files: {}: template `{}` must be a file name in templates/",
                    f.path, f.template
                )));
            }
            let src = template(&f.template).ok_or_else(|| {
                bad(format!(
                    "files: {}: template `templates/{}` is missing",
                    f.path, f.template
                ))
            })?;
            templates.insert(f.template.clone(), src);
        }
        for fix in &m.unit_fixes {
            if !valid_unit_name(&fix.unit) || fix.replace.is_empty() {
                return Err(bad(format!(
                    "unit_fixes: `{}` needs a unit name and at least one replacement",
                    fix.unit
                )));
            }
            if fix.replace.iter().any(|r| r.from.is_empty()) {
                return Err(bad(format!(
                    "unit_fixes: {}: an empty `from` would match everywhere",
                    fix.unit
                )));
            }
        }
        for (unit, files) in &m.inputs {
            if !valid_unit_name(unit) {
                return Err(bad(format!("inputs: `{unit}` is not a unit name")));
            }
            for f in files {
                if !valid_abs_path(f) {
                    return Err(bad(format!(
                        "inputs: {unit}: `{f}` is not an absolute path"
                    )));
                }
            }
        }
        if let Some(e) = &m.etcd_cluster {
            for p in [&e.conf, &e.data_dir, &e.pki_dir] {
                if !valid_abs_path(p) {
                    return Err(bad(format!(
                        "etcd_cluster: `{p}` is not an absolute, normalized path"
                    )));
                }
            }
            if !valid_unit_name(&e.unit) {
                return Err(bad(format!(
                    "etcd_cluster: `{}` is not a unit name",
                    e.unit
                )));
            }
            if e.user.is_empty()
                || !e
                    .user
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
            {
                return Err(bad(format!(
                    "etcd_cluster: `{}` is not a user name",
                    e.user
                )));
            }
            if e.template.contains('/') || e.template.starts_with('.') {
                return Err(bad(format!(
                    "etcd_cluster: template `{}` must be a file name in templates/",
                    e.template
                )));
            }
            let src = template(&e.template).ok_or_else(|| {
                bad(format!(
                    "etcd_cluster: template `templates/{}` is missing",
                    e.template
                ))
            })?;
            templates.insert(e.template.clone(), src);
        }
        if let Some(k) = &m.kubernetes_cluster {
            if m.etcd_cluster.is_none() {
                return Err(bad(
                    "kubernetes_cluster: needs an etcd_cluster section (its API servers store \
                     in the masters' etcd)"
                        .to_string(),
                ));
            }
            if !valid_abs_path(&k.bin_dir) {
                return Err(bad(format!(
                    "kubernetes_cluster: `{}` is not an absolute, normalized path",
                    k.bin_dir
                )));
            }
            if !crate::config::valid_kubernetes_version(&k.version) {
                return Err(bad(format!(
                    "kubernetes_cluster: version `{}` is not like `v1.20.2`",
                    k.version
                )));
            }
            if k.api_name.len() > 253
                || k.api_name.split('.').count() < 2
                || !k.api_name.split('.').all(crate::discovery::valid_label)
            {
                return Err(bad(format!(
                    "kubernetes_cluster: api_name `{}` is not a DNS name with a dot",
                    k.api_name
                )));
            }
            if k.api_port == 0 {
                return Err(bad("kubernetes_cluster: api_port 0".to_string()));
            }
            if !crate::config::valid_ipv4_cidr(&k.pod_subnet) {
                return Err(bad(format!(
                    "kubernetes_cluster: pod_subnet `{}` is not an IPv4 CIDR block",
                    k.pod_subnet
                )));
            }
        }
        Ok(Profile {
            name: m.name,
            description: m.description,
            origin: origin.to_string(),
            files: m.files,
            unit_fixes: m.unit_fixes,
            roles,
            inputs: m.inputs,
            templates,
            etcd: m.etcd_cluster,
            kubernetes: m.kubernetes_cluster,
        })
    }

    /// The files a role gets.
    pub fn files_for(&self, role: Role) -> impl Iterator<Item = &FileSpec> {
        self.files
            .iter()
            .filter(move |f| f.roles.iter().any(|r| r == role.as_str()))
    }

    pub fn units_for(&self, role: Role) -> RoleUnits {
        self.roles.get(&role).cloned().unwrap_or_default()
    }
}

pub fn valid_unit_name(s: &str) -> bool {
    let Some((stem, kind)) = s.rsplit_once('.') else {
        return false;
    };
    !stem.is_empty()
        && s.len() <= 255
        && matches!(
            kind,
            "service" | "socket" | "target" | "timer" | "path" | "mount"
        )
        && stem
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"@._-:".contains(&b))
}

fn valid_abs_path(p: &str) -> bool {
    p.starts_with('/')
        && p.len() > 1
        && !p.ends_with('/')
        && p.split('/')
            .skip(1)
            .all(|c| !c.is_empty() && c != "." && c != "..")
        && !p.contains('\0')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_profile_loads() {
        let p = Profile::builtin().unwrap();
        assert_eq!(p.name, "legacy-2015");
        assert_eq!(p.files_for(Role::Master).count(), 4);
        assert_eq!(p.files_for(Role::Minion).count(), 3);
        assert_eq!(
            p.units_for(Role::Master).halt,
            ["kube-proxy.service", "kubelet.service", "docker.service"]
        );
    }

    #[test]
    fn profile_dir_matches_builtin() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/profiles/legacy-2015");
        let p = Profile::load_dir(&dir).unwrap();
        let b = Profile::builtin().unwrap();
        assert_eq!(p.templates, b.templates);
        assert_eq!(p.files, b.files);
    }

    #[test]
    fn bad_manifests_are_refused() {
        let ok_template = |_: &str| Some(String::new());
        for (manifest, expect) in [
            ("name: x\nroles: {captain: {}}\n", "unknown role `captain`"),
            (
                "name: x\nroles: {}\nfiles: [{path: ../etc/x, template: t, roles: [master]}]\n",
                "not an absolute",
            ),
            (
                "name: x\nroles: {}\nfiles: [{path: /etc/x, template: t, roles: [master], mode: \"999\"}]\n",
                "octal mode",
            ),
            ("name: x\nroles: {master: {run: [\"a b\"]}}\n", "not a unit name"),
            ("name: x\nroles: {}\nbogus: 1\n", "unknown field `bogus`"),
        ] {
            let e = Profile::from_parts("test", manifest, ok_template).unwrap_err();
            assert!(e.to_string().contains(expect), "{e}");
        }
        let e = Profile::from_parts(
            "test",
            "name: x\nroles: {}\nfiles: [{path: /etc/x, template: t, roles: [master]}]\n",
            |_| None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("templates/t` is missing"), "{e}");
    }
}
