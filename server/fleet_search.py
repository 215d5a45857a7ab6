"""A fleet ticket search (`mode = "find"`): find the winning ticket where the data is.

The search runs inside a signed ticket the devices hold (normally a dense one from `ticket
init`), pushed to them first. Its methods (ticket.fleet_search.SEARCHES) are of three kinds:
- data-free (`synflow`): the server computes the mask from the initial weights; no round runs;
- saliency (`fed-snip`): one round in which every device scores its connections on its own
  rows; the server keeps the most salient weights of the fleet's mean score;
- pruning levels (`fed-imp`, `fed-oneshot`, `fed-early-bird`): each level is ordinary federated
  training of the current sparse network (PackedFedAvg, or SecurePackedFedAvg under secure
  aggregation) from W_k; the level's final aggregate is pruned by magnitude and the survivors
  rewound to W_k for the next level.

Every round's instruction carries the level's mask (ticket/wire.py SearchStep), so the payload
and the updates are packed over it exactly as in training. Files under the run directory:
`level-NNN/` (a level's round checkpoints and rounds.jsonl: server/training_run.py) and
`level-NNN.state` (ticket.fleet_search.state: the mask and W_k after NNN finished levels). A
killed search resumes at its last finished round and never repeats a finished level. Round
numbers run on across levels (level 1's first round follows level 0's last), so a device's
secure aggregation state of one round is never reused by another. Only aggregates are kept:
W_k, masks and counts; no device's update is ever stored.
"""

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from server.checkpoint import RunCheckpoint
from server.encoding_fit import SCHEMAS, fit_encoding
from server.privacy import Release, charged_rounds, epsilon
from server.rollout import push
from server.run_log import RunLog, plot_run
from server.run_settings import ServerSettings
from server.strategy import PackedFedAvg
from server.training_run import RunPaths, make_strategy, run_resumable, run_settings
from ticket import __version__
from ticket.atomic import atomic_write_bytes, atomic_write_text
from ticket.bundle import Ticket, build_ticket, encode_ticket, read_ticket, sign_ticket
from ticket.dense import dense_ticket
from ticket.errors import TicketError
from ticket.fleet_search import SEARCHES, DataFree, FleetPruning, FleetSaliency, SearchMethod
from ticket.fleet_search.magnitude import hamming, next_mask, rewind
from ticket.fleet_search.mask_bits import encode_mask
from ticket.fleet_search.state import SearchState, latest_state, save_state
from ticket.manifest import DataSpec, Density, FleetSpec, Manifest, MethodSpec, measure_density
from ticket.masks import prunable_names
from ticket.models import build_model
from ticket.packing import PackLayout
from ticket.prune import PruningRates, derive_seed, is_at_target
from ticket.runconfig import SEARCH_SCHEDULE_FIELDS, RunConfig, RunConfigError, SearchSettings
from ticket.wire import INSTALLED, SALIENCY, SearchStep

logger = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray]
NODE_POLL_S = 1.0  # how often the search looks for devices to connect before it starts
ENCODING_STATE = "encoding.json"  # search-fit-encoding: the fit's record and the dense ticket's id


class SearchError(TicketError):
    """The search cannot go on: too few devices, no usable round, a bad ticket."""


