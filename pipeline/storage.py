"""Every byte the batch factory reads or writes goes through here: fsspec URLs with an explicit scheme
allow-list, size checks before reads, retries with backoff on transient errors, atomic writes, and
redaction of secrets from any text that may reach a log, a result row or an error message.

Credentials come only from the environment (AWS_*, GOOGLE_*, AZURE_*) or fsspec's own configuration
(``~/.config/fsspec``, ``FSSPEC_<PROTOCOL>_<KWARG>`` variables); nothing here takes keys as arguments.
"""
from __future__ import annotations

import os
import random
import re
import shutil
import stat
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import fsspec
from fsspec.implementations.local import LocalFileSystem

T = TypeVar("T")

RETRY_BASE_DELAY_S = 0.2  # doubled per attempt, with jitter


class InputError(ValueError):
    """A refused input: the message names the problem (and the field where the caller knows it)."""


# ---------------------------------------------------------------------------------------------------
# What each storage scheme does differently: the one place the rest of the module asks.

# Exception class names raised for failures worth retrying, by the client library behind a scheme.
_BOTOCORE_TRANSIENT = frozenset({"EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError",
                                 "ConnectionClosedError", "IncompleteReadError", "ResponseStreamingError"})
_AIOHTTP_TRANSIENT = frozenset({"ClientConnectionError", "ClientConnectorError", "ServerDisconnectedError",
                                "ClientPayloadError", "ServerTimeoutError"})
_AZURE_TRANSIENT = frozenset({"ServiceRequestError", "ServiceResponseError"})
# Error codes in a response (beside HTTP 5xx/429, retried on every scheme) that mean "try again".
_S3_TRANSIENT_CODES = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
                                 "InternalError", "ServiceUnavailable", "RequestLimitExceeded", "TooManyRequests"})


@dataclass(frozen=True)
class SchemeQuirks:
    listing: str  # how list_files stays bounded: "scandir" and "paged" stop at the limit; "full" counts after
    transient: frozenset[str] = frozenset()  # exception names (anywhere in the chain) that are retried
    transient_codes: frozenset[str] = frozenset()  # service error codes that are retried
    process_local: bool = False  # the data lives inside one process: Ray workers never see the driver's
    needs_flag: str | None = None  # allowed only with this command-line flag
    container_at_host: bool = False  # "container@account.host" names a container, not a user
    # Fields of fsspec's `info()` that change whenever the content may have (first present wins); none: a file
    # of this scheme is never trusted unread (`pipeline.rerun`).
    change_stamps: tuple[str, ...] = ()


SCHEMES = {
    "file": SchemeQuirks(listing="scandir", change_stamps=("mtime",)),
    "s3": SchemeQuirks(listing="paged", transient=_BOTOCORE_TRANSIENT | _AIOHTTP_TRANSIENT, transient_codes=_S3_TRANSIENT_CODES,
                       change_stamps=("ETag", "LastModified")),
    "gs": SchemeQuirks(listing="full", transient=_AIOHTTP_TRANSIENT, change_stamps=("generation", "etag", "updated")),
    "az": SchemeQuirks(listing="full", transient=_AZURE_TRANSIENT | _AIOHTTP_TRANSIENT, container_at_host=True,
                       change_stamps=("etag", "last_modified")),
    "memory": SchemeQuirks(listing="full", process_local=True),
    "http": SchemeQuirks(listing="full", transient=_AIOHTTP_TRANSIENT, needs_flag="--allow-http"),
    "https": SchemeQuirks(listing="full", transient=_AIOHTTP_TRANSIENT, needs_flag="--allow-http"),
}
ALLOWED_SCHEMES = tuple(name for name, quirks in SCHEMES.items() if quirks.needs_flag is None)
HTTP_SCHEMES = tuple(name for name, quirks in SCHEMES.items() if quirks.needs_flag == "--allow-http")
PROCESS_LOCAL_SCHEMES = tuple(name for name, quirks in SCHEMES.items() if quirks.process_local)


