"""Hugging Face decoders on the paged cache, token for token against transformers' own generate.

Tiny random models of every supported architecture are saved with ``save_pretrained`` and loaded
twice: by transformers (the oracle, dense attention) and by ``PagedCausalLM``.
"""

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

from llmds_torch.errors import ConfigError, ContextWindowExceeded, InvalidTokenIds  # noqa: E402
from llmds_torch.integrations.hf_attention import PagedAttentionUnavailable  # noqa: E402
from llmds_torch.integrations.hf_support import SUPPORTED_MODEL_TYPES  # noqa: E402
from llmds_torch.integrations.hf_random import TINY_CONFIGS, random_causal_lm, save_random_causal_lm  # noqa: E402
from llmds_torch.integrations.transformers import MissingTokenizer, PagedCausalLM  # noqa: E402
from llmds_torch.models import EngineConfig, GenerationEngine, SamplingParams  # noqa: E402
from llmds_torch.models.config import UnsupportedArchitecture  # noqa: E402
from llmds_torch.models.serving import ServingLoop  # noqa: E402
from llmds_torch.sched import Request, Scheduler, SchedulerConfig  # noqa: E402

ARCHS = {
    "llama": dict(),  # GQA, tied embeddings, rope_theta 500000
    "llama-llama3rope": dict(rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                                              "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                              "original_max_position_embeddings": 16}),
    "mistral": dict(),  # sliding window 8 on every layer
    "qwen2": dict(),  # attention biases
    "qwen2-window": dict(use_sliding_window=True, sliding_window=8, max_window_layers=1),  # layer 1 slides
    "qwen3": dict(),  # q/k norms
    "gemma2": dict(),  # soft-capping, alternating windows of 8, query_pre_attn_scalar
    "gemma": dict(),
    "gemma3_text": dict(),  # windows, per-layer-type RoPE
    "olmo2": dict(),
    "granite": dict(),  # embedding, attention, residual and logit multipliers
    "starcoder2": dict(),  # LayerNorm and biases, sliding window
    "cohere": dict(),
}


def _model_type(arch: str) -> str:
    return arch.split("-")[0]


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {arch: save_random_causal_lm(root / arch, _model_type(arch), seed=i, **overrides)
            for i, (arch, overrides) in enumerate(ARCHS.items())}


def _prompts(seed, lengths, shared=0, vocab=128):
    g = torch.Generator().manual_seed(seed)
    system = torch.randint(0, vocab, (shared,), generator=g).tolist()
    return [system + torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]


def _hf_greedy(model, prompt, max_new):
    """transformers' greedy generate with no end-of-sequence id (ignore_eos=True on our side)."""
    config = copy.deepcopy(model.generation_config)
    config.update(eos_token_id=[], do_sample=False, max_new_tokens=max_new, pad_token_id=0)
    out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                         generation_config=config)
    assert out.shape[1] == len(prompt) + max_new
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("arch", list(ARCHS))
def test_greedy_tokens_and_logits_equal_transformers(folders, arch):
    """Several prompts sharing a system prompt in one call, prefilled in chunks; then the same
    prompts again, which hit the prefix cache."""
    ref = transformers.AutoModelForCausalLM.from_pretrained(folders[arch]).eval()
    lm = PagedCausalLM.from_pretrained(folders[arch], page_size=4,
                                       engine_config=EngineConfig(max_prefill_tokens=7, record_logits=True))
    prompts = _prompts(1, [3, 9, 1, 6], shared=10)
    results = lm.generate(prompts, SamplingParams(max_new_tokens=8), ignore_eos=True)
    for prompt, result in zip(prompts, results):
        tokens = result.outputs[0].token_ids
        assert tokens == _hf_greedy(ref, prompt, 8)
        with torch.no_grad():
            dense = ref(torch.tensor([prompt + tokens])).logits[0, len(prompt) - 1:-1]  # [8, V]
        torch.testing.assert_close(result.outputs[0].logits, dense, rtol=0, atol=1e-4)
    again = lm.generate(prompts, SamplingParams(max_new_tokens=8), ignore_eos=True)
    assert [r.outputs[0].token_ids for r in again] == [r.outputs[0].token_ids for r in results]
    assert all(r.num_cached_prompt_tokens >= 8 for r in again)
    lm.cache.check_invariants()
    assert lm.cache.stats()["pages_used"] == 0


