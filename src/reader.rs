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

mod verify;

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
    let mut bytes = Vec::with_capacity(len as usize);
    file.read_to_end(&mut bytes).ctx("read", &path)?;
    manifest::decode(&path, &bytes)
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

/// Maps one tensor file (then closes it) and checks its size and header against the
/// manifest.
fn map_tensor_file(
    dir_fd: &File,
    dir: &Path,
    rec: &manifest::FileRecord,
) -> Result<(MappedFile, format::ParsedHeader)> {
    let path = dir.join(&rec.name);
    let file = open_regular(dir_fd, dir, &rec.name)?;
    check_size(&path, file.metadata().ctx("stat", &path)?.len(), rec)?;
    let stored = parse_hex(&path, "header", &rec.xxh3)?;
    map_safetensors(&rec.name, path, file, Some(stored))
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
    let id = FileId::of(&file, &path)?;
    let len = id.len;
    // Check the header length before mapping: a hostile prefix is refused without
    // mapping (let alone reading) the gigabytes it claims.
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
    let header = format::parse(&path, &map)?;
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
    Ok((mapped, header))
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
    let manifest = read_manifest(dir_fd, dir)?;
    let mut files = Vec::new();
    let mut file_index = HashMap::new();
    let mut headers = Vec::new();
    for rec in manifest
        .files
        .iter()
        .filter(|f| f.role == FileRole::Tensors)
    {
        let (mapped, header) = map_tensor_file(dir_fd, dir, rec)?;
        file_index.insert(rec.name.as_str(), files.len());
        files.push(mapped);
        headers.push(header);
    }
    let paths: Vec<&Path> = files.iter().map(|f| f.path.as_path()).collect();
    let tensors = index_tensors(&manifest, headers, &paths, &file_index)?;
    Ok((manifest, files, tensors))
}

/// Checks that the manifest and the file headers describe exactly the same tensors and
/// builds the index. `paths[i]` names file `i` in errors; `file_index` maps a manifest
/// file name to its index.
///
/// ckptio writes each header in the order the manifest lists the file's tensors, so
/// each record is first looked for at its file's cursor (a comparison, no hashing);
/// a header in any other order falls back to a lookup by name. Either way every
/// record must match a distinct header entry and every entry must be matched.
pub(crate) fn index_tensors(
    manifest: &Manifest,
    headers: Vec<format::ParsedHeader>,
    paths: &[&Path],
    file_index: &HashMap<&str, usize>,
) -> Result<Vec<TensorInfo>> {
    let mut slots: Vec<Vec<Option<format::TensorLayout>>> = headers
        .into_iter()
        .map(|h| h.tensors.into_iter().map(Some).collect())
        .collect();
    let mut cursor = vec![0usize; slots.len()];
    // Built for a file only once its header is found out of order.
    let mut by_name: Vec<Option<HashMap<String, usize>>> = vec![None; slots.len()];
    let mut tensors = Vec::with_capacity(manifest.tensors.len());
    for rec in &manifest.tensors {
        let fi = file_index[rec.file.as_str()];
        let path = paths[fi];
        let file = &mut slots[fi];
        let at = cursor[fi];
        let in_order = file
            .get(at)
            .and_then(Option::as_ref)
            .is_some_and(|t| t.name == rec.name);
        let found = if in_order {
            cursor[fi] += 1;
            Some(at)
        } else {
            let names = by_name[fi].get_or_insert_with(|| {
                let entries = file.iter().enumerate();
                entries
                    .filter_map(|(i, t)| t.as_ref().map(|t| (t.name.clone(), i)))
                    .collect()
            });
            names.remove(rec.name.as_str())
        };
        // Both checksums passed, so a disagreement is no accident of storage: the files
        // were made inconsistent on purpose or by a broken writer. Hence format errors.
        let layout = found.and_then(|i| file[i].take()).ok_or_else(|| {
            Error::format(
                path,
                format!(
                    "tensor {:?}: listed in the manifest but missing from the file header",
                    rec.name
                ),
            )
        })?;
        if let Some(names) = by_name[fi].as_mut() {
            names.remove(rec.name.as_str()); // matched in order after a fallback
        }
        let dtype = Dtype::parse(&rec.dtype);
        if dtype != Some(layout.dtype)
            || rec.shape != layout.shape
            || rec.byte_range != [layout.begin, layout.end]
        {
            return Err(Error::format(
                path,
                format!(
                    "tensor {:?}: manifest entry disagrees with the file header",
                    rec.name
                ),
            ));
        }
        tensors.push(TensorInfo {
            group: rec.group.clone(),
            xxh3: parse_hex(path, &rec.name, &rec.xxh3)?,
            name: layout.name,
            dtype: layout.dtype,
            shape: layout.shape,
            file: fi,
            begin: layout.begin,
            end: layout.end,
        });
    }
    for (fi, rest) in slots.iter().enumerate() {
        if let Some(t) = rest.iter().flatten().next() {
            return Err(Error::format(
                paths[fi],
                format!(
                    "tensor {:?}: in the file header but not in the manifest",
                    t.name
                ),
            ));
        }
    }
    Ok(tensors)
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
