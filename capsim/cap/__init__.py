"""CAP analysis (Cost, Accuracy, Performance) after MoE-CAP.

* :mod:`capsim.cap.cost`: the cost model as pure, numpy-broadcasting functions (capex, $/h, $/1M tokens, J/token).
* :mod:`capsim.cap.assumptions`: every default of the cost model with its unit and source (cost_defaults.yaml).
* :mod:`capsim.cap.parts`: the priced parts of a hardware entry (system components or a bare device x count).
* :mod:`capsim.cap.report`: one cost report for a hardware entry and an output-token rate.
* :mod:`capsim.cap.accuracy`: the cited table of published benchmark scores (capsim/catalogue/accuracy.yaml).
* :mod:`capsim.cap.lm_eval`: lm-evaluation-harness result files as rows of that table.
"""
