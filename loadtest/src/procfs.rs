//! CPU time and RSS of processes, from /proc.

#[derive(Debug, Clone, Copy)]
pub(crate) struct Proc {
    pub(crate) cpu_ticks: u64,
    pub(crate) rss_kib: u64,
}

pub(crate) fn read_proc(pid: u32) -> Proc {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is 3rd.
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0);
    let stime: u64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    Proc {
        cpu_ticks: utime + stime,
        rss_kib,
    }
}

/// Summed CPU time and RSS of `pids` (None without pids).
pub(crate) fn read_procs(pids: &[u32]) -> Option<Proc> {
    (!pids.is_empty()).then(|| {
        pids.iter().map(|&p| read_proc(p)).fold(
            Proc {
                cpu_ticks: 0,
                rss_kib: 0,
            },
            |a, b| Proc {
                cpu_ticks: a.cpu_ticks + b.cpu_ticks,
                rss_kib: a.rss_kib + b.rss_kib,
            },
        )
    })
}

pub(crate) fn ticks_per_second() -> f64 {
    // USER_HZ is 100 on Linux for every architecture herald targets.
    100.0
}
