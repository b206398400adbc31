//! An in-memory SQLite VFS that can lose power, for the deterministic
//! simulation (issue #25, "Power loss").
//!
//! Modelled on the ideas of SQLite's crash-test VFS (`test6.c`): every file
//! keeps what its last sync made durable (`synced`) apart from the writes and
//! truncates since (`pending`), and its current contents, which is what the
//! OS page cache shows. Two kinds of crash follow:
//!
//! - a process crash (kill -9, [`crash`]) keeps everything written: the page
//!   cache outlives the process;
//! - a power loss ([`power_loss`]) keeps what was synced and, by [`Loss`],
//!   none of the pending writes, a random half of them (in their order), or
//!   all of them but the last one, which is torn at a 512-byte boundary.
//!
//! A simulator thread names its "disk" by a path prefix ending in `/`
//! (`/seed-17/`), calls [`register`] and opens `file:/seed-17/posd.db?vfs=posd-sim`.
//! Seeds run in parallel threads: all files live in one global map keyed by
//! full path, and every disk operation below takes a prefix. File locks and
//! the WAL's shared memory (with its locks) work between the connections of
//! this process as the unix VFS makes them work.
//!
//! What it does not model:
//! - order between files: a sync makes one file durable; the pending writes
//!   of different files are kept or lost independently;
//! - directories: creating or deleting a file is durable at once; temp files
//!   (no name, or delete-on-close) are invisible and never survive;
//! - other processes, I/O errors, a full disk, bit rot, misdirected writes;
//! - SQLite's own PRNG (WAL salts, journal checksums) is seeded from the
//!   default VFS, not this one: file bytes may differ between runs where
//!   behaviour does not.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::ffi::{CStr, c_char, c_int, c_void};
use std::fmt;
use std::ops::{AddAssign, Bound};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr;
use std::slice;
use std::sync::{Mutex, MutexGuard, Once, PoisonError};

use rand::Rng;
use rusqlite::ffi;

/// The VFS's name, for `?vfs=` in a database URI.
pub const NAME: &str = "posd-sim";
const ZNAME: &CStr = c"posd-sim";
/// The granularity at which [`Loss::TornLast`] tears a write.
const TEAR: usize = 512;
/// 2026-03-02 00:00 UTC as a Julian day: SQLite's "now", never the wall clock.
const JULIAN_NOW: f64 = 2_461_101.5;
const JULIAN_NOW_MS: i64 = 212_639_169_600_000;

/// What a power loss keeps of the writes since each file's last sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    /// None of them: every file as of its last sync.
    All,
    /// Each with probability 1/2, applied in their original order.
    Subset,
    /// All but the last one written under the prefix, of which only a random
    /// prefix in 512-byte sectors lands (possibly none).
    TornLast,
}

/// Counters of a disk, for the simulator's coverage report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskStats {
    pub syncs: u64,
    pub writes: u64,
    pub bytes_written: u64,
}

impl AddAssign for DiskStats {
    fn add_assign(&mut self, other: Self) {
        self.syncs += other.syncs;
        self.writes += other.writes;
        self.bytes_written += other.bytes_written;
    }
}

/// The files of a disk as a crash left them, for [`restore`].
#[derive(Clone, PartialEq, Eq)]
pub struct Snapshot {
    files: BTreeMap<String, Vec<u8>>,
}

impl Snapshot {
    /// The files' paths, in order.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.files.keys().map(String::as_str)
    }

    pub fn contents(&self, path: &str) -> Option<&[u8]> {
        self.files.get(path).map(Vec::as_slice)
    }
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.files.iter().map(|(path, bytes)| (path, bytes.len()))).finish()
    }
}

/// Registers the VFS with SQLite (once per process; not as the default).
pub fn register() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let vfs = Box::new(ffi::sqlite3_vfs {
            iVersion: 2,
            szOsFile: size_of::<SimFile>() as c_int,
            mxPathname: 512,
            pNext: ptr::null_mut(),
            zName: ZNAME.as_ptr(),
            pAppData: ptr::null_mut(),
            xOpen: Some(x_open),
            xDelete: Some(x_delete),
            xAccess: Some(x_access),
            xFullPathname: Some(x_full_pathname),
            // Extension loading is off on every connection: SQLite refuses it
            // before it reaches the VFS.
            xDlOpen: None,
            xDlError: None,
            xDlSym: None,
            xDlClose: None,
            xRandomness: Some(x_randomness),
            xSleep: Some(x_sleep),
            xCurrentTime: Some(x_current_time),
            xGetLastError: Some(x_get_last_error),
            xCurrentTimeInt64: Some(x_current_time_int64),
            xSetSystemCall: None,
            xGetSystemCall: None,
            xNextSystemCall: None,
        });
        // SAFETY: the VFS is leaked, so it outlives every connection; SQLite
        // owns its `pNext` from here on, and `ZNAME` is 'static.
        let rc = unsafe { ffi::sqlite3_vfs_register(Box::into_raw(vfs), 0) };
        assert_eq!(rc, ffi::SQLITE_OK, "registering the {NAME} VFS");
    });
}

/// What a process crash leaves under `prefix`: every file as last written.
/// Call it while the connections are still open, then drop them and [`restore`].
pub fn crash(prefix: &str) -> Snapshot {
    let disk = lock();
    Snapshot { files: disk.under(prefix).map(|(path, f)| (path.clone(), f.current.clone())).collect() }
}

