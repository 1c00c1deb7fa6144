"""``ckptio.Run``: named checkpoints in a training run, as in Tinker: save, list,
delete, TTL, retention, resume.

A run is a directory: ``weights/NAME/`` holds ``state`` checkpoints (weights and
optimizer state), ``sampler_weights/NAME/`` weights-only ones. Each is an ordinary
ckptio checkpoint; its record (step, creation and expiry times, loop state, metadata)
is read from its own manifest, so there is no side database that could drift.

Retention (``keep_last``, ``keep_every``) and expiry run after each save has
committed, never after a failed or refused one. The rules are in docs/RUNS.md.
"""

from __future__ import annotations

import builtins  # ``list`` below is a method of Run
import json
import os
import warnings
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

from . import _retention as rules
from . import _run_store as store
from ._call_order import CallOrder
from ._location import Location, is_url
from ._plan import PathLike, SavePlan, save_options
from .api import CleanupResult
from .async_save import _submit
from .checkpoint import Checkpoint
from .errors import CheckpointNotFoundError, FormatError

__all__ = ["CheckpointRecord", "ResumePoint", "Run"]

Ttl = float | int | timedelta | None


class _RunDefault:
    def __repr__(self) -> str:
        return "<run default>"


RUN_DEFAULT: Any = _RunDefault()  # ``ttl=`` not given: the run's own ``ttl``


@dataclass(frozen=True)
class CheckpointRecord:
    """One checkpoint of a run, as its manifest describes it. ``path`` is what
    ``ckptio.load_state`` takes, and the record is itself path-like.

    ``created`` and ``expires_at`` are timezone-aware UTC datetimes (``expires_at`` is
    None when it never expires). ``loop_state`` is where to continue (``state``
    checkpoints). ``checkpoint_id`` tells this save from a later one under the same name.

    Example:
        >>> import numpy as np, ckptio, tempfile
        >>> run = ckptio.Run(tempfile.mkdtemp())
        >>> rec = run.save_state("step-3", {"w": np.ones(2)}, {"m": np.zeros(2)}, step=3,
        ...                      loop_state={"next_batch": 3})
        >>> rec.name, rec.kind, rec.step, rec.loop_state, rec.expires_at
        ('step-3', 'state', 3, {'next_batch': 3}, None)
        >>> ckptio.load_state(rec)["w"]
        array([1., 1.])
    """

    name: str
    kind: str
    path: Path
    step: int | None
    size_bytes: int
    created: datetime
    expires_at: datetime | None
    loop_state: Any = field(hash=False)
    metadata: Any = field(hash=False)
    checkpoint_id: str = ""

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def to_json(self) -> dict[str, Any]:
        """The fields as JSON values (ISO 8601 times, the path as a string).

        Example:
            >>> _example().to_json()["created"]
            '2026-01-01T00:00:00+00:00'
        """
        return {
            "name": self.name,
            "kind": self.kind,
            "path": os.fspath(self.path),
            "step": self.step,
            "size_bytes": self.size_bytes,
            "created": self.created.isoformat(),
            "expires_at": None if self.expires_at is None else self.expires_at.isoformat(),
            "loop_state": self.loop_state,
            "metadata": self.metadata,
            "checkpoint_id": self.checkpoint_id,
        }


class ResumePoint(NamedTuple):
    """What ``Run.resume()`` returns: the newest state checkpoint, loaded.

    Example:
        >>> ResumePoint(_example(), {}, {}, 3, {"next_batch": 3}, None).loop_state
        {'next_batch': 3}
    """

    record: CheckpointRecord
    weights: dict[str, Any]
    optimizer_state: Any
    step: int | None
    loop_state: Any
    metadata: Any


