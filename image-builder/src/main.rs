//! The `berth-image` command line: parses the arguments (`cli`), runs one subcommand, prints
//! its result, and turns an error into an exit code by one rule ([`exit_code`]).
//!
//! Exit codes (image-builder/README.md): 0 done, 1 failed (the repository could not be read or
//! written, a tool or a remote call failed), 2 bad usage (clap), 3 refused input (nothing was
//! written, no ref moved, nothing created in the account).

mod cli;

use std::process::ExitCode;

use berth_image::commit::{self, CommitRequest, GpgSign};
use berth_image::inputs::{self, LayerRequest};
use berth_image::kind::{Classified, Kind};
use berth_image::{ami, disk, inspect, vagrant};
use clap::Parser as _;

use cli::{Cli, Cmd, CommitArgs, DiskArgs};

const EXIT_FAILED: u8 = 1;
const EXIT_REFUSED: u8 = 3;

/// The one mapping from an error's kind to the process's exit status.
fn exit_code(kind: Kind) -> u8 {
    match kind {
        Kind::Refused => EXIT_REFUSED,
        Kind::Failed => EXIT_FAILED,
    }
}

/// Why a run ended without a result: the error's kind and its message (the error's Display,
/// which names the field or file and the fix).
struct Failure {
    kind: Kind,
    message: String,
}

fn failure<E: Classified>(e: E) -> Failure {
    Failure {
        kind: e.kind(),
        message: e.to_string(),
    }
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
        Err(f) => {
            eprintln!("berth-image: error: {}", f.message);
            ExitCode::from(exit_code(f.kind))
        }
    }
}

fn run(cmd: Cmd) -> Result<(), Failure> {
    match cmd {
        Cmd::Commit(args) => run_commit(args),
        Cmd::Disk(args) => run_disk(args),
        Cmd::Ami(args) => {
            let (req, imds) = args.into_request().map_err(failure)?;
            let outcome = ami::build_ami_blocking(&req, &ami::provider(imds)).map_err(failure)?;
            print_json(&outcome);
            Ok(())
        }
        Cmd::VagrantBox { disk, out } => {
            let outcome = vagrant::package(&disk, &out).map_err(failure)?;
            print_json(&outcome);
            Ok(())
        }
        Cmd::Inspect { repo, rev } => {
            let report = inspect::inspect(&repo, &rev).map_err(failure)?;
            print!("{}", report.render());
            Ok(())
        }
    }
}

fn run_commit(args: CommitArgs) -> Result<(), Failure> {
    let add_files = args
        .add_files
        .iter()
        .map(|a| inputs::parse_add_file(a))
        .collect::<Result<Vec<_>, _>>()
        .map_err(failure)?;
    let epoch = std::env::var("SOURCE_DATE_EPOCH").ok();
    let time = commit::source_date_epoch(epoch.as_deref()).map_err(failure)?;
    let layer = inputs::load(&LayerRequest {
        agent: args.agent,
        agent_version: args.agent_version,
        units: args.units,
        profiles: args.profiles,
        config: args.config,
        add_files,
    })
    .map_err(failure)?;
    let req = CommitRequest {
        repo: args.repo,
        base: args.base,
        new_ref: args.new_ref,
        version: args.version,
        time,
        gpg: args.gpg_sign.map(|key_id| GpgSign {
            key_id,
            homedir: args.gpg_homedir,
        }),
    };
    let out = commit::commit(&req, &layer).map_err(failure)?;
    log::info!("layered {} entries onto {}", out.entries, out.base_checksum);
    println!("{}", out.checksum);
    Ok(())
}

fn run_disk(args: DiskArgs) -> Result<(), Failure> {
    let size = args
        .size
        .as_deref()
        .map(disk::parse_size)
        .transpose()
        .map_err(failure)?;
    let req = disk::DiskRequest {
        repo: args.repo,
        rev: args.rev,
        out: args.out,
        format: args.format.into(),
        size,
        kargs: args.kargs,
        osname: args.osname,
        bootloader: args.bootloader.into(),
    };
    let started = std::time::Instant::now();
    let outcome = disk::build(&req).map_err(failure)?;
    log::info!(
        "wrote {} ({} bytes) in {:.1} s",
        outcome.path.display(),
        outcome.size,
        started.elapsed().as_secs_f64()
    );
    print_json(&outcome);
    Ok(())
}

fn print_json<T: serde::Serialize>(value: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("the summary serializes")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_rule_for_exit_codes() {
        assert_eq!(exit_code(Kind::Refused), 3);
        assert_eq!(exit_code(Kind::Failed), 1);
    }
}
