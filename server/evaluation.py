"""Server-side evaluation of the global packed vector on held-out data (ticket.train.evaluate)."""

import numpy as np
import numpy.typing as npt
import torch

from ticket.bundle import Ticket
from ticket.data.encode import load_encoded
from ticket.errors import TicketError
from ticket.models import build_model
from ticket.packing import PackLayout
from ticket.train import evaluate, load_weights
from ticket.train_config import EvalResult


class ServerEvaluator:
    """Loads a packed vector into the ticket's model and evaluates it on fixed (x, y)."""

    def __init__(
        self, ticket: Ticket, layout: PackLayout, x: torch.Tensor, y: torch.Tensor
    ) -> None:
        spec = ticket.manifest.model
        self.model = build_model(spec.name, spec.args, seed=0)  # weights replaced per call
        self.layout = layout
        self.x = x  # float32 [M, F]
        self.y = y  # int64 [M]

    @classmethod
    def held_out(cls, ticket: Ticket, layout: PackLayout, dataset: str) -> "ServerEvaluator":
        """Evaluate on the pooled test rows of `dataset`, encoded with the ticket's own recipe.

        The ticket's preprocessing was fitted on the data it was found on (e.g. one hospital);
        its model expects that encoding. Raises TicketError if the dataset cannot take it.
        """
        preprocessing = ticket.manifest.data.preprocessing
        if preprocessing is None:
            raise TicketError("the ticket's manifest has no data.preprocessing")
        data = load_encoded(dataset, preprocessing)
        return cls(ticket, layout, data.x_test, data.y_test)

    def __call__(self, vector: npt.NDArray[np.float32]) -> EvalResult:
        load_weights(self.model, self.layout.unpack_torch(vector))
        return evaluate(self.model, self.x, self.y)
