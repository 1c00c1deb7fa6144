//! Opening a checkpoint: read and check the manifest, map every tensor file privately
//! (copy-on-write), validate each header against the manifest before any tensor byte
//! is touched. Verification hashes tensors over a second, read-only mapping.
//!
//! An open checkpoint holds one descriptor (its directory) however many files it has:
//! each file is mapped, then closed. `verify` and copy loads reopen a file by name in
//! the opened directory and check that it is still the same file.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use memmap2::{Mmap, MmapMut, MmapOptions};

use crate::checksum;
use crate::dtype::Dtype;
use crate::error::{Error, IoContext, Result};
use crate::format;
use crate::limits::{MAX_MANIFEST_LEN, MAX_SIDE_FILE_LEN};
use crate::manifest::{self, FileRole, Kind, Manifest, MANIFEST_NAME};

mod index;
mod verify;
mod written;

pub(crate) use index::index_tensors;

/// Which file was opened: a later reopen by name must find the same one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileId {
    dev: u64,
    ino: u64,
    pub(crate) len: u64,
}

impl FileId {
    fn of(file: &File, path: &Path) -> Result<FileId> {
        use std::os::unix::fs::MetadataExt;
        let m = file.metadata().ctx("stat", path)?;
        Ok(FileId {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
        })
    }
}

/// A tensor file mapped `MAP_PRIVATE`: writes through the mapping stay in this process.
pub struct MappedFile {
    pub name: String,
    pub path: PathBuf,
    id: FileId,
    map: MmapMut,
    ptr: NonNull<u8>,
    /// A read-only shared mapping of the same file: the file's own bytes, never the
    /// caller's writes to `map`, for `verify` and copy loads. Like `map`, it stays
    /// valid once the file is unlinked (as a replaced checkpoint's files are), and it
    /// holds no descriptor.
    pristine: Mmap,
}

// SAFETY: `ptr` points into `map`, which lives as long as `self`; the mapping is
// private to the process and only ever handed out as raw memory to the caller.
unsafe impl Send for MappedFile {}
unsafe impl Sync for MappedFile {}

impl MappedFile {
    /// Start of the mapping. Writable; writes never reach the file.
    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// The file's bytes as they are on disk (a read-only mapping).
    pub(crate) fn pristine(&self) -> &[u8] {
        &self.pristine
    }

    pub(crate) fn id(&self) -> FileId {
        self.id
    }

    /// Drops the read-only mapping's pages from this process (they stay in the page
    /// cache), so a verify does not leave the whole checkpoint counted in its RSS.
    pub(crate) fn release_pristine(&self) {
        // SAFETY: a read-only shared file mapping; a later access reads the file again.
        let _ = unsafe {
            self.pristine
                .unchecked_advise(memmap2::UncheckedAdvice::DontNeed)
        };
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// One tensor of an open checkpoint.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub group: String,
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    /// Index into `Checkpoint::files`.
    pub file: usize,
    pub begin: u64,
    pub end: u64,
    pub xxh3: u64,
}

/// An open, structurally validated checkpoint.
pub struct Checkpoint {
    pub dir: PathBuf,
    /// The manifest without its tensor records: `open` moves them into `tensors`
    /// ([`Checkpoint::manifest_with_tensors`] puts them back).
    pub manifest: Manifest,
    pub files: Vec<MappedFile>,
    /// In save order.
    pub tensors: Vec<TensorInfo>,
    /// The directory as opened: every file was opened relative to it, and `verify`
    /// lists it, so a checkpoint swapped in under the same name later never mixes in.
    dir_fd: File,
    /// The side files (role `index`), as found at open (None: could not be opened;
    /// `verify` reports why).
    side_files: Vec<Option<SideFile>>,
}

/// A side file found at open: which file, and its bytes (None: empty, or over the cap
/// and refused by `verify`).
struct SideFile {
    id: FileId,
    map: Option<Mmap>,
}

/// Bytes hashed between two progress reports of `verify`.
const PROGRESS_CHUNK: usize = 16 << 20;

/// How often `open` starts over when the name was swapped to another checkpoint while
/// it was reading (each retry needs a new swap to fail again).
const OPEN_ATTEMPTS: usize = 8;

pub(crate) fn open_dir(dir: &Path) -> Result<File> {
    match fs::metadata(dir) {
        Err(_) => {
            return Err(Error::NotFound {
                what: "no checkpoint at",
                path: dir.to_path_buf(),
            })
        }
        Ok(m) if !m.is_dir() => {
            return Err(Error::format(dir, "is a file, not a checkpoint directory"));
        }
        Ok(_) => {}
    }
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ENOENT) => Error::NotFound {
                what: "no checkpoint at",
                path: dir.to_path_buf(),
            },
            _ => Error::io("open", dir, e),
        })
}

