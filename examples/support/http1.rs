//! A minimal HTTP/1.1 keep-alive exchange for the benchmark clients
//! (`fault_client`, `purge_load`): send a request, read one response
//! (Content-Length or chunked), say whether the server closes.

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Why an exchange failed, and whether any of the answer had arrived.
pub struct Failed {
    pub error: std::io::Error,
    pub answer_started: bool,
}

impl From<std::io::Error> for Failed {
    fn from(error: std::io::Error) -> Self {
        Failed {
            error,
            answer_started: true,
        }
    }
}

/// Sends the request and reads one response; its status and whether the
/// server closes the connection after it.
pub async fn exchange(
    reader: &mut BufReader<TcpStream>,
    request: &[u8],
) -> Result<(u16, bool), Failed> {
    let unanswered = |error| Failed {
        error,
        answer_started: false,
    };
    reader
        .get_mut()
        .write_all(request)
        .await
        .map_err(unanswered)?;
    let mut line = String::new();
    match reader.read_line(&mut line).await {
        Ok(0) => return Err(unanswered(std::io::ErrorKind::UnexpectedEof.into())),
        Err(e) => return Err(unanswered(e)),
        Ok(_) => {}
    }
    Ok(read_rest(reader, &line).await?)
}

/// Reads the rest of a response whose status line is `line`.
pub async fn read_rest(
    reader: &mut BufReader<TcpStream>,
    line: &str,
) -> std::io::Result<(u16, bool)> {
    let mut line = line.to_owned();
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(std::io::ErrorKind::InvalidData)?;
    let (mut length, mut chunked, mut close) = (0usize, false, false);
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let Some((name, value)) = l.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
        match name.as_str() {
            "content-length" => length = value.parse().unwrap_or(0),
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            "connection" => close = value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    if chunked {
        loop {
            line.clear();
            reader.read_line(&mut line).await?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidData))?;
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).await?;
            if size == 0 {
                break;
            }
        }
    } else {
        let mut body = vec![0; length];
        reader.read_exact(&mut body).await?;
    }
    Ok((status, close))
}

pub fn kind(e: &std::io::Error) -> &'static str {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => "refused",
        ConnectionReset => "reset",
        UnexpectedEof | BrokenPipe => "closed",
        TimedOut => "timeout",
        _ => "io",
    }
}
