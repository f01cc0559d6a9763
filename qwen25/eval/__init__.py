"""Evaluation (report §5): benchmark tasks read offline from pinned packages, scored on the inference engine
(log-likelihoods with each context prefilled once, batched generation), answers and programs checked by
`qwen25.verify`, the `qwen25 eval run` harness, `make run`'s evaluation stage, an lm-eval adapter,
decontamination by the report's LCS rule, and the passkey / RULER-style long-context tasks.

    from qwen25.eval.harness import EvalSettings, run_eval, markdown_table
    results, records = run_eval(EvalSettings(model="qwen2.5-coder-0.5b-instruct", tasks="arc_easy,mmlu", limit=50))

    from qwen25.eval.decontaminate import contaminated
    contaminated(train_ids, test_ids)   # LCS >= 13 and >= 0.6 * min(len) on token ids
"""
