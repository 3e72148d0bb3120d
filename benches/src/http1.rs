//! A minimal HTTP/1.1 response reader for the load tools' own requests
//! (readiness probes, idle connections, soak clients): status line, headers,
//! a Content-Length or chunked body. Not a general client.

use std::io::{BufRead, Read};

/// Read one HTTP/1.1 response (Content-Length or chunked): (status, body).
pub fn read_response(r: &mut impl BufRead) -> std::io::Result<(u16, String)> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(bad("connection closed before a response"));
    }
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status line"))?;
    let (mut len, mut chunked) = (0usize, false);
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(bad("eof in the response head"));
        }
        if line == "\r\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse().map_err(|_| bad("content-length"))?;
        } else if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
    }
    let mut body = Vec::new();
    if !chunked {
        r.take(len as u64).read_to_end(&mut body)?;
        return Ok((status, String::from_utf8_lossy(&body).into_owned()));
    }
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
            .map_err(|_| bad("chunk size"))?;
        if size == 0 {
            loop {
                line.clear();
                if r.read_line(&mut line)? == 0 || line == "\r\n" {
                    return Ok((status, String::from_utf8_lossy(&body).into_owned()));
                }
            }
        }
        r.take(size as u64).read_to_end(&mut body)?;
        line.clear();
        r.read_line(&mut line)?;
    }
}
