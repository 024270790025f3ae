"""Step tables sent to the device in one transfer: the packing round-trips every array, a reused
staging buffer never changes tensors handed out before, and ``step_inputs`` equals the separate calls."""

import numpy as np
import pytest
import torch

from llmds_torch.kv import KVCacheConfig, PagedKVCache
from llmds_torch.kv.device_upload import DeviceUpload


def step_arrays(rng, batch, width):
    return (rng.integers(0, 2**40, batch, dtype=np.int64), rng.integers(-1, 1000, (batch, width), dtype=np.int32),
            rng.integers(1, 5000, batch, dtype=np.int32))


def check_upload(upload, device):
    rng = np.random.default_rng(0)
    handed_out = []
    for batch, width in [(3, 5), (1, 1), (0, 0), (300, 70), (7, 3)]:  # the 300 x 70 step grows the buffer
        arrays = step_arrays(rng, batch, width)
        tensors = upload(*arrays)
        handed_out.append((arrays, tensors))
        for a, t in zip(arrays, tensors):
            assert t.device.type == device.type and t.shape == a.shape
            assert t.dtype == torch.from_numpy(a).dtype
    for arrays, tensors in handed_out:  # later uploads reused the buffer; earlier tensors are intact
        for a, t in zip(arrays, tensors):
            assert np.array_equal(t.cpu().numpy(), a)


def test_packed_upload_round_trips_and_survives_buffer_reuse():
    check_upload(DeviceUpload(torch.device("cpu"), stage=True), torch.device("cpu"))


def test_unstaged_upload_on_cpu_wraps_without_copying():
    slots = np.arange(4, dtype=np.int64)
    (tensor,) = DeviceUpload(torch.device("cpu"))(slots)
    assert tensor.data_ptr() == slots.ctypes.data


@pytest.mark.gpu
def test_pinned_upload_to_cuda_round_trips_and_survives_buffer_reuse():
    upload = DeviceUpload(torch.device("cuda"))
    assert upload.stage and upload.pinned
    check_upload(upload, torch.device("cuda"))
    assert upload._host.is_pinned()


def _decoding_cache():
    """A two-layer cache with three written sequences, each given one decode token."""
    cache = PagedKVCache(KVCacheConfig(2, 1, 2, page_size=4, num_pages=32, dtype=torch.float32))
    seqs = [cache.attach(list(range(1, 2 + n))) for n in (3, 6, 9)]
    for s in seqs:
        cache.manager.mark_written(s)
    cache.append_batch(seqs, [7, 8, 9])
    return cache, seqs


def test_step_inputs_equal_the_separate_calls_and_keep_the_write_shortcut():
    cache, seqs = _decoding_cache()
    slots, table, lens = cache.step_inputs(seqs)
    assert torch.equal(table, cache.block_table(seqs)) and torch.equal(lens, cache.seq_lens(seqs))
    assert torch.equal(slots, torch.from_numpy(cache.manager.slot_mapping(seqs)))
    slots, _, _ = cache.step_inputs(seqs)
    kv = torch.ones(3, 1, 2)
    for layer in range(2):
        cache.write(layer, slots, kv, kv)
    assert [cache.num_written(s) for s in seqs] == [cache.num_tokens(s) for s in seqs]
    cache.check_invariants()


def test_a_decode_steps_model_inputs_take_one_upload_and_equal_the_separate_calls():
    from llmds_torch.attention import AttentionMetadata
    from llmds_torch.models.step_inputs import StepInputs

    cache, seqs = _decoding_cache()
    upload, uploads = cache._upload, []
    cache._upload = lambda *arrays: uploads.append(len(arrays)) or upload(*arrays)
    step = StepInputs.build(cache, seqs, [[7], [8], [9]], torch.device("cpu"))
    assert uploads == [3]  # slot mapping, block table and lengths together
    cache._upload = upload
    expected = AttentionMetadata.build(cache, seqs)
    assert step.metadata.is_decode and step.metadata.num_query_tokens == 3
    assert torch.equal(step.metadata.block_table, expected.block_table)
    assert torch.equal(step.metadata.seq_lens, expected.seq_lens)
    assert torch.equal(step.slot_mapping, torch.from_numpy(cache.manager.slot_mapping(seqs)))
    assert step.positions.tolist() == [4, 7, 10]
