"""One process of a two-process job on simulated CPU devices (started by tests/test_multi_host.py).

Usage: python -m tests.multi_host_worker MODEL HOST:PORT PROCESS_ID OUT.json
Process 0 writes each prompt's tokens and logprobs to OUT.json; process 1 follows its steps.
"""

import json
import sys

from jaxllm import LLM, SamplingParams

PROMPTS = [{"prompt_token_ids": list(range(5, 5 + n))} for n in (3, 9, 17, 30)]
PARAMS = [
    SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, logprobs=2),
    SamplingParams(temperature=0.8, seed=3, max_tokens=8, ignore_eos=True, logprobs=2),
]


def summary(outputs) -> list:
    """Per request: (token ids, [{token: logprob} per position])."""
    return [
        (o.outputs[0].token_ids, [{str(t): lp.logprob for t, lp in pos.items()} for pos in o.outputs[0].logprobs])
        for o in outputs
    ]


def main() -> None:
    model, address, process_id, out = sys.argv[1:5]
    llm = LLM(model, max_model_len=64, max_num_seqs=4, tensor_parallel_size=8,
              distributed_coordinator_address=address, distributed_num_processes=2,
              distributed_process_id=int(process_id))
    result = [summary(llm.generate(PROMPTS, params, use_tqdm=False)) for params in PARAMS]
    with open(out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
