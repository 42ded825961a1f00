//! An rpm-ostree client over D-Bus: `rpm-ostree upgrade` without forking the CLI.
//!
//! It follows the daemon's interface (`org.projectatomic.rpmostree1.xml` in rpm-ostree) and its
//! own client (`rpmostree-clientlib.cxx`) step by step:
//! 1. `Sysroot.RegisterClient({"id": "berth-agent"})`, so the daemon does not exit idle under us;
//! 2. `Sysroot.Booted` names the booted OS object; its `DefaultDeployment` is read *before*;
//! 3. `OS.Upgrade(options)` returns the address of a peer-to-peer D-Bus socket owned by the
//!    transaction; the client connects to it, subscribes to the transaction's signals on object
//!    `/`, and only then calls `Start()` (the daemon holds all signals until then);
//! 4. `Message`, `TaskBegin`, `TaskEnd`, `PercentProgress` and `DownloadProgress` go to the log;
//!    `Finished(success, error_message)` ends it;
//! 5. `Sysroot.Reload()` syncs the daemon's properties, and `DefaultDeployment` is read again: a
//!    different `id` means a new deployment was staged, the same one means there was no upgrade
//!    (how `rpm-ostree upgrade` tells them apart for its exit code 77).
//!
//! If the caller interrupts (SIGTERM) or the transaction outlives its deadline, the client calls
//! the transaction's `Cancel` before returning. If the daemon's bus name loses its owner, or the
//! transaction socket closes, mid-transaction, the upgrade fails cleanly instead of hanging.
//!
//! Not here: when to upgrade (the agent's once-per-instance phase logic), or rebooting
//! ([`super::login`]).

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use futures_util::StreamExt;
use zbus::{proxy, Connection, OwnedObjectPath, OwnedVariant, Variant};

use super::systemd::connect_bus;
use super::UpgradeOutcome;

pub const BUS_NAME: &str = "org.projectatomic.rpmostree1";
pub const SYSROOT_PATH: &str = "/org/projectatomic/rpmostree1/Sysroot";
/// What the daemon shows as the transaction's initiator (`rpm-ostree status`).
pub(crate) const CLIENT_ID: &str = "berth-agent";

/// The whole upgrade transaction: pulling a new OSTree commit (a few hundred MB for Fedora
/// Atomic/CoreOS) and writing the deployment. 30 minutes covers a slow mirror; past that the
/// transaction is cancelled and the next run of the agent tries again.
pub(crate) const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// A daemon method that queues nothing (RegisterClient, Upgrade, Start, Reload) answers at once;
/// 25 s is the default method timeout of GDBus, which the daemon and its own client use.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(25);

/// After `Cancel`, how long to wait for the transaction's `Finished`. The daemon checks its
/// cancellable between pull requests, which is quick; if it does not finish by then the agent
/// returns anyway, the cancel having been delivered.
pub(crate) const CANCEL_GRACE: Duration = Duration::from_secs(10);

#[proxy(
    interface = "org.projectatomic.rpmostree1.Sysroot",
    default_service = "org.projectatomic.rpmostree1",
    default_path = "/org/projectatomic/rpmostree1/Sysroot"
)]
trait Sysroot {
    fn register_client(&self, options: HashMap<&str, Variant<'_>>) -> zbus::Result<()>;
    fn unregister_client(&self, options: HashMap<&str, Variant<'_>>) -> zbus::Result<()>;
    fn reload(&self) -> zbus::Result<()>;
    #[zbus(property)]
    fn booted(&self) -> zbus::Result<OwnedObjectPath>;
}

#[proxy(
    interface = "org.projectatomic.rpmostree1.OS",
    default_service = "org.projectatomic.rpmostree1"
)]
trait OS {
    fn upgrade(&self, options: HashMap<&str, Variant<'_>>) -> zbus::Result<String>;
    #[zbus(property)]
    fn default_deployment(&self) -> zbus::Result<HashMap<String, OwnedVariant>>;
    #[zbus(property)]
    fn booted_deployment(&self) -> zbus::Result<HashMap<String, OwnedVariant>>;
}

#[proxy(
    interface = "org.projectatomic.rpmostree1.Transaction",
    default_service = "org.projectatomic.rpmostree1",
    default_path = "/"
)]
trait Transaction {
    fn start(&self) -> zbus::Result<bool>;
    fn cancel(&self) -> zbus::Result<()>;
}

