//! Gives memory back to the system: the executable's clean pages the daemon no longer uses.
//!
//! `runnel` is a position-independent executable. Two kinds of its pages stay resident long
//! after their last use:
//!
//! - the relocation table (`.rela.dyn`, about a megabyte), which the dynamic loader reads once
//!   before `main` to fix up the pointers in the binary's data ([`release_relocations`], at
//!   start);
//! - the code and read-only data of start-up (command-line and config parsing, client set-up)
//!   and of the jobs that ran: the kernel maps code in fault-around blocks of 64 KiB, so a daemon
//!   that touched a little of everything keeps most of its 20-30 MB of code mapped.
//!
//! Both are clean, never-written pages of the executable file. `madvise(MADV_DONTNEED)` only
//! unmaps them from this process: they stay in the page cache, and the next access maps them
//! again (a minor fault, no disk read while the page cache has them). [`Trimmer::trim`] does
//! that for every non-writable segment of the executable when the daemon goes idle, so an idle
//! runner holds only what polling touches, and returns freed heap to the system
//! (`malloc_trim`). The writable segment, with the loader's relocated pointers (RELRO) and the
//! program's data, is never touched. A side effect: uprobes placed on the binary's code by a
//! tracer are dropped with the pages they live in.
//!
//! Best effort: anything unexpected (not a 64-bit little-endian ELF file, text relocations, no
//! `/proc`) leaves the pages where they are; nothing fails. The binary keeps its
//! address-space randomisation (a non-PIE build would have no relocation table, and none).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

/// Section header entry size of a 64-bit ELF file.
const SHDR_SIZE: usize = 64;
/// Program header entry size of a 64-bit ELF file.
const PHDR_SIZE: usize = 56;
const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_PHDR: u32 = 6;
const PT_GNU_RELRO: u32 = 0x6474_e552;
const PF_W: u32 = 2;
const SHF_WRITE: u64 = 1;
const DT_NULL: u64 = 0;
const DT_TEXTREL: u64 = 22;
const DT_FLAGS: u64 = 30;
const DF_TEXTREL: u64 = 4;
/// `AT_PHDR` in the auxiliary vector: where the program headers are mapped.
const AT_PHDR: u64 = 3;
/// Sections and headers beyond these sizes are not what a sane executable has.
const MAX_HEADERS: usize = 4096;
const MAX_NAMES: u64 = 1 << 20;
const MAX_DYNAMIC: u64 = 1 << 16;
const PAGE: u64 = 4096;

/// Unmaps the relocation table's pages; returns how many bytes were given back.
pub(crate) fn release_relocations() -> usize {
    let Some(image) = Image::read() else {
        return 0;
    };
    match image.relocation_range() {
        Some(range) => {
            let released = advise_dontneed(&[range]);
            if released > 0 {
                tracing::debug!(bytes = released, "released the relocation table's pages");
            }
            released
        }
        None => 0,
    }
}

/// Gives back the executable's clean pages and the heap's free memory; see the module docs.
#[derive(Debug, Clone)]
pub(crate) struct Trimmer {
    /// Page-aligned (address, length) ranges of the executable's non-writable segments.
    ranges: Vec<(usize, usize)>,
}

impl Trimmer {
    /// The trimmer for this process; `None` when its executable's layout is not understood.
    pub(crate) fn new() -> Option<Self> {
        let ranges = Image::read()?.clean_ranges()?;
        (!ranges.is_empty()).then_some(Self { ranges })
    }

    /// Unmaps the clean pages and trims the heap. Returns the resident bytes before and after.
    pub(crate) fn trim(&self) -> (u64, u64) {
        let before = resident_bytes();
        advise_dontneed(&self.ranges);
        #[cfg(target_env = "gnu")]
        {
            // SAFETY: malloc_trim only returns free heap memory to the system; it is safe to
            // call at any time from any thread.
            #[allow(unsafe_code)]
            unsafe {
                libc::malloc_trim(0);
            }
        }
        let after = resident_bytes();
        tracing::debug!(before, after, "gave back idle memory");
        (before, after)
    }
}

