"""The Prometheus endpoint of `fleet-server run --metrics-port P`: the figures of
`fleet-server status`, read from the run log at every scrape (nothing to keep in sync)."""

from collections.abc import Callable, Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from server.run_status import RunSummary

PREFIX = "ticketfleet"


class RunCollector(Collector):
    """Metrics of one run; `summary()` is called once per scrape."""

    def __init__(self, summary: Callable[[], RunSummary]) -> None:
        self._summary = summary

    def collect(self) -> Iterator[Metric]:
        summary = self._summary()
        last = summary.rounds[-1] if summary.rounds else None
        yield _counter("rounds_completed", "Training rounds finished", summary.last_round)
        yield _gauge("rounds_planned", "Training rounds the run is configured for",
                     summary.rounds_planned)  # fmt: skip
        yield _gauge("round_participants", "Nodes whose update the latest round aggregated",
                     last.participants if last else 0)  # fmt: skip
        yield _gauge("round_dropouts", "Nodes that failed or were rejected in the latest round",
                     last.dropouts if last else 0)  # fmt: skip
        yield _counter("node_failures", "Failed or rejected node replies, all rounds",
                       summary.dropouts_total)  # fmt: skip
        accuracy = summary.accuracy
        if accuracy is not None:
            yield _gauge("accuracy", "Accuracy after the latest evaluated round", accuracy)
        if summary.privacy is not None:
            yield _gauge("dp_epsilon", "Differential privacy spent so far (epsilon at the run's "
                         "delta)", summary.privacy[0])  # fmt: skip
        yield _counter("bytes_up", "Bytes the nodes sent the server", summary.bytes_up_total)
        yield _counter("bytes_down", "Bytes the server sent the nodes", summary.bytes_down_total)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(f"{PREFIX}_{name}", documentation, value=value)


def serve_metrics(
    summary: Callable[[], RunSummary], *, port: int, host: str = "127.0.0.1"
) -> WSGIServer:
    """Serve /metrics on host:port (port 0: any free port, see `server.server_port`) from a
    daemon thread; `shutdown()` and `server_close()` stop it."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(RunCollector(summary))
    server, _ = start_http_server(port, addr=host, registry=registry)
    return server
