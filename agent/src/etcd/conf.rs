//! `/etc/etcd/etcd.conf`, rendered from the profile's template.

use std::net::Ipv4Addr;

use minijinja::{context, Environment, UndefinedBehavior};

use crate::profile::EtcdCluster;

/// `new` for the seed, `existing` for every join (etcd's `--initial-cluster-state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitialState {
    New,
    Existing,
}

impl InitialState {
    pub fn as_str(self) -> &'static str {
        match self {
            InitialState::New => "new",
            InitialState::Existing => "existing",
        }
    }
}

/// What the file says for one start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfInputs<'a> {
    pub name: &'a str,
    pub ip: Ipv4Addr,
    /// `name=peer URL` pairs.
    pub initial_cluster: &'a [(String, String)],
    pub state: InitialState,
    pub cluster: &'a str,
}

/// The file's text.
pub fn render(spec: &EtcdCluster, template: &str, i: &ConfInputs<'_>) -> Result<String, String> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);
    env.add_template("etcd.conf", template)
        .map_err(|e| e.to_string())?;
    let initial_cluster = i
        .initial_cluster
        .iter()
        .map(|(n, u)| format!("{n}={u}"))
        .collect::<Vec<_>>()
        .join(",");
    env.get_template("etcd.conf")
        .and_then(|t| {
            t.render(context! {
                name => i.name,
                ip => i.ip.to_string(),
                data_dir => spec.data_dir,
                pki_dir => spec.pki_dir,
                initial_cluster => initial_cluster,
                initial_cluster_state => i.state.as_str(),
                initial_cluster_token => format!("berth-{}", i.cluster),
            })
        })
        .map_err(|e| e.to_string())
}

/// The `ETCD_INITIAL_CLUSTER` pairs and state an existing file was written with, so that a run
/// that only makes sure the member runs writes the same bytes (etcd reads them at the first
/// start only).
pub fn initial_of(text: &str) -> Option<(Vec<(String, String)>, InitialState)> {
    let mut cluster = None;
    let mut state = None;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("ETCD_INITIAL_CLUSTER=") {
            cluster = Some(
                v.split(',')
                    .filter_map(|p| p.split_once('='))
                    .map(|(n, u)| (n.to_string(), u.to_string()))
                    .collect::<Vec<_>>(),
            );
        } else if let Some(v) = line.strip_prefix("ETCD_INITIAL_CLUSTER_STATE=") {
            state = match v.trim() {
                "new" => Some(InitialState::New),
                "existing" => Some(InitialState::Existing),
                _ => None,
            };
        }
    }
    Some((cluster?, state?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Profile;

    #[test]
    fn the_kubeadm_template_renders_every_etcd_setting_and_reads_back() {
        let p = Profile::builtin_kubeadm().unwrap();
        let spec = p.etcd.clone().unwrap();
        let ic = vec![
            ("i-0a".to_string(), "https://10.0.0.1:2380".to_string()),
            ("i-0b".to_string(), "https://10.0.0.2:2380".to_string()),
        ];
        let text = render(
            &spec,
            &p.templates["etcd.conf"],
            &ConfInputs {
                name: "i-0b",
                ip: Ipv4Addr::new(10, 0, 0, 2),
                initial_cluster: &ic,
                state: InitialState::Existing,
                cluster: "demo",
            },
        )
        .unwrap();
        for line in [
            "ETCD_NAME=i-0b\n",
            "ETCD_LISTEN_CLIENT_URLS=https://10.0.0.2:2379,https://127.0.0.1:2379\n",
            "ETCD_INITIAL_CLUSTER=i-0a=https://10.0.0.1:2380,i-0b=https://10.0.0.2:2380\n",
            "ETCD_INITIAL_CLUSTER_STATE=existing\n",
            "ETCD_INITIAL_CLUSTER_TOKEN=berth-demo\n",
            "ETCD_PEER_CLIENT_CERT_AUTH=true\n",
        ] {
            assert!(text.contains(line), "{line}\n{text}");
        }
        assert_eq!(initial_of(&text), Some((ic, InitialState::Existing)));
    }
}