/// Opens `name` inside the opened directory. O_NOFOLLOW: a symlink inside a checkpoint
/// could point anywhere. O_NONBLOCK: opening a FIFO planted under a listed name would
/// otherwise wait for a writer forever (it changes nothing for regular files).
pub(crate) fn openat(dir_fd: &File, name: &str) -> std::io::Result<File> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let c_name = std::ffi::CString::new(name)
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK;
    // SAFETY: a valid directory descriptor and a NUL-terminated name; on success the
    // new descriptor is owned by the returned File alone.
    let fd = unsafe { libc::openat(dir_fd.as_raw_fd(), c_name.as_ptr(), flags) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Why a listed file could not be opened.
fn open_error(path: &Path, e: std::io::Error) -> Error {
    match e.raw_os_error() {
        Some(libc::ELOOP) => Error::format(
            path,
            "is a symbolic link; checkpoints contain only regular files",
        ),
        Some(libc::ENOENT) => Error::corrupt(path, None, "file is missing"),
        // A socket cannot be opened at all (ENXIO); name it for what it is.
        _ if fs::symlink_metadata(path).is_ok_and(|m| !m.is_file()) => {
            Error::format(path, "is not a regular file")
        }
        _ => Error::io("open", path, e),
    }
}

/// Opens a file the manifest lists; it must be a regular file.
pub(crate) fn open_regular(dir_fd: &File, dir: &Path, name: &str) -> Result<File> {
    let path = dir.join(name);
    let file = openat(dir_fd, name).map_err(|e| open_error(&path, e))?;
    let meta = file.metadata().ctx("stat", &path)?;
    if !meta.is_file() {
        return Err(Error::format(&path, "is not a regular file"));
    }
    Ok(file)
}

pub(crate) fn read_manifest(dir_fd: &File, dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST_NAME);
    if let Err(e) = openat(dir_fd, MANIFEST_NAME) {
        if e.raw_os_error() == Some(libc::ENOENT) {
            return Err(Error::NotFound {
                what: "not a ckptio checkpoint (no ckptio.json manifest) at",
                path: dir.to_path_buf(),
            });
        }
    }
    let mut file = open_regular(dir_fd, dir, MANIFEST_NAME)?;
    let len = file.metadata().ctx("stat", &path)?.len();
    if len > MAX_MANIFEST_LEN {
        return Err(Error::format(
            &path,
            format!("manifest is {len} bytes, over the {MAX_MANIFEST_LEN}-byte cap"),
        ));
    }
    MANIFEST_BUFFER.with_borrow_mut(|bytes| {
        bytes.clear();
        bytes.reserve(len as usize);
        file.read_to_end(bytes).ctx("read", &path)?;
        let m = manifest::decode(&path, bytes);
        if bytes.capacity() > KEPT_MANIFEST_BUFFER {
            *bytes = Vec::new();
        }
        m
    })
}

/// Manifests up to this size are read into a buffer each thread keeps: a fresh one
/// costs a page fault per 4 KiB on every open, as much as parsing a third of it.
const KEPT_MANIFEST_BUFFER: usize = 4 << 20;