#[derive(Debug, thiserror::Error)]
pub enum RpmOstreeError {
    #[error("cannot connect to the bus at {address}: {source}")]
    Connect {
        address: String,
        #[source]
        source: zbus::Error,
    },
    #[error(
        "rpm-ostree {method}: {source}; is rpm-ostreed running? see `journalctl -u rpm-ostreed`"
    )]
    Call {
        method: &'static str,
        #[source]
        source: zbus::Error,
    },
    #[error(
        "rpm-ostree {method} did not answer within {after:?}; see `journalctl -u rpm-ostreed`"
    )]
    CallTimeout {
        method: &'static str,
        after: Duration,
    },
    #[error("the host is not booted from an rpm-ostree deployment (Sysroot.Booted is `{path}`)")]
    NotBooted { path: String },
    #[error("rpm-ostree's {property} has no string `{field}`")]
    Deployment {
        property: &'static str,
        field: &'static str,
    },
    #[error("rpm-ostree gave a transaction address that is not a local socket: `{address}`")]
    BadAddress { address: String },
    #[error("cannot connect to the rpm-ostree transaction at {address}: {source}")]
    TransactionConnect {
        address: String,
        #[source]
        source: zbus::Error,
    },
    #[error("rpm-ostree upgrade failed: {message}; see `journalctl -u rpm-ostreed`")]
    Failed { message: String },
    #[error(
        "rpm-ostree's daemon left the bus during the upgrade (it likely crashed); \
         nothing was staged by this run; see `journalctl -u rpm-ostreed`"
    )]
    DaemonVanished,
    #[error(
        "the rpm-ostree transaction's connection closed before it finished; \
         see `journalctl -u rpm-ostreed`"
    )]
    TransactionLost,
    #[error("rpm-ostree upgrade did not finish within {after:?}; {}", cancelled_text(*.cancelled))]
    Timeout { after: Duration, cancelled: bool },
    #[error("rpm-ostree upgrade interrupted; {}", cancelled_text(*.cancelled))]
    Interrupted { cancelled: bool },
}

fn cancelled_text(cancelled: bool) -> &'static str {
    if cancelled {
        "the transaction was cancelled"
    } else {
        "cancelling the transaction failed: see `rpm-ostree status` and `rpm-ostree cancel`"
    }
}

/// A deployment as the daemon describes it (the `a{sv}` of `DefaultDeployment`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Deployment {
    pub id: String,
    pub checksum: String,
}

impl Deployment {
    fn from_dict(
        property: &'static str,
        dict: &HashMap<String, OwnedVariant>,
    ) -> Result<Self, RpmOstreeError> {
        let field = |field: &'static str| -> Result<String, RpmOstreeError> {
            dict.get(field)
                .and_then(|v| <&str>::try_from(&**v).ok())
                .map(str::to_string)
                .ok_or(RpmOstreeError::Deployment { property, field })
        };
        Ok(Deployment {
            id: field("id")?,
            checksum: field("checksum")?,
        })
    }
}

/// A client of the rpm-ostree daemon on one bus connection.
pub struct RpmOstree {
    conn: Connection,
    transaction_timeout: Duration,
}

impl RpmOstree {
    /// A bus at `address`; tests run a stand-in daemon on a private `dbus-daemon`.
    pub async fn connect(address: &str) -> Result<Self, RpmOstreeError> {
        let conn = connect_bus(address)
            .await
            .map_err(|source| RpmOstreeError::Connect {
                address: address.into(),
                source,
            })?;
        Ok(Self::on(conn))
    }

    pub fn on(conn: Connection) -> Self {
        RpmOstree {
            conn,
            transaction_timeout: TRANSACTION_TIMEOUT,
        }
    }

    /// Replace [`TRANSACTION_TIMEOUT`] (tests use a short one).
    pub fn with_transaction_timeout(mut self, timeout: Duration) -> Self {
        self.transaction_timeout = timeout;
        self
    }

