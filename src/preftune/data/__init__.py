"""Data in: records, file readers with row-level errors, chat rendering, tokenisation and collation.

One module per concern; this package's face re-exports what the rest of preftune uses:

* :mod:`.records` — ``SFTExample``, ``Comparison``, ``Ranking``: what every trainer reads.
* :mod:`.rows` — rows of a JSONL, JSON, Parquet file or a datasets directory; ``DataError``
  (``file:line: problem``).
* :mod:`.chat` — message lists as text (a tokenizer's chat template or the built-in
  ``Human: ... Assistant:``), HH-RLHF transcripts.
* :mod:`.formats` — the accepted shapes of SFT, comparison, prompt and pretraining files (TRL's
  formats, HH-RLHF, rankings), checked row by row.
* :mod:`.tokens` — the tokenisation and truncation policy (decided there and nowhere else), padded
  batches, shuffled batches.

Writing files whole or not at all is :mod:`preftune.atomic`.
"""

from .chat import ASSISTANT_MARK, render_conversation, render_messages, split_transcript
from .formats import load_comparisons, load_prompts, load_sft, load_texts
from .records import SCALE_STRENGTHS, Comparison, Ranking, SFTExample
from .rows import DataError, read_rows, shown
from .tokens import Batch, Encoded, batch_count, collate, encode, encode_text, shuffled_batches

__all__ = [
    "ASSISTANT_MARK",
    "SCALE_STRENGTHS",
    "Batch",
    "Comparison",
    "DataError",
    "Encoded",
    "Ranking",
    "SFTExample",
    "batch_count",
    "collate",
    "encode",
    "encode_text",
    "load_comparisons",
    "load_prompts",
    "load_sft",
    "load_texts",
    "read_rows",
    "render_conversation",
    "render_messages",
    "shown",
    "shuffled_batches",
    "split_transcript",
]