/// What a power loss leaves under `prefix`, per `mode`, drawing from `rng`.
pub fn power_loss(prefix: &str, rng: &mut impl Rng, mode: Loss) -> Snapshot {
    let disk = lock();
    let last = disk.under(prefix).filter_map(|(_, f)| f.pending.last().map(|op| op.seq)).max();
    let mut files = BTreeMap::new();
    for (path, f) in disk.under(prefix) {
        let mut bytes = f.synced.clone();
        for op in &f.pending {
            match mode {
                Loss::All => break,
                Loss::Subset if rng.gen_bool(0.5) => op.apply(&mut bytes),
                Loss::Subset => {}
                Loss::TornLast if Some(op.seq) == last => op.apply_torn(&mut bytes, rng),
                Loss::TornLast => op.apply(&mut bytes),
            }
        }
        files.insert(path.clone(), bytes);
    }
    Snapshot { files }
}

/// Replaces every file under `prefix` with the snapshot's (as both written and
/// synced); files not in it are gone. Panics if a file there is still open.
pub fn restore(prefix: &str, snapshot: Snapshot) {
    let mut disk = closed(lock(), prefix, "restore");
    if let Some(path) = snapshot.files.keys().find(|path| !path.starts_with(prefix)) {
        drop(disk);
        panic!("posd-sim VFS: restore({prefix:?}) given a snapshot holding {path}, outside that prefix");
    }
    disk.forget(prefix);
    for (path, bytes) in snapshot.files {
        let id = disk.next();
        disk.files.insert(path, FileState::new(id, bytes, false));
    }
}

/// Forgets every file under `prefix` and its counters (the end of a seed).
/// Panics if a file there is still open.
pub fn remove(prefix: &str) {
    let mut disk = closed(lock(), prefix, "remove");
    disk.forget(prefix);
    disk.retired.retain(|path, _| !path.starts_with(prefix));
}

/// The counters of every file under `prefix`, deleted ones included.
pub fn stats(prefix: &str) -> DiskStats {
    let disk = lock();
    let mut total = DiskStats::default();
    disk.under(prefix).for_each(|(_, f)| total += f.stats);
    under(&disk.retired, prefix).for_each(|(_, stats)| total += *stats);
    total
}

/// A file's current contents (as written, synced or not).
pub fn file_contents(path: &str) -> Option<Vec<u8>> {
    lock().files.get(path).filter(|f| !f.temp).map(|f| f.current.clone())
}

// ---------------------------------------------------------------- the disk

struct Disk {
    files: BTreeMap<String, FileState>,
    /// The counters of deleted files, by path.
    retired: BTreeMap<String, DiskStats>,
    /// The last id given to a file or a handle, or to a write as its sequence number.
    last: u64,
}

static DISK: Mutex<Disk> = Mutex::new(Disk { files: BTreeMap::new(), retired: BTreeMap::new(), last: 0 });

/// The disk, also after a panic in a method body (which answered SQLite
/// with `SQLITE_IOERR`, see `guard`).
fn lock() -> MutexGuard<'static, Disk> {
    DISK.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `disk`, after checking that no file under `prefix` is open.
fn closed(disk: MutexGuard<'static, Disk>, prefix: &str, what: &str) -> MutexGuard<'static, Disk> {
    let open = disk.under(prefix).find(|(_, f)| f.open > 0).map(|(path, _)| path.clone());
    if let Some(path) = open {
        drop(disk);
        panic!("posd-sim VFS: {what}({prefix:?}) while {path} is still open: drop every connection first");
    }
    disk
}

fn under<'a, V>(map: &'a BTreeMap<String, V>, prefix: &'a str) -> impl Iterator<Item = (&'a String, &'a V)> {
    map.range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
        .take_while(move |(path, _)| path.starts_with(prefix))
}

impl Disk {
    fn next(&mut self) -> u64 {
        self.last += 1;
        self.last
    }

    /// The named files under `prefix` (temp files have no place on a disk).
    fn under<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a String, &'a FileState)> {
        under(&self.files, prefix).filter(|(_, f)| !f.temp)
    }

    /// The file a handle opened, unless it was deleted (or replaced) since.
    fn file(&mut self, path: &str, id: u64) -> Option<&mut FileState> {
        self.files.get_mut(path).filter(|f| f.id == id)
    }

    /// Deletes a file, durably, keeping its counters.
    fn delete(&mut self, path: &str) {
        let Some(mut f) = self.files.remove(path) else { return };
        // Shared memory exists while a connection maps it, and must outlive
        // that mapping (a database deleted under a connection): leaked.
        std::mem::forget(f.shm.take());
        if !f.temp {
            *self.retired.entry(path.to_owned()).or_default() += f.stats;
        }
    }

    fn forget(&mut self, prefix: &str) {
        let paths: Vec<String> = self.under(prefix).map(|(path, _)| path.clone()).collect();
        paths.iter().for_each(|path| self.delete(path));
    }
}

