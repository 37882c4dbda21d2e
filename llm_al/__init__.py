"""llm_al: choose the few examples worth fine-tuning an LLM on, and measure whether it beat random.

Pipeline: load a pool (`data`), compute features once (`features`), select (`strategies`),
order (`orderings`), LoRA fine-tune (`train`), evaluate by generating (`evaluate`), compare with
random (`stats`, `report`). `experiment` wires these together; `cli` is the command line.
"""

__version__ = "0.1.0"