def test_parallel_samples_fork_and_copy_on_write(folders):
    ref = transformers.AutoModelForCausalLM.from_pretrained(folders["qwen2"]).eval()
    lm = PagedCausalLM.from_pretrained(folders["qwen2"], page_size=4)
    prompt = _prompts(2, [10])[0]
    (greedy,) = lm.generate([prompt], SamplingParams(max_new_tokens=6, n=3), ignore_eos=True)
    expected = _hf_greedy(ref, prompt, 6)
    assert [o.token_ids for o in greedy.outputs] == [expected] * 3
    assert lm.cache.stats()["cow_copies"] > 0
    (sampled,) = lm.generate([prompt], SamplingParams(max_new_tokens=6, n=3, temperature=1.0, seed=3),
                             ignore_eos=True)
    assert len({tuple(o.token_ids) for o in sampled.outputs}) > 1


def test_preemption_in_a_small_pool_keeps_tokens_exact(folders):
    ref = transformers.AutoModelForCausalLM.from_pretrained(folders["llama"]).eval()
    lm = PagedCausalLM.from_pretrained(folders["llama"], page_size=4, num_pages=14)
    prompts = _prompts(3, [7, 9, 5, 8])
    scheduler = Scheduler(lm.cache, SchedulerConfig(policy="fcfs", max_batch_size=8, max_batch_tokens=64))
    result = ServingLoop(lm, scheduler).run([Request(p, max_new_tokens=12) for p in prompts])
    assert scheduler.metrics.summary()["preemptions"] > 0
    for prompt, out in zip(prompts, result.outputs):
        assert out == _hf_greedy(ref, prompt, 12)


def test_engine_preempt_recomputes_exactly(folders):
    ref = transformers.AutoModelForCausalLM.from_pretrained(folders["qwen3"]).eval()
    lm = PagedCausalLM.from_pretrained(folders["qwen3"], page_size=4)
    engine = GenerationEngine(lm, lm.cache, EngineConfig(max_prefill_tokens=8))
    prompts = _prompts(4, [6, 11])
    ids = [engine.submit(p, SamplingParams(max_new_tokens=7)) for p in prompts]
    finished = {}
    for step in range(40):
        for res in engine.step().finished:
            finished[res.request_id] = res
        if step == 4:
            engine.preempt(ids[1])
        if len(finished) == 2:
            break
    assert engine.stats()["preemptions"] == 1
    for rid, prompt in zip(ids, prompts):
        assert finished[rid].outputs[0].token_ids == _hf_greedy(ref, prompt, 7)


def test_eos_from_generation_config_ends_requests(folders):
    ref = transformers.AutoModelForCausalLM.from_pretrained(folders["mistral"]).eval()
    prompt = _prompts(5, [8])[0]
    free_run = _hf_greedy(ref, prompt, 6)
    eos = free_run[2]
    lm = PagedCausalLM.from_pretrained(folders["mistral"], page_size=4)
    lm.hf_model.generation_config.eos_token_id = [eos, 127]
    assert lm.eos_token_ids() == (eos, 127)
    (result,) = lm.generate([prompt], SamplingParams(max_new_tokens=6))
    assert result.outputs[0].token_ids == free_run[:free_run.index(eos) + 1]
    assert result.outputs[0].finish_reason == "stop"
    (ignored,) = lm.generate([prompt], SamplingParams(max_new_tokens=6), ignore_eos=True)
    assert ignored.outputs[0].token_ids == free_run
    (own,) = lm.generate([prompt], SamplingParams(max_new_tokens=6, stop_token_ids=(free_run[4],)))
    assert own.outputs[0].token_ids == free_run[:free_run.index(free_run[4]) + 1]


