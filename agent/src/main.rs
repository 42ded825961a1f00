//! The `berth-agent` command: `run`, `plan`, `status`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use url::Url;

use berth_agent::host::dbus::{DbusAddresses, DbusHost};
use berth_agent::host::record::RecordingHost;
use berth_agent::host::Host;
use berth_agent::run::{exit, Agent, Options, Outcome, RunError};
use berth_agent::state::{Current, LastRun, State};
use berth_agent::{logging, notify, plan, poll, status};

#[derive(Parser)]
#[command(
    name = "berth-agent",
    version,
    about = "Configures this EC2 instance as a node of its cluster, and keeps it configured"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct Common {
    /// Prefix of every host path (files, state); `/` on a real host.
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// IMDS base URL; repeat to give several, tried in order. Default: http://169.254.169.254/
    /// then http://[fd00:ec2::254]/.
    #[arg(long = "imds-endpoint", value_name = "URL")]
    imds_endpoints: Vec<Url>,
    /// EC2 API endpoint. Default: https://ec2.REGION.amazonaws.com/ for the instance's region.
    #[arg(long, value_name = "URL")]
    ec2_endpoint: Option<Url>,
    /// Parameter Store (SSM) endpoint, for profiles with cluster secrets. Default:
    /// https://ssm.REGION.amazonaws.com/ for the instance's region.
    #[arg(long, value_name = "URL")]
    ssm_endpoint: Option<Url>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Converge this node; without --once, keep it converged as the cluster changes.
    Run {
        #[command(flatten)]
        common: Common,
        /// Converge once and exit.
        #[arg(long)]
        once: bool,
        /// Record unit and upgrade actions in the state and output instead of calling D-Bus.
        #[arg(long)]
        no_host_actions: bool,
        /// D-Bus address of systemd and logind (default: the system bus).
        #[arg(long, value_name = "ADDRESS")]
        system_bus: Option<String>,
        /// D-Bus address of rpm-ostree's daemon (default: the same bus as systemd).
        #[arg(long, value_name = "ADDRESS")]
        rpmostree_bus: Option<String>,
    },
    /// Show what `run` would do; changes nothing.
    Plan {
        #[command(flatten)]
        common: Common,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// This node's phase and the cluster as last seen, from the state alone.
    Status {
        #[arg(long, default_value = "/")]
        root: PathBuf,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
}

fn options(c: &Common, host_actions: bool) -> Options {
    Options {
        root: c.root.clone(),
        imds_endpoints: c.imds_endpoints.clone(),
        ec2_endpoint: c.ec2_endpoint.clone(),
        ssm_endpoint: c.ssm_endpoint.clone(),
        host_actions,
    }
}

fn fail(e: &RunError) -> ExitCode {
    log::error!("{e}");
    ExitCode::from(e.exit_code() as u8)
}

fn main() -> ExitCode {
    logging::init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts");
    rt.block_on(async move {
        match cli.command {
            Command::Status { root, format } => status_cmd(root, format),
            Command::Plan { common, format } => plan_cmd(&common, format).await,
            Command::Run {
                common,
                once,
                no_host_actions,
                system_bus,
                rpmostree_bus,
            } => {
                let opts = options(&common, !no_host_actions);
                if no_host_actions {
                    let mut host = RecordingHost::default();
                    run_cmd(opts, once, &mut host).await
                } else {
                    let (tx, rx) = tokio::sync::watch::channel(false);
                    spawn_interrupt(tx);
                    let addrs = DbusAddresses {
                        system: system_bus,
                        rpmostree: rpmostree_bus,
                    };
                    match DbusHost::connect(&addrs).await {
                        Ok(h) => {
                            let mut host = h.with_interrupt(rx);
                            run_cmd(opts, once, &mut host).await
                        }
                        Err(e) => {
                            log::error!("connecting to D-Bus: {e}");
                            ExitCode::from(exit::HOST as u8)
                        }
                    }
                }
            }
        }
    })
}

fn spawn_interrupt(tx: tokio::sync::watch::Sender<bool>) {
    tokio::spawn(async move {
        Shutdown::new().wait().await;
        let _ = tx.send(true);
    });
}

fn status_cmd(root: PathBuf, format: Format) -> ExitCode {
    let state_dir = root.join("var/lib/berth");
    let last_run = match LastRun::load(&root) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("berth-agent: {e}");
            None
        }
    };
    let state = match State::current(&root) {
        Ok(Current::Found(s)) => Some(*s),
        Ok(Current::None) if last_run.is_none() => {
            eprintln!(
                "berth-agent: no state under {}: the agent has not run on this host yet",
                state_dir.display()
            );
            return ExitCode::from(exit::FAILURE as u8);
        }
        Ok(Current::None) => None,
        Ok(Current::Missing { instance_id, path }) => {
            eprintln!(
                "berth-agent: no state: {} names instance {instance_id}, but {} is missing (moved \
                 aside or deleted); the next run starts that instance's first boot over, or put \
                 the file back",
                state_dir.join("current").display(),
                path.display()
            );
            return ExitCode::from(exit::FAILURE as u8);
        }
        Err(e) => {
            eprintln!("berth-agent: {e}");
            return ExitCode::from(exit::FAILURE as u8);
        }
    };
    let read = |p: &str| {
        std::fs::read_to_string(root.join(p))
            .or_else(|_| std::fs::read_to_string(Path::new("/").join(p)))
            .ok()
            .map(|s| s.trim().to_string())
    };
    let boot_id = read("proc/sys/kernel/random/boot_id").unwrap_or_default();
    let machine_id = std::fs::read_to_string(root.join("etc/machine-id"))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    let here = status::Here {
        boot_id: &boot_id,
        machine_id: machine_id.as_deref(),
    };
    let report = status::Report::new(state, last_run, &here);
    match format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("serializes")
        ),
        Format::Text => print!("{}", status::render_report(&report)),
    }
    ExitCode::SUCCESS
}

