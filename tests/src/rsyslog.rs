//! A real `rsyslogd` (Debian `rsyslog`, plus `rsyslog-gnutls` for TLS) run
//! in the foreground as a test receiver: `imtcp` on a loopback port —
//! plain TCP or TLS (RFC 5425, `gtls` driver) with certificates made by
//! [`TestPki`] — writing each received message as one line of
//! `PRI \t APP-NAME \t MSGID \t STRUCTURED-DATA \t MSG` to a file.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::eventually;
use crate::nats::{find_binary, terminate};

/// A CA and a server certificate for `127.0.0.1`/`localhost`, plus a client
/// certificate, as PEM files in a temp dir.
pub struct TestPki {
    pub dir: tempfile::TempDir,
}

impl TestPki {
    pub fn generate() -> TestPki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "phigate test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        for (name, sans) in [
            ("server", vec!["localhost".to_string(), "127.0.0.1".to_string()]),
            ("client", vec!["phigate-client".to_string()]),
        ] {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(sans).unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            let cert = params.signed_by(&key, &issuer).unwrap();
            std::fs::write(dir.path().join(format!("{name}.pem")), cert.pem()).unwrap();
            std::fs::write(dir.path().join(format!("{name}.key")), key.serialize_pem()).unwrap();
        }
        TestPki { dir }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }
}

/// One message as rsyslog parsed and stored it.
#[derive(Debug, Clone)]
pub struct Received {
    pub pri: u8,
    pub app_name: String,
    pub msgid: String,
    pub structured_data: String,
    pub msg: String,
}

impl Received {
    /// An SD-PARAM value of the structured data (unescaped).
    pub fn sd_param(&self, name: &str) -> Option<String> {
        let start = self.structured_data.find(&format!(" {name}=\""))? + name.len() + 3;
        let mut out = String::new();
        let mut chars = self.structured_data[start..].chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => out.push(chars.next()?),
                '"' => return Some(out),
                c => out.push(c),
            }
        }
        None
    }
}

pub struct Rsyslog {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    tls: Option<PathBuf>,
}

impl Rsyslog {
    /// Plain TCP receiver.
    pub fn start_tcp() -> Rsyslog {
        Self::start(None)
    }

    /// TLS receiver with `pki`'s server certificate; clients must present a
    /// certificate issued by the same CA (`x509/certvalid`).
    pub fn start_tls(pki: &TestPki) -> Rsyslog {
        Self::start(Some(pki.dir.path().to_owned()))
    }

    fn start(tls: Option<PathBuf>) -> Rsyslog {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("work")).unwrap();
        let mut r = Rsyslog {
            child: None,
            port: 0,
            dir,
            tls,
        };
        r.spawn(None);
        r.port = eventually(Duration::from_secs(10), || {
            std::fs::read_to_string(r.dir.path().join("port"))
                .ok()
                .and_then(|p| p.trim().parse().ok())
                .filter(|p| *p != 0)
        })
        .unwrap_or_else(|| panic!("rsyslogd reported no port:\n{}", r.log()));
        r.wait_listening();
        r
    }

    fn spawn(&mut self, port: Option<u16>) {
        let d = self.dir.path();
        let driver = match &self.tls {
            None => String::new(),
            Some(pki) => format!(
                "global(DefaultNetstreamDriver=\"gtls\" DefaultNetstreamDriverCAFile=\"{ca}\" \
                 DefaultNetstreamDriverCertFile=\"{cert}\" DefaultNetstreamDriverKeyFile=\"{key}\")\n",
                ca = pki.join("ca.pem").display(),
                cert = pki.join("server.pem").display(),
                key = pki.join("server.key").display(),
            ),
        };
        let module = if self.tls.is_some() {
            r#"module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.AuthMode="x509/certvalid")"#
        } else {
            r#"module(load="imtcp")"#
        };
        let conf = format!(
            r#"global(workDirectory="{work}" maxMessageSize="64k")
{driver}{module}
template(name="fields" type="string" string="%pri%\t%app-name%\t%msgid%\t%structured-data%\t%msg%\n")
ruleset(name="audit") {{
  action(type="omfile" file="{out}" template="fields")
}}
input(type="imtcp" address="127.0.0.1" port="{port}" listenPortFileName="{portfile}" ruleset="audit")
"#,
            work = d.join("work").display(),
            out = d.join("received.log").display(),
            port = port.unwrap_or(0),
            portfile = d.join("port").display(),
        );
        std::fs::write(d.join("rsyslog.conf"), conf).unwrap();
        let bin = find_binary("rsyslogd", &["/usr/sbin/rsyslogd"])
            .unwrap_or_else(|| panic!("rsyslogd not found; run scripts/bootstrap.sh"));
        let child = Command::new(bin)
            .arg("-n")
            .arg("-f")
            .arg(d.join("rsyslog.conf"))
            .arg("-i")
            .arg(d.join("rsyslogd.pid"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("rsyslogd.log")).unwrap())
            .spawn()
            .expect("spawn rsyslogd");
        self.child = Some(child);
    }

    fn wait_listening(&self) {
        let port = self.port;
        eventually(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
        })
        .unwrap_or_else(|| panic!("rsyslogd not listening on {port}:\n{}", self.log()));
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("rsyslogd.log")).unwrap_or_default()
    }

    pub fn output_file(&self) -> PathBuf {
        self.dir.path().join("received.log")
    }

    /// Every message received so far (across restarts).
    pub fn received(&self) -> Vec<Received> {
        parse_output(&self.output_file())
    }

    /// Graceful stop (SIGTERM: rsyslog drains its queue to the file).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(&mut c, Duration::from_secs(5));
        }
    }

    /// Start again on the same port, appending to the same output file.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn(Some(self.port));
        // (rsyslog writes the port file only for port 0.)
        let port = self.port;
        let ok = eventually(Duration::from_secs(10), || {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(_)) = c.try_wait() {
                    return Some(false);
                }
            }
            std::net::TcpStream::connect(("127.0.0.1", port))
                .ok()
                .map(|_| true)
        });
        assert_eq!(ok, Some(true), "rsyslogd did not restart:\n{}", self.log());
    }
}

fn parse_output(path: &Path) -> Vec<Received> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.splitn(5, '\t').collect();
            assert_eq!(f.len(), 5, "unexpected rsyslog output line {l:?}");
            Received {
                pri: f[0].parse().unwrap(),
                app_name: f[1].into(),
                msgid: f[2].into(),
                structured_data: f[3].into(),
                msg: f[4].trim_start().into(),
            }
        })
        .collect()
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
