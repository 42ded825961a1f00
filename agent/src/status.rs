//! `berth-agent status`: the node's phase and the cluster as this node last saw it, read from
//! the state alone (no IMDS, no EC2), so it answers even when the network does not.
//!
//! What it can say, from `/var/lib/berth`:
//! - the state `current` names, presented as this node's only when it was written in this boot
//!   (or the last run of this boot was for the same instance): a disk baked or cloned from
//!   another instance carries that instance's state, and a new instance is always a new boot;
//! - the last run's end (`last-run.json`), which also covers a run that failed before any state
//!   was written (IMDS unreachable, no role, an IPv6-only subnet).

use crate::state::{LastRun, State};

/// Everything `status` shows, as `--format json` prints it: the state's own keys (when there is
/// a state), then `last_run` and `this_node`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    #[serde(flatten)]
    pub state: Option<State>,
    pub last_run: Option<LastRun>,
    /// Whether the state is this node's: written in this boot, or by this boot's last run's
    /// instance. False for the state of the instance a disk was baked or cloned from.
    pub this_node: bool,
    /// Why the state is not presented as this node's; `None` when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provenance: Option<String>,
}

/// The identity of the boot `status` runs in.
pub struct Here<'a> {
    pub boot_id: &'a str,
    pub machine_id: Option<&'a str>,
}

impl Report {
    pub fn new(state: Option<State>, last_run: Option<LastRun>, here: &Here<'_>) -> Report {
        let mut provenance = None;
        let mut this_node = false;
        if let Some(s) = &state {
            let written_now = s.boot_id.as_deref() == Some(here.boot_id);
            let last_run_now = last_run.as_ref().is_some_and(|r| {
                r.boot_id.as_deref() == Some(here.boot_id)
                    && r.instance_id.as_deref() == Some(s.instance_id.as_str())
            });
            this_node = written_now || last_run_now;
            if !this_node {
                let other_machine = matches!(
                    (s.machine_id.as_deref(), here.machine_id),
                    (Some(a), Some(b)) if a != b
                );
                provenance = Some(if other_machine {
                    format!(
                        "the state of instance {} from another machine (machine-id {}): this \
                         disk was baked or cloned from it; the agent has not converged this \
                         instance yet",
                        s.instance_id,
                        s.machine_id.as_deref().unwrap_or("?")
                    )
                } else {
                    format!(
                        "the state of instance {} from another boot: the agent has not run in \
                         this boot yet (if this disk was cloned from another instance, this is \
                         that instance's state)",
                        s.instance_id
                    )
                });
            }
            if let Some(r) = &last_run {
                if r.instance_id
                    .as_deref()
                    .is_some_and(|id| id != s.instance_id)
                {
                    this_node = false;
                    provenance = Some(format!(
                        "the state of instance {}; the last run was for instance {}, which has \
                         no state yet",
                        s.instance_id,
                        r.instance_id.as_deref().unwrap_or("?")
                    ));
                }
            }
        }
        Report {
            state,
            last_run,
            this_node,
            provenance,
        }
    }
}

/// The report as text.
pub fn render_report(r: &Report) -> String {
    let mut out = String::new();
    if let Some(p) = &r.provenance {
        out.push_str(&format!("note:     {p}\n"));
    }
    if let Some(s) = &r.state {
        out.push_str(&render_state(s, r.this_node));
    } else {
        out.push_str("state:    none (no run of this instance got as far as writing one)\n");
    }
    if let Some(l) = &r.last_run {
        let instance = l
            .instance_id
            .as_deref()
            .map(|i| format!(" for {i}"))
            .unwrap_or_default();
        out.push_str(&format!(
            "last run: {}{instance} (exit {}, since {})\n",
            l.outcome,
            l.exit_code,
            utc(l.since)
        ));
        if let Some(e) = &l.error {
            out.push_str(&format!("  reason: {e}\n"));
        }
        if r.state.is_none() {
            for n in &l.notes {
                out.push_str(&format!("  note: {n}\n"));
            }
        }
    }
    out
}

/// Seconds since the epoch as an RFC 3339 UTC time (the civil-from-days algorithm of Howard
/// Hinnant's "chrono-Compatible Low-Level Date Algorithms").
fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The state as text, for this node's state or not.
pub fn render_text(s: &State) -> String {
    render_state(s, true)
}

fn render_state(s: &State, this_node: bool) -> String {
    let mut out = String::new();
    let role = s.role.map_or("?".to_string(), |r| r.to_string());
    let label = if this_node { "node:    " } else { "was:     " };
    out.push_str(&format!(
        "{label} {} ({}, {})\n",
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
            let me = match (n.instance_id == s.instance_id, this_node) {
                (true, true) => "  (this node)",
                (true, false) => "  (the instance this state is of)",
                _ => "",
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
    for note in &s.notes {
        out.push_str(&format!("note:     {note}\n"));
    }
    if let Some(e) = &s.etcd {
        out.push_str(&e.render());
    }
    if let Some(k) = &s.kubernetes {
        for line in k.render(crate::state::now_secs()) {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(boot: &str, machine: &str) -> State {
        State {
            instance_id: "i-0aaa".into(),
            node: Some("fed-minion".into()),
            boot_id: Some(boot.into()),
            machine_id: Some(machine.into()),
            ..State::default()
        }
    }

    #[test]
    fn utc_times() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_796_041_361), "2026-11-30T12:22:41Z");
    }

    #[test]
    fn only_this_boots_state_is_this_node() {
        let here = Here {
            boot_id: "b2",
            machine_id: Some("m2"),
        };
        let r = Report::new(Some(state("b2", "m2")), None, &here);
        assert!(r.this_node);
        assert!(render_report(&r).starts_with("node:     fed-minion (i-0aaa"));
        let r = Report::new(Some(state("b1", "m1")), None, &here);
        assert!(!r.this_node);
        let text = render_report(&r);
        assert!(text.contains("from another machine"), "{text}");
        assert!(!text.contains("node:     fed-minion"), "{text}");
        let r = Report::new(Some(state("b1", "m2")), None, &here);
        assert!(render_report(&r).contains("from another boot"));
        // The last run of this boot was for the same instance: it is this node.
        let run = LastRun {
            outcome: crate::state::RunOutcome::Converged,
            instance_id: Some("i-0aaa".into()),
            boot_id: Some("b2".into()),
            ..LastRun::default()
        };
        assert!(Report::new(Some(state("b1", "m2")), Some(run.clone()), &here).this_node);
        // ... or for another one, whatever the boot.
        let other = LastRun {
            outcome: crate::state::RunOutcome::Failed,
            instance_id: Some("i-0bbb".into()),
            error: Some("no role".into()),
            ..run
        };
        let r = Report::new(Some(state("b2", "m2")), Some(other), &here);
        assert!(!r.this_node);
        assert!(render_report(&r).contains("the last run was for instance i-0bbb"));
    }
}
