//! What a benchmark can learn about a server on the same machine from `/proc`: which process
//! listens on its port, and how much memory and CPU time that process uses.

use std::fs;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// The resident set size of process `pid`, in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The CPU time process `pid` has used so far, user and system, all threads.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields resume after its last `)`.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks_per_second = u64::try_from(ticks_per_second).ok().filter(|&t| t > 0)?;
    Some(Duration::from_secs_f64(
        (user + system) as f64 / ticks_per_second as f64,
    ))
}

/// The process listening on `addr` on this machine, if any and visible to us: the listening
/// socket's inode from `/proc/net/tcp{,6}`, then the process holding that socket open.
pub fn pid_listening_on(addr: SocketAddr) -> Option<u32> {
    let inode = listening_inode(addr)?;
    let target = format!("socket:[{inode}]");
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if fs::read_link(fd.path()).is_ok_and(|link| link.as_os_str() == target.as_str()) {
                return Some(pid);
            }
        }
    }
    None
}

/// The inode of a socket listening on `addr`'s port whose address is `addr`'s or a wildcard.
fn listening_inode(addr: SocketAddr) -> Option<u64> {
    const LISTEN: &str = "0A";
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 10 || fields[3] != LISTEN {
                continue;
            }
            let Some((ip_hex, port_hex)) = fields[1].split_once(':') else {
                continue;
            };
            if u16::from_str_radix(port_hex, 16).ok() != Some(addr.port()) {
                continue;
            }
            if ip_matches(ip_hex, addr) {
                return fields[9].parse().ok();
            }
        }
    }
    None
}

/// Whether a `/proc/net/tcp{,6}` address is `addr`'s IP, a wildcard, or the IPv4-mapped form of
/// it. The kernel prints the address as 32-bit words, each the in-memory (network-order) bytes
/// read as a host-order integer, so `to_ne_bytes` gives the bytes back.
fn ip_matches(hex: &str, addr: SocketAddr) -> bool {
    if !hex.len().is_multiple_of(8) || !hex.is_ascii() {
        return false;
    }
    let mut octets = Vec::with_capacity(hex.len() / 2);
    for i in (0..hex.len()).step_by(8) {
        let Ok(word) = u32::from_str_radix(&hex[i..i + 8], 16) else {
            return false;
        };
        octets.extend_from_slice(&word.to_ne_bytes());
    }
    let ip: IpAddr = if let Ok(v4) = <[u8; 4]>::try_from(octets.as_slice()) {
        v4.into()
    } else if let Ok(v6) = <[u8; 16]>::try_from(octets.as_slice()) {
        Ipv6Addr::from(v6).to_canonical()
    } else {
        return false;
    };
    ip.is_unspecified() || ip == addr.ip().to_canonical()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_our_own_listening_socket_and_rss() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        assert_eq!(pid_listening_on(addr), Some(std::process::id()));
        assert!(rss_bytes(std::process::id()).unwrap() > 1024 * 1024);
        // Spinning uses CPU time, which shows within a few clock ticks.
        let before = cpu_time(std::process::id()).unwrap();
        let spin = std::time::Instant::now();
        while cpu_time(std::process::id()).unwrap() == before {
            assert!(
                spin.elapsed() < Duration::from_secs(10),
                "CPU time never moved"
            );
        }
        drop(listener);
        assert_eq!(pid_listening_on(addr), None);
    }

    #[test]
    fn finds_an_ipv6_loopback_listener() {
        let Ok(listener) = std::net::TcpListener::bind("[::1]:0") else {
            return;
        };
        let addr = listener.local_addr().unwrap();
        assert_eq!(pid_listening_on(addr), Some(std::process::id()));
    }
}