    /// `rpm-ostree upgrade` (without `--reboot`: the agent reboots itself, through logind).
    ///
    /// `interrupt` resolves when the caller wants to stop (SIGTERM): the transaction is then
    /// cancelled and [`RpmOstreeError::Interrupted`] returned. If this future is dropped
    /// mid-transaction instead, `Cancel` is still sent from a spawned task, best effort.
    pub async fn upgrade(
        &self,
        interrupt: impl Future<Output = ()>,
    ) -> Result<UpgradeOutcome, RpmOstreeError> {
        let sysroot = SysrootProxy::builder(&self.conn)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .map_err(|source| RpmOstreeError::Call {
                method: "Sysroot",
                source,
            })?;
        let mut client = HashMap::new();
        client.insert("id", Variant::from(CLIENT_ID));
        call("Sysroot.RegisterClient", sysroot.register_client(client)).await?;

        let result = self.upgrade_registered(&sysroot, interrupt).await;

        // Tell the daemon it may exit when idle again; a failure here changes nothing for us.
        let mut none = HashMap::new();
        none.insert("id", Variant::from(CLIENT_ID));
        if let Err(e) = call("Sysroot.UnregisterClient", sysroot.unregister_client(none)).await {
            log::debug!("{e}");
        }
        result
    }

    async fn upgrade_registered(
        &self,
        sysroot: &SysrootProxy<'_>,
        interrupt: impl Future<Output = ()>,
    ) -> Result<UpgradeOutcome, RpmOstreeError> {
        let os_path = call("Sysroot.Booted", sysroot.booted()).await?;
        if os_path.as_str() == "/" {
            return Err(RpmOstreeError::NotBooted {
                path: os_path.to_string(),
            });
        }
        let os = OSProxy::builder(&self.conn)
            .path(os_path.clone())
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .map_err(|source| RpmOstreeError::Call {
                method: "OS",
                source,
            })?;
        let before = Deployment::from_dict(
            "DefaultDeployment",
            &call("OS.DefaultDeployment", os.default_deployment()).await?,
        )?;
        log::info!(
            "rpm-ostree: upgrading {} from deployment {} ({})",
            os_path.as_str(),
            before.id,
            before.checksum
        );

        // Who owns the daemon's name now; a change during the transaction means it went away.
        let bus = zbus::fdo::DBusProxy::new(&self.conn)
            .await
            .map_err(|source| RpmOstreeError::Call {
                method: "org.freedesktop.DBus",
                source,
            })?;
        let mut owner_changes = bus
            .receive_name_owner_changed_with_args(&[(0, BUS_NAME)])
            .await
            .map_err(|source| RpmOstreeError::Call {
                method: "AddMatch NameOwnerChanged",
                source,
            })?;

        let mut options = HashMap::new();
        // The agent records its phase before it reboots, so the daemon must not reboot for it.
        options.insert("reboot", Variant::from(false));
        let address = call("OS.Upgrade", os.upgrade(options)).await?;
        if !address.starts_with("unix:") {
            return Err(RpmOstreeError::BadAddress { address });
        }
        log::debug!("rpm-ostree: transaction at {address}");

        let finished = self.follow(&address, &mut owner_changes, interrupt).await?;
        if let Err(message) = finished {
            return Err(RpmOstreeError::Failed { message });
        }

        // As rpm-ostree's client does: sync with the daemon before reading properties again.
        call("Sysroot.Reload", sysroot.reload()).await?;
        let after = Deployment::from_dict(
            "DefaultDeployment",
            &call("OS.DefaultDeployment", os.default_deployment()).await?,
        )?;
        if after.id == before.id {
            log::info!("rpm-ostree: no upgrade available");
            Ok(UpgradeOutcome::NoUpgrade)
        } else {
            log::info!(
                "rpm-ostree: staged {} ({}); it takes effect at the next boot",
                after.id,
                after.checksum
            );
            Ok(UpgradeOutcome::Staged {
                from: before.checksum,
                to: after.checksum,
            })
        }
    }

