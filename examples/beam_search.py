"""Beam search on the paged KV cache: beams share their prompt's pages through ``fork`` and copy
a page only when they diverge inside it (copy-on-write).

    python examples/beam_search.py
    python examples/beam_search.py --beam-width 8 --max-new-tokens 32
"""

import argparse

from _tiny_engine import tiny_engine_and_prompt

from llmds_torch.models.sampling import SamplingParams


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--beam-width", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=10)
    parser.add_argument("--prompt-len", type=int, default=21)
    parser.add_argument("--page-size", type=int, default=4)
    parser.add_argument("--length-penalty", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    engine, prompt = tiny_engine_and_prompt(args.page_size, args.prompt_len, args.seed)
    (result,) = engine.generate([prompt], SamplingParams(beam_width=args.beam_width, max_new_tokens=args.max_new_tokens,
                                                         length_penalty=args.length_penalty))
    for rank, beam in enumerate(result.outputs):
        print(f"beam {rank}: score {beam.score:8.4f}  logprob {beam.cumulative_logprob:8.4f}  "
              f"{beam.finish_reason:6s} {beam.token_ids}")
    stats = engine.stats()
    print(f"copy-on-write copies {stats['cache_cow_copies']}, pages in use after: {stats['cache_pages_used']}")
    return {"beams": [b.token_ids for b in result.outputs], "cow_copies": stats["cache_cow_copies"]}


if __name__ == "__main__":
    main()
