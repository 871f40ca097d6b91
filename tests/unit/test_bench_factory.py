"""The pure parts of `leitstand bench factory` (operator/bench_factory.py): the shape, the workload
synthesised from the Acme (Kalos) and openb tables, the manifests, and the summaries of the samples."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from leitstand.operator import bench_factory as bf


def write_acme(folder: Path) -> Path:
    acme = folder / "acme"
    acme.mkdir()
    (acme / "gpu_num_histogram.csv").write_text(
        "cluster,gpu_num_min,gpu_num_max,jobs,jobs_percent,gpu_time_percent,gpu_time_exact\n"
        "Kalos,1,1,900,90,1,x\nKalos,16,16,50,5,2,x\nKalos,512,513,50,5,97,x\nSeren,1,1,5,100,100,x\n")
    rows = ["cluster,type,metric,le_seconds,cdf_percent"]
    for kind in ("Eval", "Pretrain", "Debug"):
        rows += [f"Kalos,{kind},duration,16,0.0", f"Kalos,{kind},duration,64,50.0",
                 f"Kalos,{kind},duration,1024,100.0", f"Kalos,{kind},queue,16,100.0"]
    (acme / "job_type_duration_queue_cdf.csv").write_text("\n".join(rows) + "\n")
    return acme


def write_openb(folder: Path) -> Path:
    path = folder / "openb_pod_list_default.csv"
    path.write_text(
        "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\n"
        "p0,1000,1024,1,1000,,LS,Running,0,100,0\n"
        "p1,1000,1024,1,250,,LS,Running,10,310,10\n"
        "p2,1000,1024,8,1000,,LS,Running,0,50000,0\n"
        "p3,1000,1024,0,0,,LS,Running,0,100,0\n")
    return path


def test_the_factory_shape_gives_every_shared_gpu_a_quota_and_sme_a_fifth() -> None:
    shape = bf.Shape()
    tenants = bf.plan_tenants(shape, seed=3)
    by = {t.queue: t for t in tenants}
    assert shape.total_gpus == 10_000 and shape.pool_gpus == 1_040
    assert by["research-pool"].node_pool == "research" and by["research-pool"].quota == 1_040
    assert by["sme"].quota == int(0.2 * shape.shared_gpus)
    assert by["sme-vision"].quota + by["sme-robotics"].quota == by["sme"].quota
    assert {t.parent for t in tenants if t.queue.startswith("sme-")} == {"sme"}
    assert len([t for t in tenants if t.group == "industry"]) == 12
    top_shared = sum(t.quota for t in tenants if not t.parent and not t.node_pool)
    assert shape.shared_gpus - 12 < top_shared <= shape.shared_gpus
    # Offered: the pool's GPUs plus the shared GPUs (research's small jobs are set by the Kalos mix).
    offered = sum(t.load for t in tenants) + shape.pool_gpus * 0.05
    assert offered == pytest.approx(shape.total_gpus)


def test_queue_manifests_reserve_the_pool_and_name_each_namespace() -> None:
    tenants = bf.plan_tenants(bf.Shape(nodes=20, research_nodes=4, industry=2), seed=1)
    docs = {d["metadata"]["name"]: d["spec"] for d in bf.queue_manifests(tenants)}
    assert docs["research-pool"]["nodePool"] == "research"
    assert docs["research-pool"]["namespaces"] == ["research"]
    assert "namespaces" not in docs["sme"]  # an inner queue holds no jobs
    assert docs["sme-vision"]["parent"] == "sme"
    assert docs["industry-02"]["namespaces"] == ["industry-02"]


@pytest.mark.parametrize("shape, field", [
    (bf.Shape(nodes=10, research_nodes=10), "--research-nodes"),
    (bf.Shape(industry=0), "--industry"),
    (bf.Shape(sme_fraction=0.99), "SME"),
])
def test_bad_shapes_are_refused_naming_the_option(shape: bf.Shape, field: str) -> None:
    with pytest.raises(bf.FactoryError, match=field):
        bf.plan_tenants(shape, seed=1)


def test_the_kalos_tables_are_read_for_kalos_only(tmp_path: Path) -> None:
    mix = bf.load_kalos(write_acme(tmp_path))
    assert mix.sizes == ((1, 1, 900.0), (16, 16, 50.0), (512, 513, 50.0))
    rng = random.Random(1)
    draws = [mix.durations["Eval"].sample(rng) for _ in range(2000)]
    assert min(draws) >= 16 and max(draws) <= 1024
    assert 0.4 < sum(d <= 64 for d in draws) / len(draws) < 0.6


def test_missing_trace_files_name_the_file_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(bf.FactoryError, match=r"gpu_num_histogram\.csv.*--traces"):
        bf.load_kalos(tmp_path)
    with pytest.raises(bf.FactoryError, match="traces fetch"):
        bf.load_openb(tmp_path / "nope.csv")


def test_openb_tasks_keep_gpu_tasks_with_their_fraction_and_duration(tmp_path: Path) -> None:
    tasks = bf.load_openb(write_openb(tmp_path))
    assert tasks == [bf.OpenbTask(1.0, 100.0), bf.OpenbTask(0.25, 300.0), bf.OpenbTask(8.0, 50000.0)]


def test_kalos_jobs_are_whole_node_gangs_from_eight_gpus_and_capped_at_the_hour(tmp_path: Path) -> None:
    mix = bf.load_kalos(write_acme(tmp_path))
    rng = random.Random(2)
    for _ in range(500):
        kind, replicas, gpus, seconds = bf.kalos_job(mix, rng, cap=300)
        assert seconds <= 300
        if kind == "Pretrain":
            assert gpus == 8 and replicas * 8 >= bf.PRETRAIN_MIN_GPUS
        elif kind == "Debug":
            assert (replicas, gpus) == (2, 8)
        else:
            assert (replicas, gpus) == (1, 1)


def test_arrivals_offer_the_asked_load_inside_the_hour() -> None:
    rng = random.Random(5)
    out = bf.arrivals(rng, lambda: ("job", 120.0), load=10.0, hour=600.0)
    assert len(out) == 50  # 10 GPUs x 600 s / 120 GPU-s per job
    times = [t for _, t in out]
    assert times == sorted(times) and times[0] >= 0 and times[-1] <= 600
    assert bf.arrivals(rng, lambda: ("job", 1.0), load=0.0, hour=600.0) == []


def test_the_synthesised_hour_is_seeded_sorted_and_fits_the_pool(tmp_path: Path) -> None:
    mix = bf.load_kalos(write_acme(tmp_path))
    tasks = bf.load_openb(write_openb(tmp_path))
    tenants = bf.plan_tenants(bf.Shape(nodes=24, research_nodes=8, industry=2), seed=1)
    jobs = bf.synthesize(tenants, mix, tasks, hour=600, seed=4)
    assert jobs == bf.synthesize(tenants, mix, tasks, hour=600, seed=4)
    assert [j.arrival for j in jobs] == sorted(j.arrival for j in jobs)
    assert len({j.name for j in jobs}) == len(jobs)
    pool = [j for j in jobs if j.queue == "research-pool"]
    assert pool and all(j.kind == "Pretrain" and j.total_gpus <= 64 for j in pool)
    assert all(j.queue != "research-pool" for j in jobs if j.kind != "Pretrain")
    assert {j.kind for j in jobs if j.queue.startswith(("sme-", "industry-"))} == {"openb"}
    assert all(j.seconds <= 600 for j in jobs)
    offered = bf.offered(jobs, 600)
    assert offered["sme-vision"]["gpus"] == pytest.approx(next(t.load for t in tenants if t.queue == "sme-vision"),
                                                          rel=0.2)


def test_manifests_compress_the_duration_and_use_a_fraction_below_one_gpu() -> None:
    whole = bf.Job("a", "industry-01", "industry-01", "openb", 1, 8.0, 0.0, 600.0)
    shared = bf.Job("b", "industry-01", "industry-01", "openb", 1, 0.25, 0.0, 3.0)
    m = bf.manifest(whole, speed=20)
    assert m["spec"]["gpus"] == 8 and "gpuFraction" not in m["spec"]
    assert m["spec"]["template"]["metadata"]["annotations"]["leitstand.dev/sim-duration"] == "30s"
    s = bf.manifest(shared, speed=20)
    assert s["spec"]["gpuFraction"] == 0.25 and "gpus" not in s["spec"]
    assert s["spec"]["template"]["metadata"]["annotations"]["leitstand.dev/sim-duration"] == "1s"
    assert m["metadata"]["namespace"] == "industry-01" and m["spec"]["queue"] == "industry-01"


def test_waits_run_from_creation_to_admission_per_queue() -> None:
    items = [
        {"metadata": {"creationTimestamp": "2026-12-06T00:00:00Z"}, "spec": {"queue": "q"},
         "status": {"admittedAt": "2026-12-06T00:00:07Z"}},
        {"metadata": {"creationTimestamp": "2026-12-06T00:00:00Z"}, "spec": {"queue": "q"}, "status": {}},
    ]
    assert bf.waits(items) == {"q": [7.0]}
    assert bf.percentile([1, 2, 3, 4], 0.5) == 2.5
    assert bf.percentile([], 0.5) is None


def samples() -> list[bf.QueueSample]:
    return [
        bf.QueueSample(0, {"sme": 10, "ind": 80}, {"sme": 20, "ind": 80}, {"sme": 3, "ind": 0}),
        bf.QueueSample(5, {"sme": 20, "ind": 75}, {"sme": 20, "ind": 80}, {"sme": 0, "ind": 4}),
        bf.QueueSample(10, {"sme": 5, "ind": 5}, {"sme": 5, "ind": 5}, {"sme": 0, "ind": 0}),
    ]


def test_share_summary_is_the_mean_absolute_gap_to_the_fair_share() -> None:
    out = bf.share_summary(samples(), ["sme", "ind"])
    assert out["sme"] == {"allocated_mean": 11.7, "fair_mean": 15.0, "gap_mean": 3.3, "gap_waiting_mean": 5.0,
                          "waiting_samples": 2}
    assert out["ind"]["gap_mean"] == pytest.approx(1.7)


def test_sme_under_contention_counts_only_full_shared_gpus_with_jobs_pending() -> None:
    out = bf.contention(samples(), ["sme", "ind"], ["sme", "ind"], shared_gpus=100)
    assert out == {"samples": 2, "allocated_mean": 15.0, "fair_mean": 20.0, "share_of_shared_pct": 15.0,
                   "samples_sme_pending": 1}
    assert bf.contention(samples()[2:], ["sme"], ["sme", "ind"], shared_gpus=100) == {"samples": 0}


class FakeProcess:
    def __init__(self, log: Path) -> None:
        self.log = log
        self.running = True
        self.killed = False
        self.proc = type("Proc", (), {"returncode": None})()

    def cpu_seconds(self) -> float:
        return 2.0 if self.running else 0.0

    def alive(self) -> bool:
        return self.running

    def kill(self) -> None:
        self.killed, self.running = True, False


def test_the_supervisor_restarts_an_exited_operator_and_kills_one_that_hangs_after_saying_it_exits(
        tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    log.write_text("leading as factory\n")
    started: list[FakeProcess] = []
    clock = [0.0]

    def start() -> FakeProcess:
        started.append(FakeProcess(log))
        return started[-1]

    sup = bf.Supervisor(start, lambda _m: None, lambda: clock[0])
    sup.check()
    assert len(started) == 1 and sup.cpu_seconds() == 2.0
    started[0].running = False
    started[0].proc.returncode = 1
    sup.check()
    assert len(started) == 2 and sup.events[0]["what"] == "exited with code 1"
    with log.open("a") as f:
        f.write("ERROR leitstand.run: lost the lease x: exiting so a fresh start rebuilds from the API server\n")
    sup.check()
    clock[0] = bf.HANG_SECONDS + 1
    sup.check()
    assert started[1].killed and len(started) == 3
    assert "killed" in sup.events[1]["what"] and "lost the lease" in sup.events[1]["log"]
    assert sup.cpu_seconds() == 2.0 + 2.0  # the third one not read yet
    sup.check()
    assert sup.cpu_seconds() == 2.0 + 2.0 + 2.0


def test_allocation_is_rebuilt_from_the_jobs_admission_and_end_on_the_api_server() -> None:
    items = [
        {"spec": {"queue": "sme-a", "replicas": 2, "gpus": 8},
         "status": {"admittedAt": "2026-12-06T00:00:10Z", "finishedAt": "2026-12-06T00:00:20Z"}},
        {"spec": {"queue": "ind", "replicas": 1, "gpuFraction": 0.5}, "status": {"admittedAt": "2026-12-06T00:00:15Z"}},
        {"spec": {"queue": "ind", "replicas": 1, "gpus": 1}, "status": {"phase": "Pending"}},
    ]
    intervals = bf.job_intervals(items)
    assert len(intervals) == 2
    base = bf._ts("2026-12-06T00:00:00Z")
    assert base is not None
    got = bf.allocation_from_jobs(intervals, [base + 5, base + 12, base + 16, base + 20], {"sme-a": "sme"})
    assert got == [{}, {"sme-a": 16.0, "sme": 16.0}, {"sme-a": 16.0, "sme": 16.0, "ind": 0.5}, {"ind": 0.5}]


def test_status_lag_reports_the_operators_waiting_writes_beside_the_queue_objects_age() -> None:
    sampled = bf.Sampled(status_age=[10.0, 30.0, 50.0],
                         writes=[(0.0, 0, 0.0), (5.0, 120, 4.0), (10.0, 900, 40.0), (15.0, 30, 2.0)])
    lag = bf.status_lag(sampled, ["team"])
    assert lag["age_p50_s"] == 30.0 and lag["age_max_s"] == 50.0
    assert lag["write_lag_p50_s"] == 3.0 and lag["write_lag_max_s"] == 40.0
    assert lag["writes_due_max"] == 900
    assert bf.status_lag(bf.Sampled(), ["team"])["write_lag_p50_s"] is None


def test_metric_values_reads_label_less_series_and_gives_nothing_when_nobody_answers() -> None:
    import http.server
    import threading

    text = ("# TYPE leitstand_status_writes_due gauge\nleitstand_status_writes_due 12.0\n"
            "# TYPE leitstand_status_write_lag_seconds gauge\nleitstand_status_write_lag_seconds 3.5\n"
            '# TYPE leitstand_binds_total counter\nleitstand_binds_total{x="y"} 4.0\n')
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization", ""))
            body = text.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        got = bf.metric_values(port, "tok", ("leitstand_status_writes_due", "leitstand_status_write_lag_seconds",
                                             "leitstand_binds_total"))
        assert got == {"leitstand_status_writes_due": 12.0, "leitstand_status_write_lag_seconds": 3.5}
        assert seen == ["Bearer tok"]
    finally:
        server.shutdown()
        server.server_close()
    assert bf.metric_values(port, "tok", ("leitstand_status_writes_due",)) == {}


def test_the_plot_shows_every_tenant_and_the_status_backlog_when_it_was_sampled(tmp_path: Path) -> None:
    shape = bf.Shape(nodes=20, research_nodes=4, industry=2)
    tenants = bf.plan_tenants(shape, seed=1)
    names = [t.queue for t in tenants]
    sampled = bf.Sampled()
    for t in (0.0, 5.0, 10.0):
        eight = {q: 8.0 for q in names}
        sampled.queues.append(bf.QueueSample(t, eight, dict(eight), {q: 0 for q in names}))
    plain = bf.plot(tmp_path / "plain", sampled, tenants, shape)
    sampled.writes = [(0.0, 0.0, 0.0), (5.0, 120.0, 12.5), (10.0, 3.0, 0.4)]
    with_backlog = bf.plot(tmp_path / "backlog", sampled, tenants, shape)
    assert plain.read_bytes()[:4] == with_backlog.read_bytes()[:4] == b"\x89PNG"
    assert plain.read_bytes() != with_backlog.read_bytes()  # the backlog panel is drawn
