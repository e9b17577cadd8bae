//! Throwaway PostgreSQL clusters for hookflow's tests and benchmarks.
//!
//! [`Cluster::start`] runs `initdb` into a fresh temporary directory and starts a private
//! `postgres` on it with `pg_ctl`; [`shared`] gives every test of one test binary the same
//! cluster, each test taking its own database with [`Cluster::fresh_database`].
//!
//! Invariants:
//! - No system service: the cluster lives in its own temporary directory (data, unix socket and
//!   server log), started from the server binaries of the installed PostgreSQL (found on `PATH`,
//!   else the highest version under Debian's `/usr/lib/postgresql/*/bin`). Without them
//!   [`Cluster::start`] fails, saying how to install them: tests fail, they never pass silently.
//! - Loopback only: the server listens on 127.0.0.1 at a free port, trusting every local
//!   connection as the superuser `postgres`.
//! - Real durability: `fsync` stays on and commits are synchronous, so tests that stop or kill
//!   PostgreSQL mid-load see what production would.
//! - It stops by itself: dropping a [`Cluster`] stops the server and removes the directory, and
//!   a watchdog process (in its own session) does the same once the test process is gone, even
//!   after a panic or SIGKILL, and for the never-dropped [`shared`] cluster.
//! - As root (initdb refuses to run as root) the server runs as Debian's `postgres` system
//!   user, via `runuser`, in a directory owned by that user.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use tempfile::TempDir;

/// Where Debian's `postgresql-<version>` packages put their binaries: `<version>/bin`.
const DEBIAN_ROOT: &str = "/usr/lib/postgresql";
/// The server binaries a cluster needs, all from one installation.
const SERVER_TOOLS: [&str; 3] = ["initdb", "pg_ctl", "postgres"];
/// Start attempts, each on a new free port: another process may take the port between our
/// probe and the server's bind.
const START_ATTEMPTS: usize = 5;
/// Lines of the server log quoted in a start error.
const LOG_TAIL_LINES: usize = 30;

