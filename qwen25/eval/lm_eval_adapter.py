"""qwen25 as an lm-eval model type, so any lm-eval task whose data is at hand runs on this backend.

    import qwen25.eval.lm_eval_adapter  # registers "qwen25"
    lm_eval.simple_evaluate(model="qwen25", model_args="pretrained=DIR_OR_NAME,dtype=bfloat16", tasks=[...])

or from the shell: `python -m qwen25.eval.lm_eval_adapter --model qwen25 --model_args pretrained=DIR --tasks ...`
(lm-eval's own command line with this model type registered). The three request types map onto the harness:
`loglikelihood` onto the engine's `score` (lm-eval's encoding and truncation, via `TemplateLM`; a context
shared by several requests is prefilled once), `loglikelihood_rolling` onto lm-eval's own rolling windows
scored the same way, and `generate_until` onto the engine's batched generation (`engine_generate_fn`).
"""

from __future__ import annotations

from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs

from qwen25.eval.generation import GenerateFn, engine_generate_fn
from qwen25.eval.harness import EvalSettings, load_eval_tokenizer, stop_token_ids
from qwen25.eval.loglikelihood import Request, score_requests, truncate
from qwen25.inference.engine import Engine
from qwen25.tokenizer.core import chat_template as qwen_chat_template


@register_model("qwen25")
class Qwen25LM(TemplateLM):
    def __init__(self, pretrained: str, dtype: str | None = None, tokenizer: str | None = None,
                 batch_tokens: int = 256, generation_batch_size: int = 8, max_gen_toks: int = 256,
                 generate_fn: GenerateFn | None = None, **_: object) -> None:
        """`pretrained`: a model directory, fetched model name or preset; lm-eval's batch_size/device options are
        accepted and ignored (batches are sized in tokens, the model runs where it was loaded)."""
        super().__init__()
        from qwen25.loading import load_model

        settings = EvalSettings(model=pretrained, tasks="", dtype=dtype, tokenizer=tokenizer)
        self.tokenizer = load_eval_tokenizer(settings)
        self.model = load_model(pretrained, dtype=dtype).eval()
        self.name = str(pretrained)
        self.batch_tokens = int(batch_tokens)
        self.max_gen_toks = int(max_gen_toks)
        self.engine = Engine(self.model, self.tokenizer, max_batch=int(generation_batch_size))
        self.generate = generate_fn or engine_generate_fn(self.engine, stop_token_ids(self.model))

    # ---- what TemplateLM needs ------------------------------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_id  # Qwen has no BOS: lm-eval's HF backend then uses the EOS as prefix too

    @property
    def max_length(self) -> int:
        return self.model.config.max_position_embeddings

    @property
    def tokenizer_name(self) -> str:
        return self.name

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.tokenizer.encode(string)

    def tok_decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens)

    def chat_template(self, chat_template: bool | str = False) -> str:
        return qwen_chat_template()

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(chat_history, add_generation_prompt=add_generation_prompt)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """(logprob, is_greedy) per ((context, continuation), context ids, continuation ids), in order; requests
        with the same (truncated) context share one prefill."""
        groups: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
        slots = []
        for _, context_ids, cont_ids in requests:
            context_ids = truncate(context_ids, cont_ids, self.max_length)
            conts = groups.setdefault(context_ids, [])
            slots.append((context_ids, len(conts)))
            conts.append(tuple(cont_ids))
        keys = list(groups)
        position = {k: n for n, k in enumerate(keys)}
        scores = score_requests(self.engine, [Request(k, tuple(groups[k])) for k in keys], max_tokens=self.batch_tokens)
        return [(scores[position[k]][j].total, scores[position[k]][j].greedy) for k, j in slots]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Sum of log-likelihoods of each whole string over lm-eval's disjoint rolling windows."""
        windows, owners = [], []
        for n, (string,) in enumerate(req.args for req in requests):
            for context, continuation in map(lm_utils.make_disjoint_window, lm_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append(((None, None), context, continuation))
                owners.append(n)
        totals = [0.0] * len(requests)
        for n, (logprob, _) in zip(owners, self._loglikelihood_tokens(windows)):
            totals[n] += logprob
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Completions cut at the request's `until` strings (and the EOS text), greedy or sampled as asked."""
        out: list[str | None] = [None] * len(requests)
        eos = self.tokenizer.decode([self.eot_token_id])
        groups: dict[str, list[int]] = {}
        for n, req in enumerate(requests):
            groups.setdefault(repr(sorted(req.args[1].items())), []).append(n)
        for indices in groups.values():
            kwargs = normalize_gen_kwargs(dict(requests[indices[0]].args[1]), self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            max_new = int(kwargs.pop("max_gen_toks"))
            temperature = float(kwargs.get("temperature") or 0.0) if kwargs.get("do_sample") else 0.0
            keep = max(1, self.max_length - max_new)
            prompts = [self.tok_encode(requests[n].args[0])[-keep:] for n in indices]
            for n, texts in zip(indices, self.generate(prompts, max_new, until, temperature=temperature)):
                out[n] = texts[0]
        return out


if __name__ == "__main__":
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()