# ---------------------------------------------------------------------------------------------------
# Secrets


_SECRET_ENV_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|SESSION|_KEY|SAS|CONNECTION_STRING", re.I)
_SECRET_CONFIG_KEY = re.compile(r"secret|token|password|key|sas|credential|connection_string", re.I)
_SECRET_PATTERNS = (
    # user:password@ (or a bare key@) in URLs, and user:password@ where a library quotes a URL's
    # authority without its scheme (botocore: Invalid bucket name "KEY:SECRET@bucket").
    re.compile(r"(?<=://)[^/@\s]+(?=@)|(?<=[\"'\s(=])[^/@\s:\"']+:[^/@\s\"']+(?=@)"),
    re.compile(r"(?i)((?:x-amz-signature|x-amz-security-token|x-amz-credential|signature|sig|token|"
               r"access_token|key|sas)=)[^&\s\"']+"),  # signed-URL / SAS query parameters
    re.compile(r"(?i)(AccountKey=|SharedAccessSignature=)[^;\s\"']+"),  # Azure connection strings
)
_MIN_SECRET_LEN = 4  # shorter values would redact ordinary words and digits


def _secret_values() -> list[str]:
    values = [v for k, v in os.environ.items() if _SECRET_ENV_NAME.search(k)]
    for options in fsspec.config.conf.values():
        if isinstance(options, dict):
            values += [str(v) for k, v in options.items() if _SECRET_CONFIG_KEY.search(k) and v]
    return sorted({v for v in values if len(v) >= _MIN_SECRET_LEN}, key=len, reverse=True)


def redact(text: str) -> str:
    """``text`` with every secret value found in the environment / fsspec config replaced by ``***``,
    and URL passwords, signatures and tokens masked."""
    text = str(text)
    for value in _secret_values():
        text = text.replace(value, "***")
    text = _SECRET_PATTERNS[0].sub("***", text)
    for pattern in _SECRET_PATTERNS[1:]:
        text = pattern.sub(lambda m: m.group(1) + "***", text)
    return text


_OBJECT_REPR = re.compile(r"<[\w.<>]+ object at 0x[0-9a-fA-F]+>")  # a file object's repr names nothing
_REFUSED_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken",
                             "InvalidToken", "TokenRefreshRequired", "AuthorizationHeaderMalformed",
                             "InvalidClientTokenId", "AuthenticationFailed"}
CREDENTIALS_HINT = ("the store refused the credentials or their permissions: check AWS_ACCESS_KEY_ID / "
                    "AWS_SECRET_ACCESS_KEY / AWS_ENDPOINT_URL (or GOOGLE_*, AZURE_*, fsspec configuration)")


