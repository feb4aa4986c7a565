"""Opening a sweep's Optuna storage so that a study is never lost to a torn write, and a storage that
cannot be used is refused in one paragraph instead of a traceback.

A journal file (Optuna's ``JournalFileBackend``) is a list of JSON records, one a line, each appended
whole under the journal's lock. A write cut short (the disk filled up, the machine or the process died
mid-write, a copy cut short) leaves a last line without its newline; Optuna then appends the next
record straight after it and from then on fails to read the study at all (``JSONDecodeError``, Optuna
issue 5138). ``repair_journal`` runs before a journal is opened, under the same lock Optuna's appends
take (so a live worker's append in progress is never mistaken for a torn one): a trailing partial line
is moved to a side file beside the journal (never deleted), and the study loads with every complete
record. A line that is not JSON in the middle of the file is not a torn write but damage: it is
refused, naming the line, and nothing is changed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from lora_lab.errors import LoraLabError

TORN_SUFFIX = ".torn"
"""Side file of a journal's torn last line: ``<journal>.torn-<UTC time>``."""

RESERVE_NAME = "space.reserve"
RESERVE_BYTES = 256 * 1024
"""A sweep keeps this much disk space in a file of its own in sweeps/<study>/ and gives it back
when the disk fills up, so that the study's last records (the trial's failure, the runs' ends) can
still be written: nothing is left RUNNING by a full disk."""


class StorageError(LoraLabError):
    """A study's storage cannot be read or written as it is."""


def journal_path(url: str) -> str:
    """The file of a journal storage given as a path or a journal:// URL."""
    return url.removeprefix("journal:///").removeprefix("journal://")


def repair_journal(path: str | Path) -> str | None:
    """Move a torn last line of the journal at ``path`` aside, under the journal's own lock; returns
    the one line to tell the user (None when the journal is whole or absent). A record that is not
    JSON before the last line is refused (``StorageError``) and nothing is changed."""
    from optuna.storages.journal import JournalFileSymlinkLock

    path = Path(path)
    if not path.is_file():
        return None
    lock = JournalFileSymlinkLock(str(path))  # the lock JournalFileBackend takes around every append
    try:
        lock.acquire()
    except OSError as exc:
        raise StorageError(_unusable(path, exc)) from None
    try:
        data = path.read_bytes()
        end = data.rfind(b"\n") + 1
        records = data[:end].count(b"\n")
        for number, line in enumerate(data[:end].split(b"\n")[:-1], start=1):
            try:
                json.loads(line)
            except ValueError:  # JSONDecodeError, or bytes that are not UTF-8
                raise StorageError(
                    f"the study's journal {path} is damaged: line {number} of {records} complete "
                    f"lines is not an Optuna record ({line[:60]!r}{'...' if len(line) > 60 else ''}). A write "
                    "cut short only ever damages the last line, which lora_lab moves aside by itself; this is "
                    "inside the file, so the file was changed by something else. Nothing was changed or "
                    "created. Restore the journal from a copy, or start the sweep afresh under a new "
                    "sweep.study_name (the damaged file stays where it is)."
                ) from None
        tail = data[end:]
        if not tail:
            return None
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        side = path.with_name(f"{path.name}{TORN_SUFFIX}-{stamp}")
        n = 1
        while side.exists():
            n += 1
            side = path.with_name(f"{path.name}{TORN_SUFFIX}-{stamp}-{n}")
        try:
            with open(side, "xb") as out:
                out.write(tail)
                out.flush()
                os.fsync(out.fileno())
            with open(path, "r+b") as journal:
                journal.truncate(end)
                journal.flush()
                os.fsync(journal.fileno())
        except OSError as exc:
            side.unlink(missing_ok=True)
            raise StorageError(_unusable(path, exc)) from None
        return (
            f"the study's journal ended in a torn write (a last record cut short, {len(tail)} bytes, e.g. by a "
            f"full disk or a crash); it was moved to {side} and the study goes on from its "
            f"{records} complete records"
        )
    finally:
        lock.release()


def reserve_space(folder: Path) -> None:
    """Keep RESERVE_BYTES of disk space in ``folder`` (see RESERVE_BYTES); a disk too full for it
    gets no reserve, and the sweep goes on."""
    path = Path(folder) / RESERVE_NAME
    if path.is_file() and path.stat().st_size == RESERVE_BYTES:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as out:
            out.write(b"\0" * RESERVE_BYTES)  # written, not sparse: the blocks are really taken
            out.flush()
            os.fsync(out.fileno())
    except OSError:
        path.unlink(missing_ok=True)