@dataclass(frozen=True)
class FindSettings:
    """A search run's settings: the search keys, and the training keys its rounds use."""

    search: SearchSettings
    training: ServerSettings  # ticket-path is the ticket searched in; num-rounds is unused
    out: Path

    @classmethod
    def from_run(cls, run: RunConfig) -> "FindSettings":
        if run.search.search_out is None:
            raise RunConfigError("run config: search-out is required to find")
        training = ServerSettings.from_run(replace(run, training=run.search.schedule(run.training)))
        if run.search.search_rewind_round > run.search.search_rounds_per_level:
            raise RunConfigError(
                "run config: search-rewind-round must be at most search-rounds-per-level "
                f"({run.search.search_rounds_per_level}), got {run.search.search_rewind_round}"
            )
        return cls(run.search, training, run.search.search_out)

    @property
    def method(self) -> SearchMethod:
        return SEARCHES[self.search.search_method]

    @property
    def rates(self) -> PruningRates:
        output = self.search.search_output_rate
        return PruningRates(self.search.search_rate, None if output == 0.0 else output)

    def fingerprint(self, ticket_id: str) -> dict[str, Any]:
        """What a resume must not change: the searched ticket, every search key that shapes
        the result (the output path and the seed push are not among them) and the local
        schedule the rounds ran, as the devices were told it (the run's keys where the
        search-* schedule keys leave them: a changed `run:` lr counts too)."""
        keys = asdict(self.search)
        unshaping = ("search_out", "search_push_ticket", "search_sign_key")
        # The schedule fields' 0s stand for run keys: the schedule they make is kept instead.
        for name in (*unshaping, *SEARCH_SCHEDULE_FIELDS):
            del keys[name]
        schedule = asdict(self.training.plan.train)
        return {"searched_ticket": ticket_id, **keys, "local_schedule": schedule}


@dataclass
class _Level:
    """One level's rounds as they ran: the final global vector and what they cost."""

    vector: npt.NDArray[np.float32]
    rounds: int
    bytes_up: int
    bytes_down: int
    nodes: set[int]
    lines: list[dict[str, Any]]
    checkpoints: RunCheckpoint  # the level's round checkpoints (late rewinding reads one)
    first: int  # rounds numbered before the level's first
    layout: PackLayout  # how the level's vectors pack its mask


def run_search(grid: Any, settings: FindSettings, *, now: datetime | None = None) -> Ticket:
    """Run (or resume) the search; write the found ticket (unsigned) to `settings.out`."""
    training = settings.training
    fitted = None
    if settings.search.search_fit_encoding:
        fitted = _fitted_dense_ticket(grid, settings, now or datetime.now(UTC))
    keys = [training.fleet_key.read_bytes()] if training.fleet_key is not None else []
    base = read_ticket(
        training.ticket_path, trusted_keys=keys, allow_unsigned=training.allow_unsigned
    )
    fingerprint = settings.fingerprint(base.content_id)
    run_dir = training.run_dir
    state = latest_state(run_dir, fingerprint)
    if state is None:
        state = SearchState(level=0, mask=base.masks, w_k=base.weights, settings=fingerprint)
        if fitted is not None:  # the fit's round counts among the search's, and its bytes
            state = replace(
                state,
                rounds=int(fitted["round"]),
                bytes_up=int(fitted["bytes_up"]),
                bytes_down=int(fitted["bytes_down"]),
                nodes=tuple(int(node) for node in fitted["nodes"]),
            )
    elif state.is_done:
        logger.info("%s: the search had finished; writing its ticket again", run_dir)
    if not state.is_done:
        if settings.search.search_push_ticket and not isinstance(settings.method, DataFree):
            _push_base(grid, base, training)
        while not state.is_done:
            state = _next_level(grid, settings, base, state)
            save_state(run_dir, state)
    ticket = _found_ticket(settings, base, state, now or datetime.now(UTC))
    settings.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(settings.out, encode_ticket(ticket))
    return ticket


