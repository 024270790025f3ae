"""Parallel sampling (n > 1) on the paged KV cache: the prompt is computed once, then ``fork``
gives every sample its own sequence sharing the prompt's pages. Seeded, so it is reproducible.

    python examples/parallel_sampling.py
    python examples/parallel_sampling.py --n 16 --temperature 0.7 --top-p 0.9
"""

import argparse

from _tiny_engine import tiny_engine_and_prompt

from llmds_torch.models.sampling import SamplingParams


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--max-new-tokens", type=int, default=10)
    parser.add_argument("--prompt-len", type=int, default=30)
    parser.add_argument("--page-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    engine, prompt = tiny_engine_and_prompt(args.page_size, args.prompt_len, args.seed)
    params = SamplingParams(n=args.n, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                            max_new_tokens=args.max_new_tokens, seed=args.seed)
    (result,) = engine.generate([prompt], params)
    for i, sample in enumerate(result.outputs):
        print(f"sample {i}: logprob {sample.cumulative_logprob:8.3f}  {sample.token_ids}")
    stats = engine.stats()
    prompt_pages = -(-len(prompt) // args.page_size)
    print(f"prompt pages {prompt_pages} computed once for {args.n} samples; "
          f"copy-on-write copies {stats['cache_cow_copies']}")
    return {"samples": [s.token_ids for s in result.outputs], "cow_copies": stats["cache_cow_copies"]}


if __name__ == "__main__":
    main()