#[derive(Default)]
struct FileState {
    id: u64,
    current: Vec<u8>,
    synced: Vec<u8>,
    /// Since the last sync, in order (not kept for temp files).
    pending: Vec<Op>,
    temp: bool,
    /// Handles open on the file.
    open: u32,
    /// Handles holding a SHARED lock or more.
    readers: u32,
    /// The handle holding RESERVED, PENDING or EXCLUSIVE, and that level.
    writer: Option<(u64, c_int)>,
    /// The WAL's shared memory, for a database file mapped by some handle.
    shm: Option<Shm>,
    stats: DiskStats,
}

impl FileState {
    fn new(id: u64, bytes: Vec<u8>, temp: bool) -> Self {
        Self { id, synced: bytes.clone(), current: bytes, temp, ..Self::default() }
    }

    /// Moves `held` (a handle's level) up to `want`, as the unix VFS does:
    /// PENDING keeps new readers out, EXCLUSIVE waits for the other readers to leave.
    fn lock(&mut self, me: u64, held: &mut c_int, want: c_int) -> c_int {
        if *held >= want {
            return ffi::SQLITE_OK;
        }
        match want {
            ffi::SQLITE_LOCK_SHARED => {
                if self.writer.is_some_and(|(_, level)| level >= ffi::SQLITE_LOCK_PENDING) {
                    return ffi::SQLITE_BUSY;
                }
                self.readers += 1;
            }
            // SQLite asks for more than SHARED only while holding SHARED.
            _ if *held == ffi::SQLITE_LOCK_NONE => return ffi::SQLITE_IOERR_LOCK,
            ffi::SQLITE_LOCK_RESERVED => {
                if self.writer.is_some() {
                    return ffi::SQLITE_BUSY;
                }
                self.writer = Some((me, want));
            }
            _ => {
                if self.writer.is_some_and(|(owner, _)| owner != me) {
                    return ffi::SQLITE_BUSY;
                }
                self.writer = Some((me, ffi::SQLITE_LOCK_PENDING));
                *held = ffi::SQLITE_LOCK_PENDING;
                if self.readers > 1 {
                    return ffi::SQLITE_BUSY;
                }
                self.writer = Some((me, want));
            }
        }
        *held = want;
        ffi::SQLITE_OK
    }

    fn unlock(&mut self, me: u64, held: &mut c_int, want: c_int) {
        if *held <= want {
            return;
        }
        if *held > ffi::SQLITE_LOCK_SHARED && self.writer.is_some_and(|(owner, _)| owner == me) {
            self.writer = None;
        }
        if want == ffi::SQLITE_LOCK_NONE {
            self.readers = self.readers.saturating_sub(1);
        }
        *held = want;
    }
}

struct Op {
    /// Orders writes across files (for [`Loss::TornLast`]).
    seq: u64,
    kind: OpKind,
}

enum OpKind {
    Write { offset: usize, bytes: Vec<u8> },
    Truncate(usize),
}

impl Op {
    fn apply(&self, file: &mut Vec<u8>) {
        match &self.kind {
            OpKind::Write { offset, bytes } => write_at(file, *offset, bytes),
            OpKind::Truncate(len) => file.resize(*len, 0),
        }
    }

    /// Lands a random prefix of a write in whole sectors; a truncate in flight does not land.
    fn apply_torn(&self, file: &mut Vec<u8>, rng: &mut impl Rng) {
        if let OpKind::Write { offset, bytes } = &self.kind {
            let sectors = bytes.len().div_ceil(TEAR);
            if sectors > 0 {
                let kept = (rng.gen_range(0..sectors) * TEAR).min(bytes.len());
                write_at(file, *offset, &bytes[..kept]);
            }
        }
    }
}

fn write_at(file: &mut Vec<u8>, offset: usize, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    let end = offset + bytes.len();
    if file.len() < end {
        file.resize(end, 0);
    }
    file[offset..end].copy_from_slice(bytes);
}

/// A database's WAL index: regions and the 8 lock slots.
#[derive(Default)]
struct Shm {
    regions: Vec<Region>,
    /// Handles attached (mapped and not yet unmapped).
    attached: u32,
    shared: [u32; ffi::SQLITE_SHM_NLOCK as usize],
    exclusive: [Option<u64>; ffi::SQLITE_SHM_NLOCK as usize],
}

/// Which shm lock slots a handle holds, as bit masks.
#[derive(Default)]
struct ShmHold {
    shared: u8,
    exclusive: u8,
}

fn slots(mask: u8) -> impl Iterator<Item = usize> {
    (0..8).filter(move |&slot| mask & (1u8 << slot) != 0)
}

impl Shm {
    fn lock(&mut self, me: u64, hold: &mut ShmHold, mask: u8, flags: c_int) -> c_int {
        if flags & ffi::SQLITE_SHM_UNLOCK != 0 {
            for slot in slots(mask & hold.shared) {
                self.shared[slot] -= 1;
            }
            for slot in slots(mask & hold.exclusive) {
                self.exclusive[slot] = None;
            }
            hold.shared &= !mask;
            hold.exclusive &= !mask;
        } else if flags & ffi::SQLITE_SHM_SHARED != 0 {
            if slots(mask & !hold.shared).any(|slot| self.exclusive[slot].is_some()) {
                return ffi::SQLITE_BUSY;
            }
            for slot in slots(mask & !hold.shared) {
                self.shared[slot] += 1;
            }
            hold.shared |= mask;
        } else {
            let mine = |slot: usize| u32::from(hold.shared & (1 << slot) != 0);
            if slots(mask).any(|slot| self.exclusive[slot].is_some_and(|o| o != me) || self.shared[slot] > mine(slot)) {
                return ffi::SQLITE_BUSY;
            }
            for slot in slots(mask) {
                self.exclusive[slot] = Some(me);
            }
            hold.exclusive |= mask;
        }
        ffi::SQLITE_OK
    }
}

