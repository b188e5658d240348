//! Pod networking: a host bridge, one named network namespace per sandbox joined to it by a
//! veth pair, and IP addresses from the host's pod CIDR.
//!
//! The network is configured with iproute2's `ip` rather than through netlink crates: `ip
//! netns add` implements the `/run/netns` bind-mount convention that other tools (and our
//! tests) rely on, moving the peer into the namespace and configuring it from inside needs
//! `setns` on a dedicated thread with the netlink crates, and a sandbox costs three `ip`
//! runs (a few milliseconds). Every failure carries the command and its stderr.
//!
//! Addresses are handed out by [`Ipam`], persisted in the state directory under a lock file,
//! so concurrent processes and restarted agents never hand one address out twice.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

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

/// Runs `ip ARGS`, feeding `stdin` (for `-batch -`) when given.
async fn ip(args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    let mut cmd = Command::new("ip");
    cmd.args(args)
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .context("running `ip` (is iproute2 installed?)")?;
    if let Some(input) = stdin
        && let Some(mut pipe) = child.stdin.take()
    {
        pipe.write_all(input.as_bytes()).await?;
        drop(pipe);
    }
    let out = child.wait_with_output().await?;
    if !out.status.success() {
        anyhow::bail!(
            "`ip {}` failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            stdin
                .map(|s| format!(" [batch: {}]", s.trim().replace('\n', "; ")))
                .unwrap_or_default()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn is_missing(err: &anyhow::Error) -> bool {
    let text = format!("{err:#}");
    text.contains("Cannot find device")
        || text.contains("No such file or directory")
        || text.contains("does not exist")
}

/// Creates `bridge` with the CIDR's gateway address if missing, and brings it up. Safe to
/// call concurrently from several processes.
pub async fn ensure_bridge(bridge: &str, cidr: Cidr) -> anyhow::Result<()> {
    if ip(&["link", "show", "dev", bridge], None).await.is_err()
        && let Err(e) = ip(&["link", "add", "name", bridge, "type", "bridge"], None).await
        && ip(&["link", "show", "dev", bridge], None).await.is_err()
    {
        return Err(e);
    }
    let gateway = format!("{}/{}", cidr.gateway(), cidr.prefix);
    let addrs = ip(&["-o", "-4", "addr", "show", "dev", bridge], None).await?;
    if !addrs.split_whitespace().any(|w| w == gateway)
        && let Err(e) = ip(&["addr", "add", &gateway, "dev", bridge], None).await
        && !format!("{e:#}").contains("File exists")
    {
        return Err(e);
    }
    ip(&["link", "set", "dev", bridge, "up"], None).await?;
    Ok(())
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
        Path::new("/run/netns").join(&self.netns_name)
    }

    /// Creates the namespace, the veth pair on `bridge`, and configures `eth0` with `ip` and
    /// a default route via the gateway. On failure, whatever was made is removed again.
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
        ip(&["netns", "add", &self.netns_name], None).await?;
        ip(
            &[
                "link",
                "add",
                "name",
                &self.host_veth,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &self.netns_name,
            ],
            None,
        )
        .await?;
        ip(
            &[
                "link",
                "set",
                "dev",
                &self.host_veth,
                "master",
                bridge,
                "up",
            ],
            None,
        )
        .await?;
        let inside = format!(
            "link set dev lo up\naddr add {ip_addr}/{prefix} dev eth0\nlink set dev eth0 up\n\
             route add default via {gw} dev eth0\n",
            prefix = cidr.prefix,
            gw = cidr.gateway()
        );
        ip(&["-n", &self.netns_name, "-batch", "-"], Some(&inside)).await?;
        Ok(())
    }

    /// Deletes the veth pair and the namespace (unmounting and removing its file).
    /// Idempotent: parts already gone are skipped.
    pub async fn destroy(&self) -> anyhow::Result<()> {
        if let Err(e) = ip(&["link", "del", "dev", &self.host_veth], None).await
            && !is_missing(&e)
        {
            return Err(e);
        }
        if self.netns_path().exists()
            && let Err(e) = ip(&["netns", "del", &self.netns_name], None).await
            && !is_missing(&e)
        {
            return Err(e);
        }
        Ok(())
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
