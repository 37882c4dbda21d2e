"""llm_al: choose the few examples worth fine-tuning an LLM on, and measure whether it beat random.

Pipeline: load a pool (`data`), compute features once (`features`), select (`strategies`),
order (`orderings`), LoRA fine-tune (`train`), evaluate by generating (`evaluate`), compare with
random (`analysis`). `run.experiment` wires these together; `api` is the Python API and `cli`, the
command line, calls it. README "How the code is laid out" lists the layers.
"""

__version__ = "0.1.0"
