"""qwen25 registered as an lm-eval model type: the three request types, and a local lm-eval task run through it."""

import json

import pytest
import torch

from qwen25.eval.tasks import TaskSpec, build_task
from qwen25.model import ModelConfig, build_model
from qwen25.tokenizer.train import train_bbpe

lm_eval = pytest.importorskip("lm_eval")
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.registry import get_model  # noqa: E402

import qwen25.eval.lm_eval_adapter  # noqa: E402,F401  (registers "qwen25")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    texts = [item.text for item in build_task(TaskSpec("arc_easy", limit=120)).items]
    tok = train_bbpe(texts * 2, vocab_size=512, min_frequency=1, show_progress=False)
    cfg = ModelConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      rope_theta=10_000.0, dtype="float32")
    directory = tmp_path_factory.mktemp("tiny-lm-eval")
    build_model(cfg, seed=1).save_pretrained(directory)
    tok.save(directory)
    return directory


@pytest.fixture(scope="module")
def lm(model_dir):
    return get_model("qwen25").create_from_arg_string(f"pretrained={model_dir},dtype=float32",
                                                      {"batch_size": 4, "device": "cpu"})


def _request(kind, args, idx=0):
    return Instance(request_type=kind, doc={}, arguments=args, idx=idx, metadata=("t", 0, 1))


def _plain_logprob(lm, ids, start):
    """log p(ids[start:] | ids[:start]) from one plain forward."""
    with torch.no_grad():
        lp = torch.log_softmax(lm.model(torch.tensor([ids])).logits[0].float(), -1)
    return sum(float(lp[t - 1, ids[t]]) for t in range(start, len(ids)))


def test_loglikelihood_matches_a_plain_forward(lm):
    pairs = [("Question: Which gas do plants take in?\nAnswer:", " carbon dioxide"),
             ("Question: Which gas do plants take in?\nAnswer:", " oxygen"), ("short ", "answer"),
             ("", "no context at all")]
    got = lm.loglikelihood([_request("loglikelihood", p, i) for i, p in enumerate(pairs)])
    for (context, continuation), (logprob, greedy) in zip(pairs, got):
        if context:
            ctx, cont = lm._encode_pair(context, continuation)
        else:
            ctx, cont = [lm.prefix_token_id], lm.tok_encode(continuation)
        assert logprob == pytest.approx(_plain_logprob(lm, ctx + cont, len(ctx)), abs=1e-4)
        assert isinstance(greedy, bool)


def test_loglikelihood_rolling_covers_long_texts(lm):
    text = " ".join(item.context for item in build_task(TaskSpec("arc_easy", limit=6)).items)
    ids = lm.tok_encode(text)
    assert len(ids) > lm.max_length  # several rolling windows
    (total,) = lm.loglikelihood_rolling([_request("loglikelihood_rolling", (text,))])
    # windows of max_length tokens, each conditioned on the tokens before it within the window (lm-eval's rule)
    expected, start = 0.0, 0
    full = [lm.prefix_token_id] + ids
    while start < len(ids):
        end = min(start + lm.max_length, len(ids))
        window = full[max(0, end - lm.max_length):end + 1]
        expected += _plain_logprob(lm, window, len(window) - (end - start))
        start = end
    assert total == pytest.approx(expected, rel=1e-5)


def test_generate_until_cuts_at_until(lm):
    args = ("Question: What is the largest planet?\nAnswer:", {"until": ["\n"], "max_gen_toks": 12, "do_sample": False})
    (text,) = lm.generate_until([_request("generate_until", args)])
    assert "\n" not in text
    ids = lm.tok_encode(args[0])
    out = lm.generate([ids], 12, [])[0][0]  # the same engine with no stop string
    assert out.startswith(text) and (text == out or out[len(text)] == "\n")


def test_simple_evaluate_runs_a_local_multiple_choice_task(lm, tmp_path):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    items = build_task(TaskSpec("arc_easy", limit=5)).items
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"query": i.context, "choices": list(i.choices), "gold": i.gold}) + "\n"
                            for i in items))
    (tmp_path / "local_arc.yaml").write_text(f"""task: local_arc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {docs}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{query}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: gold
metric_list:
  - metric: acc
  - metric: acc_norm
""")
    out = simple_evaluate(model=lm, tasks=["local_arc"], task_manager=TaskManager(include_path=str(tmp_path),
                                                                                   include_defaults=False))
    scores = out["results"]["local_arc"]
    # the same items through qwen25's own harness give the same accuracies
    from qwen25.eval.harness import run_choice_task
    from qwen25.eval.tasks import Task

    results, _ = run_choice_task(lm.engine, lm.tokenizer, Task("arc_easy", "choice", items, {}), 256)
    ours = {r.metric: r.value for r in results}
    assert scores["acc,none"] == pytest.approx(ours["acc"])
    assert scores["acc_norm,none"] == pytest.approx(ours["acc_norm"])
