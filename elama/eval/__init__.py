"""Evaluation: ShopBench (the official starter kit's parsers v0.1.1 and metrics), multiple choice by
log-likelihood (lm-eval's acc / acc_norm), held-out perplexity and bits per byte, an lm-eval model
type, and the merge trade-off sweep. CLI: tools/evaluate.py (elama.eval.cli).

Public Python API (stable; other tools build on these names):

elama.eval.runs
  evaluate_shopbench(tasks_path, *, model=None, predictions=None, mc="generate"|"loglik",
                     chat=False, overrides=(), batch_size=8, max_new_tokens=None,
                     save_predictions=None, progress=True) -> report
  evaluate_perplexity(model, dataset_specs ["name=prefix-or-.jsonl"], *, overrides=(),
                      text_keys=("text",), language_key="lang", seq_len=256, max_tokens=None,
                      batch_size=4, progress=True) -> {"model", "datasets": {name: {documents,
                      tokens, bytes, nll_nats, loss, perplexity, bits_per_byte, languages: {...}}}}
      ({} on ranks of a torchrun launch that do not hold the results)
elama.eval.shopbench
  load_rows(path) -> [Row]; load_predictions(path, n_rows) -> [str];
  score_rows(rows, outputs) -> report; score_task(rows, outputs) -> task dict;
  markdown_report(report) -> str; write_report(path, report); EvalInputError
  report = {"tasks": {task_name: {"metric", "task_type", "track", "n", "score", "unparsed"
            (+ "acc", "acc_norm", "mc": "loglik" for --mc loglik)}},
            "tracks": {track: {"score", "tasks"}}, "overall": float, "parser_version": "0.1.1"}
elama.eval.parsers   parse(task_type, text), is_unparsed(task_type, parsed)
elama.eval.metrics   accuracy, hit_rate_3, ndcg, entity_counts + micro_f1, rougel, bleu, jp_bleu,
                     cosine_scores(model_name, answers, truths)
elama.eval.backends  open_backend(path, overrides=(), batch_size=8) -> HFBackend | MegatronBackend
                     (.token_logprobs(seqs), .generate(prompt_ids, max_new_tokens),
                      .encode_prompt(text, chat), .encode, .decode, .is_output, .close())
elama.eval.loglik    loglikelihood(backend, [(context, continuation)]) -> [(ll, is_greedy)],
                     loglikelihood_rolling(backend, texts), mc_loglik(backend, prompts, choices,
                     golds) -> {"acc", "acc_norm", ...}, parse_options(prompt)
elama.eval.generate  generate_outputs(backend, rows, chat=False, batch_size=8, max_new_tokens=None)
elama.eval.sweep     merge_sweep(base, model, alphas, out, general_data=[...], domain_data=[...],
                     domain_tasks=None, ...) -> {"rows", "csv", "markdown", "plot"}
elama.eval.lm_eval_model  ElamaLM, registered in lm-eval as "elama" on import
elama.eval.demo      evaluate_demo(hf_dir, domain_spec, general_spec, out_dir)
"""