    /// Connect to the transaction, start it, and follow it to `Finished`. The outer error is
    /// this client's (vanished, timeout, interrupted); the inner one the transaction's own.
    async fn follow(
        &self,
        address: &str,
        owner_changes: &mut zbus::fdo::NameOwnerChangedStream,
        interrupt: impl Future<Output = ()>,
    ) -> Result<Result<(), String>, RpmOstreeError> {
        let peer = zbus::connection::Builder::address(address)
            .p2p()
            .build()
            .await
            .map_err(|source| RpmOstreeError::TransactionConnect {
                address: address.into(),
                source,
            })?;
        let txn = TransactionProxy::new(&peer).await.map_err(|source| {
            RpmOstreeError::TransactionConnect {
                address: address.into(),
                source,
            }
        })?;
        // Listen before Start(): the daemon emits nothing until then, so nothing is lost.
        let mut signals =
            txn.inner()
                .receive_all_signals()
                .await
                .map_err(|source| RpmOstreeError::Call {
                    method: "Transaction signals",
                    source,
                })?;
        let mut guard = CancelOnDrop {
            txn: Some(txn.clone()),
        };
        let started = call("Transaction.Start", txn.start()).await?;
        if !started {
            log::info!("rpm-ostree: attached to a transaction another client had started");
        }

        let deadline = tokio::time::sleep(self.transaction_timeout);
        tokio::pin!(deadline);
        tokio::pin!(interrupt);
        let mut progress = Progress::default();
        let outcome = loop {
            tokio::select! {
                signal = signals.next() => match signal {
                    None => break Err(RpmOstreeError::TransactionLost),
                    Some(msg) => {
                        if let Some(finished) = progress.on_signal(&msg) {
                            break Ok(finished);
                        }
                    }
                },
                change = owner_changes.next() => {
                    // A NameOwnerChanged for our name during the transaction is the daemon
                    // leaving (or being replaced): its transaction died with it.
                    if let Some(change) = change {
                        if let Ok(args) = change.args() {
                            log::warn!(
                                "rpm-ostree: {} changed owner from {:?} to {:?}",
                                BUS_NAME, args.old_owner.as_ref().map(|n| n.to_string()),
                                args.new_owner.as_ref().map(|n| n.to_string())
                            );
                        }
                    }
                    break Err(RpmOstreeError::DaemonVanished);
                }
                _ = &mut deadline => {
                    let cancelled = cancel(&txn).await;
                    break Err(RpmOstreeError::Timeout { after: self.transaction_timeout, cancelled });
                }
                _ = &mut interrupt => {
                    log::warn!("rpm-ostree: interrupted, cancelling the transaction");
                    let cancelled = cancel(&txn).await;
                    if cancelled {
                        // Give the daemon a moment to wind down, so its Finished is logged.
                        let _ = tokio::time::timeout(CANCEL_GRACE, async {
                            while let Some(msg) = signals.next().await {
                                if progress.on_signal(&msg).is_some() { break; }
                            }
                        }).await;
                    }
                    break Err(RpmOstreeError::Interrupted { cancelled });
                }
            }
        };
        // Finished, cancelled, or the daemon is gone: nothing left for the guard to cancel.
        guard.txn = None;
        outcome
    }
}

/// Sends `Cancel` if the upgrade future is dropped while its transaction runs.
struct CancelOnDrop {
    txn: Option<TransactionProxy<'static>>,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let Some(txn) = self.txn.take() else { return };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                log::warn!("rpm-ostree: upgrade abandoned mid-transaction, cancelling it");
                handle.spawn(async move {
                    cancel(&txn).await;
                });
            }
            Err(_) => log::warn!("rpm-ostree: upgrade abandoned mid-transaction outside a runtime"),
        }
    }
}

async fn cancel(txn: &TransactionProxy<'_>) -> bool {
    match call("Transaction.Cancel", txn.cancel()).await {
        Ok(()) => true,
        Err(e) => {
            log::warn!("{e}");
            false
        }
    }
}

/// Turns the transaction's signals into log lines, and spots `Finished`.
#[derive(Default)]
struct Progress {
    last_percent: Option<(String, u32)>,
}

