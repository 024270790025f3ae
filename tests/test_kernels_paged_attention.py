"""Paged attention (decode and prefill): the launchers against plain per-token loops in float64,
over batch sizes, context lengths, page sizes, head dims, GQA ratios and dtypes; and input checks."""

import math

import pytest
import torch

from llmds_torch.kernels import KernelInputError
from llmds_torch.kernels.paged_attention import paged_attention_decode, paged_attention_prefill

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def paged_case(seq_lens, page_size, num_kv_heads, head_dim, dtype, device, seed=0, spare_pages=3):
    """A layer cache with each sequence's pages scattered at random, its block table padded with -1
    (one extra padding column), and seq_lens."""
    gen = torch.Generator().manual_seed(seed)
    pages_per_seq = [math.ceil(n / page_size) for n in seq_lens]
    num_pages = sum(pages_per_seq) + spare_pages
    cache = torch.randn(num_pages, 2, page_size, num_kv_heads, head_dim, generator=gen).to(dtype)
    order = torch.randperm(num_pages, generator=gen).tolist()
    table = torch.full((len(seq_lens), max(pages_per_seq) + 1), -1, dtype=torch.int32)
    for b, count in enumerate(pages_per_seq):
        table[b, :count] = torch.tensor([order.pop() for _ in range(count)], dtype=torch.int32)
    return cache.to(device), table.to(device), torch.tensor(seq_lens, dtype=torch.int32, device=device)


