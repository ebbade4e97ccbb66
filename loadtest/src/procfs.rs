//! CPU time and peak memory of a process, from `/proc` (Linux).
//!
//! A proxy under test may be more than one process: nginx runs a master and its workers. Its
//! figures are those of the process tree ([`cpu_time_tree`], [`peak_rss_tree_kib`]); for a proxy
//! of one process (switchyard, Envoy, HAProxy with threads) the tree is that process alone.

use std::time::Duration;

/// Clock ticks per second of `/proc/PID/stat` times (`getconf CLK_TCK`; 100 on Linux).
const CLK_TCK: u64 = 100;

/// User plus system CPU time of process `pid` (all its threads), or `None` where `/proc` cannot tell.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_cpu(&text)
}

/// User plus system CPU time of thread `tid` of this process, or `None` where `/proc` cannot tell.
pub fn own_thread_cpu_time(tid: u32) -> Option<Duration> {
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    parse_stat_cpu(&text)
}

/// Parses utime + stime out of a `/proc/PID/stat` line.
pub fn parse_stat_cpu(stat: &str) -> Option<Duration> {
    // The command name (field 2) is in parentheses and may hold spaces: count fields after its end.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of the line are utime and stime; `rest` starts at field 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 1000 / CLK_TCK))
}

/// User plus system CPU time of process `pid` and every live descendant of it (nginx's master and
/// workers, summed). A descendant that exited during the measurement takes its CPU time with it.
pub fn cpu_time_tree(pid: u32) -> Option<Duration> {
    let own = cpu_time(pid)?;
    Some(
        descendants(pid)
            .into_iter()
            .filter_map(cpu_time)
            .fold(own, |sum, d| sum + d),
    )
}

/// Peak resident set size of process `pid` plus those of its live descendants, KiB: the sum of
/// each process's `VmHWM`. For nginx (a master and workers) this counts pages the processes share
/// once per process, and adds peaks that need not have been at the same moment: an upper bound.
pub fn peak_rss_tree_kib(pid: u32) -> Option<u64> {
    let own = peak_rss_kib(pid)?;
    Some(
        own + descendants(pid)
            .into_iter()
            .filter_map(peak_rss_kib)
            .sum::<u64>(),
    )
}

/// The live descendants of process `pid` (children, their children, ...), from each process's
/// parent id in `/proc/*/stat`.
pub fn descendants(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let parents: Vec<(u32, u32)> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            Some((p, parse_stat_ppid(&stat)?))
        })
        .collect();
    let mut found = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for &(child, _) in parents.iter().filter(|(_, pp)| *pp == parent) {
            if !found.contains(&child) && child != pid {
                found.push(child);
                frontier.push(child);
            }
        }
    }
    found
}

/// Parses the parent process id (field 4) out of a `/proc/PID/stat` line.
pub fn parse_stat_ppid(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Resident set size of process `pid` now, in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_kib(&text, "VmRSS:")
}

/// Peak resident set size of process `pid` in KiB (`VmHWM`).
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_kib(&text, "VmHWM:")
}

/// Reads a `kB` field of `/proc/PID/status`.
pub fn parse_status_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Whether a process with this id exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Busy CPU time of the whole machine so far (all cores: everything but idle and iowait), from
/// `/proc/stat`.
pub fn machine_busy() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    parse_machine_busy(&text)
}

/// Parses the `cpu` line of `/proc/stat` into busy time.
pub fn parse_machine_busy(stat: &str) -> Option<Duration> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let busy: u64 = ticks
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum();
    Some(Duration::from_millis(busy * 1000 / CLK_TCK))
}

/// The 1-minute load average.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A line about the machine for the report: CPU model, cores, kernel.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_owned())
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| parse_status_kib(&t, "MemTotal:"))
        .map(|kib| format!(", {:.0} GiB RAM", kib as f64 / 1024.0 / 1024.0))
        .unwrap_or_default();
    format!("{cores} cores ({cpu}){mem}, Linux {kernel}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_and_status() {
        let stat = "1234 (a (b) c) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 5 0 0";
        assert_eq!(parse_stat_cpu(stat), Some(Duration::from_secs(3)));
        assert_eq!(parse_stat_ppid(stat), Some(1));
        let status = "Name:\tx\nVmHWM:\t   12345 kB\nVmRSS:\t 1000 kB\n";
        assert_eq!(parse_status_kib(status, "VmHWM:"), Some(12345));
        assert!(cpu_time(std::process::id()).is_some());
        let stat = "cpu  100 0 50 1000 20 5 5 0 0 0\ncpu0 1 2 3\n";
        assert_eq!(parse_machine_busy(stat), Some(Duration::from_millis(1600)));
        assert!(alive(std::process::id()));
        assert!(rss_kib(std::process::id()).is_some_and(|k| k > 0));
    }

    #[test]
    fn sums_a_process_tree() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let me = std::process::id();
        assert!(descendants(me).contains(&child.id()));
        // Own time first: the other tests' threads add to it between the two readings.
        let own_cpu = cpu_time(me);
        assert!(cpu_time_tree(me) >= own_cpu);
        let own = peak_rss_kib(me).unwrap();
        let tree = peak_rss_tree_kib(me).unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert!(tree > own, "the child's RSS is added");
    }
}
