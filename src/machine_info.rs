//! Facts about the machine a node runs on, for `local_node_info` in `GET /v1/bootstrap`:
//! read from the real system (`/proc`, `statvfs`, the network interfaces) on each request.

use std::path::Path;

use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct Address {
    pub address: String,
    pub format: &'static str,
    pub if_name: String,
    pub private: bool,
}

pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Total memory in MiB.
pub fn total_memory_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("MemTotal:"))
                .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib / 1024)
}

/// Seconds since the machine booted.
pub fn uptime_secs() -> u64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0, |secs| secs as u64)
}

pub fn os_version() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("PRETTY_NAME="))
                .map(|name| name.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| std::env::consts::OS.to_string())
}

/// Size of the file system holding `path`, in MiB.
pub fn filesystem_size_mib(path: &Path) -> f64 {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return 0.0;
    };
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is a valid NUL-terminated string and `stat` a writable statvfs.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return 0.0;
    }
    (stat.f_blocks as f64 * stat.f_frsize as f64) / (1024.0 * 1024.0)
}

pub fn addresses() -> Vec<Address> {
    let Ok(interfaces) = if_addrs::get_if_addrs() else {
        return Vec::new();
    };
    interfaces
        .into_iter()
        .filter(|iface| !iface.is_loopback())
        .map(|iface| {
            let ip = iface.ip();
            let private = match ip {
                std::net::IpAddr::V4(v4) => v4.is_private() || v4.is_link_local(),
                std::net::IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) == 0xfc00,
            };
            Address {
                address: ip.to_string(),
                format: if ip.is_ipv4() { "ipv4" } else { "ipv6" },
                if_name: iface.name,
                private,
            }
        })
        .collect()
}
