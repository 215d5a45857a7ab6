"""Every key of a Flower run (`[tool.flwr.app.config]`, `flwr run --run-config`): its name,
type, range, help line and its one default.

The settings are frozen dataclasses, one per kind of run: `RunPlacement` (what the submitting
program fills in: the mode and the run's files), `TrainingSettings` (a training run; server.yaml's
`run:` section holds exactly these), `RolloutSettings` (a deploy run, which also reads the
training schedule's round-timeout-s, seed, batch-size, lr and optimizer) and
`SimulationSettings` (what the Simulation Engine's virtual nodes read). `RunConfig` holds one of
each. A key is its field's name with hyphens (`dp_noise_multiplier` -> `dp-noise-multiplier`),
so no key is spelled out here; rules sit in the field's metadata as ticket/config_schema.py
reads them ("ge", "gt", "le", "choices") with a "help" line.

Flower's run config holds only bool, int, float and str: a `Path | None` or `str | None` field
travels as a string, "" meaning None. Parsing is strict (bool is not int; an int is accepted
for a float) and fails with one `RunConfigError` naming the key; `to_run_config` goes back.
`render_table` writes the whole `[tool.flwr.app.config]` table, `render_app_pyproject` a Flower
app's complete pyproject.toml, and `write_app` such an app directory.
"""

import dataclasses
import json
import math
import textwrap
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ticket.atomic import atomic_write_text
from ticket.codec import DTYPES
from ticket.config_schema import describe_bounds
from ticket.data import DATASETS
from ticket.data.partition import PARTITIONERS

ConfigValue = bool | float | int | str

OPTIMIZERS = ("adam", "sgd")  # ticket.train.OPTIMIZERS, without importing torch
MODES = ("train", "deploy", "find")
# ticket.fleet_search.SEARCHES' names, without importing torch (a test keeps the two equal).
SEARCH_METHODS = ("fed-early-bird", "fed-imp", "fed-oneshot", "fed-snip", "synflow")
SEARCH_SCOPES = ("layerwise", "global")
TABLE = "tool.flwr.app.config"
PROJECT = "ticketfleet"  # the distribution whose installed modules the components name
PUBLISHER = "ticketfleet"
# The app's components resolve to the code installed on each machine (`pip install -e .`); an
# app directory holds nothing but its pyproject.toml.
SERVER_APP = "server.server_app:app"
CLIENT_APP = "edge_daemon.client_app:app"


class RunConfigError(ValueError):
    """A `[tool.flwr.app.config]` / `--run-config` key is unknown, missing or ill-typed."""


def _rules(help_line: str, **rules: object) -> dict[str, object]:
    """A setting's field metadata: its help line and ticket/config_schema.py's range rules."""
    return {"help": help_line, **rules}


@dataclass(frozen=True)
class RunPlacement:
    """What the program that submits a run fills in (fleet-server, ticket deploy)."""

    mode: str = field(
        default="train",
        metadata=_rules(
            '"train"; "deploy": push the signed ticket at ticket-path to the devices; "find": '
            "search the fleet for a ticket inside the dense one at ticket-path",
            choices=MODES,
        ),
    )
    ticket_path: Path | None = field(
        default=None,
        metadata=_rules("required: absolute path of the .ticket on the server machine"),
    )
    run_dir: Path | None = field(
        default=None,
        metadata=_rules(
            "required: absolute path for checkpoints, rounds.jsonl, rounds.png, deploy.json; "
            "a restart resumes"
        ),
    )
    fleet_key: Path | None = field(
        default=None, metadata=_rules('PEM public key that must have signed the ticket ("" = none)')
    )
    roster: Path | None = field(
        default=None,
        metadata=_rules(
            "secure aggregation: fleet-server's nodes.json, whose certified node keys the server "
            'relays with every key bundle ("" = none: a development fleet)'
        ),
    )

    def __post_init__(self) -> None:
        _check(self)


