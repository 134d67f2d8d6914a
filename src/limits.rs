//! Open-file limits: raise the soft RLIMIT_NOFILE to the hard limit at start
//! and derive how many connections the process can hold.
//!
//! Every connection is one file descriptor; a process that hits the limit
//! fails `accept` with EMFILE (the accept loop backs off) and can no longer
//! open anything else. The connection cap therefore stays [`FD_RESERVE`]
//! below the limit, so the cap answers 503 before the kernel says EMFILE.

use std::io;

pub use crate::config::FD_RESERVE;

/// Soft and hard RLIMIT_NOFILE after raising.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoFile {
    pub soft: u64,
    pub hard: u64,
}

/// Raises the soft open-file limit to the hard limit.
#[allow(unsafe_code)]
pub fn raise_nofile() -> io::Result<NoFile> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own; no other invariants.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    Ok(NoFile {
        soft: lim.rlim_cur,
        hard: lim.rlim_max,
    })
}

/// Connections the process can hold given its soft limit.
pub fn capacity(soft: u64) -> u64 {
    soft.saturating_sub(FD_RESERVE).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_is_idempotent_and_capacity_keeps_a_reserve() {
        let a = raise_nofile().unwrap();
        assert_eq!(a.soft, a.hard);
        assert_eq!(raise_nofile().unwrap(), a);
        assert_eq!(capacity(20_000), 20_000 - FD_RESERVE);
        assert_eq!(capacity(10), 1);
    }
}