thread_local! {
    static MANIFEST_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A file of the checkpoint must have the size the manifest gives it.
pub(crate) fn check_size(path: &Path, len: u64, rec: &manifest::FileRecord) -> Result<()> {
    if len != rec.size {
        return Err(Error::corrupt(
            path,
            None,
            format!("file is {len} bytes, the manifest says {}", rec.size),
        ));
    }
    Ok(())
}

pub(crate) fn parse_hex(file: &Path, what: &str, s: &str) -> Result<u64> {
    if s.len() != 16 {
        return Err(Error::format(
            file,
            format!("{what}: checksum {s:?} is not 16 hex digits"),
        ));
    }
    u64::from_str_radix(s, 16)
        .map_err(|_| Error::format(file, format!("{what}: checksum {s:?} is not hex")))
}

/// Maps one tensor file (then closes it) and checks its size and header checksum
/// against the manifest. Returns the mapping and the header's length.
fn map_tensor_file(
    dir_fd: &File,
    dir: &Path,
    rec: &manifest::FileRecord,
) -> Result<(MappedFile, u64)> {
    let path = dir.join(&rec.name);
    let file = open_regular(dir_fd, dir, &rec.name)?;
    check_size(&path, file.metadata().ctx("stat", &path)?.len(), rec)?;
    let stored = parse_hex(&path, "header", &rec.xxh3)?;
    map_checked(&rec.name, path, file, Some(stored))
}

/// Maps an opened safetensors file and validates its header: the length prefix before
/// mapping, then the header checksum (when there is one), then every structural rule
/// (`format::parse`). The file is closed on return; its mappings stay.
pub(crate) fn map_safetensors(
    name: &str,
    path: PathBuf,
    file: File,
    header_xxh3: Option<u64>,
) -> Result<(MappedFile, format::ParsedHeader)> {
    let (mapped, _) = map_checked(name, path, file, header_xxh3)?;
    let header = format::parse(&mapped.path, &mapped.map)?;
    Ok((mapped, header))
}

/// Maps an opened safetensors file after checking its length prefix (a hostile prefix
/// is refused without mapping, let alone reading, the gigabytes it claims), then
/// checks the header checksum when there is one. Returns the header's length.
fn map_checked(
    name: &str,
    path: PathBuf,
    file: File,
    header_xxh3: Option<u64>,
) -> Result<(MappedFile, u64)> {
    let id = FileId::of(&file, &path)?;
    let len = id.len;
    let mut prefix = [0u8; 8];
    let got = if len >= 8 {
        file.read_exact_at(&mut prefix, 0).ctx("read", &path)?;
        8
    } else {
        0
    };
    let hlen = format::header_len(&path, &prefix[..got], len)?;
    // SAFETY: the file is a regular file of the checked length, never modified in
    // place by ckptio; the private mapping keeps writes local to this process.
    let mut map = unsafe { MmapOptions::new().map_copy(&file) }.ctx("mmap", &path)?;
    let ptr = NonNull::new(map.as_mut_ptr()).expect("mmap is non-null");
    if header_xxh3.is_some_and(|stored| checksum::hash(&map[..hlen as usize]) != stored) {
        return Err(Error::corrupt(&path, None, "header checksum mismatch"));
    }
    // SAFETY: as above; read-only.
    let pristine = unsafe { Mmap::map(&file) }.ctx("mmap", &path)?;
    let mapped = MappedFile {
        name: name.to_owned(),
        path,
        id,
        map,
        ptr,
        pristine,
    };
    Ok((mapped, hlen))
}

/// Opens the checkpoint at `dir`. Reads no tensor data.
///
/// Every file is opened relative to the directory opened first, so the result is one
/// checkpoint even while another process replaces the name. If a replacement lands
/// mid-open (the old directory's files vanish as its saver removes it), the open starts
/// over on the new checkpoint instead of reporting damage that is not there.
pub fn open(dir: &Path) -> Result<Checkpoint> {
    let mut attempt = 0;
    loop {
        let dir_fd = open_dir(dir)?;
        match open_in(dir, dir_fd) {
            Ok(ckpt) => return Ok(ckpt),
            Err((e, dir_fd)) => {
                attempt += 1;
                if attempt >= OPEN_ATTEMPTS || !replaced(dir, &dir_fd) {
                    return Err(e);
                }
            }
        }
    }
}

/// Does the name now lead to another directory than the one opened?
fn replaced(dir: &Path, dir_fd: &File) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::metadata(dir), dir_fd.metadata()) {
        (Ok(now), Ok(opened)) => (now.dev(), now.ino()) != (opened.dev(), opened.ino()),
        _ => true,
    }
}

fn open_in(dir: &Path, dir_fd: File) -> std::result::Result<Checkpoint, (Error, File)> {
    match open_checkpoint(dir, &dir_fd) {
        Ok((manifest, files, tensors)) => {
            let side_files: Vec<Option<SideFile>> = manifest
                .files
                .iter()
                .filter(|r| r.role.is_whole_file())
                .map(|r| open_side_file(&dir_fd, dir, &r.name).ok())
                .collect();
            if side_files.iter().any(Option::is_none) && replaced(dir, &dir_fd) {
                let e = Error::corrupt(dir, None, "replaced by another save while opening");
                return Err((e, dir_fd));
            }
            Ok(Checkpoint {
                dir: dir.to_path_buf(),
                manifest,
                files,
                tensors,
                dir_fd,
                side_files,
            })
        }
        Err(e) => Err((e, dir_fd)),
    }
}

/// Maps a side file for `verify` (then closes it); an empty or oversized one is not
/// mapped (`verify` refuses the latter).
fn open_side_file(dir_fd: &File, dir: &Path, name: &str) -> Result<SideFile> {
    let path = dir.join(name);
    let file = open_regular(dir_fd, dir, name)?;
    let id = FileId::of(&file, &path)?;
    let map = if id.len == 0 || id.len > MAX_SIDE_FILE_LEN {
        None
    } else {
        // SAFETY: read-only mapping of a regular file; only hashed by `verify`.
        Some(unsafe { Mmap::map(&file) }.ctx("mmap", &path)?)
    };
    Ok(SideFile { id, map })
}