impl Progress {
    fn on_signal(&mut self, msg: &zbus::Message) -> Option<Result<(), String>> {
        let header = msg.header();
        let member = header.member()?.as_str().to_string();
        let body = msg.body();
        match member.as_str() {
            "Finished" => {
                let (success, error_message): (bool, String) = match body.deserialize() {
                    Ok(v) => v,
                    Err(e) => return Some(Err(format!("unreadable Finished signal: {e}"))),
                };
                log::info!(
                    "rpm-ostree: transaction finished: {}",
                    if success { "success" } else { &error_message }
                );
                Some(if success { Ok(()) } else { Err(error_message) })
            }
            "Message" => {
                if let Ok((text,)) = body.deserialize::<(String,)>() {
                    log::info!("rpm-ostree: {text}");
                }
                None
            }
            "TaskBegin" => {
                if let Ok((text,)) = body.deserialize::<(String,)>() {
                    log::info!("rpm-ostree: {text}...");
                }
                None
            }
            "TaskEnd" => {
                if let Ok((text,)) = body.deserialize::<(String,)>() {
                    log::info!("rpm-ostree: ... {text}");
                }
                None
            }
            "PercentProgress" => {
                if let Ok((text, percent)) = body.deserialize::<(String, u32)>() {
                    // One line per 10% step, not one per signal.
                    let step = percent / 10;
                    let new = match &self.last_percent {
                        Some((t, s)) => *t != text || *s != step,
                        None => true,
                    };
                    if new {
                        log::info!("rpm-ostree: {text} {percent}%");
                        self.last_percent = Some((text, step));
                    }
                }
                None
            }
            "DownloadProgress" => {
                type Download = (
                    (u64, u64),
                    (u32, u32),
                    (u32, u32, u32),
                    (u32, u32, u32, u64),
                    (u32, u32),
                    (u64, u64),
                );
                if let Ok((time, _, metadata, _, content, transfer)) =
                    body.deserialize::<Download>()
                {
                    log::debug!(
                        "rpm-ostree: receiving objects {}/{}, metadata {}, {} bytes at {} B/s, {} s",
                        content.0,
                        content.1,
                        metadata.1,
                        transfer.0,
                        transfer.1,
                        time.1
                    );
                }
                None
            }
            _ => None,
        }
    }
}

async fn call<T>(
    method: &'static str,
    fut: impl Future<Output = zbus::Result<T>>,
) -> Result<T, RpmOstreeError> {
    match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Err(_) => Err(RpmOstreeError::CallTimeout {
            method,
            after: CALL_TIMEOUT,
        }),
        Ok(r) => r.map_err(|source| RpmOstreeError::Call { method, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dict(pairs: &[(&str, Variant<'_>)]) -> HashMap<String, OwnedVariant> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), OwnedVariant::try_from(v.clone()).unwrap()))
            .collect()
    }

    #[test]
    fn a_deployment_is_read_from_the_daemons_dictionary() {
        let d = dict(&[
            ("id", Variant::from("fedora-atomic-abc.0")),
            ("checksum", Variant::from("abc")),
            ("serial", Variant::from(0i32)),
        ]);
        assert_eq!(
            Deployment::from_dict("DefaultDeployment", &d).unwrap(),
            Deployment {
                id: "fedora-atomic-abc.0".into(),
                checksum: "abc".into()
            }
        );
    }

    #[test]
    fn a_deployment_without_an_id_or_with_a_wrong_type_names_the_field() {
        let d = dict(&[("checksum", Variant::from("abc"))]);
        let e = Deployment::from_dict("DefaultDeployment", &d).unwrap_err();
        assert_eq!(
            e.to_string(),
            "rpm-ostree's DefaultDeployment has no string `id`"
        );
        let d = dict(&[
            ("id", Variant::from(7u32)),
            ("checksum", Variant::from("abc")),
        ]);
        let e = Deployment::from_dict("BootedDeployment", &d).unwrap_err();
        assert_eq!(
            e.to_string(),
            "rpm-ostree's BootedDeployment has no string `id`"
        );
    }

    #[test]
    fn cancellation_is_reported_either_way() {
        let done = RpmOstreeError::Interrupted { cancelled: true };
        assert_eq!(
            done.to_string(),
            "rpm-ostree upgrade interrupted; the transaction was cancelled"
        );
        let failed = RpmOstreeError::Timeout {
            after: Duration::from_secs(1800),
            cancelled: false,
        };
        assert!(failed.to_string().contains("rpm-ostree cancel"), "{failed}");
    }
}