def describe_error(exc: BaseException) -> str:
    """One redacted line for an exception: its type and message, and what to check when the store
    refused the credentials."""
    # Library messages may span lines (botocore's validation errors): one problem stays one line.
    message = re.sub(r"\s*\n\s*", " ", str(exc).strip()) or type(exc).__name__
    message = _OBJECT_REPR.sub("<file>", message)
    text = f"{type(exc).__name__}: {message}" if not isinstance(exc, InputError) else message
    if refused_credentials(exc):
        text += f" ({CREDENTIALS_HINT})"
    return redact(text)


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _http_status(exc: BaseException) -> tuple[int, str | None]:
    """(HTTP status, service error code) an exception carries: botocore's response dict, aiohttp / gcsfs
    attributes; (0, None) when it carries none."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return (int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0),
                response.get("Error", {}).get("Code"))
    status = getattr(exc, "status", None) or getattr(exc, "code", None)
    return (status, None) if isinstance(status, int) else (0, None)


def refused_credentials(exc: BaseException) -> bool:
    """True when a remote store answered 401/403 or named a credential problem, anywhere in the chain."""
    for link in _chain(exc):
        status, code = _http_status(link)
        if status in (401, 403) or code in _REFUSED_CREDENTIAL_CODES:
            return True
    return False


# ---------------------------------------------------------------------------------------------------
# Retries


_TRANSIENT_NAMES = frozenset().union(*(quirks.transient for quirks in SCHEMES.values()))
# An exception does not say which scheme raised it: every scheme's retried names and codes count.
_TRANSIENT_CODES = frozenset().union(*(quirks.transient_codes for quirks in SCHEMES.values()))


def _is_transient(exc: BaseException) -> bool:
    """Connection failures, timeouts, HTTP 5xx/429 and throttling, anywhere in the exception chain."""
    for link in _chain(exc):
        if isinstance(link, (FileNotFoundError, PermissionError, InputError)):
            return False
        if isinstance(link, (ConnectionError, TimeoutError)) or type(link).__name__ in _TRANSIENT_NAMES:
            return True
        status, code = _http_status(link)
        if status >= 500 or status == 429 or code in _TRANSIENT_CODES:
            return True
    return False


def with_retries(fn: Callable[..., T], *args, attempts: int = 5, **kwargs) -> T:
    """``fn(*args, **kwargs)``, retried with exponential backoff while it fails transiently."""
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if attempt == attempts - 1 or not _is_transient(exc):
                raise
            time.sleep(RETRY_BASE_DELAY_S * 2**attempt * (1 + random.random()))
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------------------
# URIs


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def scheme_of(uri: str) -> str:
    """``file`` for local paths (``/x``, ``x/y``, ``file:///x``), else the URL scheme, lower-cased."""
    match = _SCHEME.match(uri)
    return match.group(1).lower() if match else "file"


def is_local(uri: str) -> bool:
    return scheme_of(uri) == "file"


def local_path(uri: str) -> Path:
    return Path(uri[len("file://"):] if uri.startswith("file://") else uri)


_GLOB_CHARACTERS = re.compile(r"[*?\[]")  # fsspec expands these in recursive deletes and listings


def check_plain_url(uri: str) -> str:
    """The scheme of ``uri`` when fsspec will open it as exactly the one plain path or URL it reads as,
    of a known scheme; InputError otherwise. Every URI passes here before fsspec sees it (url_to_fs),
    so nothing can make fsspec open something other than what the other checks looked at: no chained
    URLs (``simplecache::s3://…``, ``ROOT/link::x``), no protocol hidden inside a path (``data:…``,
    ``dir/zip://…``), no credentials in a URL, no ``.``/``..`` segments that a store resolves its own way."""
    if not isinstance(uri, str) or not uri.strip():
        raise InputError("empty path")
    if "\0" in uri:
        raise InputError("path contains a NUL character")
    if "::" in uri:
        raise InputError(f"{redact(uri)}: '::' (fsspec's URL chaining, e.g. simplecache::s3://…) is refused in "
                         f"paths and URLs: give one plain path or URL of an allowed scheme")
    scheme = scheme_of(uri)
    if scheme not in SCHEMES:
        raise InputError(f"URI scheme '{scheme}' is not allowed (allowed: {', '.join(ALLOWED_SCHEMES)}; "
                         f"http(s) with --allow-http)")
    protocol, _ = fsspec.core.split_protocol(uri)
    if protocol != (scheme if _SCHEME.match(uri) else None):
        raise InputError(f"{redact(uri)}: fsspec would read this as a {protocol}: URL, not as the plain "
                         f"{scheme} path it looks like")
    if scheme != "file":
        authority, _, path = uri.split("://", 1)[1].partition("/")
        userinfo = authority.rpartition("@")[0]
        if userinfo and (":" in userinfo or not SCHEMES[scheme].container_at_host):
            raise InputError(f"{redact(uri)}: credentials in a URL are refused; give them through the "
                             f"environment (AWS_*, GOOGLE_*, AZURE_*) or fsspec configuration")
        if any(segment in (".", "..") for segment in path.split("/")):
            raise InputError(f"{redact(uri)}: '.' and '..' segments are refused in {scheme}:// URLs (object "
                             f"stores do not resolve them as folders)")
    return scheme


def check_uri(uri: str, *, allow_http: bool = False, input_root: Path | str | None = None) -> str:
    """The normalised URI (local paths: absolute, symlinks resolved), or InputError naming the reason.

    Refuses what check_plain_url refuses, schemes outside ALLOWED_SCHEMES (http/https only with
    ``allow_http``) and, when ``input_root`` is given, local paths whose real location (after symlinks)
    is outside it. ``input_root`` confines local paths only; remote URLs are governed by the scheme
    allow-list.
    """
    scheme = check_plain_url(uri)
    if SCHEMES[scheme].needs_flag and not allow_http:
        raise InputError(f"{scheme}:// inputs are refused unless {SCHEMES[scheme].needs_flag} is given: {redact(uri)}")
    if scheme != "file":
        return uri
    resolved = local_path(uri).expanduser().resolve()
    if input_root is not None:
        root = Path(input_root).expanduser().resolve()
        if not resolved.is_relative_to(root):
            raise InputError(f"{uri} resolves to {resolved}, outside the input root {root}")
    return str(resolved)


def refuse_process_local(uri: str) -> None:
    """InputError when ``uri`` lives inside one process (memory://): a job reads and writes in Ray worker
    processes, which never see what another process put there."""
    scheme = scheme_of(uri)
    if SCHEMES.get(scheme, SCHEMES["file"]).process_local:
        raise InputError(f"{redact(uri)}: {scheme}:// exists only inside one process, and the job reads and writes "
                         f"in Ray worker processes; use a local path or an object store (s3://, gs://, az://)")


def check_output_root(uri: str) -> str:
    """``uri`` as a job's output root, or InputError: a plain URL of an allowed scheme (not http), not
    process-local, without glob characters (the job deletes folders under it recursively)."""
    scheme = check_plain_url(uri)
    if SCHEMES[scheme].needs_flag:
        raise InputError(f"{redact(uri)}: {scheme}:// cannot be an output root (use a local path or an object store)")
    refuse_process_local(uri)
    if _GLOB_CHARACTERS.search(uri):
        raise InputError(f"{redact(uri)}: '*', '?' and '[' are refused in an output root (fsspec expands them "
                         f"when it deletes folders)")
    return uri


def probe_writable(root: str) -> None:
    """InputError unless the job can write under ``root``, found before any worker starts and leaving
    nothing behind: a local root's nearest existing folder must be writable; on a remote store one small
    object is written and deleted (an unreachable store, missing permissions, refused credentials)."""
    if is_local(root):
        path = local_path(root).expanduser().absolute()
        existing = next(p for p in (path, *path.parents) if p.exists())
        if not existing.is_dir():
            raise InputError(f"output {root} is not writable: {existing} is not a writable folder")
        try:  # a real write, not os.access: that says yes to root in folders that refuse files (/proc, read-only mounts)
            with tempfile.TemporaryFile(dir=existing, prefix=".write-probe-"):
                pass
        except OSError as exc:
            raise InputError(f"output {root} is not writable: {existing} refuses a new file ({exc.strerror})") from None
        return
    probe = join(root, "_ledger", f".write-probe-{uuid.uuid4().hex}")
    try:
        write_atomic(probe, b"probe")
        delete(probe)
    except Exception as exc:
        raise InputError(f"output {redact(root)} is not writable: {describe_error(exc)}") from None


def change_stamp(uri: str, info: dict) -> str | None:
    """What changes when the content of the file `info` describes may have changed (mtime, ETag, generation),
    or None where this scheme offers nothing to trust."""
    quirks = SCHEMES.get(scheme_of(uri))
    for key in quirks.change_stamps if quirks else ():
        if info.get(key) is not None:
            return str(info[key])
    return None


def url_to_fs(uri: str):
    """(filesystem, path inside it) for a URI that check_plain_url accepts; credentials from env /
    fsspec config only."""
    check_plain_url(uri)
    return fsspec.core.url_to_fs(uri)


def join(root: str, *parts: str) -> str:
    """``root/part/...``; every part must be a plain relative name (no '', '.', '..', NUL, leading '/')."""
    for part in parts:
        pieces = str(part).split("/")
        if str(part).startswith("/") or "\0" in str(part) or any(p in ("", ".", "..") for p in pieces):
            raise ValueError(f"unsafe path part {part!r}")
    if is_local(root):
        return str(local_path(root).joinpath(*parts))
    return "/".join([root.rstrip("/"), *parts])


# ---------------------------------------------------------------------------------------------------
# Reads


_FILE_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _refuse_special(mode: int) -> None:
    """InputError unless ``mode`` is a regular file's: reading a FIFO blocks forever, a device never ends, and
    both report size 0, so no size limit would hold for them."""
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a file")
        raise InputError(f"not a regular file (it is {kind})")


def _check_inside_root(path: str, real: str, input_root: Path | str | None) -> None:
    if input_root is None:
        return
    root = Path(input_root).expanduser().resolve()
    if not Path(real).is_relative_to(root):
        raise InputError(f"{path} resolves to {real}, outside the input root {root}")


@contextmanager
def _open_local(path: str, input_root: Path | str | None) -> Iterator:
    """A local file opened for reading once it is known to be a regular file inside ``input_root``: stat
    before opening (no FIFO or device is ever opened), then the opened file itself checked again (its real
    location and its kind), so a link swapped in between the check and the open changes nothing."""
    _refuse_special(os.stat(path).st_mode)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO swapped in since the stat: no wait
    try:
        _refuse_special(os.fstat(fd).st_mode)
        proc_link = f"/proc/self/fd/{fd}"
        _check_inside_root(path, os.readlink(proc_link) if os.path.exists(proc_link) else os.path.realpath(path),
                           input_root)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as f:
        yield f


def size(uri: str) -> int:
    """Bytes in the file; InputError for a local FIFO, device or folder (they have no size that holds)."""
    if is_local(uri):
        check_plain_url(uri)
        info = os.stat(local_path(uri))
        _refuse_special(info.st_mode)
        return info.st_size
    fs, path = url_to_fs(uri)
    return int(with_retries(fs.size, path))


def exists(uri: str) -> bool:
    fs, path = url_to_fs(uri)
    return bool(with_retries(fs.exists, path))


def _over_limit(n: int, max_bytes: int) -> InputError:
    return InputError(f"file is {n} bytes, over the limit of {max_bytes}")


def read_bytes(uri: str, *, max_bytes: int, input_root: Path | str | None = None) -> bytes:
    """The whole file, at most ``max_bytes``: refused before reading when its size is over, and never more than
    ``max_bytes + 1`` bytes read (a file that grows meanwhile is refused too). Local files must be regular
    files, and with ``input_root`` their real location, checked on the opened file, must be inside it."""
    if is_local(uri):
        check_plain_url(uri)
        with _open_local(str(local_path(uri)), input_root) as f:
            n = os.fstat(f.fileno()).st_size
            if n > max_bytes:
                raise _over_limit(n, max_bytes)
            data = f.read(max_bytes + 1)
    else:
        fs, path = url_to_fs(uri)
        n = int(with_retries(fs.size, path))
        if n > max_bytes:
            raise _over_limit(n, max_bytes)

        def read_bounded() -> bytes:
            with fs.open(path, "rb") as f:
                return f.read(max_bytes + 1)

        data = with_retries(read_bounded)
    if len(data) > max_bytes:  # grew since the size check
        raise InputError(f"file is over the limit of {max_bytes} bytes")
    return data


@contextmanager
def open_input(uri: str, *, input_root: Path | str | None = None) -> Iterator:
    """A binary file object for streaming reads (headers, chunks); local files as `read_bytes` opens them."""
    if is_local(uri):
        check_plain_url(uri)
        with _open_local(str(local_path(uri)), input_root) as f:
            yield f
        return
    fs, path = url_to_fs(uri)
    with with_retries(fs.open, path, "rb") as f:
        yield f


def list_files(uri: str, *, max_entries: int) -> list[str]:
    """URIs of the files directly inside the folder ``uri``, sorted by name. InputError if it holds more
    than ``max_entries`` entries: local folders and S3 stop listing there, without reading the rest."""
    fs, path = url_to_fs(uri)
    listing = SCHEMES[scheme_of(uri)].listing
    if listing == "scandir":
        names = []
        with os.scandir(path) as entries:
            for entry in entries:
                if len(names) == max_entries:
                    raise InputError(f"folder holds more than {max_entries} entries")
                if entry.is_file():
                    names.append(entry.name)
        return [join(uri, name) for name in sorted(names)]
    if listing == "paged":  # s3fs: asks for one key more than the limit, never the whole folder
        from fsspec.asyn import sync

        entries = with_retries(sync, fs.loop, fs._lsdir, path, refresh=True, max_items=max_entries + 1)
        if len(entries) > max_entries:
            fs.invalidate_cache(path)  # s3fs caches the truncated listing as if complete
            raise InputError(f"folder holds more than {max_entries} entries")
    else:
        entries = with_retries(fs.ls, path, detail=True)
        if len(entries) > max_entries:
            raise InputError(f"folder holds more than {max_entries} entries")
    if not entries and not with_retries(fs.isdir, path):
        raise FileNotFoundError(uri)
    names = sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e["type"] == "file")
    return [join(uri, name) for name in names]


