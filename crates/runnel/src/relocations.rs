//! Gives back the pages of the binary's relocation table once the dynamic loader is done.
//!
//! `runnel` is a position-independent executable: before `main`, the dynamic loader reads its
//! `.rela.dyn` table (about a megabyte: one entry per pointer in the binary's data) to fix up
//! those pointers, and nothing reads the table again (libraries loaded later have their own).
//! Its pages stay mapped and count in the daemon's resident memory for its whole life. They are
//! clean, read-only pages of the executable file, so `madvise(MADV_DONTNEED)` only unmaps them:
//! a later read (there is none) would map them again from the file. The binary keeps its
//! address-space randomisation (a non-PIE build would have no such table, and none).
//!
//! Best effort: anything unexpected (not a 64-bit little-endian ELF file, no such section, no
//! `/proc`) leaves the pages where they are; nothing fails.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

/// Section header entry size of a 64-bit ELF file.
const SHDR_SIZE: usize = 64;
/// Program header entry size of a 64-bit ELF file.
const PHDR_SIZE: usize = 56;
const PT_PHDR: u32 = 6;
const SHF_WRITE: u64 = 1;
/// `AT_PHDR` in the auxiliary vector: where the program headers are mapped.
const AT_PHDR: u64 = 3;
/// Sections and headers beyond these sizes are not what a sane executable has.
const MAX_HEADERS: usize = 4096;
const MAX_NAMES: u64 = 1 << 20;

/// Unmaps the relocation table's pages; returns how many bytes were given back.
pub(crate) fn release() -> usize {
    match relocation_range() {
        Some((start, len)) => {
            let Some(addr) = std::ptr::NonNull::new(start as *mut libc::c_void) else {
                return 0;
            };
            // SAFETY: `addr..addr + len` lies inside `.rela.dyn`, a non-writable section of
            // this executable's own read-only mapping (checked from its section header), which
            // no code reads after the dynamic loader applied it. MADV_DONTNEED on clean pages
            // of a file mapping only drops them from this process's page tables; nothing held
            // in them is lost, and a later access would fault them in from the file again.
            #[allow(unsafe_code)]
            let result = unsafe { libc::madvise(addr.as_ptr(), len, libc::MADV_DONTNEED) };
            if result == 0 {
                tracing::debug!(bytes = len, "released the relocation table's pages");
                len
            } else {
                0
            }
        }
        None => 0,
    }
}

/// The page-aligned part of `.rela.dyn` as mapped in this process: (address, length).
fn relocation_range() -> Option<(usize, usize)> {
    let mut exe = File::open("/proc/self/exe").ok()?;
    let mut header = [0u8; 64];
    exe.read_exact(&mut header).ok()?;
    // 64-bit (class 2), little-endian (data 1) ELF.
    if header.get(..4)? != b"\x7fELF" || header.get(4)? != &2 || header.get(5)? != &1 {
        return None;
    }
    let phoff = u64_at(&header, 0x20)?;
    let shoff = u64_at(&header, 0x28)?;
    let phnum = usize::from(u16_at(&header, 0x38)?);
    let shnum = usize::from(u16_at(&header, 0x3c)?);
    let shstrndx = usize::from(u16_at(&header, 0x3e)?);
    if phnum > MAX_HEADERS || shnum > MAX_HEADERS || shstrndx >= shnum {
        return None;
    }

    // The load bias: where the program headers are mapped minus their address in the file.
    let phdrs = read_at(&mut exe, phoff, phnum * PHDR_SIZE)?;
    let phdr_vaddr = phdrs
        .chunks_exact(PHDR_SIZE)
        .find(|p| u32_at(p, 0) == Some(PT_PHDR))
        .and_then(|p| u64_at(p, 0x10))?;
    let bias = auxv(AT_PHDR)?.checked_sub(phdr_vaddr)?;

    let sections = read_at(&mut exe, shoff, shnum * SHDR_SIZE)?;
    let section = |index: usize| sections.get(index * SHDR_SIZE..(index + 1) * SHDR_SIZE);
    let names = section(shstrndx)?;
    let (names_offset, names_size) = (u64_at(names, 24)?, u64_at(names, 32)?);
    if names_size > MAX_NAMES {
        return None;
    }
    let names = read_at(&mut exe, names_offset, usize::try_from(names_size).ok()?)?;
    let rela = (0..shnum).filter_map(section).find(|s| {
        u32_at(s, 0)
            .and_then(|name| names.get(usize::try_from(name).ok()?..))
            .is_some_and(|rest| rest.starts_with(b".rela.dyn\0"))
    })?;
    if u64_at(rela, 8)? & SHF_WRITE != 0 {
        return None;
    }
    let start = bias.checked_add(u64_at(rela, 16)?)?;
    let end = start.checked_add(u64_at(rela, 32)?)?;
    let page = 4096u64;
    let first = start.div_ceil(page).checked_mul(page)?;
    let last = end / page * page;
    if last <= first {
        return None;
    }
    Some((
        usize::try_from(first).ok()?,
        usize::try_from(last - first).ok()?,
    ))
}

/// A value of this process's auxiliary vector.
fn auxv(key: u64) -> Option<u64> {
    let bytes = std::fs::read("/proc/self/auxv").ok()?;
    bytes
        .chunks_exact(16)
        .find(|entry| u64_at(entry, 0) == Some(key))
        .and_then(|entry| u64_at(entry, 8))
}

fn read_at(file: &mut File, offset: u64, len: usize) -> Option<Vec<u8>> {
    file.seek(SeekFrom::Start(offset)).ok()?;
    let mut buf = vec![0; len];
    file.read_exact(&mut buf).ok()?;
    Some(buf)
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    /// The test binary is a PIE with a relocation table too: its range is found, lies in a
    /// mapping of the executable, and giving it back leaves the process working.
    #[test]
    fn the_relocation_table_of_this_binary_is_found_and_released() {
        let (start, len) = super::relocation_range().expect("a .rela.dyn in the test binary");
        assert!(len > 0 && start.is_multiple_of(4096) && len.is_multiple_of(4096));
        let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
        let exe = std::fs::read_link("/proc/self/exe").expect("exe");
        let inside = maps.lines().any(|line| {
            let mut fields = line.split_whitespace();
            let range = fields.next().unwrap_or_default();
            let perms = fields.next().unwrap_or_default();
            let path = line.split_whitespace().nth(5).unwrap_or_default();
            let Some((lo, hi)) = range.split_once('-') else {
                return false;
            };
            let (lo, hi) = (
                usize::from_str_radix(lo, 16).unwrap_or(0),
                usize::from_str_radix(hi, 16).unwrap_or(0),
            );
            path == exe.to_string_lossy()
                && !perms.contains('w')
                && lo <= start
                && start + len <= hi
        });
        assert!(
            inside,
            "the range lies in a read-only mapping of the executable"
        );
        assert_eq!(super::release(), len);
        // Still alive: allocating and formatting code keeps running.
        let text = format!("{:?}", Vec::from([1, 2, 3]));
        assert_eq!(text, "[1, 2, 3]");
    }
}