async fn plan_cmd(common: &Common, format: Format) -> ExitCode {
    let mut agent = Agent::new(options(common, false));
    match agent.plan().await {
        Ok(r) => {
            match format {
                Format::Json => {
                    println!("{}", serde_json::to_string_pretty(&r).expect("serializes"))
                }
                Format::Text => {
                    println!("cluster:  {} ({} members)", r.condition, r.membership.len());
                    println!("upgrade:  {}", r.upgrade);
                    let p = plan::Plan {
                        instance_id: r.instance_id.clone(),
                        node: r.node.clone(),
                        role: r.role,
                        profile: r.profile.clone(),
                        files: r.files.clone(),
                        reload: r.reload,
                        units: r.units.clone(),
                    };
                    print!("{}", plan::render_text(&p));
                    if let Some(e) = &r.etcd {
                        print!("{}", e.record.render());
                        println!("  next step: {}", e.next_step);
                    }
                    if let Some(k) = &r.kubernetes {
                        for line in k.render(berth_agent::state::now_secs()) {
                            println!("{line}");
                        }
                    }
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// `BERTH_CRASH_AT=N`, the crash-safety tests' hook: abort right after the Nth host-changing
/// step of a run (each file's rename, the reload, each unit operation), as a power cut would.
fn crash_at() -> Option<u32> {
    std::env::var("BERTH_CRASH_AT").ok()?.parse().ok()
}

async fn run_cmd<H: Host + RecordActions>(opts: Options, once: bool, host: &mut H) -> ExitCode {
    let root = opts.root.clone();
    let mut agent = Agent::new(opts);
    if let Some(n) = crash_at() {
        agent = agent.with_step_hook(berth_agent::run::abort_after(n));
    }
    let mut ready_sent = false;
    // Registered before the first convergence: a SIGTERM that arrives while a run is under way
    // (systemd sends one right after the upgrade's reboot request) is kept for the wait below.
    let mut stop = Shutdown::new();
    loop {
        let result = agent.converge(host).await;
        host.save_recorded(&root);
        // Every run's end is recorded, success or failure, before the state or not.
        if let Err(e) = agent.last_run(&result).save(&root) {
            log::error!("recording the run's end: {e}");
        }
        let (members, pages) = match &result {
            Ok(Outcome::Converged {
                files_changed,
                restarts,
                members,
                instances_seen,
                pages,
            }) => {
                let line = format!(
                    "converged: {members} nodes, {files_changed} files changed, {} restarts",
                    restarts.len()
                );
                log::info!("{line}");
                notify::status(&line);
                (*instances_seen, *pages)
            }
            Ok(Outcome::Rebooting) => {
                log::info!("rebooting into the upgraded deployment");
                if once {
                    return ExitCode::SUCCESS;
                }
                // READY=1 went out before the reboot request (Agent::request_reboot). Exiting
                // now would let Restart= start the agent again while the reboot is on its way:
                // wait for the shutdown the reboot brings, for a bounded time.
                if tokio::time::timeout(REBOOT_WAIT, stop.wait())
                    .await
                    .is_err()
                {
                    log::error!(
                        "the reboot was requested {} min ago and the host is still up; \
                         exiting so that the service's next start takes over (see \
                         `journalctl -b -u systemd-logind` and `systemctl list-jobs`)",
                        REBOOT_WAIT.as_secs() / 60
                    );
                    return ExitCode::from(5);
                }
                notify::notify("STOPPING=1");
                return ExitCode::SUCCESS;
            }
            Err(e) => {
                log::error!("{e}");
                notify::status(&format!("not converged: {e}"));
                if once {
                    return ExitCode::from(e.exit_code() as u8);
                }
                (1, 1)
            }
        };
        if once {
            return ExitCode::SUCCESS;
        }
        if !ready_sent {
            // Ready after the first attempt, converged or not: units ordered after berth-agent
            // should not wait forever on a cluster that has no master yet.
            notify::notify("READY=1");
            ready_sent = true;
        }
        let poll = agent_poll(&agent);
        let wait = poll::next_interval(&poll, members, pages, fastrand::f64());
        log::debug!("next poll in {wait:?}");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait() => {
                notify::notify("STOPPING=1");
                return ExitCode::SUCCESS;
            }
        }
    }
}

fn agent_poll(agent: &Agent) -> berth_agent::config::Poll {
    agent
        .last_config()
        .map(|c| c.poll.clone())
        .unwrap_or_else(|| berth_agent::config::Config::default().poll)
}

/// How long the daemon waits to be stopped after a reboot was requested. logind delays a reboot
/// by at most `InhibitDelayMaxSec` (5 s by default) and systemd stops services within their
/// `TimeoutStopSec` (90 s by default); 10 min is far beyond both, so a host still up by then is
/// not rebooting.
const REBOOT_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

/// SIGTERM or SIGINT, listened for from creation on: a signal that arrives between two waits is
/// not lost.
struct Shutdown {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl Shutdown {
    fn new() -> Shutdown {
        use tokio::signal::unix::{signal, SignalKind};
        Shutdown {
            term: signal(SignalKind::terminate()).ok(),
            int: signal(SignalKind::interrupt()).ok(),
        }
    }

    async fn wait(&mut self) {
        async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            _ = recv(&mut self.term) => {}
            _ = recv(&mut self.int) => {}
        }
    }
}

/// Hosts that recorded instead of acting keep their record in the state.
trait RecordActions {
    fn save_recorded(&mut self, _root: &std::path::Path) {}
}

impl RecordActions for DbusHost {}

impl RecordActions for RecordingHost {
    fn save_recorded(&mut self, root: &std::path::Path) {
        if self.actions.is_empty() {
            return;
        }
        let actions = std::mem::take(&mut self.actions);
        for a in &actions {
            println!(
                "recorded host action: {}",
                serde_json::to_string(a).expect("serializes")
            );
        }
        if let Ok(Some(mut s)) = State::load_current(root) {
            s.recorded_actions = actions;
            if let Err(e) = s.save(root) {
                log::error!("saving recorded actions: {e}");
            }
        }
    }
}