def _record(name: str, kind: str, path: Path, s: store.Summary) -> CheckpointRecord:
    """The record of a checkpoint from its manifest summary; FormatError if the
    manifest does not describe a checkpoint of this run."""
    try:
        if s.kind != kind:
            raise ValueError(f"a {s.kind!r} checkpoint among the {kind!r} checkpoints")
        user = json.loads(s.user_json)
        if not isinstance(user, dict):
            raise ValueError("the user section is not an object")
        entry = user.get("run")
        if entry is None:  # saved outside a run: dated by its manifest
            created, expires_at, loop_state = datetime.fromtimestamp(s.modified, UTC), None, None
        else:
            created, expires_at, loop_state = rules.read_run_entry(entry)
        step = user.get("step")
        if step is not None and type(step) is not int:
            raise ValueError(f"step {step!r} is not an int")
    except (ValueError, TypeError, KeyError) as e:
        raise FormatError(f"{path}: invalid run record in ckptio.json: {e}", file=path) from None
    return CheckpointRecord(
        name, kind, path, step, s.size_bytes, created, expires_at, loop_state, user.get("metadata"),
        s.checkpoint_id,
    )  # fmt: skip


def _order(r: CheckpointRecord) -> tuple[Any, ...]:
    return (r.created, -1 if r.step is None else r.step, r.name)


