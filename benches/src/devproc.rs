//! A `phigate dev` child process for the load tools (`load`, `soak`,
//! `transport`): free loopback ports, a temporary audit spool, readiness,
//! the demo upstream's address, tokens from `/dev/token`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free loopback port (bind `127.0.0.1:0`, read it, release it).
pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| panic!("no free loopback port: {e}"))
}

/// `GET target` with `Connection: close`: (status, body).
pub fn http_get(addr: SocketAddr, target: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out.split(' ').nth(1).and_then(|x| x.parse().ok()).unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// A running `phigate dev`, killed on drop.
pub struct DevProcess {
    child: Child,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    /// The in-process demo FHIR upstream (from the dev banner).
    pub upstream: SocketAddr,
    pub log: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Drop for DevProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last 20 lines of a log file.
pub fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

impl DevProcess {
    /// Start `binary dev` on free ports, its spool and logs in a temporary
    /// directory, and wait until `/readyz` is 200. `extra` gets that
    /// directory (to write files there) and returns more arguments
    /// (`--audit-durability none`, `--tls-listen …`).
    pub fn start(binary: &str, extra: impl FnOnce(&Path) -> Vec<String>) -> Result<DevProcess, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let extra = extra(dir.path());
        let (proxy, admin) = (free_addr(), free_addr());
        let log = dir.path().join("phigate.log");
        let child = Command::new(binary)
            .args([
                "dev",
                "--listen",
                &proxy.to_string(),
                "--admin-listen",
                &admin.to_string(),
            ])
            .arg("--audit-file")
            .arg(dir.path().join("audit.jsonl"))
            .arg("--audit-dir")
            .arg(dir.path().join("spool"))
            .args(&extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("cannot start {binary}: {e} (build it with --release first)"))?;
        let mut dev = DevProcess {
            child,
            proxy,
            admin,
            upstream: proxy,
            log,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(http_get(admin, "/readyz"), Ok((200, _))) {
            dev.alive()?;
            if Instant::now() > deadline {
                return Err(format!("phigate not ready after 30 s:\n{}", tail(&dev.log)));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let banner = std::fs::read_to_string(&dev.log).map_err(|e| e.to_string())?;
        dev.upstream = banner
            .lines()
            .find_map(|l| l.trim().strip_prefix("upstream   http://"))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .ok_or("no demo upstream address in the dev banner")?;
        Ok(dev)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An error if the gateway has exited, with the end of its log.
    pub fn alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!("the gateway exited ({status}):\n{}", tail(&self.log))),
            Err(e) => Err(format!("cannot wait for the gateway: {e}")),
        }
    }

    /// A token with `scope` (space-separated), valid for an hour.
    pub fn token(&self, scope: &str) -> Result<String, String> {
        let scope = scope.replace(' ', "%20");
        match http_get(self.admin, &format!("/dev/token?scope={scope}&ttl=3600")) {
            Ok((200, body)) => Ok(body.trim().to_string()),
            Ok((s, body)) => Err(format!("/dev/token answered {s}: {body}")),
            Err(e) => Err(format!("/dev/token: {e}")),
        }
    }
}
