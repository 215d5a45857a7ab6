"""The anchor's ClientApp: a virtual node trains dense lenet-300-100 (torch) on the MNIST
partition the project's ClientApp would give it (edge_daemon.local_data), and replies with
Flower's ArrayRecord, as Flower's quickstart-pytorch does."""

import functools

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from edge_daemon.client_app import local_seed, simulated_node_config
from edge_daemon.local_data import LocalDataSpec, load_local_data
from fedavg_anchor.task import dense_model, train_local
from ticket import runconfig

app = ClientApp()


@functools.cache
def _one_thread() -> None:
    """Once per engine worker: torch on one thread, as the project's ClientApp holds BLAS to
    one thread per worker (edge_daemon.client_app.virtual_node_threads)."""
    torch.set_num_threads(1)


@app.train()
def train(msg: Message, context: Context) -> Message:
    _one_thread()
    run = runconfig.parse(context.run_config)
    node = {**context.node_config, **simulated_node_config(context.run_config)}
    data = load_local_data(LocalDataSpec.from_node_config(node))  # cached per worker
    model = dense_model(seed=0)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    server_round = int(msg.content["config"]["server-round"])
    settings = run.training
    loss = train_local(
        model,
        data.x_train,
        data.y_train,
        epochs=settings.local_epochs,
        batch_size=settings.batch_size,
        lr=settings.lr,
        optimizer=settings.optimizer,
        seed=local_seed(settings.seed, server_round, context.node_id),
    )
    metrics = MetricRecord({"train_loss": loss, "num-examples": len(data.y_train)})
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics})
    return Message(content=content, reply_to=msg)
