"""Where Transfer Studio keeps its state: ``TRANSFER_STUDIO_HOME`` (default ``~/.transfer_studio``)."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """The folder holding the job store, runs, extracted uploads and the sample set."""
    root = os.environ.get("TRANSFER_STUDIO_HOME") or os.path.join(os.path.expanduser("~"), ".transfer_studio")
    path = Path(root).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def datasets_dir() -> Path:
    """Extracted zips (by content hash) and the materialised sample sets."""
    path = home() / "datasets"
    path.mkdir(parents=True, exist_ok=True)
    return path


def scratch_dir() -> Path:
    """Working files of a running process that nothing keeps (the image caches): on this machine's disk under the
    home, never in a run folder, which may sit on a mount shared with a cluster."""
    path = home() / "scratch"
    path.mkdir(parents=True, exist_ok=True)
    return path


def umask() -> int:
    """The process's umask, read without changing it (``/proc/self/status``; else set and restored at once)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def make_temp_dir(parent: Path, prefix: str) -> Path:
    """A new, uniquely named folder in ``parent`` with the permissions ``mkdir`` gives (0777 minus the umask).

    ``tempfile.mkdtemp`` makes 0700 folders, which another account serving the files (a web server, a
    worker running as another user) cannot read; datasets and bundles are renamed into place from these.
    """
    import tempfile

    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    path.chmod(0o777 & ~umask())
    return path


CHUNK = 1 << 20


class UploadWriter:
    """An upload being kept, written piece by piece as it arrives (a web route streaming a request body).

    ``write()`` each piece, then ``keep()`` names it ``<home>/<kind>/<content hash>/<its name, made safe>`` and
    returns that path; until then it is a temporary ``.upload-*.part`` file in ``<home>/<kind>``, so a file under
    its final name is always whole. ``discard()`` (or leaving the ``with`` block without ``keep()``, an error
    included) removes the partial file. Only the piece being written is held in memory.
    """

    def __init__(self, name: str, kind: str) -> None:
        import hashlib
        import re
        import tempfile

        original = Path(name)
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", original.stem).strip("._")[:60] or "upload"
        suffix = re.sub(r"[^A-Za-z0-9.]+", "", original.suffix.lower())[:10]
        self.filename = f"{stem}{suffix}"
        self.parent = home() / kind
        self.parent.mkdir(parents=True, exist_ok=True)
        fd, part_name = tempfile.mkstemp(prefix=".upload-", suffix=".part", dir=self.parent)
        self.part = Path(part_name)
        self._out = os.fdopen(fd, "wb")
        self._digest = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes | bytearray | memoryview) -> None:
        self._digest.update(chunk)
        self._out.write(chunk)
        self.size += len(chunk)

    def keep(self) -> Path:
        """The kept path (one copy per content: an existing copy is marked used, this one removed)."""
        try:
            self._out.close()
            self.part.chmod(0o666 & ~umask())  # mkstemp makes 0600
            target = self.parent / self._digest.hexdigest()[:16] / self.filename
            if target.exists():
                os.utime(target.parent)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                self.part.replace(target)
            return target
        finally:
            self.part.unlink(missing_ok=True)

    def discard(self) -> None:
        self._out.close()
        self.part.unlink(missing_ok=True)

    def __enter__(self) -> UploadWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.discard()  # after keep(): nothing left to remove


def store_upload(payload, name: str, kind: str) -> Path:
    """Keeps an uploaded file as ``<home>/<kind>/<content hash>/<its name, made safe>``; returns that path.

    Args:
        payload: The bytes, or a binary file object (Streamlit's UploadedFile), copied 1 MB at a time while it is
            hashed, so a large upload is never copied whole in memory.
        name: The name the user gave it (runs list it).
        kind: The folder under home (``uploads``, ``weights``).

    One copy per content, written to a temporary name and renamed (``UploadWriter``), so a crash never leaves a
    half-written file under the final name. Keeping an existing copy marks it used (its folder's mtime: the disk
    quota removes the least recently used first).
    """
    from pipeline.host.disk import full_disk_is_a_message

    size = len(payload) if isinstance(payload, bytes | bytearray | memoryview) else getattr(payload, "size", None)
    with full_disk_is_a_message(home() / kind, size, then="upload it again"), UploadWriter(name, kind) as writer:
        if isinstance(payload, bytes | bytearray | memoryview):
            writer.write(payload)
        else:
            payload.seek(0)
            while chunk := payload.read(CHUNK):
                writer.write(chunk)
        return writer.keep()


def remove_upload(path: str | os.PathLike, kind: str) -> bool:
    """Removes a kept upload (``<home>/<kind>/<hash>/<name>``), and its folder once empty; False when ``path``
    is not a kept upload of that kind (nothing else is ever removed)."""
    target = Path(path)
    folder = target.parent.resolve()
    if folder.parent != home() / kind or folder.name.startswith(".") or target.name.startswith("."):
        return False
    (folder / target.name).unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        pass  # another name for the same content is kept there
    return True


def tree_stamp(folder: str | os.PathLike) -> str:
    """A fingerprint that changes when any file is added to, removed from or renamed in ``folder``'s tree.

    Made from every directory's modification time (a directory's mtime changes when an entry in it is
    added, removed or renamed), so it costs one ``stat`` per folder, not per file. A file rewritten in place
    keeps its directory's mtime: the scan's content hashes catch that when it is run.
    """
    import hashlib

    digest = hashlib.sha256()
    for dirpath, dirnames, _ in os.walk(folder):  # links are not followed, as the scan does not follow them
        dirnames.sort()
        digest.update(os.fsencode(dirpath) + f"\0{os.stat(dirpath).st_mtime_ns}\n".encode())  # any name's bytes
    return digest.hexdigest()[:16]