/// One zero-filled region of shared memory. SQLite keeps its address while
/// the database is open, so it is allocated once and never moves; it is
/// freed only when the last handle unmaps it (`Disk::delete` leaks it if
/// a handle still maps it).
struct Region(*mut [u8]);

// SAFETY: the region is plain memory that no thread owns; SQLite orders its
// accesses with the shm locks and barriers.
unsafe impl Send for Region {}

impl Region {
    fn zeroed(len: usize) -> Self {
        Self(Box::into_raw(vec![0u8; len].into_boxed_slice()))
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: the pointer came from `Box::into_raw` in `zeroed` and is freed only here.
        drop(unsafe { Box::from_raw(self.0) });
    }
}

// ------------------------------------------------------ SQLite's side: files

/// SQLite's `sqlite3_file` with our handle behind it.
#[repr(C)]
struct SimFile {
    base: ffi::sqlite3_file,
    handle: *mut Handle,
}

/// One open of a file (one connection's).
struct Handle {
    id: u64,
    path: String,
    file_id: u64,
    delete_on_close: bool,
    lock: c_int,
    shm: Option<ShmHold>,
}

impl Handle {
    fn detach_shm(&mut self, disk: &mut Disk) {
        let Some(mut hold) = self.shm.take() else { return };
        let Some(f) = disk.file(&self.path, self.file_id) else { return };
        if let Some(shm) = f.shm.as_mut() {
            shm.lock(self.id, &mut hold, 0xff, ffi::SQLITE_SHM_UNLOCK);
            shm.attached -= 1;
            // The last one out drops the memory: the next first opener finds
            // it zeroed and rebuilds the index, as the unix VFS truncates the
            // `-shm` file of a first opener.
            if shm.attached == 0 {
                f.shm = None;
            }
        }
    }
}

static IO_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 2,
    xClose: Some(x_close),
    xRead: Some(x_read),
    xWrite: Some(x_write),
    xTruncate: Some(x_truncate),
    xSync: Some(x_sync),
    xFileSize: Some(x_file_size),
    xLock: Some(x_lock),
    xUnlock: Some(x_unlock),
    xCheckReservedLock: Some(x_check_reserved_lock),
    xFileControl: Some(x_file_control),
    xSectorSize: Some(x_sector_size),
    xDeviceCharacteristics: Some(x_device_characteristics),
    xShmMap: Some(x_shm_map),
    xShmLock: Some(x_shm_lock),
    xShmBarrier: Some(x_shm_barrier),
    xShmUnmap: Some(x_shm_unmap),
    xFetch: None,
    xUnfetch: None,
};

/// Runs a method's body; a panic becomes `SQLITE_IOERR` instead of crossing into C.
fn guard(body: impl FnOnce() -> c_int) -> c_int {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(ffi::SQLITE_IOERR)
}

/// The handle behind a file.
///
/// # Safety
/// `file` must be a [`SimFile`] that [`x_open`] opened and [`x_close`] has not
/// closed; SQLite uses a file from one thread at a time. SQLite calls every
/// file method below on such a file only, which each call here relies on.
unsafe fn handle<'a>(file: *mut ffi::sqlite3_file) -> &'a mut Handle {
    // SAFETY: per the contract, `file` starts a `SimFile` (repr(C), its first
    // field is the `sqlite3_file`) whose `handle` is the Box `x_open` leaked.
    unsafe { &mut *(*file.cast::<SimFile>()).handle }
}

/// Runs a method's body on a handle's file, under the disk's lock and with
/// a fresh sequence number; `missing` if the file was deleted since it was opened.
fn on_file(h: &mut Handle, missing: c_int, body: impl FnOnce(&mut Handle, &mut FileState, u64) -> c_int) -> c_int {
    guard(|| {
        let mut disk = lock();
        let seq = disk.next();
        match disk.file(&h.path, h.file_id) {
            Some(f) => body(h, f, seq),
            None => missing,
        }
    })
}

/// A byte range of a file, if SQLite's offset and length make sense.
fn range(ofst: i64, len: c_int) -> Option<(usize, usize)> {
    let (start, len) = (usize::try_from(ofst).ok()?, usize::try_from(len).ok()?);
    Some((start, start.checked_add(len)?))
}