def test_text_prompts_go_through_the_folder_tokenizer(folders, tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    words = [f"w{i}" for i in range(120)]
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}}
    raw = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]")
    tok.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}{% if add_generation_prompt %}w7{% endif %}"
    folder = save_random_causal_lm(tmp_path / "with_tokenizer", "llama", seed=0)
    tok.save_pretrained(folder)
    lm = PagedCausalLM.from_pretrained(folder, page_size=4)
    text = "w5 w17 w3 w99"
    (from_text,) = lm.generate([text], SamplingParams(max_new_tokens=4), ignore_eos=True)
    (from_ids,) = lm.generate([[6, 18, 4, 100]], SamplingParams(max_new_tokens=4), ignore_eos=True)
    assert from_text.prompt == [6, 18, 4, 100]
    assert from_text.outputs[0].token_ids == from_ids.outputs[0].token_ids
    assert lm.encode([{"role": "user", "content": "w5 w17"}, {"role": "user", "content": "w3"}]) == [6, 18, 4, 8]
    bare = PagedCausalLM.from_pretrained(folders["llama"], page_size=4)
    with pytest.raises(MissingTokenizer, match="tokenizer"):
        bare.generate(["w1 w2"])


def test_shape_and_pool_follow_the_model(folders):
    lm = PagedCausalLM.from_pretrained(folders["qwen3"], page_size=8, num_pages=5)
    assert (lm.num_layers, lm.num_kv_heads, lm.head_dim, lm.vocab_size, lm.max_context_len) == (2, 2, 32, 128, 256)
    cfg = lm.cache.config
    assert (cfg.num_pages, cfg.max_num_pages, cfg.dtype, cfg.max_context_len) == (5, None, torch.float32, 256)
    sized = PagedCausalLM.from_pretrained(folders["qwen3"], page_size=8, kv_cache_memory=40 * cfg.page_bytes)
    assert (sized.cache.config.num_pages, sized.cache.config.max_num_pages) == (32, 40)  # 256 / 8, then grows
    assert PagedCausalLM.from_pretrained(folders["gemma2"]).needs.windows == (8, None)
    assert PagedCausalLM.from_pretrained(folders["qwen2-window"]).needs.windows == (None, 8)
    assert PagedCausalLM.from_pretrained(folders["mistral"]).needs.windows == (8, 8)
    half = PagedCausalLM.from_pretrained(folders["llama"], dtype=torch.bfloat16)
    assert half.cache.config.dtype == torch.bfloat16 and half.hf_model.dtype == torch.bfloat16


# ---------------------------------------------------------------------- bad input


def _no_weight_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the config was checked")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)


def test_not_a_causal_lm_is_refused_before_loading(tmp_path, monkeypatch):
    bert = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=64)
    transformers.BertForMaskedLM(bert).save_pretrained(tmp_path / "bert")
    t5 = transformers.T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=2)
    transformers.T5ForConditionalGeneration(t5).save_pretrained(tmp_path / "t5")
    gpt2 = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2)
    transformers.GPT2LMHeadModel(gpt2).save_pretrained(tmp_path / "gpt2")
    _no_weight_loading(monkeypatch)
    with pytest.raises(UnsupportedArchitecture, match="BertForMaskedLM is not a causal LM"):
        PagedCausalLM.from_pretrained(tmp_path / "bert")
    with pytest.raises(UnsupportedArchitecture, match="encoder-decoder"):
        PagedCausalLM.from_pretrained(tmp_path / "t5")
    with pytest.raises(UnsupportedArchitecture, match="model_type='gpt2'.*supported: llama"):
        PagedCausalLM.from_pretrained(tmp_path / "gpt2")


@pytest.mark.parametrize("model_type,overrides,match", [
    ("llama", dict(rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}),
     "rope_type='dynamic'"),
    ("qwen2", dict(rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0] * 8,
                                    "long_factor": [2.0] * 8, "original_max_position_embeddings": 64}),
     "rope_type='longrope'"),
])
def test_unsupported_features_are_named(tmp_path, monkeypatch, model_type, overrides, match):
    config = transformers.AutoConfig.for_model(model_type, vocab_size=64, hidden_size=32, intermediate_size=64,
                                               num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                               **overrides)
    config.save_pretrained(tmp_path)
    _no_weight_loading(monkeypatch)
    with pytest.raises(UnsupportedArchitecture, match=match):
        PagedCausalLM.from_pretrained(tmp_path)