@dataclass(frozen=True)
class TrainingSettings:
    """A training run (server/server_app.py); secure aggregation (server/secagg_round.py) and
    distributed differential privacy (server/privacy.py, needs secagg) included."""

    allow_unsigned: bool = field(
        default=False, metadata=_rules("train a ticket no fleet key signed (tests, demos)")
    )
    num_rounds: int = field(default=3, metadata=_rules("rounds of this run", ge=1))
    round_timeout_s: float = field(
        default=600.0,
        metadata=_rules("how long a round (a rollout: the devices) waits for replies", gt=0),
    )
    fraction_train: float = field(
        default=1.0, metadata=_rules("of the online nodes, sampled per round", gt=0, le=1)
    )
    fraction_evaluate: float = field(
        default=1.0, metadata=_rules("federated evaluation; 0: none", ge=0, le=1)
    )
    min_nodes: int = field(
        default=2, metadata=_rules("sampled per round, and needed online before sampling", ge=1)
    )
    min_replies: int = field(
        default=1, metadata=_rules("a round with fewer accepted updates keeps the model", ge=1)
    )
    round_goal: int = field(
        default=0,
        metadata=_rules(
            "updates a round closes at; 0 = every sampled node (fraction-train), no deadline",
            ge=0,
        ),
    )
    round_overselect: float = field(
        default=1.3,
        metadata=_rules("with round-goal: sample ceil(goal x this) of the online nodes", ge=1),
    )
    round_deadline_s: float = field(
        default=120.0,
        metadata=_rules(
            "with round-goal: close with what arrived (>= min-replies) after this long; "
            "<= round-timeout-s",
            gt=0,
        ),
    )
    local_epochs: int = field(default=1, metadata=_rules("each device's epochs per round", ge=1))
    batch_size: int = field(default=32, metadata=_rules("local batch size", ge=1))
    lr: float = field(default=0.001, metadata=_rules("local learning rate", gt=0))
    optimizer: str = field(default="adam", metadata=_rules("local optimizer", choices=OPTIMIZERS))
    uplink_dtype: str = field(
        default="float32", metadata=_rules("how the devices encode their update", choices=DTYPES)
    )
    downlink_dtype: str = field(
        default="float32", metadata=_rules("how the global values are sent", choices=DTYPES)
    )
    seed: int = field(
        default=0, metadata=_rules("data order on the devices; a rollout's canary choice", ge=0)
    )
    server_eval: str | None = field(
        default=None,
        metadata=_rules(
            'dataset whose pooled test rows the server scores each round ("" = off)',
            choices=tuple(DATASETS),
        ),
    )
    secagg: bool = field(
        default=False, metadata=_rules("secure aggregation: the server learns only the sum")
    )
    secagg_clip: float = field(
        default=0.25,
        metadata=_rules(
            "each node's weighted delta (local - global) is clipped to [-clip, clip]", gt=0
        ),
    )
    secagg_levels: int = field(
        default=16384,
        metadata=_rules(
            "quantisation levels q; masked values travel at ceil(log2(n q)) bits", ge=2
        ),
    )
    secagg_target_error: float = field(
        default=0.0,
        metadata=_rules(
            "> 0: per round, the fewest levels whose mean is off by this RMS fraction of "
            "secagg-clip; 0 = secagg-levels",
            ge=0,
        ),
    )
    secagg_weight_cap: int = field(
        default=1000,
        metadata=_rules(
            "examples at which a node's weight saturates (weight = min(n, cap)/cap)", ge=1
        ),
    )
    dp_noise_multiplier: float = field(
        default=0.0,
        metadata=_rules(
            "noise of each round's sum in units of dp-clip-norm; 0 = off; needs secagg", ge=0
        ),
    )
    dp_clip_norm: float = field(
        default=0.1, metadata=_rules("each device's update is clipped to this L2 norm", gt=0)
    )
    dp_delta: float = field(
        default=1e-5, metadata=_rules("epsilon is reported at this delta", gt=0, le=0.5)
    )
    dp_sampling_rate: float = field(
        default=0.0,
        metadata=_rules(
            "> 0: each round samples every online device with this probability (Poisson, in "
            "place of fraction-train), and epsilon counts amplification by sampling",
            ge=0,
            le=1,
        ),
    )
    dp_epsilon_budget: float = field(
        default=0.0,
        metadata=_rules(
            "> 0: refuse, before any round, a run whose planned rounds would spend more", ge=0
        ),
    )

    def __post_init__(self) -> None:
        _check(self)
        # Only a round with a goal has a deadline, so only then must it come before the timeout.
        if self.dp_sampling_rate > 0 and (self.round_goal > 0 or self.fraction_train != 1.0):
            # Over-selection and failure-weighted draws would make some devices likelier than
            # the rate the accountant charges; fraction-train would be a second cohort size.
            raise RunConfigError(
                "run config: dp-sampling-rate samples each round's cohort itself: leave "
                "round-goal at 0 and fraction-train at 1"
            )
        if self.round_goal > 0 and self.round_deadline_s > self.round_timeout_s:
            raise RunConfigError(
                f"run config: round-deadline-s ({self.round_deadline_s:g}) must be <= "
                f"round-timeout-s ({self.round_timeout_s:g}) when round-goal > 0"
            )

    def check_population(self, population: int, source: str) -> None:
        """RunConfigError before any round when `population` devices (what `source` holds:
        a simulation's num-supernodes, a roster's enrolled nodes) cannot give a round what the
        run asks of it: every round would wait for devices that do not exist, or abort."""
        key, wanted = devices_needed(self.min_nodes, self.min_replies, self.round_goal)
        if wanted > population:
            raise RunConfigError(
                f"run config: {key} = {wanted} needs at least {wanted} devices; {source} "
                f"has {population}"
            )
        expected = self.dp_sampling_rate * population
        if self.dp_sampling_rate > 0 and expected < max(2, self.min_replies):
            raise RunConfigError(
                f"run config: dp-sampling-rate {self.dp_sampling_rate:g} of {population} devices "
                f"({source}) samples {expected:.1f} a round on average, below min-replies "
                f"{max(2, self.min_replies)}: most rounds would abort"
            )


