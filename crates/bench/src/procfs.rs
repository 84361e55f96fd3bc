//! What the benchmark reads from `/proc`: a server's resident memory and CPU time, the machine's
//! memory, the open-file limit, and values from a Prometheus text page.

use std::io;

/// `VmRSS` of a process, in KiB.
pub fn rss_kib(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status_field_kib(&status, "VmRSS").ok_or_else(|| io::Error::other("no VmRSS in status"))
}

/// A `Name:   1234 kB` field of `/proc/<pid>/status` or `/proc/meminfo`, in KiB.
pub fn status_field_kib(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(':')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

/// Clock ticks per second of `/proc/<pid>/stat` times (`USER_HZ`, 100 on Linux's mainstream
/// architectures).
pub const USER_HZ: f64 = 100.0;

/// CPU time of a process (all its threads), in seconds: (user, system).
pub fn cpu_secs(pid: u32) -> io::Result<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let (user, system) = stat_cpu_ticks(&stat).ok_or_else(|| io::Error::other("malformed stat"))?;
    Ok((user as f64 / USER_HZ, system as f64 / USER_HZ))
}

/// `utime` and `stime` (fields 14 and 15) of a `/proc/<pid>/stat` line. The command name
/// (field 2) may hold spaces and parentheses, so fields are counted after its last `)`.
pub fn stat_cpu_ticks(stat: &str) -> Option<(u64, u64)> {
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state): utime is field 14, index 11.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime, stime))
}

/// `VmRSS` of `pids` together, in KiB (a process that cannot be read counts nothing).
pub fn total_rss_kib(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|p| rss_kib(*p).ok()).sum()
}

/// CPU time (user + system) of `pids` together, in seconds.
pub fn total_cpu_secs(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|p| cpu_secs(*p).ok()).map(|(user, system)| user + system).sum()
}

/// Total memory of the machine, in KiB.
pub fn mem_total_kib() -> Option<u64> {
    status_field_kib(&std::fs::read_to_string("/proc/meminfo").ok()?, "MemTotal")
}

/// This process's soft and hard limits on open files.
pub fn nofile_limits() -> Option<(u64, u64)> {
    parse_nofile(&std::fs::read_to_string("/proc/self/limits").ok()?)
}

/// The `Max open files` line of `/proc/<pid>/limits`.
pub fn parse_nofile(limits: &str) -> Option<(u64, u64)> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut values = line["Max open files".len()..].split_whitespace();
    let soft = values.next()?.parse().ok()?;
    let hard = values.next()?.parse().ok()?;
    Some((soft, hard))
}

/// The CPU model name, for the record.
pub fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("model name"))?;
    Some(line.split_once(':')?.1.trim().to_owned())
}

/// The value of one series of a Prometheus text page, by its exact name (with labels).
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The cumulative buckets of a Prometheus histogram: `(upper bound, count)`, in page order.
pub fn buckets(text: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, count.trim().parse().ok()?))
        })
        .collect()
}

/// The upper bound of the bucket holding quantile `q` of what was observed between two readings
/// of the same histogram; `None` if nothing was.
pub fn bucket_quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> Option<f64> {
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, n)| (*le, n - before.iter().find(|(l, _)| l == le).map_or(0.0, |(_, b)| *b)))
        .collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    delta.iter().find(|(_, n)| *n >= q * total).map(|(le, _)| *le)
}

/// CPU time the whole machine has spent busy since boot, over all cores, in seconds (every
/// process's, this one's and other jobs' alike).
pub fn machine_busy_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    Some(stat_busy_ticks(&stat)? as f64 / USER_HZ)
}

/// Busy ticks of `/proc/stat`'s `cpu` line: user, nice, system, irq, softirq and steal (a core
/// the hypervisor took is not free either); idle and iowait are not, and guest time is already
/// in user time.
pub fn stat_busy_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line.split_whitespace().skip(1).map(|t| t.parse().ok()).collect::<Option<_>>()?;
    let at = |i: usize| ticks.get(i).copied().unwrap_or(0);
    (ticks.len() >= 4).then(|| at(0) + at(1) + at(2) + at(5) + at(6) + at(7))
}

/// The 1-minute load average.
pub fn loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields() {
        let status = "Name:\tclientmq-server\nVmPeak:\t  99 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(status_field_kib(status, "VmRSS"), Some(12345));
        assert_eq!(status_field_kib(status, "VmHWM"), None);
        assert_eq!(status_field_kib("MemTotal:       24683656 kB\n", "MemTotal"), Some(24683656));
        // Our own process has a resident size.
        assert!(rss_kib(std::process::id()).unwrap() > 0);
    }

    #[test]
    fn stat_cpu_time_skips_odd_command_names() {
        let stat = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 37 0 0 20 0 3 0 1 2 3";
        assert_eq!(stat_cpu_ticks(stat), Some((250, 37)));
        assert_eq!(stat_cpu_ticks("garbage"), None);
        assert!(cpu_secs(std::process::id()).is_ok());
    }

    #[test]
    fn machine_busy_time_leaves_idle_and_iowait_out() {
        let stat = "cpu  100 2 30 5000 40 0 6 7 9 0\ncpu0 50 1 15 2500 20 0 3 4 9 0\nintr 1\n";
        assert_eq!(stat_busy_ticks(stat), Some(100 + 2 + 30 + 6 + 7));
        assert_eq!(stat_busy_ticks("cpu0 1 2 3 4\n"), None);
        assert!(machine_busy_secs().is_some_and(|s| s > 0.0));
    }

    #[test]
    fn open_file_limits() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            20000                20000                files\n";
        assert_eq!(parse_nofile(limits), Some((20000, 20000)));
        assert!(nofile_limits().is_some());
    }

    #[test]
    fn metric_lines() {
        let text = "# HELP x\nclientmq_connections_open 3\nclientmq_connections_total 17\n\
                    clientmq_requests_total{type=\"a\",outcome=\"ok\"} 2\n";
        assert_eq!(metric(text, "clientmq_connections_open"), Some(3.0));
        assert_eq!(metric(text, "clientmq_connections_total"), Some(17.0));
        assert_eq!(metric(text, "clientmq_requests_total{type=\"a\",outcome=\"ok\"}"), Some(2.0));
        assert_eq!(metric(text, "clientmq_connections"), None);
    }

    #[test]
    fn histogram_bucket_quantiles() {
        let page = |a: u32, b: u32, c: u32| {
            format!(
                "x_sum 1\nx_count {c}\nx_bucket{{le=\"0.0005\"}} {a}\nx_bucket{{le=\"0.001\"}} {b}\n\
                 x_bucket{{le=\"+Inf\"}} {c}\n"
            )
        };
        let before = buckets(&page(10, 10, 10), "x");
        assert_eq!(before, vec![(0.0005, 10.0), (0.001, 10.0), (f64::INFINITY, 10.0)]);
        // 1000 more: 990 under 0.5 ms, 9 more under 1 ms, 1 above.
        let after = buckets(&page(1000, 1009, 1010), "x");
        assert_eq!(bucket_quantile(&before, &after, 0.99), Some(0.0005));
        assert_eq!(bucket_quantile(&before, &after, 0.999), Some(0.001));
        assert_eq!(bucket_quantile(&before, &after, 1.0), Some(f64::INFINITY));
        assert_eq!(bucket_quantile(&before, &before, 0.99), None);
        assert!(loadavg().is_some());
    }
}
