//! The `berth-image` command line. Exit codes: 0 success, 1 the repository
//! could not be read or written, 2 bad usage, 3 refused input (nothing was
//! written and no ref moved).

use std::path::PathBuf;
use std::process::ExitCode;

use berth_image::commit::{self, CommitError, CommitRequest, GpgSign};
use berth_image::inputs::{self, InputError, LayerRequest};
use berth_image::inspect::{self, InspectError};
use clap::{Parser, Subcommand};

const EXIT_FAILED: u8 = 1;
const EXIT_REFUSED: u8 = 3;

#[derive(Parser)]
#[command(
    name = "berth-image",
    version,
    about = "Bake berth into OSTree commits"
)]
struct Cli {
    /// Log more (repeat for debug output).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    cmd: Cmd,
}

// Parsed once per run: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Cmd {
    /// Layer berth-agent, its units, profiles and config onto a base commit.
    Commit {
        /// The OSTree repository (archive, bare or bare-user).
        #[arg(long)]
        repo: PathBuf,
        /// Base ref or commit checksum.
        #[arg(long)]
        base: String,
        /// The ref to point at the new commit.
        #[arg(long = "ref")]
        new_ref: String,
        /// The berth-agent binary (an executable ELF).
        #[arg(long, default_value = "/usr/bin/berth-agent")]
        agent: PathBuf,
        /// The agent's version, when `AGENT --version` cannot run here.
        #[arg(long)]
        agent_version: Option<String>,
        /// Directory of systemd units and .preset files (default: the ones
        /// built into berth-image).
        #[arg(long)]
        units: Option<PathBuf>,
        /// Directory of profiles, one subdirectory each (e.g. configs/profiles).
        #[arg(long)]
        profiles: Option<PathBuf>,
        /// Default config, installed as /usr/etc/berth/config.yaml.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Extra file SRC:DEST (repeatable); /etc/... lands in /usr/etc/...
        #[arg(long = "add-file", value_name = "SRC:DEST")]
        add_files: Vec<String>,
        /// The commit's `version` metadata (shown by rpm-ostree status).
        #[arg(long)]
        version: Option<String>,
        /// GPG key id to sign the commit with.
        #[arg(long)]
        gpg_sign: Option<String>,
        /// GnuPG home directory holding that key.
        #[arg(long, requires = "gpg_sign")]
        gpg_homedir: Option<PathBuf>,
    },
    /// Deploy a commit into a bootable GPT disk image (ESP with systemd-boot, /boot, root).
    /// Prints a JSON summary: partitions, the boot entry.
    Disk {
        /// The OSTree repository holding the commit.
        #[arg(long)]
        repo: PathBuf,
        /// Ref or commit checksum to deploy.
        #[arg(long = "ref")]
        rev: String,
        /// The disk image to write (replaced only once complete).
        #[arg(long)]
        out: PathBuf,
        #[arg(long, value_enum, default_value = "raw")]
        format: berth_image::disk::Format,
        /// Disk size (4G, 8GiB, 512M, bytes); default: what the tree needs plus 1 GiB.
        #[arg(long)]
        size: Option<String>,
        /// Extra kernel argument (repeatable), after root=UUID=... rw console=tty0
        /// console=ttyS0,115200n8.
        #[arg(long = "karg", value_name = "ARG")]
        kargs: Vec<String>,
        /// The OSTree stateroot (`ostree admin os-init` name).
        #[arg(long, default_value = berth_image::disk::DEFAULT_OSNAME)]
        osname: String,
        #[arg(long, value_enum, default_value = "systemd-boot")]
        bootloader: berth_image::disk::Bootloader,
    },
    /// Upload a raw disk as an EBS snapshot and register it as an AMI. Prints a JSON summary.
    Ami(berth_image::ami::AmiArgs),
    /// Package a disk made by `berth-image disk` as a Vagrant box (libvirt provider).
    VagrantBox {
        /// The disk image (raw or qcow2).
        #[arg(long)]
        disk: PathBuf,
        /// The box file to write, e.g. berth.box.
        #[arg(long)]
        out: PathBuf,
    },
    /// Show what berth layered on a commit, compared to its base.
    Inspect {
        #[arg(long)]
        repo: PathBuf,
        /// Ref or commit checksum.
        rev: String,
    },
}