def devices_needed(min_nodes: int, min_replies: int, round_goal: int) -> tuple[str, int]:
    """(key, count): the most devices a round of a run may ask for, and the run-config key
    that asks for them (min-nodes online, min-replies accepted, round-goal updates)."""
    asks = (("min-nodes", min_nodes), ("min-replies", min_replies), ("round-goal", round_goal))
    return max(asks, key=lambda ask: ask[1])


@dataclass(frozen=True)
class RolloutSettings:
    """A deploy run (mode = "deploy", server/rollout.py); it also reads round-timeout-s, seed,
    and the canary's training schedule batch-size, lr and optimizer."""

    canary_fraction: float = field(
        default=0.0,
        metadata=_rules(
            "this fraction of the devices first, the rest only if all install", ge=0, le=1
        ),
    )
    baseline_ticket_path: Path | None = field(
        default=None, metadata=_rules("the active ticket the canary's evaluation compares with")
    )
    canary_epochs: int = field(
        default=5,
        metadata=_rules(
            "each canary device trains each ticket this long, then scores it (0: off)", ge=0
        ),
    )
    canary_max_regression: float = field(
        default=0.01,
        metadata=_rules("accuracy the new ticket may lose against the active one", ge=0, le=1),
    )
    min_installed: float = field(
        default=1.0,
        metadata=_rules(
            "the fraction of devices that must install for the rollout to count", gt=0, le=1
        ),
    )

    def __post_init__(self) -> None:
        _check(self)


@dataclass(frozen=True)
class SimulationSettings:
    """Virtual nodes of the Simulation Engine (`flwr run APP NAME --federation-config
    'num-supernodes=N'`) take their data from these keys and their ticket from ticket-path,
    fleet-key and allow-unsigned; real nodes ignore them (their node config names their data)."""

    sim_dataset: str | None = field(
        default=None,
        metadata=_rules('"" = no virtual nodes; e.g. "mnist"', choices=tuple(DATASETS)),
    )
    sim_partition: str = field(
        default="iid",
        metadata=_rules(
            "how the dataset is split across the virtual nodes", choices=tuple(PARTITIONERS)
        ),
    )
    sim_partition_seed: int = field(default=0, metadata=_rules("the split's seed", ge=0))
    sim_num_partitions: int = field(
        default=0,
        metadata=_rules(
            "0: an N-way split for N virtual nodes; else node i takes part i of this many", ge=0
        ),
    )
    sim_partition_shards: int = field(
        default=2, metadata=_rules('with sim-partition = "shards"', ge=1)
    )
    sim_partition_alpha: float = field(
        default=0.5, metadata=_rules('with sim-partition = "dirichlet"', gt=0)
    )

    def __post_init__(self) -> None:
        _check(self)


