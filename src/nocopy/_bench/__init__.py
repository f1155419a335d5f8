"""The benchmark behind ``nocopy bench``: the classic experiment against every peer.

``nocopy bench seed`` reproduces the experiment nocopy grew out of (10M rows
of datetime / float-with-NaN / 6-byte string as a record array, ``np.nansum``
of the float field in N processes) with every way of getting the data to the
workers, on the same data, in one run. ``nocopy bench scaling`` measures how
nocopy's costs grow with data size and worker count; ``nocopy bench pandas``
shares a DataFrame against Arrow IPC and pickle; ``nocopy bench polars`` hands
a Polars frame to N workers shared against pickled; ``nocopy bench ray`` sets
``nocopy.ray`` against plain Ray.

Modules: ``_data`` (every benchmark's data), ``_tasks`` (what workers run),
``_methods`` (one function per method), ``_monitor`` (the memory sampler, a
separate process), ``_seed`` / ``_scaling`` / ``_pandas`` / ``_polars`` / ``_ray`` (the
experiments), ``_stats`` (medians and ratios), ``_report`` (seed's table, JSON,
PNG) and ``cli`` (argument parsing, ``main(argv)``). Sizes and tables are
written with `nocopy._text`.
"""
