"""`--weights` from a URI: an fsspec folder (`s3://bucket/EchoMimicV2/`, `gs://…`, `az://…`) or a Hugging Face
repository (`hf://BadToBest/EchoMimicV2`, `hf://org/name@revision`), turned into a local folder in the
official layout on the node that needs it (the driver and each worker node), once per node:

    <cache>/<key>/...            the copy, where key hashes every file's name, size and ETag (generation, etag)
    <cache>/<key>.lock           a file lock: concurrent workers of one node download once, the others wait

A folder is complete only once renamed into place, so a crashed download is simply done again. Changed
bytes upstream change an ETag, hence the key: a new copy. The same bytes keep the same relative names, so the
model identity (fingerprints) of the copy equals that of the source folder. A copy is checked like
`cli.py weights check` (every file's keys and shapes) before first use; the check is recorded beside it.
Hugging Face repositories go through huggingface_hub's own cache (content-addressed blobs, its own locks),
offline when HF_HUB_OFFLINE=1 (a pre-filled cache); the cache location is huggingface_hub's (HF_HUB_CACHE).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

from pipeline import storage

CACHE_ENV = "ECHOMIMIC2_WEIGHTS_CACHE"
HF_SCHEME = "hf://"
MAX_FILES = 1000  # a weights folder has a dozen files: more means a wrong URI (a bucket's root)


class WeightsSourceError(Exception):
    """The weights URI cannot be used: unreachable, empty, unstamped, or its files fail the check."""


def is_remote(weights: str | os.PathLike | None) -> bool:
    if weights is None:
        return False
    weights = str(weights)
    return weights.startswith(HF_SCHEME) or storage.scheme_of(weights) != "file"


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "echomimic2" / "weights")


def local_weights(weights: str, variant: str | None = None, *, cache: Path | None = None) -> Path:
    """A local folder holding `weights` (a local path is returned as it is); with `variant`, the copy has passed
    the weights check for it (WeightsSourceError names the files that failed)."""
    if not is_remote(weights):
        return Path(storage.local_path(str(weights)))
    folder = _from_hub(weights) if weights.startswith(HF_SCHEME) else _from_fsspec(weights, cache or cache_root())
    if variant is not None:
        check_once(folder, variant)
    return folder


# -- fsspec ---------------------------------------------------------------------------------------------------
def remote_listing(uri: str) -> list[tuple[str, int, str]]:
    """(relative name, size, change stamp) of every file under `uri`, sorted."""
    fs, path = storage.url_to_fs(uri)
    root = path.rstrip("/")
    try:
        found = storage.with_retries(fs.find, root, detail=True)
    except FileNotFoundError:
        found = {}
    if len(found) > MAX_FILES:
        raise WeightsSourceError(f"weights {storage.redact(uri)}: {len(found)} files, more than a weights folder "
                                 f"has ({MAX_FILES}): is the URI the weights folder itself?")
    listing = []
    for file_path, info in found.items():
        if info.get("type") == "directory":
            continue
        name = file_path[len(root):].lstrip("/")
        stamp = storage.change_stamp(uri, info)
        if stamp is None:
            raise WeightsSourceError(f"weights {storage.redact(uri)}: the store gives no ETag/generation for {name}; "
                                     "a node-local copy could not tell changed files apart")
        listing.append((name, int(info["size"]), stamp))
    if not listing:
        raise WeightsSourceError(f"weights {storage.redact(uri)}: no files there")
    return sorted(listing)


def cache_key(uri: str, listing: list[tuple[str, int, str]]) -> str:
    digest = hashlib.sha256(json.dumps([storage.redact(uri.rstrip("/")), listing]).encode())
    return digest.hexdigest()[:24]


def _from_fsspec(uri: str, cache: Path) -> Path:
    try:
        listing = remote_listing(uri)
    except WeightsSourceError:
        raise
    except Exception as exc:
        raise WeightsSourceError(f"weights {storage.redact(uri)}: {storage.describe_error(exc)}") from None
    key = cache_key(uri, listing)
    folder = cache / key
    if folder.is_dir():
        return folder
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / f"{key}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also when this process dies
        if folder.is_dir():  # another worker of this node finished it while we waited
            return folder
        partial = cache / f"{key}.partial-{uuid.uuid4().hex[:8]}"
        try:
            fs, path = storage.url_to_fs(uri)
            for name, size, _ in listing:
                target = partial / name
                target.parent.mkdir(parents=True, exist_ok=True)
                storage.with_retries(fs.get_file, f"{path.rstrip('/')}/{name}", str(target))
                if target.stat().st_size != size:
                    raise WeightsSourceError(f"weights {storage.redact(uri)}: {name} changed while it was copied")
            partial.rename(folder)
        except WeightsSourceError:
            raise
        except Exception as exc:
            raise WeightsSourceError(f"weights {storage.redact(uri)}: {storage.describe_error(exc)}") from None
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return folder


# -- Hugging Face ---------------------------------------------------------------------------------------------
def _from_hub(uri: str) -> Path:
    from huggingface_hub import snapshot_download

    repo, _, revision = uri.removeprefix(HF_SCHEME).strip("/").partition("@")
    if repo.count("/") != 1:
        raise WeightsSourceError(f"weights {uri}: expected hf://<org>/<name>[@revision]")
    try:
        # HF_HUB_CACHE read now, not when huggingface_hub was imported
        return Path(snapshot_download(repo_id=repo, revision=revision or None, cache_dir=os.environ.get("HF_HUB_CACHE")))
    except Exception as exc:
        raise WeightsSourceError(f"weights {uri}: {storage.describe_error(exc)} (offline, HF_HUB_OFFLINE=1, only a "
                                 "pre-filled Hugging Face cache is read)") from None


# -- the check ------------------------------------------------------------------------------------------------
def check_problems(folder: Path, variant: str) -> list[str]:
    """What `cli.py weights check` reports as not OK for `variant` (empty: usable)."""
    from echomimic2.audio import check_whisper_checkpoint
    from echomimic2.checkpoints import check_official_files
    from echomimic2.weights_layout import WHISPER_FILE

    reports = [*check_official_files(folder, variant)[0], check_whisper_checkpoint(folder / WHISPER_FILE)]
    return [report.summary() for report in reports if not report.ok]


def check_once(folder: Path, variant: str) -> None:
    """Checked once per copy and variant on a node: a marker in the cache (not in the copy, which holds the source's
    bytes only; a Hugging Face snapshot is huggingface_hub's)."""
    marker = cache_root() / "checked" / (hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:24] + f"-{variant}")
    if marker.exists():
        return
    problems = check_problems(folder, variant)
    if problems:
        raise WeightsSourceError("weights check failed: " + "; ".join(problems))
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    except OSError:  # a read-only cache: checked again next time
        pass
