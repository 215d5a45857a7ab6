"""Shared test set-up."""

import torch

# The models under test are tiny: one intra-op thread is several times faster than two
# threads fighting another process for this machine's two cores.
torch.set_num_threads(1)
