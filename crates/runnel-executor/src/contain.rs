//! Finding and killing every process of a job, also those that left its process group.
//!
//! A process group reaches what a job's shell starts, but a process that calls `setsid` (a
//! daemonising tool, `su -c`, a deliberate escape) leaves it, and a runner killed with
//! `SIGKILL` kills nothing at all. So every process of a job also carries a tag in its
//! environment ([`JOB_TAG_VARIABLE`]`=<random tag>`), which children inherit whatever group or
//! session they move to. [`kill_tagged`] scans `/proc` for the tag and kills what it finds,
//! until nothing carries it: at the end of every job whose executor did not see all of the
//! job's processes end ([`crate::Executor::contained`]: the shell executor's sessions, whose
//! shells are subreapers, usually do), and when a restarted runner recovers a job its crashed
//! predecessor was running (the tag is kept in the job journal).
//!
//! Limits: a process that clears or rewrites its own environment (`env -i`, `execve` with a
//! new environment) is not found; only `/proc` (Linux) is scanned; processes of other users
//! are only found when the runner runs as root.

use std::path::Path;

/// The environment variable that tags every process of a job.
pub const JOB_TAG_VARIABLE: &str = "RUNNEL_JOB_TAG";

/// How many scan-and-kill rounds [`kill_tagged`] makes at most (a round catches what forked
/// while the previous one was killing).
const MAX_ROUNDS: usize = 50;

/// The processes (pids) whose environment holds `RUNNEL_JOB_TAG=<tag>`, except this one.
pub fn find_tagged(tag: &str) -> Vec<i32> {
    find_tagged_in(Path::new("/proc"), tag)
}

fn find_tagged_in(proc_root: &Path, tag: &str) -> Vec<i32> {
    if tag.is_empty() {
        return Vec::new();
    }
    let needle = format!("{JOB_TAG_VARIABLE}={tag}");
    let own = std::process::id();
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != own)
        .filter(|pid| {
            // Processes that ended, or that we may not read, are skipped.
            std::fs::read(proc_root.join(pid.to_string()).join("environ")).is_ok_and(|environ| {
                environ
                    .split(|b| *b == 0)
                    .any(|entry| entry == needle.as_bytes())
            })
        })
        .filter_map(|pid| i32::try_from(pid).ok())
        .collect()
}

/// Kills (`SIGKILL`) every process tagged with `tag`, repeating until none is left or
/// [`MAX_ROUNDS`] rounds were made; returns how many kills were sent. Blocking (reads
/// `/proc`): call it from a blocking thread.
pub fn kill_tagged(tag: &str) -> usize {
    let mut killed = 0;
    for _ in 0..MAX_ROUNDS {
        let found = find_tagged(tag);
        if found.is_empty() {
            break;
        }
        for pid in found {
            if nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            )
            .is_ok()
            {
                killed += 1;
            }
        }
        // Give the kernel a moment to deliver the signals before looking again.
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    killed
}

#[cfg(test)]
mod tests {
    use std::process::{Command, Stdio};

    use super::*;

    fn tag() -> String {
        format!(
            "test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        )
        .replace(|c: char| !c.is_ascii_alphanumeric(), "")
    }

    #[test]
    fn finds_and_kills_a_process_that_left_its_session() {
        let tag = tag();
        // `setsid` puts the sleeper in a session and group of its own: a group kill misses it.
        let mut parent = Command::new("setsid")
            .args(["sleep", "300"])
            .env(JOB_TAG_VARIABLE, &tag)
            .stdin(Stdio::null())
            .spawn()
            .expect("setsid starts");
        let mut found = Vec::new();
        for _ in 0..100 {
            found = find_tagged(&tag);
            if !found.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(!found.is_empty(), "the tagged process is found");
        // While `setsid` execs `sleep`, its environment can be unreadable for a moment: the
        // kill looks again (bounded) rather than failing on that window.
        let mut killed = 0;
        for _ in 0..100 {
            killed = kill_tagged(&tag);
            if killed >= 1 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(killed >= 1, "the tagged process is killed");
        parent.wait().expect("reaped");
        assert_eq!(find_tagged(&tag), Vec::<i32>::new());
    }

    #[test]
    fn an_other_tag_or_a_prefix_is_not_a_match() {
        let tag = tag();
        let mut child = Command::new("sleep")
            .arg("300")
            .env(JOB_TAG_VARIABLE, format!("{tag}x"))
            .spawn()
            .expect("sleep starts");
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert_eq!(find_tagged(&tag), Vec::<i32>::new());
        assert_eq!(find_tagged(""), Vec::<i32>::new());
        child.kill().ok();
        child.wait().ok();
    }
}
