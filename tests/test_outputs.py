import dataclasses

from jaxllm.outputs import (
    BeamSearchOutput,
    BeamSearchSequence,
    CompletionOutput,
    Logprob,
    RequestOutput,
)


def _completion(index=0, text="hi", token_ids=(1, 2), finish_reason=None, **kw):
    return CompletionOutput(index=index, text=text, token_ids=list(token_ids), cumulative_logprob=-1.5,
                            logprobs=None, finish_reason=finish_reason, **kw)


def test_field_order_matches_vllm():
    def names(cls):
        return [f.name for f in dataclasses.fields(cls)]

    assert names(Logprob) == ["logprob", "rank", "decoded_token"]
    assert names(CompletionOutput) == ["index", "text", "token_ids", "cumulative_logprob", "logprobs",
                                       "finish_reason", "stop_reason", "lora_request"]
    assert names(RequestOutput) == ["request_id", "prompt", "prompt_token_ids", "prompt_logprobs", "outputs",
                                    "finished", "metrics", "lora_request", "num_cached_tokens",
                                    "encoder_prompt", "encoder_prompt_token_ids", "kv_transfer_params"]
    assert names(BeamSearchSequence) == ["tokens", "logprobs", "cum_logprob", "text", "finish_reason",
                                         "stop_reason", "lora_request"]
    assert names(BeamSearchOutput) == ["sequences"]


def test_logprob():
    lp = Logprob(-0.25)
    assert lp.rank is None and lp.decoded_token is None
    assert Logprob(-0.25, 1, " a") == Logprob(logprob=-0.25, rank=1, decoded_token=" a")
    assert repr(lp) == "Logprob(logprob=-0.25, rank=None, decoded_token=None)"


def test_completion_output_finished_and_repr():
    c = _completion()
    assert not c.finished() and c.stop_reason is None and c.lora_request is None
    c = _completion(text="it's", finish_reason="stop", stop_reason="###")
    assert c.finished()
    assert repr(c) == ("CompletionOutput(index=0, text=\"it's\", token_ids=[1, 2], cumulative_logprob=-1.5, "
                       "logprobs=None, finish_reason=stop, stop_reason=###)")


def test_request_output_defaults_and_repr():
    out = RequestOutput("req-1", "Hello", [5, 6], None, [_completion()], False)
    assert out.metrics is None and out.num_cached_tokens is None and out.kv_transfer_params is None
    assert out.encoder_prompt is None and out.encoder_prompt_token_ids is None
    r = repr(out)
    assert r.startswith("RequestOutput(request_id=req-1, prompt='Hello', prompt_token_ids=[5, 6], "
                        "encoder_prompt=None, encoder_prompt_token_ids=None, prompt_logprobs=None, "
                        "outputs=[CompletionOutput(index=0, ")
    assert r.endswith("finished=False, metrics=None, lora_request=None, num_cached_tokens=None, "
                      "kv_transfer_params=None)")


def test_request_output_add_aggregates_deltas():
    lp = [{1: Logprob(-0.1, 1, "a")}]
    first = RequestOutput("r", "p", [1], None, [
        CompletionOutput(0, "Hel", (1,), -0.1, list(lp)),
        CompletionOutput(1, "Wo", [4], -0.2, None),
    ], False)
    nxt = RequestOutput("r", "p", [1], None, [
        CompletionOutput(0, "lo", [2], -0.3, [{2: Logprob(-0.2, 1, "b")}], "stop", "###"),
        CompletionOutput(2, "new", [9], -0.4, None),
    ], True)
    first.add(nxt, aggregate=True)
    a, b, c = first.outputs
    assert first.finished
    assert (a.text, a.token_ids, a.cumulative_logprob, a.finish_reason, a.stop_reason) == (
        "Hello", [1, 2], -0.3, "stop", "###")
    assert [list(d) for d in a.logprobs] == [[1], [2]]
    assert b.text == "Wo" and c.index == 2 and c.text == "new"


def test_request_output_add_replaces_cumulative():
    first = RequestOutput("r", "p", [1], None, [_completion(text="Hel")], False)
    newer = _completion(text="Hello", token_ids=(1, 2, 3), finish_reason="length")
    first.add(RequestOutput("r", "p", [1], None, [newer], True), aggregate=False)
    assert first.outputs == [newer] and first.finished


def test_beam_search_types():
    seq = BeamSearchSequence(tokens=[1, 2, 3], logprobs=[{3: Logprob(-0.5)}])
    assert seq.cum_logprob == 0.0 and seq.text is None and seq.finish_reason is None
    out = BeamSearchOutput([seq])
    assert out.sequences[0].tokens == [1, 2, 3]
    assert "BeamSearchSequence(tokens=[1, 2, 3]" in repr(out)
