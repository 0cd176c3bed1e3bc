"""Encode leaks and ground truth as Flower records under fixed keys, and strip them again."""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from fedpriv.leaks import Arrays, GroundTruth, Leak, leak_from_records

LEAK_ARRAYS, LEAK_META = "leak.arrays", "leak.meta"
TRUTH_ARRAYS, TRUTH_META = "truth.arrays", "truth.meta"


def _array_record(arrays: Arrays) -> ArrayRecord:
    return ArrayRecord({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()})


def _arrays(record: ArrayRecord) -> Arrays:
    return {k: record[k].numpy() for k in record.keys()}


def put_leak(content: RecordDict, leak: Leak, truth: GroundTruth) -> None:
    """Add the leak and the evaluation-only truth to a reply's content."""
    arrays, meta = leak.to_records()
    content[LEAK_ARRAYS], content[LEAK_META] = _array_record(arrays), ConfigRecord(dict(meta))
    arrays, meta = truth.to_records()
    content[TRUTH_ARRAYS], content[TRUTH_META] = _array_record(arrays), ConfigRecord(dict(meta))


def pop_leak(content: RecordDict) -> tuple[Leak, GroundTruth] | None:
    """Remove leak and truth records from a reply (FedAvg accepts one ArrayRecord) and decode them."""
    if LEAK_META not in content:
        return None
    leak_arrays, leak_meta = _arrays(content.pop(LEAK_ARRAYS)), dict(content.pop(LEAK_META))
    truth_arrays, truth_meta = _arrays(content.pop(TRUTH_ARRAYS)), dict(content.pop(TRUTH_META))
    return leak_from_records(leak_arrays, leak_meta), GroundTruth.from_records(truth_arrays, truth_meta)
