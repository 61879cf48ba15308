"""The cluster end to end: real redis-server, real router, scheduler and workers on loopback,
started by deploy/local/cluster.sh; an independent Python client (pyzmq + protobuf, code
generated from our .proto by protoc) and acctl. Every answer is checked against `acq run`."""
import itertools
import time

import pytest

from cluster import Client, Cluster, acq_run, pb

PROMPTS = ["Once upon a time", "The little dog", "Lily and Tom went to the park", "One day, a bird", "Sam had a red ball"]
N = 24


@pytest.fixture(scope="module")
def cl(stories_zoo):
    c = Cluster(stories_zoo, workers=3, variants=["full", "int8", "int4"], slots=4, routers=2).start()
    yield c
    c.stop()


@pytest.fixture(scope="module")
def expected(stories_zoo):
    """acq run's greedy text for every (variant, prompt) the tests use."""
    cache = {}

    def get(variant, prompt, n=N):
        key = (variant, prompt, n)
        if key not in cache:
            cache[key] = acq_run(stories_zoo / f"{variant}.gguf", prompt, n)
        return cache[key]
    return get


@pytest.mark.parametrize("variant", [None, "full", "int8", "int4"])
def test_acctl_submit_prints_what_acq_run_prints(cl, expected, variant):
    args = ["submit", "-p", PROMPTS[0], "-n", N] + (["--variant", variant] if variant else [])
    r = cl.acctl(*args)
    # The default policy is "full": the reference variant, which is the biggest file here.
    assert r.stdout == expected(variant or "full", PROMPTS[0])


def test_100_concurrent_tasks_from_an_independent_client(cl, expected):
    P = pb()
    clients = [Client(cl.router) for _ in range(10)]
    try:
        want = {}
        sent = []
        cases = itertools.product(PROMPTS, ["full", "int8", "int4", ""])
        for i, (prompt, variant) in zip(range(100), itertools.cycle(cases)):
            c = clients[i % 10]
            tid = c.send_task(prompt=prompt, max_tokens=N, variant=variant, stream=(i % 2 == 0))
            want[tid] = (variant or "full", prompt, i % 2 == 0)
            sent.append((c, tid))
        got = {}
        for c in clients:
            got.update(c.collect([t for cc, t in sent if cc is c], timeout_s=180))
        assert len(got) == 100
        for tid, (env, streamed) in got.items():
            variant, prompt, stream = want[tid]
            assert env.WhichOneof("body") == "result", env
            res = env.result
            assert res.text == expected(variant, prompt), (variant, prompt)
            assert res.variant == variant and res.requested_variant == variant
            assert res.completion_tokens > 0 and res.prompt_tokens > 0
            if stream:
                assert streamed == res.text
    finally:
        for c in clients:
            c.close()


def error_of(c, timeout_s=20):
    env = c.recv(timeout_s)
    assert env.WhichOneof("body") == "error", env
    return env.error


def test_bad_input_gets_a_clear_error_and_the_router_keeps_serving(cl, expected):
    P = pb()
    c = Client(cl.router)
    try:
        c.send_raw(b"\xff\x00garbage\x13")
        assert error_of(c).code == P.ERR_BAD_MESSAGE
        c.send_raw(P.Task(id="x", prompt="hi").SerializeToString() + b"\xff\xff")  # not an Envelope
        assert error_of(c).code == P.ERR_BAD_MESSAGE
        c.send_raw(P.Envelope(version=99, task=P.Task(id="v", prompt="hi")).SerializeToString())
        assert error_of(c).code == P.ERR_VERSION
        c.send_raw(P.Envelope(version=1).SerializeToString())  # no body
        assert error_of(c).code == P.ERR_BAD_MESSAGE
        c.send_raw(P.Envelope(version=1, task=P.Task(id="big", prompt="a" * (5 << 20))).SerializeToString())
        assert error_of(c).code == P.ERR_TOO_BIG
        c.send_task(id="unk", prompt="hi", variant="int3")
        e = error_of(c)
        assert e.code == P.ERR_UNKNOWN_VARIANT and e.task_id == "unk" and "int3" in e.message
        c.send_task(id="long", prompt="the dog ran. " * 400, max_tokens=4)
        e = error_of(c)
        assert e.code == P.ERR_TOO_LONG and e.task_id == "long"
        assert not e.retriable
        # Still serving, correctly.
        tid = c.send_task(prompt=PROMPTS[1], max_tokens=N)
        env, _ = c.collect([tid])[tid]
        assert env.result.text == expected("full", PROMPTS[1])
    finally:
        c.close()


def test_two_routers_serve_one_pool(cl, expected):
    second = f"tcp://127.0.0.1:{cl.port + 2}"
    clients = [Client(cl.router), Client(second)]
    try:
        ids = [[c.send_task(prompt=p, max_tokens=N, variant="int8") for p in PROMPTS] for c in clients]
        for c, sent in zip(clients, ids):
            got = c.collect(sent)
            for tid, p in zip(sent, PROMPTS):
                assert got[tid][0].result.text == expected("int8", p)
    finally:
        for c in clients:
            c.close()


def test_deadline_and_cancel(cl):
    P = pb()
    c = Client(cl.router)
    try:
        tid = c.send_task(prompt=PROMPTS[0], max_tokens=480, ignore_eos=True, deadline_ms=5)
        env, _ = c.collect([tid], timeout_s=30)[tid]
        assert env.WhichOneof("body") == "error" and env.error.code == P.ERR_DEADLINE, env
        tid = c.send_task(prompt=PROMPTS[0], max_tokens=480, ignore_eos=True, stream=True)
        first = c.recv(30)
        assert first.WhichOneof("body") == "chunk" and first.chunk.task_id == tid
        c.sock.send(P.Envelope(version=1, cancel=P.Cancel(task_id=tid)).SerializeToString())
        env, _ = c.collect([tid], timeout_s=30)[tid]
        assert env.WhichOneof("body") == "error" and env.error.code == P.ERR_CANCELLED, env
    finally:
        c.close()


def test_no_worker_times_out_and_a_full_queue_says_overloaded(cl, expected):
    P = pb()
    c = Client(cl.router)
    try:
        for w in ("w0", "w1", "w2"):
            cl.acctl("drain", w)
        cl.acctl("policy", "set", "router.queue_timeout_ms", "500")
        cl.acctl("policy", "set", "router.max_queue", "2")
        time.sleep(0.6)  # a heartbeat and a router tick carry the drain and the settings
        ids = [c.send_task(prompt=PROMPTS[0], max_tokens=4) for _ in range(4)]
        got = c.collect(ids, timeout_s=20)
        codes = sorted(e.error.code for e, _ in got.values())
        # Two wait in the queue until the timeout; the two that find it full are refused at once.
        assert codes == sorted([P.ERR_OVERLOADED] * 2 + [P.ERR_NO_WORKER] * 2), codes
        assert all(e.error.retriable for e, _ in got.values())
    finally:
        for w in ("w0", "w1", "w2"):
            cl.acctl("undrain", w)
        cl.acctl("policy", "reset", "router.queue_timeout_ms")
        cl.acctl("policy", "reset", "router.max_queue")
    time.sleep(0.6)
    try:  # serving again
        tid = c.send_task(prompt=PROMPTS[2], max_tokens=N)
        assert c.collect([tid])[tid][0].result.text == expected("full", PROMPTS[2])
    finally:
        c.close()
