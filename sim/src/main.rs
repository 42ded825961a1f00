//! `berth-sim serve`: run an emulated EC2 region from a cluster file until SIGTERM or SIGINT.
//! `berth-sim demo`: the seed's cluster with real agents, zero-touch (see `demo.rs`).
//!
//! Prints one JSON line per instance on stdout once every listener is up (so a harness can read
//! the endpoints), then logs requests to stderr. Exit codes: 0 after a signal, 1 when the
//! cluster file or a listen address is unusable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use berth_sim::{ClusterSpec, Sim};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "berth-sim",
    version,
    about = "An emulated EC2 region for berth's demo and tests"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the region described by a cluster file.
    Serve {
        /// The cluster file (YAML), e.g. sim/clusters/seed.yaml.
        #[arg(long)]
        cluster: PathBuf,
        /// Where the EC2 endpoint listens (default 127.0.0.1, any free port).
        #[arg(long, value_name = "ADDR")]
        ec2_listen: Option<SocketAddr>,
        /// Where an instance's IMDS listens: `NAME=ADDR`, or a bare ADDR for the instances in
        /// file order. Repeatable.
        #[arg(long, value_name = "[NAME=]ADDR")]
        imds_listen: Vec<String>,
        /// Log every request to stderr.
        #[arg(long, short)]
        verbose: bool,
    },
    /// Run the seed's cluster with real berth-agent processes: two nodes converge, a third is
    /// launched and every node re-converges, then one is stopped and leaves.
    Demo {
        /// The berth-agent binary (default: beside berth-sim, then PATH).
        #[arg(long, value_name = "PATH")]
        agent: Option<PathBuf>,
        /// Where the nodes' root directories and logs go (default: a new temporary directory).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

struct StderrLogger {
    level: log::LevelFilter,
}

impl log::Log for StderrLogger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= self.level && m.target().starts_with("berth_sim")
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            eprintln!(
                "berth-sim: {}: {}",
                r.level().as_str().to_lowercase(),
                r.args()
            );
        }
    }
    fn flush(&self) {}
}

#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("cannot read cluster file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Spec {
        path: PathBuf,
        source: berth_sim::SpecError,
    },
    #[error("--imds-listen {arg}: {why}")]
    ImdsListen { arg: String, why: String },
    #[error("cannot start the region: {0}")]
    Start(std::io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signal(std::io::Error),
}

fn apply_imds_listen(spec: &mut ClusterSpec, args: &[String]) -> Result<(), CliError> {
    let mut bare = 0;
    for arg in args {
        let bad = |why: String| CliError::ImdsListen {
            arg: arg.clone(),
            why,
        };
        let (target, addr) = match arg.rsplit_once('=') {
            Some((name, addr)) => (Some(name), addr),
            None => (None, arg.as_str()),
        };
        let addr: SocketAddr = addr
            .parse()
            .map_err(|_| bad(format!("`{addr}` is not an address like 127.0.0.1:8080")))?;
        let inst = match target {
            Some(name) => spec
                .instances
                .iter_mut()
                .find(|i| i.name == name || i.instance_id.as_deref() == Some(name))
                .ok_or_else(|| bad(format!("no instance `{name}` in the cluster file")))?,
            None => {
                bare += 1;
                let n = spec.instances.len();
                spec.instances
                    .get_mut(bare - 1)
                    .ok_or_else(|| bad(format!("more bare addresses than the {n} instances")))?
            }
        };
        inst.imds_listen = Some(addr);
    }
    Ok(())
}

async fn serve(
    cluster: PathBuf,
    ec2_listen: Option<SocketAddr>,
    imds_listen: Vec<String>,
) -> Result<(), CliError> {
    let text = std::fs::read_to_string(&cluster).map_err(|source| CliError::Read {
        path: cluster.clone(),
        source,
    })?;
    let mut spec = ClusterSpec::from_yaml(&text).map_err(|source| CliError::Spec {
        path: cluster.clone(),
        source,
    })?;
    if ec2_listen.is_some() {
        spec.ec2_listen = ec2_listen;
    }
    apply_imds_listen(&mut spec, &imds_listen)?;
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(CliError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(CliError::Signal)?;
    let sim = Sim::start(spec).await.map_err(CliError::Start)?;
    for (name, id, state) in sim.instances() {
        let line = serde_json::json!({
            "name": name,
            "instance_id": id,
            "state": state,
            "private_ip": sim.private_ip(&id).map(|ip| ip.to_string()),
            "imds": sim.imds_url(&id),
            "ec2": sim.ec2_url(),
            "region": sim.region(),
        });
        println!("{line}");
    }
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    sim.shutdown().await;
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let verbose = matches!(cli.command, Command::Serve { verbose: true, .. });
    let level = if verbose {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Info
    };
    // A leaked logger lives as long as the process, which is what `log` needs.
    let _ = log::set_logger(Box::leak(Box::new(StderrLogger { level })));
    log::set_max_level(level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("berth-sim: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Serve {
            cluster,
            ec2_listen,
            imds_listen,
            ..
        } => runtime
            .block_on(serve(cluster, ec2_listen, imds_listen))
            .map_err(|e| e.to_string()),
        Command::Demo { agent, dir } => {
            let dir = dir.unwrap_or_else(|| {
                std::env::temp_dir().join(format!("berth-demo-{}", std::process::id()))
            });
            berth_sim::demo::find_agent(agent)
                .and_then(|agent| runtime.block_on(berth_sim::demo::run(agent, dir)))
                .map_err(|e| e.to_string())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth-sim: {e}");
            ExitCode::FAILURE
        }
    }
}
