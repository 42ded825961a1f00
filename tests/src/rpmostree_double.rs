//! A test double of rpm-ostree's daemon, serving its real D-Bus interface (as described by
//! `org.projectatomic.rpmostree1.xml` in rpm-ostree) on a private `dbus-daemon`.
//!
//! rpm-ostree's daemon cannot run here (it needs an OSTree-booted host), so this program plays
//! it: it owns `org.projectatomic.rpmostree1`, serves `Sysroot` at
//! `/org/projectatomic/rpmostree1/Sysroot` and `OS` at `/org/projectatomic/rpmostree1/<osname>`,
//! and answers `OS.Upgrade(a{sv})` with the address of a peer-to-peer socket of its own, on which
//! a `Transaction` object at `/` waits for `Start()`, then emits `Message`, `TaskBegin`,
//! `TaskEnd`, `PercentProgress`, `DownloadProgress` and `Finished(b, s)`, and honours `Cancel()`.
//!
//! What it does is driven by a state file (the booted deployment, the staged one, the remote's
//! newest commit) and a scenario; every call it receives is appended to a record file (JSON
//! lines), which tests read. The state survives the process, so a test can "reboot" the host
//! ([`simulate_reboot`]) and start the double again.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use zbus::object_server::SignalEmitter;
use zbus::{fdo, interface, Connection, OwnedObjectPath, OwnedVariant, Variant};

pub const BUS_NAME: &str = "org.projectatomic.rpmostree1";
pub const SYSROOT_PATH: &str = "/org/projectatomic/rpmostree1/Sysroot";
const TXN_IFACE: &str = "org.projectatomic.rpmostree1.Transaction";

/// What the daemon does with an upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Like the real daemon: stage the remote's commit if it differs from the default
    /// deployment, else report "No upgrade available.".
    Normal,
    /// The pull fails; `Finished(false, ...)`.
    Fail,
    /// The daemon exits in the middle of the transaction (a crash).
    Vanish,
    /// The transaction runs until cancelled.
    Hang,
}

impl std::str::FromStr for Scenario {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        serde_json::from_value(serde_json::Value::String(s.into())).map_err(|e| e.to_string())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    pub checksum: String,
    pub version: String,
}

/// The host as rpm-ostree sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub osname: String,
    pub booted: Commit,
    /// A deployment staged for the next boot (the default one when present).
    pub staged: Option<Commit>,
    /// The newest commit of the booted ref on the remote.
    pub remote: Commit,
}

impl State {
    /// Fedora Atomic 21 as launched from the December 2014 AMI, with a newer commit on the
    /// remote (the seed's `rpm-ostree upgrade`).
    pub fn fedora_atomic_21(upgrade_available: bool) -> State {
        let booted = Commit {
            checksum: "a1b2c3d4e5f60718293a4b5c6d7e8f90112233445566778899aabbccddeeff00".into(),
            version: "21.20141203.0".into(),
        };
        let remote = if upgrade_available {
            Commit {
                checksum: "ffeeddccbbaa99887766554433221100fe0dcba98765432100112233445566aa".into(),
                version: "21.20150210.0".into(),
            }
        } else {
            booted.clone()
        };
        State {
            osname: "fedora-atomic".into(),
            booted,
            staged: None,
            remote,
        }
    }

    pub fn load(path: &Path) -> State {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
    }

    pub fn save(&self, path: &Path) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self).unwrap()).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    fn default_commit(&self) -> &Commit {
        self.staged.as_ref().unwrap_or(&self.booted)
    }

    /// rpm-ostree's deployment id: `<osname>-<checksum>.<serial>`.
    pub fn id(&self, commit: &Commit) -> String {
        format!("{}-{}.0", self.osname, commit.checksum)
    }

    fn deployment(&self, commit: &Commit, booted: bool) -> HashMap<String, OwnedVariant> {
        let mut d = HashMap::new();
        let mut put = |k: &str, v: Variant<'_>| {
            d.insert(k.to_string(), OwnedVariant::try_from(v).unwrap());
        };
        put("id", Variant::from(self.id(commit)));
        put("osname", Variant::from(self.osname.clone()));
        put("serial", Variant::from(0i32));
        put("checksum", Variant::from(commit.checksum.clone()));
        put("version", Variant::from(commit.version.clone()));
        put(
            "origin",
            Variant::from(format!(
                "{}:{}/f21/x86_64/docker-host",
                self.osname, self.osname
            )),
        );
        put("booted", Variant::from(booted));
        d
    }
}

