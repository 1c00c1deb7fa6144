"""Checkpoint archives (a downloaded Tinker checkpoint is a tar of
``adapter_model.safetensors``, ``adapter_config.json`` and ``checkpoint_complete``),
unpacked as hostile input.

Every member is checked before a byte is written: regular files and directories only
(no symlinks, hard links, devices or FIFOs), relative names without ``..``, at most one
leading directory, plain file names, no name twice, bounded count and total size. Files
are then written one by one with ``O_EXCL`` into a fresh directory, each with no more
than its declared size. Nothing is ever written anywhere else.
"""

from __future__ import annotations

import os
import re
import shutil
import tarfile
from pathlib import Path, PurePosixPath
from typing import IO

from ..errors import FormatError

MAX_ARCHIVE_BYTES = 64 << 30  # what the files of one archive may add up to, by default
MAX_MEMBERS = 10_000
_PLAIN = re.compile(r"[A-Za-z0-9._-]{1,255}")
_CHUNK = 1 << 20
_TYPES = {
    tarfile.SYMTYPE: "a symbolic link",
    tarfile.LNKTYPE: "a hard link",
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a FIFO",
}


ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def is_archive(path: Path) -> bool:
    """A tar file (any compression tarfile reads), by its name or, for a name that is
    no weight file's, by its contents."""
    if not path.is_file() or path.is_symlink():
        return False
    if path.name.endswith(ARCHIVE_SUFFIXES):
        return True
    return not path.name.endswith(_WEIGHT_SUFFIXES) and tarfile.is_tarfile(path)


def _refuse(archive: Path, why: str) -> FormatError:
    return FormatError(f"{archive}: archive refused: {why}", file=archive)


def _member_parts(archive: Path, m: tarfile.TarInfo) -> tuple[str, ...]:
    name = m.name
    if not name or "\0" in name or "\\" in name:
        raise _refuse(archive, f"member {name!r} has an invalid name")
    if name.startswith("/") or PurePosixPath(name).is_absolute():
        raise _refuse(archive, f"member {name!r} has an absolute name")
    parts = tuple(p for p in PurePosixPath(name).parts if p != ".")
    if ".." in parts:
        raise _refuse(archive, f"member {name!r} leaves the archive (..)")
    if not parts:
        raise _refuse(archive, f"member {name!r} has an empty name")
    return parts


def _checked_members(
    archive: Path, tar: tarfile.TarFile, max_bytes: int
) -> list[tuple[str, tarfile.TarInfo]]:
    """(plain file name, member) for every file, or an error before anything is written."""
    files: list[tuple[tuple[str, ...], tarfile.TarInfo]] = []
    total = 0
    for count, m in enumerate(tar, start=1):
        if count > MAX_MEMBERS:
            raise _refuse(archive, f"more than {MAX_MEMBERS} members")
        parts = _member_parts(archive, m)
        if m.isdir():
            continue
        if not m.isreg():
            raise _refuse(archive, f"member {m.name!r} is {_TYPES.get(m.type, 'not a regular file')}")
        total += m.size
        if total > max_bytes:
            raise _refuse(archive, f"its files hold more than max_archive_bytes={max_bytes} bytes")
        files.append((parts, m))
    # One leading directory shared by every file (tar czf name.tar.gz name/) is dropped.
    tops = {parts[0] for parts, _ in files}
    strip = 1 if len(tops) == 1 and all(len(parts) > 1 for parts, _ in files) else 0
    out: list[tuple[str, tarfile.TarInfo]] = []
    seen: set[str] = set()
    for parts, m in files:
        rest = parts[strip:]
        if len(rest) != 1 or not _PLAIN.fullmatch(rest[0]) or rest[0].startswith("."):
            raise _refuse(archive, f"member {m.name!r} is not a plain file at the top of the archive")
        if rest[0] in seen:
            raise _refuse(archive, f"member {m.name!r} appears twice")
        seen.add(rest[0])
        out.append((rest[0], m))
    if not out:
        raise _refuse(archive, "it holds no files")
    return out


def extract(archive: Path, into: Path, *, max_bytes: int = MAX_ARCHIVE_BYTES) -> None:
    """Unpacks ``archive`` into the new, empty directory ``into`` (created here; the
    caller removes it)."""
    try:
        tar = tarfile.open(archive, "r:*")  # noqa: SIM115 - closed by the with below
    except (tarfile.TarError, OSError) as e:
        raise _refuse(archive, f"not a readable tar archive ({e})") from None
    with tar:
        try:
            members = _checked_members(archive, tar, max_bytes)
        except tarfile.TarError as e:
            raise _refuse(archive, f"damaged archive ({e})") from None
        os.mkdir(into, 0o700)
        for name, m in members:
            source = tar.extractfile(m)
            if source is None:
                raise _refuse(archive, f"member {m.name!r} has no data")
            fd = os.open(
                into / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
            )
            with os.fdopen(fd, "wb") as out, source:
                copied = _copy_at_most(source, out, m.size)
            if copied != m.size:
                raise _refuse(archive, f"member {m.name!r} is truncated")


def _copy_at_most(source: IO[bytes], out: IO[bytes], size: int) -> int:
    copied = 0
    while copied < size:
        chunk = source.read(min(_CHUNK, size - copied))
        if not chunk:
            break
        out.write(chunk)
        copied += len(chunk)
    return copied


def remove(path: Path) -> None:
    """Removes an unpacked archive directory (ours: created by ``extract``)."""
    shutil.rmtree(path, ignore_errors=True)