class Run:
    """A training run's checkpoints, in the directory ``root`` (created by the first
    save). ``keep_last`` / ``keep_every`` set retention, applied to each kind after
    each save; ``ttl`` is the default time to live of new checkpoints (seconds or a
    ``timedelta``; None: forever). ``clock`` returns the current time as an aware
    datetime (tests pass a fake one).

    Example:
        >>> import numpy as np, ckptio, tempfile
        >>> run = ckptio.Run(tempfile.mkdtemp(), keep_last=2)
        >>> for step in (100, 200, 300):
        ...     _ = run.save_state(f"step-{step}", {"w": np.full(2, step)}, {"lr": 0.1}, step=step,
        ...                        loop_state={"next_step": step})
        >>> [r.name for r in run.list()]
        ['step-200', 'step-300']
        >>> point = run.resume()
        >>> point.step, point.loop_state, point.weights["w"]
        (300, {'next_step': 300}, array([300, 300]))
    """

    def __init__(
        self,
        root: PathLike,
        *,
        keep_last: int | None = None,
        keep_every: int | None = None,
        ttl: Ttl = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if is_url(root):
            raise ValueError(
                f"{root}: a Run lives in a local directory for now; save single checkpoints to "
                "s3:// URLs, or copy a run's checkpoints there with ckptio.copy"
            )
        self.root = Path(root)
        self.keep_last = rules.check_keep(keep_last, "keep_last")
        self.keep_every = rules.check_keep(keep_every, "keep_every")
        self.ttl = rules.ttl_seconds(ttl)
        self._clock = clock or rules.utc_now
        self._order = CallOrder()  # what follows each commit runs in call order

    def __repr__(self) -> str:
        return (
            f"ckptio.Run({os.fspath(self.root)!r}, keep_last={self.keep_last}, "
            f"keep_every={self.keep_every}, ttl={self.ttl})"
        )

    def now(self) -> datetime:
        """The run's clock, in UTC.

        Example:
            >>> import ckptio
            >>> ckptio.Run("r").now().tzname()
            'UTC'
        """
        return rules.now_from(self._clock)

    def path_of(self, name: str, kind: str = "state") -> Path:
        """Where the checkpoint ``name`` of ``kind`` lives (whether or not it exists).

        Example:
            >>> import ckptio
            >>> ckptio.Run("runs/a").path_of("step-1", "sampler").as_posix()
            'runs/a/sampler_weights/step-1'
        """
        kind = str(rules.check_kind(kind))
        return store.checkpoint_path(self.root, kind, rules.check_name(name))

    # -- saving ---------------------------------------------------------------------
    def _plan(
        self, kind: str, name: str, weights: Any, optimizer_state: Any, *, step: Any, loop_state: Any,
        metadata: Any, ttl: Any, overwrite: bool, durable: bool, threads: int | None,
        max_shard_bytes: int | None, extra_files: Mapping[str, Any] | None,
    ) -> _RunSave:  # fmt: skip
        path = self.path_of(name, kind)
        seconds = self.ttl if ttl is RUN_DEFAULT else rules.ttl_seconds(ttl)
        created = self.now()
        expires_at = None if seconds is None else created + timedelta(seconds=seconds)
        entry = rules.run_entry(created, expires_at, loop_state)
        options = save_options(
            overwrite=overwrite, durable=durable, threads=threads, max_shard_bytes=max_shard_bytes
        )
        return _RunSave(
            self, name, path, kind, weights, optimizer_state, step=step, metadata=metadata, options=options,
            extra_files=extra_files, extra_user={"run": entry},
        )  # fmt: skip

    def save_state(
        self,
        name: str,
        weights: Mapping[str, Any],
        optimizer_state: Any,
        *,
        step: int | None = None,
        loop_state: Any = None,
        metadata: Any = None,
        ttl: Ttl = RUN_DEFAULT,
        overwrite: bool = False,
        durable: bool = True,
        threads: int | None = None,
        max_shard_bytes: int | None = None,
        extra_files: Mapping[str, Any] | None = None,
    ) -> CheckpointRecord:
        """Saves a ``state`` checkpoint ``weights/NAME`` (see ``ckptio.save_state``),
        then deletes what expired and what retention no longer keeps.

        ``loop_state`` says where to continue: any JSON-like tree (dict, list, tuple,
        str, int, float, bool, None), e.g. the epoch and the index of the next batch;
        it is stored exactly in the manifest and comes back in the record.

        Example:
            >>> import numpy as np, ckptio, tempfile
            >>> run = ckptio.Run(tempfile.mkdtemp())
            >>> rec = run.save_state("step-1", {"w": np.zeros(2)}, {"t": 1}, step=1, ttl=3600)
            >>> (rec.expires_at - rec.created).total_seconds()
            3600.0
        """
        return self._plan(
            "state", name, weights, optimizer_state, step=step, loop_state=loop_state, metadata=metadata,
            ttl=ttl, overwrite=overwrite, durable=durable, threads=threads, max_shard_bytes=max_shard_bytes,
            extra_files=extra_files,
        ).commit()  # fmt: skip

    def save_weights_for_sampler(
        self,
        name: str,
        weights: Mapping[str, Any],
        *,
        step: int | None = None,
        metadata: Any = None,
        ttl: Ttl = RUN_DEFAULT,
        overwrite: bool = False,
        durable: bool = True,
        threads: int | None = None,
        max_shard_bytes: int | None = None,
        extra_files: Mapping[str, Any] | None = None,
    ) -> CheckpointRecord:
        """Saves a weights-only ``sampler`` checkpoint ``sampler_weights/NAME``, then
        applies expiry and retention (to sampler checkpoints).

        Example:
            >>> import numpy as np, ckptio, tempfile
            >>> run = ckptio.Run(tempfile.mkdtemp())
            >>> run.save_weights_for_sampler("final", {"w": np.ones(2)}, step=9).path.parent.name
            'sampler_weights'
        """
        return self._plan(
            "sampler", name, weights, None, step=step, loop_state=None, metadata=metadata, ttl=ttl,
            overwrite=overwrite, durable=durable, threads=threads, max_shard_bytes=max_shard_bytes,
            extra_files=extra_files,
        ).commit()  # fmt: skip

    def save_state_async(
        self,
        name: str,
        weights: Mapping[str, Any],
        optimizer_state: Any,
        *,
        step: int | None = None,
        loop_state: Any = None,
        metadata: Any = None,
        ttl: Ttl = RUN_DEFAULT,
        overwrite: bool = False,
        durable: bool = True,
        threads: int | None = None,
        max_shard_bytes: int | None = None,
        extra_files: Mapping[str, Any] | None = None,
        snapshot: bool = True,
    ) -> Future[CheckpointRecord]:
        """``save_state`` in the background (see ``ckptio.save_state_async``): returns
        once the state is snapshotted; expiry and retention run in the background after
        the commit, and the future's result is the record.

        Example:
            >>> import numpy as np, ckptio, tempfile
            >>> run = ckptio.Run(tempfile.mkdtemp())
            >>> run.save_state_async("s", {"w": np.ones(2)}, {"t": 1}, step=1).result().step
            1
        """
        return self._plan(
            "state", name, weights, optimizer_state, step=step, loop_state=loop_state, metadata=metadata,
            ttl=ttl, overwrite=overwrite, durable=durable, threads=threads, max_shard_bytes=max_shard_bytes,
            extra_files=extra_files,
        ).submit(snapshot)  # fmt: skip

    def save_weights_for_sampler_async(
        self,
        name: str,
        weights: Mapping[str, Any],
        *,
        step: int | None = None,
        metadata: Any = None,
        ttl: Ttl = RUN_DEFAULT,
        overwrite: bool = False,
        durable: bool = True,
        threads: int | None = None,
        max_shard_bytes: int | None = None,
        extra_files: Mapping[str, Any] | None = None,
        snapshot: bool = True,
    ) -> Future[CheckpointRecord]:
        """``save_weights_for_sampler`` in the background; see ``save_state_async``.

        Example:
            >>> import numpy as np, ckptio, tempfile
            >>> run = ckptio.Run(tempfile.mkdtemp())
            >>> run.save_weights_for_sampler_async("s", {"w": np.ones(2)}).result().kind
            'sampler'
        """
        return self._plan(
            "sampler", name, weights, None, step=step, loop_state=None, metadata=metadata, ttl=ttl,
            overwrite=overwrite, durable=durable, threads=threads, max_shard_bytes=max_shard_bytes,
            extra_files=extra_files,
        ).submit(snapshot)  # fmt: skip

    def _after_commit(self, kind: str, name: str) -> CheckpointRecord:
        """The record of what was just saved; then expiry, retention and leftovers of
        dead processes. A failure here warns: the checkpoint itself is saved."""
        record = self.get(name, kind)
        failures: list[str] = []
        # Saves still in flight (this one included) are not removed: their records and
        # their own retention passes come later, in call order.
        in_flight = self._order.in_flight() | {(kind, name)}
        try:
            everything = self.list()
            doomed = rules.expired(everything, self.now(), protect=in_flight)
            gone = {(r.kind, r.name) for r in doomed}
            doomed += rules.beyond_retention(
                [r for r in everything if r.kind == kind and (r.kind, r.name) not in gone],
                keep_last=self.keep_last, keep_every=self.keep_every,
                protect={n for k, n in in_flight if k == kind},
            )  # fmt: skip
            failures += self._delete_all(doomed)[1]
            store.remove_leftovers(self.root, kind)
        except OSError as e:
            failures.append(str(e))
        if failures:
            warnings.warn(
                f"ckptio.Run: saved {record.path}, but cleaning up the run failed: " + "; ".join(failures),
                RuntimeWarning,
                stacklevel=5,  # the caller of save_* (sync saves)
            )
        return record

    def _delete_all(self, records: list[CheckpointRecord]) -> tuple[list[CheckpointRecord], list[str]]:
        """(deleted, failure messages). One already gone (deleted by another process) is
        not a failure."""
        deleted, failures = [], []
        for r in records:
            try:
                store.delete(r.path)
                deleted.append(r)
            except CheckpointNotFoundError:
                pass
            except (OSError, ValueError) as e:
                failures.append(f"{r.path}: {e}")
        return deleted, failures

    # -- reading --------------------------------------------------------------------
    def scan(self, kind: str | None = None) -> tuple[list[CheckpointRecord], list[tuple[Path, str]]]:
        """``list(kind)``, plus the (path, reason) of each checkpoint directory that is
        not listed because its manifest is damaged or foreign.

        Example:
            >>> import ckptio, tempfile
            >>> ckptio.Run(tempfile.mkdtemp()).scan()
            ([], [])
        """
        records: list[CheckpointRecord] = []
        problems: list[tuple[Path, str]] = []
        for k in rules.KINDS if rules.check_kind(kind, allow_none=True) is None else (str(kind),):
            good, bad = store.scan(self.root, k)
            problems += [(store.checkpoint_path(self.root, k, n), msg) for n, msg in bad]
            for name, summary in good:
                path = store.checkpoint_path(self.root, k, name)
                try:
                    records.append(_record(rules.check_name(name), k, path, summary))
                except (FormatError, ValueError) as e:
                    problems.append((path, str(e)))
        return sorted(records, key=_order), problems

    def list(self, kind: str | None = None) -> list[CheckpointRecord]:
        """Every complete checkpoint of ``kind`` (``"state"``, ``"sampler"``, None for
        both), oldest first. Reads manifests only. A run that does not exist yet has none.

        Example:
            >>> import numpy as np, ckptio, tempfile
            >>> run = ckptio.Run(tempfile.mkdtemp())
            >>> _ = run.save_weights_for_sampler("a", {"w": np.ones(1)})
            >>> _ = run.save_state("b", {"w": np.ones(1)}, {})
            >>> [(r.name, r.kind) for r in run.list()], [r.name for r in run.list("state")]
            ([('a', 'sampler'), ('b', 'state')], ['b'])
        """
        return self.scan(kind)[0]

    def latest(self, kind: str = "state") -> CheckpointRecord | None:
        """The newest complete checkpoint of ``kind``, or None.

        Example:
            >>> import ckptio, tempfile
            >>> ckptio.Run(tempfile.mkdtemp()).latest() is None
            True
        """
        records = self.list(rules.check_kind(kind))
        return records[-1] if records else None

    def get(self, name: str, kind: str = "state") -> CheckpointRecord:
        """The record of checkpoint ``name``; CheckpointNotFoundError if there is none.

        Example:
            >>> import ckptio, tempfile
            >>> ckptio.Run(tempfile.mkdtemp()).get("nope")  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ckptio.errors.CheckpointNotFoundError: no state checkpoint named 'nope' in run ...
        """
        path = self.path_of(name, kind)
        try:
            summary = store.describe(path)
        except CheckpointNotFoundError:
            raise CheckpointNotFoundError(f"no {kind} checkpoint named {name!r} in run {self.root}") from None
        return _record(name, kind, path, summary)

    def resume(
        self, *, framework: str | None = None, device: Any = None, verify: bool = False, copy: bool = False
    ) -> ResumePoint | None:
        """Loads the newest ``state`` checkpoint (``latest("state")``), or returns None
        for a run with none. The record and the tensors come from one opened
        checkpoint, even while another process saves or deletes. The keyword arguments
        are those of ``ckptio.load_state_with_optimizer``.

        Example:
            >>> import numpy as np, ckptio, tempfile
            >>> run = ckptio.Run(tempfile.mkdtemp())
            >>> _ = run.save_state("s", {"w": np.ones(2)}, {"m": 0.5}, step=4, loop_state=[1, 2])
            >>> p = run.resume()
            >>> p.record.name, p.optimizer_state, p.step, p.loop_state
            ('s', {'m': 0.5}, 4, [1, 2])
        """
        for _ in range(8):  # each retry needs another process to delete or replace it again
            record = self.latest("state")
            if record is None:
                return None
            try:
                ckpt = Checkpoint(record.path)
            except CheckpointNotFoundError:
                continue  # deleted since it was listed
            if ckpt.checkpoint_id != record.checkpoint_id:
                continue  # replaced since it was listed: its record is another
            if verify:
                ckpt.verify()
            if not copy:
                ckpt.prefetch()
            opt = ckpt.optimizer_state(framework=framework, device=device, copy=copy)
            weights = ckpt.weights(framework=framework, device=device, copy=copy)
            return ResumePoint(record, weights, opt, record.step, record.loop_state, record.metadata)
        raise CheckpointNotFoundError(f"run {self.root}: the newest checkpoint kept changing while resuming")

    # -- lifecycle ------------------------------------------------------------------
    def delete(self, name: str, kind: str = "state") -> None:
        """Deletes checkpoint ``name`` atomically: it is listed whole until it is gone,
        even if the process dies meanwhile; a process that loaded it keeps valid data.

        Example:
            >>> import numpy as np, ckptio, tempfile
            >>> run = ckptio.Run(tempfile.mkdtemp())
            >>> _ = run.save_state("s", {"w": np.ones(2)}, {})
            >>> run.delete("s"); run.list()
            []
        """
        path = self.path_of(name, kind)
        try:
            store.delete(path)
        except CheckpointNotFoundError:
            raise CheckpointNotFoundError(f"no {kind} checkpoint named {name!r} in run {self.root}") from None

    def set_ttl(self, name: str, ttl: Ttl, kind: str = "state") -> CheckpointRecord:
        """Makes checkpoint ``name`` expire ``ttl`` (seconds or a ``timedelta``) from
        now, or never (None). Rewrites its manifest atomically; tensors are untouched.

        Example:
            >>> import numpy as np, ckptio, tempfile
            >>> run = ckptio.Run(tempfile.mkdtemp())
            >>> _ = run.save_state("s", {"w": np.ones(2)}, {}, ttl=60)
            >>> run.set_ttl("s", None).expires_at is None
            True
        """
        seconds = rules.ttl_seconds(ttl)
        for _ in range(8):  # each retry needs another save to replace it again meanwhile
            current = self.get(name, kind)  # CheckpointNotFoundError once it is gone
            expires_at = None if seconds is None else self.now() + timedelta(seconds=seconds)
            entry = rules.run_entry(current.created, expires_at, current.loop_state)
            try:
                summary = store.update_run_entry(
                    current.path, json.dumps(entry, allow_nan=False), current.checkpoint_id
                )
            except CheckpointNotFoundError:
                continue  # replaced or deleted since ``get``: its entry would be wrong
            return _record(name, kind, current.path, summary)
        raise CheckpointNotFoundError(f"{kind} checkpoint {name!r} of run {self.root} kept being replaced")

    def delete_expired(self) -> builtins.list[CheckpointRecord]:
        """Deletes every checkpoint (both kinds) whose TTL has passed; returns them.
        Each save runs this too.

        Example:
            >>> import ckptio, tempfile
            >>> ckptio.Run(tempfile.mkdtemp()).delete_expired()
            []
        """
        deleted, failures = self._delete_all(rules.expired(self.list(), self.now()))
        if failures:
            raise OSError("could not delete: " + "; ".join(failures))
        return deleted

    def cleanup(self) -> CleanupResult:
        """Removes what dead processes left in the run: staging directories of
        interrupted saves, checkpoints half deleted, manifest edits. Returns the paths
        (``.skipped``: what it left alone and why, as ``ckptio.cleanup``).

        Example:
            >>> import ckptio, tempfile
            >>> ckptio.Run(tempfile.mkdtemp()).cleanup()
            []
        """
        return store.cleanup(self.root)


class _RunSave(SavePlan):
    """A save into a run: the plain save; then, once it has committed, the record,
    expiry and retention."""

    def __init__(self, run: Run, name: str, path: Path, *args: Any, **kwargs: Any) -> None:
        super().__init__(path, *args, **kwargs)
        self.run, self.name = run, name
        self.record: list[CheckpointRecord] = []  # set once committed (shared with the future)

    def write(self) -> Location:
        order = self.run._order
        try:
            store.prepare(self.run.root, self.kind)
            path = super().write()
        except BaseException:
            order.done(self.ticket)
            raise
        with order.turn(self.ticket):
            self.record.append(self.run._after_commit(self.kind, self.name))
        return path

    def commit(self) -> CheckpointRecord:
        self.ticket = self.run._order.ticket((self.kind, self.name))
        try:
            self.write()
        finally:
            self.run._order.done(self.ticket)  # no-op once its turn has ended it
        return self.record[0]

    def submit(self, snapshot: bool) -> Future[CheckpointRecord]:
        order, ticket = self.run._order, self.run._order.ticket((self.kind, self.name))
        self.ticket = ticket
        try:
            inner = _submit(self, snapshot)
        except BaseException:
            order.done(ticket)
            raise
        outer = _RecordFuture(inner)
        outer.set_running_or_notify_cancel()  # like the save's own future: not cancellable
        record = self.record  # not the plan: it holds views of the staging buffer

        def resolve(done: Future[Path]) -> None:
            order.done(ticket)  # a save that never reached its turn must not block later ones
            error = Future.exception(done)  # not SaveFuture's: unobserved errors stay reported
            if error is not None:
                outer.set_exception(error)
            else:
                outer.set_result(record[0])

        inner.add_done_callback(resolve)
        return outer


class _RecordFuture(Future[CheckpointRecord]):
    """The future of an async save into a run; looking at it counts as looking at the
    save (so its failure is not reported again at exit)."""

    def __init__(self, inner: Any) -> None:
        super().__init__()
        self._inner = inner

    def result(self, timeout: float | None = None) -> CheckpointRecord:
        self._inner._observed = True
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._inner._observed = True
        return super().exception(timeout)


def _example() -> CheckpointRecord:
    """A record for the examples above."""
    t = datetime(2026, 1, 1, tzinfo=UTC)
    return CheckpointRecord("step-3", "state", Path("run/weights/step-3"), 3, 1024, t, None, {}, None)