/// Boot into the staged deployment, as the host's next boot would.
pub fn simulate_reboot(state_file: &Path) {
    let mut state = State::load(state_file);
    if let Some(staged) = state.staged.take() {
        state.booted = staged;
    }
    state.save(state_file);
}

/// One call the double received.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Call {
    pub call: String,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub args: serde_json::Value,
}

pub fn read_record(path: &Path) -> Vec<Call> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("record line"))
        .collect()
}

/// Just the method names of [`read_record`].
pub fn calls(path: &Path) -> Vec<String> {
    read_record(path).into_iter().map(|c| c.call).collect()
}

// ---------------------------------------------------------------------------------------------
// The harness side: start the double as a process, stop it by PID.

pub struct Double {
    child: Child,
    pub state_file: PathBuf,
    pub record_file: PathBuf,
}

impl Double {
    /// Start `exe` (the `rpm-ostree-double` binary) on the bus at `address`, with `state` written
    /// to `dir/rpmostree-state.json` unless `keep_state` and it exists. Returns once the double
    /// owns its bus name.
    pub fn start(
        exe: &Path,
        address: &str,
        dir: &Path,
        scenario: Scenario,
        state: Option<&State>,
    ) -> Double {
        let state_file = dir.join("rpmostree-state.json");
        let record_file = dir.join("rpmostree-calls.jsonl");
        if let Some(state) = state {
            state.save(&state_file);
        }
        let scenario = serde_json::to_value(scenario).unwrap();
        let mut child = Command::new(exe)
            .arg("--address")
            .arg(address)
            .arg("--scenario")
            .arg(scenario.as_str().unwrap())
            .arg("--state")
            .arg(&state_file)
            .arg("--record")
            .arg(&record_file)
            .arg("--socket-dir")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start rpm-ostree-double");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "READY", "rpm-ostree-double did not start");
        Double {
            child,
            state_file,
            record_file,
        }
    }

    pub fn calls(&self) -> Vec<String> {
        calls(&self.record_file)
    }

    pub fn state(&self) -> State {
        State::load(&self.state_file)
    }

    /// Whether the double's process has exited (the `vanish` scenario).
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Wait until the record holds `call`.
    pub fn wait_for_call(&self, call: &str, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if self.calls().iter().any(|c| c == call) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Double {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// The daemon side, run by `src/bin/rpm-ostree-double.rs`.

pub struct Options {
    pub address: String,
    pub scenario: Scenario,
    pub state_file: PathBuf,
    pub record_file: PathBuf,
    pub socket_dir: PathBuf,
}

struct Shared {
    opts: Options,
    transactions: u32,
}

type SharedRef = Arc<Mutex<Shared>>;

fn record(shared: &SharedRef, call: &str, args: serde_json::Value) {
    let s = shared.lock().unwrap();
    let line = serde_json::to_string(&Call {
        call: call.into(),
        args,
    })
    .unwrap();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&s.opts.record_file)
        .unwrap();
    f.write_all(format!("{line}\n").as_bytes()).unwrap();
}

fn options_json(options: &HashMap<String, OwnedVariant>) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    let mut keys: Vec<_> = options.keys().collect();
    keys.sort();
    for k in keys {
        let v = &options[k];
        let j = if let Ok(b) = bool::try_from(&**v) {
            serde_json::Value::Bool(b)
        } else if let Ok(s) = <&str>::try_from(&**v) {
            serde_json::Value::String(s.into())
        } else {
            serde_json::Value::String(format!("{:?}", **v))
        };
        m.insert(k.clone(), j);
    }
    serde_json::Value::Object(m)
}

struct Sysroot {
    shared: SharedRef,
}

#[interface(name = "org.projectatomic.rpmostree1.Sysroot")]
impl Sysroot {
    async fn register_client(&self, options: HashMap<String, OwnedVariant>) {
        record(&self.shared, "RegisterClient", options_json(&options));
    }

    async fn unregister_client(&self, options: HashMap<String, OwnedVariant>) {
        record(&self.shared, "UnregisterClient", options_json(&options));
    }

    async fn reload(&self) {
        record(&self.shared, "Reload", serde_json::Value::Null);
    }

    #[zbus(name = "GetOS")]
    async fn get_os(&self, name: &str) -> fdo::Result<OwnedObjectPath> {
        let state = State::load(&self.shared.lock().unwrap().opts.state_file);
        if name != state.osname && !name.is_empty() {
            return Err(fdo::Error::InvalidArgs(format!("No such OS: {name}")));
        }
        Ok(os_path(&state.osname))
    }

