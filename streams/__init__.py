"""GENRE's stream processing on Faust (faust-streaming 0.15.3): the app, topics, tables
and agents, and the fold that turns clicks into user state.

The rules themselves (user state, item graph, features) live in ``genre.core.features``
and know nothing of Faust; agents call them. What of Faust's *private* API is still
used, and why (each place says more):

* ``transport.py``: the consumer thread's fetch wait (``_fetch_max_wait_ms``; Faust
  offers no setting), a race-free fetch (``_fetch_records``, ``_active_partitions``,
  ``_buffered_partitions``: Faust drops records of partitions paused mid-fetch) and
  record chunks (``_wait_next_records``, ``_to_message``, ``_add_gap``, and the ack
  bookkeeping ``_committed_offset``/``_acked``/``_acked_index``/``_unacked_messages``/
  ``_n_acked``/``_read_offset``): one Faust message per partition per fetch instead of
  one per record, the change that took the stream from ~6k to tens of thousands of
  records per second.
* ``batching.py``: ``Stream._enable_passive``, to buffer records with acknowledgement
  deferred until a batch's lists are published; ``take_events`` acknowledges too early
  and waits on a fixed timer.
* ``app.py``: ``Table._new_changelog_topic`` (tables keyed by raw UTF-8 ids: Faust
  derives serializers from types only); ``RocksDBStore`` overrides ``_set``/``_get``
  (Faust's store picks the partition of the *current event*, which batched agents lack)
  and reads ``_dbs_for_actives`` to count keys off the loop; consumer lag reads
  ``_committed_offset`` (no public getter).
* ``recovery.py``: ``_build_highwaters`` probes changelog ends exactly (tansu reports
  the start of the last batch + 1 as the end offset).

The hot path (fold, graph, score-requests agents) no longer uses
``Stream.take_events``; the item-encoder and profile agents keep it, because they
batch on purpose (encoder and LLM calls) and are off the click-to-list path.
"""