unsafe extern "C" fn x_open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let sim = file.cast::<SimFile>();
    // SAFETY: SQLite hands us `szOsFile` = size_of::<SimFile>() writable,
    // aligned bytes. A null `pMethods` tells SQLite not to call x_close,
    // and it stays null unless the open succeeds.
    unsafe { sim.write(SimFile { base: ffi::sqlite3_file { pMethods: ptr::null() }, handle: ptr::null_mut() }) };
    let opened = catch_unwind(AssertUnwindSafe(|| -> Result<Box<Handle>, c_int> {
        let name = if name.is_null() {
            None
        } else {
            // SAFETY: a non-null name is a NUL-terminated string that SQLite keeps during the call.
            Some(unsafe { CStr::from_ptr(name) }.to_str().map_err(|_| ffi::SQLITE_CANTOPEN)?)
        };
        open(name, flags)
    }));
    match opened {
        Ok(Ok(handle)) => {
            // SAFETY: as above; the handle is leaked until x_close takes it back.
            unsafe {
                (*sim).handle = Box::into_raw(handle);
                (*sim).base.pMethods = &IO_METHODS;
                if !out_flags.is_null() {
                    *out_flags = flags;
                }
            }
            ffi::SQLITE_OK
        }
        Ok(Err(rc)) => rc,
        Err(_) => ffi::SQLITE_CANTOPEN,
    }
}

fn open(name: Option<&str>, flags: c_int) -> Result<Box<Handle>, c_int> {
    let mut disk = lock();
    let id = disk.next();
    let temp = name.is_none() || flags & ffi::SQLITE_OPEN_DELETEONCLOSE != 0;
    // A temp file gets a name no prefix covers: the unix VFS unlinks it at once.
    let path = match name {
        Some(name) if !temp => name.to_owned(),
        _ => format!("<temp {id}>"),
    };
    let create = flags & ffi::SQLITE_OPEN_CREATE != 0;
    let f = match disk.files.entry(path.clone()) {
        Entry::Occupied(entry) => entry.into_mut(),
        Entry::Vacant(entry) if create => entry.insert(FileState::new(id, Vec::new(), temp)),
        Entry::Vacant(_) => return Err(ffi::SQLITE_CANTOPEN),
    };
    f.open += 1;
    let file_id = f.id;
    Ok(Box::new(Handle { id, path, file_id, delete_on_close: temp, lock: ffi::SQLITE_LOCK_NONE, shm: None }))
}

unsafe extern "C" fn x_close(file: *mut ffi::sqlite3_file) -> c_int {
    let sim = file.cast::<SimFile>();
    // SAFETY: SQLite calls x_close once, last, on a file x_open opened: the
    // Box leaked there is taken back here, once.
    let raw = unsafe { std::mem::replace(&mut (*sim).handle, ptr::null_mut()) };
    if raw.is_null() {
        return ffi::SQLITE_OK;
    }
    // SAFETY: see above.
    let mut h = unsafe { Box::from_raw(raw) };
    guard(|| {
        let mut disk = lock();
        h.detach_shm(&mut disk);
        if let Some(f) = disk.file(&h.path, h.file_id) {
            f.unlock(h.id, &mut h.lock, ffi::SQLITE_LOCK_NONE);
            f.open -= 1;
            if h.delete_on_close {
                disk.delete(&h.path);
            }
        }
        ffi::SQLITE_OK
    })
}

unsafe extern "C" fn x_read(file: *mut ffi::sqlite3_file, buf: *mut c_void, amt: c_int, ofst: i64) -> c_int {
    // SAFETY: see `handle`.
    on_file(unsafe { handle(file) }, ffi::SQLITE_IOERR_READ, |_, f, _| {
        let Some((start, end)) = range(ofst, amt) else { return ffi::SQLITE_IOERR_READ };
        // SAFETY: SQLite passes `amt` writable bytes at `buf`.
        let out = unsafe { slice::from_raw_parts_mut(buf.cast::<u8>(), end - start) };
        let available = f.current.get(start..).unwrap_or_default();
        let n = available.len().min(out.len());
        out[..n].copy_from_slice(&available[..n]);
        if n < out.len() {
            // SQLite relies on the rest being zeroed.
            out[n..].fill(0);
            return ffi::SQLITE_IOERR_SHORT_READ;
        }
        ffi::SQLITE_OK
    })
}

unsafe extern "C" fn x_write(file: *mut ffi::sqlite3_file, buf: *const c_void, amt: c_int, ofst: i64) -> c_int {
    // SAFETY: see `handle`.
    on_file(unsafe { handle(file) }, ffi::SQLITE_IOERR_WRITE, |_, f, seq| {
        let Some((start, end)) = range(ofst, amt) else { return ffi::SQLITE_IOERR_WRITE };
        // SAFETY: SQLite passes `amt` readable bytes at `buf`.
        let bytes = unsafe { slice::from_raw_parts(buf.cast::<u8>(), end - start) };
        write_at(&mut f.current, start, bytes);
        if !f.temp {
            f.pending.push(Op { seq, kind: OpKind::Write { offset: start, bytes: bytes.to_vec() } });
        }
        f.stats.writes += 1;
        f.stats.bytes_written += bytes.len() as u64;
        ffi::SQLITE_OK
    })
}

unsafe extern "C" fn x_truncate(file: *mut ffi::sqlite3_file, size: i64) -> c_int {
    // SAFETY: see `handle`.
    on_file(unsafe { handle(file) }, ffi::SQLITE_IOERR_TRUNCATE, |_, f, seq| {
        let Some((len, _)) = range(size, 0) else { return ffi::SQLITE_IOERR_TRUNCATE };
        f.current.resize(len, 0);
        if !f.temp {
            f.pending.push(Op { seq, kind: OpKind::Truncate(len) });
        }
        ffi::SQLITE_OK
    })
}