/// `madvise(MADV_DONTNEED)` on each range; returns the bytes advised.
///
/// Never inlined: `scripts/symbol-order.sh` starts its profile of the idle daemon at this
/// symbol (everything that runs from here on maps pages again after a trim).
#[inline(never)]
fn advise_dontneed(ranges: &[(usize, usize)]) -> usize {
    let mut advised = 0;
    for &(start, len) in ranges {
        let Some(addr) = std::ptr::NonNull::new(start as *mut libc::c_void) else {
            continue;
        };
        // SAFETY: every range lies in a non-writable segment of this executable's own file
        // mapping (from its program headers, outside RELRO and the writable segment, checked
        // against /proc/self/maps, in a binary without text relocations), so its pages are
        // clean copies of the file that nothing ever wrote. MADV_DONTNEED on such pages only
        // drops them from this process's page tables; a later access maps them again from the
        // file, so nothing held in them is lost.
        #[allow(unsafe_code)]
        let result = unsafe { libc::madvise(addr.as_ptr(), len, libc::MADV_DONTNEED) };
        if result == 0 {
            advised += len;
        }
    }
    advised
}

/// This process's resident set, in bytes (0 when /proc cannot tell).
pub(crate) fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * PAGE)
}

/// What is needed of the executable's ELF headers.
struct Image {
    file: File,
    /// Where the executable is mapped: its addresses plus this are this process's.
    bias: u64,
    phdrs: Vec<u8>,
    shoff: u64,
    shnum: usize,
    shstrndx: usize,
}

impl Image {
    fn read() -> Option<Self> {
        let mut file = File::open("/proc/self/exe").ok()?;
        let mut header = [0u8; 64];
        file.read_exact(&mut header).ok()?;
        // 64-bit (class 2), little-endian (data 1) ELF.
        if header.get(..4)? != b"\x7fELF" || header.get(4)? != &2 || header.get(5)? != &1 {
            return None;
        }
        let phoff = u64_at(&header, 0x20)?;
        let shoff = u64_at(&header, 0x28)?;
        let phnum = usize::from(u16_at(&header, 0x38)?);
        let shnum = usize::from(u16_at(&header, 0x3c)?);
        let shstrndx = usize::from(u16_at(&header, 0x3e)?);
        if phnum > MAX_HEADERS || shnum > MAX_HEADERS || shstrndx >= shnum.max(1) {
            return None;
        }
        // The load bias: where the program headers are mapped minus their address in the file.
        let phdrs = read_at(&mut file, phoff, phnum * PHDR_SIZE)?;
        let phdr_vaddr = phdrs
            .chunks_exact(PHDR_SIZE)
            .find(|p| u32_at(p, 0) == Some(PT_PHDR))
            .and_then(|p| u64_at(p, 0x10))?;
        let bias = auxv(AT_PHDR)?.checked_sub(phdr_vaddr)?;
        Some(Self {
            file,
            bias,
            phdrs,
            shoff,
            shnum,
            shstrndx,
        })
    }

