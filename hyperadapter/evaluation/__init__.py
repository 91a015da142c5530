"""The evaluation harness: held-out contexts, the systems compared on them (base, context in the
prompt, generated adapters and a wrong-context control, per-task and multi-task LoRAs), metrics,
per-query cost, and the JSON / Markdown / PNG report."""
