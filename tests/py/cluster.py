"""Test helpers for the cluster: the protocol compiled for Python from our .proto (by protoc, from
grpcio-tools), an independent ZeroMQ client, and a local cluster started with deploy/local/cluster.sh."""
import os
import pathlib
import random
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import zmq

from conftest import BIN

ROOT = pathlib.Path(__file__).resolve().parents[2]
_pb = None


def pb():
    """agentcompress_pb2, generated from proto/agentcompress.proto into a temporary directory."""
    global _pb
    if _pb is None:
        out = tempfile.mkdtemp(prefix="acpb-")
        from grpc_tools import protoc
        rc = protoc.main(["protoc", f"-I{ROOT / 'proto'}", f"--python_out={out}", "agentcompress.proto"])
        assert rc == 0, "protoc failed on proto/agentcompress.proto"
        sys.path.insert(0, out)
        import agentcompress_pb2
        _pb = agentcompress_pb2
    return _pb


def free_base(span=40):
    """A base port with `span` free ports above it."""
    for _ in range(200):
        base = random.randrange(20000, 60000)
        ok = True
        for p in range(base, base + span):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free port range")


class Cluster:
    def __init__(self, zoo, workers=2, variants=None, slots=4, ctx=512, routers=1, threads=1, controller=None, tp=1):
        self.zoo, self.workers, self.variants, self.controller = zoo, workers, variants, controller
        self.slots, self.ctx, self.routers, self.threads, self.tp = slots, ctx, routers, threads, tp
        self.port = free_base()
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="accl-")) / "run"
        self.redis = f"127.0.0.1:{self.port}"
        self.router = f"tcp://127.0.0.1:{self.port + 1}"
        self.env = dict(os.environ, AC_REDIS=self.redis, AC_ROUTER=self.router, AC_PREFIX="ac:", AC_BIN=str(BIN))

    def start(self):
        args = ["bash", str(ROOT / "deploy/local/cluster.sh"), "start", "--zoo", str(self.zoo), "--workers",
                str(self.workers), "--dir", str(self.dir), "--port", str(self.port), "--slots", str(self.slots),
                "--ctx", str(self.ctx), "--routers", str(self.routers), "--threads", str(self.threads), "--tp", str(self.tp)]
        if self.variants:
            args += ["--variants", ",".join(self.variants)]
        if self.controller:
            args += ["--controller", str(self.controller)]
        r = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            logs = ""
            failed = pathlib.Path(str(self.dir) + ".failed")
            for f in sorted(failed.glob("*.log")):
                logs += f"--- {f.name}\n{f.read_text()[-3000:]}\n"
            raise AssertionError(f"cluster start failed: {r.stderr}\n{logs}")
        return self

    def stop(self):
        subprocess.run(["bash", str(ROOT / "deploy/local/cluster.sh"), "stop", "--dir", str(self.dir)],
                       env=self.env, capture_output=True, timeout=60)

    def log(self, name):
        p = self.dir / f"{name}.log"
        return p.read_text() if p.exists() else ""

    def pid(self, name):
        return int((self.dir / f"pid.{name}").read_text())

    def acctl(self, *args, check=True, timeout=60):
        r = subprocess.run([str(BIN / "acctl"), *map(str, args)], env=self.env, capture_output=True, text=True,
                           timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"acctl {' '.join(map(str, args))} failed ({r.returncode}): {r.stderr}")
        return r

    def redis_cli(self, *args):
        return subprocess.run(["redis-cli", "-p", str(self.port), *map(str, args)], capture_output=True, text=True,
                              timeout=10).stdout

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class Client:
    """An independent client: a DEALER socket speaking Envelopes to the router."""

    def __init__(self, endpoint, ctx=None):
        self.ctx = ctx or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    def close(self):
        self.sock.close()

    def send_task(self, **fields):
        P = pb()
        fields.setdefault("id", uuid.uuid4().hex)
        sampling = fields.pop("sampling", None)
        messages = fields.pop("messages", None)
        t = P.Task(**fields)
        if sampling:
            t.sampling.CopyFrom(P.Sampling(**sampling))
        for role, content in messages or []:
            t.messages.add(role=role, content=content)
        self.sock.send(P.Envelope(version=1, task=t).SerializeToString())
        return t.id

    def send_raw(self, *frames):
        self.sock.send_multipart(list(frames))

    def recv(self, timeout_s=60):
        """One Envelope, or raises TimeoutError."""
        if not self.sock.poll(int(timeout_s * 1000)):
            raise TimeoutError("no reply")
        env = pb().Envelope()
        env.ParseFromString(self.sock.recv())
        return env

    def collect(self, ids, timeout_s=120):
        """Reads until every id in `ids` has its Result or Error; returns {id: (final, chunks_text)}."""
        ids = set(ids)
        done, text = {}, {}
        end = time.time() + timeout_s
        while ids - done.keys():
            env = self.recv(max(0.1, end - time.time()))
            kind = env.WhichOneof("body")
            if kind == "chunk":
                text[env.chunk.task_id] = text.get(env.chunk.task_id, "") + env.chunk.text
            elif kind in ("result", "error"):
                msg = getattr(env, kind)
                assert msg.task_id not in done, f"two final replies for {msg.task_id}"
                done[msg.task_id] = (env, text.get(msg.task_id, ""))
        return done


def acq_run(model, prompt, n, chat=False):
    args = [str(BIN / "acq"), "run", str(model), "-p", prompt, "-n", str(n)]
    if chat:
        args.append("--chat")
    r = subprocess.run(args, capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout.decode()