    #[zbus(property)]
    async fn booted(&self) -> OwnedObjectPath {
        let state = State::load(&self.shared.lock().unwrap().opts.state_file);
        os_path(&state.osname)
    }

    #[zbus(property)]
    async fn path(&self) -> String {
        "/".into()
    }
}

fn os_path(osname: &str) -> OwnedObjectPath {
    // Object paths take [A-Za-z0-9_] only; rpm-ostree escapes the rest the same way.
    let escaped: String = osname
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    OwnedObjectPath::try_from(format!("/org/projectatomic/rpmostree1/{escaped}")).unwrap()
}

struct Os {
    shared: SharedRef,
}

#[interface(name = "org.projectatomic.rpmostree1.OS")]
impl Os {
    async fn upgrade(&self, options: HashMap<String, OwnedVariant>) -> fdo::Result<String> {
        record(&self.shared, "Upgrade", options_json(&options));
        let (n, dir) = {
            let mut s = self.shared.lock().unwrap();
            s.transactions += 1;
            (s.transactions, s.opts.socket_dir.clone())
        };
        // Like the real daemon (a GDBusServer on `unix:tmpdir=/tmp/rpm-ostree`): an abstract
        // socket, and an address carrying the server's guid, which the client checks.
        let guid = zbus::Guid::generate();
        let name = format!("/tmp/rpm-ostree/dbus-{}-{n}", std::process::id());
        let (listener, address) = match bind_abstract(&name) {
            Ok(l) => (l, format!("unix:abstract={name},guid={guid}")),
            Err(e) => {
                // Abstract sockets are Linux-only; a path works everywhere.
                eprintln!("rpm-ostree-double: abstract socket {name}: {e}; using a path");
                let path = dir.join(format!("txn-{n}.sock"));
                let _ = std::fs::remove_file(&path);
                let l = tokio::net::UnixListener::bind(&path)
                    .map_err(|e| fdo::Error::Failed(format!("bind {}: {e}", path.display())))?;
                (l, format!("unix:path={},guid={guid}", path.display()))
            }
        };
        let txn = Arc::new(TxnState {
            shared: self.shared.clone(),
            started: Mutex::new(false),
            cancel: tokio::sync::watch::channel(false).0,
            peers: Mutex::new(Vec::new()),
        });
        tokio::spawn(accept_peers(listener, guid, txn));
        Ok(address)
    }

    #[zbus(property)]
    async fn default_deployment(&self) -> HashMap<String, OwnedVariant> {
        let state = State::load(&self.shared.lock().unwrap().opts.state_file);
        let commit = state.default_commit().clone();
        state.deployment(&commit, state.staged.is_none())
    }

    #[zbus(property)]
    async fn booted_deployment(&self) -> HashMap<String, OwnedVariant> {
        let state = State::load(&self.shared.lock().unwrap().opts.state_file);
        state.deployment(&state.booted, true)
    }

    #[zbus(property)]
    async fn name(&self) -> String {
        State::load(&self.shared.lock().unwrap().opts.state_file).osname
    }
}

struct TxnState {
    shared: SharedRef,
    started: Mutex<bool>,
    cancel: tokio::sync::watch::Sender<bool>,
    peers: Mutex<Vec<Connection>>,
}

fn bind_abstract(name: &str) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    let listener = std::os::unix::net::UnixListener::bind_addr(&addr)?;
    listener.set_nonblocking(true)?;
    tokio::net::UnixListener::from_std(listener)
}

async fn accept_peers(
    listener: tokio::net::UnixListener,
    guid: zbus::Guid<'static>,
    txn: Arc<TxnState>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let stream = stream.into_std().unwrap();
        let conn = zbus::connection::Builder::unix_stream(stream)
            .server(guid.clone())
            .p2p()
            .serve_at("/", Transaction { txn: txn.clone() })
            .build()
            .await;
        match conn {
            Ok(conn) => txn.peers.lock().unwrap().push(conn),
            Err(e) => eprintln!("rpm-ostree-double: transaction peer: {e}"),
        }
    }
}

impl TxnState {
    async fn emit<B>(&self, signal: &str, body: &B)
    where
        B: serde::Serialize + zbus::wire::DynamicType,
    {
        let peers = self.peers.lock().unwrap().clone();
        for conn in peers {
            let _ = conn
                .emit_signal(None::<&str>, "/", TXN_IFACE, signal, body)
                .await;
        }
    }