# ---------------------------------------------------------------------------------------------------
# Writes


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_CREATE_MODE = 0o666 & ~_umask()


def write_atomic(uri: str, data: bytes | Path) -> None:
    """Write ``data`` (bytes, or a local file to copy) so that no reader ever sees a partial file under
    ``uri``: local files go to a temporary name in the same folder, then ``os.replace``; object stores
    commit an object only when its single PUT / multipart upload completes."""
    fs, path = url_to_fs(uri)
    if isinstance(fs, LocalFileSystem):
        with atomic_output(uri) as out:
            if isinstance(data, Path):
                with open(data, "rb") as src:
                    shutil.copyfileobj(src, out, 1 << 20)
            else:
                out.write(data)
        return
    if isinstance(data, Path):
        with_retries(fs.put_file, str(data), path)
    else:
        with_retries(fs.pipe_file, path, data)
    fs.invalidate_cache(path)


@contextmanager
def atomic_output(uri: str) -> Iterator:
    """A binary file to write ``uri``'s content into, piece by piece; committed as `write_atomic` commits when
    the block ends without an error, and nothing is stored after an error. Local files are written under a
    temporary name in the target folder (fsynced, then renamed); for object stores the pieces go to a local
    temporary file, uploaded at the end."""
    fs, path = url_to_fs(uri)
    local = isinstance(fs, LocalFileSystem)
    folder = Path(path).parent if local else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{Path(path).name}.", suffix=".partial", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            if local:
                os.fsync(out.fileno())
        if local:
            os.chmod(tmp, _CREATE_MODE)  # mkstemp makes 0600; outputs get the usual umask-based mode
            os.replace(tmp, path)
        else:
            write_atomic(uri, Path(tmp))
    finally:
        Path(tmp).unlink(missing_ok=True)


def delete(uri: str) -> None:
    """Remove a file or a folder tree; a missing one is not an error."""
    fs, path = url_to_fs(uri)
    if _GLOB_CHARACTERS.search(path):
        raise ValueError(f"refusing to delete {redact(uri)}: fsspec would expand its glob characters")
    try:
        with_retries(fs.rm, path, recursive=True)
    except FileNotFoundError:
        pass
    fs.invalidate_cache(path)
