"""The Kubernetes manifests (deploy/k8s) and the image (deploy/docker/Dockerfile) against the real
binaries: every manifest parses and is listed, every flag they pass exists, the ports agree, the
image copies binaries the build makes, and the processes started with the manifests' own
arguments (host names, paths and ports mapped to this machine) form a cluster that answers."""
import json
import os
import pathlib
import re
import shutil
import socket
import subprocess
import time

import pytest
import yaml

from conftest import BIN

ROOT = pathlib.Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy/k8s"
OURS = {"ac-router", "ac-worker", "ac-scheduler", "acctl", "acq", "acbench"}


def docs():
    out = {}
    for f in sorted(K8S.glob("*.yaml")):
        out[f.name] = [d for d in yaml.safe_load_all(f.read_text()) if d]
    return out


def containers(kind=None):
    for name, ds in docs().items():
        for d in ds:
            if d.get("kind") in ("Deployment", "StatefulSet") and (kind is None or d["metadata"]["name"] == kind):
                for c in d["spec"]["template"]["spec"]["containers"]:
                    yield d, c


def container(name):
    return next(c for d, c in containers(name))


def flags(args):
    return [a.split("=")[0] for a in args if a.startswith("--")]


def help_text(binary):
    r = subprocess.run([str(BIN / binary), "--help"], capture_output=True, text=True, timeout=30)
    return r.stdout + r.stderr


def test_every_manifest_parses_and_is_listed():
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kust["resources"])
    files = {f.name for f in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == files
    kinds = {d["kind"] for ds in docs().values() for d in ds}
    assert {"Deployment", "StatefulSet", "Service", "PersistentVolumeClaim", "Namespace"} <= kinds


def test_every_flag_the_manifests_pass_exists():
    seen = set()
    for d, c in containers():
        cmd = c.get("command", [None])[0]
        if cmd in OURS:
            h = help_text(cmd)
            for f in flags(c.get("args", [])):
                assert re.search(re.escape(f) + r"\b", h), f"{d['metadata']['name']}: {cmd} has no {f}"
            seen.add(cmd)
        probe = c.get("readinessProbe", {}).get("exec", {}).get("command", [])
        if probe and probe[0] in OURS:
            h = help_text(probe[0])
            assert probe[1] in h
            for f in flags(probe):
                assert f in h, f"{probe[0]} has no {f}"
    assert {"ac-router", "ac-worker", "ac-scheduler"} <= seen


def arg(args, name):
    return args[args.index(name) + 1]


def test_ports_agree():
    router, worker = container("router"), container("worker")
    port = int(arg(router["args"], "--listen").rsplit(":", 1)[1])
    svc = next(d for ds in docs().values() for d in ds if d["kind"] == "Service" and d["metadata"]["name"] == "router")
    assert svc["spec"]["ports"][0]["port"] == port == router["ports"][0]["containerPort"]
    wport = int(arg(worker["args"], "--listen").rsplit(":", 1)[1])
    assert arg(worker["args"], "--advertise").endswith(f":{wport}") and worker["ports"][0]["containerPort"] == wport
    assert worker["readinessProbe"]["tcpSocket"]["port"] == wport
    redis = next(d for ds in docs().values() for d in ds if d["kind"] == "Service" and d["metadata"]["name"] == "redis")
    for _, c in containers():
        if "--redis" in c.get("args", []):
            assert arg(c["args"], "--redis") == f"redis:{redis['spec']['ports'][0]['port']}"


def test_the_image_copies_binaries_the_build_makes():
    df = (ROOT / "deploy/docker/Dockerfile").read_text()
    copied = set(re.findall(r"/build/bin/([\w-]+)", df))
    built = {f.name for f in BIN.iterdir() if f.is_file() and os.access(f, os.X_OK)}
    assert copied and copied <= built, copied - built
    for _, c in containers():
        cmd = c.get("command", [None])[0]
        if cmd and cmd != "redis-server" and c["image"] == "agentcompress":
            assert cmd in copied


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def localize(args, env, ports, zoo):
    """The manifest's arguments on this machine: $(VAR) from env, service names and ports mapped."""
    out = []
    for a in args:
        a = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a)
        a = a.replace("redis:6379", f"127.0.0.1:{ports['redis']}").replace("0.0.0.0", "127.0.0.1")
        a = re.sub(r":(5555|7000)$", lambda m: f":{ports[m.group(1)]}", a)
        out.append(str(zoo) if a == "/zoo" else a)
    return out


