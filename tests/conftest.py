import os

import pytest
import torch

from preftune.models import build_model, train_tokenizer
from preftune.world import lists

torch.set_num_threads(min(2, os.cpu_count() or 1))
os.environ.setdefault("PREFTUNE_THREADS", "2")


@pytest.fixture(scope="session")
def tokenizer():
    texts = [r["text"] for r in lists.corpus(400, seed=0)] + [r["prompt"] + r["completion"] for r in lists.sft_data(200, seed=0)]
    return train_tokenizer(texts, vocab_size=400)


@pytest.fixture()
def model(tokenizer):
    return build_model(tokenizer, size="micro", seed=0).eval()


@pytest.fixture(scope="session")
def world_rows():
    return lists.sft_data(64, seed=1)