    /// Program headers as (type, flags, offset, vaddr, filesz, memsz).
    fn segments(&self) -> impl Iterator<Item = Segment> + '_ {
        self.phdrs.chunks_exact(PHDR_SIZE).filter_map(|p| {
            Some(Segment {
                kind: u32_at(p, 0)?,
                flags: u32_at(p, 4)?,
                offset: u64_at(p, 8)?,
                vaddr: u64_at(p, 0x10)?,
                filesz: u64_at(p, 0x20)?,
                memsz: u64_at(p, 0x28)?,
            })
        })
    }

    /// Whether the loader wrote into code (text relocations): then no page is known clean.
    fn has_text_relocations(&mut self) -> Option<bool> {
        let dynamic = self.segments().find(|s| s.kind == PT_DYNAMIC)?;
        if dynamic.filesz > MAX_DYNAMIC {
            return None;
        }
        let entries = read_at(
            &mut self.file,
            dynamic.offset,
            usize::try_from(dynamic.filesz).ok()?,
        )?;
        for entry in entries.chunks_exact(16) {
            let (tag, value) = (u64_at(entry, 0)?, u64_at(entry, 8)?);
            match tag {
                DT_NULL => break,
                DT_TEXTREL => return Some(true),
                DT_FLAGS if value & DF_TEXTREL != 0 => return Some(true),
                _ => {}
            }
        }
        Some(false)
    }

    /// The whole pages of non-writable loaded segments, away from every page of a writable
    /// segment or of RELRO, and inside non-writable mappings of the executable.
    fn clean_ranges(mut self) -> Option<Vec<(usize, usize)>> {
        if self.has_text_relocations()? {
            return None;
        }
        let bias = self.bias;
        let mut dirty = Vec::new();
        let mut clean = Vec::new();
        for segment in self.segments() {
            let start = bias.checked_add(segment.vaddr)?;
            if segment.kind == PT_GNU_RELRO
                || (segment.kind == PT_LOAD && segment.flags & PF_W != 0)
            {
                // Outward to whole pages: a page shared with written data is never advised.
                let end = start.checked_add(segment.memsz)?;
                dirty.push((start / PAGE * PAGE, end.div_ceil(PAGE).checked_mul(PAGE)?));
            } else if segment.kind == PT_LOAD {
                let end = start.checked_add(segment.filesz)?;
                clean.push((start.div_ceil(PAGE).checked_mul(PAGE)?, end / PAGE * PAGE));
            }
        }
        let mapped = exe_readonly_mappings()?;
        let mut ranges = Vec::new();
        for (start, end) in clean {
            let mut pieces = vec![(start, end)];
            for &(lo, hi) in &dirty {
                pieces = pieces
                    .into_iter()
                    .flat_map(|p| subtract(p, (lo, hi)))
                    .collect();
            }
            for piece in pieces {
                for &(lo, hi) in &mapped {
                    let (s, e) = (piece.0.max(lo), piece.1.min(hi));
                    if s < e {
                        ranges.push((usize::try_from(s).ok()?, usize::try_from(e - s).ok()?));
                    }
                }
            }
        }
        Some(ranges)
    }

    /// The page-aligned part of `.rela.dyn` as mapped in this process: (address, length).
    fn relocation_range(mut self) -> Option<(usize, usize)> {
        let sections = read_at(&mut self.file, self.shoff, self.shnum * SHDR_SIZE)?;
        let section = |index: usize| sections.get(index * SHDR_SIZE..(index + 1) * SHDR_SIZE);
        let names = section(self.shstrndx)?;
        let (names_offset, names_size) = (u64_at(names, 24)?, u64_at(names, 32)?);
        if names_size > MAX_NAMES {
            return None;
        }
        let names = read_at(
            &mut self.file,
            names_offset,
            usize::try_from(names_size).ok()?,
        )?;
        let rela = (0..self.shnum).filter_map(section).find(|s| {
            u32_at(s, 0)
                .and_then(|name| names.get(usize::try_from(name).ok()?..))
                .is_some_and(|rest| rest.starts_with(b".rela.dyn\0"))
        })?;
        if u64_at(rela, 8)? & SHF_WRITE != 0 {
            return None;
        }
        let start = self.bias.checked_add(u64_at(rela, 16)?)?;
        let end = start.checked_add(u64_at(rela, 32)?)?;
        let first = start.div_ceil(PAGE).checked_mul(PAGE)?;
        let last = end / PAGE * PAGE;
        if last <= first {
            return None;
        }
        Some((
            usize::try_from(first).ok()?,
            usize::try_from(last - first).ok()?,
        ))
    }
}

struct Segment {
    kind: u32,
    flags: u32,
    offset: u64,
    vaddr: u64,
    filesz: u64,
    memsz: u64,
}

/// `range` without `hole`: zero, one or two ranges.
fn subtract(range: (u64, u64), hole: (u64, u64)) -> Vec<(u64, u64)> {
    let (start, end) = range;
    let (lo, hi) = hole;
    if hi <= start || end <= lo {
        return vec![range];
    }
    [(start, lo.min(end)), (hi.max(start), end)]
        .into_iter()
        .filter(|(s, e)| s < e)
        .collect()
}

