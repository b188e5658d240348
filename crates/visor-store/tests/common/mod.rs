//! Test fixtures: a throwaway SQLite store, and a real single-member etcd on loopback ports.

#![allow(dead_code)]

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use visor_store::DynStore;
use visor_store::etcd::EtcdStore;
use visor_store::sqlite::SqliteStore;

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("test runtime")
}

pub fn sqlite() -> (tempfile::TempDir, DynStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&dir.path().join("state.db")).expect("open sqlite store");
    (dir, Arc::new(store))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// One etcd process owned by a test; killed (by its PID only) when dropped.
pub struct Etcd {
    child: Child,
    pub endpoint: String,
    dir: tempfile::TempDir,
}

impl Etcd {
    pub fn start() -> Etcd {
        let dir = tempfile::tempdir().expect("tempdir");
        let client = format!("http://127.0.0.1:{}", free_port());
        let peer = format!("http://127.0.0.1:{}", free_port());
        let log = std::fs::File::create(dir.path().join("etcd.log")).expect("etcd log");
        let mut command = Command::new("/usr/bin/etcd");
        command
            .arg("--name=test")
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // If this test process dies without running destructors, take etcd with it.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command.spawn().expect("start /usr/bin/etcd");
        Etcd {
            child,
            endpoint: client,
            dir,
        }
    }

    /// Connects, retrying until etcd answers; if etcd exits instead, its log.
    pub async fn connect(&mut self) -> Result<DynStore, String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log =
                    std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default();
                return Err(format!("etcd exited early: {status}\n{log}"));
            }
            match EtcdStore::connect(std::slice::from_ref(&self.endpoint)).await {
                Ok(store) => return Ok(Arc::new(store)),
                Err(e) if Instant::now() > deadline => panic!("etcd did not become ready: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// A started and connected etcd. A free port can be taken by another test between our
    /// probe and etcd's bind: then it tries other ports.
    pub async fn start_connected() -> (Etcd, DynStore) {
        for _ in 0..5 {
            let mut etcd = Etcd::start();
            match etcd.connect().await {
                Ok(store) => return (etcd, store),
                Err(log) if log.contains("address already in use") => continue,
                Err(log) => panic!("{log}"),
            }
        }
        panic!("etcd found no free loopback ports in five tries");
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `check` against a fresh SQLite store.
pub fn with_sqlite<F, Fut>(check: F)
where
    F: FnOnce(DynStore) -> Fut,
    Fut: Future<Output = ()>,
{
    let (_dir, store) = sqlite();
    runtime().block_on(check(store));
}

/// Runs `check` against a fresh etcd.
pub fn with_etcd<F, Fut>(check: F)
where
    F: FnOnce(DynStore) -> Fut,
    Fut: Future<Output = ()>,
{
    let rt = runtime();
    let etcd = rt.block_on(async {
        let (etcd, store) = Etcd::start_connected().await;
        check(store).await;
        etcd
    });
    drop(rt);
    drop(etcd);
}
