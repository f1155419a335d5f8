"""Inter-process plumbing below the stores and the pool: UNIX-socket servers, per-process holders.

* ``_unixserver``: the one authenticated server loop (SO_PEERCRED both ways, bounded messages,
  per-connection deadlines, survives any single bad client) and its client, ``request()``.
* ``_sockdir``: where a server's socket lives (a private 0700 directory of its own, so other users
  cannot connect), and the sweep of directories killed servers left.
* ``_perprocess``: one lazily made object per process, reset in a forked child.
* ``_fdserver``: a memfd owner's descriptor server (SCM_RIGHTS), for readers that cannot open
  ``/proc/<pid>/fd/<n>``.

Nothing here knows numpy, codecs or segments' contents: it moves small messages and descriptors.
"""
