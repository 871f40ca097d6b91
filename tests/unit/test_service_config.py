"""`leitstand run --config FILE` as a platform engineer writes it: the file is merged over the defaults,
the scheduler's knobs reach the core, and a wrong value is refused with the file and the field named."""

from __future__ import annotations

from pathlib import Path

import pytest

from leitstand.operator.service.config import ConfigError, ServiceConfig, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "leitstand.yaml"
    path.write_text(text)
    return path


def test_reservations_for_starving_gangs_are_off_by_default_and_reach_the_core_when_set(tmp_path: Path) -> None:
    assert ServiceConfig().scheduler.core().reserve_after_seconds is None
    config = load_config(write(tmp_path, "scheduler:\n  reserve_after_seconds: 3600\n  reserve_min_gpus: 64\n"
                                         "  max_reserved_gangs: 1\n  max_victims: 32\n"))
    core = config.scheduler.core()
    assert (core.reserve_after_seconds, core.reserve_min_gpus, core.max_reserved_gangs) == (3600, 64, 1)
    assert core.max_victims == 32 and core.min_runtime_seconds == 60  # the rest keep their defaults


def test_the_operator_defaults_are_the_cores_and_migration_reaches_the_core_when_set(tmp_path: Path) -> None:
    from leitstand.scheduler.model import SchedulerConfig

    defaults = ServiceConfig().scheduler.core()
    core_defaults = SchedulerConfig()
    for knob in ("min_runtime_seconds", "max_victims", "consolidation", "max_consolidation_moves",
                 "consolidation_retry_seconds", "migration",
                 "max_migration_tries", "migration_nodes_per_try", "migration_max_age_seconds",
                 "reserve_after_seconds", "reserve_min_gpus", "max_reserved_gangs"):
        assert getattr(defaults, knob) == getattr(core_defaults, knob), knob
    config = load_config(write(tmp_path, "scheduler:\n  migration: true\n  migration_max_age_seconds: 900\n"))
    core = config.scheduler.core()
    assert core.migration and core.migration_max_age_seconds == 900 and core.max_migration_tries == 60


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("scheduler:\n  reserve_after_seconds: -5\n", "scheduler.reserve_after_seconds"),
        ("scheduler:\n  reserve_min_gpus: 0\n", "scheduler.reserve_min_gpus"),
        ("scheduler:\n  migration_max_age_seconds: -1\n", "scheduler.migration_max_age_seconds"),
        ("scheduler:\n  consolidation_retry_seconds: -1\n", "scheduler.consolidation_retry_seconds"),
        ("scheduler:\n  reserve_after: 60\n", "scheduler.reserve_after"),  # a misspelt knob is no silent no-op
    ],
)
def test_a_wrong_knob_is_refused_naming_the_file_and_the_field(tmp_path: Path, text: str, field: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(path) in str(error.value) and field in str(error.value), error.value


def test_typical_shapes_shape_the_placement_policy_of_the_running_loop(tmp_path: Path) -> None:
    """The platform engineer describes the cluster's usual jobs; the loop builds the placement policy
    with them once per cluster state (not per cycle), and without them the cycle keeps its defaults."""
    from test_service_followup import FakeApiServer, world

    from leitstand.operator.service.loop import Scheduler
    from leitstand.scheduler.policies import TaskShape, typical_tasks_from_shapes

    api = FakeApiServer()
    scheduler, cache, _ = world(api)
    assert scheduler.policy_context() is None  # defaults: the cycle builds its own

    config = load_config(write(tmp_path, "scheduler:\n  typical_shapes:\n"
                                         "    - {gpus: 8, cpu_milli: 64000, count: 30}\n"
                                         "    - {gpu_fraction: 0.5, cpu_milli: 4000, count: 70, gpu_models: [B200]}\n"))
    scheduler = Scheduler(config, api, cache)  # type: ignore[arg-type]
    context = scheduler.policy_context()
    assert context is not None and scheduler.policy_context() is context  # built once
    expected = typical_tasks_from_shapes(
        [TaskShape(cpu_milli=64000, gpu_milli=1000, gpus=8, count=30),
         TaskShape(cpu_milli=4000, gpu_milli=500, gpus=1, count=70, gpu_models=frozenset({"B200"}))],
        cache.state.model_codes, coverage=1.0)
    assert context.typ_milli.tolist() == expected.gpu_milli.tolist()
    assert context.typ_num.tolist() == expected.gpus.tolist()
    assert context.typ_weight.tolist() == expected.weight.tolist()
    cache.state = cache.state.copy()  # nodes came or went: a new state
    assert scheduler.policy_context() is not context


@pytest.mark.parametrize(
    ("shape", "field"),
    [
        ("{gpus: 2, gpu_fraction: 0.5}", "scheduler.typical_shapes.0"),
        ("{gpu_fraction: 1.5}", "scheduler.typical_shapes.0.gpu_fraction"),
        ("{gpus: 1, count: 0}", "scheduler.typical_shapes.0.count"),
        ("{gpus: 1, cpus: 4}", "scheduler.typical_shapes.0.cpus"),
    ],
)
def test_a_wrong_typical_shape_is_refused_naming_it(tmp_path: Path, shape: str, field: str) -> None:
    path = write(tmp_path, f"scheduler:\n  typical_shapes:\n    - {shape}\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(path) in str(error.value) and field in str(error.value), error.value