/// The address ranges of this process's non-writable mappings of its executable.
fn exe_readonly_mappings() -> Option<Vec<(u64, u64)>> {
    let exe = std::fs::read_link("/proc/self/exe").ok()?;
    let exe = exe.to_str()?;
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let mut mapped = Vec::new();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        // Offset, device and inode hold no '/': the path (which may hold spaces) starts at
        // the first one.
        let path = line.find('/').map(|at| &line[at..]);
        if path != Some(exe) || perms.contains('w') || !perms.contains('p') {
            continue;
        }
        let Some((lo, hi)) = range.split_once('-') else {
            continue;
        };
        if let (Ok(lo), Ok(hi)) = (u64::from_str_radix(lo, 16), u64::from_str_radix(hi, 16)) {
            mapped.push((lo, hi));
        }
    }
    Some(mapped)
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
    /// (start, end) of this process's mappings of its executable, with their permissions.
    fn exe_mappings() -> Vec<(usize, usize, String)> {
        let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
        let exe = std::fs::read_link("/proc/self/exe").expect("exe");
        let exe = exe.to_string_lossy();
        maps.lines()
            .filter(|line| line.ends_with(exe.as_ref()))
            .filter_map(|line| {
                let mut fields = line.split_whitespace();
                let (lo, hi) = fields.next()?.split_once('-')?;
                let perms = fields.next()?.to_owned();
                Some((
                    usize::from_str_radix(lo, 16).ok()?,
                    usize::from_str_radix(hi, 16).ok()?,
                    perms,
                ))
            })
            .collect()
    }

    /// The test binary is a PIE with a relocation table too: its range is found, lies in a
    /// mapping of the executable, and giving it back leaves the process working.
    #[test]
    fn the_relocation_table_of_this_binary_is_found_and_released() {
        let (start, len) = super::Image::read()
            .and_then(super::Image::relocation_range)
            .expect("a .rela.dyn in the test binary");
        assert!(len > 0 && start.is_multiple_of(4096) && len.is_multiple_of(4096));
        let inside = exe_mappings()
            .iter()
            .any(|(lo, hi, perms)| !perms.contains('w') && *lo <= start && start + len <= *hi);
        assert!(
            inside,
            "the range lies in a read-only mapping of the executable"
        );
        assert_eq!(super::release_relocations(), len);
        // Still alive: allocating and formatting code keeps running.
        let text = format!("{:?}", Vec::from([1, 2, 3]));
        assert_eq!(text, "[1, 2, 3]");
    }

    /// The trimmer covers the code, never a writable page or RELRO, and after a trim the
    /// process runs on: code, read-only data and relocated pointers (vtables, string tables)
    /// all still work, and the resident set shrank.
    #[test]
    fn trimming_gives_back_code_pages_and_the_process_runs_on() {
        let trimmer = super::Trimmer::new().expect("the test binary's layout is understood");
        let mappings = exe_mappings();
        let code: usize = mappings
            .iter()
            .filter(|(_, _, perms)| perms.contains('x'))
            .map(|(lo, hi, _)| hi - lo)
            .sum();
        let covered: usize = trimmer.ranges.iter().map(|(_, len)| len).sum();
        assert!(covered >= code, "the code is covered: {covered} of {code}");
        for &(start, len) in &trimmer.ranges {
            assert!(start.is_multiple_of(4096) && len.is_multiple_of(4096));
            let inside = mappings
                .iter()
                .any(|(lo, hi, perms)| !perms.contains('w') && *lo <= start && start + len <= *hi);
            assert!(inside, "{start:#x}+{len:#x} lies in a read-only mapping");
        }
        // Touch a lot of code and data first, so there is something resident to give back.
        let warm: Vec<String> = (0..2000).map(|i| format!("{i:?}-{:?}", [i; 3])).collect();
        let (before, after) = trimmer.trim();
        assert!(before > 0 && after > 0);
        assert!(after < before, "resident set shrank: {before} -> {after}");
        // Dynamic dispatch (vtables in RELRO), formatting, panicking machinery, hashing.
        let shown: Box<dyn std::fmt::Debug> = Box::new(warm.len());
        assert_eq!(format!("{shown:?}"), "2000");
        let mut set = std::collections::HashSet::new();
        set.extend(warm.iter().map(String::as_str));
        assert_eq!(set.len(), 2000);
        let caught = std::panic::catch_unwind(|| {
            let empty: Vec<u8> = Vec::new();
            empty.first().copied().expect("empty")
        });
        assert!(caught.is_err());
    }

    #[test]
    fn subtract_cuts_holes() {
        use super::subtract;
        assert_eq!(subtract((0, 10), (20, 30)), vec![(0, 10)]);
        assert_eq!(subtract((0, 10), (0, 10)), Vec::<(u64, u64)>::new());
        assert_eq!(subtract((0, 10), (2, 4)), vec![(0, 2), (4, 10)]);
        assert_eq!(subtract((0, 10), (5, 30)), vec![(0, 5)]);
        assert_eq!(subtract((5, 10), (0, 7)), vec![(7, 10)]);
    }
}