def sequence_kv(cache, table_row, seq_len):
    """K and V of one sequence, token by token: ``[seq_len, num_kv_heads, head_dim]`` float64."""
    page_size = cache.shape[2]
    ks, vs = [], []
    for pos in range(seq_len):
        page = int(table_row[pos // page_size])
        ks.append(cache[page, 0, pos % page_size].double())
        vs.append(cache[page, 1, pos % page_size].double())
    return torch.stack(ks), torch.stack(vs)


def attend(q_row, k, v, scale, softcap=None):
    """One query ``[num_q_heads, head_dim]`` over keys ``[n, num_kv_heads, head_dim]``, head by head."""
    group = q_row.shape[0] // k.shape[1]
    out = torch.empty(q_row.shape, dtype=torch.float64)
    for head in range(q_row.shape[0]):
        kv_head = head // group
        scores = (k[:, kv_head] @ q_row[head].double()) * scale
        if softcap is not None:
            scores = softcap * torch.tanh(scores / softcap)
        out[head] = torch.softmax(scores, dim=0) @ v[:, kv_head]
    return out


def visible_keys(position, window):
    """Positions a query at ``position`` sees: ``position - window < j <= position``."""
    return slice(0 if window is None else max(0, position - window + 1), position + 1)


def decode_loop(q, cache, table, seq_lens, scale, window=None, softcap=None):
    q, cache, table = q.cpu(), cache.cpu(), table.cpu()
    out = torch.empty(q.shape, dtype=torch.float64)
    for b, seq_len in enumerate(seq_lens.tolist()):
        k, v = sequence_kv(cache, table[b], seq_len)
        keys = visible_keys(seq_len - 1, window)
        out[b] = attend(q[b], k[keys], v[keys], scale, softcap)
    return out


def prefill_loop(q, cache, table, seq_lens, query_start_loc, scale, window=None, softcap=None):
    q, cache, table = q.cpu(), cache.cpu(), table.cpu()
    out = torch.empty(q.shape, dtype=torch.float64)
    starts = query_start_loc.tolist()
    for b, seq_len in enumerate(seq_lens.tolist()):
        k, v = sequence_kv(cache, table[b], seq_len)
        query_len = starts[b + 1] - starts[b]
        for j in range(query_len):
            keys = visible_keys(seq_len - query_len + j, window)
            out[starts[b] + j] = attend(q[starts[b] + j], k[keys], v[keys], scale, softcap)
    return out


def assert_close(actual, expected, dtype):
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(actual.cpu().double(), expected, atol=tol, rtol=tol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("page_size", [1, 4, 16])
@pytest.mark.parametrize("head_dim", [16, 64, 80])
@pytest.mark.parametrize("group", [1, 4])
def test_decode_matches_loop(device, dtype, page_size, head_dim, group):
    seq_lens = [1, 2 * page_size + 3, 300]                     # 1, not a page multiple, long enough to split
    cache, table, lens = paged_case(seq_lens, page_size, 2, head_dim, dtype, device)
    q = torch.randn(len(seq_lens), 2 * group, head_dim, generator=torch.Generator().manual_seed(1)).to(dtype)
    out = paged_attention_decode(q.to(device), cache, table, lens)
    assert out.dtype == dtype and out.shape == q.shape
    assert_close(out, decode_loop(q, cache, table, lens, head_dim ** -0.5), dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("num_splits", [None, 1, 3])
def test_decode_batch_sizes_and_splits(device, batch, num_splits):
    gen = torch.Generator().manual_seed(batch)
    seq_lens = torch.randint(1, 200, (batch,), generator=gen).tolist()
    cache, table, lens = paged_case(seq_lens, 8, 2, 32, torch.float32, device, seed=batch)
    q = torch.randn(batch, 4, 32, generator=gen)
    out = paged_attention_decode(q.to(device), cache, table, lens, scale=0.3, num_splits=num_splits)
    assert_close(out, decode_loop(q, cache, table, lens, 0.3), torch.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("page_size", [1, 4, 16])
@pytest.mark.parametrize("head_dim", [16, 80])
@pytest.mark.parametrize("group", [1, 4])
def test_prefill_matches_loop(device, dtype, page_size, head_dim, group):
    # sequences: whole prompt new, a cached prefix plus new tokens, a single new token, no new tokens
    seq_lens = [7, 3 * page_size + 5, 20, 9]
    query_lens = [7, page_size + 2, 1, 0]
    cache, table, lens = paged_case(seq_lens, page_size, 2, head_dim, dtype, device)
    query_start_loc = torch.tensor([0] + list(torch.tensor(query_lens).cumsum(0)), dtype=torch.int32)
    q = torch.randn(sum(query_lens), 2 * group, head_dim, generator=torch.Generator().manual_seed(2)).to(dtype)
    out = paged_attention_prefill(q.to(device), cache, table, lens, query_start_loc.to(device))
    assert out.dtype == dtype and out.shape == q.shape
    assert_close(out, prefill_loop(q, cache, table, lens, query_start_loc, head_dim ** -0.5), dtype)


# windows: one token, shorter than a page, splitting pages, a page multiple, longer than every context
WINDOWS = [1, 3, 6, 16, 10_000]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("window", WINDOWS + [None])
@pytest.mark.parametrize("softcap", [None, 1.5])
@pytest.mark.parametrize("group", [1, 4])
def test_decode_window_softcap_scale_match_loop(device, dtype, window, softcap, group):
    seq_lens = [1, 5, 6, 37, 200]                              # shorter than, equal to and longer than windows
    cache, table, lens = paged_case(seq_lens, 4, 2, 16, dtype, device, seed=21)
    q = torch.randn(len(seq_lens), 2 * group, 16, generator=torch.Generator().manual_seed(22)).to(dtype)
    out = paged_attention_decode(q.to(device), cache, table, lens, scale=0.6, sliding_window=window, softcap=softcap)
    assert_close(out, decode_loop(q, cache, table, lens, 0.6, window, softcap), dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("window", WINDOWS + [None])
@pytest.mark.parametrize("softcap", [None, 1.5])
@pytest.mark.parametrize("group", [1, 4])
def test_prefill_window_softcap_scale_match_loop(device, dtype, window, softcap, group):
    # whole prompt new, new tokens over a cached prefix longer than the window, one new token, none
    seq_lens, query_lens = [23, 41, 9, 6, 14], [23, 10, 1, 0, 3]
    cache, table, lens = paged_case(seq_lens, 4, 2, 16, dtype, device, seed=23)
    query_start_loc = torch.tensor([0] + list(torch.tensor(query_lens).cumsum(0)), dtype=torch.int32)
    q = torch.randn(sum(query_lens), 2 * group, 16, generator=torch.Generator().manual_seed(24)).to(dtype)
    out = paged_attention_prefill(q.to(device), cache, table, lens, query_start_loc.to(device), scale=0.6,
                                  sliding_window=window, softcap=softcap)
    assert_close(out, prefill_loop(q, cache, table, lens, query_start_loc, 0.6, window, softcap), dtype)


@pytest.mark.parametrize("chunk_bytes", [1, 2**30])
def test_decode_reference_window_in_mixed_length_chunks(monkeypatch, chunk_bytes):
    """Sequences whose windows start at different offsets in their pages, padded to one chunk, and
    NaN in every unwritten slot."""
    from llmds_torch.kernels import reference
    monkeypatch.setattr(reference, "GATHER_CHUNK_BYTES", chunk_bytes)
    seq_lens = [33, 1, 130, 16, 17, 64, 5, 131, 99]
    cache, table, lens = nan_pool_case(seq_lens, 8, 2, 16, torch.float32, seed=25)
    q = torch.randn(len(seq_lens), 6, 16, generator=torch.Generator().manual_seed(26))
    for window in (7, 20, 100):
        out = paged_attention_decode(q, cache, table, lens, scale=0.4, sliding_window=window, backend="torch")
        assert_close(out, decode_loop(q, cache, table, lens, 0.4, window), torch.float32)


@pytest.mark.parametrize("options,message", [
    (dict(sliding_window=0), "sliding_window must be an int >= 1"),
    (dict(sliding_window=2.5), "sliding_window must be an int >= 1"),
    (dict(sliding_window=True), "sliding_window must be an int >= 1"),
    (dict(softcap=0.0), "softcap must be a finite number > 0"),
    (dict(softcap=float("inf")), "softcap must be a finite number > 0"),
    (dict(softcap=-1), "softcap must be a finite number > 0"),
    (dict(scale=0.0), "scale must be a finite number > 0"),
    (dict(scale=float("nan")), "scale must be a finite number > 0"),
])
def test_attention_options_are_checked(options, message):
    q, cache, table, lens = _decode_case()
    with pytest.raises(KernelInputError, match=message):
        paged_attention_decode(q, cache, table, lens, **options)
    with pytest.raises(KernelInputError, match=message):
        paged_attention_prefill(q, cache, table, lens, torch.arange(3, dtype=torch.int32), **options)


def test_prefill_of_one_token_equals_decode():
    cache, table, lens = paged_case([1, 33, 64], 16, 2, 64, torch.float32, "cpu")
    q = torch.randn(3, 8, 64, generator=torch.Generator().manual_seed(4))
    query_start_loc = torch.arange(4, dtype=torch.int32)
    torch.testing.assert_close(paged_attention_prefill(q, cache, table, lens, query_start_loc),
                               paged_attention_decode(q, cache, table, lens))


def test_padding_entries_past_a_sequence_are_never_read():
    cache, table, lens = paged_case([5, 9], 4, 1, 16, torch.float32, "cpu")
    q = torch.randn(2, 2, 16, generator=torch.Generator().manual_seed(5))
    expected = paged_attention_decode(q, cache, table, lens)
    table[0, 2:] = 10_000                                      # beyond both the row's pages and the pool
    torch.testing.assert_close(paged_attention_decode(q, cache, table, lens), expected)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("num_splits", [None, 1, 4])
def test_decode_triton_matches_torch_on_cuda(dtype, num_splits):
    seq_lens = [1, 17, 1000, 4096, 257]
    cache, table, lens = paged_case(seq_lens, 16, 8, 128, dtype, "cuda")
    q = torch.randn(len(seq_lens), 32, 128, device="cuda").to(dtype)
    out = paged_attention_decode(q, cache, table, lens, backend="triton", num_splits=num_splits)
    expected = paged_attention_decode(q, cache, table, lens, backend="torch")
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(out.float(), expected.float(), atol=tol, rtol=tol)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_prefill_triton_matches_torch_on_cuda(dtype):
    seq_lens, query_lens = [300, 129, 64, 5], [300, 70, 1, 0]
    cache, table, lens = paged_case(seq_lens, 16, 8, 128, dtype, "cuda")
    query_start_loc = torch.tensor([0] + list(torch.tensor(query_lens).cumsum(0)), dtype=torch.int32, device="cuda")
    q = torch.randn(sum(query_lens), 32, 128, device="cuda").to(dtype)
    out = paged_attention_prefill(q, cache, table, lens, query_start_loc, backend="triton")
    expected = paged_attention_prefill(q, cache, table, lens, query_start_loc, backend="torch")
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(out.float(), expected.float(), atol=tol, rtol=tol)


def _decode_case():
    cache, table, lens = paged_case([5, 9], 4, 2, 16, torch.float32, "cpu")
    return torch.randn(2, 4, 16), cache, table, lens


def _bad_decode_inputs():
    q, cache, table, lens = _decode_case()
    bad_page = table.clone()
    bad_page[1, 2] = cache.shape[0]
    missing_page = table.clone()
    missing_page[0, 1] = -1
    return [
        ("positive multiple of num_kv_heads", (torch.randn(2, 3, 16), cache, table, lens)),
        ("names no page of the pool", (q, cache, bad_page, lens)),
        ("block_table\\[0, 1\\] = -1", (q, cache, missing_page, lens)),
        ("seq_lens holds values in \\[5, 17\\]", (q, cache, table, torch.tensor([5, 17], dtype=torch.int32))),
        ("seq_lens holds values in \\[-1, 9\\]", (q, cache, table, torch.tensor([-1, 9], dtype=torch.int32))),
        ("layer_cache has dtype", (q.half(), cache, table, lens)),
        ("head_dim 8", (q[..., :8], cache, table, lens)),
        ("block_table has dtype", (q, cache, table.long(), lens)),
        ("seq_lens has dtype", (q, cache, table, lens.long())),
        ("seq_lens must have shape", (q, cache, table, lens[:1])),
        ("expected cpu", (q, cache, table.to("meta"), lens)),
        ("q has 1 sequences", (q[:1], cache, table, lens)),
    ]


@pytest.mark.parametrize("message,args", _bad_decode_inputs(), ids=[m for m, _ in _bad_decode_inputs()])
def test_decode_rejects_bad_input(message, args):
    with pytest.raises(KernelInputError, match=message):
        paged_attention_decode(*args)


def test_decode_rejects_bad_num_splits():
    with pytest.raises(KernelInputError, match="num_splits"):
        paged_attention_decode(*_decode_case(), num_splits=0)


@pytest.mark.parametrize("starts,message", [
    ([1, 3, 6], "must start at 0"),
    ([0, 3, 5], "end at the number of query tokens 6"),
    ([0, 4, 3, 6][:3], "end at the number of query tokens"),
    ([0, 7, 6], "must not decrease"),
    ([0, 6, 6], "more new tokens"),
])
def test_prefill_rejects_bad_query_start_loc(starts, message):
    _, cache, table, lens = _decode_case()
    q = torch.randn(6, 4, 16)
    with pytest.raises(KernelInputError, match=message):
        paged_attention_prefill(q, cache, table, lens, torch.tensor(starts, dtype=torch.int32))


def test_prefill_rejects_wrong_query_start_loc_length_and_too_small_max_query_len():
    _, cache, table, lens = _decode_case()
    q = torch.randn(6, 4, 16)
    with pytest.raises(KernelInputError, match="query_start_loc must have shape"):
        paged_attention_prefill(q, cache, table, lens, torch.tensor([0, 6], dtype=torch.int32))
    with pytest.raises(KernelInputError, match="max_query_len=2"):
        paged_attention_prefill(q, cache, table, lens, torch.tensor([0, 3, 6], dtype=torch.int32), max_query_len=2)


def test_decode_reference_ignores_nan_in_unwritten_slots():
    """An uninitialized pool may hold NaN bit patterns past a sequence's length; they must not leak."""
    from llmds_torch.kernels.reference import paged_attention_decode_reference
    torch.manual_seed(0)
    cache = torch.full((4, 2, 4, 2, 8), float("nan"))
    cache[0, :, :3] = torch.randn(2, 3, 2, 8)      # sequence 0: 3 tokens in page 0
    cache[1] = torch.randn(2, 4, 2, 8)             # sequence 1: 6 tokens in pages 1, 2
    cache[2, :, :2] = torch.randn(2, 2, 2, 8)
    table = torch.tensor([[0, -1], [1, 2]], dtype=torch.int32)
    out = paged_attention_decode_reference(torch.randn(2, 4, 8), cache, table, torch.tensor([3, 6], dtype=torch.int32), 0.35)
    assert torch.isfinite(out).all()


def nan_pool_case(seq_lens, page_size, num_kv_heads, head_dim, dtype, seed=0):
    """Like ``paged_case`` but every slot no sequence has written holds NaN, page 0 (which padding
    may be read as) included: an uninitialized pool."""
    gen = torch.Generator().manual_seed(seed)
    pages_per_seq = [math.ceil(n / page_size) for n in seq_lens]
    num_pages = sum(pages_per_seq) + 1
    cache = torch.full((num_pages, 2, page_size, num_kv_heads, head_dim), float("nan"), dtype=dtype)
    table = torch.full((len(seq_lens), max(pages_per_seq) + 1), -1, dtype=torch.int32)
    order = (torch.randperm(num_pages - 1, generator=gen) + 1).tolist()      # page 0 stays unwritten
    for b, (seq_len, count) in enumerate(zip(seq_lens, pages_per_seq)):
        table[b, :count] = torch.tensor([order.pop() for _ in range(count)], dtype=torch.int32)
        for pos in range(seq_len):
            cache[table[b, pos // page_size], :, pos % page_size] = torch.randn(
                2, num_kv_heads, head_dim, generator=gen).to(dtype)
    return cache, table, torch.tensor(seq_lens, dtype=torch.int32)


@pytest.mark.parametrize("chunk_bytes", [1, 6_000, 2**30])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_reference_chunks_of_mixed_lengths_match_loop(monkeypatch, chunk_bytes, dtype):
    """The torch path in chunks of one sequence, of a few (padded to the longest, masked) and of all."""
    from llmds_torch.kernels import reference
    monkeypatch.setattr(reference, "GATHER_CHUNK_BYTES", chunk_bytes)
    seq_lens = [33, 1, 130, 16, 17, 64, 5, 130, 99]
    cache, table, lens = nan_pool_case(seq_lens, 8, 2, 16, dtype, seed=6)
    q = torch.randn(len(seq_lens), 6, 16, generator=torch.Generator().manual_seed(7)).to(dtype)
    out = paged_attention_decode(q, cache, table, lens, scale=0.4, backend="torch")
    assert out.dtype == dtype
    assert_close(out, decode_loop(q, cache, table, lens, 0.4), dtype)


@pytest.mark.parametrize("seq_lens", [[48, 48, 48], [37, 37], [40, 33, 37]])
def test_decode_reference_equal_page_counts_match_loop(seq_lens):
    """Sequences needing the same number of pages (no padding entry read), sorted or not."""
    cache, table, lens = nan_pool_case(seq_lens, 16, 2, 16, torch.float32, seed=15)
    q = torch.randn(len(seq_lens), 4, 16, generator=torch.Generator().manual_seed(16))
    out = paged_attention_decode(q, cache, table, lens, scale=0.3, backend="torch")
    assert_close(out, decode_loop(q, cache, table, lens, 0.3), torch.float32)


def test_decode_reference_ignores_nan_in_unused_padding_page():
    cache, table, lens = nan_pool_case([3, 6, 40], 4, 2, 8, torch.float32, seed=8)
    q = torch.randn(3, 4, 8, generator=torch.Generator().manual_seed(9))
    out = paged_attention_decode(q, cache, table, lens, scale=0.35, backend="torch")
    assert_close(out, decode_loop(q, cache, table, lens, 0.35), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_prefill_reference_ignores_nan_in_unwritten_slots(dtype):
    """Prefill reads exactly each sequence's tokens: NaN in slots past them (and in page 0) must not leak."""
    seq_lens, query_lens = [3, 6, 13, 21, 9], [3, 1, 5, 1, 0]
    cache, table, lens = nan_pool_case(seq_lens, 4, 2, 8, dtype, seed=10)
    query_start_loc = torch.tensor([0] + list(torch.tensor(query_lens).cumsum(0)), dtype=torch.int32)
    q = torch.randn(sum(query_lens), 4, 8, generator=torch.Generator().manual_seed(11)).to(dtype)
    out = paged_attention_prefill(q, cache, table, lens, query_start_loc, scale=0.35, backend="torch")
    assert torch.isfinite(out).all()
    assert_close(out, prefill_loop(q, cache, table, lens, query_start_loc, 0.35), dtype)


def test_reference_outputs_do_not_share_the_kept_gather_buffer():
    """The CPU path keeps its gather buffer between calls; an earlier output must survive later calls."""
    cache, table, lens = paged_case([40, 7], 8, 2, 16, torch.float32, "cpu", seed=12)
    q = torch.randn(2, 4, 16, generator=torch.Generator().manual_seed(13))
    first = paged_attention_decode(q, cache, table, lens, backend="torch")
    kept = first.clone()
    other_cache, other_table, other_lens = paged_case([300, 3], 8, 2, 16, torch.float16, "cpu", seed=14)
    paged_attention_decode(q.half(), other_cache, other_table, other_lens, backend="torch")
    paged_attention_prefill(q.half(), other_cache, other_table, other_lens,
                            torch.tensor([0, 2, 2], dtype=torch.int32), backend="torch")
    torch.testing.assert_close(first, kept, rtol=0, atol=0)
    assert_close(first, decode_loop(q, cache, table, lens, 16 ** -0.5), torch.float32)


def test_reference_from_many_threads_matches_loop():
    """Each thread keeps its own gather buffer, so concurrent calls do not overwrite each other."""
    from concurrent.futures import ThreadPoolExecutor
    cases = [paged_case([int(n) for n in torch.randint(1, 400, (6,), generator=torch.Generator().manual_seed(s))],
                        8, 2, 16, torch.float32, "cpu", seed=s) for s in range(4)]
    queries = [torch.randn(6, 4, 16, generator=torch.Generator().manual_seed(20 + s)) for s in range(4)]

    def run(i):
        return [paged_attention_decode(queries[i], *cases[i], backend="torch") for _ in range(20)]

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, range(4)))
    for i, outs in enumerate(results):
        expected = decode_loop(queries[i], *cases[i], 16 ** -0.5)
        for out in outs:
            assert_close(out, expected, torch.float32)


@pytest.mark.parametrize("window", [None, 4])
def test_decode_gives_zeros_for_length_zero_padding_rows(window):
    """A fixed-size batch pads with rows of length 0: they attend to nothing and give zeros."""
    cache, table, _ = paged_case([1, 37, 1, 5], 4, 2, 16, torch.float32, "cpu", seed=27)
    lens = torch.tensor([0, 37, 0, 5], dtype=torch.int32)
    q = torch.randn(4, 4, 16, generator=torch.Generator().manual_seed(28))
    out = paged_attention_decode(q, cache, table, lens, sliding_window=window)
    assert torch.equal(out[[0, 2]], torch.zeros(2, 4, 16))
    assert_close(out[[1, 3]], decode_loop(q[[1, 3]], cache, table[[1, 3]], lens[[1, 3]], 16 ** -0.5, window),
                 torch.float32)