unsafe extern "C" fn x_sync(file: *mut ffi::sqlite3_file, _flags: c_int) -> c_int {
    // SAFETY: see `handle`.
    on_file(unsafe { handle(file) }, ffi::SQLITE_IOERR_FSYNC, |_, f, _| {
        // Replaying the writes since the last sync is `synced = current`
        // without copying the whole file at every commit.
        for op in std::mem::take(&mut f.pending) {
            op.apply(&mut f.synced);
        }
        debug_assert!(f.temp || f.synced == f.current, "synced + pending != current");
        f.stats.syncs += 1;
        ffi::SQLITE_OK
    })
}

unsafe extern "C" fn x_file_size(file: *mut ffi::sqlite3_file, size: *mut i64) -> c_int {
    // SAFETY: see `handle`.
    on_file(unsafe { handle(file) }, ffi::SQLITE_IOERR_FSTAT, |_, f, _| {
        // SAFETY: SQLite's out pointer.
        unsafe { *size = f.current.len() as i64 };
        ffi::SQLITE_OK
    })
}

unsafe extern "C" fn x_lock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    // SAFETY: see `handle`.
    on_file(unsafe { handle(file) }, ffi::SQLITE_IOERR_LOCK, |h, f, _| f.lock(h.id, &mut h.lock, level))
}

unsafe extern "C" fn x_unlock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    // SAFETY: see `handle`.
    on_file(unsafe { handle(file) }, ffi::SQLITE_IOERR_UNLOCK, |h, f, _| {
        f.unlock(h.id, &mut h.lock, level);
        ffi::SQLITE_OK
    })
}

unsafe extern "C" fn x_check_reserved_lock(file: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    // SAFETY: see `handle`.
    on_file(unsafe { handle(file) }, ffi::SQLITE_IOERR_CHECKRESERVEDLOCK, |_, f, _| {
        // SAFETY: SQLite's out pointer.
        unsafe { *out = c_int::from(f.writer.is_some()) };
        ffi::SQLITE_OK
    })
}

unsafe extern "C" fn x_file_control(_file: *mut ffi::sqlite3_file, _op: c_int, _arg: *mut c_void) -> c_int {
    ffi::SQLITE_NOTFOUND
}

unsafe extern "C" fn x_sector_size(_file: *mut ffi::sqlite3_file) -> c_int {
    4096
}

/// No guarantees at all (no atomic or safe-append writes, no power-safe
/// overwrite): SQLite then takes every precaution of its own.
unsafe extern "C" fn x_device_characteristics(_file: *mut ffi::sqlite3_file) -> c_int {
    0
}

unsafe extern "C" fn x_shm_map(
    file: *mut ffi::sqlite3_file,
    region: c_int,
    size: c_int,
    extend: c_int,
    out: *mut *mut c_void,
) -> c_int {
    // SAFETY: see `handle`.
    on_file(unsafe { handle(file) }, ffi::SQLITE_IOERR_SHMMAP, |h, f, _| {
        let (Ok(region), Ok(size)) = (usize::try_from(region), usize::try_from(size)) else {
            return ffi::SQLITE_IOERR_SHMMAP;
        };
        let shm = f.shm.get_or_insert_with(Shm::default);
        if h.shm.is_none() {
            h.shm = Some(ShmHold::default());
            shm.attached += 1;
        }
        while extend != 0 && shm.regions.len() <= region {
            shm.regions.push(Region::zeroed(size));
        }
        // A region not there and not to be made: SQLite wants a null pointer.
        let mapped = shm.regions.get(region).map_or(ptr::null_mut(), |r| r.0.cast::<c_void>());
        // SAFETY: SQLite's out pointer.
        unsafe { *out = mapped };
        ffi::SQLITE_OK
    })
}

unsafe extern "C" fn x_shm_lock(file: *mut ffi::sqlite3_file, offset: c_int, n: c_int, flags: c_int) -> c_int {
    // SAFETY: see `handle`.
    on_file(unsafe { handle(file) }, ffi::SQLITE_IOERR_SHMLOCK, |h, f, _| {
        let (Ok(offset), Ok(n)) = (u32::try_from(offset), u32::try_from(n)) else { return ffi::SQLITE_IOERR_SHMLOCK };
        let (Some(shm), Some(hold)) = (f.shm.as_mut(), h.shm.as_mut()) else { return ffi::SQLITE_IOERR_SHMLOCK };
        if n == 0 || offset + n > ffi::SQLITE_SHM_NLOCK as u32 {
            return ffi::SQLITE_IOERR_SHMLOCK;
        }
        shm.lock(h.id, hold, (((1u32 << n) - 1) << offset) as u8, flags)
    })
}

unsafe extern "C" fn x_shm_barrier(_file: *mut ffi::sqlite3_file) {
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
}

unsafe extern "C" fn x_shm_unmap(file: *mut ffi::sqlite3_file, _delete: c_int) -> c_int {
    // SAFETY: see `handle`.
    let h = unsafe { handle(file) };
    guard(|| {
        h.detach_shm(&mut lock());
        ffi::SQLITE_OK
    })
}

// -------------------------------------------------------- SQLite's side: VFS

