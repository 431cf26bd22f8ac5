//! Gives back the pages of the dynamic loader's tables once start-up is over.
//!
//! trueup and the libraries it needs are bound at start-up (`BIND_NOW`):
//! the loader reads each object's hash, symbol, string, version and
//! relocation tables once, applies them, and has no more use for them. They
//! stay mapped, and every page read counts in the process's resident set:
//! libcrypto's tables alone are 0.8 MiB (it is loaded for libgit2 and
//! libssh2 whether a run uses them or not), trueup's own relocations
//! 0.5 MiB. [`release_loader_tables`] unmaps those pages (`MADV_DONTNEED`).
//!
//! Only whole pages inside a read-only segment of the file are released:
//! they are clean copies of the file's page cache, never written (the
//! relocated data lies in the writable RELRO segment, which is left alone),
//! so a later reader — `dlopen` and `dlsym` look symbols up in these tables
//! — faults the same bytes back in. An object whose tables are not laid out
//! as one block inside one read-only segment, or that relocates its text
//! (`DT_TEXTREL`), is skipped.

/// Releases the loader's table pages of every loaded object; returns the
/// number of bytes released (0 where the platform has no such tables).
pub fn release_loader_tables() -> usize {
    #[cfg(all(target_os = "linux", target_env = "gnu", target_pointer_width = "64"))]
    {
        imp::release()
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu", target_pointer_width = "64")))]
    {
        0
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu", target_pointer_width = "64"))]
mod imp {
    use std::ffi::{CStr, c_int, c_void};

    const DT_NULL: i64 = 0;
    const DT_PLTRELSZ: i64 = 2;
    const DT_HASH: i64 = 4;
    const DT_STRTAB: i64 = 5;
    const DT_SYMTAB: i64 = 6;
    const DT_RELA: i64 = 7;
    const DT_RELASZ: i64 = 8;
    const DT_STRSZ: i64 = 10;
    const DT_REL: i64 = 17;
    const DT_RELSZ: i64 = 18;
    const DT_TEXTREL: i64 = 22;
    const DT_JMPREL: i64 = 23;
    const DT_FLAGS: i64 = 30;
    const DT_RELRSZ: i64 = 35;
    const DT_RELR: i64 = 36;
    const DT_GNU_HASH: i64 = 0x6fff_fef5;
    const DT_VERSYM: i64 = 0x6fff_fff0;
    const DT_VERDEF: i64 = 0x6fff_fffc;
    const DT_VERNEED: i64 = 0x6fff_fffe;
    const DF_TEXTREL: u64 = 4;

    /// `Elf64_Dyn` (the libc crate does not define it).
    #[repr(C)]
    struct Dyn {
        d_tag: i64,
        d_val: u64,
    }

    /// The span of one object's loader tables, as addresses in memory.
    #[derive(Debug, Default, PartialEq)]
    pub(super) struct Tables {
        pub lo: usize,
        pub hi: usize,
    }

    /// The tables' span from an object's dynamic entries (`tag`, `value`),
    /// or None when the object relocates its text or lists no tables.
    /// `base` is the object's load address: glibc rewrites the address
    /// entries of a loaded object to absolute addresses on x86_64, other
    /// ports leave them relative, so a value below `base` is taken as
    /// relative to it.
    pub(super) fn tables(base: usize, entries: impl Iterator<Item = (i64, u64)>) -> Option<Tables> {
        let mut starts: Vec<usize> = Vec::new();
        let mut ends: Vec<usize> = Vec::new();
        let (mut strtab, mut strsz) = (None, None);
        let (mut rela, mut relasz) = (None, None);
        let (mut rel, mut relsz) = (None, None);
        let (mut jmprel, mut pltrelsz) = (None, None);
        let (mut relr, mut relrsz) = (None, None);
        let at = |v: u64| -> usize {
            let v = v as usize;
            if v >= base { v } else { base.wrapping_add(v) }
        };
        for (tag, value) in entries {
            match tag {
                DT_TEXTREL => return None,
                DT_FLAGS if value & DF_TEXTREL != 0 => return None,
                DT_HASH | DT_GNU_HASH | DT_SYMTAB | DT_VERSYM | DT_VERDEF | DT_VERNEED => {
                    starts.push(at(value))
                }
                DT_STRTAB => strtab = Some(at(value)),
                DT_STRSZ => strsz = Some(value as usize),
                DT_RELA => rela = Some(at(value)),
                DT_RELASZ => relasz = Some(value as usize),
                DT_REL => rel = Some(at(value)),
                DT_RELSZ => relsz = Some(value as usize),
                DT_JMPREL => jmprel = Some(at(value)),
                DT_PLTRELSZ => pltrelsz = Some(value as usize),
                DT_RELR => relr = Some(at(value)),
                DT_RELRSZ => relrsz = Some(value as usize),
                _ => {}
            }
        }
        for (start, size) in [
            (strtab, strsz),
            (rela, relasz),
            (rel, relsz),
            (jmprel, pltrelsz),
            (relr, relrsz),
        ] {
            if let (Some(start), Some(size)) = (start, size) {
                starts.push(start);
                ends.push(start.checked_add(size)?);
            }
        }
        let lo = *starts.iter().min()?;
        let hi = *ends.iter().max()?;
        // A table listed without its size (the symbol table, the hashes,
        // the versions) must start inside the span the sized ones end.
        if hi <= lo || starts.iter().any(|&s| s >= hi) {
            return None;
        }
        Some(Tables { lo, hi })
    }

    /// The whole pages of `tables`, if they lie inside one of `segments`
    /// (read-only loaded ranges, `[start, end)`).
    pub(super) fn pages(
        tables: &Tables,
        segments: &[(usize, usize)],
        page: usize,
    ) -> Option<(usize, usize)> {
        segments
            .iter()
            .find(|&&(start, end)| start <= tables.lo && tables.hi <= end)?;
        let start = tables.lo.checked_add(page - 1)? & !(page - 1);
        let end = tables.hi & !(page - 1);
        (end > start).then(|| (start, end - start))
    }

    unsafe extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        _size: usize,
        data: *mut c_void,
    ) -> c_int {
        // SAFETY: dl_iterate_phdr passes a valid info for the duration of
        // the call, and `data` is the `usize` `release` handed it.
        let (info, released) = unsafe { (&*info, &mut *(data as *mut usize)) };
        if info.dlpi_phdr.is_null() {
            return 0;
        }
        if !info.dlpi_name.is_null() {
            // SAFETY: a non-null dlpi_name is a NUL-terminated string.
            let name = unsafe { CStr::from_ptr(info.dlpi_name) }.to_bytes();
            if name.starts_with(b"linux-vdso") || name.starts_with(b"linux-gate") {
                return 0; // the kernel's own mapping, not a file
            }
        }
        let base = info.dlpi_addr as usize;
        // SAFETY: dlpi_phdr points at dlpi_phnum program headers.
        let phdrs =
            unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) };
        let mut segments = Vec::new();
        let mut dynamic = None;
        for ph in phdrs {
            let start = base.wrapping_add(ph.p_vaddr as usize);
            match ph.p_type {
                libc::PT_LOAD if ph.p_flags & libc::PF_W == 0 => {
                    segments.push((start, start.wrapping_add(ph.p_memsz as usize)))
                }
                libc::PT_DYNAMIC => dynamic = Some(start as *const Dyn),
                _ => {}
            }
        }
        let Some(dynamic) = dynamic else { return 0 };
        let entries = (0..).map_while(|i| {
            // SAFETY: the dynamic section is an array ending at DT_NULL.
            let d = unsafe { &*dynamic.add(i) };
            (d.d_tag != DT_NULL).then_some((d.d_tag, d.d_val))
        });
        let Some(tables) = tables(base, entries) else {
            return 0;
        };
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        if let Some((start, len)) = pages(&tables, &segments, page) {
            // SAFETY: the range is whole pages of a read-only, file-backed
            // segment of a loaded object: never written, so dropping them
            // loses nothing and a later access reads the same bytes back.
            if unsafe { libc::madvise(start as *mut c_void, len, libc::MADV_DONTNEED) } == 0 {
                *released += len;
            }
        }
        0
    }

    pub(super) fn release() -> usize {
        let mut released = 0usize;
        // SAFETY: `each` only reads what dl_iterate_phdr hands it and
        // writes through `data`, which outlives the call.
        unsafe { libc::dl_iterate_phdr(Some(each), (&mut released as *mut usize).cast()) };
        released
    }
}

