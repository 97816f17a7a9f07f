//! A running `qseek serve` for the tests that talk to it over HTTP (`server.rs`,
//! `server_security.rs`, `engine.rs`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A running `qseek serve`; killed when dropped.
pub struct Server {
    child: Child,
    pub addr: String,
}

impl Server {
    pub fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    /// [`Server::start`] with these environment variables set (after the user's QSEEK_*
    /// settings are removed, so `QSEEK_TOKEN` may be one of them).
    pub fn start_with_env(args: &[&str], envs: &[(&str, &str)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_qseek"));
        command
            .args(args)
            .env_remove("QSEEK_MODEL")
            .env_remove("QSEEK_INDEX")
            .env_remove("QSEEK_TOKEN");
        for (k, v) in envs {
            command.env(k, v);
        }
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut said = Vec::new();
        let addr = loop {
            let Some(line) = lines.next() else {
                panic!("the server exited before listening: {}", said.join("\n"));
            };
            let line = line.unwrap();
            if let Some(rest) = line.strip_prefix("qseek: serving http://") {
                break rest.trim_end_matches('/').to_string();
            }
            said.push(line);
        };
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server { child, addr }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.rsplit_once(':').unwrap().1.parse().unwrap()
    }

    /// The server's peak resident memory so far (`VmHWM`), in bytes.
    pub fn peak_memory(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .expect("VmHWM in /proc/PID/status")
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .unwrap();
        kib * 1024
    }

    /// A fresh connection, nothing sent yet; reads time out after `read_timeout`.
    pub fn connect(&self, read_timeout: Duration) -> TcpStream {
        let stream = TcpStream::connect(&self.addr).unwrap();
        stream.set_read_timeout(Some(read_timeout)).unwrap();
        stream
    }

    /// One HTTP/1.1 request over a fresh connection; the path is sent as given (no
    /// normalisation), so traversal attempts reach the server as written.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Reply {
        self.request_with_host(Some(&self.addr), method, path, headers, body)
    }

    /// [`Server::request`] with this `Host` line (`None`: no `Host` line at all).
    pub fn request_with_host(
        &self,
        host: Option<&str>,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Reply {
        let mut stream = self.connect(Duration::from_secs(120));
        let mut head = format!("{method} {path} HTTP/1.1\r\n");
        if let Some(host) = host {
            head.push_str(&format!("Host: {host}\r\n"));
        }
        head.push_str(&format!(
            "Connection: close\r\nContent-Length: {}\r\n",
            body.len()
        ));
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).unwrap();
        // The server may answer (413) before reading all of a large body.
        let _ = stream.write_all(body);
        let mut raw = Vec::new();
        let _ = stream.read_to_end(&mut raw);
        Reply::parse(&raw)
    }

    pub fn get(&self, path: &str) -> Reply {
        self.request("GET", path, &[], b"")
    }

    pub fn get_json(&self, path: &str) -> Value {
        let r = self.get(path);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        r.json()
    }

    /// `POST /api/index` of `folder`: starts an indexing run (202) or says why not.
    pub fn start_indexing(&self, folder: impl AsRef<Path>) -> Reply {
        let json = [("Content-Type", "application/json")];
        self.request("POST", "/api/index", &json, &index_body(folder))
    }

    /// Waits for the indexing run to end, asking every `every` and for at most `within`:
    /// its status.
    pub fn wait_for_indexing(&self, within: Duration, every: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let status = self.get_json("/api/index");
            if status["state"] != "running" {
                return status;
            }
            assert!(Instant::now() < deadline, "still running: {status}");
            std::thread::sleep(every);
        }
    }
}

/// The body of `POST /api/index` for a folder.
pub fn index_body(folder: impl AsRef<Path>) -> Vec<u8> {
    serde_json::json!({ "folder": folder.as_ref().display().to_string() })
        .to_string()
        .into_bytes()
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
    /// Every header line, (name, value), in order.
    pub headers: Vec<(String, String)>,
}

impl Reply {
    pub fn parse(raw: &[u8]) -> Self {
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("an HTTP response");
        let head = String::from_utf8_lossy(&raw[..split]).to_string();
        let mut body = raw[split + 4..].to_vec();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        let header = |name: &str| {
            head.lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
                })
                .unwrap_or_default()
        };
        if header("transfer-encoding").eq_ignore_ascii_case("chunked") {
            body = dechunk(&body);
        }
        let headers = head
            .lines()
            .skip(1)
            .filter_map(|l| {
                let (k, v) = l.split_once(':')?;
                Some((k.trim().to_string(), v.trim().to_string()))
            })
            .collect();
        Reply {
            status,
            content_type: header("content-type"),
            body,
            headers,
        }
    }

    /// The first value of a header (the name in any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.text()))
    }
}

/// Reads one response from a connection, and returns once it is complete (its
/// `Content-Length`, the last chunk, or the end of the stream), so a kept-alive
/// connection can be read without waiting for it to close. `Ok(None)`: the server
/// closed it without a byte; an error: the read timed out or failed.
pub fn read_reply(stream: &mut TcpStream) -> std::io::Result<Option<Reply>> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        if let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
            let body = &raw[split + 4..];
            let length = head.lines().find_map(|l| {
                l.strip_prefix("content-length:")
                    .and_then(|v| v.trim().parse::<usize>().ok())
            });
            let complete = match length {
                Some(n) => body.len() >= n,
                None if head.contains("transfer-encoding: chunked") => body.ends_with(b"0\r\n\r\n"),
                // No length: the body ends with the connection (read below).
                None => false,
            };
            if complete {
                return Ok(Some(Reply::parse(&raw)));
            }
        }
        let n = stream.read(&mut buf)?;
        if n == 0 {
            if raw.is_empty() {
                return Ok(None);
            }
            if !raw.windows(4).any(|w| w == b"\r\n\r\n") {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("closed mid-response: {}", String::from_utf8_lossy(&raw)),
                ));
            }
            return Ok(Some(Reply::parse(&raw)));
        }
        raw.extend_from_slice(&buf[..n]);
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&b[..line_end]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend(&b[line_end + 2..line_end + 2 + size]);
        b = &b[line_end + 2 + size + 2..];
    }
}

/// Percent-encodes a query parameter.
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A multipart form holding `file` as its `image` field (a PNG named `q.png`): the body
/// and its `Content-Type`.
pub fn multipart(file: &[u8]) -> (String, Vec<u8>) {
    let boundary = "qseekboundary1234";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"q.png\"\r\nContent-Type: image/png\r\n\r\n"
    )
    .into_bytes();
    body.extend(file);
    body.extend(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}