unsafe extern "C" fn x_delete(_vfs: *mut ffi::sqlite3_vfs, name: *const c_char, _sync_dir: c_int) -> c_int {
    guard(|| {
        // SAFETY: SQLite passes a NUL-terminated path.
        let Ok(path) = unsafe { CStr::from_ptr(name) }.to_str() else { return ffi::SQLITE_IOERR_DELETE };
        // A file not there is deleted already (as the demo VFS answers).
        lock().delete(path);
        ffi::SQLITE_OK
    })
}

unsafe extern "C" fn x_access(
    _vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    flags: c_int,
    out: *mut c_int,
) -> c_int {
    guard(|| {
        // SAFETY: SQLite passes a NUL-terminated path.
        let Ok(path) = unsafe { CStr::from_ptr(name) }.to_str() else { return ffi::SQLITE_IOERR_ACCESS };
        let disk = lock();
        let file = disk.files.get(path).filter(|f| !f.temp);
        // As the unix VFS: an empty file does not "exist" (an empty WAL or journal is none).
        let yes = match flags {
            ffi::SQLITE_ACCESS_EXISTS => file.is_some_and(|f| !f.current.is_empty()),
            _ => file.is_some(),
        };
        // SAFETY: SQLite's out pointer.
        unsafe { *out = c_int::from(yes) };
        ffi::SQLITE_OK
    })
}

/// Names are already absolute (`/seed-17/posd.db`): returned unchanged.
unsafe extern "C" fn x_full_pathname(
    _vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    n_out: c_int,
    out: *mut c_char,
) -> c_int {
    guard(|| {
        // SAFETY: SQLite passes a NUL-terminated name.
        let name = unsafe { CStr::from_ptr(name) }.to_bytes_with_nul();
        if name.len() > n_out.max(0) as usize {
            return ffi::SQLITE_CANTOPEN;
        }
        // SAFETY: `out` has `n_out` writable bytes, and the name fits.
        unsafe { ptr::copy_nonoverlapping(name.as_ptr().cast::<c_char>(), out, name.len()) };
        ffi::SQLITE_OK
    })
}

/// A fixed pattern: nothing in a seed may depend on the OS's randomness.
unsafe extern "C" fn x_randomness(_vfs: *mut ffi::sqlite3_vfs, n: c_int, out: *mut c_char) -> c_int {
    // SAFETY: SQLite passes `n` writable bytes.
    let out = unsafe { slice::from_raw_parts_mut(out.cast::<u8>(), n.max(0) as usize) };
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = (i as u8).wrapping_mul(151).wrapping_add(17);
    }
    n
}

/// Returns at once: time in a seed is simulated, and a busy handler must not stall a thread.
unsafe extern "C" fn x_sleep(_vfs: *mut ffi::sqlite3_vfs, microseconds: c_int) -> c_int {
    microseconds
}