@dataclass(frozen=True)
class SearchSettings:
    """A fleet ticket search (mode = "find", server/fleet_search.py) inside the dense ticket at
    ticket-path; its rounds read the training keys (schedule, sampling, secagg) too."""

    search_method: str = field(
        default="fed-imp",
        metadata=_rules("how the ticket is found on the fleet", choices=SEARCH_METHODS),
    )
    search_target_density: float = field(
        default=0.2, metadata=_rules("fraction of the prunable weights kept", gt=0, le=1)
    )
    search_rounds_per_level: int = field(
        default=3,
        metadata=_rules(
            "federated rounds per pruning level (fed-early-bird: at most); fed-oneshot's dense "
            "rounds",
            ge=1,
        ),
    )
    search_rate: float = field(
        default=0.2,
        metadata=_rules(
            "fed-imp: fraction of the remaining weights pruned per level", gt=0, le=0.95
        ),
    )
    search_output_rate: float = field(
        default=0.0,
        metadata=_rules("the output layer's rate; 0 = half of search-rate", ge=0, le=0.95),
    )
    search_scope: str = field(
        default="layerwise",
        metadata=_rules("magnitude ranking per layer or across layers", choices=SEARCH_SCOPES),
    )
    search_rewind_round: int = field(
        default=0,
        metadata=_rules(
            "the survivors rewind to the global weights after this many dense rounds (W_k)", ge=0
        ),
    )
    search_early_bird_distance: float = field(
        default=0.05,
        metadata=_rules(
            "fed-early-bird: a level stops once consecutive rounds' masks differ in fewer than "
            "this fraction of the weights",
            gt=0,
            le=1,
        ),
    )
    search_synflow_iterations: int = field(
        default=100, metadata=_rules("synflow: pruning iterations", ge=1)
    )
    search_out: Path | None = field(
        default=None,
        metadata=_rules("required to find: absolute path of the .ticket the search writes"),
    )
    search_push_ticket: bool = field(
        default=True,
        metadata=_rules(
            "push the dense ticket to the devices first (off for virtual nodes, which read "
            "ticket-path)"
        ),
    )

    # The search rounds' local schedule, each 0 or "" for the training key's own. On the four
    # heart hospitals one full-batch gradient step a round (FedSGD: search-optimizer sgd,
    # search-batch-size above any device's rows, search-local-epochs 1) found tickets as good
    # as pooled rows did where local Adam epochs did not (docs/fleet-search.md).
    search_local_epochs: int = field(
        default=0, metadata=_rules("the search rounds' local epochs; 0 = local-epochs", ge=0)
    )
    search_batch_size: int = field(
        default=0,
        metadata=_rules(
            "the search rounds' local batch size (above a device's rows: one full-batch step "
            "an epoch); 0 = batch-size",
            ge=0,
        ),
    )
    search_lr: float = field(
        default=0.0, metadata=_rules("the search rounds' local learning rate; 0 = lr", ge=0)
    )
    search_optimizer: str = field(
        default="",
        metadata=_rules(
            'the search rounds\' local optimizer; "" = optimizer', choices=("", *OPTIMIZERS)
        ),
    )
    search_fit_encoding: bool = field(
        default=False,
        metadata=_rules(
            "fit the encoding of readings on the fleet's counts first (one secure round), then "
            "draw the dense ticket at W_0 from seed and write it to ticket-path"
        ),
    )
    search_model: str = field(
        default="",
        metadata=_rules("search-fit-encoding: model registry name of the dense ticket"),
    )
    search_schema: str = field(
        default="heart-uci",
        metadata=_rules(
            "search-fit-encoding: the readings schema whose encoding is fitted",
            choices=("heart-uci",),
        ),
    )
    search_count_cap: int = field(
        default=2**16 - 1,
        metadata=_rules(
            "search-fit-encoding: the most readings a device may count in one bin; a device "
            "holding more sits the fit out",
            ge=1,
            le=2**24 - 1,
        ),
    )
    search_sign_key: Path | None = field(
        default=None,
        metadata=_rules(
            "search-fit-encoding: the fleet's private key, to sign the dense ticket the "
            "devices install"
        ),
    )

    def __post_init__(self) -> None:
        _check(self)
        if self.search_fit_encoding and not self.search_model:
            raise RunConfigError("run config: search-fit-encoding needs search-model")

    def schedule(self, training: TrainingSettings) -> TrainingSettings:
        """`training` with the local schedule the search's rounds run: each search-* schedule
        key that is set replaces its training key."""
        return dataclasses.replace(
            training,
            local_epochs=self.search_local_epochs or training.local_epochs,
            batch_size=self.search_batch_size or training.batch_size,
            lr=self.search_lr or training.lr,
            optimizer=self.search_optimizer or training.optimizer,
        )