#[cfg(all(
    test,
    target_os = "linux",
    target_env = "gnu",
    target_pointer_width = "64"
))]
mod tests {
    use super::imp::{Tables, pages, tables};
    use super::release_loader_tables;

    #[test]
    fn the_span_covers_every_table_relative_or_absolute() {
        let base = 0x5555_0000_0000usize;
        // hash 0x300, symtab 0x400, strtab 0x1000+0x800, rela 0x2000+0x3000, jmprel 0x5000+0x100
        let rel = [
            (0x6fff_fef5, 0x300),
            (6, 0x400),
            (5, 0x1000),
            (10, 0x800),
            (7, 0x2000),
            (8, 0x3000),
            (23, 0x5000),
            (2, 0x100),
        ];
        let want = Tables {
            lo: base + 0x300,
            hi: base + 0x5100,
        };
        assert_eq!(tables(base, rel.iter().copied()), Some(want));
        let abs = rel.map(|(t, v)| {
            if matches!(t, 10 | 8 | 2) {
                (t, v)
            } else {
                (t, v + base as u64)
            }
        });
        assert_eq!(
            tables(base, abs.iter().copied()),
            Some(Tables {
                lo: base + 0x300,
                hi: base + 0x5100
            })
        );
    }

    #[test]
    fn text_relocations_or_an_odd_layout_are_left_alone() {
        assert_eq!(
            tables(
                0x1000_0000,
                [(6, 0x400), (5, 0x1000), (10, 0x10), (22, 0)].into_iter()
            ),
            None
        );
        assert_eq!(
            tables(
                0x1000_0000,
                [(6, 0x400), (5, 0x1000), (10, 0x10), (30, 4)].into_iter()
            ),
            None
        );
        // The symbol table starts after every sized table ends: unknown size.
        assert_eq!(
            tables(
                0x1000_0000,
                [(6, 0x9000), (5, 0x1000), (10, 0x10)].into_iter()
            ),
            None
        );
        // No sized table at all.
        assert_eq!(tables(0x1000_0000, [(6, 0x400)].into_iter()), None);
    }