@pytest.mark.skipif(not shutil.which("redis-server"), reason="redis-server is not installed")
def test_the_manifests_arguments_make_a_working_cluster(stories_zoo, tmp_path):
    ports = {"redis": free_port(), "5555": free_port(), "7000": free_port()}
    env = {"POD_NAME": "worker-0", "POD_IP": "127.0.0.1"}
    procs = []
    try:
        procs.append(subprocess.Popen(["redis-server", "--port", str(ports["redis"]), "--save", "", "--appendonly",
                                       "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(0.3)
        for name in ("scheduler", "worker", "router"):
            c = container(name)
            e = dict(env, POD_NAME=f"{name}-0")
            args = localize(c["args"], e, ports, stories_zoo)
            if name == "worker":  # the manifest's sizes are for a node, not for a test
                args[args.index("--threads") + 1] = "1"
            log = open(tmp_path / f"{name}.log", "w")
            procs.append(subprocess.Popen([str(BIN / c["command"][0]), *args], stdout=log, stderr=log,
                                          env=dict(os.environ, AC_PREFIX="ac:")))
        router = f"tcp://127.0.0.1:{ports['5555']}"
        probe = localize(container("router")["readinessProbe"]["exec"]["command"], env, ports, stories_zoo)
        deadline = time.time() + 60
        r = None
        while time.time() < deadline:
            r = subprocess.run([str(BIN / probe[0]), *probe[1:]], capture_output=True, text=True, timeout=30)
            if r.returncode == 0:
                break
            time.sleep(0.5)
        assert r is not None and r.returncode == 0, r.stderr
        while time.time() < deadline:
            r = subprocess.run([str(BIN / "acctl"), "submit", "-p", "Once upon a time", "-n", "8", "--router", router,
                                "--json"], capture_output=True, text=True, timeout=60)
            if r.returncode == 0:
                break
            time.sleep(0.5)
        assert r.returncode == 0, r.stderr + "".join(p.read_text() for p in tmp_path.glob("*.log"))
        res = json.loads(r.stdout)
        assert res["worker"] == "worker-0" and res["completion_tokens"] == 8, res
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=40)
            except subprocess.TimeoutExpired:
                p.kill()


# --- the GPU overlay (deploy/k8s-gpu) and image (deploy/docker/Dockerfile.cuda) -----------------
# Nothing here runs a GPU: these check that what the manifests ask of the binaries exists, that
# every GPU container asks Kubernetes for the GPUs its processes use, and that the group launcher
# starts the ranks it should.

K8S_GPU = ROOT / "deploy/k8s-gpu"


def gpu_containers():
    for d in yaml.safe_load_all((K8S_GPU / "workers-gpu.yaml").read_text()):
        if d and d.get("kind") == "StatefulSet":
            for c in d["spec"]["template"]["spec"]["containers"]:
                yield d, c


def test_gpu_overlay_lists_its_files_and_patches_what_exists():
    kust = yaml.safe_load((K8S_GPU / "kustomization.yaml").read_text())
    assert "../k8s" in kust["resources"]
    assert {f.name for f in K8S_GPU.glob("*.yaml")} - {"kustomization.yaml"} <= set(kust["resources"])
    names = {d["metadata"]["name"] for _, ds in docs().items() for d in ds if d["kind"] == "StatefulSet"}
    for p in kust["patches"]:
        assert p["target"]["name"] in names
    assert kust["images"][0]["name"] == "agentcompress" and kust["images"][0]["newName"] == "agentcompress-cuda"


def test_gpu_workers_flags_exist_and_gpus_match_the_group():
    h = help_text("ac-worker")
    seen = 0
    for d, c in gpu_containers():
        cmd = c["command"]
        assert cmd[0] in ("ac-worker", "ac-tp-worker")
        for f in flags(c["args"]):
            assert re.search(re.escape(f) + r"\b", h), f"{d['metadata']['name']}: ac-worker has no {f}"
        assert arg(c["args"], "--backend") == "cuda"
        ranks = int(cmd[1]) if cmd[0] == "ac-tp-worker" else 1
        assert c["resources"]["limits"]["nvidia.com/gpu"] == ranks
        # The launcher names the group's meeting file and each rank's GPU itself.
        if cmd[0] == "ac-tp-worker":
            assert "--tp-id" not in c["args"] and "--gpu" not in c["args"] and "--tp" not in c["args"]
        seen += 1
    assert seen == 2


def test_gpu_image_copies_what_the_builds_make():
    df = (ROOT / "deploy/docker/Dockerfile.cuda").read_text()
    copied = set(re.findall(r"/build/bin/([\w-]+)", df))
    built = {f.name for f in BIN.iterdir() if f.is_file() and os.access(f, os.X_OK)}
    cuda_only = {"ac-gpu-membw"}
    assert copied - cuda_only <= built, copied - built
    cmake = (ROOT / "CMakeLists.txt").read_text()
    for b in cuda_only & copied:
        assert f"add_executable({b}" in cmake
    assert "-DAC_CUDA=ON" in df and "deploy/docker/ac-tp-worker" in df


def test_tp_launcher_starts_one_process_per_gpu_with_one_meeting_file(tmp_path):
    fake = tmp_path / "ac-worker"
    fake.write_text('#!/bin/sh\necho "$*" >> "$LOG"\n')
    fake.chmod(0o755)
    log = tmp_path / "calls"
    env = dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}", LOG=str(log), TMPDIR=str(tmp_path))
    r = subprocess.run(["sh", str(ROOT / "deploy/docker/ac-tp-worker"), "4", "--zoo", "/zoo", "--backend", "cuda"],
                       env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    time.sleep(0.2)  # the followers ran in the background
    calls = [c.split() for c in log.read_text().splitlines()]
    assert len(calls) == 4

    def opt(c, name):
        return c[c.index(name) + 1] if name in c else None
    ranks = sorted(int(opt(c, "--tp-rank") or 0) for c in calls)
    assert ranks == [0, 1, 2, 3]
    for c in calls:
        assert opt(c, "--gpu") == (opt(c, "--tp-rank") or "0") and opt(c, "--tp") == "4"
        assert c[:4] == ["--zoo", "/zoo", "--backend", "cuda"]
    ids = {opt(c, "--tp-id") for c in calls}
    assert len(ids) == 1 and ids.pop().startswith(str(tmp_path))
