"""Evaluation: the 14-domain suite, answer scoring, paired statistics, reports, SLM-Bench data.

Separate from training (the rest of :mod:`adapters`), so that the gateway process, which runs
the shadow evaluator on this package, never imports the training corpus renderers, peft or
torch. Nothing is imported here; import the modules themselves.
"""
