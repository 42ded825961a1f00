//! `berth-agent status`: the node's phase and the cluster as this node last saw it, read from
//! the state alone (no IMDS, no EC2), so it answers even when the network does not.

use crate::state::State;

pub fn render_text(s: &State) -> String {
    let mut out = String::new();
    let role = s.role.map_or("?".to_string(), |r| r.to_string());
    out.push_str(&format!(
        "node:     {} ({}, {})\n",
        s.node.as_deref().unwrap_or("?"),
        s.instance_id,
        role
    ));
    out.push_str(&format!(
        "cluster:  {}\n",
        s.cluster
            .as_deref()
            .unwrap_or("(every instance in the security groups)")
    ));
    out.push_str(&format!(
        "phase:    {}\n",
        serde_json::to_value(s.phase)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    ));
    if let Some(u) = &s.upgrade {
        out.push_str(&format!(
            "upgrade:  {}{}\n",
            u.outcome,
            u.detail
                .as_deref()
                .map(|d| format!(" ({d})"))
                .unwrap_or_default()
        ));
    }
    if let Some(c) = &s.condition {
        out.push_str(&format!("state:    {c}\n"));
    }
    if let Some(e) = &s.last_error {
        out.push_str(&format!("error:    {e}\n"));
    }
    if !s.pending_restarts.is_empty() {
        let p: Vec<&str> = s.pending_restarts.iter().map(String::as_str).collect();
        out.push_str(&format!("pending:  restart {}\n", p.join(", ")));
    }
    if let Some(m) = &s.membership {
        out.push_str(&format!("members:  {}\n", m.nodes.len()));
        for n in &m.nodes {
            let me = if n.instance_id == s.instance_id {
                "  (this node)"
            } else {
                ""
            };
            out.push_str(&format!(
                "  {:<24} {:<16} {:<7} {}{me}\n",
                n.name,
                n.private_ip.to_string(),
                n.role.as_str(),
                n.instance_id
            ));
        }
        for note in &m.notes {
            out.push_str(&format!("  note: {note}\n"));
        }
    }
    out
}
