//! `phigate sessions revoke`: a small HTTP/1.1 client for the admin
//! listener's `POST /sessions/revoke` (plain HTTP on a private address,
//! like `/metrics`).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

/// Send the revocation and print the gateway's answer.
pub fn revoke(
    admin: &str,
    sid: Option<String>,
    sub: Option<String>,
    issuer: Option<String>,
    actor: Option<String>,
) -> ExitCode {
    let actor = actor.or_else(|| std::env::var("USER").ok());
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (k, v) in [("sid", sid), ("sub", sub), ("issuer", issuer), ("actor", actor)] {
        if let Some(v) = v {
            query.append_pair(k, &v);
        }
    }
    match post(admin, &format!("/sessions/revoke?{}", query.finish())) {
        Ok((200, body)) => {
            println!("{}", body.trim_end());
            ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            eprintln!(
                "phigate sessions revoke: the gateway answered {status}: {}",
                body.trim_end()
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("phigate sessions revoke: {admin}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `POST target` to `admin` (`host:port` or `http://host:port`); the status and body.
fn post(admin: &str, target: &str) -> std::io::Result<(u16, String)> {
    let host = admin
        .strip_prefix("http://")
        .unwrap_or(admin)
        .trim_end_matches('/');
    let addr = host
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other("no address"))?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "POST {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP response"))?;
    Ok((status, body.to_string()))
}
