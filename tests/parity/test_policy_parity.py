"""Policy kernels against their pure-Python reference on generated nodes and requests (hypothesis)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from leitstand.scheduler import policy_reference as ref
from leitstand.scheduler.codes import PolicyCode
from leitstand.scheduler.policy_kernels import choose_gpus_kernel, node_score_kernel

N_MODELS = 3
MAX_GPUS = 8


@st.composite
def cases(draw: st.DrawFn) -> dict[str, object]:
    n_nodes = draw(st.integers(1, 4))
    counts = draw(st.lists(st.sampled_from([0, 1, 2, 4, 8]), min_size=n_nodes, max_size=n_nodes))
    free = np.zeros((n_nodes, MAX_GPUS), dtype=np.int32)
    for i, c in enumerate(counts):
        for g in range(c):
            free[i, g] = draw(st.sampled_from([0, 90, 230, 250, 320, 470, 500, 650, 810, 1000]))
    cpu_cap = np.array(draw(st.lists(st.sampled_from([32_000, 64_000, 96_000, 128_000]), min_size=n_nodes,
                                     max_size=n_nodes)), dtype=np.int64)  # fmt: skip
    cpu_free = np.array([draw(st.integers(0, int(c))) for c in cpu_cap], dtype=np.int64)
    model = np.array(draw(st.lists(st.integers(-1, N_MODELS - 1), min_size=n_nodes, max_size=n_nodes)),
                     dtype=np.int32)  # fmt: skip
    n_typ = draw(st.integers(1, 6))
    typ_num = np.array(draw(st.lists(st.sampled_from([0, 1, 1, 1, 2, 4, 8]), min_size=n_typ, max_size=n_typ)),
                       dtype=np.int64)  # fmt: skip
    typ_milli = np.array(
        [0 if k == 0 else (1000 if k > 1 else draw(st.sampled_from([250, 500, 1000, 470]))) for k in typ_num],
        dtype=np.int64,
    )
    typ_cpu = np.array(draw(st.lists(st.sampled_from([1000, 4000, 8000, 16000, 64000]), min_size=n_typ,
                                     max_size=n_typ)), dtype=np.int64)  # fmt: skip
    typ_model_ok = np.array(
        draw(st.lists(st.lists(st.booleans(), min_size=N_MODELS + 1, max_size=N_MODELS + 1),
                      min_size=n_typ, max_size=n_typ)), dtype=np.bool_)  # fmt: skip
    raw = np.array(draw(st.lists(st.integers(1, 50), min_size=n_typ, max_size=n_typ)), dtype=np.float64)
    typ_weight = raw / raw.sum()
    req_gpus = draw(st.sampled_from([0, 1, 1, 1, 2, 4]))
    req_milli = 0 if req_gpus == 0 else (1000 if req_gpus > 1 else draw(st.sampled_from([100, 250, 500, 1000])))
    req_cpu = draw(st.sampled_from([0, 1000, 6000, 12000]))
    return {
        "free": free, "count": np.array(counts, dtype=np.int32), "cpu_free": cpu_free, "cpu_cap": cpu_cap,
        "mem": np.full(n_nodes, 1 << 20, dtype=np.int64), "model": model,
        "typ": (typ_cpu, typ_milli, typ_num, typ_model_ok, typ_weight),
        "req": (req_gpus, req_milli, req_cpu), "rand": draw(st.integers(0, (1 << 64) - 1)),
    }  # fmt: skip


def feasible(c: dict[str, object], n: int) -> bool:
    free, count, cpu_free = c["free"], c["count"], c["cpu_free"]
    req_gpus, req_milli, req_cpu = c["req"]  # type: ignore[misc]
    assert isinstance(free, np.ndarray) and isinstance(count, np.ndarray) and isinstance(cpu_free, np.ndarray)
    if req_cpu > cpu_free[n]:
        return False
    return sum(1 for g in range(count[n]) if free[n, g] >= req_milli) >= req_gpus


@settings(max_examples=300, deadline=None)
@given(cases(), st.sampled_from(list(PolicyCode)))
def test_node_score_and_gpu_choice_match_reference(c: dict[str, object], policy: PolicyCode) -> None:
    req_gpus, req_milli, req_cpu = c["req"]  # type: ignore[misc]
    typ = c["typ"]
    count = c["count"]
    assert isinstance(count, np.ndarray) and isinstance(typ, tuple)
    for n in range(len(count)):
        if not feasible(c, n):
            continue
        args = (int(policy), n, c["free"], count, c["cpu_free"], c["cpu_cap"], c["mem"], c["model"],
                req_gpus, req_milli, req_cpu, 0, *typ)  # fmt: skip
        kernel = node_score_kernel(*args, np.uint64(c["rand"]))
        reference = ref.node_score(*args, c["rand"])  # type: ignore[arg-type]
        assert kernel == reference, (policy, n)
        if req_gpus == 0:
            continue
        cpu_free = c["cpu_free"]
        model = c["model"]
        assert isinstance(cpu_free, np.ndarray) and isinstance(model, np.ndarray)
        out_k = np.full(req_gpus, -1, dtype=np.int32)
        out_r = np.full(req_gpus, -1, dtype=np.int32)
        tail = (int(cpu_free[n]), int(model[n]), req_cpu)
        choose_gpus_kernel(int(policy), n, c["free"], count, req_gpus, req_milli, *typ, out_k, *tail)
        ref.choose_gpus(int(policy), n, c["free"], count, req_gpus, req_milli, *typ, out_r, *tail)  # type: ignore[arg-type]
        assert out_k.tolist() == out_r.tolist(), (policy, n)
        free = c["free"]
        assert isinstance(free, np.ndarray)
        assert len(set(out_k.tolist())) == req_gpus
        assert all(0 <= g < count[n] and free[n, g] >= req_milli for g in out_k)
