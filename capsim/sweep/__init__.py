"""``capsim sweep``: grids of scenarios evaluated vectorised (locally or on a Dask cluster).

``grid`` (axes from YAML / flags, checked, expanded to a scenario frame), ``evaluate`` (one
simulator call per configuration, the numbers of ``capsim.predict.predict``), ``dask_run``
(``--scheduler``), ``io`` (Parquet / CSV, atomic writes), ``run`` (run and summarise).
"""
