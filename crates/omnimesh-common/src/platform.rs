//! Process-level tuning that must happen before a service starts any thread.
//!
//! glibc before 2.39 copies blocks of 8 KiB and more with `rep movsb` on CPUs that
//! advertise fast string moves. On AMD Zen 3 and Zen 4 that instruction is about 30 times
//! slower than glibc's vector loop when the destination's offset in its page is just
//! above the source's (glibc bug 30994; measured here on an EPYC: 3 GB/s instead of
//! 90 GB/s for a 16 KiB copy to a destination 12 bytes further into its page). That is
//! exactly the copy a service makes all day: a received HTTP/2 frame appended to a
//! message buffer, a plaintext behind a 12-byte nonce. The threshold is a glibc tunable,
//! read once at start-up, so [`tune_process`] re-executes the binary once with it raised
//! beyond any copy size (large copies then take the vector loop, and glibc's non-temporal
//! path above its own threshold, as before).
//!
//! An operator who sets `GLIBC_TUNABLES` with any `x86_rep_movsb_threshold` keeps it:
//! the binary is then not re-executed.

use std::ffi::{OsStr, OsString};

/// The glibc tunable that sets the size from which `memcpy` uses `rep movsb`.
const REP_MOVSB_THRESHOLD: &str = "glibc.cpu.x86_rep_movsb_threshold";

/// Larger than any copy a service makes: `rep movsb` is never chosen.
const NEVER: u64 = 1 << 40;

/// The `GLIBC_TUNABLES` value to re-execute with, given the current value and the CPU's
/// vendor (`vendor_id` of `/proc/cpuinfo`); `None` when nothing needs to change (not an
/// AMD CPU, or the threshold is already set by someone).
pub fn tunables_for(current: Option<&OsStr>, vendor: Option<&str>) -> Option<OsString> {
    if vendor != Some("AuthenticAMD") {
        return None;
    }
    let setting = format!("{REP_MOVSB_THRESHOLD}={NEVER}");
    match current {
        Some(current)
            if current
                .to_string_lossy()
                .contains("x86_rep_movsb_threshold") =>
        {
            None
        }
        Some(current) if !current.is_empty() => {
            let mut value = current.to_os_string();
            value.push(":");
            value.push(setting);
            Some(value)
        }
        _ => Some(setting.into()),
    }
}

/// The CPU vendor of the first processor in `/proc/cpuinfo`, e.g. `AuthenticAMD`.
pub fn cpu_vendor(cpuinfo: &str) -> Option<&str> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "vendor_id").then(|| value.trim())
    })
}

/// Re-executes this binary, with the same arguments and process id, when
/// [`tunables_for`] asks for it; returns otherwise (also when the re-execution fails:
/// the service then runs with glibc's defaults, and says so on stderr). Call it first in
/// `main`, before any thread or runtime exists.
pub fn tune_process() {
    #[cfg(all(target_os = "linux", target_arch = "x86_64", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt as _;

        /// The environment variable glibc reads its tunables from.
        const GLIBC_TUNABLES: &str = "GLIBC_TUNABLES";

        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let current = std::env::var_os(GLIBC_TUNABLES);
        let Some(tunables) = tunables_for(current.as_deref(), cpu_vendor(&cpuinfo)) else {
            return;
        };
        let mut args = std::env::args_os();
        let arg0 = args.next().unwrap_or_default();
        let error = std::process::Command::new("/proc/self/exe")
            .arg0(arg0)
            .args(args)
            .env(GLIBC_TUNABLES, tunables)
            .exec();
        eprintln!("warning: running with glibc's copy defaults: re-executing failed: {error}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AMD: Option<&str> = Some("AuthenticAMD");

    #[test]
    fn an_amd_cpu_gets_the_threshold_raised() {
        assert_eq!(
            tunables_for(None, AMD),
            Some("glibc.cpu.x86_rep_movsb_threshold=1099511627776".into())
        );
        assert_eq!(
            tunables_for(Some(OsStr::new("")), AMD),
            Some("glibc.cpu.x86_rep_movsb_threshold=1099511627776".into())
        );
    }

    #[test]
    fn other_tunables_are_kept() {
        assert_eq!(
            tunables_for(Some(OsStr::new("glibc.malloc.arena_max=2")), AMD),
            Some("glibc.malloc.arena_max=2:glibc.cpu.x86_rep_movsb_threshold=1099511627776".into())
        );
    }

    #[test]
    fn a_threshold_already_set_is_left_alone_so_the_binary_runs_once() {
        let set = OsStr::new("glibc.cpu.x86_rep_movsb_threshold=2048");
        assert_eq!(tunables_for(Some(set), AMD), None);
        let ours = tunables_for(None, AMD).expect("AMD");
        assert_eq!(tunables_for(Some(&ours), AMD), None);
    }

    #[test]
    fn other_vendors_are_left_alone() {
        assert_eq!(tunables_for(None, Some("GenuineIntel")), None);
        assert_eq!(tunables_for(None, None), None);
    }

    #[test]
    fn the_vendor_is_read_from_cpuinfo() {
        let cpuinfo = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\n\n\
                       processor\t: 1\nvendor_id\t: AuthenticAMD\n";
        assert_eq!(cpu_vendor(cpuinfo), AMD);
        assert_eq!(cpu_vendor("processor : 0\n"), None);
        assert_eq!(cpu_vendor(""), None);
    }
}