    async fn run(self: Arc<Self>) {
        let scenario = self.shared.lock().unwrap().opts.scenario;
        let state_file = self.shared.lock().unwrap().opts.state_file.clone();
        let mut state = State::load(&state_file);
        self.emit(
            "Message",
            &(format!(
                "Updating from: {}:{}/f21/x86_64/docker-host",
                state.osname, state.osname
            ),),
        )
        .await;
        match scenario {
            Scenario::Normal => {
                self.emit("TaskBegin", &("Receiving metadata objects",))
                    .await;
                self.emit("TaskEnd", &("done",)).await;
                if state.remote.checksum == state.default_commit().checksum {
                    self.emit("Message", &("No upgrade available.",)).await;
                } else {
                    self.pull_progress(3).await;
                    state.staged = Some(state.remote.clone());
                    state.save(&state_file);
                    self.emit("Message", &("Staging deployment...done",)).await;
                }
                self.emit("Finished", &(true, "")).await;
            }
            Scenario::Fail => {
                self.emit("TaskBegin", &("Receiving metadata objects",))
                    .await;
                self.emit(
                    "Finished",
                    &(false, "While pulling fedora-atomic/f21/x86_64/docker-host: Server returned HTTP 404"),
                )
                .await;
            }
            Scenario::Vanish => {
                self.pull_progress(2).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
                eprintln!("rpm-ostree-double: vanishing mid-transaction, as scripted");
                std::process::exit(3);
            }
            Scenario::Hang => {
                let mut cancel = self.cancel.subscribe();
                self.emit("TaskBegin", &("Receiving objects",)).await;
                let mut percent = 0u32;
                loop {
                    if *self.cancel.borrow() {
                        break;
                    }
                    tokio::select! {
                        _ = cancel.changed() => continue,
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {
                            percent = (percent + 1).min(99);
                            self.emit("PercentProgress", &("Receiving objects", percent)).await;
                        }
                    }
                }
                self.emit("Finished", &(false, "Operation was cancelled"))
                    .await;
            }
        }
    }

    async fn pull_progress(&self, steps: u32) {
        self.emit("TaskBegin", &("Receiving objects",)).await;
        for i in 1..=steps {
            let fetched = i * 100;
            let body = (
                (1_423_555_200u64, u64::from(i)),
                (steps - i, 0u32),
                (42u32, 42u32, 0u32),
                (0u32, 0u32, 0u32, 0u64),
                (fetched, steps * 100),
                (u64::from(fetched) * 4096, 1_048_576u64),
            );
            self.emit("DownloadProgress", &body).await;
            self.emit("PercentProgress", &("Receiving objects", 100 * i / steps))
                .await;
        }
        self.emit("ProgressEnd", &()).await;
        self.emit("TaskEnd", &("done",)).await;
    }
}

struct Transaction {
    txn: Arc<TxnState>,
}

#[interface(name = "org.projectatomic.rpmostree1.Transaction")]
impl Transaction {
    async fn start(&self) -> bool {
        record(&self.txn.shared, "Start", serde_json::Value::Null);
        let first = {
            let mut started = self.txn.started.lock().unwrap();
            !std::mem::replace(&mut *started, true)
        };
        if first {
            tokio::spawn(self.txn.clone().run());
        }
        first
    }

    async fn cancel(&self) {
        record(&self.txn.shared, "Cancel", serde_json::Value::Null);
        let _ = self.txn.cancel.send(true);
    }

    #[zbus(property)]
    async fn title(&self) -> String {
        "upgrade".into()
    }

    #[zbus(signal)]
    async fn finished(
        e: &SignalEmitter<'_>,
        success: bool,
        error_message: &str,
    ) -> zbus::Result<()>;
}

/// Serve until killed (or until a `vanish` scenario exits).
pub async fn serve(opts: Options) -> zbus::Result<()> {
    let state = State::load(&opts.state_file);
    let shared = Arc::new(Mutex::new(Shared {
        opts: Options {
            address: opts.address.clone(),
            ..opts
        },
        transactions: 0,
    }));
    let address = shared.lock().unwrap().opts.address.clone();
    let _conn = zbus::connection::Builder::address(address.as_str())
        .name(BUS_NAME)
        .serve_at(
            SYSROOT_PATH,
            Sysroot {
                shared: shared.clone(),
            },
        )
        .serve_at(
            os_path(&state.osname),
            Os {
                shared: shared.clone(),
            },
        )
        .build()
        .await?;
    println!("READY");
    std::io::stdout().flush().ok();
    std::future::pending::<()>().await;
    Ok(())
}
