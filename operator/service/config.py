"""The service's configuration: topology levels, node labels, scheduler knobs, loop and binder limits.

One place the operator reads (`leitstand run --config FILE`, YAML); every field has a default that
fits the local cluster (`leitstand cluster up`), so `leitstand run` needs no file there. Read by
`run` (once, at start) and handed to the cache, the loop and the binder. Pydantic only here, at the
wire: the rest of the service sees the frozen `ServiceConfig` and the core's `SchedulerConfig`.

A wrong value fails at start with the field's path and what is allowed (pydantic's messages), never
later in a cycle.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from leitstand.scheduler.model import GPU_MILLI, SchedulerConfig, Topology
from leitstand.scheduler.policies import TaskShape, TypicalTasks, typical_tasks_from_shapes


class ConfigError(ValueError):
    """The configuration file is unreadable or invalid; the message names the file and the field."""


class Level(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Level name used in TrainingJob spec.topology (e.g. rack).")
    label: str = Field(description="Node label whose value names the domain at this level.")


DEFAULT_LEVELS = (
    Level(name="spine", label="leitstand.dev/spine"),
    Level(name="rack", label="leitstand.dev/rack"),
    Level(name="nvlink-domain", label="leitstand.dev/nvlink-domain"),
)


class TypicalShape(BaseModel):
    """One shape of the cluster's typical tasks (what the placement policy keeps room for; FGD's
    "typical tasks", docs/policies.md): per replica, whole GPUs or a share of one, and its CPU."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gpus: int = Field(default=1, ge=0, description="Whole GPUs per replica (0: a CPU-only task).")
    gpu_fraction: float | None = Field(
        default=None, gt=0, lt=1, description="A share of one GPU instead of whole ones (then gpus is 1)."
    )
    cpu_milli: int = Field(default=0, ge=0, description="CPU per replica, millicores.")
    count: int = Field(
        default=1, ge=1, description="How often this shape comes, relative to the others (e.g. jobs per day)."
    )
    gpu_models: tuple[str, ...] = Field(default=(), description="GPU models it may use; empty: any.")

    @model_validator(mode="after")
    def _one_gpu_for_a_share(self) -> TypicalShape:
        if self.gpu_fraction is not None and self.gpus != 1:
            raise ValueError(f"gpu_fraction is a share of one GPU: set gpus to 1 (got {self.gpus})")
        return self

    def core(self) -> TaskShape:
        milli = round(self.gpu_fraction * GPU_MILLI) if self.gpu_fraction is not None else GPU_MILLI
        return TaskShape(
            cpu_milli=self.cpu_milli,
            gpu_milli=milli if self.gpus else 0,
            gpus=self.gpus,
            count=self.count,
            gpu_models=frozenset(self.gpu_models),
        )


