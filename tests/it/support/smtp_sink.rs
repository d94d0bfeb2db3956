//! A real SMTP server for tests (RFC 5321's minimum: EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP,
//! QUIT), started on a random loopback port; it keeps every message it is given. idbridge's
//! mailer talks to it over TCP exactly as to a production relay (`tls = "none"`): nothing of
//! the mailer is replaced.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// One message as the sink received it.
#[derive(Debug, Clone)]
pub struct Captured {
    /// The reverse path of `MAIL FROM:<…>`.
    pub from: String,
    /// The forward paths of every `RCPT TO:<…>`.
    pub to: Vec<String>,
    /// The message (headers and body) with the dot-stuffing undone (RFC 5321 §4.5.2).
    pub data: String,
}

impl Captured {
    /// The body with quoted-printable soft line breaks joined, for reading links out of it.
    pub fn text(&self) -> String {
        self.data.replace("=\r\n", "").replace("=3D", "=")
    }

    /// The value of a `name=` query parameter of the first link in the mail (64 hex digits).
    pub fn link_param(&self, name: &str) -> Option<String> {
        let text = self.text();
        let marker = format!("{name}=");
        let start = text.find(&marker)? + marker.len();
        let value: String = text[start..]
            .chars()
            .take_while(|c| c.is_ascii_hexdigit())
            .collect();
        (!value.is_empty()).then_some(value)
    }
}

/// A running sink; stops when dropped.
pub struct SmtpSink {
    port: u16,
    messages: Arc<Mutex<Vec<Captured>>>,
    task: tokio::task::JoinHandle<()>,
}

impl SmtpSink {
    /// Starts the sink on 127.0.0.1 and a free port.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind sink");
        let port = listener.local_addr().expect("sink address").port();
        let messages: Arc<Mutex<Vec<Captured>>> = Arc::default();
        let store = messages.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let store = store.clone();
                tokio::spawn(async move {
                    let _ = session(stream, store).await;
                });
            }
        });
        Self {
            port,
            messages,
            task,
        }
    }

    /// The `[smtp]` table pointing idbridge at this sink.
    pub fn settings(&self) -> String {
        format!(
            "[smtp]\nhost = \"127.0.0.1\"\nport = {}\nfrom = \"IT Service Desk <it@contoso.com>\"\ntls = \"none\"\ntimeout_seconds = 5\n",
            self.port
        )
    }

    /// Every message received so far.
    pub fn messages(&self) -> Vec<Captured> {
        self.messages.lock().expect("sink lock").clone()
    }

    /// Waits (up to 15 s) until at least `n` messages arrived, and returns them all.
    pub async fn wait_for(&self, n: usize) -> Vec<Captured> {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let got = self.messages();
            if got.len() >= n {
                return got;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the SMTP sink got {} message(s), expected {n}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The path inside `<…>` of a MAIL or RCPT argument.
fn path_of(argument: &str) -> String {
    let start = argument.find('<').map_or(0, |i| i + 1);
    let end = argument[start..]
        .find('>')
        .map_or(argument.len(), |i| i + start);
    argument[start..end].to_string()
}

async fn session(stream: TcpStream, store: Arc<Mutex<Vec<Captured>>>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    write.write_all(b"220 sink.test ESMTP ready\r\n").await?;
    let mut from = String::new();
    let mut to = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let command = line.trim_end().to_string();
        let verb = command
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        match verb.as_str() {
            "EHLO" => {
                write
                    .write_all(b"250-sink.test greets you\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n")
                    .await?
            }
            "HELO" => write.write_all(b"250 sink.test\r\n").await?,
            "MAIL" => {
                from = path_of(&command);
                to.clear();
                write.write_all(b"250 2.1.0 OK\r\n").await?;
            }
            "RCPT" => {
                to.push(path_of(&command));
                write.write_all(b"250 2.1.5 OK\r\n").await?;
            }
            "DATA" if to.is_empty() => write.write_all(b"503 5.5.1 RCPT first\r\n").await?,
            "DATA" => {
                write
                    .write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    .await?;
                let mut data = String::new();
                loop {
                    line.clear();
                    if lines.read_line(&mut line).await? == 0 {
                        return Ok(());
                    }
                    if line == ".\r\n" || line == ".\n" {
                        break;
                    }
                    // Dot-stuffing: a leading dot was doubled by the client.
                    data.push_str(line.strip_prefix('.').unwrap_or(&line));
                }
                store.lock().expect("sink lock").push(Captured {
                    from: from.clone(),
                    to: std::mem::take(&mut to),
                    data,
                });
                write.write_all(b"250 2.0.0 OK: queued\r\n").await?;
            }
            "RSET" => {
                from.clear();
                to.clear();
                write.write_all(b"250 2.0.0 OK\r\n").await?;
            }
            "NOOP" => write.write_all(b"250 2.0.0 OK\r\n").await?,
            "QUIT" => {
                write.write_all(b"221 2.0.0 Bye\r\n").await?;
                return Ok(());
            }
            _ => {
                write
                    .write_all(b"502 5.5.2 Command not implemented\r\n")
                    .await?
            }
        }
    }
}