def _fitted_dense_ticket(grid: Any, settings: FindSettings, created_at: datetime) -> dict[str, Any]:
    """search-fit-encoding: fit the encoding on the fleet's counts (server/encoding_fit.py),
    draw the dense ticket at W_0 and write it to ticket-path, signed with search-sign-key when
    set; the fit's record. Kept in the run directory's encoding.json, so a resumed search
    neither asks the fleet again nor draws another W_0."""
    search, training = settings.search, settings.training
    held = training.run_dir / ENCODING_STATE
    if held.is_file():
        return _read_fit_record(held, training.ticket_path)
    if training.ticket_path.exists():
        drawn = _drawn_here(training.ticket_path, training.run_dir.name)
        if drawn is not None:  # killed between writing the ticket and its record
            kept = {**drawn.manifest.metrics["encoding_fit"], "nodes": []}
            kept["dense_ticket"] = drawn.content_id
            atomic_write_text(held, json.dumps(kept, indent=2, sort_keys=True) + "\n")
            return kept
        raise SearchError(
            f"{training.ticket_path} exists: with search-fit-encoding the search writes the "
            "dense ticket it draws to ticket-path; move that file or name another path"
        )
    _wait_for_devices(grid, training)
    fit = fit_encoding(grid, training, schema=search.search_schema, cap=search.search_count_cap)
    record = {"fitted_on": "fleet", "run_id": training.run_dir.name, **fit.to_json()}
    data = DataSpec(
        name=fit.schema,
        num_features=len(fit.preprocessor.feature_names),
        num_classes=SCHEMAS[fit.schema],
        preprocessing=fit.preprocessor.to_json(),
    )
    try:
        dense = dense_ticket(
            search.search_model,
            data,
            seed=training.plan.seed,
            tool={"name": "fleet-server find", "version": __version__},
            created_at=created_at,
            metrics={"encoding_fit": record},
        )
        if search.search_sign_key is not None:
            dense = sign_ticket(dense, search.search_sign_key.read_bytes())
    except (OSError, TicketError) as error:
        raise SearchError(f"cannot make the dense ticket to search in: {error}") from None
    training.ticket_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(training.ticket_path, encode_ticket(dense))
    kept = {**record, "nodes": list(fit.nodes), "dense_ticket": dense.content_id}
    training.run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(held, json.dumps(kept, indent=2, sort_keys=True) + "\n")
    return kept


def _drawn_here(path: Path, run_id: str) -> Ticket | None:
    """The dense ticket at `path` if this search drew it (its fit names this run), else None."""
    try:
        ticket = read_ticket(path, allow_unsigned=True)
    except TicketError:
        return None
    fit = ticket.manifest.metrics.get("encoding_fit")
    if isinstance(fit, dict) and fit.get("fitted_on") == "fleet" and fit.get("run_id") == run_id:
        return ticket
    return None


def _read_fit_record(path: Path, ticket_path: Path) -> dict[str, Any]:
    """The encoding fit a resumed search made; SearchError when it or its ticket is damaged."""
    try:
        record = json.loads(path.read_text())
        ticket = read_ticket(ticket_path, allow_unsigned=True)
        matches = isinstance(record, dict) and record.get("dense_ticket") == ticket.content_id
        if matches:
            for key in ("round", "bytes_up", "bytes_down"):
                int(record[key])
            [int(node) for node in record["nodes"]]
    except (OSError, ValueError, KeyError, TypeError, TicketError) as error:
        raise SearchError(f"{path}: the encoding fit's record is unreadable: {error}") from None
    if not matches:
        raise SearchError(
            f"{path} records the dense ticket of another fit than {ticket_path}: start afresh "
            "with a new run name"
        )
    fit: dict[str, Any] = record
    return fit


def _push_base(grid: Any, base: Ticket, training: ServerSettings) -> None:
    """Install the searched ticket on the connected devices (waiting up to round-timeout-s for
    min-nodes of them to connect); enough of them must take it."""
    nodes = _wait_for_devices(grid, training)
    acks = push(
        grid,
        training.ticket_path.read_bytes(),
        base.content_id,
        nodes,
        timeout=training.round_timeout_s,
    )
    installed = [ack.node_id for ack in acks if ack.status == INSTALLED]
    for ack in acks:
        if ack.status != INSTALLED:
            logger.warning(
                "node %d did not install the searched ticket: %s", ack.node_id, ack.reason
            )
    logger.info(
        "%d of %d devices installed ticket %s", len(installed), len(nodes), base.content_id[:12]
    )
    if len(installed) < training.min_nodes:
        raise SearchError(
            f"only {len(installed)} of {len(nodes)} connected devices installed ticket "
            f"{base.content_id[:12]}; the search needs min-nodes = {training.min_nodes}"
        )


def _wait_for_devices(grid: Any, training: ServerSettings) -> list[int]:
    """The connected node ids, once min-nodes of them are (or round-timeout-s has passed).

    Waited for before anything reads the roster: an operator enrolls devices while the search
    waits, and a roster read earlier would refuse the keys of those enrolled since."""
    deadline = time.monotonic() + training.round_timeout_s
    nodes = sorted(grid.get_node_ids())
    while len(nodes) < training.min_nodes and time.monotonic() < deadline:
        time.sleep(NODE_POLL_S)
        nodes = sorted(grid.get_node_ids())
    return nodes


