"""engine/transfer.py FramePipe: more batches in flight than slots."""
from __future__ import annotations

import torch

from ultrares_stream.colour import float_to_uint8, uint8_to_float
from ultrares_stream.engine.eager import EagerEngine
from ultrares_stream.engine.transfer import FramePipe
from ultrares_stream.models.archs import SRVGGNetCompact

CPU = torch.device("cpu")


def test_more_batches_in_flight_than_slots_each_get_their_own_frames():
    torch.manual_seed(0)
    engine = EagerEngine(SRVGGNetCompact(num_feat=4, num_conv=1, upscale=2), CPU, "fp32")
    pipe = FramePipe(engine, CPU, slots=2)
    batches = [torch.full((2, 6, 5, 3), 40 * i, dtype=torch.uint8) for i in range(5)]
    pending = [pipe.submit(b) for b in batches]  # 5 in flight on 2 slots: slots 0 and 1 reused twice
    with torch.no_grad():
        want = [float_to_uint8(engine(uint8_to_float(b))) for b in batches]
    got = [pipe.result(p) for p in reversed(pending)][::-1]
    for i, (g, w) in enumerate(zip(got, want)):
        assert torch.equal(g, w), f"batch {i} came back with another batch's frames"
    assert len({g.sum().item() for g in got}) == 5
    # a result taken twice, and after its slot was reused, stays the batch's own
    assert torch.equal(pipe.result(pending[0]), want[0])


def test_a_smaller_batch_in_a_reused_slot_returns_only_its_frames():
    engine = EagerEngine(SRVGGNetCompact(num_feat=4, num_conv=1, upscale=2), CPU, "fp32")
    pipe = FramePipe(engine, CPU, slots=1)
    first = pipe.submit(torch.zeros(3, 4, 4, 3, dtype=torch.uint8))
    second = pipe.submit(torch.full((1, 4, 4, 3), 200, dtype=torch.uint8))
    assert pipe.result(second).shape[0] == 1 and pipe.result(first).shape[0] == 3
    assert not torch.equal(pipe.result(first)[:1], pipe.result(second))