# SearchSettings' fields that `schedule` reads: the search rounds' own local schedule.
SEARCH_SCHEDULE_FIELDS = (
    "search_local_epochs",
    "search_batch_size",
    "search_lr",
    "search_optimizer",
)


@dataclass(frozen=True)
class RunConfig:
    """A whole run config: every key of `[tool.flwr.app.config]`, typed."""

    placement: RunPlacement = field(default_factory=RunPlacement)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    rollout: RolloutSettings = field(default_factory=RolloutSettings)
    simulation: SimulationSettings = field(default_factory=SimulationSettings)
    search: SearchSettings = field(default_factory=SearchSettings)


Group = RunPlacement | TrainingSettings | RolloutSettings | SimulationSettings | SearchSettings
G = typing.TypeVar("G", bound=Group)


def key_of(name: str) -> str:
    """The run-config key of a field: `dp_noise_multiplier` -> `dp-noise-multiplier`."""
    return name.replace("_", "-")


def groups() -> list[tuple[str, type[Group]]]:
    """(RunConfig's field name, settings class), in table order."""
    hints = typing.get_type_hints(RunConfig)
    return [(spec.name, hints[spec.name]) for spec in dataclasses.fields(RunConfig)]


def settings_of(group: type[Any]) -> list[tuple[dataclasses.Field[Any], Any]]:
    """(field, resolved type) of every setting of one group (or of a dataclass extending one)."""
    hints = typing.get_type_hints(group)
    return [(spec, hints[spec.name]) for spec in dataclasses.fields(group)]


def keys() -> list[str]:
    """Every run-config key, in table order."""
    return [key_of(spec.name) for _, group in groups() for spec, _ in settings_of(group)]


def parse(config: Mapping[str, object]) -> RunConfig:
    """A Flower run config (`context.run_config`) typed; keys left out take their default."""
    unknown = sorted(set(config) - set(keys()))
    if unknown:
        raise RunConfigError(f"run config: {unknown[0]}: unknown key")
    return RunConfig(
        placement=_parse_group(RunPlacement, config),
        training=_parse_group(TrainingSettings, config),
        rollout=_parse_group(RolloutSettings, config),
        simulation=_parse_group(SimulationSettings, config),
        search=_parse_group(SearchSettings, config),
    )


def to_run_config(config: RunConfig) -> dict[str, ConfigValue]:
    """Every key of `config` as `flwr run --run-config` takes it (None as "")."""
    flat: dict[str, ConfigValue] = {}
    for name, group in groups():
        part = getattr(config, name)
        for spec, _ in settings_of(group):
            flat[key_of(spec.name)] = _to_config(getattr(part, spec.name))
    return flat


def require(part: Group, name: str) -> Any:
    """`part.name`, which this run cannot do without; RunConfigError naming its key if unset."""
    value = getattr(part, name)
    if value is None:
        raise RunConfigError(f"run config: {key_of(name)} is required")
    return value


def render_table() -> str:
    """The whole `[tool.flwr.app.config]` table: every key, its default, its help line."""
    lines = [f"[{TABLE}]"]
    for _, group in groups():
        about = " ".join((group.__doc__ or "").split())
        lines += [f"# {line}" for line in textwrap.wrap(about, 96, break_on_hyphens=False)]
        for spec, _ in settings_of(group):
            value = _toml(_to_config(spec.default))
            lines.append(f"{key_of(spec.name)} = {value}  # {spec.metadata['help']}")
    return "\n".join(lines) + "\n"


def replace_table(pyproject: str) -> str:
    """`pyproject` with its `[tool.flwr.app.config]` table (the header line up to the first
    blank line) replaced by `render_table()`."""
    lines = pyproject.splitlines(keepends=True)
    header = f"[{TABLE}]\n"
    if header not in lines:
        raise ValueError(f"no [{TABLE}] table")
    start = lines.index(header)
    end = next((i for i in range(start, len(lines)) if not lines[i].strip()), len(lines))
    return "".join([*lines[:start], render_table(), *lines[end:]])