class SchedulerSettings(BaseModel):
    """The knobs of one scheduling cycle (the core's `SchedulerConfig`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    policy: str = "leitstand"
    min_runtime_seconds: float = Field(default=60.0, ge=0)
    max_victims: int = Field(default=64, ge=1)
    consolidation: bool = True
    max_consolidation_moves: int = Field(default=4, ge=0)
    consolidation_retry_seconds: float = Field(
        default=30.0, ge=0, allow_inf_nan=False,
        description="A waiting shape for which consolidation found no moves is searched again only after this "
        "long (0: every cycle). Nearly every such search fails and each costs CPU (docs/cycle.md).",
    )
    usage_half_life_seconds: float | None = Field(default=None, gt=0)
    reserve_after_seconds: float | None = Field(
        default=None, ge=0,
        description="Reservations for starving gangs (docs/cycle.md): a gang of at least reserve_min_gpus "
        "GPUs waiting this long gets one topology domain held for it; off (null) by default, since a hold "
        "idles GPUs until the gang starts.",
    )
    migration: bool = Field(
        default=False,
        description="Repack the preemptible jobs of a few nodes with stranded GPU capacity so waiting jobs fit "
        "(docs/replay.md, Migration). Off by default: a moved pod restarts and loses what it ran unless the "
        "job checkpoints; bound what a move may cost with migration_max_age_seconds.",
    )
    max_migration_tries: int = Field(default=60, ge=0, description="Node sets tried per cycle (0: off).")
    migration_nodes_per_try: int = Field(default=4, ge=1, description="Nodes repacked together in one try.")
    migration_max_age_seconds: float | None = Field(
        default=None, ge=0,
        description="Only jobs that have run at most this long are moved (null: any past min_runtime_seconds).",
    )
    migration_prune_moves: int = Field(
        default=16, ge=0,
        description="Before a migration try is kept, up to this many times leave its moved job with the most "
        "progress in place and redo the try; the smaller try is kept if it starts as much (0: keep tries as "
        "found). Halves the moves on the openb replay (docs/replay.md).",
    )
    reserve_min_gpus: int = Field(default=2, ge=1, description="Only gangs asking this many GPUs or more get a hold.")
    max_reserved_gangs: int = Field(default=2, ge=0, description="At most this many gangs hold capacity at once.")
    typical_shapes: tuple[TypicalShape, ...] = Field(
        default=(),
        description="The cluster's typical task shapes with their frequencies (docs/policies.md): the "
        "placement policy packs so that these keep fitting. Empty: DGX-style defaults (whole 1/2/4/8-GPU "
        "replicas and half/quarter/eighth slices). Taken from the cluster's own job history, they are what "
        "FGD is given in its paper's protocol; on the openb replay they also leave more nodes fully idle "
        "(docs/replay.md).",
    )

    def typical_tasks(self, model_codes: Mapping[str, int]) -> TypicalTasks | None:
        """The typical-task table for a cluster with these GPU models; None for the defaults."""
        if not self.typical_shapes:
            return None
        return typical_tasks_from_shapes([shape.core() for shape in self.typical_shapes], model_codes, coverage=1.0)

    def core(self) -> SchedulerConfig:
        return SchedulerConfig(
            policy=self.policy,
            min_runtime_seconds=self.min_runtime_seconds,
            max_victims=self.max_victims,
            consolidation=self.consolidation,
            max_consolidation_moves=self.max_consolidation_moves,
            consolidation_retry_seconds=self.consolidation_retry_seconds,
            migration=self.migration,
            max_migration_tries=self.max_migration_tries,
            migration_nodes_per_try=self.migration_nodes_per_try,
            migration_max_age_seconds=self.migration_max_age_seconds,
            migration_prune_moves=self.migration_prune_moves,
            usage_half_life_seconds=self.usage_half_life_seconds,
            reserve_after_seconds=self.reserve_after_seconds,
            reserve_min_gpus=self.reserve_min_gpus,
            max_reserved_gangs=self.max_reserved_gangs,
        )


class ApiSettings(BaseModel):
    """The read API and `/metrics`, served by `leitstand run` itself (docs/http-api.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(default=True, description="Serve the HTTP API (and /metrics) from this process.")
    host: str = Field(
        default="127.0.0.1", description="Listen address; 0.0.0.0 to be reachable from outside the pod."
    )
    port: int = Field(default=8080, ge=0, le=65535, description="Listen port; 0 picks a free one (logged).")
    metrics_require_token: bool = Field(
        default=True,
        description="/metrics needs a bearer token allowed `get` on the non-resource URL /metrics; false "
        "lets a scraper in without one (health probes never need one).",
    )
    review_cache_seconds: float = Field(
        default=20.0, ge=0, description="How long a TokenReview or SubjectAccessReview answer is reused."
    )
    review_cache_entries: int = Field(default=4096, ge=1, description="Review answers kept at most (LRU).")
    max_page_size: int = Field(default=1000, ge=1, description="The largest `limit` a list request may ask for.")


class ServiceConfig(BaseModel):
    """Everything `leitstand run` can be told; see docs/operator.md for each field."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    topology: tuple[Level, ...] = Field(default=DEFAULT_LEVELS, description="Topology levels, outermost first.")
    gpu_model_label: str = "nvidia.com/gpu.product"
    node_pool_label: str = "leitstand.dev/node-pool"
    jurisdiction_label: str = "leitstand.dev/jurisdiction"
    default_node_pool: str = "default"
    scheduler_name: str = "leitstand"
    system_namespace: str = Field(
        default="leitstand-system", description="Where the Lease and the GPU reservation pods live."
    )
    lease_name: str = "leitstand-scheduler"
    lease_seconds: int = Field(default=15, gt=0)
    renew_deadline_seconds: float = Field(default=10.0, gt=0)
    retry_seconds: float = Field(default=2.0, gt=0)
    cycle_min_interval_seconds: float = Field(
        default=0.2, ge=0, description="A cycle runs at most this often, however many changes arrive."
    )
    cycle_max_interval_seconds: float = Field(
        default=2.0, gt=0, description="A cycle runs at least this often (max runtimes, retries)."
    )
    bind_concurrency: int = Field(default=64, ge=1, description="API writes in flight at once.")
    bind_retry_seconds: float = Field(default=5.0, ge=0, description="A job whose bind failed waits this long.")
    max_binds_in_flight: int = Field(
        default=512, ge=1,
        description="Gangs admitted but not yet created and bound, at most: at this many the cycle admits no "
        "more (the API server is the bottleneck then, and GPUs promised to pods not yet created would idle "
        "while counting as allocated).",
    )
    node_lost_grace_seconds: float = Field(
        default=30.0, ge=0, description="A node NotReady this long has its gangs evicted and requeued."
    )
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)

    @field_validator("topology")
    @classmethod
    def _levels_unique(cls, levels: tuple[Level, ...]) -> tuple[Level, ...]:
        names = [level.name for level in levels]
        if len(set(names)) != len(names) or "node" in names:
            raise ValueError(f"level names must be unique and not 'node' (implicit): {names}")
        return levels

    @property
    def core_topology(self) -> Topology:
        return Topology(levels=tuple(level.name for level in self.topology))

    @property
    def topology_labels(self) -> tuple[str, ...]:
        return tuple(level.label for level in self.topology)


def load_config(path: Path | None) -> ServiceConfig:
    """The defaults, or the YAML file at `path` merged over them."""
    if path is None:
        return ServiceConfig()
    try:
        raw: Any = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the configuration: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    try:
        return ServiceConfig.model_validate(raw)
    except ValidationError as exc:
        lines = [
            f"{path}: {'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        ]
        raise ConfigError("\n".join(lines)) from None
