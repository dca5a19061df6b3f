"""``capsim provision``: the cheapest hardware that serves a model under throughput, latency and accuracy limits.

* :mod:`capsim.provision.requirements`: what must hold (output tokens/s, concurrent users, TTFT, TPOT, accuracy).
* :mod:`capsim.provision.candidates`: the layouts tried (system or device, device count, nodes, TP/EP, weight
  format, expert placement).
* :mod:`capsim.provision.evaluate`: each layout over a grid of batch sizes, vectorised where the simulator allows.
* :mod:`capsim.provision.search`: constraint ratios, the best batch of each layout, the ranking and the
  binding constraint; the closest candidates when none qualifies.
* USD per hour of each candidate: :mod:`capsim.cap.hourly` (cloud or owned).
* :mod:`capsim.provision.plot`: the cost-throughput Pareto plot.
"""