def render_app_pyproject(*, name: str, version: str) -> str:
    """A Flower app's pyproject.toml: project, publisher, components and the config table."""
    return "\n".join(
        [
            "# Generated by ticket/runconfig.py: the app's components are the installed code.",
            "[project]",
            f"name = {_toml(name)}",
            f"version = {_toml(version)}",
            "",
            "[tool.flwr.app]",
            f"publisher = {_toml(PUBLISHER)}",
            "",
            "[tool.flwr.app.components]",
            f"serverapp = {_toml(SERVER_APP)}",
            f"clientapp = {_toml(CLIENT_APP)}",
            "",
            render_table(),
        ]
    )


def write_app(directory: Path, *, name: str, version: str) -> Path:
    """Write (atomically) the app directory `directory` holding only its pyproject.toml."""
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        directory / "pyproject.toml", render_app_pyproject(name=name, version=version)
    )
    return directory


# -- checks --------------------------------------------------------------------------------


def _parse_group(group: type[G], config: Mapping[str, object]) -> G:
    values: dict[str, Any] = {
        spec.name: _from_config(key_of(spec.name), hint, config[key_of(spec.name)])
        for spec, hint in settings_of(group)
        if key_of(spec.name) in config
    }
    return group(**values)


def _from_config(key: str, hint: Any, raw: object) -> object:
    """A run-config value as the field holds it: "" is None for an optional one."""
    if _optional(hint) is not None:
        if not isinstance(raw, str):
            raise RunConfigError(f"run config: {key}: must be a string, got {raw!r}")
        if raw == "":
            return None
        return Path(raw) if _optional(hint) is Path else raw
    return raw


def _check(part: object) -> None:
    """Type and range of every field of a settings object; an int given for a float is kept
    as a float."""
    for spec, hint in settings_of(type(part)):
        key, value = key_of(spec.name), getattr(part, spec.name)
        checked = _checked(key, hint, value, spec.metadata)
        if checked is not value:
            object.__setattr__(part, spec.name, checked)


def _checked(key: str, hint: Any, value: object, rules: Mapping[str, Any]) -> object:
    inner = _optional(hint)
    if inner is not None:
        if value is None:
            return None
        hint = inner
    if hint is bool:
        if not isinstance(value, bool):
            raise RunConfigError(f"run config: {key}: must be true or false, got {value!r}")
        return value
    if hint in (int, float):
        return _number(key, hint, value, rules)
    if hint is Path:
        if isinstance(value, str) and value:
            return Path(value)
        if not isinstance(value, Path):
            raise RunConfigError(f"run config: {key}: must be a path, got {value!r}")
        return value
    if not isinstance(value, str):
        raise RunConfigError(f"run config: {key}: must be a string, got {value!r}")
    choices = rules.get("choices")
    if choices is not None and value not in choices:
        shown = ", ".join(choice or '""' for choice in choices)  # "" is a choice too: say so
        raise RunConfigError(f"run config: {key}: must be one of: {shown}; got {value!r}")
    return value


def _number(key: str, hint: type, value: object, rules: Mapping[str, Any]) -> object:
    # bool is an int subclass, but true is not 1; 2.0 is not a whole number.
    is_typed = isinstance(value, int) or (hint is float and isinstance(value, float))
    number = float(typing.cast(float, value)) if is_typed and not isinstance(value, bool) else None
    is_ok = (
        number is not None
        and math.isfinite(number)
        and number >= rules.get("ge", -math.inf)
        and number > rules.get("gt", -math.inf)
        and number <= rules.get("le", math.inf)
    )
    if not is_ok:
        kind = "a whole number" if hint is int else "a number"
        raise RunConfigError(
            f"run config: {key}: must be {kind}{describe_bounds(rules)}, got {value!r}"
        )
    return value if hint is int else number


def _optional(hint: Any) -> Any:
    """X for `X | None`, else None."""
    options = typing.get_args(hint)
    if type(None) in options:
        (inner,) = (option for option in options if option is not type(None))
        return inner
    return None


def _to_config(value: object) -> ConfigValue:
    if value is None:
        return ""
    if isinstance(value, Path):
        return str(value)
    return typing.cast(ConfigValue, value)


def _toml(value: ConfigValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string
    return repr(value)


def main(argv: list[str]) -> None:
    """`python -m ticket.runconfig [PYPROJECT]`: print the table, or rewrite PYPROJECT's."""
    if not argv:
        print(render_table(), end="")
        return
    path = Path(argv[0])
    atomic_write_text(path, replace_table(path.read_text(encoding="utf-8")))


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