unsafe extern "C" fn x_current_time(_vfs: *mut ffi::sqlite3_vfs, out: *mut f64) -> c_int {
    // SAFETY: SQLite's out pointer.
    unsafe { *out = JULIAN_NOW };
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_current_time_int64(_vfs: *mut ffi::sqlite3_vfs, out: *mut i64) -> c_int {
    // SAFETY: SQLite's out pointer.
    unsafe { *out = JULIAN_NOW_MS };
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_get_last_error(_vfs: *mut ffi::sqlite3_vfs, _n: c_int, _out: *mut c_char) -> c_int {
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use rusqlite::Connection;

    fn open(path: &str) -> Connection {
        register();
        Connection::open(format!("file:{path}?vfs={NAME}")).expect("the VFS opens the database")
    }

    /// posd's writer: WAL, `synchronous` as given, and a table.
    fn open_writer(path: &str, synchronous: &str) -> Connection {
        let conn = open(path);
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
        let schema = "CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)";
        conn.execute_batch(&format!("PRAGMA synchronous={synchronous}; {schema};")).unwrap();
        conn
    }

    fn open_reader(path: &str) -> Connection {
        let conn = open(path);
        conn.execute_batch("PRAGMA query_only=ON").unwrap();
        conn
    }

    fn insert_rows(conn: &Connection, rows: usize, size: usize) {
        for _ in 0..rows {
            conn.execute("INSERT INTO t (v) VALUES (?1)", ["v".repeat(size)]).unwrap();
        }
    }

    /// Commits `rows` rows of `size` bytes, in one transaction.
    fn insert(conn: &Connection, rows: usize, size: usize) {
        conn.execute_batch("BEGIN").unwrap();
        insert_rows(conn, rows, size);
        conn.execute_batch("COMMIT").unwrap();
    }

    fn count(conn: &Connection) -> i64 {
        conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap()
    }

    /// The restart after a crash (every connection dropped): the snapshot
    /// restored, and a new connection on a database that checks out.
    fn restart(prefix: &str, path: &str, snapshot: Snapshot) -> Connection {
        restore(prefix, snapshot);
        let conn = open(path);
        let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
        assert_eq!(check, "ok", "{prefix}");
        conn
    }

    #[test]
    fn connections_see_each_others_commits() {
        assert_eq!(ZNAME.to_str(), Ok(NAME));
        let (prefix, path) = ("/test-two/", "/test-two/posd.db");
        let writer = open_writer(path, "FULL");
        let reader = open_reader(path);
        insert(&writer, 3, 10);
        assert_eq!(count(&reader), 3);
        // A read transaction keeps its snapshot (taken at its first read)
        // while the writer commits.
        reader.execute_batch("BEGIN").unwrap();
        assert_eq!(count(&reader), 3);
        insert(&writer, 2, 10);
        assert_eq!(count(&reader), 3);
        reader.execute_batch("COMMIT").unwrap();
        assert_eq!(count(&reader), 5);
        assert!(reader.execute("INSERT INTO t (v) VALUES ('no')", []).is_err(), "the reader is query_only");
        // A second writing connection takes the WAL's write lock in turn.
        let other = open(path);
        insert(&other, 1, 10);
        assert_eq!((count(&writer), count(&reader)), (6, 6));
        assert!(file_contents(&format!("{path}-wal")).is_some_and(|wal| !wal.is_empty()));
        assert!(stats(prefix).syncs > 0 && stats(prefix).writes > 0);
        drop((other, reader, writer));
        remove(prefix);
        assert_eq!(file_contents(path), None);
        assert_eq!(stats(prefix), DiskStats::default());
    }

    #[test]
    fn a_process_crash_keeps_every_commit_synced_or_not() {
        let (prefix, path) = ("/test-crash/", "/test-crash/posd.db");
        let writer = open_writer(path, "FULL");
        let reader = open_reader(path);
        insert(&writer, 5, 100);
        writer.execute_batch("PRAGMA synchronous=OFF").unwrap();
        insert(&writer, 5, 100);
        assert_eq!(count(&reader), 10);
        let snapshot = crash(prefix);
        assert_eq!(snapshot.paths().collect::<Vec<_>>(), [path.to_owned(), format!("{path}-wal")]);
        // A clean close checkpoints and deletes the WAL: the restore undoes it.
        drop((reader, writer));
        let conn = restart(prefix, path, snapshot);
        assert_eq!(count(&conn), 10);
        drop(conn);
        remove(prefix);
    }

    #[test]
    fn a_power_loss_drops_the_commits_never_synced() {
        let (prefix, path) = ("/test-unsynced/", "/test-unsynced/posd.db");
        let writer = open_writer(path, "FULL");
        insert(&writer, 4, 100);
        writer.execute_batch("PRAGMA synchronous=OFF").unwrap();
        for _ in 0..3 {
            insert(&writer, 2, 100);
        }
        assert_eq!(count(&writer), 10);
        let snapshot = power_loss(prefix, &mut ChaCha8Rng::seed_from_u64(1), Loss::All);
        drop(writer);
        let conn = restart(prefix, path, snapshot);
        assert_eq!(count(&conn), 4);
        drop(conn);
        remove(prefix);
    }

    #[test]
    fn a_power_loss_keeps_every_synced_commit() {
        for mode in [Loss::All, Loss::Subset, Loss::TornLast] {
            let mut lost_something = 0;
            for seed in 0..50 {
                let prefix = format!("/test-power-{mode:?}-{seed}/");
                let path = format!("{prefix}posd.db");
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                let writer = open_writer(&path, "FULL");
                // A small cache: a big transaction spills pages into the WAL before its commit.
                writer.execute_batch("PRAGMA cache_size=8").unwrap();
                let reader = open_reader(&path);
                let mut committed = 0;
                for _ in 0..rng.gen_range(1..6) {
                    let rows = rng.gen_range(1..20);
                    insert(&writer, rows, rng.gen_range(10..3000));
                    committed += rows as i64;
                    if rng.gen_bool(0.3) {
                        writer.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())).unwrap();
                    }
                }
                assert_eq!(count(&reader), committed);
                // Unsynced at the power loss: the spilled pages of a transaction not committed.
                writer.execute_batch("BEGIN").unwrap();
                insert_rows(&writer, 100, 1000);
                let snapshot = power_loss(&prefix, &mut rng.clone(), mode);
                assert_eq!(snapshot, power_loss(&prefix, &mut rng, mode), "the same draws, the same disk");
                lost_something += usize::from(snapshot != crash(&prefix));
                drop((reader, writer));
                let conn = restart(&prefix, &path, snapshot);
                assert_eq!(count(&conn), committed, "{prefix}");
                drop(conn);
                remove(&prefix);
            }
            assert!(lost_something > 0, "{mode:?}: no power loss lost anything");
        }
    }

    #[test]
    fn disks_do_not_see_each_others_files() {
        let a = open_writer("/test-disk-a/posd.db", "FULL");
        let b = open_writer("/test-disk-b/posd.db", "FULL");
        insert(&a, 3, 10);
        insert(&b, 1, 10);
        assert_eq!((count(&a), count(&b)), (3, 1));
        assert!(crash("/test-disk-a/").paths().all(|path| path.starts_with("/test-disk-a/")));
        drop(a);
        remove("/test-disk-a/");
        assert_eq!(file_contents("/test-disk-a/posd.db"), None);
        assert!(file_contents("/test-disk-b/posd.db").is_some());
        assert_eq!(count(&b), 1);
        drop(b);
        remove("/test-disk-b/");
    }

    #[test]
    #[should_panic(expected = "still open")]
    fn restoring_under_an_open_connection_panics() {
        let conn = open_writer("/test-open/posd.db", "FULL");
        restore("/test-open/", crash("/test-open/"));
        drop(conn);
    }
}
