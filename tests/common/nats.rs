//! `nats-server` processes for tests (Debian package `nats-server`): a
//! 3-node JetStream cluster on loopback, and a reader that takes a whole
//! stream back with async-nats. Not part of `common/mod.rs` (it would put
//! async-nats into every test binary): a test includes it with
//! `#[path = "common/nats.rs"] mod nats;` (`sink_nats.rs`, `outlet_e2e.rs`).

#![allow(dead_code)] // each test binary uses a different part

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures_lite::StreamExt;

use crate::common::{require_tool, TempDir};

/// Longest wait for anything the servers do (start, elect, answer).
pub const WAIT: Duration = Duration::from_secs(60);

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `nats-server`, or a skip naming its package.
pub fn nats_bin() -> Option<PathBuf> {
    require_tool("nats-server", "nats-server")
}

/// One `nats-server` process; SIGKILLed when dropped.
pub struct Nats {
    bin: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
    pub port: u16,
    log: PathBuf,
    _dir: Arc<TempDir>,
}

impl Nats {
    fn spawn(bin: &Path, args: Vec<String>, port: u16, dir: Arc<TempDir>, tag: &str) -> Nats {
        let log = dir.path().join(format!("{tag}.log"));
        let mut n = Nats {
            bin: bin.to_owned(),
            args,
            child: None,
            port,
            log,
            _dir: dir,
        };
        n.start();
        n
    }

    /// Starts (or restarts) the process and waits until it listens.
    pub fn start(&mut self) {
        let log = std::fs::File::create(&self.log).unwrap();
        let child = Command::new(&self.bin)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let until = Instant::now() + WAIT;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < until,
                "nats-server did not listen on {addr}:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn url(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A single JetStream node with its store under a fresh directory.
pub fn single(bin: &Path) -> Nats {
    single_with(bin, "")
}

/// [`single`], with `conf` lines in its config file (e.g. a small
/// `max_payload`); the command line still sets address, port, name and
/// store.
pub fn single_with(bin: &Path, conf: &str) -> Nats {
    let dir = Arc::new(TempDir::new("nats"));
    let port = free_port();
    let conf_path = dir.path().join("n.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let args = vec![
        "-c".into(),
        conf_path.display().to_string(),
        "-a".into(),
        "127.0.0.1".into(),
        "-p".into(),
        port.to_string(),
        "-n".into(),
        "solo".into(),
        "-js".into(),
        "-sd".into(),
        dir.path().join("store").display().to_string(),
    ];
    Nats::spawn(bin, args, port, dir, "solo")
}

/// Three JetStream nodes in one cluster, routes on loopback.
pub fn cluster(bin: &Path) -> Vec<Nats> {
    let dir = Arc::new(TempDir::new("nats-cluster"));
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let routes: Vec<String> = ports
        .iter()
        .map(|(_, c)| format!("nats://127.0.0.1:{c}"))
        .collect();
    ports
        .iter()
        .enumerate()
        .map(|(i, &(port, cport))| {
            let name = format!("n{}", i + 1);
            let args = vec![
                "-a".into(),
                "127.0.0.1".into(),
                "-p".into(),
                port.to_string(),
                "-n".into(),
                name.clone(),
                "-js".into(),
                "-sd".into(),
                dir.path().join(&name).display().to_string(),
                "--cluster_name".into(),
                "ringmx-test".into(),
                "--cluster".into(),
                format!("nats://127.0.0.1:{cport}"),
                "--routes".into(),
                routes.join(","),
            ];
            Nats::spawn(bin, args, port, dir.clone(), &name)
        })
        .collect()
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

pub async fn js(url: &str) -> jetstream::Context {
    let c = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(format!("nats://{url}"))
        .await
        .unwrap();
    jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(5))
        .build(c)
}

/// Waits until JetStream answers (a cluster first elects its meta leader).
pub async fn wait_jetstream(js: &jetstream::Context) {
    let until = Instant::now() + WAIT;
    loop {
        // "No such stream" comes from the meta leader: elected, ready.
        match js.get_stream("NO_SUCH_STREAM").await {
            Err(e)
                if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
            {
                return
            }
            other => assert!(
                Instant::now() < until,
                "JetStream never ready: {:?}",
                other.err()
            ),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// What one stored message holds.
#[derive(Debug)]
pub struct Got {
    pub subject: String,
    pub headers: BTreeMap<String, Vec<String>>,
    pub payload: Vec<u8>,
}

impl Got {
    /// The one value of header `name`; panics on none or several.
    pub fn one(&self, name: &str) -> &str {
        match self.headers.get(name).map(Vec::as_slice) {
            Some([v]) => v,
            other => panic!(
                "{name}: want one value, have {other:?} in {:?}",
                self.headers
            ),
        }
    }
}

/// How many messages `stream` holds now; `None` while it does not exist
/// or the cluster cannot say (a node just died).
pub async fn stream_count(js: &jetstream::Context, stream: &str) -> Option<u64> {
    let mut s = js.get_stream(stream).await.ok()?;
    Some(s.info().await.ok()?.state.messages)
}

/// Every message of `stream`, read with an ephemeral pull consumer; checks
/// the consumer sees exactly as many as the stream says it holds.
pub async fn read_stream(js: &jetstream::Context, stream: &str) -> Vec<Got> {
    let until = Instant::now() + WAIT;
    let mut s = loop {
        match js.get_stream(stream).await {
            Ok(s) => break s,
            Err(e) => assert!(Instant::now() < until, "stream {stream}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // A cluster that just lost a node may take a while to place a
    // consumer: retry until WAIT.
    let (count, mut msgs) = loop {
        let tried = async {
            let count = s.info().await?.state.messages as usize;
            let consumer = s
                .create_consumer(jetstream::consumer::pull::Config {
                    ack_policy: jetstream::consumer::AckPolicy::None,
                    ..Default::default()
                })
                .await?;
            Ok::<_, async_nats::Error>((count, consumer.messages().await?))
        };
        match tried.await {
            Ok(r) => break r,
            Err(e) => assert!(Instant::now() < until, "consumer on {stream}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let m = tokio::time::timeout(WAIT, msgs.next())
            .await
            .expect("the consumer stalled")
            .expect("the consumer ended")
            .unwrap();
        let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
        if let Some(h) = &m.headers {
            for (name, values) in h.iter() {
                headers
                    .entry(name.to_string())
                    .or_default()
                    .extend(values.iter().map(|v| v.as_str().to_owned()));
            }
        }
        out.push(Got {
            subject: m.subject.to_string(),
            headers,
            payload: m.payload.to_vec(),
        });
    }
    out
}