def test_unsupported_model_object_leaves_it_unchanged():
    config = transformers.AutoConfig.for_model("llama", vocab_size=64, hidden_size=32, intermediate_size=64,
                                               num_hidden_layers=1, num_attention_heads=2,
                                               rope_parameters={"rope_type": "dynamic", "rope_theta": 1e4,
                                                                "factor": 2.0})
    model = transformers.LlamaForCausalLM(config)
    before = model.config._attn_implementation
    with pytest.raises(UnsupportedArchitecture, match="dynamic"):
        PagedCausalLM(model)
    assert model.config._attn_implementation == before
    with pytest.raises(ConfigError, match="PreTrainedModel"):
        PagedCausalLM(torch.nn.Linear(2, 2))


def test_bad_dtype_is_refused_before_loading(folders, monkeypatch):
    _no_weight_loading(monkeypatch)
    with pytest.raises(ConfigError, match="float64 cannot be held by the KV pool"):
        PagedCausalLM.from_pretrained(folders["llama"], dtype=torch.float64)
    with pytest.raises(ConfigError, match="float64"):
        PagedCausalLM(random_causal_lm("llama", dtype=torch.float64))


def test_bad_prompts_are_refused_before_anything_runs(folders):
    lm = PagedCausalLM.from_pretrained(folders["mistral"], page_size=4)
    before = lm.cache.stats()
    good = _prompts(6, [5])[0]
    with pytest.raises(ContextWindowExceeded, match="max_context_len=256"):
        lm.generate([good, [1] * 250], SamplingParams(max_new_tokens=8))
    with pytest.raises(InvalidTokenIds, match="vocab_size=128"):
        lm.generate([good, [1, 2, 128]])
    with pytest.raises(InvalidTokenIds, match="empty"):
        lm.generate([good, []])
    assert lm.cache.stats() == before


def test_calling_the_model_directly_after_the_switch_is_named(folders):
    lm = PagedCausalLM.from_pretrained(folders["llama"])
    with pytest.raises(PagedAttentionUnavailable, match="PagedCausalLM"):
        lm.hf_model(torch.tensor([[1, 2, 3]]))
    lm.hf_model.set_attn_implementation("sdpa")
    assert lm.hf_model(torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, 128)


def test_every_supported_architecture_is_tested():
    assert set(TINY_CONFIGS) == {_model_type(a) for a in ARCHS} == set(SUPPORTED_MODEL_TYPES)


def test_beam_search_equals_the_built_in_decoder_on_the_same_checkpoint(folders):
    """The same Llama folder through load_hf_model (the reference decoder) and through PagedCausalLM:
    the engine's beam search picks the same beams."""
    from llmds_torch.kv import KVCacheConfig, PagedKVCache
    from llmds_torch.models.hf_loader import load_hf_model

    reference = load_hf_model(folders["llama"])
    cfg = reference.config
    cache = PagedKVCache(KVCacheConfig(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, page_size=4, num_pages=64))
    lm = PagedCausalLM.from_pretrained(folders["llama"], page_size=4)
    prompts = _prompts(7, [6, 13])
    params = SamplingParams(max_new_tokens=6, beam_width=3)
    ours = lm.generate(prompts, params, ignore_eos=True)
    theirs = GenerationEngine(reference, cache).generate(prompts, params)
    for a, b in zip(ours, theirs):
        assert [o.token_ids for o in a.outputs] == [o.token_ids for o in b.outputs]
        assert len(a.outputs) == 3


def test_the_core_never_imports_transformers():
    import subprocess
    import sys

    code = ("import sys, llmds_torch, llmds_torch.models, llmds_torch.kv, llmds_torch.sched, llmds_torch.attention, "
            "llmds_torch.models.hf_loader, llmds_torch.integrations; "
            "assert 'transformers' not in sys.modules, 'transformers was imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_pool_that_cannot_be_allocated_leaves_the_model_unchanged(monkeypatch):
    import llmds_torch.integrations.transformers as integration

    model = random_causal_lm("qwen3")
    before = model.config._attn_implementation

    def no_memory(config):
        raise MemoryError("no room for the pool")

    monkeypatch.setattr(integration, "PagedKVCache", no_memory)
    with pytest.raises(MemoryError):
        PagedCausalLM(model, num_pages=4)
    assert model.config._attn_implementation == before
    assert model(torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, 128)
