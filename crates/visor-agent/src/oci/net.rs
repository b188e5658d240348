//! Pod networking: a host bridge, one named network namespace per sandbox joined to it by a
//! veth pair, and IP addresses from the host's pod CIDR.
//!
//! Everything is done in-process over rtnetlink (the `rtnetlink` crate) rather than by running
//! iproute2's `ip`: a pod start used to cost seven `ip` process starts, which on a small host
//! queue behind each other when many pods start at once, while a netlink request costs
//! microseconds. The result is what `ip` made: the namespace is bind-mounted at
//! `/run/netns/NAME` (the convention `ip netns` and other tools follow, with `/run/netns` a
//! shared mount), the veth's pod end is created directly in the namespace as `eth0`, and the
//! host end is enslaved to the bridge.
//!
//! A netlink socket acts in the network namespace it was opened in, so the namespace's own
//! configuration (loopback up, `eth0`'s address, the default route) goes through a socket
//! opened by a short-lived thread that `unshare`s into the new namespace; the agent's runtime
//! threads never change namespace.
//!
//! Addresses are handed out by [`Ipam`], persisted in the state directory under a lock file,
//! so concurrent processes and restarted agents never hand one address out twice.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use futures::TryStreamExt;
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth};
use rtnetlink::packet_route::route::RouteProtocol;
use rtnetlink::{LinkBridge, LinkMessageBuilder, LinkUnspec, RouteMessageBuilder};
use serde::{Deserialize, Serialize};

