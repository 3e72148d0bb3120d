//! A real `nats-server` with JetStream on an ephemeral loopback port, its
//! store in a temp dir; it can be stopped and restarted on the same port and
//! store. The same approach as `tests/src/nats.rs` (phigate-tests), copied:
//! that crate depends on the gateway, which depends on this one.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Poll `f` until it returns `Some`, for at most `limit` (bounded waiting,
/// never a timing assertion).
pub fn eventually<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The async form of [`eventually`].
pub async fn eventually_async<T, F, Fut>(limit: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `nats-server` binary: `$PATH`, then Debian's `/usr/sbin`.
pub fn nats_server_binary() -> PathBuf {
    let from_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("nats-server"))
            .find(|p| p.is_file())
    });
    from_path
        .or_else(|| {
            ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
                .iter()
                .map(PathBuf::from)
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| panic!("nats-server not found; run scripts/bootstrap.sh"))
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

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
    }

    /// Graceful stop (SIGTERM), SIGKILL after 5 s.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
            let exited = eventually(Duration::from_secs(5), || c.try_wait().ok().flatten().map(|_| ()));
            if exited.is_none() {
                let _ = c.kill();
            }
            let _ = c.wait();
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
