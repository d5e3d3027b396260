"""Fingerprints and atomic writes shared by every stage.

Every artifact directory is written to a hidden temporary sibling and renamed into place at the end, so an
interrupted or failed command never leaves a partial artifact under the requested name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from t3s import T3SError


def sha256_json(obj: Any) -> str:
    """Stable hash of a JSON-serialisable object (sorted keys, no whitespace)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
_SAMPLE = 1 << 20  # bytes read from each end of a large weight file


def fingerprint_model_dir(path: str | Path) -> str:
    """Fingerprint of a model directory: config.json in full plus, per weight file, its size and its first and
    last MiB (full weights of a 16 GB model would take minutes to hash, and any retraining changes both ends)."""
    path = Path(path)
    h = hashlib.sha256()
    cfg = path / "config.json"
    if cfg.exists():
        h.update(cfg.read_bytes())
    for f in sorted(p for p in path.iterdir() if p.name.endswith(_WEIGHT_SUFFIXES)):
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with f.open("rb") as fh:
            h.update(fh.read(_SAMPLE))
            if size > 2 * _SAMPLE:
                fh.seek(size - _SAMPLE)
                h.update(fh.read(_SAMPLE))
    return h.hexdigest()


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically (temp file in the same directory, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=2, ensure_ascii=False, default=str)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def not_utf8(path: str | Path, data: bytes, err: UnicodeDecodeError, lineno: int | None = None) -> T3SError:
    """The error for bytes that are not UTF-8: the file, line and column, and a hint for binary files. `data`:
    the whole file, or (with `lineno`) the line that failed."""
    if lineno is None:
        lineno = data.count(b"\n", 0, err.start) + 1
        col = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
    else:
        col = err.start + 1
    with open(path, "rb") as fh:
        binary = b"\0" in fh.read(8192)  # text files have no NUL bytes
    return T3SError(
        f"{path}:{lineno}: not UTF-8 text (byte 0x{data[err.start]:02x} at column {col})"
        + ("; this looks like a binary file" if binary else "; save the file as UTF-8")
    )


def read_text(path: str | Path) -> str:
    """A UTF-8 text file, with one clear error naming the file (and line) when it is missing or not UTF-8."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise T3SError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise not_utf8(path, data, e) from None


def read_json(path: str | Path) -> Any:
    """A JSON file, with one clear error naming the file, line and column when it is not valid JSON."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise T3SError(
            f"{path}:{e.lineno}: bad JSON ({e.msg} at column {e.colno}); is the file truncated or corrupt?"
        ) from None


def read_jsonl(path: str | Path) -> list[Any]:
    """A JSON-lines artifact (blank lines skipped), with one clear error naming the file and line of a bad one."""
    out = []
    for i, line in enumerate(read_text(path).splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise T3SError(f"{path}:{i}: bad JSON ({e.msg}); is the file truncated or corrupt?") from None
    return out


def read_npz(path: str | Path) -> dict[str, Any]:
    """A NumPy .npz artifact, read whole, with one line naming the file when it is truncated or corrupt."""
    import numpy as np

    try:
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 -- zipfile, pickle and OS errors all mean a bad file
        text = " ".join(str(e).split())[:200] or type(e).__name__
        raise T3SError(f"{path}: not a readable .npz file, truncated or corrupt ({text})") from None


def read_table(path: str | Path, columns: tuple[str, ...], what: str = "stage") -> Any:
    """A Parquet artifact t3s wrote, with its `columns`, as a pyarrow Table; one line naming the file when it is
    truncated, corrupt or lacks a column (`what` wrote it: rerun that)."""
    import pyarrow.parquet as pq

    try:
        t = pq.read_table(path)
    except Exception as e:  # noqa: BLE001 -- pyarrow raises ArrowInvalid, OSError, ...: all mean a bad file
        text = " ".join(str(e).split())[:200] or type(e).__name__
        raise T3SError(
            f"{path}: not a readable Parquet file, truncated or corrupt ({text}); rerun the {what}"
        ) from None
    missing = [c for c in columns if c not in t.column_names]
    if missing:
        raise T3SError(f"{path}: no column {', '.join(missing)} (not written by this t3s); rerun the {what}")
    return t


def check_can_write(out: str | Path, overwrite: bool) -> Path:
    """Refuse early (before any work) when `out` exists and overwriting was not asked for."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise T3SError(f"{out} already exists; pass --overwrite to replace it")
    return out


@contextlib.contextmanager
def atomic_dir(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory next to `out`; on success it replaces `out`, on failure it is removed."""
    out = check_can_write(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    swap_in(tmp, out)


def swap_in(tmp: str | Path, out: str | Path) -> None:
    """Move the complete directory `tmp` to `out`, replacing what is there, by two renames: `out` holds the old
    result until the first and the new one from the second (a kill in the instant between them leaves the old
    result under a hidden `.old` name next to `out`)."""
    tmp, out = Path(tmp), Path(out)
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        os.replace(out, old / "x")
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def check_outside(out: str | Path, **inputs: str | Path | None) -> None:
    """Refuse an output directory that is, or contains, one of the command's inputs (`--out` set to the input
    model's run directory would write over the model). Inputs that are not local paths (hub ids) are skipped."""
    root = Path(out).resolve()
    for name, value in inputs.items():
        if value is None or value in ("none", ""):
            continue
        p = Path(value)
        if not p.exists():
            continue
        if _inside(p.resolve(), root):
            raise T3SError(
                f"--out {out} contains the input {name} {value}: writing there would destroy it; choose another --out"
            )
