"""Deciding on the driver, before Ray starts, which rows a rerun can skip without reading their inputs.

A clip is skipped only when its fingerprint is proven unchanged, and the fingerprint hashes the inputs'
*contents* (pipeline.fingerprint). Reading and hashing every input of a finished 500-row manifest is what made
a rerun take most of a minute, so each finished clip also gets an entry in one small file,
`<root>/_ledger/input_stamps.json`: the (URI, size, modification stamp) of every input file as the driver saw
them *before* the job read them, the render parameters and model identity, and the MP4's size and stamp when
it was committed. A rerun whose row, inputs and MP4 all still show exactly those stamps is the same clip: it
is skipped at once. Anything else (no entry, a touched or replaced file, another preset, an MP4 that changed,
`--force`) goes the whole way, where the content hashes decide. Stamps are taken before the read, so a file
edited while a job reads it has a newer stamp than the one recorded: the next rerun reads it again.

Cost: one read of the stamps file, one listing of the output root and one `info` per input file (a listing
per pose folder); for a local 500-row manifest well under a second.
"""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

from pipeline import storage
from pipeline.ledger import Ledger
from pipeline.manifest import ClipSpec
from pipeline.rows import ClipPlan, JobSettings

STAMPS_FILE = "input_stamps.json"
STAT_THREADS = 16  # remote stores answer `info` in tens of milliseconds: overlap the round trips
STAMPS_VERSION = 1


def _file_stamps(uri: str) -> list | None:
    """[[uri, size, stamp], ...] of a file, or of each file of a folder (a pose folder); None: not stampable."""
    fs, path = storage.url_to_fs(uri)
    info = fs.info(path)
    if info.get("type") == "directory":
        infos = sorted(fs.ls(path, detail=True), key=lambda entry: entry["name"])
    else:
        infos = [info]
    stamps = []
    for entry in infos:
        stamp = storage.change_stamp(uri, entry)
        if stamp is None or entry.get("type") == "directory":
            return None
        stamps.append([entry["name"], int(entry.get("size") or 0), stamp])
    return stamps


def input_stamps(spec: ClipSpec, settings: JobSettings) -> dict | None:
    """Every input file's stamps as the job's workers will read them, or None when any cannot be stamped
    (refused, missing, unstampable: the full path reports or decides it)."""
    stamps = {}
    try:
        for field_name in ("image", "audio", "pose"):
            uri = getattr(spec, field_name)
            if uri is None:
                continue
            checked = storage.check_uri(uri, allow_http=settings.allow_http, input_root=settings.input_root)
            stamps[field_name] = _file_stamps(checked)
            if stamps[field_name] is None:
                return None
    except Exception:  # noqa: BLE001 - whatever is wrong with an input, the full path says it row by row
        return None
    return stamps


def _output_stamps(ledger: Ledger) -> dict[str, list]:
    """clip_id -> [size, stamp] of every MP4 in the output root, from one listing."""
    fs, path = storage.url_to_fs(ledger.root)
    try:
        entries = storage.with_retries(fs.ls, path, detail=True)
    except FileNotFoundError:
        return {}
    found = {}
    for entry in entries:
        name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
        if entry.get("type") != "directory" and name.endswith(".mp4"):
            found[name[: -len(".mp4")]] = [int(entry.get("size") or 0), storage.change_stamp(ledger.root, entry)]
    return found


def _stamps_uri(ledger: Ledger) -> str:
    return storage.join(ledger.root, "_ledger", STAMPS_FILE)


def read_stamps(ledger: Ledger) -> dict:
    uri = _stamps_uri(ledger)
    try:
        document = json.loads(storage.read_bytes(uri, max_bytes=1 << 30)) if storage.exists(uri) else {}
    except Exception:  # noqa: BLE001 - an unreadable stamps file only means the full path for every row
        return {}
    return document.get("clips", {}) if document.get("version") == STAMPS_VERSION else {}


class RerunStamps:
    """The driver's stamps for one job: which rows are proven finished now, and the entries to record for
    the clips this job finishes."""

    def __init__(self, settings: JobSettings, specs: list[ClipSpec]):
        from pipeline.preprocess import render_params

        self.settings, self.ledger = settings, Ledger(settings.output)
        self.rendered_again: dict[str, list[str]] = {}  # reason -> finished clips whose fingerprint changed
        # as the clips' fingerprints hash them (plain values: the stamps file is JSON)
        self.params = {spec.clip_id: render_params(spec, settings).fingerprint_fields() for spec in specs}
        with ThreadPoolExecutor(STAT_THREADS) as pool:
            self.inputs = dict(zip((spec.clip_id for spec in specs),
                                   pool.map(lambda spec: input_stamps(spec, settings), specs)))

    def finished(self, specs: list[ClipSpec]) -> list[ClipPlan]:
        """Plans (already finished, with their ledger record) of the rows whose stamps prove them unchanged."""
        if self.settings.force:
            return []
        recorded, outputs = read_stamps(self.ledger), _output_stamps(self.ledger)
        plans = []
        for spec in specs:
            entry = recorded.get(spec.clip_id)
            reason = None if entry is None else self._rendered_again_because(entry, self.params[spec.clip_id])
            if reason:
                self.rendered_again.setdefault(reason, []).append(spec.clip_id)
            if (entry is not None and self.inputs[spec.clip_id] is not None
                    and entry["inputs"] == self.inputs[spec.clip_id]
                    and entry["params"] == self.params[spec.clip_id]
                    and entry["model"] == self.settings.model_identity
                    and entry["output"] == outputs.get(spec.clip_id)
                    and entry["output"][1] is not None):
                plans.append(ClipPlan(spec.row, spec.clip_id, entry["fingerprint"], finished=entry["record"]))
        return plans

    def _rendered_again_because(self, entry: dict, params: dict) -> str | None:
        """Why a clip finished earlier cannot be skipped whatever its inputs: its parameters (the segment plan
        and pose version included) or the model changed, so its fingerprint did."""
        if entry["model"] != self.settings.model_identity:
            return f"the model changed ({entry['model']} → {self.settings.model_identity})"
        changed = [f"{name} {entry['params'].get(name)!r} → {params.get(name)!r}"
                   for name in sorted(set(params) | set(entry["params"])) if entry["params"].get(name) != params.get(name)]
        return f"parameters changed ({', '.join(changed)})" if changed else None

    def record(self, clip_ids: list[str]) -> None:
        """Entries for these finished clips (their ledger record as committed now), merged into the file."""
        entries = {}
        outputs = _output_stamps(self.ledger)
        for clip_id in clip_ids:
            record = self.ledger.clip_record(clip_id)
            if record is None or self.inputs.get(clip_id) is None or clip_id not in outputs:
                continue
            if record.get("bytes") != outputs[clip_id][0]:
                continue
            entries[clip_id] = dict(fingerprint=record["fingerprint"], inputs=self.inputs[clip_id],
                                    params=self.params[clip_id], model=self.settings.model_identity,
                                    output=outputs[clip_id], record=record)
        if not entries:
            return
        clips = read_stamps(self.ledger) | entries  # another job's entries stay; a lost race costs a full path
        document = dict(version=STAMPS_VERSION, clips=clips)
        storage.write_atomic(_stamps_uri(self.ledger), json.dumps(document, sort_keys=True).encode())
