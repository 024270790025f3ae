"""A Hugging Face decoder on the paged KV cache: a tiny random model is saved with ``save_pretrained``
to a temporary folder, loaded with ``PagedCausalLM.from_pretrained``, and its greedy tokens for
prompts sharing a system prompt are checked against transformers' own ``generate``.

    python examples/hf_generate.py                       # tiny random Llama, seconds on a CPU
    python examples/hf_generate.py --model-type gemma2   # any of the supported architectures
    python examples/hf_generate.py --model /path/to/a/saved/model --no-check

Needs the ``hf`` extra: ``pip install llmds-torch[hf]``.
"""

import argparse
import copy
import tempfile

import torch
import transformers

from llmds_torch.integrations.hf_random import TINY_CONFIGS, save_random_causal_lm
from llmds_torch.integrations.transformers import PagedCausalLM
from llmds_torch.models import SamplingParams


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-type", default="llama", choices=sorted(TINY_CONFIGS))
    parser.add_argument("--model", default=None, help="a folder saved with save_pretrained (default: a tiny random one)")
    parser.add_argument("--num-prompts", type=int, default=4)
    parser.add_argument("--system-len", type=int, default=24)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-check", action="store_true", help="skip the comparison with transformers")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.model or save_random_causal_lm(tmp, args.model_type, seed=0)
        lm = PagedCausalLM.from_pretrained(folder, device=args.device, page_size=8)
        gen = torch.Generator().manual_seed(0)
        system = torch.randint(0, lm.vocab_size, (args.system_len,), generator=gen).tolist()
        prompts = [system + torch.randint(0, lm.vocab_size, (3 + i,), generator=gen).tolist()
                   for i in range(args.num_prompts)]
        params = SamplingParams(max_new_tokens=args.max_new_tokens)
        lm.generate(prompts[:1], params, ignore_eos=True)  # publishes the system prompt's pages
        results = lm.generate(prompts, params, ignore_eos=True)
        for i, result in enumerate(results):
            print(f"prompt {i}: {len(result.prompt)} tokens, {result.num_cached_prompt_tokens} from the cache "
                  f"-> {result.outputs[0].token_ids}")
        if not args.no_check:
            reference = transformers.AutoModelForCausalLM.from_pretrained(folder).to(args.device).eval()
            greedy = copy.deepcopy(reference.generation_config)  # no end-of-sequence id, as ignore_eos=True above
            greedy.update(eos_token_id=[], do_sample=False, max_new_tokens=args.max_new_tokens, pad_token_id=0)
            for prompt, result in zip(prompts, results):
                ids = torch.tensor([prompt], device=args.device)
                out = reference.generate(ids, attention_mask=torch.ones_like(ids), generation_config=greedy)
                if out[0, len(prompt):].tolist() != result.outputs[0].token_ids:
                    print("MISMATCH against transformers.generate")
                    return 1
            print(f"all {len(prompts)} outputs equal transformers.generate token for token")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