/// An IPv4 network, `ADDRESS/PREFIX`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        let (addr, prefix) = s
            .split_once('/')
            .with_context(|| format!("pod CIDR {s:?} is not ADDRESS/PREFIX"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .with_context(|| format!("pod CIDR {s:?}: {addr:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| (8..=30).contains(p))
            .with_context(|| format!("pod CIDR {s:?}: the prefix must be 8 to 30"))?;
        let mask = u32::MAX << (32 - prefix);
        Ok(Cidr {
            network: Ipv4Addr::from(u32::from(addr) & mask),
            prefix,
        })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl Cidr {
    /// The bridge's address: the first host address of the network.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// Host addresses pods may get: all but the network, gateway and broadcast addresses.
    fn pod_addresses(&self) -> impl Iterator<Item = Ipv4Addr> {
        let first = u32::from(self.network) + 2;
        let broadcast = u32::from(self.network) | (u32::MAX >> self.prefix);
        (first..broadcast).map(Ipv4Addr::from)
    }
}

/// Persisted address allocations: `ADDRESS → sandbox id`.
#[derive(Default, Serialize, Deserialize)]
struct Allocations {
    allocated: BTreeMap<Ipv4Addr, String>,
}

/// The pod CIDR's address allocator. Each call takes an exclusive lock on `ipam.lock`.
pub struct Ipam {
    cidr: Cidr,
    dir: PathBuf,
}

impl Ipam {
    pub fn new(cidr: Cidr, dir: &Path) -> Self {
        Self {
            cidr,
            dir: dir.to_path_buf(),
        }
    }

    fn locked<T>(
        &self,
        f: impl FnOnce(&mut Allocations) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let lock_path = self.dir.join("ipam.lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("opening {}", lock_path.display()))?;
        File::lock(&lock).with_context(|| format!("locking {}", lock_path.display()))?;
        let path = self.dir.join("ipam.json");
        let mut allocations: Allocations = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is corrupt", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Allocations::default(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let out = f(&mut allocations)?;
        super::write_atomic(&path, &serde_json::to_vec_pretty(&allocations)?)?;
        Ok(out)
    }

    /// Gives `owner` an address, the same one again if it already holds one.
    pub fn allocate(&self, owner: &str) -> anyhow::Result<Ipv4Addr> {
        let cidr = self.cidr;
        self.locked(|a| {
            if let Some((ip, _)) = a.allocated.iter().find(|(_, o)| *o == owner) {
                return Ok(*ip);
            }
            let ip = cidr
                .pod_addresses()
                .find(|ip| !a.allocated.contains_key(ip))
                .with_context(|| format!("pod CIDR {cidr} has no free address left"))?;
            a.allocated.insert(ip, owner.to_string());
            Ok(ip)
        })
    }

    /// Releases whatever `owner` holds. Idempotent.
    pub fn release(&self, owner: &str) -> anyhow::Result<()> {
        self.locked(|a| {
            a.allocated.retain(|_, o| o != owner);
            Ok(())
        })
    }
}

/// Where named network namespaces are bind-mounted, as `ip netns` does.
const NETNS_DIR: &str = "/run/netns";

/// An rtnetlink connection acting in the network namespace it was opened in. Its task runs on
/// the Tokio runtime and is stopped when this is dropped.
struct Netlink {
    handle: rtnetlink::Handle,
    task: tokio::task::JoinHandle<()>,
}

impl Netlink {
    /// Opens a connection in the calling thread's network namespace. Needs a Tokio runtime
    /// context.
    fn open() -> anyhow::Result<Self> {
        let (connection, handle, _) =
            rtnetlink::new_connection().context("opening a netlink socket")?;
        Ok(Self {
            handle,
            task: tokio::spawn(connection),
        })
    }

    /// The index of the link called `name`, `None` when there is none.
    async fn index_of(&self, name: &str) -> anyhow::Result<Option<u32>> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(link) => Ok(link.map(|l| l.header.index)),
            Err(e) if errno(&e) == Some(Errno::ENODEV) => Ok(None),
            Err(e) => Err(nl_error(e, format!("looking up link {name}"))),
        }
    }
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The kernel's error number in a netlink error reply.
fn errno(e: &rtnetlink::Error) -> Option<Errno> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| Errno::from_raw(-c.get())),
        _ => None,
    }
}

/// A netlink failure as an error saying what was being done, with the kernel's reason.
fn nl_error(e: rtnetlink::Error, doing: String) -> anyhow::Error {
    match errno(&e) {
        Some(code) => anyhow::anyhow!("{doing}: {}", std::io::Error::from(code)),
        None => anyhow::anyhow!("{doing}: {e}"),
    }
}

/// Makes `/run/netns` a shared mount point of its own, as `ip netns add` does, so that the
/// namespaces bound under it are seen from every mount namespace (runc's containers
/// included). Done once per process.
fn prepare_netns_dir() -> anyhow::Result<()> {
    static READY: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut ready = READY.lock().unwrap_or_else(|p| p.into_inner());
    if *ready {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(NETNS_DIR)
        .with_context(|| format!("creating {NETNS_DIR}"))?;
    let shared = || {
        nix::mount::mount(
            Some("none"),
            NETNS_DIR,
            Some("none"),
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match shared() {
        Ok(()) => {}
        // Not a mount point yet: bind it onto itself first.
        Err(Errno::EINVAL) => {
            nix::mount::mount(
                Some(NETNS_DIR),
                NETNS_DIR,
                Some("none"),
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .with_context(|| format!("bind-mounting {NETNS_DIR} onto itself"))?;
            shared().with_context(|| format!("making {NETNS_DIR} a shared mount"))?;
        }
        Err(e) => {
            return Err(e).with_context(|| format!("making {NETNS_DIR} a shared mount"));
        }
    }
    *ready = true;
    Ok(())
}

/// Creates a network namespace bound at `path` and returns a netlink connection inside it.
/// Runs on a thread of its own, which it moves into the new namespace: the thread must end
/// when this returns. On failure the namespace file may remain (the caller removes it).
fn new_netns(path: &Path, runtime: tokio::runtime::Handle) -> anyhow::Result<Netlink> {
    prepare_netns_dir()?;
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o0)
        .open(path)
        .with_context(|| format!("creating the namespace file {}", path.display()))?;
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .context("unsharing the network namespace")?;
    let own = format!("/proc/self/task/{}/ns/net", nix::unistd::gettid());
    nix::mount::mount(
        Some(own.as_str()),
        path,
        Some("none"),
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .with_context(|| format!("bind-mounting the namespace at {}", path.display()))?;
    let _runtime = runtime.enter();
    Netlink::open()
}

/// Creates `bridge` with the CIDR's gateway address if missing, and brings it up. Safe to
/// call concurrently from several processes.
pub async fn ensure_bridge(bridge: &str, cidr: Cidr) -> anyhow::Result<()> {
    let host = Netlink::open()?;
    let index = match host.index_of(bridge).await? {
        Some(index) => index,
        None => {
            let made = host
                .handle
                .link()
                .add(LinkBridge::new(bridge).build())
                .execute()
                .await;
            // Another process may have made it in between.
            if let Err(e) = made
                && errno(&e) != Some(Errno::EEXIST)
            {
                return Err(nl_error(e, format!("creating bridge {bridge}")));
            }
            host.index_of(bridge)
                .await?
                .with_context(|| format!("bridge {bridge} is gone right after creating it"))?
        }
    };
    let added = host
        .handle
        .address()
        .add(index, IpAddr::V4(cidr.gateway()), cidr.prefix)
        .execute()
        .await;
    if let Err(e) = added
        && errno(&e) != Some(Errno::EEXIST)
    {
        return Err(nl_error(
            e,
            format!("adding {}/{} to {bridge}", cidr.gateway(), cidr.prefix),
        ));
    }
    host.handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(|e| nl_error(e, format!("bringing {bridge} up")))
}

/// The names one sandbox's network uses.
pub struct SandboxNet {
    /// Under `/run/netns`.
    pub netns_name: String,
    /// The host end of the veth pair (at most 15 characters).
    pub host_veth: String,
}

impl SandboxNet {
    pub fn for_sandbox(id: &str) -> Self {
        Self {
            netns_name: format!("visor-{id}"),
            host_veth: format!("vz{}", &id[..12.min(id.len())]),
        }
    }

    pub fn netns_path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.netns_name)
    }

    /// Creates the namespace, the veth pair on `bridge`, and gives `eth0` the address `ip_addr`
    /// and a default route via the gateway. On failure, whatever was made is removed again.
    pub async fn create(&self, bridge: &str, cidr: Cidr, ip_addr: Ipv4Addr) -> anyhow::Result<()> {
        let result = self.create_inner(bridge, cidr, ip_addr).await;
        if result.is_err() {
            let _ = self.destroy().await;
        }
        result
    }

    async fn create_inner(
        &self,
        bridge: &str,
        cidr: Cidr,
        ip_addr: Ipv4Addr,
    ) -> anyhow::Result<()> {
        let path = self.netns_path();
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let runtime = tokio::runtime::Handle::current();
        let thread_path = path.clone();
        std::thread::Builder::new()
            .name("visor-netns".into())
            .spawn(move || {
                let _ = sender.send(new_netns(&thread_path, runtime));
            })
            .context("starting the namespace thread")?;
        let inside = receiver
            .await
            .context("the namespace thread ended without an answer")??;

        let host = Netlink::open()?;
        let netns = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        let peer = LinkUnspec::new_with_name("eth0")
            .setns_by_fd(netns.as_raw_fd())
            .build();
        let veth = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
            .name(self.host_veth.clone())
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        host.handle.link().add(veth).execute().await.map_err(|e| {
            nl_error(
                e,
                format!(
                    "creating veth {} with eth0 in {}",
                    self.host_veth, self.netns_name
                ),
            )
        })?;
        drop(netns);
        let bridge_index = host
            .index_of(bridge)
            .await?
            .with_context(|| format!("bridge {bridge} does not exist"))?;
        host.handle
            .link()
            .set(
                LinkUnspec::new_with_name(&self.host_veth)
                    .controller(bridge_index)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(|e| nl_error(e, format!("attaching {} to {bridge}", self.host_veth)))?;

        let doing = |what: &str| format!("{what} in {}", self.netns_name);
        inside
            .handle
            .link()
            .set(LinkUnspec::new_with_name("lo").up().build())
            .execute()
            .await
            .map_err(|e| nl_error(e, doing("bringing lo up")))?;
        let eth0 = inside
            .index_of("eth0")
            .await?
            .with_context(|| doing("no eth0"))?;
        inside
            .handle
            .address()
            .add(eth0, IpAddr::V4(ip_addr), cidr.prefix)
            .execute()
            .await
            .map_err(|e| {
                nl_error(
                    e,
                    doing(&format!("adding {ip_addr}/{} to eth0", cidr.prefix)),
                )
            })?;
        inside
            .handle
            .link()
            .set(LinkUnspec::new_with_index(eth0).up().build())
            .execute()
            .await
            .map_err(|e| nl_error(e, doing("bringing eth0 up")))?;
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(cidr.gateway())
            .output_interface(eth0)
            .protocol(RouteProtocol::Boot)
            .build();
        inside
            .handle
            .route()
            .add(route)
            .execute()
            .await
            .map_err(|e| {
                nl_error(
                    e,
                    doing(&format!("adding the default route via {}", cidr.gateway())),
                )
            })?;
        Ok(())
    }

    /// Deletes the veth pair and the namespace (unmounting and removing its file).
    /// Idempotent: parts already gone are skipped.
    pub async fn destroy(&self) -> anyhow::Result<()> {
        let host = Netlink::open()?;
        let deleted = host
            .handle
            .link()
            .del_with_message(LinkUnspec::new_with_name(&self.host_veth).build())
            .execute()
            .await;
        if let Err(e) = deleted
            && errno(&e) != Some(Errno::ENODEV)
        {
            return Err(nl_error(e, format!("deleting veth {}", self.host_veth)));
        }
        let path = self.netns_path();
        match nix::mount::umount2(&path, MntFlags::MNT_DETACH) {
            Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
            Err(e) => {
                return Err(e).with_context(|| format!("unmounting {}", path.display()));
            }
        }
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", path.display()))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parsing_and_ranges() {
        let c: Cidr = "10.88.0.7/24".parse().unwrap();
        assert_eq!(c.to_string(), "10.88.0.0/24");
        assert_eq!(c.gateway(), Ipv4Addr::new(10, 88, 0, 1));
        let all: Vec<_> = c.pod_addresses().collect();
        assert_eq!(all.first(), Some(&Ipv4Addr::new(10, 88, 0, 2)));
        assert_eq!(all.last(), Some(&Ipv4Addr::new(10, 88, 0, 254)));
        assert!("10.88.0.0".parse::<Cidr>().is_err());
        assert!("10.88.0.0/31".parse::<Cidr>().is_err());
        assert!("fd00::/64".parse::<Cidr>().is_err());
    }

    #[test]
    fn ipam_never_hands_out_an_address_twice() {
        let dir = tempfile::tempdir().unwrap();
        let cidr: Cidr = "10.1.2.0/29".parse().unwrap();
        let a = Ipam::new(cidr, dir.path());
        let b = Ipam::new(cidr, dir.path());
        let ip1 = a.allocate("s1").unwrap();
        let ip2 = b.allocate("s2").unwrap();
        assert_ne!(ip1, ip2);
        assert_eq!(a.allocate("s1").unwrap(), ip1, "same owner, same address");
        for n in 3..=5 {
            b.allocate(&format!("s{n}")).unwrap();
        }
        // /29: .2 to .6 are pod addresses, five in all.
        assert!(a.allocate("s6").is_err());
        a.release("s2").unwrap();
        assert_eq!(b.allocate("s6").unwrap(), ip2);
    }
}