/// Prints log records on stderr; the level is `log::max_level()`.
struct StderrLogger;

static LOGGER: StderrLogger = StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            eprintln!(
                "berth-image: {}: {}",
                r.level().as_str().to_lowercase(),
                r.args()
            );
        }
    }
    fn flush(&self) {}
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Info,
        _ => log::LevelFilter::Debug,
    };
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
    match run(cli.cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, msg)) => {
            eprintln!("berth-image: error: {msg}");
            ExitCode::from(code)
        }
    }
}

fn refused_or_failed(e: &CommitError) -> u8 {
    match e {
        CommitError::OpenRepo { .. }
        | CommitError::Write { .. }
        | CommitError::BaseRead { .. }
        | CommitError::Sign { .. } => EXIT_FAILED,
        _ => EXIT_REFUSED,
    }
}

/// The exit status of an error that tells a refusal from a failure.
fn exit_code(is_refusal: bool) -> u8 {
    if is_refusal {
        EXIT_REFUSED
    } else {
        EXIT_FAILED
    }
}

fn run(cmd: Cmd) -> Result<(), (u8, String)> {
    match cmd {
        Cmd::Commit {
            repo,
            base,
            new_ref,
            agent,
            agent_version,
            units,
            profiles,
            config,
            add_files,
            version,
            gpg_sign,
            gpg_homedir,
        } => {
            let refuse = |e: InputError| (EXIT_REFUSED, e.to_string());
            let add_files = add_files
                .iter()
                .map(|a| inputs::parse_add_file(a))
                .collect::<Result<Vec<_>, _>>()
                .map_err(refuse)?;
            let epoch = std::env::var("SOURCE_DATE_EPOCH").ok();
            let time = commit::source_date_epoch(epoch.as_deref())
                .map_err(|e| (EXIT_REFUSED, e.to_string()))?;
            let layer = inputs::load(&LayerRequest {
                agent,
                agent_version,
                units,
                profiles,
                config,
                add_files,
            })
            .map_err(refuse)?;
            let req = CommitRequest {
                repo,
                base,
                new_ref,
                version,
                time,
                gpg: gpg_sign.map(|key_id| GpgSign {
                    key_id,
                    homedir: gpg_homedir,
                }),
            };
            let out =
                commit::commit(&req, &layer).map_err(|e| (refused_or_failed(&e), e.to_string()))?;
            log::info!("layered {} entries onto {}", out.entries, out.base_checksum);
            println!("{}", out.checksum);
            Ok(())
        }
        Cmd::Disk {
            repo,
            rev,
            out,
            format,
            size,
            kargs,
            osname,
            bootloader,
        } => {
            use berth_image::disk;
            let fail = |e: disk::DiskError| (exit_code(e.is_refusal()), e.to_string());
            let size = size
                .as_deref()
                .map(disk::parse_size)
                .transpose()
                .map_err(fail)?;
            let req = disk::DiskRequest {
                repo,
                rev,
                out,
                format,
                size,
                kargs,
                osname,
                bootloader,
            };
            let started = std::time::Instant::now();
            let outcome = disk::build(&req).map_err(fail)?;
            log::info!(
                "wrote {} ({} bytes) in {:.1} s",
                outcome.path.display(),
                outcome.size,
                started.elapsed().as_secs_f64()
            );
            println!(
                "{}",
                serde_json::to_string_pretty(&outcome).expect("the summary serializes")
            );
            Ok(())
        }
        Cmd::Ami(args) => berth_image::ami::run_cli(args),
        Cmd::VagrantBox { disk, out } => {
            let outcome = berth_image::vagrant::package(&disk, &out)
                .map_err(|e| (exit_code(e.is_refusal()), e.to_string()))?;
            println!(
                "{}",
                serde_json::to_string_pretty(&outcome).expect("the summary serializes")
            );
            Ok(())
        }
        Cmd::Inspect { repo, rev } => {
            let report = inspect::inspect(&repo, &rev).map_err(|e| {
                let code = match &e {
                    InspectError::Repo(c) => refused_or_failed(c),
                    InspectError::Read { .. } => EXIT_FAILED,
                    _ => EXIT_REFUSED,
                };
                (code, e.to_string())
            })?;
            print!("{}", report.render());
            Ok(())
        }
    }
}
