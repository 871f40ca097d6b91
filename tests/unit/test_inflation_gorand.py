"""Go `math/rand` re-implementation against outputs recorded from `go run` (Go 1.26, rand.New(rand.NewSource(seed)))."""

from __future__ import annotations

import pytest

from leitstand.scheduler.sim.gorand import GoRand

# Recorded with: r := rand.New(rand.NewSource(seed)); a := [0..11]; x := r.Int(); r.Shuffle(len(a), swap);
# then r.Intn(8152), r.Intn(1000), r.Int63n(1<<40+3), r.Float64(), r.Perm(10), a, r.Int31n(7).
GO_OUTPUTS = [
    (42, 3440579354231278675, 1559, 828, 602332982609, 0.4662036212774504,
     [5, 9, 4, 7, 2, 6, 3, 8, 0, 1], [4, 8, 7, 10, 1, 9, 5, 3, 11, 2, 6, 0], 0),
    (51, 3893522058333705853, 2499, 558, 1062041355350, 0.5560086701272298,
     [3, 5, 6, 7, 2, 4, 1, 0, 9, 8], [2, 10, 1, 11, 5, 0, 7, 4, 9, 6, 3, 8], 5),
    (0, 8717895732742165505, 6995, 548, 1067799399334, 0.25365600644283687,
     [5, 2, 8, 0, 7, 4, 9, 6, 3, 1], [10, 6, 5, 9, 4, 8, 1, 11, 3, 0, 7, 2], 1),
    (-7, 747107023976529931, 6165, 852, 586047105689, 0.8201556392150781,
     [2, 3, 5, 9, 8, 6, 0, 7, 1, 4], [11, 10, 5, 1, 7, 3, 4, 6, 2, 0, 8, 9], 6),
    (1 << 40, 5470237361722394362, 5236, 202, 576726540039, 0.10715770870170183,
     [2, 6, 7, 1, 8, 4, 9, 5, 3, 0], [2, 3, 0, 4, 6, 11, 9, 5, 7, 10, 1, 8], 6),
]  # fmt: skip


@pytest.mark.parametrize(("seed", "x", "i1", "i2", "i63", "f", "perm", "shuffled", "i31"), GO_OUTPUTS)
def test_stream_matches_go(
    seed: int, x: int, i1: int, i2: int, i63: int, f: float, perm: list[int], shuffled: list[int], i31: int
) -> None:
    r = GoRand(seed)
    a = list(range(12))
    assert r.int_() == x

    def swap(i: int, j: int) -> None:
        a[i], a[j] = a[j], a[i]

    r.shuffle(len(a), swap)
    assert r.intn(8152) == i1
    assert r.intn(1000) == i2
    assert r.int63n((1 << 40) + 3) == i63
    assert r.float64() == f
    assert r.perm(10) == perm
    assert a == shuffled
    assert r.int31n(7) == i31


def test_reseeding_restarts_the_stream() -> None:
    r = GoRand(42)
    first = [r.int63() for _ in range(700)]  # more than one register length
    r.seed(42)
    assert [r.int63() for _ in range(700)] == first
    assert all(0 <= v < 1 << 63 for v in first)


def test_bounded_draws_reject_bad_bounds() -> None:
    r = GoRand(1)
    for bad in (r.intn, r.int31n, r.int63n):
        with pytest.raises(ValueError):
            bad(0)