/// Why a cluster could not be started or used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No installation of the PostgreSQL server binaries was found.
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on PATH nor under \
         {DEBIAN_ROOT}/*/bin: install them with `apt-get install postgresql` (or run `.ci/run`, \
         which does)"
    )]
    NotInstalled,
    /// A command could not be run or a file not written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: io::Error,
    },
    /// A command ran and failed.
    #[error("{what} failed ({status}):\n{output}")]
    Failed {
        /// The command, in words.
        what: String,
        /// Its exit status.
        status: ExitStatus,
        /// Its output, and for a server start the tail of the server log.
        output: String,
    },
    /// A database name that is not plain ASCII letters, digits and underscores.
    #[error("invalid database name {0:?}: use 1 to 63 ASCII letters, digits and underscores")]
    InvalidName(String),
}

/// A private PostgreSQL cluster in a temporary directory, listening on 127.0.0.1.
///
/// Dropping it stops the server immediately and removes the directory.
#[derive(Debug)]
pub struct Cluster {
    /// The directory holding `initdb`, `pg_ctl` and `postgres`.
    bin: PathBuf,
    port: u16,
    /// Whether the server tools run as the `postgres` user (we are root).
    as_postgres: bool,
    /// Stops the server and removes `dir` once this process is gone.
    watchdog: Child,
    /// Holds `data/` (the cluster), `server.log` and the unix socket.
    dir: TempDir,
}

impl Cluster {
    /// Creates a cluster in a new temporary directory and starts it on a free loopback port.
    pub fn start() -> Result<Cluster, Error> {
        let bin = find_bin(std::env::var_os("PATH").as_deref(), Path::new(DEBIAN_ROOT))
            .ok_or(Error::NotInstalled)?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let as_postgres = unsafe { libc::geteuid() } == 0;
        let dir = tempfile::Builder::new()
            .prefix("hookflow-pg-")
            .tempdir()
            .map_err(io_err("creating the cluster's temporary directory"))?;
        if as_postgres {
            // `postgres:` is the user with its login group; Debian's package creates it.
            run(
                "chown postgres: on the cluster directory (as root, PostgreSQL runs as the \
                 `postgres` system user)",
                Command::new("chown").arg("postgres:").arg(dir.path()),
            )?;
        }
        let watchdog = spawn_watchdog(&bin, dir.path(), as_postgres)?;
        // From here on, an error drops `cluster`, which cleans up.
        let mut cluster = Cluster {
            bin,
            port: 0,
            as_postgres,
            watchdog,
            dir,
        };
        run(
            "initdb",
            cluster
                .server_tool("initdb")
                .arg("-D")
                .arg(cluster.data_dir())
                .args([
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                ]),
        )?;
        cluster.write_config()?;
        let mut attempt = 1;
        loop {
            cluster.port = free_port()?;
            match cluster.launch() {
                Ok(()) => return Ok(cluster),
                Err(Error::Failed { output, .. })
                    if attempt < START_ATTEMPTS && output.contains("Address already in use") =>
                {
                    attempt += 1
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The URL of the `postgres` database, as the superuser `postgres`.
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }

    /// The URL of database `db`, as the superuser `postgres`.
    pub fn url_for(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates database `name` (ASCII letters, digits and underscores) and returns its URL.
    pub fn create_database(&self, name: &str) -> Result<String, Error> {
        let plain = name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !plain || name.is_empty() || name.len() > 63 {
            return Err(Error::InvalidName(name.to_owned()));
        }
        run(
            &format!("creating database {name}"),
            self.psql(&self.url())
                .arg("-c")
                .arg(format!("CREATE DATABASE \"{name}\"")),
        )?;
        Ok(self.url_for(name))
    }

    /// Creates a database with a name unique in this cluster and returns its URL.
    pub fn fresh_database(&self) -> Result<String, Error> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        self.create_database(&format!("t_{n}_{}", std::process::id()))
    }

    /// A `psql` command of the same installation connected to `url`, without reading `~/.psqlrc`
    /// and stopping at the first error; add e.g. `-tAc 'select 1'`.
    pub fn psql(&self, url: &str) -> Command {
        let installed = self.bin.join("psql");
        let mut cmd = Command::new(if installed.is_file() {
            installed.as_path()
        } else {
            Path::new("psql")
        });
        cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url])
            .stdin(Stdio::null());
        cmd
    }

    /// Stops the server cleanly (`pg_ctl stop -m fast`) and waits until it is down.
    pub fn stop(&self) -> Result<(), Error> {
        self.pg_ctl_stop("fast")
    }

    /// Stops the server abruptly (`pg_ctl stop -m immediate`, like a crash: the next start runs
    /// crash recovery) and waits until it is down.
    pub fn kill(&self) -> Result<(), Error> {
        self.pg_ctl_stop("immediate")
    }

    /// Starts the server again after [`stop`](Self::stop) or [`kill`](Self::kill), with the same
    /// data and port; waits until it accepts connections.
    pub fn start_again(&self) -> Result<(), Error> {
        self.launch()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// A command running server tool `name`, as the `postgres` user when we are root.
    fn server_tool(&self, name: &str) -> Command {
        let tool = self.bin.join(name);
        let mut cmd = if self.as_postgres {
            let mut cmd = Command::new(runuser());
            cmd.args(["-u", "postgres", "--"]).arg(tool);
            cmd
        } else {
            Command::new(tool)
        };
        // A working directory the `postgres` user can enter.
        cmd.current_dir(self.dir.path()).stdin(Stdio::null());
        cmd
    }

    /// Appends our settings to `postgresql.conf`; the port is given at each start instead.
    fn write_config(&self) -> Result<(), Error> {
        let socket_dir = self.dir.path().to_string_lossy().replace('\'', "''");
        let settings = format!(
            "\n# hookflow-testpg: loopback only, durable, sized for many test connections.\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{socket_dir}'\n\
             fsync = on\n\
             synchronous_commit = on\n\
             shared_buffers = 128MB\n\
             max_connections = 200\n"
        );
        let path = self.data_dir().join("postgresql.conf");
        fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(settings.as_bytes()))
            .map_err(io_err(format!("writing {}", path.display())))
    }

    /// `pg_ctl start`, waiting until the server accepts connections; a failure quotes the part
    /// of the server log this attempt wrote.
    fn launch(&self) -> Result<(), Error> {
        let log = self.log_path();
        let before = fs::metadata(&log).map_or(0, |m| m.len() as usize);
        let what = format!("pg_ctl start on port {}", self.port);
        let output = output(
            &what,
            self.server_tool("pg_ctl")
                .arg("-D")
                .arg(self.data_dir())
                .arg("-l")
                .arg(&log)
                .arg("-o")
                .arg(format!("-p {}", self.port))
                .args(["-w", "start"]),
        )?;
        if output.status.success() {
            return Ok(());
        }
        let written = fs::read(&log).unwrap_or_default();
        let written = String::from_utf8_lossy(written.get(before..).unwrap_or_default());
        let lines: Vec<&str> = written.lines().collect();
        let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
        Err(Error::Failed {
            what,
            status: output.status,
            output: format!(
                "{}\nserver log ({}):\n{tail}",
                combined(&output),
                log.display()
            ),
        })
    }

    fn pg_ctl_stop(&self, mode: &str) -> Result<(), Error> {
        run(
            &format!("pg_ctl stop -m {mode}"),
            self.server_tool("pg_ctl")
                .arg("-D")
                .arg(self.data_dir())
                .args(["-m", mode, "-w", "stop"]),
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Fails harmlessly when the server is not running; `dir` is removed after this.
        let _ = self.kill();
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
    }
}

/// The cluster shared by all tests of this process, started on first use; it is never dropped,
/// its watchdog stops it when the process exits.
///
/// Panics if it cannot be started: a test needing PostgreSQL must fail without it.
pub fn shared() -> &'static Cluster {
    static SHARED: OnceLock<Cluster> = OnceLock::new();
    SHARED.get_or_init(|| {
        Cluster::start().unwrap_or_else(|e| panic!("starting the shared PostgreSQL cluster: {e}"))
    })
}

/// The directory holding all of `SERVER_TOOLS`: where `initdb` on `path` really lives (following
/// symlinks), else the highest version's `bin` under `debian_root`.
fn find_bin(path: Option<&OsStr>, debian_root: &Path) -> Option<PathBuf> {
    let complete = |dir: &Path| SERVER_TOOLS.iter().all(|tool| dir.join(tool).is_file());
    let on_path = path
        .into_iter()
        .flat_map(std::env::split_paths)
        .find_map(|dir| {
            let initdb = fs::canonicalize(dir.join("initdb")).ok()?;
            let bin = initdb.parent()?;
            complete(bin).then(|| bin.to_path_buf())
        });
    on_path.or_else(|| {
        fs::read_dir(debian_root)
            .ok()?
            .filter_map(|entry| {
                let entry = entry.ok()?;
                let version = entry
                    .file_name()
                    .to_str()?
                    .split('.')
                    .map(|part| part.parse::<u32>().ok())
                    .collect::<Option<Vec<u32>>>()?;
                let bin = entry.path().join("bin");
                complete(&bin).then_some((version, bin))
            })
            .max()
            .map(|(_, bin)| bin)
    })
}

/// A free TCP port on 127.0.0.1, released for the server to take.
fn free_port() -> Result<u16, Error> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(io_err("finding a free port on 127.0.0.1"))
}

/// A process in its own session (out of reach of the terminal's signals) that waits for this
/// process to be gone, then stops the server and removes `dir`. Its arguments: `$1` our pid,
/// `$2` the server tools' directory, `$3` the cluster directory, `$4` `runuser`.
fn spawn_watchdog(bin: &Path, dir: &Path, as_postgres: bool) -> Result<Child, Error> {
    let pg_ctl = if as_postgres {
        r#""$4" -u postgres -- "$2/pg_ctl""#
    } else {
        r#""$2/pg_ctl""#
    };
    let script = format!(
        r#"while kill -0 "$1" 2>/dev/null; do sleep 0.5; done; {pg_ctl} -D "$3/data" -m immediate -w stop; rm -rf "$3""#
    );
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(script)
        .arg("hookflow-testpg-watchdog")
        .arg(std::process::id().to_string())
        .arg(bin)
        .arg(dir)
        .arg(runuser())
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe, as required between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        });
    }
    cmd.spawn()
        .map_err(io_err("spawning the cluster's watchdog"))
}

/// `runuser` (util-linux), which root's `PATH` has in `/usr/sbin` but others' may lack.
fn runuser() -> &'static Path {
    ["/usr/sbin/runuser", "/sbin/runuser"]
        .into_iter()
        .map(Path::new)
        .find(|path| path.is_file())
        .unwrap_or(Path::new("runuser"))
}

/// Runs `cmd` to completion; a failure carries its output.
fn run(what: &str, cmd: &mut Command) -> Result<(), Error> {
    let output = output(what, cmd)?;
    if output.status.success() {
        Ok(())
    } else {
        Err(Error::Failed {
            what: what.to_owned(),
            status: output.status,
            output: combined(&output),
        })
    }
}

/// Runs `cmd` to completion, capturing its output; an error names the program that could not run.
fn output(what: &str, cmd: &mut Command) -> Result<Output, Error> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    cmd.output()
        .map_err(io_err(format!("{what} (running {program})")))
}

fn combined(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn install(bin: &Path, tools: &[&str]) {
        fs::create_dir_all(bin).unwrap();
        for tool in tools {
            fs::write(bin.join(tool), "").unwrap();
        }
    }

    #[test]
    fn debian_layout_gives_the_highest_complete_version() {
        let root = tempfile::tempdir().unwrap();
        install(&root.path().join("9.6/bin"), &SERVER_TOOLS);
        install(&root.path().join("15/bin"), &SERVER_TOOLS);
        install(&root.path().join("16/bin"), &["initdb"]);
        install(&root.path().join("latest/bin"), &SERVER_TOOLS);
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(
            find_bin(Some(empty.path().as_os_str()), root.path()),
            Some(root.path().join("15/bin"))
        );
    }

    #[test]
    fn path_wins_and_symlinks_lead_to_the_installation() {
        let root = tempfile::tempdir().unwrap();
        let real = root.path().join("real");
        install(&real, &SERVER_TOOLS);
        let linked = root.path().join("linked");
        fs::create_dir(&linked).unwrap();
        std::os::unix::fs::symlink(real.join("initdb"), linked.join("initdb")).unwrap();
        install(&root.path().join("debian/15/bin"), &SERVER_TOOLS);
        assert_eq!(
            find_bin(Some(linked.as_os_str()), &root.path().join("debian")),
            Some(fs::canonicalize(&real).unwrap())
        );
    }

    #[test]
    fn nothing_installed_says_how_to_install() {
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(
            find_bin(Some(empty.path().as_os_str()), &empty.path().join("none")),
            None
        );
        assert!(Error::NotInstalled
            .to_string()
            .contains("apt-get install postgresql"));
    }
}