    #[test]
    fn only_whole_pages_inside_a_read_only_segment() {
        let t = Tables {
            lo: 0x1100,
            hi: 0x5100,
        };
        assert_eq!(pages(&t, &[(0x0, 0x6000)], 0x1000), Some((0x2000, 0x3000)));
        // Not inside a read-only segment (it spans into a writable one).
        assert_eq!(pages(&t, &[(0x0, 0x5000)], 0x1000), None);
        // Less than a whole page.
        assert_eq!(
            pages(
                &Tables {
                    lo: 0x1100,
                    hi: 0x1f00
                },
                &[(0, 0x6000)],
                0x1000
            ),
            None
        );
    }

    /// Resident KiB of the first read-only mapping of `file` (the one that
    /// starts at offset 0 and holds the loader's tables).
    fn resident_kib(file: &str) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut ours = false;
        let mut kib = 0;
        for line in smaps.lines() {
            if line.contains('-') && line.split_whitespace().count() >= 5 && !line.ends_with(" kB")
            {
                let fields: Vec<&str> = line.split_whitespace().collect();
                ours = line.ends_with(file) && fields[1] == "r--p" && fields[2] == "00000000";
            } else if ours && let Some(v) = line.strip_prefix("Rss:") {
                kib += v
                    .trim()
                    .trim_end_matches(" kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap();
            }
        }
        kib
    }

    #[test]
    fn released_pages_come_back_for_a_symbol_lookup() {
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let exe = exe.to_str().unwrap().to_owned();
        let before = resident_kib(&exe);
        let released = release_loader_tables();
        assert!(released > 0, "nothing released");
        let after = resident_kib(&exe);
        assert!(
            after + 256 <= before,
            "the test binary's tables stayed resident: {before} -> {after} KiB"
        );
        // The tables read back fine: the loader finds a libc symbol by name.
        // SAFETY: dlsym with a NUL-terminated name.
        let found = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"getpid".as_ptr()) };
        assert_eq!(found as usize, libc::getpid as *const () as usize);
        // And a library loaded now binds against them.
        // SAFETY: dlopen of a system library by name.
        let lib = unsafe { libc::dlopen(c"libz.so.1".as_ptr(), libc::RTLD_NOW) };
        assert!(!lib.is_null());
    }
}
