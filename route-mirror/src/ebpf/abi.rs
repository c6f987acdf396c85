//! The record ABI check between the embedded eBPF object and this daemon.
//!
//! The object is built apart (nightly, bpf-linker) and embedded as a file, so a daemon
//! can carry an object built before a record change; its records would then decode
//! wrongly and lose events without a trace. The object carries the
//! [`RECORD_ABI`](route_mirror_common::RECORD_ABI) it was built with as a global
//! ([`ABI_SYMBOL`](route_mirror_common::ABI_SYMBOL)); it is read from the ELF before
//! loading and a mismatch refuses the eBPF source (`auto` falls back to netlink).

use std::sync::atomic::{AtomicU64, Ordering};

use object::{Object, ObjectSection, ObjectSymbol};
use route_mirror_common::{ABI_SYMBOL, RECORD_ABI};

use super::LoadError;

/// Hidden test knob: the ABI this daemon expects instead of its own (a stale object
/// without rebuilding one).
pub const EXPECT_KNOB: &str = "ROUTE_MIRROR_TEST_EBPF_ABI";

/// eBPF objects refused for their ABI since the process started (`stats`, metrics).
static MISMATCHES: AtomicU64 = AtomicU64::new(0);

pub fn mismatches() -> u64 {
    MISMATCHES.load(Ordering::Relaxed)
}

/// The record ABI an eBPF object was built with; `None` for an object without one
/// (built before the check existed) or one that does not parse.
pub fn object_abi(obj: &[u8]) -> Option<u32> {
    let file = object::File::parse(obj).ok()?;
    let sym = file.symbols().find(|s| s.name() == Ok(ABI_SYMBOL))?;
    let section = file.section_by_index(sym.section_index()?).ok()?;
    let data = section.data().ok()?;
    let at = usize::try_from(sym.address().checked_sub(section.address())?).ok()?;
    let bytes = data.get(at..at.checked_add(4)?)?;
    // BPF objects here are little-endian (bpfel).
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

/// The ABI this daemon decodes ([`RECORD_ABI`], or the test knob's value).
fn expected() -> u32 {
    std::env::var(EXPECT_KNOB)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(RECORD_ABI)
}

/// Refuses an object whose record ABI is not the one this daemon decodes (counted).
pub fn check(obj: &[u8]) -> Result<(), LoadError> {
    check_against(object_abi(obj), expected())
}

fn check_against(found: Option<u32>, want: u32) -> Result<(), LoadError> {
    if found == Some(want) {
        return Ok(());
    }
    MISMATCHES.fetch_add(1, Ordering::Relaxed);
    Err(LoadError::AbiMismatch { found, want })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The embedded object (when built) carries this build's ABI, read from its ELF.
    #[test]
    #[cfg(has_ebpf_obj)]
    fn embedded_object_carries_this_builds_abi() {
        let obj = super::super::OBJECT.expect("has_ebpf_obj");
        assert_eq!(object_abi(obj), Some(RECORD_ABI));
        assert!(check(obj).is_ok());
    }

    #[test]
    fn a_stale_or_foreign_object_is_refused_and_counted() {
        assert_eq!(object_abi(b"not an ELF file"), None);
        let before = mismatches();
        let e = check_against(None, RECORD_ABI).unwrap_err();
        assert!(e.to_string().contains("no record ABI"), "{e}");
        let e = check_against(Some(RECORD_ABI ^ 1), RECORD_ABI).unwrap_err();
        assert!(e.to_string().contains("record ABI"), "{e}");
        assert!(check_against(Some(RECORD_ABI), RECORD_ABI).is_ok());
        // Other tests may count too: at least these two.
        assert!(mismatches() >= before + 2);
    }
}
