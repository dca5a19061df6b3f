"""Serving under load (`capsim serve`): requests arrive (Poisson, bursty, or a fixed number in flight), wait,
join a continuously batched engine, share its steps with other requests' prefill chunks, and are preempted when
the KV cache fills. :mod:`capsim.serve.workload` makes the requests, :mod:`capsim.serve.scheduler` runs them
step by step, :mod:`capsim.serve.steps` prices each step's mix through the request pipeline, and
:mod:`capsim.serve.run` reports latency percentiles."""
