"""What a job on a multi-node Ray cluster may not assume: that every node sees the driver's disk.

Inputs are read and outputs written by actors on whichever node Ray places them, so a local path
(relative, absolute or file://) names a different (or missing) file on every other node, and a
memory:// URI lives in a single process. When the job joined an existing cluster whose work can run
off the driver's node, such paths are refused up front, unless the user declares with --shared-fs that
local paths are one shared filesystem mounted at the same place on every node (NFS, EFS, a PVC).
"""
from __future__ import annotations

from pipeline import storage
from pipeline.storage import PROCESS_LOCAL_SCHEMES


def work_runs_off_this_node() -> bool:
    """True when actors of the connected cluster may run on another node than this driver's:
    more than one node is alive, or this node offers no CPU and no GPU (a `num-cpus: 0` head whose
    workers the autoscaler will add later)."""
    import ray

    nodes = [node for node in ray.nodes() if node["Alive"]]
    if len(nodes) > 1:
        return True
    here = ray.get_runtime_context().get_node_id()
    resources = next((node["Resources"] for node in nodes if node["NodeID"] == here), {})
    return not (resources.get("CPU") or resources.get("GPU"))


def node_local_paths(named_uris: list[tuple[str, str]], *, shared_fs: bool) -> list[str]:
    """One message per (name, uri) that not every node can reach; [] when all can."""
    problems = []
    for name, uri in named_uris:
        scheme = storage.scheme_of(uri)
        if scheme in PROCESS_LOCAL_SCHEMES:
            problems.append(f"{name}: {uri} exists only inside one process; use an object store URI (s3://, gs://, az://)")
        elif scheme == "file" and not shared_fs:
            problems.append(f"{name}: local path {uri} is not on the other nodes of this multi-node cluster; use an "
                            "object store URI (s3://, gs://, az://), or pass --shared-fs if it is on a filesystem "
                            "mounted at the same path on every node")
        elif scheme == "file" and not storage.local_path(uri).is_absolute():
            problems.append(f"{name}: relative path {uri} means a different folder on each node; give an absolute path")
    return problems


def refuse_node_local_paths(specs, settings, *, shared_fs: bool) -> list[str]:
    """node_local_paths for the job's output root and every row's inputs (the manifest itself is read
    by the driver alone, so it may be local). `specs` are the manifest's ClipSpecs, `settings` the
    job's JobSettings."""
    from pipeline.rows import row_label

    named = [("--output", settings.output)]
    for spec in specs:
        named += [(f"{row_label(spec)}: {field}", uri) for field, uri in
                  (("image", spec.image), ("audio", spec.audio), ("pose", spec.pose)) if uri]
    return node_local_paths(named, shared_fs=shared_fs)
