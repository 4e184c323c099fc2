"""`cli.py weights check`: one line per file of an official weights folder. The folder and the files' presence
are checked without torch (a misspelt folder answers at once); the files present are then read and compared key
by key with the networks (`echomimic2.checkpoints`)."""
from __future__ import annotations

from pathlib import Path

from .weights_layout import VARIANTS, checked_files


def weights_check_command(directory: Path, variant: str = "both") -> int:
    """Print a line per file (a report with its keys for a file present); exit code 1 on any problem, else 0."""
    variants = VARIANTS if variant == "both" else (variant,)
    if not set(variants) <= set(VARIANTS):
        print(f"variant must be quality, acc or both, got {variant!r}")
        return 2
    directory = Path(directory)
    files = checked_files(directory, variants)
    if not directory.is_dir():
        print(f"{directory}: folder not found" if not directory.exists() else f"{directory}: not a folder")
    missing = [path for path in files if not path.is_file()]
    reports = {}
    if len(missing) < len(files):  # something to read: the key-by-key check needs the networks (torch)
        from .audio import check_whisper_checkpoint
        from .checkpoints import _meta_networks, check_official_files
        from .weights_layout import WHISPER_FILE

        networks = _meta_networks()
        for name in variants:
            for report in check_official_files(directory, name, networks)[0]:
                reports.setdefault(report.path, report)  # shared files are checked once
        reports[directory / WHISPER_FILE] = check_whisper_checkpoint(directory / WHISPER_FILE)
    for path in files:
        print(f"{path}: FAILED - file not found" if path in missing else reports[path].summary())
    failed = len(missing) + sum(not report.ok for path, report in reports.items() if path not in missing)
    print(f"{len(files) - failed} of {len(files)} files OK" + (f", {failed} with problems" if failed else "")
          + (f" ({len(missing)} not found)" if missing else ""))
    return 1 if failed else 0
