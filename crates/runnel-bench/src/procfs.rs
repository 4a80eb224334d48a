//! Reads memory and CPU use of a process and its descendants from Linux `/proc`.
//!
//! RSS comes from `VmRSS` in `/proc/<pid>/status` (resident pages, shared ones counted in every
//! process that maps them, as `ps` does); CPU from `utime + stime` in `/proc/<pid>/stat`.
//! Processes that exit during a scan are skipped, not errors. Linux only; it does not use
//! cgroups or smaps (PSS), which would be more exact for shared pages but much slower to read
//! for a thousand processes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::BenchError;

/// Memory of a process tree at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TreeMemory {
    /// RSS of the root process alone, KiB.
    pub root_kib: u64,
    /// RSS of the root and all its descendants, KiB.
    pub tree_kib: u64,
    /// Number of processes in the tree, root included.
    pub processes: usize,
}

/// RSS of `pid` in KiB.
pub fn rss_kib(pid: u32) -> Result<u64, BenchError> {
    let path = PathBuf::from(format!("/proc/{pid}/status"));
    let text = read(&path)?;
    parse_vm_rss(&text).ok_or_else(|| invalid(&path, "no VmRSS line"))
}

/// RSS of `pid` and of every descendant.
pub fn tree_memory(pid: u32) -> Result<TreeMemory, BenchError> {
    let root_kib = rss_kib(pid)?;
    let descendants = descendants(pid)?;
    let mut tree_kib = root_kib;
    let mut processes = 1;
    for child in descendants {
        // A child may exit between the scan and this read: skip it.
        if let Ok(kib) = rss_kib(child) {
            tree_kib += kib;
            processes += 1;
        }
    }
    Ok(TreeMemory {
        root_kib,
        tree_kib,
        processes,
    })
}

/// User plus system CPU time of `pid` (all its threads, not its children), in seconds.
pub fn cpu_seconds(pid: u32) -> Result<f64, BenchError> {
    let path = PathBuf::from(format!("/proc/{pid}/stat"));
    let text = read(&path)?;
    let stat = parse_stat(&text).ok_or_else(|| invalid(&path, "unexpected format"))?;
    #[allow(clippy::cast_precision_loss)]
    Ok((stat.utime + stat.stime) as f64 / ticks_per_second())
}

/// Every descendant of `pid` (children, grandchildren, …) alive during the scan.
pub fn descendants(pid: u32) -> Result<Vec<u32>, BenchError> {
    let proc_dir = Path::new("/proc");
    let entries = std::fs::read_dir(proc_dir).map_err(|source| BenchError::Proc {
        path: proc_dir.to_owned(),
        source,
    })?;
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for entry in entries.flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some(stat) = parse_stat(&text) {
            children.entry(stat.ppid).or_default().push(child);
        }
    }
    let mut found = Vec::new();
    let mut stack = vec![pid];
    while let Some(parent) = stack.pop() {
        if let Some(kids) = children.get(&parent) {
            found.extend_from_slice(kids);
            stack.extend_from_slice(kids);
        }
    }
    Ok(found)
}

/// How many descendants of `pid` run the command `comm` (e.g. `sleep`).
pub fn count_descendants_named(pid: u32, comm: &str) -> Result<usize, BenchError> {
    Ok(descendants(pid)?
        .into_iter()
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/comm"))
                .is_ok_and(|name| name.trim_end() == comm)
        })
        .count())
}

/// Clock ticks per second for `/proc/<pid>/stat` times (`_SC_CLK_TCK`, 100 on Linux).
fn ticks_per_second() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        #[allow(clippy::cast_precision_loss)]
        Ok(Some(ticks)) if ticks > 0 => ticks as f64,
        _ => 100.0,
    }
}

fn read(path: &Path) -> Result<String, BenchError> {
    // std::fs, not fs_err: the error variant names the path itself.
    std::fs::read_to_string(path).map_err(|source| BenchError::Proc {
        path: path.to_owned(),
        source,
    })
}

fn invalid(path: &Path, what: &str) -> BenchError {
    BenchError::Proc {
        path: path.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned()),
    }
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let value = line.strip_prefix("VmRSS:")?.trim();
    value.strip_suffix("kB")?.trim().parse().ok()
}

/// The fields of `/proc/<pid>/stat` this module uses.
#[derive(Debug, PartialEq, Eq)]
struct Stat {
    ppid: u32,
    utime: u64,
    stime: u64,
}

fn parse_stat(text: &str) -> Option<Stat> {
    // `pid (comm) state ppid …`: comm may hold spaces and parentheses, so split after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After comm: state is field 3 of the man page, ppid 4, utime 14, stime 15.
    Some(Stat {
        ppid: fields.get(1)?.parse().ok()?,
        utime: fields.get(11)?.parse().ok()?,
        stime: fields.get(12)?.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_command_name() {
        let text = "4242 (my (odd) cmd) S 17 4242 4242 0 -1 4194560 120 0 0 0 37 5 0 0 20 0 \
                    3 0 123456 1000000 500 18446744073709551615";
        assert_eq!(
            parse_stat(text),
            Some(Stat {
                ppid: 17,
                utime: 37,
                stime: 5
            })
        );
    }

    #[test]
    fn vm_rss_line() {
        let status = "Name:\trunnel\nVmPeak:\t  9999 kB\nVmRSS:\t    5120 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(5120));
        assert_eq!(parse_vm_rss("Name:\tkthreadd\n"), None);
    }

    #[test]
    fn own_process_is_readable() {
        let pid = std::process::id();
        assert!(rss_kib(pid).unwrap() > 0);
        assert!(cpu_seconds(pid).unwrap() >= 0.0);
        let tree = tree_memory(pid).unwrap();
        assert!(tree.tree_kib >= tree.root_kib);
    }

    #[test]
    fn finds_a_spawned_child() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep starts");
        let found = descendants(std::process::id()).unwrap();
        let named = count_descendants_named(std::process::id(), "sleep").unwrap();
        child.kill().expect("kill sleep");
        child.wait().expect("reap sleep");
        assert!(found.contains(&child.id()), "{found:?}");
        assert!(named >= 1);
    }
}