type Opened = (Manifest, Vec<MappedFile>, Vec<TensorInfo>);

fn open_checkpoint(dir: &Path, dir_fd: &File) -> Result<Opened> {
    let mut manifest = read_manifest(dir_fd, dir)?;
    let mut files = Vec::new();
    let mut file_index = HashMap::new();
    let mut header_lens = Vec::new();
    for rec in manifest
        .files
        .iter()
        .filter(|f| f.role == FileRole::Tensors)
    {
        let (mapped, hlen) = map_tensor_file(dir_fd, dir, rec)?;
        file_index.insert(rec.name.as_str(), files.len());
        files.push(mapped);
        header_lens.push(hlen as usize);
    }
    // No views exist yet: the private mappings hold the files' own bytes.
    let heads: Vec<&[u8]> = files
        .iter()
        .zip(&header_lens)
        .map(|(f, &hlen)| &f.map[..hlen])
        .collect();
    let file_lens: Vec<u64> = files.iter().map(|f| f.id.len).collect();
    let tensors = match written::check(&manifest, &heads, &file_lens, &file_index) {
        Some(found) => written::into_index(std::mem::take(&mut manifest.tensors), found),
        None => {
            let paths: Vec<&Path> = files.iter().map(|f| f.path.as_path()).collect();
            let headers = files
                .iter()
                .map(|f| format::parse(&f.path, &f.map))
                .collect::<Result<Vec<_>>>()?;
            let tensors = index_tensors(&manifest, headers, &paths, &file_index)?;
            manifest.tensors = Vec::new();
            tensors
        }
    };
    Ok((manifest, files, tensors))
}

impl Checkpoint {
    /// A checkpoint read without a ckptio manifest (see `foreign.rs`): `manifest` is
    /// made up from the headers, with checksum `"none"` and no side files.
    pub(crate) fn without_checksums(
        dir: PathBuf,
        dir_fd: File,
        manifest: Manifest,
        files: Vec<MappedFile>,
        tensors: Vec<TensorInfo>,
    ) -> Checkpoint {
        Checkpoint {
            dir,
            manifest,
            files,
            tensors,
            dir_fd,
            side_files: Vec::new(),
        }
    }

    /// The manifest as it was written, tensor records included (for a copy).
    pub fn manifest_with_tensors(&self) -> Manifest {
        let mut m = self.manifest.clone();
        m.tensors = self
            .tensors
            .iter()
            .map(|t| manifest::TensorRecord {
                group: t.group.clone(),
                name: t.name.clone(),
                file: self.files[t.file].name.clone(),
                dtype: t.dtype.name().to_owned(),
                shape: t.shape.clone(),
                byte_range: [t.begin, t.end],
                xxh3: checksum::to_hex(t.xxh3),
            })
            .collect();
        m
    }

    pub fn kind(&self) -> Kind {
        self.manifest.kind
    }

    /// False for a directory read without a ckptio manifest: nothing to verify against.
    pub fn has_checksums(&self) -> bool {
        self.manifest.checksum == checksum::ALGORITHM
    }

    pub(crate) fn require_checksums(&self) -> Result<()> {
        if self.has_checksums() {
            return Ok(());
        }
        Err(Error::NotFound {
            what: "no checksums to check: not a ckptio checkpoint (no ckptio.json manifest) at",
            path: self.dir.clone(),
        })
    }

    /// Reopens a file of the checkpoint by name, in the directory that was opened:
    /// Some if it is the file that was opened (same device, inode and size), None if
    /// it has been removed since (as a replaced checkpoint's files are; the mappings
    /// still hold its bytes). Any other file under the name is damage.
    pub(crate) fn reopen(&self, name: &str, id: FileId) -> Result<Option<File>> {
        let path = self.dir.join(name);
        let file = match openat(&self.dir_fd, name) {
            Ok(file) => file,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(open_error(&path, e)),
        };
        let now = FileId::of(&file, &path)?;
        if (now.dev, now.ino) != (id.dev, id.ino) {
            return Err(Error::corrupt(
                &path,
                None,
                "replaced by another file since the checkpoint was opened",
            ));
        }
        if now.len != id.len {
            return Err(Error::corrupt(
                &path,
                None,
                "file changed size since it was opened",
            ));
        }
        Ok(Some(file))
    }
}
