//! The compliance console (DESIGN §10) over HTTP: sessions, scoping, escaping, exports and
//! verification (pages.rs), and the same journeys in headless Chromium (browser.rs).

mod browser;
mod pages;

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::*;

/// An HTTP answer, its body decoded from chunks if it came in them.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A person at the console without a browser: one cookie, requests one at a time.
pub struct Visitor {
    addr: SocketAddr,
    pub cookie: Option<String>,
}

impl Visitor {
    pub fn new(app: &TestApp) -> Self {
        Self {
            addr: app.console_addr,
            cookie: None,
        }
    }

    /// Signs in with `token`; the answer is the sign-in's own.
    pub async fn sign_in(&mut self, token: &str) -> Answer {
        let body = format!("token={}", form_encode(token));
        let answer = self
            .send(
                "POST",
                "/sign-in",
                Some(("application/x-www-form-urlencoded", body.as_bytes())),
            )
            .await;
        if let Some(set) = answer.header("set-cookie") {
            self.cookie = set.split(';').next().map(str::to_owned);
        }
        answer
    }

    /// A visitor signed in with `token`.
    pub async fn signed_in(app: &TestApp, token: &str) -> Self {
        let mut visitor = Self::new(app);
        let answer = visitor.sign_in(token).await;
        assert_eq!(answer.status, 303, "{answer:?}");
        visitor
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send("GET", path, None).await
    }

    pub async fn post(&self, path: &str, content_type: &str, body: &[u8]) -> Answer {
        self.send("POST", path, Some((content_type, body))).await
    }

    async fn send(&self, method: &str, path: &str, body: Option<(&str, &[u8])>) -> Answer {
        let mut stream = TcpStream::connect(self.addr).await.unwrap();
        let mut head =
            format!("{method} {path} HTTP/1.1\r\nHost: console\r\nConnection: close\r\n");
        if let Some(cookie) = &self.cookie {
            head.push_str(&format!("Cookie: {cookie}\r\n"));
        }
        if let Some((content_type, body)) = body {
            head.push_str(&format!(
                "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        if let Some((_, body)) = body {
            stream.write_all(body).await.unwrap();
        }
        let mut raw = vec![];
        stream.read_to_end(&mut raw).await.unwrap();
        parse(&raw)
    }
}

fn parse(raw: &[u8]) -> Answer {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Answer {
        status,
        headers,
        body: String::from_utf8(body).expect("UTF-8 pages"),
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = vec![];
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("a chunk size");
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&data[..line_end])
                .split(';')
                .next()
                .unwrap()
                .trim(),
            16,
        )
        .expect("a hex chunk size");
        data = &data[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

pub fn form_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A multipart form body with text fields and one file field; returns the content type too.
pub fn multipart(fields: &[(&str, &str)], file: Option<(&str, &str)>) -> (String, Vec<u8>) {
    let boundary = "console-test-boundary-7d1c";
    let mut body = String::new();
    for (name, value) in fields {
        body.push_str(&format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
        ));
    }
    if let Some((name, content)) = file {
        body.push_str(&format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"checkpoint.json\"\r\nContent-Type: application/json\r\n\r\n{content}\r\n"
        ));
    }
    body.push_str(&format!("--{boundary}--\r\n"));
    (
        format!("multipart/form-data; boundary={boundary}"),
        body.into_bytes(),
    )
}