def release_space(folder: Path) -> bool:
    """Give the reserved space back (the disk is full); whether there was any."""
    path = Path(folder) / RESERVE_NAME
    if not path.is_file():
        return False
    path.unlink()
    return True


def _unusable(path: Path, exc: OSError) -> str:
    reason = exc.strerror or (os.strerror(exc.errno) if exc.errno else str(exc))
    hint = {
        errno.ENOSPC: "free some space on its disk",
        errno.EACCES: "give this user write access to it and its folder, or choose another sweep.storage",
        errno.EPERM: "give this user write access to it and its folder, or choose another sweep.storage",
        errno.EROFS: "the file system is read-only: choose another sweep.storage",
        errno.ENOTDIR: "a file stands where a folder of the path should be: choose another sweep.storage",
    }.get(exc.errno or 0, "check the file and its folder, or choose another sweep.storage")
    return (
        f"cannot write the study's storage {path} ({reason}): {hint}; then run the same command again. "
        "Nothing was created and no trial started."
    )


def check_writable(url: str) -> None:
    """Refuse a journal file or sqlite database the sweep cannot write (a read-only file, a folder that
    cannot be made or written), and a sqlite file that is not a database or fails ``PRAGMA
    quick_check``, in one paragraph, before anything is created (nothing is created here either)."""
    if url.endswith(".journal"):
        path = Path(journal_path(url)).expanduser()
    else:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
            return
        path = Path(parsed.database).expanduser()
    if path.exists():
        if not os.access(path, os.W_OK) or not os.access(path.parent, os.W_OK):
            raise StorageError(_unusable(path, PermissionError(errno.EACCES, "Permission denied")))
        if not url.endswith(".journal"):
            check_sqlite(path, "sweep.storage")
        return
    existing = path.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise StorageError(_unusable(path, NotADirectoryError(errno.ENOTDIR, f"{existing} is a file, not a folder")))
    if not os.access(existing, os.W_OK):
        error = (
            OSError(errno.EROFS, "Read-only file system")
            if _read_only(existing)
            else PermissionError(errno.EACCES, "Permission denied")
        )
        raise StorageError(_unusable(path, error))


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def check_sqlite(path: Path, field: str) -> None:
    """A sqlite file is a database that passes ``PRAGMA quick_check``; else one paragraph naming
    ``field``. An empty file is a database yet to be created."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    problem = None
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            rows = conn.execute("PRAGMA quick_check").fetchall()
        if [r[0] for r in rows] != ["ok"]:
            problem = "PRAGMA quick_check reports: " + "; ".join(str(r[0]) for r in rows[:3])
    except sqlite3.DatabaseError as exc:
        problem = str(exc)
    if problem is not None:
        raise StorageError(
            f"{field}: {path} is not a usable sqlite database ({problem}). lora_lab neither reads nor writes "
            "it as it is: restore it from a copy, or move it aside to start a new one. Nothing was created."
        )


def check_tracking_store(uri: str | None = None) -> None:
    """A local sqlite MLflow store (``MLFLOW_TRACKING_URI=sqlite:///...``, or MLflow's default
    ./mlflow.db) is a database that passes ``PRAGMA quick_check``: MLflow would otherwise fail with a
    traceback, or write into a damaged file and report on it."""
    if uri is None:
        import mlflow

        uri = mlflow.get_tracking_uri()
    if not uri.startswith("sqlite:"):
        return
    from sqlalchemy.engine import make_url

    database = make_url(uri).database
    if database and database != ":memory:":
        check_sqlite(Path(database).expanduser(), "MLFLOW_TRACKING_URI")


def open_storage(url: str, on_stale_trial: Callable | None = None, say: Callable[[str], None] | None = None):
    """An Optuna storage for ``url`` (a journal file or a database URL), a torn journal repaired first
    (``say`` gets the line about it)."""
    import optuna

    from lora_lab.study import heartbeat_interval_s

    if url.endswith(".journal"):
        path = journal_path(url)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        note = repair_journal(path)
        if note and say is not None:
            say(note)
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(path))
    return optuna.storages.RDBStorage(
        url,
        heartbeat_interval=heartbeat_interval_s(),
        grace_period=3 * heartbeat_interval_s(),
        heartbeat_stale_trial_callback=on_stale_trial,
        engine_kwargs={"pool_pre_ping": True},
    )
