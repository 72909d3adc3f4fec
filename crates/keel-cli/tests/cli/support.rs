//! `keel serve` run as a child process, and a GET that sends its path as written.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `keel serve` over `public`, on a free port, until dropped.
pub struct Server {
    child: Child,
    pub base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn serve(public: &Path) -> Server {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["serve", "--public"])
        .arg(public)
        .current_dir(std::env::temp_dir())
        .env("PORT", port.to_string())
        // Never connected to: static files and health need no database.
        .env("DATABASE_URL", "postgres://keel:keel@127.0.0.1:9/keel")
        .env("LOG_LEVEL", "error")
        .env_remove("KEEL_LOCAL_MODEL_DIR")
        .stdout(Stdio::null())
        .spawn()
        .expect("keel serve starts");
    let server = Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(&server, "/api/health").map(|r| r.0) != Some(200) {
        assert!(
            Instant::now() < deadline,
            "keel serve did not answer on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    server
}

/// Status, content type and body of a GET, the path sent as written.
pub fn get(server: &Server, path: &str) -> Option<(u16, String, String)> {
    use std::io::{Read as _, Write as _};
    let mut stream =
        std::net::TcpStream::connect(server.base.trim_start_matches("http://")).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let content_type = head
        .lines()
        .find_map(|line| {
            line.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_owned)
        })
        .unwrap_or_default();
    Some((status, content_type, body.to_owned()))
}
