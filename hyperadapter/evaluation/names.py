"""The systems' names: as `hyperadapter eval --systems` takes them, and as results.json keys their
rows where the two differ (the report, `compare` and the systems themselves read them from here)."""

SYSTEM_NAMES = ("base", "base+context", "generated", "generated-wrong", "generated-unrelated", "multitask-lora",
                "generated+multitask", "generated+multitask-wrong", "per-task-lora", "blend")

# the systems whose adapters come from a generator (one is loaded for them)
GENERATOR_SYSTEMS = frozenset({"generated", "generated-wrong", "generated-unrelated", "generated+multitask",
                               "generated+multitask-wrong", "blend"})

WRONG_SUFFIX = " (wrong context)"  # an AdapterSystem given another context of the same kind

RESULT_NAMES = {"generated-wrong": "generated" + WRONG_SUFFIX, "generated-unrelated": "generated (unrelated context)",
                "multitask-lora": "multi-task LoRA", "per-task-lora": "per-task LoRA (oracle)",
                # the generated adapter on top of the multi-task LoRA, and the same with a wrong context
                "generated+multitask": "generated + multi-task LoRA",
                "generated+multitask-wrong": "generated + multi-task LoRA" + WRONG_SUFFIX}
