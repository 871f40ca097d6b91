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


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("scheduler:\n  reserve_after_seconds: -5\n", "scheduler.reserve_after_seconds"),
        ("scheduler:\n  reserve_min_gpus: 0\n", "scheduler.reserve_min_gpus"),
        ("scheduler:\n  reserve_after: 60\n", "scheduler.reserve_after"),  # a misspelt knob is no silent no-op
    ],
)
def test_a_wrong_knob_is_refused_naming_the_file_and_the_field(tmp_path: Path, text: str, field: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(path) in str(error.value) and field in str(error.value), error.value