def _next_level(grid: Any, settings: FindSettings, base: Ticket, state: SearchState) -> SearchState:
    method = settings.method
    if isinstance(method, DataFree):
        return _data_free(method, settings, base, state)
    if isinstance(method, FleetSaliency):
        return _saliency(grid, method, settings, base, state)
    return _pruning_level(grid, method, settings, base, state)


def _data_free(
    method: DataFree, settings: FindSettings, base: Ticket, state: SearchState
) -> SearchState:
    if not all(np.all(mask) for mask in base.masks.values()):
        raise SearchError(
            f"{settings.search.search_method} prunes at initialisation: it needs a dense ticket"
        )
    spec = base.manifest
    if spec.data.num_features is None:
        raise SearchError("the ticket's manifest does not say its number of input features")
    model = build_model(spec.model.name, spec.model.args, seed=0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.copy_(torch.from_numpy(np.array(base.weights[name])))
    found = method.prune(
        model,
        (spec.data.num_features,),
        settings.search.search_target_density,
        settings.search.search_synflow_iterations,
    )
    mask = {name: found[name].numpy().astype(np.bool_) for name in prunable_names(model)}
    return replace(
        state,
        level=state.level + 1,
        mask=mask,
        history=(*state.history, _history_line(state.level, mask, None)),
        is_done=True,
    )


def _saliency(
    grid: Any, method: FleetSaliency, settings: FindSettings, base: Ticket, state: SearchState
) -> SearchState:
    secagg = settings.training.secagg
    scale = 1.0 if secagg is None else secagg.clip  # fits the clip: saliency is never cut
    step = SearchStep(encode_mask(state.mask), SALIENCY, scale)
    start = rewind(state.w_k, state.mask)
    level = _run_level(grid, settings, base, state, start=start, step=step, rounds=1)
    if not level.nodes:
        raise SearchError("no device's saliency arrived: nothing to prune by")
    layout = level.layout
    after, before = layout.unpack(level.vector), layout.unpack(layout.pack(start))
    # Under differential privacy the mean carries noise: a score below zero is noise alone.
    saliency = {name: np.maximum(after[name] - before[name], 0.0) for name in state.mask}
    mask = method.prune(saliency, state.mask, settings.search.search_target_density)
    return _finished_level(state, level, mask, w_k=state.w_k, is_done=True)


def _pruning_level(
    grid: Any, method: FleetPruning, settings: FindSettings, base: Ticket, state: SearchState
) -> SearchState:
    search = settings.search
    step = SearchStep(encode_mask(state.mask))
    start = rewind(state.w_k, state.mask)
    stop_early = None
    if method.early_bird:
        stop_early = _EarlyBird(settings, base, state, method.schedule)
    level = _run_level(
        grid,
        settings,
        base,
        state,
        start=start,
        step=step,
        rounds=search.search_rounds_per_level,
        stop_early=stop_early,
    )
    if not level.nodes:  # the aggregate would be W_k itself: pruning it finds nothing
        raise SearchError(f"level {state.level}: no device's update was averaged in")
    aggregate = level.layout.unpack(level.vector)
    mask = next_mask(
        aggregate,
        state.mask,
        schedule=method.schedule,
        scope=search.search_scope,
        rates=_rates(settings, base),
        target=search.search_target_density,
        level=state.level,
    )
    w_k = state.w_k
    if state.level == 0 and search.search_rewind_round > 0:  # late rewinding: W_k of level 0
        w_k = _rewind_point(level, search.search_rewind_round)
    if mask is None:  # already at the target: the level's mask is the ticket's
        return _finished_level(state, level, dict(state.mask), w_k=w_k, is_done=True)
    torch_mask = {n: torch.from_numpy(np.array(m)) for n, m in mask.items()}
    done = is_at_target(torch_mask, search.search_target_density)
    return _finished_level(state, level, mask, w_k=w_k, is_done=done)


class _EarlyBird:
    """fed-early-bird's stop: the mask the aggregate would prune to stopped moving."""

    def __init__(
        self, settings: FindSettings, base: Ticket, state: SearchState, schedule: str
    ) -> None:
        self.settings, self.state, self.schedule = settings, state, schedule
        self.layout = _layout(base, state.mask)
        self.rates = _rates(settings, base)
        self.previous: Mapping[str, np.ndarray] | None = None
        self.distances: list[float] = []

    def __call__(self, vector: npt.NDArray[np.float32]) -> bool:
        search = self.settings.search
        mask = next_mask(
            self.layout.unpack(vector),
            self.state.mask,
            schedule=self.schedule,
            scope=search.search_scope,
            rates=self.rates,
            target=search.search_target_density,
            level=self.state.level,
        )
        if mask is None:
            return True  # at the target already: no pruning step left to wait for
        previous, self.previous = self.previous, mask
        if previous is None:
            return False
        self.distances.append(hamming(previous, mask))
        return self.distances[-1] < search.search_early_bird_distance


def _run_level(
    grid: Any,
    settings: FindSettings,
    base: Ticket,
    state: SearchState,
    *,
    start: Mapping[str, np.ndarray],
    step: SearchStep,
    rounds: int,
    stop_early: _EarlyBird | None = None,
) -> _Level:
    """The level's rounds, one run_resumable call each so an early stop can end them; a
    resumed level replays its finished rounds' stop checks from their checkpoints."""
    training = settings.training
    layout = _layout(base, state.mask)
    plan = replace(
        training.plan,
        ticket_id=base.content_id,
        seed=derive_seed(training.plan.seed, "level", state.level) % 2**31,
        search=step,
    )
    strategy = make_strategy(
        layout,
        plan,
        fraction_train=training.fraction_train,
        fraction_evaluate=0.0,  # a level's network is not the product: nothing to score
        min_nodes=training.min_nodes,
        secagg=training.secagg,
        dp=training.dp,
        roster=training.roster,
        rounds=training.rounds,
    )
    directory = training.run_dir / f"level-{state.level:03d}"
    first = state.rounds  # round numbers run on across levels
    initial = layout.pack(start)
    checkpoints = _checkpoints(strategy, directory)
    vector = initial
    ran = 0
    for local in range(1, rounds + 1):
        held = checkpoints.latest()
        if held is None or held.server_round < first + local:
            run_resumable(
                strategy,
                grid,
                initial,
                run_dir=directory,
                num_rounds=first + local,
                timeout=training.round_timeout_s,
                start_round=first,
                plot=False,
            )
        vector = checkpoints.load(first + local).vector
        ran = local
        # An early stop never comes before the rewind point W_k has been reached.
        may_stop = state.level > 0 or local >= settings.search.search_rewind_round
        if stop_early is not None and stop_early(vector) and may_stop:
            logger.info("level %d: the mask settled after %d rounds", state.level, local)
            break
    paths = RunPaths(directory)
    plot_run(paths.log, paths.plot, title=f"search level {state.level}")
    lines = [line for line in RunLog(paths.log).read() if int(line["round"]) <= first + ran]
    return _Level(
        vector=vector,
        rounds=ran,
        bytes_up=sum(int(line["bytes"]["up_total"]) for line in lines),
        bytes_down=sum(int(line["bytes"]["down_total"]) for line in lines),
        nodes={int(node) for line in lines for node in line["participants"]},
        lines=lines,
        checkpoints=checkpoints,
        first=first,
        layout=layout,
    )


def _checkpoints(strategy: PackedFedAvg, directory: Path) -> RunCheckpoint:
    return RunCheckpoint(
        RunPaths(directory).checkpoints,
        ticket_id=strategy.plan.ticket_id,
        size=strategy.layout.size,
        settings=run_settings(strategy),
    )


def _rewind_point(level: _Level, rewind_round: int) -> Arrays:
    """W_k: level 0's global weights after `rewind_round` rounds (its checkpoint)."""
    vector = level.checkpoints.load(level.first + rewind_round).vector
    return level.layout.unpack(vector)


def _finished_level(
    state: SearchState,
    level: _Level,
    mask: Mapping[str, np.ndarray],
    *,
    w_k: Mapping[str, np.ndarray],
    is_done: bool,
) -> SearchState:
    return replace(
        state,
        level=state.level + 1,
        mask=dict(mask),
        w_k=dict(w_k),
        rounds=state.rounds + level.rounds,
        bytes_up=state.bytes_up + level.bytes_up,
        bytes_down=state.bytes_down + level.bytes_down,
        nodes=tuple(sorted(set(state.nodes) | level.nodes)),
        history=(*state.history, _history_line(state.level, mask, level)),
        is_done=is_done,
    )


def _history_line(
    number: int, mask: Mapping[str, np.ndarray], level: _Level | None
) -> dict[str, Any]:
    line: dict[str, Any] = {"level": number, "density_after": measure_density(mask)["overall"]}
    if level is not None:
        losses = [
            line["train"]["loss"] for line in level.lines if line["train"]["loss"] is not None
        ]
        line |= {
            "rounds": level.rounds,
            "bytes_up": level.bytes_up,
            "bytes_down": level.bytes_down,
            "devices": len(level.nodes),
            "train_loss": losses[-1] if losses else None,
            "charged": [release.to_json() for release in charged_rounds(level.lines)],
        }
    return line


def _found_ticket(
    settings: FindSettings, base: Ticket, state: SearchState, created_at: datetime
) -> Ticket:
    search, training = settings.search, settings.training
    spec = base.manifest
    try:
        charged = [
            Release.from_json(release)
            for line in state.history
            for release in line.get("charged", [])
        ]
    except ValueError as error:
        raise SearchError(f"the search's state holds a bad privacy record: {error}") from None
    dp_epsilon = None
    if training.dp is not None and charged:
        dp_epsilon = epsilon(charged, training.dp.delta)
    manifest = Manifest(
        model=spec.model,
        # The devices' data never reaches the server: the ticket names the task and the
        # encoding of readings it was searched with, not rows it never saw.
        data=DataSpec(
            name=spec.data.name,
            num_features=spec.data.num_features,
            num_classes=spec.data.num_classes,
            preprocessing=spec.data.preprocessing,
        ),
        method=MethodSpec(
            name=search.search_method,
            pruner=None
            if isinstance(settings.method, DataFree | FleetSaliency)
            else f"magnitude-{search.search_scope}",
            rates=None
            if not isinstance(settings.method, FleetPruning)
            else {
                "rate": search.search_rate,
                "output_rate": search.search_output_rate or search.search_rate / 2,
            },
            target_density=search.search_target_density,
            seed=training.plan.seed,
            train=asdict(training.plan.train),
        ),
        rewind_step=search.search_rewind_round,
        density=Density.from_json(measure_density(state.mask), at="density"),
        metrics={
            "search_levels": [dict(line) for line in state.history],
            **({"encoding_fit": fit} if (fit := spec.metrics.get("encoding_fit")) else {}),
        },
        parent=base.content_id,
        created_at=created_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        tool={"name": "fleet-server find", "version": __version__},
        fleet=FleetSpec(
            run_id=training.run_dir.name,
            devices=len(state.nodes),
            rounds=state.rounds,
            levels=len(state.history),
            bytes_up=state.bytes_up,
            bytes_down=state.bytes_down,
            secagg=training.secagg is not None,
            dp_epsilon=dp_epsilon,
        ),
    )
    weights = rewind(state.w_k, state.mask)
    return build_ticket(manifest, state.mask, weights)


def _layout(base: Ticket, mask: Mapping[str, np.ndarray]) -> PackLayout:
    return PackLayout.from_masks({n: w.shape for n, w in base.weights.items()}, mask)


def _rates(settings: FindSettings, base: Ticket) -> dict[str, float]:
    """Per-layer pruning rates; the output layer is the model's last prunable one."""
    model = build_model(base.manifest.model.name, base.manifest.model.args, seed=0)
    return settings.rates.per_layer(prunable_names(model))
