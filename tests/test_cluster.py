"""cluster/: the deployment files parse and satisfy KubeRay's and the Ray cluster launcher's schemas, and
the batch job runs on a real two-node Ray cluster (loopback), with rendering only on the GPU node and
surviving the loss of that node."""
from __future__ import annotations

import copy
import gzip
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jsonschema
import psutil
import pytest
import typer.main
import yaml

REPO = Path(__file__).resolve().parent.parent
CLUSTER = REPO / "cluster"
KUBERAY_CRD = Path(__file__).parent / "data" / "kuberay" / "ray.io_rayjobs.yaml.gz"
RAY_BIN = Path(sys.executable).parent / "ray"


# ---------------------------------------------------------------- the YAML files


def load_yaml(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def strict(schema):
    """A copy of a CRD schema that also rejects unknown fields, as `kubectl apply` (strict field
    validation) does; plain JSON-schema validation would let a misspelt key through."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict(value) for key, value in schema.items()}
    if ("properties" in schema and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def rayjob_validator():
    crd = yaml.safe_load(gzip.decompress(KUBERAY_CRD.read_bytes()))
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema = strict(version["schema"]["openAPIV3Schema"])
    return jsonschema.Draft7Validator(schema)


def schema_errors(validator, document) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


def test_rayjob_matches_the_kuberay_crd(rayjob_validator):
    rayjob = load_yaml("rayjob.yaml")
    assert schema_errors(rayjob_validator, rayjob) == []

    # The validator can fail: a misspelt field and a wrong type are both caught.
    broken = copy.deepcopy(rayjob)
    broken["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["rayStartParam"] = {"num-cpus": "1"}
    broken["spec"]["rayClusterSpec"]["workerGroupSpecs"][1]["maxReplicas"] = "sixteen"
    errors = schema_errors(rayjob_validator, broken)
    assert any("rayStartParam'" in e for e in errors) and any("maxReplicas" in e for e in errors), errors


def test_rayjob_has_cpu_and_gpu_groups_and_no_inline_secrets():
    rayjob = load_yaml("rayjob.yaml")
    assert rayjob["apiVersion"] == "ray.io/v1" and rayjob["kind"] == "RayJob"
    assert rayjob["metadata"]["name"]
    spec = rayjob["spec"]
    cluster = spec["rayClusterSpec"]
    assert cluster["headGroupSpec"]["template"]["spec"]["containers"]
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    for group in groups.values():
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]
        assert group["template"]["spec"]["containers"][0]["image"]
    gpu_container = groups["gpu"]["template"]["spec"]["containers"][0]
    assert gpu_container["resources"]["limits"]["nvidia.com/gpu"] == groups["gpu"]["rayStartParams"]["num-gpus"]
    assert "nvidia.com/gpu" not in json.dumps(groups["cpu"])
    # The head runs the driver only, so no pipeline actor competes with it.
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"

    # Credentials come from a Secret, never as literal values in the manifest or the runtime env.
    for container in [cluster["headGroupSpec"]["template"]["spec"]["containers"][0]] + [
            g["template"]["spec"]["containers"][0] for g in groups.values()]:
        assert container["envFrom"] == [{"secretRef": {"name": "echomimic2-s3"}}]
        assert not any("value" in var for var in container.get("env", []))
    assert "AWS_SECRET" not in spec["runtimeEnvYAML"]
    # The job's env vars are the same as those `ray job submit --runtime-env` would use.
    assert yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"] == load_yaml("runtime_env.yaml")["env_vars"]


def parse_run_command(argv: list[str]) -> dict:
    """Parse `cli.py run ...` arguments with the real CLI definition (without running it)."""
    sys.path.insert(0, str(REPO))
    try:
        import cli
    finally:
        sys.path.remove(str(REPO))
    run = typer.main.get_command(cli.app).commands["run"]
    return run.make_context("run", list(argv)).params


def test_rayjob_entrypoint_is_a_valid_run_command_on_object_storage():
    argv = shlex.split(load_yaml("rayjob.yaml")["spec"]["entrypoint"])
    assert argv[:3] == ["python", "/app/cli.py", "run"]
    params = parse_run_command(argv[3:])
    assert params["manifest"].startswith("s3://") and params["output"].startswith("s3://")
    assert params["address"] == "auto"


def test_readme_submit_command_is_a_valid_run_command():
    readme = (CLUSTER / "README.md").read_text()
    submit = readme[readme.index("\nray job submit") + 1:]
    submit = submit[:submit.index("```")].replace("\\\n", " ")
    argv = shlex.split(submit)
    assert "--runtime-env" in argv and argv[argv.index("--runtime-env") + 1] == "cluster/runtime_env.yaml"
    run_args = argv[argv.index("--") + 1:]
    assert run_args[:3] == ["python", "cli.py", "run"]
    params = parse_run_command(run_args[3:])
    assert params["manifest"].startswith("s3://") and params["output"].startswith("s3://")


def test_ray_up_config_passes_the_cluster_launchers_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = load_yaml("aws.yaml")
    # What `ray up` runs before touching the cloud: merge defaults, check docker, validate the schema
    # shipped in the ray wheel (ray/autoscaler/ray-schema.json) and the node-type bounds.
    validate_config(prepare_config(copy.deepcopy(config)))

    assert config["cluster_name"] and config["provider"]["type"] == "aws" and config["provider"]["region"]
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    for name, node_type in workers.items():
        assert node_type["node_config"]["InstanceType"], name
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"], name
    gpu_types = [t for t in workers.values() if t["resources"].get("GPU", 0) > 0]
    cpu_types = [t for t in workers.values() if not t["resources"].get("GPU")]
    assert gpu_types and cpu_types
    assert sum(t["max_workers"] for t in workers.values()) <= config["max_workers"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}

    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu_worker"]["min_worker"] = 1
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))


def test_dockerfile_copies_existing_paths_and_installs_cuda_torch_and_ffmpeg():
    lines = (CLUSTER / "Dockerfile").read_text().splitlines()
    copied = [part for line in lines if line.startswith("COPY ") for part in line.split()[1:-1]]
    missing = [path for path in copied if not (REPO / path).exists()]
    assert copied and not missing, missing
    text = "\n".join(lines)
    # The same torch as requirements.txt, checked for CUDA at build time; ffmpeg for the assembler.
    pinned = next(line for line in (REPO / "requirements.txt").read_text().splitlines() if line.startswith("torch=="))
    assert f'pip install "{pinned}"' in text and "torch.version.cuda" in text
    assert "ffmpeg" in text


def test_runtime_env_is_accepted_by_ray():
    from ray.runtime_env import RuntimeEnv

    runtime_env = load_yaml("runtime_env.yaml")
    RuntimeEnv(**runtime_env)  # raises on unknown or malformed fields
    assert runtime_env["env_vars"]["HF_HUB_OFFLINE"] == "1"
    assert not any("SECRET" in key or "TOKEN" in key for key in runtime_env["env_vars"])


# ---------------------------------------------------------------- paths on a multi-node cluster


def test_node_local_paths_are_refused_unless_on_a_shared_filesystem():
    from pipeline.multinode import node_local_paths

    uris = [("--output", "s3://bucket/out"), ("row 0 (clip 'a'): image", "/data/a.png"),
            ("row 1 (clip 'b'): audio", "file:///data/b.wav"), ("row 2 (clip 'c'): pose", "memory://x/c.npz"),
            ("--output", "renders/out"), ("row 3 (clip 'd'): audio", "gs://bucket/d.wav")]
    refused = node_local_paths(uris, shared_fs=False)
    assert [line.split(":")[0] for line in refused] == [
        "row 0 (clip 'a')", "row 1 (clip 'b')", "row 2 (clip 'c')", "--output"]
    assert "/data/a.png is not on the other nodes" in refused[0] and "--shared-fs" in refused[0]
    assert "exists only inside one process" in refused[2]

    shared = node_local_paths(uris, shared_fs=True)
    assert len(shared) == 2
    assert "memory://x/c.npz" in shared[0] and "relative path renders/out" in shared[1]


def test_a_head_without_cpus_or_gpus_counts_as_multi_node():
    """A lone `num-cpus: 0` head (workers scaled to zero) runs nothing itself: work will run elsewhere."""
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    env.pop("RAY_ADDRESS", None)
    with tempfile.TemporaryDirectory(prefix="rc", dir="/tmp") as temp_dir:  # short: AF_UNIX socket paths
        script = (
            "import ray\n"
            "from pipeline.multinode import work_runs_off_this_node\n"
            "for cpus in (0, 1):\n"
            f"    ray.init(num_cpus=cpus, num_gpus=0, include_dashboard=False, _temp_dir={temp_dir!r},\n"
            "             object_store_memory=80_000_000, logging_level='ERROR')\n"
            "    print('cpus', cpus, 'off-node', work_runs_off_this_node())\n"
            "    ray.shutdown()\n")
        out = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    assert [line for line in out.stdout.splitlines() if line.startswith("cpus")] == [
        "cpus 0 off-node True", "cpus 1 off-node False"]


# ---------------------------------------------------------------- a two-node cluster on loopback


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LoopbackRayCluster:
    """A CPU-only head and a worker with 2 logical GPUs and a `gpu_node` resource, both on 127.0.0.2.

    Each node is one `ray start --block` process of ours: terminating it stops exactly that node's Ray
    processes (plain `ray stop` would stop every Ray on the machine, other people's too). Every port is
    chosen free, so this runs beside other Ray instances. Node processes get the environment the test
    has (S3 endpoint, credentials), as a real node gets its own: workers inherit it from the raylet.
    """

    IP = "127.0.0.2"

    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self.address = f"{self.IP}:{self.port}"
        # Auth mode is fixed for every process (nodes, drivers): mixing modes breaks connections.
        self.env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
        self.env.pop("RAY_ADDRESS", None)
        # `python` is this venv's on every node, as the image's is on a real one (job entrypoints say `python`).
        self.env["PATH"] = f"{RAY_BIN.parent}{os.pathsep}{self.env.get('PATH', '')}"
        self.dashboard_port = free_port()
        self.dashboard_url = f"http://127.0.0.1:{self.dashboard_port}"  # the Ray Jobs API
        self.head: subprocess.Popen | None = None
        self.gpu_node: subprocess.Popen | None = None

    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        ports = [f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
                 f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                 f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}"]
        temp_dir = self.root / name  # per node, short: Ray's socket paths must stay under 108 bytes
        log = open(self.root / f"{name}.log", "ab")
        return subprocess.Popen(
            [str(RAY_BIN), "start", "--block", f"--node-ip-address={self.IP}", f"--temp-dir={temp_dir}",
             "--object-store-memory=100000000", "--disable-usage-stats", *ports, *args],
            env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def start(self) -> None:
        self.head = self._start("head", [
            "--head", f"--port={self.port}", f"--ray-client-server-port={free_port()}",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}", "--num-cpus=1", "--num-gpus=0"])
        self._wait(lambda: self._port_open(self.port), "the head's GCS port")
        self.start_gpu_node()

    def start_gpu_node(self) -> None:
        self.gpu_node = self._start("gpu", [
            f"--address={self.address}", "--num-cpus=1", "--num-gpus=2", '--resources={"gpu_node": 1}'])
        self._wait(lambda: self.alive_nodes() == 2, "two alive nodes")

    def lose_gpu_node(self) -> None:
        """Node loss: its raylet dies without warning (SIGKILL); `ray start --block` then stops the rest."""
        node = psutil.Process(self.gpu_node.pid)
        raylets = [p for p in node.children(recursive=True) if p.name() == "raylet"]
        assert raylets, "the GPU node has no raylet"
        for raylet in raylets:
            raylet.kill()
        self.gpu_node.wait(60)
        self.gpu_node = None
        self._wait(lambda: self.alive_nodes() == 1, "the head to notice the lost node")

    def alive_nodes(self) -> int:
        return sum(node["Alive"] for node in self.nodes())

    def nodes(self) -> list[dict]:
        """`ray.nodes()` as seen from a separate driver, so this test process never joins the cluster."""
        out = subprocess.run(
            [sys.executable, "-c", f"import json, ray; ray.init(address={self.address!r}, logging_level='ERROR', log_to_driver=False); "
             "print('NODES', json.dumps([dict(NodeID=n['NodeID'], Alive=n['Alive'], Resources=n['Resources']) "
             "for n in ray.nodes()]))"],
            env=self.env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-3000:]
        listing = next(line for line in out.stdout.splitlines() if line.startswith("NODES "))
        return json.loads(listing[len("NODES "):])

    def gpu_node_id(self) -> str:
        return next(n["NodeID"] for n in self.nodes() if n["Alive"] and n["Resources"].get("gpu_node"))

    def head_node_id(self) -> str:
        return next(n["NodeID"] for n in self.nodes() if n["Resources"].get("node:__internal_head__"))

    def stop(self) -> None:
        for node in (self.gpu_node, self.head):
            if node is not None and node.poll() is None:
                node.terminate()
        for node in (self.gpu_node, self.head):
            if node is None:
                continue
            try:
                node.wait(60)
            except subprocess.TimeoutExpired:  # its children are ours alone: stop them by pid
                for child in psutil.Process(node.pid).children(recursive=True):
                    child.kill()
                node.kill()
                node.wait(10)

    def _port_open(self, port: int) -> bool:
        with socket.socket() as s:
            return s.connect_ex((self.IP, port)) == 0

    def _wait(self, condition, what: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, node in (("head", self.head), ("gpu", self.gpu_node)):
                if node is not None and node.poll() is not None:
                    raise RuntimeError(f"ray start ({name}) exited with {node.returncode}; see {self.root}/{name}.log")
            if condition():
                return
            time.sleep(0.5)
        raise TimeoutError(f"waited {timeout} s for {what}; logs in {self.root}")


@pytest.fixture(scope="module")
def loopback_cluster(s3_endpoint):
    with tempfile.TemporaryDirectory(prefix="rc", dir="/tmp") as root:
        cluster = LoopbackRayCluster(Path(root))
        try:
            cluster.start()
            yield cluster
        finally:
            cluster.stop()


def run_on_cluster(cluster: LoopbackRayCluster, code: str) -> str:
    """Run a driver script against the cluster in its own process; return its last stdout line."""
    out = subprocess.run([sys.executable, "-c", f"import ray; ray.init(address={cluster.address!r}); " + code],
                         env=cluster.env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


def test_gpu_work_can_only_land_on_the_gpu_node(loopback_cluster):
    placed = run_on_cluster(loopback_cluster, (
        "f = ray.remote(num_gpus=1, num_cpus=0)(lambda: ray.get_runtime_context().get_node_id()); "
        "print(sorted(set(ray.get([f.remote() for _ in range(4)]))))"))
    assert placed == str([loopback_cluster.gpu_node_id()])


# ---------------------------------------------------------------- the job on the two-node cluster

FPS = 12.0
SIZE = 128
SEGMENT_ARGS = ["--segment-frames", "8", "--overlap-frames", "2"]  # several segments per clip


def write_inputs(root: str, clips: dict[str, float]) -> str:
    """A drawn figure and a voiced tone per clip, and a manifest with paths relative to its folder
    (so they resolve to URIs under root); returns the manifest's URI."""
    import io

    import numpy as np
    import pandas as pd
    import soundfile
    from PIL import Image, ImageDraw

    from pipeline import storage

    rows = []
    for index, (clip_id, seconds) in enumerate(clips.items()):
        image = Image.new("RGB", (160, 200), (210, 215, 230))
        draw = ImageDraw.Draw(image)
        draw.ellipse((55, 30, 105, 90), fill=(230, 190, 160))
        draw.rectangle((30, 100, 130, 200), fill=(40, 80 + 40 * index, 120))
        png = io.BytesIO()
        image.save(png, format="PNG")
        t = np.arange(int(seconds * 16_000)) / 16_000
        voice = 0.3 * np.sin(2 * np.pi * (180 + 40 * index) * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
        wav = io.BytesIO()
        soundfile.write(wav, voice.astype(np.float32), 16_000, format="WAV", subtype="PCM_16")
        storage.write_atomic(storage.join(root, "inputs", f"{clip_id}.png"), png.getvalue())
        storage.write_atomic(storage.join(root, "inputs", f"{clip_id}.wav"), wav.getvalue())
        rows.append(dict(clip_id=clip_id, image=f"inputs/{clip_id}.png", audio=f"inputs/{clip_id}.wav",
                         fps=FPS, width=SIZE, height=SIZE))
    manifest = io.BytesIO()
    pd.DataFrame(rows).to_parquet(manifest, index=False)
    uri = storage.join(root, "manifest.parquet")
    storage.write_atomic(uri, manifest.getvalue())
    return uri


def cli_run(cluster: LoopbackRayCluster, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """`cli.py run ... --address <cluster>` as a user types it, in its own process."""
    return subprocess.run([sys.executable, "cli.py", "run", *args, "--address", cluster.address],
                          cwd=REPO, env=cluster.env, capture_output=True, text=True, timeout=timeout)


def start_cli_run(cluster: LoopbackRayCluster, *args: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "cli.py", "run", *args, "--address", cluster.address],
                            cwd=REPO, env=cluster.env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)


def segment_renders(output: str) -> list[dict]:
    """The ledger's segment render records, read fresh (s3fs caches listings per process)."""
    from pipeline import storage
    from pipeline.ledger import Ledger

    storage.url_to_fs(output)[0].invalidate_cache()
    return Ledger(output).segment_records()


def test_local_paths_are_refused_up_front_on_a_multi_node_cluster(loopback_cluster, s3_bucket, tmp_path):
    manifest = write_inputs(str(tmp_path), {"local": 1.0})  # a local manifest is fine: only the driver reads it
    output = f"not-shared-{tmp_path.name}"  # relative: a different folder on every node
    run = cli_run(loopback_cluster, manifest, "--output", output)
    said = " ".join(run.stdout.split())  # rich wraps long lines
    assert run.returncode == 2, said + run.stderr[-3000:]
    assert f"--output: local path {output} is not on the other nodes" in said
    assert f"row 0 (clip 'local'): image: local path {tmp_path}/inputs/local.png" in said
    assert f"row 0 (clip 'local'): audio: local path {tmp_path}/inputs/local.wav" in said
    assert "--shared-fs" in said
    assert not (REPO / output).exists()  # refused before anything was written


@pytest.mark.slow
def test_job_renders_every_clip_on_the_gpu_node(loopback_cluster, s3_bucket):
    from pipeline.results import read_results

    manifest = write_inputs(s3_bucket, {"alpha": 1.5, "beta": 2.0})
    output = f"{s3_bucket}/renders"
    started = time.monotonic()
    run = cli_run(loopback_cluster, manifest, "--output", output, *SEGMENT_ARGS)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    print(f"job on the two-node cluster: {time.monotonic() - started:.1f} s")

    results = read_results(output)
    assert sorted(results["clip_id"]) == ["alpha", "beta"] and set(results["status"]) == {"done"}
    renders = segment_renders(output)
    assert renders and {r["node_id"] for r in renders} == {loopback_cluster.gpu_node_id()}


@pytest.mark.slow
def test_losing_the_gpu_node_mid_job_loses_nothing(loopback_cluster, s3_bucket, tmp_path):
    from pipeline.results import read_results

    manifest = write_inputs(s3_bucket, {"gamma": 3.0, "delta": 3.0})
    output = f"{s3_bucket}/renders"
    job = start_cli_run(loopback_cluster, manifest, "--output", output, *SEGMENT_ARGS, log=tmp_path / "job.log")
    try:
        deadline = time.monotonic() + 600
        while len(segment_renders(output)) < 2:  # some segments finished, most still to come
            assert job.poll() is None, (tmp_path / "job.log").read_text()[-4000:]
            assert time.monotonic() < deadline, "no segment finished in time"
            time.sleep(0.5)
        finished_before_loss = segment_renders(output)
        loopback_cluster.lose_gpu_node()
        loopback_cluster.start_gpu_node()
        exit_code = job.wait(900)
    finally:
        if job.poll() is None:
            job.kill()
        if loopback_cluster.gpu_node is None:  # leave the module's cluster whole for the next test
            loopback_cluster.start_gpu_node()
    log = (tmp_path / "job.log").read_text()
    print(f"first run exit {exit_code}; {len(finished_before_loss)} segments were done before the loss")
    if exit_code != 0:  # the job may give up on clips whose actors died too often: a rerun finishes them
        rerun = cli_run(loopback_cluster, manifest, "--output", output, *SEGMENT_ARGS)
        assert rerun.returncode == 0, log[-3000:] + rerun.stdout[-3000:] + rerun.stderr[-3000:]

    results = read_results(output)
    assert sorted(results["clip_id"]) == ["delta", "gamma"], results
    assert set(results["status"]) <= {"done", "skipped"}, results

    renders = segment_renders(output)
    times_rendered: dict[tuple, int] = {}
    for record in renders:
        key = (record["clip_id"], record["fingerprint"], record["start"], record["stop"])
        times_rendered[key] = times_rendered.get(key, 0) + 1
    twice = {key: n for key, n in times_rendered.items() if n > 1}
    finished = {(r["clip_id"], r["fingerprint"], r["start"], r["stop"]) for r in finished_before_loss}
    # Only the segments the lost node was rendering (one per render actor) may be rendered again;
    # anything recorded as finished before the loss is kept.
    print(f"{len(times_rendered)} segments, {len(renders)} renders, rendered twice: {sorted(twice)}")
    assert not (twice.keys() & finished), (twice, finished)
    assert len(twice) <= 2, twice
    assert loopback_cluster.head_node_id() not in {r["node_id"] for r in renders}


@pytest.mark.slow
def test_gpus_beyond_the_cluster_wait_for_gpu_nodes_to_join(loopback_cluster, s3_bucket, tmp_path):
    """`--gpus N` on a cluster scaled down to its head: the job asks for N GPU actors and renders once
    a GPU node joins (here started by the test, as an autoscaler would)."""
    from pipeline.results import read_results

    manifest = write_inputs(s3_bucket, {"epsilon": 1.0})
    output = f"{s3_bucket}/renders"
    log = tmp_path / "job.log"
    job = None
    try:
        loopback_cluster.lose_gpu_node()
        job = start_cli_run(loopback_cluster, manifest, "--output", output, "--gpus", "2", *SEGMENT_ARGS, log=log)
        deadline = time.monotonic() + 300
        while "adds GPU nodes" not in " ".join(log.read_text().split()):
            assert job.poll() is None and time.monotonic() < deadline, log.read_text()[-4000:]
            time.sleep(0.5)
        time.sleep(5)
        assert job.poll() is None and segment_renders(output) == []  # waiting, not rendering on CPU
        loopback_cluster.start_gpu_node()
        assert job.wait(600) == 0, log.read_text()[-4000:]
    finally:
        if job is not None and job.poll() is None:
            job.kill()
        if loopback_cluster.gpu_node is None:
            loopback_cluster.start_gpu_node()
    assert list(read_results(output)["status"]) == ["done"]
    assert {r["node_id"] for r in segment_renders(output)} == {loopback_cluster.gpu_node_id()}


@pytest.mark.slow
def test_ray_job_submit_with_the_runtime_env_from_cluster_dir(loopback_cluster, s3_bucket):
    """The README's submission: `ray job submit --runtime-env cluster/runtime_env.yaml -- python cli.py
    run s3://… --output s3://…` (no --address: the driver joins the job's cluster through RAY_ADDRESS)."""
    from pipeline.results import read_results

    manifest = write_inputs(s3_bucket, {"zeta": 1.0})
    output = f"{s3_bucket}/renders"
    submit = subprocess.run(
        [str(RAY_BIN), "job", "submit", "--address", loopback_cluster.dashboard_url,
         "--runtime-env", "cluster/runtime_env.yaml", "--",
         "python", "cli.py", "run", manifest, "--output", output, *SEGMENT_ARGS],
        cwd=REPO, env=loopback_cluster.env, capture_output=True, text=True, timeout=900)
    said = submit.stdout[-4000:] + submit.stderr[-4000:]
    assert submit.returncode == 0 and "succeeded" in said, said
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in submit.stdout + submit.stderr  # credentials stay out of logs
    assert list(read_results(output)["status"]) == ["done"], said
    assert {r["node_id"] for r in segment_renders(output)} == {loopback_cluster.gpu_node_id()}
